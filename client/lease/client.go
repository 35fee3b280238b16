// Package lease is the Go client of forge's test resource leases: it opens
// the lease WebSocket of a forge server, asks for resources, waits in the
// queue and holds what it was granted for as long as the connection lives.
//
// A lease lives exactly as long as its connection. When the connection
// drops (the server restarts, the network goes silent, the server revokes
// the lease), every lease of the Client is lost: its Lost channel closes and
// its Context is cancelled, because the resources may already belong to
// someone else. A program that uses a resource should stop using it then.
//
//	c, err := lease.Dial(ctx, "http://forge:8080", nil)
//	...
//	defer c.Close()
//	l, err := c.Acquire(ctx, "me@host tests", []lease.Request{{Pool: "dut"}}, nil)
//	...
//	runTests(l.Context(), l.Env())
//	l.Release(ctx)
//
// The protocol is described in docs/leases.md; its messages are in wire.go.
package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/forgeci/forge"
)

// DefaultKeepalive is the liveness bound used when the server's hello does
// not announce one.
const DefaultKeepalive = 10 * time.Second

// helloTimeout bounds the wait for the server's first message when the
// caller's context has no deadline.
const helloTimeout = 10 * time.Second

// readLimit bounds one message from the server. Grants of a whole port
// range are large; anything bigger than this is not a lease message.
const readLimit = 16 << 20

// ErrReleased is the cause of a lease's Context once it was released.
var ErrReleased = errors.New("lease released")

// Options tune Dial. The zero value (or nil) is fine.
type Options struct {
	// HTTPClient makes the WebSocket handshake; http.DefaultClient if nil.
	HTTPClient *http.Client
	// Header is sent with the handshake (e.g. Authorization).
	Header http.Header
	// Keepalive overrides the liveness bound the server announces: when
	// nothing arrives from the server for this long and a WebSocket ping
	// gets no pong, the connection is considered lost.
	Keepalive time.Duration
	// Resumable asks for a resumable session (protocol version 2): when
	// the connection breaks, or the server restarts, the Client
	// reconnects within the session's grace and gets its leases and its
	// place in the queue back; only when that fails are its leases lost.
	// A server that does not know sessions gives today's semantics (see
	// Session).
	Resumable bool
	// Grace is the grace asked for a resumable session; zero takes the
	// server's default (15s). The server may cut it to its bound.
	Grace time.Duration
	// Logf, when not nil, is told of reconnections: a connection lost and
	// being resumed, a session resumed, a session expired.
	Logf func(format string, args ...any)
}

// AcquireOptions tune one Acquire. The zero value (or nil) waits forever
// and reports nothing while queued.
type AcquireOptions struct {
	// MaxWait bounds the wait in the queue (the server's max_wait_ms);
	// when it passes Acquire fails with forge.ETIMEOUT. Zero waits forever.
	MaxWait time.Duration
	// Queued is called with the position in the queue (1 = next in line)
	// each time it changes. It is called from the Client's reading
	// goroutine: it must return quickly and must not call the Client.
	Queued func(position int)
}

// Client is one WebSocket connection to a lease server. Its methods are
// safe for concurrent use; one Client may hold several leases and wait
// for several acquisitions at once.
type Client struct {
	conn      *websocket.Conn // the current connection (under mu once running)
	url       string
	opts      Options
	hello     Message
	keepalive time.Duration

	// The resumable session, when the server gave one (immutable after
	// Dial but for grace).
	session, secret string
	grace           time.Duration
	durable         bool // the server keeps lease state across its restart
	// wmu orders writes with a resume's reconciliation: a message is
	// either written before the new connection is installed (and then
	// reconciled) or after, on it.
	wmu sync.Mutex

	// ctx lives as long as the connection; background sends use it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the reader, the watchdog and background sends

	lastSeen *atomic.Int64 // unix nanoseconds of the last frame received
	nextID   atomic.Uint64

	mu       sync.Mutex
	pending  map[string]*pendingAcquire
	leases   map[string]*Lease
	pings    map[string]chan struct{}
	closing  bool  // Close was called: leases end as released, not lost
	err      error // why the connection ended
	done     chan struct{}
	shutOnce sync.Once
}

type pendingAcquire struct {
	msg       *Message // the acquire, sent again after a resume if the server never got it
	queued    func(int)
	result    chan acquireResult // buffered 1
	abandoned bool               // the caller gave up: release a late grant
}

type acquireResult struct {
	lease *Lease
	err   error
}

// WebSocketURL turns a server address into the lease WebSocket's URL:
// http becomes ws and https wss (ws and wss are kept), and the lease path
// is appended unless the URL already ends with it. An address without a
// scheme ("host:8080") is taken as http.
func WebSocketURL(server string) (string, error) {
	s := strings.TrimSpace(server)
	if s == "" {
		return "", forge.Errorf(forge.EINVALID, "no lease server address given")
	}
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", forge.Errorf(forge.EINVALID, "lease server address %q is not a URL: %w", server, err)
	}
	switch u.Scheme {
	case "http", "ws":
		u.Scheme = "ws"
	case "https", "wss":
		u.Scheme = "wss"
	default:
		return "", forge.Errorf(forge.EINVALID, "lease server address %q: scheme %q is not http, https, ws or wss", server, u.Scheme)
	}
	if u.Host == "" {
		return "", forge.Errorf(forge.EINVALID, "lease server address %q has no host", server)
	}
	if !strings.HasSuffix(u.Path, Path) {
		u.Path = strings.TrimSuffix(u.Path, "/") + Path
	}
	u.RawPath = ""
	u.Fragment = ""
	return u.String(), nil
}

// Dial connects to the lease server at serverURL (see WebSocketURL) and
// waits for its hello. Errors: EINVALID for a bad address, EUNAVAILABLE
// when the server cannot be reached or does not speak the protocol,
// EUNAUTHORIZED/EFORBIDDEN when it refuses us, ECANCELED/ETIMEOUT when ctx
// ends first.
func Dial(ctx context.Context, serverURL string, opts *Options) (*Client, error) {
	if opts == nil {
		opts = &Options{}
	}
	wsURL, err := WebSocketURL(serverURL)
	if err != nil {
		return nil, err
	}
	// The server's pings prove it alive; the watchdog reads lastSeen.
	var lastSeen atomic.Int64
	conn, hello, err := dialOnce(ctx, serverURL, wsURL, opts, &lastSeen)
	// A server that answers 503 is there but not ready to lease (a
	// replica while a lease leader is being elected or loads the state):
	// ask again for a while rather than fail a client that came a moment
	// early.
	var nr notReady
	for wait, start := 50*time.Millisecond, time.Now(); err != nil && errors.As(err, &nr) && time.Since(start) < notReadyPatience; wait = min(2*wait, time.Second) {
		if opts.Logf != nil {
			opts.Logf("%v; asking again", err)
		}
		select {
		case <-ctx.Done():
			return nil, contextError(ctx)
		case <-time.After(wait):
		}
		conn, hello, err = dialOnce(ctx, serverURL, wsURL, opts, &lastSeen)
	}
	if err != nil {
		return nil, err
	}
	c := &Client{
		lastSeen:  &lastSeen,
		conn:      conn,
		url:       wsURL,
		opts:      *opts,
		hello:     *hello,
		keepalive: opts.Keepalive,
		pending:   make(map[string]*pendingAcquire),
		leases:    make(map[string]*Lease),
		pings:     make(map[string]chan struct{}),
		done:      make(chan struct{}),
	}
	if c.keepalive <= 0 {
		c.keepalive = time.Duration(hello.KeepaliveMS) * time.Millisecond
	}
	if c.keepalive <= 0 {
		c.keepalive = DefaultKeepalive
	}
	if opts.Resumable && hello.Version >= 2 {
		if err := c.openSession(ctx); err != nil {
			conn.CloseNow()
			return nil, err
		}
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.lastSeen.Store(time.Now().UnixNano())
	c.wg.Add(2)
	go c.read()
	go c.watch()
	return c, nil
}

// dialOnce opens one connection speaking protocol version 2 (a server
// that knows only version 1 ignores the ask) and reads its hello.
func dialOnce(ctx context.Context, serverURL, wsURL string, opts *Options, lastSeen *atomic.Int64) (*websocket.Conn, *Message, error) {
	u := wsURL + "?version=" + strconv.Itoa(ProtocolVersion)
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		HTTPClient: opts.HTTPClient,
		HTTPHeader: opts.Header,
		OnPingReceived: func(context.Context, []byte) bool {
			lastSeen.Store(time.Now().UnixNano())
			return true
		},
	})
	if err != nil {
		if ctxErr := contextError(ctx); ctxErr != nil {
			return nil, nil, ctxErr
		}
		if resp != nil {
			return nil, nil, handshakeError(wsURL, resp, err)
		}
		// The network error says what went wrong; the layers the
		// WebSocket library wraps around it do not.
		var opErr *net.OpError
		if errors.As(err, &opErr) {
			err = opErr
		}
		return nil, nil, forge.WrapError(forge.EUNAVAILABLE, err, fmt.Sprintf("cannot reach the lease server at %s", serverURL))
	}
	conn.SetReadLimit(readLimit)
	hctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		hctx, cancel = context.WithTimeout(ctx, helloTimeout)
		defer cancel()
	}
	hello, err := readMessage(hctx, conn)
	if err != nil {
		conn.CloseNow()
		if ctxErr := contextError(ctx); ctxErr != nil {
			return nil, nil, ctxErr
		}
		return nil, nil, forge.WrapError(forge.EUNAVAILABLE, err, fmt.Sprintf("lease server at %s sent no hello", serverURL))
	}
	if hello.Type != TypeHello {
		conn.Close(websocket.StatusProtocolError, "expected hello")
		return nil, nil, forge.Errorf(forge.EUNAVAILABLE, "lease server at %s does not speak the lease protocol: first message is %q", serverURL, hello.Type)
	}
	return conn, hello, nil
}

// readMessage reads and decodes one message.
func readMessage(ctx context.Context, conn *websocket.Conn) (*Message, error) {
	_, data, err := conn.Read(ctx)
	if err != nil {
		return nil, err
	}
	m, err := Decode(data)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// openSession asks for a resumable session on the new connection.
func (c *Client) openSession(ctx context.Context) error {
	m := &Message{Type: TypeSession}
	if c.opts.Grace > 0 {
		m.GraceMS = max(1, c.opts.Grace.Milliseconds())
	}
	data, _ := json.Marshal(m)
	hctx, cancel := context.WithTimeout(ctx, helloTimeout)
	defer cancel()
	if err := c.conn.Write(hctx, websocket.MessageText, data); err != nil {
		return forge.WrapError(forge.EUNAVAILABLE, err, "cannot ask the lease server for a session")
	}
	a, err := readMessage(hctx, c.conn)
	switch {
	case err != nil:
		return forge.WrapError(forge.EUNAVAILABLE, err, "no answer to the session request")
	case a.Type == TypeError:
		return serverError(a)
	case a.Type != TypeSession || a.Session == "" || a.Secret == "":
		return forge.Errorf(forge.EUNAVAILABLE, "the lease server answered a session request with %q", a.Type)
	}
	c.session, c.secret, c.grace, c.durable = a.Session, a.Secret, time.Duration(a.GraceMS)*time.Millisecond, a.Durable
	return nil
}

// Session is the resumable session's id and grace; "" when the Client
// has none (not asked for, or a server that knows only protocol version
// 1: then a broken connection loses every lease, as ever).
func (c *Client) Session() (id string, grace time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.session, c.grace
}

func (c *Client) logf(format string, args ...any) {
	if c.opts.Logf != nil {
		c.opts.Logf(format, args...)
	}
}

func handshakeError(wsURL string, resp *http.Response, err error) error {
	// A forge server says why in a JSON body {"code", "message"}.
	var why string
	if resp.Body != nil {
		var body struct {
			Message string `json:"message"`
		}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if json.Unmarshal(data, &body) == nil && body.Message != "" {
			why = ": " + body.Message
		}
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		return forge.WrapError(forge.EUNAUTHORIZED, err, fmt.Sprintf("lease server at %s wants an API token (HTTP 401)%s", wsURL, why))
	case http.StatusForbidden:
		return forge.WrapError(forge.EFORBIDDEN, err, fmt.Sprintf("lease server at %s refused the connection (HTTP 403)%s", wsURL, why))
	case http.StatusServiceUnavailable:
		return notReady{forge.WrapError(forge.EUNAVAILABLE, err, fmt.Sprintf("lease server at %s is not ready to lease (HTTP 503)%s", wsURL, why))}
	}
	return forge.WrapError(forge.EUNAVAILABLE, err, fmt.Sprintf("%s answered HTTP %d instead of opening the lease WebSocket%s: is it a forge server?", wsURL, resp.StatusCode, why))
}

// notReadyPatience bounds how long Dial asks again a server that answers
// 503 (not ready to lease yet): longer than a lease leader's election
// after a failover, short enough that a server that stays unready is
// reported.
const notReadyPatience = 30 * time.Second

// notReady is the handshake error of a server that answered 503.
type notReady struct{ error }

func (e notReady) Unwrap() error { return e.error }

// contextError maps an ended ctx to ECANCELED or ETIMEOUT; nil while ctx
// is live.
func contextError(ctx context.Context) error {
	switch err := ctx.Err(); {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		return forge.WrapError(forge.ETIMEOUT, err, "gave up waiting for the lease server")
	default:
		return forge.WrapError(forge.ECANCELED, err, "cancelled")
	}
}

// Connection is the connection id the server announced in its hello.
func (c *Client) Connection() string { return c.hello.Connection }

// Keepalive is the liveness bound in force on this connection.
func (c *Client) Keepalive() time.Duration { return c.keepalive }

// Done is closed when the connection has ended, for whatever reason.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err says why the connection ended; nil while it is up.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close releases every lease of the Client by closing the connection
// cleanly, and waits for the Client's goroutines. Acquisitions still
// waiting fail with ECANCELED; the leases end as released (their Lost
// channels stay open, their Contexts are cancelled). Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	// Close does the closing handshake (bounded by the library) so the
	// server sees a clean close rather than a reset.
	c.currentConn().Close(websocket.StatusNormalClosure, "client closed")
	c.shutdown(forge.Errorf(forge.ECANCELED, "lease client closed"))
	c.wg.Wait()
	return nil
}

// Ping sends an application-level ping and waits for the server's pong;
// it measures the round trip through the server's message loop.
func (c *Client) Ping(ctx context.Context) (time.Duration, error) {
	id := "p" + strconv.FormatUint(c.nextID.Add(1), 10)
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	c.pings[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pings, id)
		c.mu.Unlock()
	}()
	if err := contextError(ctx); err != nil {
		return 0, err
	}
	start := time.Now()
	if err := c.send(&Message{Type: TypePing, ID: id}); err != nil {
		return 0, err
	}
	select {
	case <-ch:
		return time.Since(start), nil
	case <-c.done:
		return 0, c.Err()
	case <-ctx.Done():
		return 0, contextError(ctx)
	}
}

// Acquire asks for reqs, granted all at once or not at all, and waits for
// the grant. holder describes who asks (shown to operators); empty means
// DefaultHolder(""). When ctx ends first the request is withdrawn (a
// grant that crosses the withdrawal is released at once) and Acquire
// returns ECANCELED or ETIMEOUT. Errors from the server come back with
// its codes: EINVALID (a bad request, or more than the pool could ever
// grant), ENOTFOUND (unknown pool), ETIMEOUT (MaxWait passed),
// EUNAVAILABLE (the server is shutting down or the connection dropped).
func (c *Client) Acquire(ctx context.Context, holder string, reqs []Request, opts *AcquireOptions) (*Lease, error) {
	if opts == nil {
		opts = &AcquireOptions{}
	}
	if err := checkRequests(reqs); err != nil {
		return nil, err
	}
	if err := contextError(ctx); err != nil {
		return nil, err
	}
	if holder == "" {
		holder = DefaultHolder("")
	}
	m := &Message{Type: TypeAcquire, Holder: holder, Requests: reqs}
	if opts.MaxWait > 0 {
		m.MaxWaitMS = max(1, opts.MaxWait.Milliseconds())
	}
	m.ID = "r" + strconv.FormatUint(c.nextID.Add(1), 10)
	p := &pendingAcquire{msg: m, queued: opts.Queued, result: make(chan acquireResult, 1)}
	// Registered and written under wmu: a resume either sees it pending
	// and reconciles it, or it goes out on the new connection.
	c.wmu.Lock()
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		c.wmu.Unlock()
		return nil, err
	}
	c.pending[m.ID] = p
	c.mu.Unlock()
	err := c.sendLocked(m)
	c.wmu.Unlock()
	if err != nil {
		c.mu.Lock()
		delete(c.pending, m.ID)
		c.mu.Unlock()
		return nil, err
	}
	select {
	case r := <-p.result:
		return r.lease, r.err
	case <-ctx.Done():
	}
	// The caller gave up. The answer may already be on its way: if it is a
	// grant, the reader releases it (abandoned); otherwise cancel.
	c.mu.Lock()
	select {
	case r := <-p.result:
		c.mu.Unlock()
		if r.lease != nil {
			c.background(&Message{Type: TypeRelease, Lease: r.lease.id})
			r.lease.end(ErrReleased, false)
		}
	default:
		p.abandoned = true
		c.mu.Unlock()
		c.background(&Message{Type: TypeCancel, ID: m.ID})
	}
	return nil, contextError(ctx)
}

func checkRequests(reqs []Request) error {
	if len(reqs) == 0 {
		return forge.Errorf(forge.EINVALID, "no resources asked for")
	}
	for _, r := range reqs {
		if r.Pool == "" {
			return forge.Errorf(forge.EINVALID, "a request without a pool name")
		}
		if r.Count < 0 {
			return forge.Errorf(forge.EINVALID, "pool %q: count %d is negative", r.Pool, r.Count)
		}
	}
	return nil
}

// DefaultHolder describes this process to operators: "user@host what"
// (what may be empty), at most 200 bytes.
func DefaultHolder(what string) string {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	} else if v := os.Getenv("USER"); v != "" {
		name = v
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	s := name + "@" + host
	if what != "" {
		s += " " + what
	}
	if len(s) > 200 {
		s = strings.ToValidUTF8(s[:200], "")
	}
	return s
}

// send writes one message. It never uses a caller's context: the
// WebSocket library closes the connection when a write's context ends, and
// one caller giving up must not cost every lease of the Client. A write
// that takes longer than the keepalive bound means the connection is dead.
//
// With a resumable session a failed write is no error: the connection is
// closed, the reader resumes the session, and what the write was about
// is reconciled from the server's state (an acquire or release sent
// again if the server never got it).
func (c *Client) send(m *Message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.sendLocked(m)
}

func (c *Client) sendLocked(m *Message) error {
	data, err := json.Marshal(m)
	if err != nil {
		return forge.WrapError(forge.EINTERNAL, err, "cannot encode a lease message")
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.keepalive)
	defer cancel()
	conn := c.currentConn()
	if err := conn.Write(ctx, websocket.MessageText, data); err != nil {
		if c.resumable() && c.ctx.Err() == nil {
			conn.CloseNow() // the reader notices and resumes
			return nil
		}
		c.shutdown(forge.WrapError(forge.EUNAVAILABLE, err, "connection to the lease server lost"))
		return c.Err()
	}
	return nil
}

func (c *Client) currentConn() *websocket.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn
}

func (c *Client) resumable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.session != "" && !c.closing
}

// background sends m from a goroutine the Client owns, so the reader never
// blocks on a write.
func (c *Client) background(m *Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return // the connection is gone, and with it whatever m was about
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.send(m)
	}()
}

// read is the Client's only reader: it dispatches every message and ends
// the Client when the connection ends.
func (c *Client) read() {
	defer c.wg.Done()
	conn := c.currentConn()
	for {
		_, data, err := conn.Read(c.ctx)
		if err != nil {
			err = connectionError(err)
			if c.resumable() && c.ctx.Err() == nil {
				conn.CloseNow()
				if conn, err = c.resume(err); err == nil {
					continue
				}
			}
			c.shutdown(err)
			return
		}
		c.lastSeen.Store(time.Now().UnixNano())
		m, err := Decode(data)
		if err != nil {
			// A message this client does not understand (a newer
			// server's) is skipped rather than ending every lease.
			continue
		}
		c.dispatch(m, data)
	}
}

func connectionError(err error) error {
	switch websocket.CloseStatus(err) {
	case websocket.StatusNormalClosure:
		return forge.WrapError(forge.EUNAVAILABLE, err, "the lease server closed the connection")
	case websocket.StatusGoingAway:
		return forge.WrapError(forge.EUNAVAILABLE, err, "the lease server is going away (restart or shutdown)")
	case -1:
		if errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled) {
			return forge.WrapError(forge.EUNAVAILABLE, err, "connection to the lease server closed")
		}
	}
	return forge.WrapError(forge.EUNAVAILABLE, err, "connection to the lease server lost")
}

// watch ends the Client when the server goes silent: the server pings
// every keepalive/2, and when nothing has come for half the bound the
// watchdog pings itself; no pong within the rest of the bound ends it.
func (c *Client) watch() {
	defer c.wg.Done()
	tick := time.NewTicker(max(c.keepalive/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-tick.C:
		}
		silent := time.Since(time.Unix(0, c.lastSeen.Load()))
		if silent < c.keepalive/2 {
			continue
		}
		conn := c.currentConn()
		ctx, cancel := context.WithTimeout(c.ctx, c.keepalive-silent+c.keepalive/2)
		err := conn.Ping(ctx)
		cancel()
		if c.ctx.Err() != nil {
			return
		}
		if err != nil {
			if c.resumable() {
				// The reader sees the end and resumes the session; the
				// next round watches the new connection.
				conn.CloseNow()
				c.lastSeen.Store(time.Now().UnixNano())
				continue
			}
			c.shutdown(forge.WrapError(forge.EUNAVAILABLE, err, fmt.Sprintf("the lease server did not answer for %s", c.keepalive)))
			conn.CloseNow()
			return
		}
		c.lastSeen.Store(time.Now().UnixNano())
	}
}

func (c *Client) dispatch(m *Message, raw []byte) {
	switch m.Type {
	case TypeQueued:
		c.mu.Lock()
		p := c.pending[m.ID]
		c.mu.Unlock()
		if p != nil && p.queued != nil && !p.abandonedNow(c) {
			p.queued(m.Position)
		}
	case TypeGranted:
		c.mu.Lock()
		p := c.pending[m.ID]
		delete(c.pending, m.ID)
		if p == nil || p.abandoned {
			c.mu.Unlock()
			c.background(&Message{Type: TypeRelease, Lease: m.Lease})
			return
		}
		l := newLease(c, m, raw)
		c.leases[l.id] = l
		p.result <- acquireResult{lease: l}
		c.mu.Unlock()
	case TypeError:
		err := serverError(m)
		c.mu.Lock()
		if m.Session != "" && m.Session == c.session && m.Code == CodeExpired {
			// The server ends the session (a shutdown without kept
			// state): the connection's end loses the leases, no resume.
			c.session = ""
			c.mu.Unlock()
			c.logf("lease session %s ended by the server: %s", m.Session, m.Message)
			return
		}
		if p := c.pending[m.ID]; m.ID != "" && p != nil {
			delete(c.pending, m.ID)
			p.result <- acquireResult{err: err}
			c.mu.Unlock()
			return
		}
		l := c.leases[m.Lease]
		if m.Lease == "" || m.Code != CodeNotFound || (l != nil && !l.isReleasing()) {
			l = nil
		}
		if l != nil {
			delete(c.leases, m.Lease)
		}
		c.mu.Unlock()
		if l != nil {
			// The server no longer knows the lease we asked to release:
			// it is not ours any more either way.
			l.end(ErrReleased, false)
		}
	case TypeCanceled:
		c.mu.Lock()
		if p := c.pending[m.ID]; p != nil {
			delete(c.pending, m.ID)
			p.result <- acquireResult{err: forge.Errorf(forge.ECANCELED, "request withdrawn")}
		}
		c.mu.Unlock()
	case TypeReleased:
		c.mu.Lock()
		l := c.leases[m.Lease]
		delete(c.leases, m.Lease)
		c.mu.Unlock()
		if l != nil {
			l.end(ErrReleased, false)
		}
	case TypeRevoked:
		c.mu.Lock()
		l := c.leases[m.Lease]
		delete(c.leases, m.Lease)
		c.mu.Unlock()
		if l != nil {
			reason := m.Reason
			if reason == "" {
				reason = "no reason given"
			}
			l.end(forge.Errorf(forge.ECONFLICT, "lease %s revoked by the server: %s", l.id, reason), true)
		}
	case TypePong:
		c.mu.Lock()
		if ch := c.pings[m.ID]; ch != nil {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
		c.mu.Unlock()
	}
}

func (p *pendingAcquire) abandonedNow(c *Client) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return p.abandoned
}

// serverError turns an error message into a *forge.Error with the same
// code (the protocol's codes are forge's).
func serverError(m *Message) error {
	code := m.Code
	switch code {
	case CodeInvalid, CodeNotFound, CodeTimeout, CodeTooLarge, CodeConflict, CodeUnavailable, CodeUnauthorized:
	case CodeExpired:
		code = forge.ENOTFOUND
	default:
		code = forge.EINTERNAL
	}
	msg := m.Message
	if msg == "" {
		msg = "lease server error " + m.Code
	}
	return &forge.Error{Code: code, Message: msg}
}

// shutdown ends the Client once: waiting acquisitions fail and leases end
// (lost, unless Close was called).
func (c *Client) shutdown(err error) {
	c.shutOnce.Do(func() {
		c.mu.Lock()
		c.err = err
		lost := !c.closing
		pending, leases := c.pending, c.leases
		c.pending, c.leases = map[string]*pendingAcquire{}, map[string]*Lease{}
		close(c.done)
		for _, p := range pending {
			p.result <- acquireResult{err: err}
		}
		conn := c.conn
		c.mu.Unlock()
		c.cancel()
		conn.CloseNow()
		for _, l := range leases {
			if lost {
				l.end(err, true)
			} else {
				l.end(ErrReleased, false)
			}
		}
	})
}
