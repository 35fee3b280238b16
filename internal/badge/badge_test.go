package badge

import (
	"encoding/xml"
	"math"
	"strings"
	"testing"
)

func TestTextWidthFromVerdanaMetrics(t *testing.T) {
	for _, tt := range []struct {
		text string
		want float64
	}{
		{"", 0},
		{"build", 6.853 + 6.952 + 3.014 + 3.014 + 6.853}, // b u i l d at 11px
		{"passing", 6.853 + 6.6 + 5.72 + 5.72 + 3.014 + 6.952 + 6.853},
		{"100%", 3*6.985 + 11.836},
		{"测试", 22},
	} {
		if got := TextWidth(tt.text); math.Abs(got-tt.want) > 0.01 {
			t.Errorf("TextWidth(%q) = %.3f, want %.3f", tt.text, got, tt.want)
		}
	}
	if TextWidth("mmmm") <= TextWidth("iiii") {
		t.Error("m is not wider than i")
	}
}

func TestSVGEscapesAndIsXML(t *testing.T) {
	svg := SVG(Badge{Label: `<script>alert(1)</script>`, Value: `a"&b`, Color: `red" onload="x`})
	var doc struct {
		Title string `xml:"title"`
	}
	if err := xml.Unmarshal(svg, &doc); err != nil {
		t.Fatalf("not XML: %v\n%s", err, svg)
	}
	if doc.Title != `<script>alert(1)</script>: a"&b` {
		t.Errorf("title %q", doc.Title)
	}
	if strings.Contains(string(svg), "<script") || strings.Contains(string(svg), "onload") {
		t.Errorf("markup or a bad colour got through: %s", svg)
	}
	if !strings.Contains(string(svg), Grey) {
		t.Errorf("an invalid colour did not become grey")
	}
	long := SVG(Badge{Label: strings.Repeat("x", 500), Value: "v", Color: Green})
	if len(long) > 4000 {
		t.Errorf("a 500-character label gives %d bytes: not clipped", len(long))
	}
}
