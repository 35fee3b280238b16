// Package ansi makes text that may hold ANSI (ECMA-48) terminal escape
// sequences safe to show: a step's output is written by strangers, and a
// terminal or a log page that acts on it can be made to write the reader's
// clipboard (OSC 52), retitle the window (OSC 0), clear the screen, move the
// cursor over earlier output, ring the bell or, in some terminals, answer
// with input of its own.
//
// Sanitize keeps the colours and text attributes (SGR sequences, ESC [ … m
// with digits, ';' and ':' only) and tabs, and neutralises everything else
// a terminal acts on:
//
//   - other CSI sequences (cursor moves, screen and line clears, modes,
//     device queries) are removed whole;
//   - OSC, DCS, SOS, PM and APC strings are removed whole, up to their
//     terminator (BEL or ST), or to the end of the text when it has none;
//   - every other escape sequence (ESC 7, ESC c, ESC ( B, ESC # 8…) is
//     removed, and an ESC that starts none is dropped;
//   - the C1 forms of these introducers (U+009B CSI, U+009D OSC, U+0090
//     DCS…) are treated like their ESC forms, even for colours: only the
//     7-bit SGR form is kept; other C1 controls are dropped;
//   - a carriage return shows what a terminal would end with, for progress
//     bars: the text before it gives way to the text after it (colours set
//     before it are kept); a carriage return with nothing after it changes
//     nothing;
//   - backspace, BEL, DEL and the other C0 controls are dropped; so is a
//     newline: Sanitize works on one line of a log;
//   - invalid UTF-8 becomes U+FFFD, so no stray byte reads as a C1 control
//     in a terminal that is not in UTF-8 mode.
//
// The web UI and the raw log API use it for text served for viewing; the
// exact bytes stay available as a download.
package ansi

import (
	"unicode/utf8"
)

const (
	esc = 0x1b
	bel = 0x07
)

// Sanitize returns s with every control sequence but colours (SGR)
// neutralised, as the package documentation describes. It returns s itself,
// without allocating, when there is nothing to change.
func Sanitize(s string) string {
	if clean(s) {
		return s
	}
	return string(AppendSanitized(make([]byte, 0, len(s)), s))
}

// clean reports whether s is valid UTF-8 without controls other than tab.
func clean(s string) bool {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 && c != '\t' || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r >= 0x80 && r <= 0x9f {
			return false
		}
		i += size
	}
	return true
}

// AppendSanitized appends Sanitize(s) to dst and returns the extended
// buffer.
func AppendSanitized(dst []byte, s string) []byte {
	var (
		// seg is where the text of the current carriage-return segment
		// starts in dst; sgr holds the SGR sequences written since, which
		// survive when a carriage return replaces the segment's text.
		seg       = len(dst)
		sgr       []byte
		pendingCR bool
	)
	// visible is called before text is appended: a carriage return seen
	// since the segment's text began now takes effect.
	visible := func() {
		if pendingCR {
			dst = append(dst[:seg], sgr...)
			seg, sgr, pendingCR = len(dst), sgr[:0], false
		}
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == esc:
			if n := SGRLen(s[i:]); n > 0 {
				dst = append(dst, s[i:i+n]...)
				sgr = append(sgr, s[i:i+n]...)
				i += n
				continue
			}
			i += escLen(s[i:])
		case c == '\r':
			pendingCR = true
			i++
		case c == '\t' || c >= 0x20 && c < 0x7f:
			visible()
			dst = append(dst, c)
			i++
		case c < utf8.RuneSelf: // other C0 controls and DEL
			i++
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			switch {
			case r == utf8.RuneError && size == 1:
				visible()
				dst = utf8.AppendRune(dst, utf8.RuneError)
				i++
			case r >= 0x80 && r <= 0x9f:
				i += size + c1Len(s[i+size:], r)
			default:
				visible()
				dst = append(dst, s[i:i+size]...)
				i += size
			}
		}
	}
	return dst
}

// SGRLen returns the length of the SGR sequence (ESC [ params m, params of
// digits, ';' and ':') at the start of s, or 0 when s does not start with
// one.
func SGRLen(s string) int {
	if len(s) < 3 || s[0] != esc || s[1] != '[' {
		return 0
	}
	for i := 2; i < len(s); i++ {
		switch c := s[i]; {
		case c == 'm':
			return i + 1
		case c >= '0' && c <= '9' || c == ';' || c == ':':
		default:
			return 0
		}
	}
	return 0
}

// escLen returns the length of the escape sequence that starts s (s[0] is
// ESC), which is dropped: a lone ESC is 1.
func escLen(s string) int {
	if len(s) < 2 {
		return 1
	}
	switch c := s[1]; {
	case c == '[':
		return 2 + csiLen(s[2:])
	case c == ']' || c == 'P' || c == 'X' || c == '^' || c == '_':
		// OSC, DCS, SOS, PM, APC: a string up to its terminator.
		return 2 + stringLen(s[2:])
	case c >= 0x20 && c <= 0x2f:
		// nF: intermediate bytes, then a final byte.
		i := 1
		for i < len(s) && s[i] >= 0x20 && s[i] <= 0x2f {
			i++
		}
		if i < len(s) && s[i] >= 0x30 && s[i] <= 0x7e {
			i++
		}
		return i
	case c >= 0x30 && c <= 0x7e:
		// Fp, Fe, Fs: ESC 7, ESC c, ESC D, ESC N…
		return 2
	}
	return 1 // a lone ESC: what follows is read as text or controls
}

// csiLen returns the length of the rest of a control sequence after its
// introducer: parameter bytes, intermediate bytes and the final byte. A
// byte that fits none ends the sequence before it (a terminal would act on
// a control there, and the caller drops it).
func csiLen(s string) int {
	i := 0
	for i < len(s) && s[i] >= 0x30 && s[i] <= 0x3f {
		i++
	}
	for i < len(s) && s[i] >= 0x20 && s[i] <= 0x2f {
		i++
	}
	if i < len(s) && s[i] >= 0x40 && s[i] <= 0x7e {
		i++
	}
	return i
}

// stringLen returns the length of the rest of a control string (OSC, DCS,
// SOS, PM, APC) after its introducer, terminator included: BEL, ESC \ or
// U+009C. Without one, the string runs to the end of s. An ESC that starts
// anything but ST ends the string before it, as in terminals.
func stringLen(s string) int {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case bel:
			return i + 1
		case esc:
			if i+1 < len(s) && s[i+1] == '\\' {
				return i + 2
			}
			return i
		case 0xc2:
			if i+1 < len(s) && s[i+1] == 0x9c {
				return i + 2
			}
		}
	}
	return len(s)
}

// c1Len returns how much of s, which follows the C1 control r, belongs to
// the sequence r introduces (and is dropped with it).
func c1Len(s string, r rune) int {
	switch r {
	case 0x9b: // CSI
		return csiLen(s)
	case 0x9d, 0x90, 0x98, 0x9e, 0x9f: // OSC, DCS, SOS, PM, APC
		return stringLen(s)
	}
	return 0
}
