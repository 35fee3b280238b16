package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/forgeci/forge"
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
		opts.Registry.MustRegister(&collector{s: s})
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
	return mux
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
		writeError(w, forge.Errorf(forge.EUNAVAILABLE, "the server is shutting down"))
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{OriginPatterns: s.opts.OriginPatterns})
	if err != nil {
		s.log.Debug("lease websocket handshake failed", "remote", r.RemoteAddr, "err", err)
		return // Accept wrote the HTTP error
	}
	ws.SetReadLimit(16 * s.opts.MaxMessageBytes)
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{
		s: s, id: newID("C"), ws: ws, remote: r.RemoteAddr, ctx: ctx, cancel: cancel,
		wake: make(chan struct{}, 1), tokens: float64(s.opts.MessageBurst), last: time.Now(),
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		cancel()
		ws.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	s.connCount.Add(1)

	c.send(&ServerMessage{Type: TypeHello, Version: ProtocolVersion,
		KeepaliveMS: s.opts.Keepalive.Milliseconds(), Connection: c.id})
	c.wg.Add(1)
	go c.writeLoop()
	c.readLoop()

	// The connection is gone (or being dropped): release everything at
	// once, before anything else, so the next waiter is served now.
	if err := s.m.Disconnect(context.Background(), c.id); err != nil {
		s.log.Error("lease disconnect failed", "connection", c.id, "err", err)
	}
	cancel()
	c.wg.Wait()
	ws.CloseNow()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.connCount.Add(-1)
}

// conn is one client connection. The handler goroutine reads; writeLoop
// writes and pings; both end when ctx is cancelled.
type conn struct {
	s      *Server
	id     string
	ws     *websocket.Conn
	remote string
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // writeLoop and pings

	mu       sync.Mutex
	out      []*ServerMessage
	spare    []*ServerMessage
	hold     bool // replies first: events wait in held
	held     []*ServerMessage
	closed   bool
	goingOff bool // send what is queued, then close with 1001
	wake     chan struct{}

	pinging atomic.Bool

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
	if c.hold {
		c.held = append(c.held, msg)
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
		c.cancel()
		return
	}
	c.out = append(c.out, msg)
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// call runs a Manager call whose reply must reach the client before any
// event the call causes; reply returns the reply to send.
func (c *conn) call(reply func() *ServerMessage) {
	c.mu.Lock()
	c.hold = true
	c.mu.Unlock()
	msg := reply()
	c.mu.Lock()
	c.hold = false
	held := c.held
	c.held = nil
	if !c.closed {
		if msg != nil {
			c.pushLocked(msg)
		}
		for _, h := range held {
			if c.closed {
				break
			}
			c.pushLocked(h)
		}
	}
	c.mu.Unlock()
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
	}
}

// drop ends the connection at once, without a close handshake.
func (c *conn) drop(why string) {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.s.log.Debug("dropping lease connection", "connection", c.id, "why", why)
	c.cancel()
}

// goAway sends the shutdown notice, then closes with status 1001.
func (c *conn) goAway() {
	c.mu.Lock()
	if !c.closed {
		c.goingOff = true
		c.out = append(c.out, &ServerMessage{Type: TypeError, Code: forge.EUNAVAILABLE,
			Message: "the server is shutting down: every lease of this connection ends now"})
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	c.mu.Unlock()
}

func (c *conn) writeLoop() {
	defer c.wg.Done()
	ka := c.s.opts.Keepalive
	ticker := time.NewTicker(ka / 2)
	defer ticker.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-ticker.C:
			c.ping(ka / 2)
		case <-c.wake:
			c.mu.Lock()
			batch := c.out
			c.out = c.spare[:0]
			goingOff := c.goingOff
			c.mu.Unlock()
			for i, msg := range batch {
				data, err := json.Marshal(msg)
				if err == nil {
					err = c.ws.Write(c.ctx, websocket.MessageText, data)
				}
				if err != nil {
					c.drop(fmt.Sprintf("write: %v", err))
					return
				}
				batch[i] = nil
			}
			c.mu.Lock()
			if cap(batch) <= 64 {
				c.spare = batch[:0]
			} else {
				c.spare = nil // let a burst's big buffer go
			}
			c.mu.Unlock()
			if goingOff {
				// The reader sees the close handshake end and cleans up.
				go c.ws.Close(websocket.StatusGoingAway, "server shutting down")
				return
			}
		}
	}
}

// ping checks the peer answers within bound; one ping at a time.
func (c *conn) ping(bound time.Duration) {
	if !c.pinging.CompareAndSwap(false, true) {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer c.pinging.Store(false)
		ctx, cancel := context.WithTimeout(c.ctx, bound)
		defer cancel()
		if err := c.ws.Ping(ctx); err != nil && c.ctx.Err() == nil {
			c.drop(fmt.Sprintf("no pong within %s: %v", bound, err))
		}
	}()
}

func (c *conn) readLoop() {
	max := c.s.opts.MaxMessageBytes
	buf := make([]byte, 0, 512)
	for {
		typ, r, err := c.ws.Reader(c.ctx)
		if err != nil {
			return
		}
		buf = buf[:0]
		n, err := readInto(&buf, io.LimitReader(r, max+1))
		if err != nil {
			return
		}
		if int64(n) > max {
			if _, err := io.Copy(io.Discard, r); err != nil {
				return
			}
			c.send(&ServerMessage{Type: TypeError, Code: forge.ETOOLARGE,
				Message: fmt.Sprintf("message over the limit of %d bytes: ignored", max)})
			continue
		}
		if !c.throttle() {
			return
		}
		if typ != websocket.MessageText {
			c.send(&ServerMessage{Type: TypeError, Code: forge.EINVALID, Message: "binary messages are not part of the protocol: send JSON in text messages"})
			continue
		}
		c.handle(buf)
		if cap(buf) > 4096 {
			buf = make([]byte, 0, 512) // do not keep a big buffer per idle connection
		}
	}
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
	case <-c.ctx.Done():
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
		c.call(func() *ServerMessage {
			if err := c.s.m.Acquire(c.ctx, req); err != nil {
				return errorMessage(msg.ID, "", err)
			}
			return nil
		})
	case TypeRelease:
		c.call(func() *ServerMessage {
			if err := c.s.m.Release(c.ctx, c.id, msg.Lease); err != nil {
				return errorMessage("", msg.Lease, err)
			}
			return &ServerMessage{Type: TypeReleased, Lease: msg.Lease}
		})
	case TypeCancel:
		c.call(func() *ServerMessage {
			if err := c.s.m.Cancel(c.ctx, c.id, msg.ID); err != nil {
				return errorMessage(msg.ID, "", err)
			}
			return &ServerMessage{Type: TypeCanceled, ID: msg.ID}
		})
	}
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}
