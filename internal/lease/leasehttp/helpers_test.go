package leasehttp

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/forgeci/forge/internal/prometheus"
	"github.com/goccy/go-yaml"

	"github.com/forgeci/forge"
	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/testwait"
)

// testEnv is a real server on loopback with its manager.
type testEnv struct {
	t     *testing.T
	m     *lease.Memory
	s     *Server
	hs    *httptest.Server
	reg   *prometheus.Registry
	wsURL string
}

func poolsFromYAML(t testing.TB, src string) ([]*forge.Pool, *lease.Config) {
	t.Helper()
	var c lease.Config
	if err := yaml.Unmarshal([]byte(src), &c); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	pools, err := c.BuildPools()
	if err != nil {
		t.Fatalf("build pools: %v", err)
	}
	return pools, &c
}

// newEnv starts a server over a Memory holding config's pools; wrap, when
// given, wraps the Memory in what the server is given.
func newEnv(t *testing.T, config string, opts Options, mopts lease.MemoryOptions, wrap ...func(lease.Manager) lease.Manager) *testEnv {
	t.Helper()
	pools, _ := poolsFromYAML(t, config)
	m, err := lease.NewMemory(pools, mopts)
	if err != nil {
		t.Fatalf("NewMemory: %v", err)
	}
	var served lease.Manager = m
	for _, w := range wrap {
		served = w(served)
	}
	reg := prometheus.NewRegistry()
	opts.Registry = reg
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := NewServer(served, opts)
	hs := httptest.NewServer(s.Handler())
	e := &testEnv{t: t, m: m, s: s, hs: hs, reg: reg, wsURL: "ws" + strings.TrimPrefix(hs.URL, "http") + "/api/v1/leases/ws"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		hs.Close()
		m.Close()
	})
	return e
}

// testClient is a protocol client that records every message it gets.
type testClient struct {
	t    testing.TB
	ws   *websocket.Conn
	msgs chan *wire.Message
	raw  chan []byte
	done chan struct{}
	conn string
}

func (e *testEnv) dial() *testClient {
	e.t.Helper()
	return dialURL(e.t, e.wsURL)
}

func dialURL(t testing.TB, url string) *testClient {
	t.Helper()
	return dialURLWith(t, url, nil)
}

func dialURLWith(t testing.TB, url string, opts *websocket.DialOptions) *testClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	ws.SetReadLimit(1 << 20)
	c := &testClient{t: t, ws: ws, msgs: make(chan *wire.Message, 10000), raw: make(chan []byte, 10000), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer close(c.msgs)
		for {
			_, data, err := ws.Read(context.Background())
			if err != nil {
				return
			}
			var m wire.Message
			if err := json.Unmarshal(data, &m); err != nil {
				t.Errorf("server sent invalid JSON %q: %v", data, err)
				return
			}
			select {
			case c.raw <- data:
			default:
			}
			c.msgs <- &m
		}
	}()
	hello := c.next()
	want := 1
	if strings.Contains(url, "version=2") {
		want = 2
	}
	if hello.Type != wire.TypeHello || hello.Version != want || hello.Connection == "" || hello.KeepaliveMS <= 0 {
		t.Fatalf("first message: got %+v, want hello version %d with a connection id", hello, want)
	}
	c.conn = hello.Connection
	<-c.raw
	t.Cleanup(func() { ws.CloseNow() })
	return c
}

func (c *testClient) sendRaw(s string) {
	c.t.Helper()
	if err := c.ws.Write(context.Background(), websocket.MessageText, []byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *testClient) send(v any) {
	c.t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(string(data))
}

func (c *testClient) acquire(id string, reqs ...map[string]any) {
	c.t.Helper()
	c.send(map[string]any{"type": "acquire", "id": id, "holder": "test " + id, "requests": reqs})
}

func req(pool string, count int, labels ...string) map[string]any {
	r := map[string]any{"pool": pool, "count": count}
	if len(labels) > 0 {
		l := map[string]string{}
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			l[k] = v
		}
		r["labels"] = l
	}
	return r
}

// next returns the next message, failing after 30s: room for a loaded
// machine (5s was not: make test-loaded).
func (c *testClient) next() *wire.Message {
	c.t.Helper()
	select {
	case m, ok := <-c.msgs:
		if !ok {
			c.t.Fatalf("connection closed while waiting for a message")
		}
		return m
	case <-time.After(testwait.Scale(30 * time.Second)):
		c.t.Fatalf("no message within 30s")
	}
	return nil
}

// expect returns the next message that is not a queued update, checking
// its type.
func (c *testClient) expect(typ string) *wire.Message {
	c.t.Helper()
	for {
		m := c.next()
		if m.Type == wire.TypeQueued && typ != wire.TypeQueued {
			continue
		}
		if m.Type != typ {
			c.t.Fatalf("got message %+v, want type %q", m, typ)
		}
		return m
	}
}

// quiet checks no message other than queued updates arrives within d.
func (c *testClient) quiet(d time.Duration) {
	c.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case m, ok := <-c.msgs:
			if !ok {
				c.t.Fatalf("connection closed; want it open and quiet")
			}
			if m.Type != wire.TypeQueued {
				c.t.Fatalf("got %+v, want no message", m)
			}
		case <-deadline:
			return
		}
	}
}

func (c *testClient) release(lease string) {
	c.t.Helper()
	c.send(map[string]any{"type": "release", "lease": lease})
	m := c.expect(wire.TypeReleased)
	if m.Lease != lease {
		c.t.Fatalf("released %q, want %q", m.Lease, lease)
	}
}

func ids(m *wire.Message, pool string) string {
	var out []string
	for _, r := range m.Resources[pool] {
		out = append(out, r.ID)
	}
	return strings.Join(out, ",")
}

// rest does one REST call and decodes the JSON answer into out (if not nil).
func (e *testEnv) rest(method, path, body string, out any) int {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	rq, err := http.NewRequest(method, e.hs.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(rq)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			e.t.Fatalf("%s %s: answer %q: %v", method, path, data, err)
		}
	}
	return resp.StatusCode
}

func waitABit() { time.Sleep(5 * time.Millisecond) }

// conn returns the server's side of the connection id.
func (e *testEnv) conn(id string) *conn {
	e.t.Helper()
	e.s.mu.Lock()
	defer e.s.mu.Unlock()
	for c := range e.s.conns {
		if c.id == id {
			return c
		}
	}
	e.t.Fatalf("the server has no connection %s", id)
	return nil
}
