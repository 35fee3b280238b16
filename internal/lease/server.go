package lease

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/prometheus"
)

// Options configure a Server; zero values take the defaults.
type Options struct {
	// Keepalive is how long a connection may go without answering a ping
	// before it is dropped and its leases released (default 10s, at least
	// 1s). Pings go out every Keepalive/2.
	Keepalive time.Duration
	// MaxMessageBytes is the largest client message processed (default
	// 64 KiB); a larger one gets a "too_large" error. A message over 16
	// times this closes the connection (status 1009).
	MaxMessageBytes int64
	// SendQueue bounds the messages waiting to be written to one
	// connection (default 4096); a client that lets it fill up is
	// dropped, its leases released.
	SendQueue int
	// MessageRate and MessageBurst bound how fast one connection's
	// messages are processed (default 5000/s, burst 1000). Reading pauses
	// beyond it, so a flooding client slows itself down, not others.
	MessageRate  float64
	MessageBurst int
	// OriginPatterns allows browsers from these origins (see
	// websocket.AcceptOptions); non-browser clients send no Origin.
	OriginPatterns []string
	// Registry, when not nil, receives the lease metrics.
	Registry *prometheus.Registry
	// Logger logs connection problems; default slog.Default().
	Logger *slog.Logger
	// WriteError, when not nil, answers failed REST requests, so that the
	// server embedding this handler maps error codes to HTTP statuses in
	// one place; without it the lease server uses its own mapping.
	WriteError func(w http.ResponseWriter, r *http.Request, err error)
}

// Server speaks the lease protocol (docs/leases.md) over WebSockets and
// serves the operators' REST API, on top of a Manager.
type Server struct {
	m    Manager
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	closing bool
	conns   map[*conn]struct{}
	wg      sync.WaitGroup // one per connection handler

	connCount atomic.Int64
	dropped   atomic.Uint64
}

// NewServer returns a Server over m. It registers the metrics on
// opts.Registry when given; registering twice on one registry panics.
func NewServer(m Manager, opts Options) *Server {
	if opts.Keepalive == 0 {
		opts.Keepalive = DefaultKeepalive
	}
	if opts.Keepalive < MinKeepalive {
		opts.Keepalive = MinKeepalive
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if opts.SendQueue <= 0 {
		opts.SendQueue = 4096
	}
	if opts.MessageRate <= 0 {
		opts.MessageRate = 5000
	}
	if opts.MessageBurst <= 0 {
		opts.MessageBurst = 1000
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{m: m, opts: opts, log: opts.Logger, conns: map[*conn]struct{}{}}
	if opts.Registry != nil {
		opts.Registry.MustRegister(newCollector(s))
	}
	return s
}

// Handler serves, under /api/v1/:
//
//	GET    /api/v1/leases/ws                          the lease WebSocket
//	GET    /api/v1/pools                              every pool with its state and queue
//	GET    /api/v1/pools/{name}                       one pool
//	PUT    /api/v1/pools/{name}                       create or replace a pool
//	DELETE /api/v1/pools/{name}                       delete a pool
//	POST   /api/v1/pools/{name}/resources/{id}/disable
//	POST   /api/v1/pools/{name}/resources/{id}/enable
//	GET    /api/v1/leases                             leases in force
//	DELETE /api/v1/leases/{id}                        force-release (revoke) a lease
//	GET    /api/v1/leases/history                     recent grants and releases
//
// It does no authentication: the server must wrap it in a middleware that
// at least guards the mutating REST calls (PUT, DELETE, POST).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/leases/ws", s.serveWS)
	s.routes(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern == "" {
			notRouted(w, r, mux)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// notRouted answers a request no route takes with the JSON error body of
// the API, keeping the mux's status (404, or 405 with its Allow header).
func notRouted(w http.ResponseWriter, r *http.Request, mux *http.ServeMux) {
	rec := &statusOnly{header: http.Header{}}
	mux.ServeHTTP(rec, r)
	if allow := rec.header.Get("Allow"); allow != "" {
		w.Header().Set("Allow", allow)
	}
	code, msg := forge.ENOTFOUND, fmt.Sprintf("no such API endpoint: %s", r.URL.Path)
	if rec.status == http.StatusMethodNotAllowed {
		code, msg = forge.EINVALID, fmt.Sprintf("%s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, rec.header.Get("Allow"))
	}
	status := rec.status
	if status == 0 {
		status = http.StatusNotFound
	}
	writeJSON(w, status, apiError{Code: code, Message: msg})
}

// statusOnly records a response's status and headers and drops its body.
type statusOnly struct {
	header http.Header
	status int
}

func (s *statusOnly) Header() http.Header         { return s.header }
func (s *statusOnly) Write(p []byte) (int, error) { return len(p), nil }
func (s *statusOnly) WriteHeader(status int) {
	if s.status == 0 {
		s.status = status
	}
}

// Shutdown stops accepting connections, tells every client the server is
// going away and closes its connection (the client must treat that as
// losing its leases), and waits for the connections to end or ctx to be
// done, when it closes the rest at once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.goAway()
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, c := range conns {
			c.drop("server shutdown deadline")
		}
		<-done
		return ctx.Err()
	}
}

// Connections returns how many WebSocket connections are open.
func (s *Server) Connections() int { return int(s.connCount.Load()) }

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		s.writeError(w, r, forge.Errorf(forge.EUNAVAILABLE, "the server is shutting down"))
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()

	sb := &smallBuffers{ResponseWriter: w}
	ws, err := websocket.Accept(sb, r, &websocket.AcceptOptions{OriginPatterns: s.opts.OriginPatterns})
	if err != nil {
		s.wg.Done()
		s.log.Debug("lease websocket handshake failed", "remote", r.RemoteAddr, "err", err)
		return // Accept wrote the HTTP error
	}
	ws.SetReadLimit(16 * s.opts.MaxMessageBytes)
	c := &conn{
		s: s, id: newID("C"), ws: ws, bw: sb.bw, br: sb.br, remote: r.RemoteAddr, done: make(chan struct{}),
		tokens: float64(s.opts.MessageBurst), last: time.Now(),
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ws.Close(websocket.StatusGoingAway, "server shutting down")
		s.wg.Done()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	s.connCount.Add(1)
	// Serve on a fresh goroutine and return: net/http then lets go of the
	// request and its own per-connection state, which an idle lease
	// connection would otherwise keep for hours.
	go c.serve()
}

// serve runs the connection to its end; it owns the connection.
func (c *conn) serve() {
	s := c.s
	defer s.wg.Done()
	c.send(&ServerMessage{Type: TypeHello, Version: ProtocolVersion,
		KeepaliveMS: s.opts.Keepalive.Milliseconds(), Connection: c.id})
	c.mu.Lock()
	c.pingTimer = time.AfterFunc(s.opts.Keepalive/2, c.ping)
	c.mu.Unlock()
	c.readLoop()

	// The connection is gone (or being dropped): release everything at
	// once, before anything else, so the next waiter is served now.
	if err := s.m.Disconnect(context.Background(), c.id); err != nil {
		s.log.Error("lease disconnect failed", "connection", c.id, "err", err)
	}
	c.mu.Lock()
	c.closed = true
	c.pingTimer.Stop()
	c.mu.Unlock()
	c.stop()
	c.wg.Wait()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.connCount.Add(-1)
}

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

// connBufferSize is the writer's: small, because the batchWriter under it
// gathers a whole batch into one write anyway.
const connBufferSize = 64

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
type batchWriter struct {
	nc       net.Conn
	mu       sync.Mutex
	batching bool
	buf      *[]byte
}

// maxBatch bounds what a batch gathers before writing through.
const maxBatch = 64 << 10

var batchBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

func (b *batchWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
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

// conn is one client connection. Its serve goroutine reads; a writer
// goroutine runs only while there is something to write, and a ping only
// while one is in flight, so an idle connection costs one goroutine.
type conn struct {
	s      *Server
	id     string
	ws     *websocket.Conn
	bw     *batchWriter
	br     *bufio.Reader // the library's reader: peeked for whole frames
	remote string
	// done is closed, and the socket closed, when the connection ends.
	// (No context: one per connection, with its children, costs memory
	// on every idle connection.)
	done     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup // writer and ping goroutines

	mu        sync.Mutex
	out       []*ServerMessage
	closed    bool
	writing   bool // a writer goroutine is running
	corked    bool // the reader has more whole messages: write after them
	goingOff  bool // send what is queued, then close with 1001
	pingTimer *time.Timer

	// Read rate limit (token bucket), used by the reader only.
	tokens float64
	last   time.Time
}

// send queues msg for writing; it never blocks. A connection whose queue
// is full is dropped: it does not read what it is sent.
func (c *conn) send(msg *ServerMessage) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.pushLocked(msg)
	c.mu.Unlock()
}

func (c *conn) pushLocked(msg *ServerMessage) {
	if len(c.out) >= c.s.opts.SendQueue {
		c.closed = true
		c.s.dropped.Add(1)
		c.s.log.Warn("dropping lease connection that does not read its messages", "connection", c.id, "remote", c.remote)
		c.stop()
		return
	}
	c.out = append(c.out, msg)
	if !c.corked {
		c.startWriterLocked()
	}
}

// cork holds back writing while the reader handles messages it already
// has, so that the answers to a client's pipelined messages (a release
// and the next acquire, say) leave in one write.
func (c *conn) cork(on bool) {
	c.mu.Lock()
	c.corked = on
	if !on && len(c.out) > 0 {
		c.startWriterLocked()
	}
	c.mu.Unlock()
}

// uncorkAndWrite lets writing go on and writes what is queued on the
// calling goroutine.
func (c *conn) uncorkAndWrite() {
	c.mu.Lock()
	c.corked = false
	if c.writing || c.closed || len(c.out) == 0 {
		c.mu.Unlock()
		return
	}
	c.writing = true
	c.wg.Add(1)
	c.mu.Unlock()
	c.writeOut()
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

func (c *conn) startWriterLocked() {
	if !c.writing && !c.closed {
		c.writing = true
		c.wg.Add(1)
		go c.writeOut()
	}
}

// notify receives the Manager's events for this connection. It runs with
// the Manager's lock held, so it only queues.
func (c *conn) notify(ev Event) {
	switch ev.Type {
	case EventQueued:
		c.send(&ServerMessage{Type: TypeQueued, ID: ev.RequestID, Position: ev.Position})
	case EventGranted:
		c.send(grantedMessage(ev.Lease))
	case EventTimeout:
		c.send(&ServerMessage{Type: TypeError, ID: ev.RequestID, Code: forge.ETIMEOUT,
			Message: "max_wait_ms passed before a grant: the request left the queue"})
	case EventFailed:
		c.send(errorMessage(ev.RequestID, "", ev.Err))
	case EventRevoked:
		c.send(&ServerMessage{Type: TypeRevoked, Lease: ev.Lease.ID, Reason: ev.Reason})
	case EventReleased:
		c.send(&ServerMessage{Type: TypeReleased, Lease: ev.Lease.ID})
	case EventCanceled:
		c.send(&ServerMessage{Type: TypeCanceled, ID: ev.RequestID})
	}
}

// drop ends the connection at once, without a close handshake.
func (c *conn) drop(why string) {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.s.log.Debug("dropping lease connection", "connection", c.id, "why", why)
	c.stop()
}

// stop ends the connection: the reader, writer and ping all return.
func (c *conn) stop() {
	c.stopOnce.Do(func() {
		close(c.done)
		c.ws.CloseNow()
	})
}

func (c *conn) stopped() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// goAway sends the shutdown notice, then closes with status 1001.
func (c *conn) goAway() {
	c.mu.Lock()
	if !c.closed {
		c.goingOff = true
		c.out = append(c.out, &ServerMessage{Type: TypeError, Code: forge.EUNAVAILABLE,
			Message: "the server is shutting down: every lease of this connection ends now"})
		c.startWriterLocked()
	}
	c.mu.Unlock()
}

// writeOut writes queued messages until none is left.
func (c *conn) writeOut() {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		batch := c.out
		c.out = nil
		goingOff := c.goingOff
		if len(batch) == 0 {
			c.writing = false
			c.mu.Unlock()
			if goingOff {
				// The reader sees the close handshake end and cleans up.
				c.ws.Close(websocket.StatusGoingAway, "server shutting down")
			}
			return
		}
		c.mu.Unlock()
		c.bw.begin()
		var err error
		for _, msg := range batch {
			var data []byte
			data, err = json.Marshal(msg)
			if err == nil {
				err = c.ws.Write(context.Background(), websocket.MessageText, data)
			}
			if err != nil {
				break
			}
		}
		if endErr := c.bw.end(); err == nil {
			err = endErr
		}
		if err != nil {
			c.mu.Lock()
			c.writing = false
			c.mu.Unlock()
			c.drop(fmt.Sprintf("write: %v", err))
			return
		}
	}
}

// ping runs from the keepalive timer: it checks the peer answers within
// Keepalive/2 and arms the next check.
func (c *conn) ping() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	defer c.wg.Done()
	bound := c.s.opts.Keepalive / 2
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	err := c.ws.Ping(ctx)
	cancel()
	if err != nil {
		if !c.stopped() {
			c.drop(fmt.Sprintf("no pong within %s: %v", bound, err))
		}
		return
	}
	c.mu.Lock()
	if !c.closed {
		c.pingTimer.Reset(bound)
	}
	c.mu.Unlock()
}

func (c *conn) readLoop() {
	max := c.s.opts.MaxMessageBytes
	for {
		typ, r, err := c.ws.Reader(context.Background())
		if err != nil {
			return
		}
		bp := readBuffers.Get().(*[]byte)
		ok := c.readMessage(typ, r, bp, max)
		if cap(*bp) <= 4096 {
			readBuffers.Put(bp)
		}
		if !ok {
			return
		}
	}
}

// readBuffers hold messages while they are read and handled, so an idle
// connection holds no buffer.
var readBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// readMessage reads and handles one message; false when the connection
// is done.
func (c *conn) readMessage(typ websocket.MessageType, r io.Reader, bp *[]byte, max int64) bool {
	*bp = (*bp)[:0]
	n, err := readInto(bp, io.LimitReader(r, max+1))
	if err != nil {
		return false
	}
	if int64(n) > max {
		if _, err := io.Copy(io.Discard, r); err != nil {
			return false
		}
		c.send(&ServerMessage{Type: TypeError, Code: forge.ETOOLARGE,
			Message: fmt.Sprintf("message over the limit of %d bytes: ignored", max)})
		c.cork(false) // held back after an earlier pipelined message
		return true
	}
	if !c.throttle() {
		return false
	}
	if typ != websocket.MessageText {
		c.send(&ServerMessage{Type: TypeError, Code: forge.EINVALID, Message: "binary messages are not part of the protocol: send JSON in text messages"})
		c.cork(false)
		return true
	}
	// Decoding and the Manager call run on a short-lived goroutine, so
	// the reader's own stack stays small while it waits, idle, for the
	// next message: that is most of an idle connection's memory.
	// While a message is handled, this connection's answers are held
	// back; they leave in one write when the handler is done and no
	// further whole message is already waiting (a client's pipelined
	// release and acquire get one write back). The handler goroutine
	// writes them itself: no writer goroutine to start and wake.
	more := frameBuffered(c.br)
	c.cork(true)
	handled := make(chan struct{}) // per message: an idle connection keeps none
	go func() {
		c.handle(*bp)
		if !more {
			c.uncorkAndWrite()
		}
		handled <- struct{}{}
	}()
	<-handled
	return true
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

// throttle waits for a token of the connection's message rate; false when
// the connection ended meanwhile.
func (c *conn) throttle() bool {
	rate, burst := c.s.opts.MessageRate, float64(c.s.opts.MessageBurst)
	now := time.Now()
	c.tokens = min(burst, c.tokens+now.Sub(c.last).Seconds()*rate)
	c.last = now
	if c.tokens >= 1 {
		c.tokens--
		return true
	}
	wait := time.Duration((1 - c.tokens) / rate * float64(time.Second))
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		c.tokens = 0
		c.last = time.Now()
		return true
	case <-c.done:
		return false
	}
}

func (c *conn) handle(data []byte) {
	msg, err := Decode(data)
	if err != nil {
		c.send(errorMessage(msg.ID, msg.Lease, err))
		return
	}
	switch msg.Type {
	case TypePing:
		c.send(&ServerMessage{Type: TypePong, ID: msg.ID})
	case TypeAcquire:
		holder := msg.Holder
		if holder == "" {
			holder = c.remote
		}
		if c.s.isClosing() {
			c.send(errorMessage(msg.ID, "", forge.Errorf(forge.EUNAVAILABLE, "the server is shutting down")))
			return
		}
		req := &Request{Owner: c.id, ID: msg.ID, Holder: holder, Wants: msg.Wants(),
			MaxWait: msg.MaxWait(), Notify: c.notify}
		if err := c.s.m.Acquire(context.Background(), req); err != nil {
			c.send(errorMessage(msg.ID, "", err))
		}
	case TypeRelease:
		if err := c.s.m.Release(context.Background(), c.id, msg.Lease); err != nil {
			c.send(errorMessage("", msg.Lease, err))
		}
	case TypeCancel:
		if err := c.s.m.Cancel(context.Background(), c.id, msg.ID); err != nil {
			c.send(errorMessage(msg.ID, "", err))
		}
	}
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}
