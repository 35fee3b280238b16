package shell

import (
	"bytes"
	"strings"
	"testing"
)

func TestMasker(t *testing.T) {
	tests := []struct {
		name    string
		secrets []string
		in      string
		want    string
	}{
		{"none", nil, "hunter2 stays", "hunter2 stays"},
		{"one", []string{"hunter2"}, "pw=hunter2;", "pw=***;"},
		{"repeated", []string{"hunter2"}, "hunter2hunter2 x hunter2", "*** x ***"},
		{"too short", []string{"ab", "  c  "}, "ab c", "ab c"},
		{"three bytes is enough", []string{"abc"}, "xabcx", "x***x"},
		{"longest wins", []string{"pass", "password1"}, "password1 pass", "*** ***"},
		{"overlapping", []string{"abcdef", "defghi"}, "abcdefghi!", "***!"},
		{"self-overlapping", []string{"aaa"}, "aaaaa", "***"},
		{"multi-line value", []string{"first line\nsecond line\r\n"}, "second line", "***"},
		{"bytes, not runes", []string{"é-é"}, "xé-éx", "x***x"},
		{"empty line", []string{"secret"}, "", ""},
		{"surrounding white space", []string{" tok-123\t"}, "a tok-123 b", "a *** b"},
		{"with its white space", []string{" tok-123 "}, "a tok-123 b", "a***b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMasker(tt.secrets)
			if got := m.MaskString(tt.in); got != tt.want {
				t.Errorf("MaskString(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if got := string(m.Mask([]byte(tt.in))); got != tt.want {
				t.Errorf("Mask(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestMaskerNilForShortValues(t *testing.T) {
	if m := NewMasker([]string{"", "a", "ab", " x "}); m != nil {
		t.Errorf("got %+v, want nil: nothing to mask", m)
	}
}

func TestSafeCut(t *testing.T) {
	m := NewMasker([]string{"SECRET"})
	overlapping := NewMasker([]string{"0000\n001"})
	if got := overlapping.SafeCut([]byte("00001"), 3); got != 5 {
		t.Errorf("SafeCut over overlapping values = %d, want 5 (past every value straddling 3)", got)
	}
	tests := []struct {
		in   string
		p    int
		want int
	}{
		{"xxSECRETyy", 4, 2},   // inside: cut before it
		{"xxSECRETyy", 2, 2},   // at its start: fine
		{"xxSECRETyy", 8, 8},   // at its end: fine
		{"SECRETyy", 3, 6},     // would need a cut at 0: cut after it
		{"SECRET", 3, 6},       // the whole of b, when it ends there
		{"abcdefgh", 5, 5},     // nothing to avoid
		{"SECRETSECRET", 8, 6}, // second occurrence
	}
	for _, tt := range tests {
		if got := m.SafeCut([]byte(tt.in), tt.p); got != tt.want {
			t.Errorf("SafeCut(%q, %d) = %d, want %d", tt.in, tt.p, got, tt.want)
		}
	}
}

func TestWriter(t *testing.T) {
	m := NewMasker([]string{"hunter2"})
	tests := []struct {
		name   string
		writes []string
		max    int
		want   string
	}{
		{"lines", []string{"a hunter2\nb\n"}, 0, "a ***\nb\n"},
		{"split across writes", []string{"a hun", "ter", "2 b\n"}, 0, "a *** b\n"},
		{"last line without newline", []string{"x\nhunter2"}, 0, "x\n***"},
		{"long line cut, secret kept whole", []string{"0123456hunter2 and the rest"}, 10, "0123456***" + " and the rest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			w := NewWriter(&out, m, tt.max)
			for _, s := range tt.writes {
				if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", s, n, err)
				}
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := out.String(); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if strings.Contains(out.String(), "hunter") {
				t.Errorf("secret leaked: %q", out.String())
			}
		})
	}
}

func TestWriterWithoutSecretsPassesThrough(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out, nil, 0)
	w.Write([]byte("partial"))
	if out.String() != "partial" {
		t.Errorf("got %q, want the bytes at once: nothing to mask", out.String())
	}
}

func FuzzMask(f *testing.F) {
	f.Add("s3cret", "a s3cret b", 8)
	f.Add("abc\ndef", "abcdef\nxdefx", 3)
	f.Fuzz(func(t *testing.T, secret, text string, max int) {
		if max < 1 || max > 64 {
			return
		}
		m := NewMasker([]string{secret})
		var out bytes.Buffer
		w := NewWriter(&out, m, max)
		for i := 0; i < len(text); i += 3 {
			w.Write([]byte(text[i:min(len(text), i+3)]))
		}
		w.Flush()
		if m == nil {
			if out.String() != text {
				t.Fatalf("no secrets: got %q, want %q", out.String(), text)
			}
			return
		}
		for _, v := range m.values {
			if len(v) <= max && bytes.Contains(out.Bytes(), v) {
				// Masked output can form a value anew only from ***.
				if !bytes.Contains(v, []byte("*")) {
					t.Fatalf("secret %q shows in %q (input %q)", v, out.String(), text)
				}
			}
		}
	})
}
