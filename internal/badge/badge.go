// Package badge draws status badges: SVG images in the familiar flat shape
// of a grey label and a coloured value ("build | passing"), and the same
// content in shields.io's endpoint JSON format.
//
// Text widths come from the advance widths of Verdana, the font the badge
// names first, so the boxes fit their text in the browsers and image
// proxies that show them; textLength pins each text to that width should
// the reader substitute a fallback font.
package badge

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html"
	"math"
	"unicode/utf8"
)

// The colours of badge values.
const (
	Green     = "#4c1"
	Yellow    = "#dfb317"
	Orange    = "#fe7d37"
	Red       = "#e05d44"
	Blue      = "#007ec6"
	Grey      = "#9f9f9f"
	LabelGrey = "#555"
)

// Badge is what a badge says.
type Badge struct {
	Label string
	Value string
	Color string // of the value: one of the colours above, or any #rgb/#rrggbb
}

// fontSize is the text size of badges, in pixels; pad is the space either
// side of a text.
const (
	fontSize = 11
	pad      = 5
)

// TextWidth is the width of s in pixels set in Verdana at 11px.
func TextWidth(s string) float64 {
	units := 0
	for _, r := range s {
		units += advance(r)
	}
	return float64(units) * fontSize / 1000
}

// advance is r's advance width in Verdana, in thousandths of an em.
func advance(r rune) int {
	switch {
	case r >= 0x20 && r < 0x7f:
		return verdana[r-0x20]
	case r < 0x20 || r == 0x7f:
		return 0
	case r >= 0x1100 && isWide(r):
		return 1000
	}
	return 635 // the width of digits: a fair middle for the rest
}

// isWide reports whether r is an East Asian wide character, set a full em.
func isWide(r rune) bool {
	return r >= 0x1100 && r <= 0x115f || r >= 0x2e80 && r <= 0xa4cf || r >= 0xac00 && r <= 0xd7a3 ||
		r >= 0xf900 && r <= 0xfaff || r >= 0xfe30 && r <= 0xfe4f || r >= 0xff00 && r <= 0xff60 ||
		r >= 0x1f300 && r <= 0x1faff || r >= 0x20000 && r <= 0x3fffd
}

// verdana holds the advance widths of Verdana Regular's printable ASCII
// characters, U+0020 to U+007E, in thousandths of an em (the font's
// published horizontal metrics).
var verdana = [95]int{
	351, 393, 458, 818, 635, 1076, 726, 268, 454, 454, 635, 818, 363, 454, 363, 454, // space to /
	635, 635, 635, 635, 635, 635, 635, 635, 635, 635, 454, 454, 818, 818, 818, 545, // 0 to ?
	1000, 683, 685, 698, 770, 632, 574, 775, 751, 420, 454, 692, 556, 842, 748, 787, // @ to O
	603, 787, 695, 683, 616, 731, 683, 988, 685, 615, 685, 454, 454, 454, 818, 635, // P to _
	635, 600, 623, 520, 623, 595, 351, 623, 632, 274, 344, 591, 274, 972, 632, 606, // ` to o
	623, 623, 426, 520, 394, 632, 591, 818, 591, 591, 525, 634, 454, 634, 818, // p to ~
}

// maxText bounds the characters of a label or value drawn.
const maxText = 100

// clip shortens s to maxText characters.
func clip(s string) string {
	if utf8.RuneCountInString(s) <= maxText {
		return s
	}
	r := []rune(s)
	return string(r[:maxText-1]) + "…"
}

// SVG draws b. Texts are escaped: a label or value may come from a
// repository's configuration (a job's name).
func SVG(b Badge) []byte {
	label, value := clip(b.Label), clip(b.Value)
	color := b.Color
	if !validColor(color) {
		color = Grey
	}
	lw := math.Ceil(TextWidth(label)) + 2*pad
	vw := math.Ceil(TextWidth(value)) + 2*pad
	w := lw + vw
	el, ev := html.EscapeString(label), html.EscapeString(value)
	var buf bytes.Buffer
	fmt.Fprintf(&buf, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="20" role="img" aria-label="%s: %s">`, w, el, ev)
	fmt.Fprintf(&buf, `<title>%s: %s</title>`, el, ev)
	buf.WriteString(`<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient>`)
	fmt.Fprintf(&buf, `<clipPath id="r"><rect width="%g" height="20" rx="3" fill="#fff"/></clipPath>`, w)
	fmt.Fprintf(&buf, `<g clip-path="url(#r)"><rect width="%g" height="20" fill="%s"/><rect x="%g" width="%g" height="20" fill="%s"/><rect width="%g" height="20" fill="url(#s)"/></g>`,
		lw, LabelGrey, lw, vw, color, w)
	buf.WriteString(`<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" text-rendering="geometricPrecision" font-size="11">`)
	text := func(x, width float64, s string) {
		fmt.Fprintf(&buf, `<text x="%g" y="15" fill="#010101" fill-opacity=".3" textLength="%g">%s</text>`, x, width, s)
		fmt.Fprintf(&buf, `<text x="%g" y="14" textLength="%g">%s</text>`, x, width, s)
	}
	text(lw/2, lw-2*pad, el)
	text(lw+vw/2, vw-2*pad, ev)
	buf.WriteString(`</g></svg>`)
	return buf.Bytes()
}

// validColor reports whether c is #rgb or #rrggbb: only those reach the SVG.
func validColor(c string) bool {
	if len(c) != 4 && len(c) != 7 || c[0] != '#' {
		return false
	}
	for _, r := range c[1:] {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F') {
			return false
		}
	}
	return true
}

// Endpoint is b in shields.io's endpoint format
// (https://shields.io/badges/endpoint-badge): schemaVersion 1, label,
// message, color.
func Endpoint(b Badge) []byte {
	color := b.Color
	if !validColor(color) {
		color = Grey
	}
	data, _ := json.Marshal(struct {
		SchemaVersion int    `json:"schemaVersion"`
		Label         string `json:"label"`
		Message       string `json:"message"`
		Color         string `json:"color"`
	}{1, b.Label, b.Value, color[1:]})
	return append(data, '\n')
}
