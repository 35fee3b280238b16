package leasehttp

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
)

// smallBuffers hands the WebSocket library small buffers instead of
// net/http's 4 KiB ones: lease messages are small and an idle connection
// should cost little memory.
// It also puts a batchWriter under the library's writer, so that several
// messages to one connection leave in one system call.
type smallBuffers struct {
	http.ResponseWriter
	bw *batchWriter
	br *bufio.Reader
}

// connBufferSize is the library's writer's: small, because the library
// writes only control frames (pings, pongs, close) and the batchWriter
// under it gathers a batch into one write anyway; but large enough for a
// whole control frame (2 bytes of header, at most 125 of payload), so
// that each reaches the batchWriter in one Write and the data frames the
// batchWriter writes itself never land inside one.
const connBufferSize = 128

// socketSendBuffer is the kernel's send buffer of a lease connection.
const socketSendBuffer = 128 << 10

// readBufferSize is smaller: the reader bypasses its buffer for big
// payloads, and it holds little more than frame headers.
const readBufferSize = 256

func (w *smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, fmt.Errorf("the response writer cannot hijack the connection")
	}
	nc, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	if err := brw.Writer.Flush(); err != nil {
		nc.Close()
		return nil, nil, err
	}
	// A bounded kernel send buffer: the answers to a client that does not
	// read must soon stay in its send queue (and fill it, or be seen by
	// the keepalive), not first fill the megabytes an auto-tuned buffer
	// would take. Lease messages are small.
	if b, ok := nc.(interface{ SetWriteBuffer(int) error }); ok {
		_ = b.SetWriteBuffer(socketSendBuffer) // best effort: the default works, only later
	}
	w.bw = &batchWriter{nc: nc}
	// Keep what the client sent after its handshake: load it into the new
	// reader's buffer, where the library looks for it.
	n := brw.Reader.Buffered()
	if n == 0 {
		w.br = bufio.NewReaderSize(nc, readBufferSize)
		return nc, bufio.NewReadWriter(w.br, bufio.NewWriterSize(w.bw, connBufferSize)), nil
	}
	early, _ := brw.Reader.Peek(n)
	br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(early)), nc), max(n, readBufferSize))
	if _, err := br.Peek(n); err != nil {
		nc.Close()
		return nil, nil, err
	}
	w.br = br
	return nc, bufio.NewReadWriter(br, bufio.NewWriterSize(w.bw, connBufferSize)), nil
}

// batchWriter passes writes to the connection, except between begin and
// end, when it gathers them and end writes them at once.
//
// The server's messages do not go through the WebSocket library's
// writer, whose per-message work (a lock taken through a channel, the
// frame header and payload through its buffer, a flush) was a tenth of
// the CPU per grant: textFrame adds each message's frame whole. The
// library writes only control frames, each in one Write (connBufferSize),
// so frames never interleave; after it wrote a close frame, no data
// frame follows (closeSent), as the library itself would refuse.
type batchWriter struct {
	nc        net.Conn
	mu        sync.Mutex
	batching  bool
	closeSent bool
	buf       *[]byte
}

// textFrame writes payload as one unmasked, final text frame.
func (b *batchWriter) textFrame(payload []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closeSent {
		return net.ErrClosed
	}
	if b.batching && len(*b.buf)+len(payload)+10 <= maxBatch {
		*b.buf = appendFrameHeader(*b.buf, 0x1, len(payload))
		*b.buf = append(*b.buf, payload...)
		return nil
	}
	if err := b.flushLocked(); err != nil {
		return err
	}
	fp := batchBuffers.Get().(*[]byte)
	*fp = appendFrameHeader((*fp)[:0], 0x1, len(payload))
	*fp = append(*fp, payload...)
	_, err := b.nc.Write(*fp)
	if cap(*fp) <= maxBatch {
		*fp = (*fp)[:0]
		batchBuffers.Put(fp)
	}
	return err
}

// appendFrameHeader appends the header of a final, unmasked server frame
// of opcode op and n bytes of payload (RFC 6455 section 5.2).
func appendFrameHeader(b []byte, op byte, n int) []byte {
	b = append(b, 0x80|op)
	switch {
	case n <= 125:
		return append(b, byte(n))
	case n <= 0xffff:
		return append(b, 126, byte(n>>8), byte(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, 127), uint64(n))
	}
}

// maxBatch bounds what a batch gathers before writing through.
const maxBatch = 64 << 10

var batchBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

func (b *batchWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(p) > 0 && p[0] == 0x88 {
		// The library's close frame: a final frame of opcode 8 (the
		// handshake's answer before it is ASCII text).
		b.closeSent = true
	}
	if b.batching && len(*b.buf)+len(p) <= maxBatch {
		*b.buf = append(*b.buf, p...)
		return len(p), nil
	}
	if err := b.flushLocked(); err != nil {
		return 0, err
	}
	return b.nc.Write(p)
}

func (b *batchWriter) begin() {
	b.mu.Lock()
	b.batching = true
	if b.buf == nil {
		b.buf = batchBuffers.Get().(*[]byte)
	}
	b.mu.Unlock()
}

func (b *batchWriter) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	err := b.flushLocked()
	if b.buf != nil {
		if cap(*b.buf) <= maxBatch {
			*b.buf = (*b.buf)[:0]
			batchBuffers.Put(b.buf)
		}
		b.buf = nil // an idle connection holds no batch buffer
	}
	return err
}

func (b *batchWriter) flushLocked() error {
	if b.buf == nil || len(*b.buf) == 0 {
		return nil
	}
	_, err := b.nc.Write(*b.buf)
	*b.buf = (*b.buf)[:0]
	return err
}

// frameBuffered reports whether a whole data message (one final text or
// binary frame) waits in br, so that reading it will not block. Control
// frames do not count: after one, the library would block for the next
// data message.
func frameBuffered(br *bufio.Reader) bool {
	n := br.Buffered()
	if n < 2 {
		return false
	}
	h, _ := br.Peek(2)
	if op := h[0] & 0x0f; h[0]&0x80 == 0 || (op != 1 && op != 2) {
		return false
	}
	size, hdr := uint64(h[1]&0x7f), 2
	if h[1]&0x80 != 0 {
		hdr += 4 // mask key
	}
	switch size {
	case 126:
		if n < 4 {
			return false
		}
		b, _ := br.Peek(4)
		size, hdr = uint64(binary.BigEndian.Uint16(b[2:])), hdr+2
	case 127:
		if n < 10 {
			return false
		}
		b, _ := br.Peek(10)
		size, hdr = binary.BigEndian.Uint64(b[2:]), hdr+8
	}
	return size <= uint64(n) && uint64(n) >= uint64(hdr)+size
}

func readInto(buf *[]byte, r io.Reader) (int, error) {
	b := *buf
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if errors.Is(err, io.EOF) {
			*buf = b
			return len(b), nil
		}
		if err != nil {
			*buf = b
			return len(b), err
		}
	}
}
