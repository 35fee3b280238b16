package shell

import (
	"bytes"
	"unicode/utf8"
)

// DefaultMaxLine is the longest line reported whole. A longer line is
// reported as several lines of at most this many bytes each, none lost.
const DefaultMaxLine = 1 << 20

// readSize is the least free space a read is given; it is also the initial
// buffer size, enough for a full pipe buffer.
const readSize = 64 << 10

// lineBuffer cuts a byte stream into lines. Bytes are read straight into its
// spare capacity (space, then commit), so output is copied only once, into
// each line's string. It holds at most one partial line, of at most
// max+look bytes.
type lineBuffer struct {
	buf  []byte // buf[:len] is a partial line, without '\n'
	max  int    // longest piece reported when a line has no newline
	look int    // bytes a cut must see past itself (secret lookahead)
	m    *Masker
	// emit reports one line; complete is false for a piece cut from a
	// longer line or a last line without a newline.
	emit func(line []byte, complete bool)
}

// space returns the buffer's free space, at least readSize bytes, growing
// the buffer (up to max+look+readSize) when needed.
func (b *lineBuffer) space() []byte {
	if cap(b.buf)-len(b.buf) < readSize {
		n := max(2*cap(b.buf), len(b.buf)+readSize)
		n = min(n, b.max+b.look+readSize)
		nb := make([]byte, len(b.buf), n)
		copy(nb, b.buf)
		b.buf = nb
	}
	return b.buf[len(b.buf):cap(b.buf)]
}

// commit takes n bytes written into space and emits the lines they end.
func (b *lineBuffer) commit(n int) {
	old := len(b.buf)
	data := b.buf[:old+n]
	start := 0
	// Only the new bytes can hold a newline: the partial line had none.
	for i := old; ; {
		j := bytes.IndexByte(data[i:], '\n')
		if j < 0 {
			break
		}
		end := i + j
		b.emitCut(data[start:end], true)
		start = end + 1
		i = start
	}
	// A pending line of exactly max bytes may still end with a newline:
	// cut only past that.
	for len(data)-start > b.max+b.look {
		c := b.cut(data[start:])
		b.emit(data[start:start+c], false)
		start += c
	}
	if start == 0 {
		b.buf = data
		return
	}
	b.buf = data[:copy(data, data[start:])]
}

// flush emits what is left at the end of the stream.
func (b *lineBuffer) flush() {
	if len(b.buf) > 0 {
		b.emitCut(b.buf, false)
	}
	b.buf = b.buf[:0]
}

// emitCut emits a whole line, in pieces of at most max bytes when it is
// longer (its end came with the bytes that made it too long).
func (b *lineBuffer) emitCut(line []byte, complete bool) {
	for len(line) > b.max {
		c := b.cut(line)
		if c >= len(line) {
			break // the cut had to move past the end: the line stays whole
		}
		b.emit(line[:c], false)
		line = line[c:]
	}
	b.emit(line, complete)
}

// cut returns where to end a piece of a line too long to keep whole: at
// most max bytes, not inside a secret value and, where that allows, not
// inside a UTF-8 sequence. Secrets come first: a cut rune only garbles one
// character, a cut secret shows.
func (b *lineBuffer) cut(data []byte) int {
	c := b.max
	// Back off over at most three continuation bytes to a rune start.
	for k := 0; k < utf8.UTFMax-1 && c > 1 && c < len(data) && !utf8.RuneStart(data[c]); k++ {
		c--
	}
	if s, ok := b.m.safeCut(data, c); ok {
		return s
	}
	return b.m.SafeCut(data, b.max)
}

// cleanText returns line as valid UTF-8 without NUL bytes: each run of
// invalid bytes and each NUL becomes U+FFFD. Logs are stored as text and
// shown in browsers; both choke on invalid UTF-8 and NUL. The common case,
// clean text, returns line itself.
func cleanText(line []byte) []byte {
	if utf8.Valid(line) && bytes.IndexByte(line, 0) < 0 {
		return line
	}
	out := make([]byte, 0, len(line)+8)
	invalid := false
	for len(line) > 0 {
		r, size := utf8.DecodeRune(line)
		if r == utf8.RuneError && size == 1 {
			if !invalid {
				out = utf8.AppendRune(out, utf8.RuneError)
			}
			invalid = true
			line = line[1:]
			continue
		}
		invalid = false
		if r == 0 {
			r = utf8.RuneError
		}
		out = utf8.AppendRune(out, r)
		line = line[size:]
	}
	return out
}
