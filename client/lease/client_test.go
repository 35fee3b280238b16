package lease_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forgeci/forge"
	. "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/lease/leasehttp"
	"github.com/forgeci/forge/internal/testwait"
)

func twoDUTs() []*forge.Pool {
	return []*forge.Pool{dutPool(), onePool("lab-ports.x", "20000", "20001", "20002")}
}

func dial(t *testing.T, url string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("Dial(%s): %v", url, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func acquire(t *testing.T, c *Client, reqs ...Request) *Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := c.Acquire(ctx, "test", reqs, nil)
	if err != nil {
		t.Fatalf("Acquire(%v): %v", reqs, err)
	}
	return l
}

func TestWebSocketURL(t *testing.T) {
	tests := []struct {
		in, want, code string
	}{
		{"http://127.0.0.1:8080", "ws://127.0.0.1:8080/api/v1/leases/ws", ""},
		{"http://127.0.0.1:8080/", "ws://127.0.0.1:8080/api/v1/leases/ws", ""},
		{"https://forge.example.com", "wss://forge.example.com/api/v1/leases/ws", ""},
		{"https://example.com/forge/", "wss://example.com/forge/api/v1/leases/ws", ""},
		{"ws://h:1/api/v1/leases/ws", "ws://h:1/api/v1/leases/ws", ""},
		{"wss://h/api/v1/leases/ws", "wss://h/api/v1/leases/ws", ""},
		{"localhost:8080", "ws://localhost:8080/api/v1/leases/ws", ""},
		{"", "", forge.EINVALID},
		{"ftp://h", "", forge.EINVALID},
		{"http://", "", forge.EINVALID},
		{"http://bad host", "", forge.EINVALID},
	}
	for _, tt := range tests {
		got, err := WebSocketURL(tt.in)
		if got != tt.want || forge.ErrorCode(err) != tt.code {
			t.Errorf("WebSocketURL(%q) = %q, %v; want %q, code %q", tt.in, got, err, tt.want, tt.code)
		}
	}
}

func TestEnvName(t *testing.T) {
	tests := []struct{ pool, want string }{
		{"dut", "FORGE_LEASE_DUT"},
		{"lab-dut.x", "FORGE_LEASE_LAB_DUT_X"},
		{"Ports_2", "FORGE_LEASE_PORTS_2"},
		{"ün", "FORGE_LEASE__N"},
	}
	for _, tt := range tests {
		if got := EnvName(tt.pool); got != tt.want {
			t.Errorf("EnvName(%q) = %q, want %q", tt.pool, got, tt.want)
		}
	}
}

func TestGrantEnv(t *testing.T) {
	res := map[string][]Resource{
		"dut":  {{ID: "d2"}, {ID: "d1"}},
		"a-b":  {{ID: "x"}},
		"a.b":  {{ID: "y"}, {ID: "z"}},
		"none": nil,
	}
	got := GrantEnv(res, []byte(`{"type":"granted"}`))
	want := map[string]string{
		"FORGE_LEASE_DUT":  "d2,d1",
		"FORGE_LEASE_A_B":  "x,y,z",
		"FORGE_LEASE_NONE": "",
		"FORGE_LEASE_JSON": `{"type":"granted"}`,
	}
	if !maps.Equal(got, want) {
		t.Errorf("GrantEnv = %v, want %v", got, want)
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string // substring; "" means valid
	}{
		{`{"type":"acquire","id":"r1","holder":"a","requests":[{"pool":"dut","count":1,"labels":{"arch":"arm64"}}],"max_wait_ms":30000}`, ""},
		{`{"type":"hello","version":1,"keepalive_ms":10000,"connection":"C1"}`, ""},
		{`{"type":"granted","id":"r1","lease":"L1","resources":{"dut":[{"id":"dut1"}]}}`, ""},
		{`{"type":"error","code":"invalid","message":"x"}`, ""},
		{`{"type":"revoked","lease":"L1","reason":"operator"}`, ""},
		{`[]`, "must be a JSON object"},
		{`{"type":`, "invalid JSON"},
		{"{\"type\":\"ping\",\"id\":\"\xff\"}", "not valid UTF-8"},
		{`{}`, `without "type"`},
		{`{"type":"bogus"}`, "unknown message type"},
		{`{"type":"acquire","id":"r1"}`, `without "requests"`},
		{`{"type":"acquire","requests":[{"pool":"a"}]}`, `without "id"`},
		{`{"type":"acquire","id":"r1","requests":[{"count":1}]}`, `without "pool"`},
		{`{"type":"acquire","id":"r1","requests":[{"pool":"a","count":-1}]}`, "at least 1"},
		{`{"type":"acquire","id":"r1","requests":[{"pool":"a","count":0}]}`, "at least 1"},
		{`{"type":"acquire","id":"r1","requests":[{"pool":"a"}]}`, ""},
		{`{"type":"acquire","id":"r1","requests":[{"pool":"a","count":"2"}]}`, "must be int"},
		{`{"type":"acquire","id":"r1","requests":[{"pool":"a"}],"max_wait_ms":-1}`, "negative"},
		{`{"type":"acquire","id":"r1","requests":[{"pool":"a"}],"max_wait_ms":99999999999999}`, "more than a year"},
		{`{"type":"acquire","id":"r1","holder":"` + strings.Repeat("h", 1025) + `","requests":[{"pool":"a"}]}`, "longer than 1024"},
		{`{"type":"ping"}`, ""},
		{`{"type":"pong"}`, ""},
		{`{"type":"cancel"}`, `without "id"`},
		{`{"type":"release","lease":"` + strings.Repeat("L", 129) + `"}`, "longer than 128"},
		{`{"type":"acquire","id":"` + strings.Repeat("x", 129) + `","requests":[{"pool":"a"}]}`, "longer than 128"},
		{`{"type":"release"}`, `without "lease"`},
		{`{"type":"granted","id":"r1","lease":"L1","resources":{"dut":[{}]}}`, "without an id"},
		{`{"type":"error"}`, `without "code"`},
		{`{"type":"hello"}`, "version"},
	}
	for _, tt := range tests {
		_, err := Decode([]byte(tt.in))
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("Decode(%s) = %v, want no error", tt.in, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("Decode(%s) = %v, want an error containing %q", tt.in, err, tt.wantErr)
		}
	}
}

// FuzzDecode: Decode never panics and never returns a nil message; an
// error is EINVALID with a message and echoes no over-long identifier; an
// accepted message re-encodes to something that decodes alike.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"type":"acquire","id":"r1","holder":"a","requests":[{"pool":"dut","count":2}]}`))
	f.Add([]byte(`{"type":"granted","id":"r1","lease":"L1","granted_at":"2026-01-01T00:00:00Z","resources":{"dut":[{"id":"d"}]}}`))
	f.Add([]byte(`{"type":"queued","id":"r1","position":3}`))
	f.Add([]byte(`{"type":"release","lease":"L1"}`))
	f.Add([]byte(`{"type":"ping"}`))
	f.Add([]byte(`{"type":1,"id":"r"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data)
		if m == nil {
			t.Fatal("nil message")
		}
		if err != nil {
			if forge.ErrorCode(err) != forge.EINVALID || forge.ErrorMessage(err) == "" {
				t.Fatalf("error %v: want invalid with a message", err)
			}
			if len(m.ID) > MaxIDLength || len(m.Lease) > MaxLeaseIDLength {
				t.Fatalf("echoes an over-long identifier: %+v", m)
			}
			return
		}
		if m.Type == TypeAcquire {
			for _, r := range m.Requests {
				if rr := r.ResourceRequest(); rr.Pool == "" || rr.Count < 1 {
					t.Fatalf("accepted bad request %+v", r)
				}
			}
		}
		// A decoded message re-encodes to something that decodes alike.
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("re-encoding %#v: %v", m, err)
		}
		m2, err := Decode(again)
		if err != nil {
			t.Fatalf("Decode(%s) accepted, but its re-encoding %s fails: %v", data, again, err)
		}
		if m2.Type != m.Type || m2.ID != m.ID || m2.Lease != m.Lease || len(m2.Requests) != len(m.Requests) {
			t.Fatalf("round trip changed %+v into %+v", m, m2)
		}
		m.Time()
		GrantEnv(m.Resources, data)
	})
}

// A server names the request in its error answer: Decode gives back the
// identifiers it could read even when the message is refused.
func TestDecodeSalvagesIdentifiers(t *testing.T) {
	tests := []struct{ in, id, lease string }{
		{`{"type":1,"id":"r"}`, "r", ""},
		{`{"type":"acquire","id":"r","requests":[{"pool":"a","count":"2"}]}`, "r", ""},
		{`{"type":"acquire","id":"r","requests":[]}`, "r", ""},
		{`{"type":"release","lease":"L1","max_wait_ms":"soon"}`, "", "L1"},
		{`{"type":"release","lease":"L1",`, "", ""}, // not JSON: nothing to salvage
		{`{"type":"acquire","id":"` + strings.Repeat("x", 129) + `","requests":[{"pool":"a"}]}`, "", ""},
		{`[1]`, "", ""},
	}
	for _, tt := range tests {
		m, err := Decode([]byte(tt.in))
		if err == nil {
			t.Errorf("Decode(%s) accepted it", tt.in)
			continue
		}
		if m.ID != tt.id || m.Lease != tt.lease {
			t.Errorf("Decode(%s) kept id %q lease %q, want %q and %q", tt.in, m.ID, m.Lease, tt.id, tt.lease)
		}
	}
}

func TestAcquireGrantsResourcesAndEnv(t *testing.T) {
	f := newTestServer(t, twoDUTs()...)
	c := dial(t, f.URL)
	l := acquire(t, c, Request{Pool: "dut", Labels: map[string]string{"arch": "amd64"}}, Request{Pool: "lab-ports.x", Count: 2})

	if got := l.IDs("dut"); len(got) != 1 || got[0] != "dut2" {
		t.Errorf("dut ids = %v, want [dut2] (the amd64 one)", got)
	}
	if got := l.Resources()["dut"][0].Attributes["host"]; got != "10.0.0.6" {
		t.Errorf("dut2 host = %q, want 10.0.0.6", got)
	}
	env := l.Env()
	if got, want := env["FORGE_LEASE_DUT"], "dut2"; got != want {
		t.Errorf("FORGE_LEASE_DUT = %q, want %q", got, want)
	}
	if got, want := env["FORGE_LEASE_LAB_PORTS_X"], "20000,20001"; got != want {
		t.Errorf("FORGE_LEASE_LAB_PORTS_X = %q, want %q", got, want)
	}
	var m Message
	if err := json.Unmarshal([]byte(env["FORGE_LEASE_JSON"]), &m); err != nil || m.Type != TypeGranted || m.Lease != l.ID() {
		t.Errorf("FORGE_LEASE_JSON = %s (%v), want the granted message of %s", env["FORGE_LEASE_JSON"], err, l.ID())
	}
	if info := l.Info(); info.ID != l.ID() || len(info.Resources["lab-ports.x"]) != 2 || info.Granted.IsZero() {
		t.Errorf("Info() = %+v", info)
	}
	if got := f.held(t); got != 3 {
		t.Fatalf("server holds %d resources, want 3", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if got := f.held(t); got != 0 {
		t.Errorf("server holds %d resources after Release, want 0", got)
	}
	if err := l.Release(ctx); err != nil {
		t.Errorf("second Release: %v, want nil (idempotent)", err)
	}
	select {
	case <-l.Lost():
		t.Error("Lost closed after Release")
	default:
	}
	if got := context.Cause(l.Context()); !errors.Is(got, ErrReleased) {
		t.Errorf("Context cause after Release = %v, want ErrReleased", got)
	}
}

func TestQueuePositionAndHandoff(t *testing.T) {
	f := newTestServer(t, onePool("dut", "dut1"))
	first, second, third := dial(t, f.URL), dial(t, f.URL), dial(t, f.URL)
	l1 := acquire(t, first, Request{Pool: "dut"})

	var mu sync.Mutex
	var positions []int
	type result struct {
		l   *Lease
		err error
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got2 := make(chan result, 1)
	go func() {
		l, err := second.Acquire(ctx, "second", []Request{{Pool: "dut"}}, &AcquireOptions{Queued: func(p int) {
			mu.Lock()
			positions = append(positions, p)
			mu.Unlock()
		}})
		got2 <- result{l, err}
	}()
	testwait.For(t, "second to be queued", func() bool { mu.Lock(); defer mu.Unlock(); return len(positions) > 0 })
	got3 := make(chan result, 1)
	go func() {
		l, err := third.Acquire(ctx, "third", []Request{{Pool: "dut"}}, nil)
		got3 <- result{l, err}
	}()
	time.Sleep(20 * time.Millisecond)
	select {
	case r := <-got2:
		t.Fatalf("second granted while the first holds the only device: %v", r)
	default:
	}
	if err := l1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-got2
	if r.err != nil || r.l.IDs("dut")[0] != "dut1" {
		t.Fatalf("second Acquire = %v, %v; want dut1", r.l, r.err)
	}
	mu.Lock()
	if len(positions) != 1 || positions[0] != 1 {
		t.Errorf("second saw positions %v, want [1]", positions)
	}
	mu.Unlock()
	// Closing the second's connection hands the device to the third.
	second.Close()
	r = <-got3
	if r.err != nil {
		t.Fatalf("third Acquire after the second closed: %v", r.err)
	}
}

func TestAcquireErrors(t *testing.T) {
	f := newTestServer(t, twoDUTs()...)
	c := dial(t, f.URL)
	tests := []struct {
		name string
		reqs []Request
		opts *AcquireOptions
		code string
		msg  string
	}{
		{"unknown pool", []Request{{Pool: "nope"}}, nil, forge.ENOTFOUND, `unknown pool "nope"`},
		{"more than the pool has", []Request{{Pool: "dut", Count: 3}}, nil, forge.EINVALID, "never grant 3"},
		{"no requests", nil, nil, forge.EINVALID, "no resources"},
		{"no pool", []Request{{Count: 1}}, nil, forge.EINVALID, "without a pool"},
		{"negative count", []Request{{Pool: "dut", Count: -1}}, nil, forge.EINVALID, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			l, err := c.Acquire(ctx, "t", tt.reqs, tt.opts)
			if l != nil || forge.ErrorCode(err) != tt.code || !strings.Contains(forge.ErrorMessage(err), tt.msg) {
				t.Errorf("Acquire = %v, %v; want code %s with %q", l, err, tt.code, tt.msg)
			}
		})
	}
	// An error leaves the connection and its leases alone.
	l := acquire(t, c, Request{Pool: "dut", Count: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Acquire(ctx, "t", []Request{{Pool: "dut"}}, &AcquireOptions{MaxWait: 50 * time.Millisecond})
	if forge.ErrorCode(err) != forge.ETIMEOUT || time.Since(start) < 50*time.Millisecond {
		t.Errorf("Acquire with MaxWait on a busy pool = %v after %v; want ETIMEOUT after 50ms", err, time.Since(start))
	}
	select {
	case <-l.Lost():
		t.Fatal("errors on other requests lost the lease")
	default:
	}
}

func TestCancelWhileQueuedWithdraws(t *testing.T) {
	f := newTestServer(t, onePool("dut", "dut1"))
	holder, waiter := dial(t, f.URL), dial(t, f.URL)
	l := acquire(t, holder, Request{Pool: "dut"})
	ctx, cancel := context.WithCancel(context.Background())
	queued := make(chan int, 4)
	done := make(chan error, 1)
	go func() {
		_, err := waiter.Acquire(ctx, "w", []Request{{Pool: "dut"}}, &AcquireOptions{Queued: func(p int) { queued <- p }})
		done <- err
	}()
	<-queued
	cancel()
	if err := <-done; forge.ErrorCode(err) != forge.ECANCELED {
		t.Fatalf("Acquire after cancel = %v, want ECANCELED", err)
	}
	testwait.For(t, "the withdrawn request to leave the queue", func() bool {
		return f.queued(t, "dut") == 0
	})
	l.Release(context.Background())
	// The device is free again and the waiter's connection still works.
	l2 := acquire(t, waiter, Request{Pool: "dut"})
	if l2.IDs("dut")[0] != "dut1" {
		t.Errorf("got %v, want dut1", l2.IDs("dut"))
	}
}

// TestCallerContextsNeverCostTheConnection: a caller whose context is
// already done gets ECANCELED, and the connection with its other leases
// stays up (the WebSocket library closes a connection whose write context
// ends, so the client must never write under a caller's context).
func TestCallerContextsNeverCostTheConnection(t *testing.T) {
	f := newTestServer(t, twoDUTs()...)
	c := dial(t, f.URL)
	kept := acquire(t, c, Request{Pool: "dut"})
	other := acquire(t, c, Request{Pool: "dut"})
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Acquire(done, "t", []Request{{Pool: "lab-ports.x"}}, nil); forge.ErrorCode(err) != forge.ECANCELED {
		t.Errorf("Acquire with a done context = %v, want ECANCELED", err)
	}
	if _, err := c.Ping(done); forge.ErrorCode(err) != forge.ECANCELED {
		t.Errorf("Ping with a done context = %v, want ECANCELED", err)
	}
	other.Release(done)
	testwait.For(t, "the release sent under a done context", func() bool { return f.held(t) == 1 })
	time.Sleep(20 * time.Millisecond)
	if c.Err() != nil {
		t.Fatalf("connection ended: %v", c.Err())
	}
	select {
	case <-kept.Lost():
		t.Fatalf("the other lease was lost: %v", kept.Err())
	default:
	}
	if _, err := c.Ping(context.Background()); err != nil {
		t.Errorf("Ping after: %v", err)
	}
}

// TestConcurrentLeasesOnOneClient: many goroutines share one Client; the
// client side never sees a resource granted twice at once.
func TestConcurrentLeasesOnOneClient(t *testing.T) {
	f := newTestServer(t, onePool("ports", "p1", "p2", "p3"))
	c := dial(t, f.URL)
	var mu sync.Mutex
	inUse := map[string]bool{}
	var wg sync.WaitGroup
	for g := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 15 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				l, err := c.Acquire(ctx, "g", []Request{{Pool: "ports", Count: 1 + (g+i)%2}}, nil)
				if err != nil {
					cancel()
					t.Errorf("goroutine %d: %v", g, err)
					return
				}
				ids := l.IDs("ports")
				mu.Lock()
				for _, id := range ids {
					if inUse[id] {
						t.Errorf("%s granted twice at once", id)
					}
					inUse[id] = true
				}
				mu.Unlock()
				time.Sleep(time.Millisecond)
				mu.Lock()
				for _, id := range ids {
					inUse[id] = false
				}
				mu.Unlock()
				if err := l.Release(ctx); err != nil {
					t.Errorf("release: %v", err)
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	if got := f.held(t); got != 0 {
		t.Errorf("%d resources held at the end", got)
	}
}

func TestConnectionLossLosesEveryLease(t *testing.T) {
	f := newTestServer(t, twoDUTs()...)
	c := dial(t, f.URL)
	l1 := acquire(t, c, Request{Pool: "dut"})
	l2 := acquire(t, c, Request{Pool: "lab-ports.x"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	waiting := make(chan error, 1)
	go func() {
		_, err := c.Acquire(ctx, "w", []Request{{Pool: "dut", Count: 2}}, nil)
		waiting <- err
	}()
	time.Sleep(20 * time.Millisecond)
	f.kill()
	for _, l := range []*Lease{l1, l2} {
		select {
		case <-l.Lost():
		case <-time.After(testwait.Scale(30 * time.Second)): // bounds a failure only
			t.Fatalf("lease %s not lost after the connection dropped", l.ID())
		}
		if code := forge.ErrorCode(l.Err()); code != forge.EUNAVAILABLE {
			t.Errorf("lease %s Err() = %v, want EUNAVAILABLE", l.ID(), l.Err())
		}
		if l.Context().Err() == nil {
			t.Errorf("lease %s Context not cancelled", l.ID())
		}
		if err := l.Release(ctx); err != nil {
			t.Errorf("Release of a lost lease = %v, want nil", err)
		}
	}
	if err := <-waiting; forge.ErrorCode(err) != forge.EUNAVAILABLE {
		t.Errorf("waiting Acquire = %v, want EUNAVAILABLE", err)
	}
	if _, err := c.Acquire(ctx, "w", []Request{{Pool: "dut"}}, nil); forge.ErrorCode(err) != forge.EUNAVAILABLE {
		t.Errorf("Acquire on a dead client = %v, want EUNAVAILABLE", err)
	}
	<-c.Done()
}

func TestRevokedLeaseIsLostAlone(t *testing.T) {
	f := newTestServer(t, twoDUTs()...)
	c := dial(t, f.URL)
	l1 := acquire(t, c, Request{Pool: "dut"})
	l2 := acquire(t, c, Request{Pool: "dut"})
	if err := f.m.Revoke(context.Background(), l1.ID(), "forced release by operator"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l1.Lost():
	case <-time.After(testwait.Scale(30 * time.Second)): // bounds a failure only
		t.Fatal("revoked lease not lost")
	}
	if err := l1.Err(); forge.ErrorCode(err) != forge.ECONFLICT || !strings.Contains(err.Error(), "forced release by operator") {
		t.Errorf("Err() = %v, want ECONFLICT naming the reason", err)
	}
	select {
	case <-l2.Lost():
		t.Error("the other lease was lost too")
	case <-time.After(20 * time.Millisecond):
	}
}

func TestSilentServerIsDetected(t *testing.T) {
	url := silentServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, url, &Options{Keepalive: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	select {
	case <-c.Done():
	case <-time.After(testwait.Scale(30 * time.Second)): // bounds a failure only
		t.Fatal("a server that answers no pings was not detected")
	}
	// About the 200ms bound on a quiet machine; what must never happen
	// is waiting for the 10s default (a loaded machine delays timers).
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("detected after %v, want within about the 200ms bound", d)
	}
	if !strings.Contains(c.Err().Error(), "did not answer") {
		t.Errorf("Err() = %v", c.Err())
	}
}

// TestIdleLeaseOutlivesKeepalive: an idle lease on a live connection is
// kept over several keepalive periods, both sides answering the other's
// pings, and the client takes the server's bound from its hello.
func TestIdleLeaseOutlivesKeepalive(t *testing.T) {
	f := newTestServerKeepalive(t, time.Second, onePool("dut", "dut1"))
	c := dial(t, f.URL)
	if got := c.Keepalive(); got != time.Second {
		t.Errorf("Keepalive() = %v, want the server's 1s", got)
	}
	l := acquire(t, c, Request{Pool: "dut"})
	select {
	case <-l.Lost():
		t.Fatalf("idle lease lost: %v", l.Err())
	case <-time.After(2500 * time.Millisecond):
	}
	if got := f.held(t); got != 1 {
		t.Errorf("server holds %d, want 1", got)
	}
}

func TestDialErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	notForge := httptest.NewServer(http.NotFoundHandler())
	defer notForge.Close()
	tests := []struct {
		url, code, msg string
	}{
		{closed, forge.EUNAVAILABLE, "cannot reach"},
		{notForge.URL, forge.EUNAVAILABLE, "HTTP 404"},
		{"gopher://x", forge.EINVALID, "scheme"},
	}
	for _, tt := range tests {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := Dial(ctx, tt.url, nil)
		cancel()
		if forge.ErrorCode(err) != tt.code || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("Dial(%s) = %v, want %s containing %q", tt.url, err, tt.code, tt.msg)
		}
	}
}

func TestCloseReleasesWithoutLoss(t *testing.T) {
	f := newTestServer(t, twoDUTs()...)
	c := dial(t, f.URL)
	l := acquire(t, c, Request{Pool: "dut"})
	c.Close()
	testwait.For(t, "the server to free the device", func() bool { return f.held(t) == 0 })
	select {
	case <-l.Lost():
		t.Error("Close made the lease lost; want released")
	default:
	}
	if !errors.Is(context.Cause(l.Context()), ErrReleased) {
		t.Errorf("cause = %v, want ErrReleased", context.Cause(l.Context()))
	}
	if _, err := c.Ping(context.Background()); err == nil {
		t.Error("Ping on a closed client succeeded")
	}
}

func TestPing(t *testing.T) {
	f := newTestServer(t, twoDUTs()...)
	c := dial(t, f.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if d, err := c.Ping(ctx); err != nil || d <= 0 {
		t.Errorf("Ping = %v, %v", d, err)
	}
}

func TestLeaser(t *testing.T) {
	f := newTestServer(t, onePool("dut", "dut1"))
	lr, err := NewLeaser(f.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g1, err := lr.Acquire(ctx, []forge.ResourceRequest{{Pool: "dut", Count: 1}}, "job a", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := g1.Env()["FORGE_LEASE_DUT"]; got != "dut1" {
		t.Errorf("FORGE_LEASE_DUT = %q, want dut1", got)
	}
	if got := g1.Lease(); got.Holder != "job a" || got.Resources["dut"][0] != "dut1" {
		t.Errorf("Lease() = %+v", got)
	}
	positions := make(chan int, 4)
	g2c := make(chan forge.Grant, 1)
	go func() {
		g, err := lr.Acquire(ctx, []forge.ResourceRequest{{Pool: "dut"}}, "job b", func(p int) { positions <- p })
		if err != nil {
			t.Error(err)
		}
		g2c <- g
	}()
	if p := <-positions; p != 1 {
		t.Errorf("queued position = %d, want 1", p)
	}
	if err := g1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	g2 := <-g2c
	if g2 == nil {
		t.Fatal("second grant missing")
	}
	f.kill()
	select {
	case <-g2.Lost():
	case <-time.After(testwait.Scale(30 * time.Second)): // bounds a failure only
		t.Fatal("grant not lost when its connection dropped")
	}
	g2.Release(ctx)

	_, err = lr.Acquire(ctx, []forge.ResourceRequest{{Pool: "nope"}}, "job c", nil)
	if forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Errorf("unknown pool: %v, want ENOTFOUND", err)
	}
	if _, err := NewLeaser("gopher://x", nil); forge.ErrorCode(err) != forge.EINVALID {
		t.Errorf("NewLeaser(bad URL) = %v, want EINVALID", err)
	}
}

// A server that wants a token (forge server with api.private_reads) gets
// it from Options.Header; without it Dial fails with EUNAUTHORIZED and
// the server's reason.
func TestDialWithToken(t *testing.T) {
	f := newTestServer(t, dutPool())
	guarded := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer s3cret" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"code":"unauthorized","message":"unknown API token"}`))
			return
		}
		f.hs.Config.Handler.ServeHTTP(w, r)
	}))
	t.Cleanup(guarded.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Dial(ctx, guarded.URL, nil)
	if forge.ErrorCode(err) != forge.EUNAUTHORIZED || !strings.Contains(forge.ErrorMessage(err), "unknown API token") {
		t.Fatalf("Dial without a token: %v, want unauthorized with the server's reason", err)
	}
	c, err := Dial(ctx, guarded.URL, &Options{Header: http.Header{"Authorization": {"Bearer s3cret"}}})
	if err != nil {
		t.Fatalf("Dial with the token: %v", err)
	}
	defer c.Close()
	l := acquire(t, c, Request{Pool: "dut"})
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestReleaseBroken: ReleaseBroken releases the lease and the server
// takes its resources out of service with the reason.
func TestReleaseBroken(t *testing.T) {
	f := newTestServer(t, onePool("dut", "dut1"))
	c := dial(t, f.URL)
	l := acquire(t, c, Request{Pool: "dut"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.ReleaseBroken(ctx, "console shows a kernel panic"); err != nil {
		t.Fatalf("ReleaseBroken: %v", err)
	}
	if got := context.Cause(l.Context()); !errors.Is(got, ErrReleased) {
		t.Errorf("Context cause after ReleaseBroken = %v, want ErrReleased", got)
	}
	p, err := f.m.Pool(ctx, "dut")
	if err != nil {
		t.Fatal(err)
	}
	r := p.Resources[0]
	if r.State != "disabled" || r.Fault == nil || r.Fault.Source != forge.FaultHolder || r.Fault.Reason != "console shows a kernel panic" {
		t.Fatalf("dut1 after ReleaseBroken: got %+v (fault %+v), want disabled by its holder", r, r.Fault)
	}
	if err := l.ReleaseBroken(ctx, "again"); err != nil {
		t.Errorf("second ReleaseBroken: %v, want nil (idempotent)", err)
	}
}

// TestDialWaitsForAServerNotReady: a server answering 503 (a replica
// while a lease leader is elected) is asked again until it leases; one
// that stays unready ends the dial with the caller's context.
func TestDialWaitsForAServerNotReady(t *testing.T) {
	m, err := lease.NewMemory(twoDUTs(), lease.MemoryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s := leasehttp.NewServer(m, leasehttp.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	var asked atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if asked.Add(1) <= 3 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"code":"unavailable","message":"no lease leader right now: retry"}`)
			return
		}
		s.Handler().ServeHTTP(w, r)
	}))
	defer hs.Close()
	var logged atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Dial(ctx, hs.URL, &Options{Logf: func(format string, args ...any) {
		if strings.Contains(fmt.Sprintf(format, args...), "no lease leader right now") {
			logged.Add(1)
		}
	}})
	if err != nil {
		t.Fatalf("Dial = %v, want a connection once the server is ready", err)
	}
	defer c.Close()
	if n := asked.Load(); n != 4 {
		t.Errorf("the server was asked %d times, want 4", n)
	}
	if n := logged.Load(); n != 3 {
		t.Errorf("Logf heard %d refusals, want 3", n)
	}
	acquire(t, c, Request{Pool: "dut"})

	never := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer never.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, never.URL, nil); forge.ErrorCode(err) != forge.ETIMEOUT {
		t.Errorf("Dial of a server never ready = %v, want %s when the context ends", err, forge.ETIMEOUT)
	}
}
