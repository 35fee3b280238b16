package lease_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/forgeci/forge"
	. "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/lease/leasehttp"
)

// testServer is the real lease server (internal/lease) on loopback,
// reached through a TCP proxy whose connections the test can cut.
type testServer struct {
	URL string
	m   *lease.Memory
	hs  *httptest.Server

	ln     net.Listener
	mu     sync.Mutex
	conns  []net.Conn
	fronts []net.Conn
	hold   bool // cutClients: the server's side stays open
}

func newTestServer(t testing.TB, pools ...*forge.Pool) *testServer {
	t.Helper()
	return newTestServerKeepalive(t, 0, pools...)
}

// newTestServerKeepalive is newTestServer with the server's keepalive
// bound (0: its default).
func newTestServerKeepalive(t testing.TB, keepalive time.Duration, pools ...*forge.Pool) *testServer {
	t.Helper()
	return newTestServerOptions(t, leasehttp.Options{Keepalive: keepalive}, pools...)
}

// newTestServerOptions is newTestServer with the server's options.
func newTestServerOptions(t testing.TB, opts leasehttp.Options, pools ...*forge.Pool) *testServer {
	t.Helper()
	m, err := lease.NewMemory(pools, lease.MemoryOptions{PositionInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatalf("NewMemory: %v", err)
	}
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s := leasehttp.NewServer(m, opts)
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		hs.Close()
		m.Close()
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{URL: "http://" + ln.Addr().String(), m: m, hs: hs, ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		ts.kill()
		wg.Wait()
	})
	backend := hs.Listener.Addr().String()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			front, err := ln.Accept()
			if err != nil {
				return
			}
			back, err := net.Dial("tcp", backend)
			if err != nil {
				front.Close()
				continue
			}
			ts.mu.Lock()
			ts.conns = append(ts.conns, front, back)
			ts.fronts = append(ts.fronts, front)
			ts.mu.Unlock()
			wg.Add(2)
			go func() {
				defer wg.Done()
				io.Copy(back, front)
				ts.mu.Lock()
				hold := ts.hold
				ts.mu.Unlock()
				if !hold {
					back.Close()
				}
			}()
			go func() { defer wg.Done(); io.Copy(front, back); front.Close() }()
		}
	}()
	return ts
}

// held is how many resources are leased now, over every pool.
func (s *testServer) held(t *testing.T) int {
	t.Helper()
	pools, err := s.m.Pools(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range pools {
		n += p.InUse
	}
	return n
}

// queued is how many requests wait in pool's queue.
func (s *testServer) queued(t *testing.T, pool string) int {
	t.Helper()
	p, err := s.m.Pool(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	return len(p.Queue)
}

// kill drops every connection abruptly, as a crash or a cut cable would.
func (s *testServer) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

// cutClients breaks every connection on the clients' side only: the
// server sees nothing (a network that failed where the client is).
func (s *testServer) cutClients() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold = true
	for _, c := range s.fronts {
		c.Close()
	}
	s.fronts = nil
}

func dutPool() *forge.Pool {
	return &forge.Pool{Name: "dut", Order: "fifo", Resources: []*forge.Resource{
		{ID: "dut1", Attributes: map[string]string{"host": "10.0.0.5"}, Labels: map[string]string{"arch": "arm64"}},
		{ID: "dut2", Attributes: map[string]string{"host": "10.0.0.6"}, Labels: map[string]string{"arch": "amd64"}},
	}}
}

func onePool(name string, ids ...string) *forge.Pool {
	p := &forge.Pool{Name: name, Order: "fifo"}
	for _, id := range ids {
		p.Resources = append(p.Resources, &forge.Resource{ID: id})
	}
	return p
}

// silentServer says hello and then nothing, never reading, so it answers
// no pings: a server behind a network that went silent.
func silentServer(t *testing.T) string {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		hello, _ := json.Marshal(Message{Type: TypeHello, Version: 1, KeepaliveMS: 10000, Connection: "C1"})
		ws.Write(r.Context(), websocket.MessageText, hello)
		<-r.Context().Done()
	}))
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
	})
	return hs.URL
}
