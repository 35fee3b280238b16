package replica

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/forgeci/forge"
	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/lease/leasehttp"
	"github.com/forgeci/forge/internal/testwait"
)

// fakeDB is the election's shared state: one lock, one leader row.
type fakeDB struct {
	mu    sync.Mutex
	held  bool
	epoch int64
	url   string
	token string
}

type fakeElector struct {
	db         *fakeDB
	url, token string
}

func (e *fakeElector) Campaign(ctx context.Context) (Term, error) {
	for {
		e.db.mu.Lock()
		if !e.db.held {
			e.db.held = true
			e.db.epoch++
			e.db.url = ""
			t := &fakeTerm{e: e, epoch: e.db.epoch, lost: make(chan struct{})}
			e.db.mu.Unlock()
			return t, nil
		}
		e.db.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (e *fakeElector) Leader(context.Context) (Leader, error) {
	e.db.mu.Lock()
	defer e.db.mu.Unlock()
	return Leader{Epoch: e.db.epoch, URL: e.db.url, Token: e.db.token}, nil
}

type fakeTerm struct {
	e     *fakeElector
	epoch int64
	once  sync.Once
	lost  chan struct{}
}

func (t *fakeTerm) Epoch() int64          { return t.epoch }
func (t *fakeTerm) Lost() <-chan struct{} { return t.lost }
func (t *fakeTerm) Err() error            { return forge.Errorf(forge.ECONFLICT, "lost") }
func (t *fakeTerm) lose()                 { t.once.Do(func() { close(t.lost) }) }
func (t *fakeTerm) Publish(context.Context) error {
	t.e.db.mu.Lock()
	defer t.e.db.mu.Unlock()
	if t.e.db.epoch != t.epoch {
		return forge.Errorf(forge.ECONFLICT, "deposed")
	}
	t.e.db.url, t.e.db.token = t.e.url, t.e.token
	return nil
}
func (t *fakeTerm) Resign() {
	t.lose()
	t.e.db.mu.Lock()
	defer t.e.db.mu.Unlock()
	if t.e.db.epoch == t.epoch {
		t.e.db.held = false
	}
}

// node is one replica on an httptest server.
type node struct {
	r      *Replica
	url    string
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	mem   *lease.Memory
	terms []*fakeTerm
}

type service struct {
	mem *lease.Memory
	srv *leasehttp.Server
}

func (s *service) Handler() http.Handler { return s.srv.Handler() }
func (s *service) Stop(ctx context.Context, lost bool) {
	if lost {
		s.mem.Close()
	}
	_ = s.srv.Shutdown(ctx)
	s.mem.Close()
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func startNode(t *testing.T, db *fakeDB, name string) *node {
	t.Helper()
	n := &node{done: make(chan struct{})}
	var h http.Handler = http.NotFoundHandler()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	n.url = hs.URL
	token := "token-" + name
	n.r = New(Options{
		Elector: &fakeElector{db: db, url: hs.URL, token: token},
		Token:   token,
		Lead: func(ctx context.Context, t Term) (Service, error) {
			mem, err := lease.NewMemory([]*forge.Pool{{Name: "dut", Order: "fifo", Resources: []*forge.Resource{{ID: "dut1"}}}}, lease.MemoryOptions{})
			if err != nil {
				return nil, err
			}
			n.mu.Lock()
			n.mem = mem
			n.terms = append(n.terms, t.(*fakeTerm))
			n.mu.Unlock()
			srv := leasehttp.NewServer(mem, leasehttp.Options{Durable: true, Logger: quiet,
				Forwarded: func(r *http.Request) bool { return IsForwarded(r, token) }})
			return &service{mem: mem, srv: srv}, nil
		},
		Logger:    quiet,
		LeaderTTL: 10 * time.Millisecond,
	})
	h = n.r.Handler()
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() {
		defer close(n.done)
		n.r.Run(ctx)
	}()
	t.Cleanup(func() {
		n.stop()
		hs.Close()
	})
	return n
}

func (n *node) stop() {
	n.cancel()
	<-n.done
}

func (n *node) leading() bool { l, _ := n.r.Leading(); return l }

func (n *node) memory() *lease.Memory {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mem
}

// wsClient is a raw protocol client.
type wsClient struct {
	t    *testing.T
	ws   *websocket.Conn
	msgs chan *wire.Message
}

func dialWS(t *testing.T, url string) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, strings.Replace(url, "http", "ws", 1)+WSPath+"?version=2", nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c := &wsClient{t: t, ws: ws, msgs: make(chan *wire.Message, 64)}
	go func() {
		defer close(c.msgs)
		for {
			_, data, err := ws.Read(context.Background())
			if err != nil {
				return
			}
			var m wire.Message
			if json.Unmarshal(data, &m) == nil {
				c.msgs <- &m
			}
		}
	}()
	if m := c.next(); m.Type != wire.TypeHello {
		t.Fatalf("first message %+v", m)
	}
	t.Cleanup(func() { ws.CloseNow() })
	return c
}

func (c *wsClient) send(v any) {
	c.t.Helper()
	data, _ := json.Marshal(v)
	if err := c.ws.Write(context.Background(), websocket.MessageText, data); err != nil {
		c.t.Fatal(err)
	}
}

func (c *wsClient) next() *wire.Message {
	c.t.Helper()
	select {
	case m, ok := <-c.msgs:
		if !ok {
			c.t.Fatal("connection closed")
		}
		return m
	case <-time.After(testwait.Scale(20 * time.Second)):
		c.t.Fatal("no message")
	}
	return nil
}

// closed waits for the connection's end.
func (c *wsClient) closed() {
	c.t.Helper()
	for {
		select {
		case _, ok := <-c.msgs:
			if !ok {
				return
			}
		case <-time.After(testwait.Scale(20 * time.Second)):
			c.t.Fatal("the connection did not end")
		}
	}
}

// session opens a session and acquires dut; it returns the session id.
func (c *wsClient) sessionAndAcquire() string {
	c.t.Helper()
	c.send(map[string]any{"type": "session"})
	s := c.next()
	if s.Type != wire.TypeSession {
		c.t.Fatalf("session: %+v", s)
	}
	c.send(map[string]any{"type": "acquire", "id": "r1", "requests": []any{map[string]any{"pool": "dut"}}})
	if m := c.next(); m.Type != wire.TypeGranted {
		c.t.Fatalf("acquire: %+v", m)
	}
	return s.Session
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := testwait.Until(testwait.Scale(20*time.Second), cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// resource returns dut1's state at the leader, and whether its session
// is detached.
func resource(t *testing.T, m *lease.Memory) (state string, detached bool) {
	t.Helper()
	p, err := m.Pool(context.Background(), "dut")
	if err != nil {
		t.Fatal(err)
	}
	ls, err := m.Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		detached = detached || l.DetachedUntil != nil
	}
	return string(p.Resources[0].State), detached
}

func twoNodes(t *testing.T) (leader, follower *node) {
	db := &fakeDB{}
	a := startNode(t, db, "a")
	waitFor(t, "a to lead", func() bool {
		db.mu.Lock()
		defer db.mu.Unlock()
		return db.url == a.url
	})
	b := startNode(t, db, "b")
	return a, b
}

// A follower relays: its client is granted from the leader's pool, and
// REST calls are answered by the leader.
func TestFollowerForwards(t *testing.T) {
	a, b := twoNodes(t)
	if b.leading() || !a.leading() {
		t.Fatal("b leads")
	}
	c := dialWS(t, b.url)
	c.sessionAndAcquire()
	if st, _ := resource(t, a.memory()); st != "leased" {
		t.Fatalf("at the leader dut1 is %s", st)
	}
	resp, err := http.Get(b.url + "/api/v1/leases")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"dut1"`) {
		t.Fatalf("GET /api/v1/leases through the follower: %d %s", resp.StatusCode, body)
	}
	// A request forwarded to a server that does not lead is not
	// forwarded again.
	req, _ := http.NewRequest("GET", b.url+"/api/v1/pools", nil)
	req.Header.Set(ForwardedHeader, "token-a")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("forwarded to a follower: %d, want 503", resp.StatusCode)
	}
}

// A client that closes its socket behind a follower ends its session at
// once, as it would at the leader.
func TestFollowerClientGoneEndsSession(t *testing.T) {
	a, b := twoNodes(t)
	c := dialWS(t, b.url)
	c.sessionAndAcquire()
	c.ws.CloseNow()
	waitFor(t, "dut1 free", func() bool { st, _ := resource(t, a.memory()); return st == "free" })
}

// A follower that dies leaves its clients' sessions detached at the
// leader: they resume through another server.
func TestFollowerDeathDetaches(t *testing.T) {
	a, b := twoNodes(t)
	c := dialWS(t, b.url)
	id := c.sessionAndAcquire()
	b.stop()
	c.closed()
	waitFor(t, "the session detached", func() bool { _, d := resource(t, a.memory()); return d })
	if st, _ := resource(t, a.memory()); st != "leased" {
		t.Fatalf("dut1 %s after the follower's death", st)
	}
	_ = id
}

// A leader that loses its term steps down: its session clients are told
// to reconnect, another server leads, and the first forwards to it.
func TestLeaderStepsDown(t *testing.T) {
	a, b := twoNodes(t)
	c := dialWS(t, a.url)
	c.sessionAndAcquire()
	a.mu.Lock()
	term := a.terms[0]
	a.mu.Unlock()
	term.lose()
	if m := c.next(); m.Type != wire.TypeReconnect {
		t.Fatalf("after the step-down: %+v, want reconnect", m)
	}
	c.closed()
	if code := websocket.CloseStatus(c.ws.CloseRead(context.Background()).Err()); code != -1 && code != websocket.StatusServiceRestart {
		t.Fatalf("close status %d", code)
	}
	// a's Run resigns after the stop; b takes over, a forwards to it.
	waitFor(t, "b to lead", func() bool { return b.leading() })
	waitFor(t, "a to forward", func() bool {
		resp, err := http.Get(a.url + "/api/v1/pools")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	c2 := dialWS(t, a.url)
	c2.sessionAndAcquire()
	if st, _ := resource(t, b.memory()); st != "leased" {
		t.Fatalf("at the new leader dut1 is %s", st)
	}
}

// frames finds the boundaries of client frames however the stream is cut.
func TestFrames(t *testing.T) {
	frame := func(op byte, n int) []byte {
		b := []byte{0x80 | op}
		switch {
		case n < 126:
			b = append(b, 0x80|byte(n))
		case n < 1<<16:
			b = append(b, 0x80|126, byte(n>>8), byte(n))
		default:
			b = append(b, 0x80|127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
		}
		b = append(b, 1, 2, 3, 4)
		return append(b, make([]byte, n)...)
	}
	var stream []byte
	var ends []int
	for _, n := range []int{0, 5, 125, 126, 300, 70000} {
		stream = append(stream, frame(1, n)...)
		ends = append(ends, len(stream))
	}
	stream = append(stream, closeFrame(1001, "bye")...)
	ends = append(ends, len(stream))
	for _, step := range []int{1, 3, 7, 4096, len(stream)} {
		var f frames
		isEnd := map[int]bool{}
		for _, e := range ends {
			isEnd[e] = true
		}
		for i := 0; i < len(stream); i += step {
			j := min(i+step, len(stream))
			f.feed(stream[i:j])
			if step == 1 && f.boundary() != isEnd[j] {
				t.Fatalf("after %d bytes: boundary %v, want %v", j, f.boundary(), isEnd[j])
			}
		}
		if !f.boundary() || !f.closed {
			t.Fatalf("step %d: at the end boundary %v closed %v", step, f.boundary(), f.closed)
		}
	}
	var f frames
	f.feed(frame(1, 10)[:5])
	if f.boundary() || f.closed {
		t.Fatal("a cut frame is a boundary")
	}
}
