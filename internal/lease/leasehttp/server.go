// Package leasehttp serves the lease state (internal/lease) over HTTP:
// the WebSocket protocol of docs/leases.md, whose messages are the public
// client's (client/lease), and the operators' REST API. It keeps no lease
// state of its own: a connection is an owner in the Manager, and the end
// of the connection is a Disconnect.
package leasehttp

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/forgeci/forge/internal/prometheus"

	"github.com/forgeci/forge"
	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
)

// Options configure a Server; zero values take the defaults.
type Options struct {
	// Keepalive bounds how long a connection may go without a sign of
	// life before it is dropped and its leases released (default 10s, at
	// least 1s). A ping goes out every Keepalive/2; a pong, or any frame
	// the server reads from the client, is a sign of life.
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
	// server embedding this handler answers every error of its API alike;
	// without it the lease server writes the same {code, message} body
	// with the status of forge.HTTPStatus.
	WriteError func(w http.ResponseWriter, r *http.Request, err error)
	// Durable says the Manager's state outlives this server (it is kept
	// in a store): on Shutdown, resumable sessions are told to reconnect
	// and are detached rather than ended.
	Durable bool
	// Forwarded, when set, tells connections another server relays to
	// this one (lease replicas: internal/lease/replica): such a
	// connection that ends without a close frame lost its relay (the
	// relaying server died, or cut a silent client), which is not the
	// client's choice, so its session is detached rather than ended.
	Forwarded func(r *http.Request) bool
}

// Why the server drops a connection (the "reason" of its log line and
// of forge_lease_connections_dropped_total). A client that closes or
// loses its connection is not dropped: it left.
const (
	// DropKeepalive: nothing came from the client, not even a pong, and
	// it took nothing it was sent, within Keepalive/2 of a ping (a silent
	// network, a frozen client).
	DropKeepalive = "keepalive"
	// DropSendQueue: SendQueue messages waited to be written: the client
	// does not read what it is sent.
	DropSendQueue = "send_queue_full"
	// DropTooLarge: a message over 16 times MaxMessageBytes (close 1009).
	DropTooLarge = "message_too_large"
	// DropShutdown: the server's shutdown deadline passed before the
	// client closed.
	DropShutdown = "shutdown_deadline"
)

// dropReasons are every reason, in the order metrics list them.
var dropReasons = []string{DropKeepalive, DropSendQueue, DropTooLarge, DropShutdown}

// Server speaks the lease protocol (docs/leases.md) over WebSockets and
// serves the operators' REST API, on top of a lease.Manager.
type Server struct {
	m     lease.Manager
	opts  Options
	log   *slog.Logger
	epoch time.Time // connections keep times as durations since it

	mu      sync.Mutex
	closing bool
	conns   map[*conn]struct{}
	wg      sync.WaitGroup // one per connection handler

	coll      *collector // registered on opts.Registry, when given
	connCount atomic.Int64
	dropped   map[string]*atomic.Uint64 // by reason; the map is never written after NewServer
}

// NewServer returns a Server over m. It registers the metrics on
// opts.Registry when given; registering twice on one registry panics.
func NewServer(m lease.Manager, opts Options) *Server {
	if opts.Keepalive == 0 {
		opts.Keepalive = lease.DefaultKeepalive
	}
	if opts.Keepalive < lease.MinKeepalive {
		opts.Keepalive = lease.MinKeepalive
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
	s := &Server{m: m, opts: opts, log: opts.Logger, epoch: time.Now(), conns: map[*conn]struct{}{}, dropped: map[string]*atomic.Uint64{}}
	for _, r := range dropReasons {
		s.dropped[r] = new(atomic.Uint64)
	}
	if opts.Registry != nil {
		s.coll = newCollector(s)
		opts.Registry.MustRegister(s.coll)
	}
	return s
}

// Unregister takes the server's metrics off opts.Registry, so that another
// Server may register there (a lease replica serves one per term as the
// leader).
func (s *Server) Unregister() {
	if s.coll != nil {
		s.opts.Registry.Unregister(s.coll)
	}
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
			s.notRouted(w, r, mux)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// notRouted answers a request no route takes with the JSON error body of
// the API, keeping the mux's status (404, or 405 with its Allow header).
func (s *Server) notRouted(w http.ResponseWriter, r *http.Request, mux *http.ServeMux) {
	rec := &statusOnly{header: http.Header{}}
	mux.ServeHTTP(rec, r)
	if allow := rec.header.Get("Allow"); allow != "" {
		w.Header().Set("Allow", allow)
	}
	if rec.status == http.StatusMethodNotAllowed {
		writeJSON(w, rec.status, apiError{Code: forge.EINVALID,
			Message: fmt.Sprintf("%s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, rec.header.Get("Allow"))})
		return
	}
	s.writeError(w, r, forge.Errorf(forge.ENOTFOUND, "no such API endpoint: %s", r.URL.Path))
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
// done, when it drops the rest at once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.goAway(s.opts.Durable)
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
			c.drop(DropShutdown, "the server's shutdown deadline passed before the client closed")
		}
		<-done
		return ctx.Err()
	}
}

// Connections returns how many WebSocket connections are open.
func (s *Server) Connections() int { return int(s.connCount.Load()) }

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		s.writeError(w, r, forge.Errorf(forge.EUNAVAILABLE, "the server is shutting down"))
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()

	version, err := askedVersion(r)
	if err != nil {
		s.wg.Done()
		s.writeError(w, r, err)
		return
	}
	c := &conn{s: s, id: lease.NewID("C"), remote: r.RemoteAddr, done: make(chan struct{})}
	c.owner, c.version = c.id, version
	c.forwarded = s.opts.Forwarded != nil && s.opts.Forwarded(r)
	c.limit.reset(s.opts.MessageRate, s.opts.MessageBurst, time.Now())
	sb := &smallBuffers{ResponseWriter: w}
	ws, err := websocket.Accept(sb, r, &websocket.AcceptOptions{
		OriginPatterns: s.opts.OriginPatterns,
		// Control frames from the client are signs of life too.
		OnPongReceived: func(context.Context, []byte) { c.seen() },
		OnPingReceived: func(context.Context, []byte) bool { c.seen(); return true },
	})
	if err != nil {
		s.wg.Done()
		s.log.Debug("lease websocket handshake failed", "remote", r.RemoteAddr, "err", err)
		return // Accept wrote the HTTP error
	}
	ws.SetReadLimit(16 * s.opts.MaxMessageBytes)
	c.ws, c.bw, c.br = ws, sb.bw, sb.br
	c.seen()
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

// countDrop counts a drop for metrics and logs it with its reason: a
// client that loses its leases to a drop must be explainable from the
// server's log.
func (s *Server) countDrop(c *conn, reason, detail string) {
	s.dropped[reason].Add(1)
	s.log.Warn("dropped lease connection: its leases are released",
		"connection", c.id, "remote", c.remote, "reason", reason, "detail", detail)
}

// askedVersion is the protocol version a connection speaks: the
// handshake's "version" query parameter, cut to the newest this server
// knows; 1 without one, so clients written for version 1 get exactly its
// hello and semantics.
func askedVersion(r *http.Request) (int, error) {
	v := r.URL.Query().Get("version")
	if v == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, forge.Errorf(forge.EINVALID, "version %q: want a protocol version, 1 or 2", v)
	}
	return min(n, wire.ProtocolVersion), nil
}
