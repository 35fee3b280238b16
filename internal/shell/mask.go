package shell

import (
	"bytes"
	"io"
	"slices"
	"strings"
)

// Masked is what replaces every occurrence of a secret value in output.
const Masked = "***"

// MinSecretLen is the shortest secret value (or line of a multi-line value),
// in bytes not counting surrounding white space, that is masked. Shorter
// values are passed as environment variables but not masked: masking "a" or
// "1" would wreck every log while protecting nothing a reader could not guess.
const MinSecretLen = 3

// Masker replaces secret values in output with [Masked]. It matches bytes,
// exactly as the values were given and also without surrounding white space;
// it does not look for encoded forms (base64, URL escapes). A value containing newlines is masked line
// by line: each of its lines is masked wherever it appears, since output is
// captured and stored one line at a time.
//
// A Masker is immutable after NewMasker and safe for concurrent use. The nil
// *Masker masks nothing.
type Masker struct {
	values  [][]byte // longest first, deduplicated
	longest int
}

// NewMasker returns a Masker for values, or nil when none of them is long
// enough to be masked (see [MinSecretLen]).
func NewMasker(values []string) *Masker {
	var vs [][]byte
	add := func(v string) {
		b := []byte(v)
		if !slices.ContainsFunc(vs, func(o []byte) bool { return bytes.Equal(o, b) }) {
			vs = append(vs, b)
		}
	}
	for _, v := range values {
		for piece := range strings.SplitSeq(v, "\n") {
			piece = strings.TrimSuffix(piece, "\r")
			trimmed := strings.TrimSpace(piece)
			if len(trimmed) < MinSecretLen {
				continue
			}
			// The value as given, and without the white space around it
			// (a sloppy secret file's "token " shows as "token" after
			// the shell splits words).
			add(piece)
			add(trimmed)
		}
	}
	if len(vs) == 0 {
		return nil
	}
	slices.SortFunc(vs, func(a, b []byte) int { return len(b) - len(a) })
	return &Masker{values: vs, longest: len(vs[0])}
}

// Lookahead is how many bytes past a cut in a stream must be known to be
// sure no secret value straddles the cut: the longest value's length less
// one, and 0 for the nil Masker.
func (m *Masker) Lookahead() int {
	if m == nil {
		return 0
	}
	return m.longest - 1
}

// span is a half-open byte range [lo, hi) of a line covered by a secret.
type span struct{ lo, hi int }

// Mask returns line with every occurrence of a secret value replaced by
// [Masked]. Occurrences that overlap or touch are replaced by one [Masked],
// so no part of either value shows. When nothing is masked it returns line
// itself; otherwise a new slice.
func (m *Masker) Mask(line []byte) []byte {
	out, _ := m.mask(line)
	return out
}

// mask is Mask that also reports whether anything was masked.
func (m *Masker) mask(line []byte) ([]byte, bool) {
	if m == nil {
		return line, false
	}
	var spans []span
	for _, v := range m.values {
		for off := 0; off+len(v) <= len(line); {
			i := bytes.Index(line[off:], v)
			if i < 0 {
				break
			}
			spans = append(spans, span{off + i, off + i + len(v)})
			off += i + 1 // overlapping occurrences count too
		}
	}
	if len(spans) == 0 {
		return line, false
	}
	slices.SortFunc(spans, func(a, b span) int { return a.lo - b.lo })
	out := make([]byte, 0, len(line))
	pos := 0
	for i := 0; i < len(spans); {
		lo, hi := spans[i].lo, spans[i].hi
		for i++; i < len(spans) && spans[i].lo <= hi; i++ {
			hi = max(hi, spans[i].hi)
		}
		out = append(out, line[pos:lo]...)
		out = append(out, Masked...)
		pos = hi
	}
	return append(out, line[pos:]...), true
}

// MaskString is Mask for a string.
func (m *Masker) MaskString(s string) string {
	if m == nil {
		return s
	}
	out, masked := m.mask([]byte(s))
	if !masked {
		return s
	}
	return string(out)
}

// SafeCut returns where to cut b near p so that no secret value straddles
// the cut: the largest c <= p such that no occurrence of a value starts
// before c and ends after it. b must hold at least Lookahead bytes past p,
// or all there is. When no such c > 0 exists (overlapping occurrences cover
// b[:p], or a value is longer than p), it cuts after p instead, past the
// end of every occurrence straddling the cut, so each is masked whole in the
// piece before it; that piece is then longer than p, by at most what b holds.
func (m *Masker) SafeCut(b []byte, p int) int {
	c, ok := m.safeCut(b, p)
	if !ok {
		return m.cutAfter(b, p)
	}
	return c
}

// cutAfter returns the smallest c >= p, up to len(b), that no occurrence of
// a value straddles.
func (m *Masker) cutAfter(b []byte, p int) int {
	c := p
	for moved := true; moved && c < len(b); {
		moved = false
		for _, v := range m.values {
			if start := m.straddling(b, v, c); start >= 0 {
				c = start + len(v)
				moved = true
			}
		}
	}
	return min(c, len(b))
}

// straddling returns the start of an occurrence of v in b that starts
// before c and ends after it, or -1.
func (m *Masker) straddling(b, v []byte, c int) int {
	lo := max(0, c-len(v)+1)
	hi := min(len(b), c+len(v)-1)
	win := b[lo:hi]
	for off := 0; off+len(v) <= len(win); {
		i := bytes.Index(win[off:], v)
		if i < 0 {
			break
		}
		if start := lo + off + i; start < c && start+len(v) > c {
			return start
		}
		off += i + 1
	}
	return -1
}

// safeCut is SafeCut that reports false instead of giving up.
func (m *Masker) safeCut(b []byte, p int) (int, bool) {
	if m == nil || p <= 0 || p >= len(b) {
		return p, true
	}
	c := p
	for moved := true; moved; {
		moved = false
		for _, v := range m.values {
			if start := m.straddling(b, v, c); start >= 0 {
				c = start
				moved = true
			}
		}
	}
	return c, c > 0
}

// Writer masks secrets in a byte stream, line by line, before passing it to
// an underlying writer. It holds back at most one line (cut at MaxLine bytes,
// as step output is), so a value split across two writes is still masked.
// Call Flush at the end of the stream to write a last line that has no
// newline. A Writer is not safe for concurrent use.
type Writer struct {
	w   io.Writer
	lb  lineBuffer
	out []byte
	err error // the first error of w
}

// NewWriter returns a Writer that writes to w what is written to it, with the
// secrets of m masked. maxLine bounds how much of a line without a newline is
// held back; 0 means [DefaultMaxLine].
func NewWriter(w io.Writer, m *Masker, maxLine int) *Writer {
	if maxLine <= 0 {
		maxLine = DefaultMaxLine
	}
	mw := &Writer{w: w}
	mw.lb = lineBuffer{max: maxLine, look: m.Lookahead(), m: m, emit: mw.put}
	return mw
}

// Write masks and writes every complete line of p, and holds back the rest.
// It reports len(p) unless the underlying writer fails.
func (w *Writer) Write(p []byte) (int, error) {
	if w.lb.m == nil {
		// Nothing to mask: pass through untouched.
		return w.w.Write(p)
	}
	for rest := p; len(rest) > 0 && w.err == nil; {
		n := copy(w.lb.space(), rest)
		w.lb.commit(n)
		rest = rest[n:]
	}
	if w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

// Flush masks and writes whatever is held back.
func (w *Writer) Flush() error {
	w.lb.flush()
	return w.err
}

// put writes one masked line or piece of a line.
func (w *Writer) put(line []byte, complete bool) {
	if w.err != nil {
		return
	}
	w.out = append(w.out[:0], w.lb.m.Mask(line)...)
	if complete {
		w.out = append(w.out, '\n')
	}
	_, w.err = w.w.Write(w.out)
}
