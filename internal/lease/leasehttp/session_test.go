package leasehttp

import (
	"context"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
)

// frozenConn is a client's socket whose reading can be stopped: the
// client then answers no ping, as behind a network gone silent.
type frozenConn struct {
	net.Conn
	once, closeOnce sync.Once
	frozen, closed  chan struct{}
}

func (f *frozenConn) freeze() { f.once.Do(func() { close(f.frozen) }) }

func (f *frozenConn) Read(p []byte) (int, error) {
	select {
	case <-f.frozen:
		<-f.closed // as a silent network: nothing arrives until closed
		return 0, net.ErrClosed
	default:
	}
	return f.Conn.Read(p)
}

func (f *frozenConn) Close() error {
	f.closeOnce.Do(func() { close(f.closed) })
	return f.Conn.Close()
}

// openSession dials with protocol version 2 and opens a session; freeze
// makes the client go silent.
func (e *testEnv) openSession(graceMS int64) (c *testClient, s *wire.Message, freeze func()) {
	e.t.Helper()
	var fc *frozenConn
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		fc = &frozenConn{Conn: nc, frozen: make(chan struct{}), closed: make(chan struct{})}
		return fc, nil
	}}}
	c = dialURLWith(e.t, e.wsURL+"?version=2", &websocket.DialOptions{HTTPClient: hc})
	c.send(map[string]any{"type": "session", "grace_ms": graceMS})
	s = c.expect(wire.TypeSession)
	if s.Session == "" || s.Secret == "" || s.GraceMS != graceMS {
		e.t.Fatalf("session: got %+v, want an id, a secret and grace %d", s, graceMS)
	}
	return c, s, fc.freeze
}

// TestResumeKeepsLeasesAndPlace: a session whose connection breaks keeps
// its lease and its place in the queue, nobody else gets them meanwhile,
// and a resume on a new connection gets both back.
func TestResumeKeepsLeasesAndPlace(t *testing.T) {
	e := newEnv(t, "pools: {dut: {resources: [{id: d1}]}}", Options{Keepalive: time.Second}, lease.MemoryOptions{})
	a, s, freeze := e.openSession(60000)
	a.acquire("r1", req("dut", 1))
	g := a.expect(wire.TypeGranted)
	a.acquire("r2", req("dut", 1))
	a.expect(wire.TypeQueued)
	b := e.dial() // a version 1 client: today's semantics
	b.acquire("b", req("dut", 1))
	b.expect(wire.TypeQueued)

	freeze() // the network goes silent: the server drops it by keepalive
	var ls struct{ Leases []lease.LeaseState }
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.rest("GET", "/api/v1/leases", "", &ls)
		if len(ls.Leases) == 1 && ls.Leases[0].DetachedUntil != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leases after the keepalive: got %+v, want one, detached", ls.Leases)
		}
		waitABit()
	}
	b.quiet(300 * time.Millisecond) // neither held by b nor free

	bad := dialURL(t, e.wsURL+"?version=2")
	bad.send(map[string]any{"type": "resume", "session": s.Session, "secret": "nope"})
	if m := bad.expect(wire.TypeError); m.Code != wire.CodeUnauthorized || m.Session != s.Session {
		t.Fatalf("wrong secret: got %+v, want unauthorized", m)
	}

	a2 := dialURL(t, e.wsURL+"?version=2")
	a2.send(map[string]any{"type": "resume", "session": s.Session, "secret": s.Secret})
	r := a2.expect(wire.TypeResumed)
	if r.Session != s.Session || len(r.Leases) != 1 || r.Leases[0].Lease != g.Lease || ids(r.Leases[0], "dut") != "d1" ||
		len(r.Queued) != 1 || r.Queued[0].ID != "r2" {
		t.Fatalf("resumed: got %+v, want lease %s on d1 and r2 queued", r, g.Lease)
	}
	a2.release(g.Lease)
	if m := a2.expect(wire.TypeGranted); m.ID != "r2" {
		t.Fatalf("after release: got %+v, want r2 granted before b", m)
	}
	b.quiet(100 * time.Millisecond)
	// A clean close ends the session: everything goes at once.
	a2.ws.Close(websocket.StatusNormalClosure, "done")
	if m := b.expect(wire.TypeGranted); m.ID != "b" {
		t.Fatalf("b: got %+v, want granted", m)
	}
}

// TestResumeAfterGraceExpired: after the grace the leases are gone and a
// resume is answered "expired".
func TestResumeAfterGraceExpired(t *testing.T) {
	e := newEnv(t, "pools: {dut: {resources: [{id: d1}]}}", Options{Keepalive: time.Second}, lease.MemoryOptions{})
	a, s, freeze := e.openSession(200)
	a.acquire("r1", req("dut", 1))
	a.expect(wire.TypeGranted)
	b := e.dial()
	b.acquire("b", req("dut", 1))
	b.expect(wire.TypeQueued)
	freeze()
	b.expect(wire.TypeGranted) // dropped by keepalive, then the grace ended
	a2 := dialURL(t, e.wsURL+"?version=2")
	a2.send(map[string]any{"type": "resume", "session": s.Session, "secret": s.Secret})
	if m := a2.expect(wire.TypeError); m.Code != wire.CodeExpired || m.Session != s.Session {
		t.Fatalf("late resume: got %+v, want expired", m)
	}
	var h struct{ History []lease.HistoryEntry }
	e.rest("GET", "/api/v1/leases/history", "", &h)
	found := false
	for _, x := range h.History {
		found = found || x.Reason == lease.ReasonExpired
	}
	if !found {
		t.Fatalf("history: got %+v, want a release for %q", h.History, lease.ReasonExpired)
	}
}

// TestSessionNeedsVersion2: a version 1 connection gets today's protocol:
// session and resume are errors, not new behaviour.
func TestSessionNeedsVersion2(t *testing.T) {
	e := newEnv(t, "pools: {dut: {resources: [{id: d1}]}}", Options{}, lease.MemoryOptions{})
	c := e.dial()
	c.send(map[string]any{"type": "session"})
	if m := c.expect(wire.TypeError); m.Code != wire.CodeInvalid {
		t.Fatalf("session on version 1: got %+v, want invalid", m)
	}
	// And a session opened after an acquire is refused too.
	v2 := dialURL(t, e.wsURL+"?version=2")
	v2.acquire("r", req("dut", 1))
	v2.expect(wire.TypeGranted)
	v2.send(map[string]any{"type": "session"})
	if m := v2.expect(wire.TypeError); m.Code != wire.CodeInvalid {
		t.Fatalf("late session: got %+v, want invalid", m)
	}
}

// TestMovedSessionClosesOldConnection: resuming a session still attached
// (a half-open connection) takes it over; the old connection is closed.
func TestMovedSessionClosesOldConnection(t *testing.T) {
	e := newEnv(t, "pools: {dut: {resources: [{id: d1}]}}", Options{}, lease.MemoryOptions{})
	a, s, _ := e.openSession(60000)
	a.acquire("r1", req("dut", 1))
	g := a.expect(wire.TypeGranted)
	a2 := dialURL(t, e.wsURL+"?version=2")
	a2.send(map[string]any{"type": "resume", "session": s.Session, "secret": s.Secret})
	if r := a2.expect(wire.TypeResumed); len(r.Leases) != 1 || r.Leases[0].Lease != g.Lease {
		t.Fatalf("resumed: got %+v", r)
	}
	if m := a.expect(wire.TypeError); m.Code != wire.CodeConflict {
		t.Fatalf("old connection: got %+v, want conflict", m)
	}
	<-a.done
	a2.release(g.Lease) // still the session's after the old connection ended
}

// TestDurableShutdownSaysReconnect: a server whose state outlives it
// tells session clients to reconnect, with close status 1012, and keeps
// their leases; version 1 clients hear the old shutdown notice.
func TestDurableShutdownSaysReconnect(t *testing.T) {
	e := newEnv(t, "pools: {dut: {resources: [{id: d1}, {id: d2}]}}", Options{Durable: true}, lease.MemoryOptions{})
	a, _, _ := e.openSession(60000)
	a.acquire("r1", req("dut", 1))
	a.expect(wire.TypeGranted)
	b := e.dial()
	b.acquire("b", req("dut", 1))
	b.expect(wire.TypeGranted)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if m := a.expect(wire.TypeReconnect); m.Code != wire.CodeUnavailable {
		t.Fatalf("session client: got %+v, want reconnect", m)
	}
	if m := b.expect(wire.TypeError); m.Code != wire.CodeUnavailable {
		t.Fatalf("version 1 client: got %+v, want unavailable", m)
	}
	<-a.done
	ls, _ := e.m.Leases(ctx)
	if len(ls) != 1 || ls[0].DetachedUntil == nil {
		t.Fatalf("leases after shutdown: got %+v, want the session's, detached", ls)
	}
}

// TestClientEndReleasesSession: a session whose client closes its socket
// (a killed process: FIN or reset, no close frame) ends at once, as a
// version 1 connection: a dead holder does not keep a device for its
// grace.
func TestClientEndReleasesSession(t *testing.T) {
	e := newEnv(t, "pools: {dut: {resources: [{id: d1}]}}", Options{}, lease.MemoryOptions{})
	a, s, _ := e.openSession(60000)
	a.acquire("r1", req("dut", 1))
	a.expect(wire.TypeGranted)
	b := e.dial()
	b.acquire("b", req("dut", 1))
	b.expect(wire.TypeQueued)
	a.ws.CloseNow()
	b.expect(wire.TypeGranted)
	a2 := dialURL(t, e.wsURL+"?version=2")
	a2.send(map[string]any{"type": "resume", "session": s.Session, "secret": s.Secret})
	if m := a2.expect(wire.TypeError); m.Code != wire.CodeExpired {
		t.Fatalf("resume after the client's own close: got %+v, want expired", m)
	}
}
