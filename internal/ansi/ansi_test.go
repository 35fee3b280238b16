package ansi

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestSanitize(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain text", "plain\ttext é ✓", "plain\ttext é ✓"},
		{"colours kept", "\x1b[31mred\x1b[0m \x1b[1;38;5;208mbold\x1b[m", "\x1b[31mred\x1b[0m \x1b[1;38;5;208mbold\x1b[m"},
		{"true colour with colons kept", "\x1b[38:2::255:0:0mred", "\x1b[38:2::255:0:0mred"},
		{"OSC 52 clipboard, BEL", "a\x1b]52;c;ZWNobyBwd25lZA==\x07b", "ab"},
		{"OSC 52 clipboard, ST", "a\x1b]52;c;ZWNobyBwd25lZA==\x1b\\b", "ab"},
		{"OSC 0 title", "\x1b]0;you have been pwned\x07text", "text"},
		{"OSC 8 hyperlink keeps its text", "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\", "click"},
		{"unterminated OSC runs to the end", "a\x1b]52;c;ZWNobw==", "a"},
		{"OSC cut by another escape", "a\x1b]0;t\x1b[31mred", "a\x1b[31mred"},
		{"screen clear", "clear\x1b[2J\x1b[Hscreen", "clearscreen"},
		{"cursor moves", "up\x1b[3Aback\x1b[10Dsave\x1b7\x1b8", "upbacksave"},
		{"private modes", "\x1b[?25l\x1b[?1049hhidden cursor", "hidden cursor"},
		{"not quite SGR", "\x1b[>4;2mkeys\x1b[31;?mx", "keysx"},
		{"device status query", "\x1b[6n\x1b[cq", "q"},
		{"reset and charset", "\x1bcreset\x1b(0box\x1b#8", "resetbox"},
		{"DCS", "a\x1bP1$r0m\x1b\\b", "ab"},
		{"APC and PM and SOS", "a\x1b_Gf=100;AAAA\x1b\\b\x1b^pm\x1b\\c\x1bXsos\x1b\\d", "abcd"},
		{"BEL", "ding\x07dong", "dingdong"},
		{"backspace and DEL", "ab\b\bcd\x7f", "abcd"},
		{"other C0", "a\x00b\x01c\x0bd\x0ce\x0ef\x1fg\nh", "abcdefgh"},
		{"lone ESC", "a\x1b", "a"},
		{"ESC before a control", "a\x1b\x07b", "ab"},
		{"ESC before non-ASCII", "a\x1béb", "aéb"},
		{"C1 CSI", "a\u009b2Jb\u009b31mc", "abc"},
		{"C1 OSC", "a\u009d52;c;ZWNobw==\u009cb", "ab"},
		{"C1 OSC ended by BEL", "a\u009d0;title\x07b", "ab"},
		{"C1 DCS and APC", "a\u0090x\u009cb\u009fy\u009cc", "abc"},
		{"other C1", "a\u0085b\u008dc\u009cd", "abcd"},
		{"invalid UTF-8 and raw C1 bytes", "a\x9b2Jb\xffc", "a\ufffd2Jb\ufffdc"},
		{"carriage return: progress bar", "10%\r20%\r100%", "100%"},
		{"carriage return: trailing", "done\r", "done"},
		{"carriage return: colours before survive", "\x1b[32m  1%\r\x1b[1m100%\x1b[0m", "\x1b[32m\x1b[1m100%\x1b[0m"},
		{"carriage return then only dropped controls", "keep\r\x1b[2K", "keep"},
		{"carriage return at the start", "\rtext", "text"},
		{"tab after carriage return", "old\r\tnew", "\tnew"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Sanitize(tt.in); got != tt.want {
				t.Errorf("Sanitize(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if got := string(AppendSanitized([]byte("prefix\r"), tt.in)); got != "prefix\r"+tt.want {
				t.Errorf("AppendSanitized(prefix, %q) = %q, want the prefix untouched and %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestSanitizeCleanDoesNotAllocate(t *testing.T) {
	s := "ordinary output: 42 tests passed in 1.3s ✓"
	if n := testing.AllocsPerRun(100, func() { _ = Sanitize(s) }); n != 0 {
		t.Errorf("Sanitize of clean text allocates %v times, want 0", n)
	}
}

func TestSGRLen(t *testing.T) {
	for in, want := range map[string]int{
		"\x1b[m":        3,
		"\x1b[0mx":      4,
		"\x1b[1;31mx":   7,
		"\x1b[38:5:1m":  9,
		"\x1b[31":       0,
		"\x1b[2J":       0,
		"\x1b[?1m":      0,
		"\x1b]0;x\x07":  0,
		"x\x1b[31m":     0,
		"":              0,
		"\x1b":          0,
		"\u009b31m":     0,
		"\x1b[31;\x07m": 0,
	} {
		if got := SGRLen(in); got != want {
			t.Errorf("SGRLen(%q) = %d, want %d", in, got, want)
		}
	}
}

// checkSafe fails unless out holds no ESC but at the start of a well-formed
// SGR sequence, no C0 or C1 control but tab, and only valid UTF-8.
func checkSafe(t *testing.T, in, out string) {
	t.Helper()
	if !utf8.ValidString(out) {
		t.Fatalf("Sanitize(%q) = %q: not valid UTF-8", in, out)
	}
	for i := 0; i < len(out); {
		if out[i] == esc {
			n := SGRLen(out[i:])
			if n == 0 {
				t.Fatalf("Sanitize(%q) = %q: ESC at %d does not start an SGR sequence", in, out, i)
			}
			i += n
			continue
		}
		r, size := utf8.DecodeRuneInString(out[i:])
		if r < 0x20 && r != '\t' || r >= 0x7f && r <= 0x9f {
			t.Fatalf("Sanitize(%q) = %q: control %U at %d", in, out, r, i)
		}
		i += size
	}
}

// stripSGR removes the SGR sequences of s.
func stripSGR(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		if n := SGRLen(s[i:]); n > 0 {
			i += n
			continue
		}
		b.WriteByte(s[i])
		i++
	}
	return b.String()
}

// validUTF8 is s with each invalid byte as U+FFFD.
func validUTF8(s string) string {
	var b strings.Builder
	for _, r := range s {
		b.WriteRune(r)
	}
	return b.String()
}

// isSubsequence reports whether the runes of sub appear in s in order.
func isSubsequence(sub, s string) bool {
	rs := []rune(s)
	j := 0
	for _, r := range sub {
		for j < len(rs) && rs[j] != r {
			j++
		}
		if j == len(rs) {
			return false
		}
		j++
	}
	return true
}

func FuzzSanitize(f *testing.F) {
	for _, s := range []string{
		"plain", "\x1b[31mred\x1b[0m", "\x1b]52;c;ZWNobw==\x07", "\x1b]0;t\x1b\\", "\x1b[2J\x1b[H",
		"a\bb\x07", "\x1bP1$r\x1b\\", "\x1b_x\x1b\\", "\x1b^x\x1b\\", "\u009b2J\u009d0;t\u009c",
		"10%\r20%", "\x1b", "\x1b[", "\x1b[31", "\xff\xfe", "\x1b[38:2::1:2:3m", "\t\x1b(B\x1b#8",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := Sanitize(in)
		checkSafe(t, in, out)
		if again := Sanitize(out); again != out {
			t.Fatalf("Sanitize is not idempotent: %q → %q → %q", in, out, again)
		}
		// Nothing is made up: the text shown is taken from the input, in
		// order (invalid bytes as U+FFFD).
		if !isSubsequence(stripSGR(out), validUTF8(in)) {
			t.Fatalf("Sanitize(%q) = %q: text not taken from the input", in, out)
		}
		if clean(in) && out != in {
			t.Fatalf("Sanitize changed clean text %q to %q", in, out)
		}
	})
}
