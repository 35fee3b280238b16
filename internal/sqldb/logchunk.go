package sqldb

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/forgeci/forge"
)

// A job's log is stored in chunks (table log_chunks): each row holds a run
// of the job's lines, in order, encoded in its data column as
//
//	chunkBinary, then for each line:
//	  uvarint  number minus the previous line's (the first: minus 0)
//	  varint   time in µs minus the previous line's (the first: minus 0)
//	  byte     stream: 0 "", 1 stdout, 2 stderr, 3 system, 4 another,
//	           followed by its uvarint length and its bytes
//	  uvarint  the text's length, then the text (valid UTF-8, no NUL)
//
// or, for the chunks migration 00008 made of the rows of the old logs
// table, chunkText followed by, for each line, "NUMBER TIME SLEN TLEN:",
// the stream (SLEN bytes) and the text (TLEN bytes), in decimal: a form
// SQL can produce.

// The chunk formats (the first byte of data).
const (
	chunkBinary = 1
	chunkText   = 'T'
)

// A chunk closes (the next line starts a new one) when it holds
// chunkLines lines or chunkBytes bytes of data: small enough that reading
// a few lines anywhere decodes little, and that extending the last chunk
// of a live log (a read and a rewrite of it) stays cheap; large enough
// that a long log is few rows.
const (
	chunkLines = 1024
	chunkBytes = 64 << 10
)

// chunkGrow bounds the job's last chunk that an append extends (rewrites
// whole) rather than start a new one: a live log's small appends each
// rewrite at most this much.
const chunkGrow = 16 << 10

var streamCodes = [...]forge.Stream{"", forge.Stdout, forge.Stderr, forge.System}

// chunkEncoder builds one chunk's data.
type chunkEncoder struct {
	buf      []byte
	first    int64 // the number of the chunk's first line
	prevNum  int64
	prevTime int64
	n        int // lines
}

func (e *chunkEncoder) reset() {
	e.buf = append(e.buf[:0], chunkBinary)
	e.first, e.prevNum, e.prevTime, e.n = 0, 0, 0, 0
}

// full reports whether the chunk takes no more lines.
func (e *chunkEncoder) full() bool { return e.n >= chunkLines || len(e.buf) >= chunkBytes }

// add appends one line, stored at time at (µs), with text already clean.
func (e *chunkEncoder) add(number, at int64, stream forge.Stream, text string) {
	if e.n == 0 {
		e.first = number
	}
	e.buf = binary.AppendUvarint(e.buf, uint64(number-e.prevNum))
	e.buf = binary.AppendVarint(e.buf, at-e.prevTime)
	code := byte(4)
	for i, s := range streamCodes {
		if s == stream {
			code = byte(i)
			break
		}
	}
	e.buf = append(e.buf, code)
	if code == 4 {
		e.buf = binary.AppendUvarint(e.buf, uint64(len(stream)))
		e.buf = append(e.buf, stream...)
	}
	e.buf = binary.AppendUvarint(e.buf, uint64(len(text)))
	e.buf = append(e.buf, text...)
	e.prevNum, e.prevTime = number, at
	e.n++
}

// resume makes e continue the chunk data, first line first, holding n
// lines: a binary chunk is walked to its last line and kept as it is; a
// text one is converted.
func (e *chunkEncoder) resume(data []byte, first int64, n int) error {
	e.reset()
	if len(data) > 0 && data[0] == chunkBinary {
		r := chunkReader{data: data}
		if err := r.start(); err != nil {
			return err
		}
		for r.next() {
		}
		if r.err != nil {
			return r.err
		}
		e.buf = append(e.buf[:0], data...)
		e.first, e.prevNum, e.prevTime, e.n = first, r.num, r.at, n
		return nil
	}
	r := chunkReader{data: data}
	if err := r.start(); err != nil {
		return err
	}
	for r.next() {
		e.add(r.num, r.at, r.stream(), string(r.text))
	}
	return r.err
}

// chunkReader decodes a chunk's lines one at a time. Its byte slices share
// the memory of data (no copy per line).
type chunkReader struct {
	data   []byte
	format byte
	off    int
	// The current line.
	num, at int64
	code    byte
	custom  []byte // the stream when code is 4
	text    []byte
	err     error
}

func (r *chunkReader) start() error {
	if len(r.data) == 0 {
		return fmt.Errorf("log chunk: empty")
	}
	r.format = r.data[0]
	if r.format != chunkBinary && r.format != chunkText {
		return fmt.Errorf("log chunk: unknown format %d", r.format)
	}
	r.off = 1
	return nil
}

// next decodes the next line; false at the end or on an error (r.err).
func (r *chunkReader) next() bool {
	if r.err != nil || r.off >= len(r.data) {
		return false
	}
	if r.format == chunkText {
		return r.nextText()
	}
	dn, ok := r.uvarint()
	if !ok {
		return false
	}
	dt, ok := r.varint()
	if !ok || r.off >= len(r.data) {
		return r.corrupt()
	}
	r.num += int64(dn)
	r.at += dt
	r.code = r.data[r.off]
	r.off++
	if r.code > 4 {
		return r.corrupt()
	}
	if r.code == 4 {
		if r.custom, ok = r.bytes(); !ok {
			return false
		}
	}
	r.text, ok = r.bytes()
	return ok
}

func (r *chunkReader) nextText() bool {
	var f [4]int64
	for i := range f {
		end := ' '
		if i == 3 {
			end = ':'
		}
		j := bytes.IndexByte(r.data[r.off:], byte(end))
		if j < 0 {
			return r.corrupt()
		}
		v, ok := parseDecimal(r.data[r.off : r.off+j])
		if !ok || (i >= 2 && v < 0) {
			return r.corrupt()
		}
		f[i] = v
		r.off += j + 1
	}
	if int64(len(r.data)-r.off) < f[2]+f[3] {
		return r.corrupt()
	}
	r.num, r.at = f[0], f[1]
	s := r.data[r.off : r.off+int(f[2])]
	r.off += int(f[2])
	r.code = 4
	for i, c := range streamCodes {
		if string(c) == string(s) {
			r.code = byte(i)
			break
		}
	}
	r.custom = s
	r.text = r.data[r.off : r.off+int(f[3])]
	r.off += int(f[3])
	return true
}

func (r *chunkReader) uvarint() (uint64, bool) {
	var v uint64
	for shift := uint(0); r.off < len(r.data) && shift < 64; shift += 7 {
		b := r.data[r.off]
		r.off++
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v, true
		}
	}
	return 0, r.corrupt()
}

func (r *chunkReader) varint() (int64, bool) {
	u, ok := r.uvarint()
	x := int64(u >> 1)
	if u&1 != 0 {
		x = ^x
	}
	return x, ok
}

func (r *chunkReader) bytes() ([]byte, bool) {
	n, ok := r.uvarint()
	if !ok {
		return nil, false
	}
	if n > uint64(len(r.data)-r.off) {
		return nil, r.corrupt()
	}
	s := r.data[r.off : r.off+int(n)]
	r.off += int(n)
	return s, true
}

func (r *chunkReader) corrupt() bool {
	if r.err == nil {
		r.err = fmt.Errorf("log chunk: corrupt at byte %d", r.off)
	}
	return false
}

func (r *chunkReader) stream() forge.Stream {
	if r.code < 4 {
		return streamCodes[r.code]
	}
	return forge.Stream(r.custom)
}

// parseDecimal parses an optionally negative decimal integer.
func parseDecimal(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var v int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	if neg {
		v = -v
	}
	return v, true
}

// line returns the current line.
func (r *chunkReader) line() forge.LogLine {
	return forge.LogLine{Number: int(r.num), Time: time.UnixMicro(r.at).UTC(), Stream: r.stream(), Text: string(r.text)}
}

// foldMatcher finds a query in lines, ignoring case: an ASCII query by
// comparing ASCII letters in either case (searching a whole chunk at once,
// with bytes.IndexByte); another one by the lower case of the lines that
// hold non-ASCII text (strings.ToLower). So a search finds the same on
// SQLite and PostgreSQL.
type foldMatcher struct {
	lower []byte // the query in lower case
	ascii bool   // lower is ASCII
}

func newFoldMatcher(q string) foldMatcher {
	l := strings.ToLower(q)
	m := foldMatcher{lower: []byte(l), ascii: true}
	for i := 0; i < len(l); i++ {
		if l[i] >= utf8.RuneSelf {
			m.ascii = false
			break
		}
	}
	return m
}

// each calls fn with the number of each line of r from line lo on whose
// text holds the query, in order.
func (m *foldMatcher) each(r *chunkReader, lo int64, fn func(num int64)) {
	if len(m.lower) == 0 {
		return
	}
	if !m.ascii {
		for r.next() {
			if r.num >= lo && nonASCII(r.text) && bytes.Contains(bytes.ToLower(r.text), m.lower) {
				fn(r.num)
			}
		}
		return
	}
	// Find the query anywhere in the chunk's data, then the line whose
	// text holds that place, if any (it may be in the encoding between
	// texts, or straddle two lines).
	n := len(m.lower)
	from := r.off
	for {
		p := indexFoldASCII(r.data[from:], m.lower)
		if p < 0 {
			return
		}
		p += from
		for r.off < p+n {
			if !r.next() {
				return
			}
		}
		if p >= r.off-len(r.text) {
			if r.num >= lo {
				fn(r.num)
			}
			from = r.off
		} else {
			from = p + 1
		}
	}
}

func nonASCII(s []byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return true
		}
	}
	return false
}

// indexFoldASCII returns the index of the first instance of lq in s,
// ignoring the case of ASCII letters, or -1; lq is lower case ASCII and
// not empty. It looks for lq's first byte in either case with
// strings.IndexByte (vectorised), and compares the rest there.
func indexFoldASCII(s, lq []byte) int {
	n := len(lq)
	end := len(s) - n + 1 // candidates start before end
	if end <= 0 {
		return -1
	}
	c0, c1 := lq[0], lq[0]
	if 'a' <= c0 && c0 <= 'z' {
		c1 = c0 - 'a' + 'A'
	}
	// p0 and p1 are the next places of c0 and c1 at or after i: -1 for
	// none, -2 to be looked for.
	p0, p1 := -2, -2
	if c1 == c0 {
		p1 = -1
	}
	next := func(p int, c byte, i int) int {
		if p == -1 || p >= i {
			return p
		}
		k := bytes.IndexByte(s[i:end], c)
		if k < 0 {
			return -1
		}
		return i + k
	}
	for i := 0; i < end; {
		p0, p1 = next(p0, c0, i), next(p1, c1, i)
		j := p0
		if j < 0 || (p1 >= 0 && p1 < j) {
			j = p1
		}
		if j < 0 {
			return -1
		}
		k := 1
		for k < n && lowerASCII(s[j+k]) == lq[k] {
			k++
		}
		if k == n {
			return j
		}
		i = j + 1
	}
	return -1
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
