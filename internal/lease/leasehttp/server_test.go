package leasehttp

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge"
	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/testwait"
)

const dutConfig = `
pools:
  dut:
    resources:
      - {id: dut1, host: 10.0.0.5, labels: {arch: arm64}}
      - {id: dut2, host: 10.0.0.6, labels: {arch: amd64}}
      - {id: dut3, host: 10.0.0.7, labels: {arch: amd64}}
  one:
    resources:
      - {id: only}
  ports:
    range: 20000-20009
`

func TestPingPong(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	c := e.dial()
	c.send(map[string]any{"type": "ping", "id": "p1"})
	if m := c.expect(wire.TypePong); m.ID != "p1" {
		t.Fatalf("pong id: got %q, want p1", m.ID)
	}
}

func TestAcquireGrantRelease(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	c := e.dial()
	before := time.Now().Add(-time.Second)
	c.acquire("r1", req("dut", 1, "arch=arm64"))
	g := c.expect(wire.TypeGranted)
	if g.ID != "r1" || !strings.HasPrefix(g.Lease, "L") || g.Holder != "test r1" {
		t.Fatalf("granted: got %+v, want id r1, a lease L..., holder %q", g, "test r1")
	}
	at, err := time.Parse(time.RFC3339Nano, g.GrantedAt)
	if err != nil || at.Before(before) || at.After(time.Now().Add(time.Second)) {
		t.Fatalf("granted_at %q: want a current RFC3339Nano time (%v)", g.GrantedAt, err)
	}
	rs := g.Resources["dut"]
	if len(rs) != 1 || rs[0].ID != "dut1" || rs[0].Attributes["host"] != "10.0.0.5" || rs[0].Labels["arch"] != "arm64" {
		t.Fatalf("resources: got %+v, want dut1 with host 10.0.0.5 and arch arm64", g.Resources)
	}
	c.acquire("r2", req("ports", 3))
	g2 := c.expect(wire.TypeGranted)
	if got := ids(g2, "ports"); got != "20000,20001,20002" {
		t.Fatalf("ports: got %s, want 20000,20001,20002", got)
	}
	if a, l := g2.Resources["ports"][0].Attributes, g2.Resources["ports"][0].Labels; a == nil || len(a) != 0 || l == nil {
		t.Fatalf("range resource: got attributes %v labels %v, want both empty objects", a, l)
	}
	c.release(g.Lease)
	c.send(map[string]any{"type": "release", "lease": g.Lease})
	if m := c.expect(wire.TypeError); m.Code != forge.ENOTFOUND || m.Lease != g.Lease {
		t.Fatalf("second release: got %+v, want not_found about %s", m, g.Lease)
	}
	// Another connection cannot release someone else's lease.
	other := e.dial()
	other.send(map[string]any{"type": "release", "lease": g2.Lease})
	if m := other.expect(wire.TypeError); m.Code != forge.ENOTFOUND {
		t.Fatalf("foreign release: got %+v, want not_found", m)
	}
	c.release(g2.Lease)
}

func TestDefaultCountAndHolder(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	c := e.dial()
	c.sendRaw(`{"type":"acquire","id":"r1","requests":[{"pool":"ports"}]}`)
	g := c.expect(wire.TypeGranted)
	if len(g.Resources["ports"]) != 1 {
		t.Fatalf("count absent: got %d resources, want 1", len(g.Resources["ports"]))
	}
	if !strings.HasPrefix(g.Holder, "127.0.0.1:") {
		t.Fatalf("holder absent: got %q, want the remote address", g.Holder)
	}
}

func TestQueuePositionsFIFO(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{PositionInterval: 20 * time.Millisecond})
	a, b, c, d := e.dial(), e.dial(), e.dial(), e.dial()
	a.acquire("a", req("one", 1))
	ga := a.expect(wire.TypeGranted)
	for i, cl := range []*testClient{b, c, d} {
		cl.acquire("w", req("one", 1))
		q := cl.next()
		if q.Type != wire.TypeQueued || q.ID != "w" || q.Position != i+1 {
			t.Fatalf("client %d: got %+v, want queued at position %d", i, q, i+1)
		}
	}
	a.release(ga.Lease)
	gb := b.expect(wire.TypeGranted)
	// c and d move up.
	if q := c.next(); q.Type != wire.TypeQueued || q.Position != 1 {
		t.Fatalf("c after a release: got %+v, want queued position 1", q)
	}
	if q := d.next(); q.Type != wire.TypeQueued || q.Position != 2 {
		t.Fatalf("d after a release: got %+v, want queued position 2", q)
	}
	b.release(gb.Lease)
	gc := c.expect(wire.TypeGranted)
	d.quiet(100 * time.Millisecond)
	c.release(gc.Lease)
	d.expect(wire.TypeGranted)
}

func TestFIFONobodyJumpsALargerRequest(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	a, b, c := e.dial(), e.dial(), e.dial()
	a.acquire("a", req("dut", 2))
	ga := a.expect(wire.TypeGranted)
	b.acquire("b", req("dut", 3))
	b.expect(wire.TypeQueued)
	c.acquire("c", req("dut", 1)) // one is free, but b came first
	c.expect(wire.TypeQueued)
	c.quiet(150 * time.Millisecond)
	a.release(ga.Lease)
	gb := b.expect(wire.TypeGranted)
	if len(gb.Resources["dut"]) != 3 {
		t.Fatalf("b: got %v, want 3 resources", gb.Resources)
	}
	c.quiet(50 * time.Millisecond)
	b.release(gb.Lease)
	c.expect(wire.TypeGranted)
}

func TestFillOrderWithStarvationBound(t *testing.T) {
	cfg := `
pools:
  f:
    order: fill
    range: 1-3
`
	e := newEnv(t, cfg, Options{}, lease.MemoryOptions{FillMaxPasses: 2})
	a, big := e.dial(), e.dial()
	a.acquire("a", req("f", 2))
	ga := a.expect(wire.TypeGranted)
	big.acquire("big", req("f", 3))
	big.expect(wire.TypeQueued)
	// Two small requests may pass the big one while a resource is free.
	for i := 0; i < 2; i++ {
		s := e.dial()
		s.acquire(fmt.Sprint("small", i), req("f", 1))
		g := s.expect(wire.TypeGranted)
		s.release(g.Lease)
	}
	// The third may not: the big one has been passed over twice.
	s := e.dial()
	s.acquire("small2", req("f", 1))
	s.expect(wire.TypeQueued)
	s.quiet(100 * time.Millisecond)
	a.release(ga.Lease)
	gb := big.expect(wire.TypeGranted)
	if len(gb.Resources["f"]) != 3 {
		t.Fatalf("big: got %v, want 3", gb.Resources)
	}
	big.release(gb.Lease)
	s.expect(wire.TypeGranted)
}

func TestFillOrderTimeBound(t *testing.T) {
	cfg := `
pools:
  f:
    order: fill
    range: 1-2
`
	e := newEnv(t, cfg, Options{}, lease.MemoryOptions{FillMaxPasses: 1000, FillMaxWait: 200 * time.Millisecond})
	a, big := e.dial(), e.dial()
	a.acquire("a", req("f", 1))
	ga := a.expect(wire.TypeGranted)
	big.acquire("big", req("f", 2))
	big.expect(wire.TypeQueued)
	s := e.dial()
	s.acquire("s1", req("f", 1))
	g := s.expect(wire.TypeGranted) // first pass
	s.release(g.Lease)
	time.Sleep(250 * time.Millisecond)
	s.acquire("s2", req("f", 1))
	s.expect(wire.TypeQueued) // passed over for longer than 200ms: no more
	a.release(ga.Lease)
	big.expect(wire.TypeGranted)
}

func TestLabels(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	a := e.dial()
	a.acquire("x", req("dut", 2, "arch=amd64"))
	g := a.expect(wire.TypeGranted)
	if got := ids(g, "dut"); got != "dut2,dut3" {
		t.Fatalf("amd64: got %s, want dut2,dut3", got)
	}
	for _, tc := range []struct {
		name string
		r    map[string]any
		code string
	}{
		{"more than matching", req("dut", 2, "arch=arm64"), forge.EINVALID},
		{"no such label value", req("dut", 1, "arch=mips"), forge.EINVALID},
		{"unknown pool", req("nope", 1), forge.ENOTFOUND},
		{"more than the pool", req("dut", 4), forge.EINVALID},
	} {
		a.acquire(tc.name, tc.r)
		m := a.expect(wire.TypeError)
		if m.Code != tc.code || m.ID != tc.name {
			t.Errorf("%s: got %+v, want code %s about %q", tc.name, m, tc.code, tc.name)
		}
	}
}

// A waiter claims only the resources it could use: a request for other
// labels is not made to wait behind it, and no one takes what it needs.
func TestFIFOIsPerMatchingResource(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	a, b, c, d := e.dial(), e.dial(), e.dial(), e.dial()
	a.acquire("a", req("dut", 1, "arch=arm64"))
	ga := a.expect(wire.TypeGranted)
	b.acquire("b", req("dut", 1, "arch=arm64"))
	b.expect(wire.TypeQueued)
	c.acquire("c", req("dut", 1, "arch=amd64"))
	if got := ids(c.expect(wire.TypeGranted), "dut"); got != "dut2" {
		t.Fatalf("c: got %s, want dut2", got)
	}
	d.acquire("d", req("dut", 1))
	if got := ids(d.expect(wire.TypeGranted), "dut"); got != "dut3" {
		t.Fatalf("d: got %s, want dut3", got)
	}
	a.release(ga.Lease)
	if got := ids(b.expect(wire.TypeGranted), "dut"); got != "dut1" {
		t.Fatalf("b: got %s, want dut1", got)
	}
}

func TestSamePoolTwiceInOneRequest(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	a := e.dial()
	// "any one" and "an arm64": the arm64 one must not be taken by "any".
	a.acquire("x", req("dut", 1), req("dut", 1, "arch=arm64"))
	g := a.expect(wire.TypeGranted)
	if got := ids(g, "dut"); !strings.Contains(got, "dut1") || len(g.Resources["dut"]) != 2 {
		t.Fatalf("got %s, want dut1 and one other", got)
	}
	a.acquire("y", req("dut", 2, "arch=arm64"))
	if m := a.expect(wire.TypeError); m.Code != forge.EINVALID {
		t.Fatalf("two arm64 of one: got %+v, want invalid", m)
	}
}

func TestMultiPoolAtomic(t *testing.T) {
	cfg := `
pools:
  a: {resources: [{id: a1}]}
  b: {resources: [{id: b1}]}
`
	e := newEnv(t, cfg, Options{}, lease.MemoryOptions{})
	x, y, z := e.dial(), e.dial(), e.dial()
	x.acquire("x", req("b", 1))
	gx := x.expect(wire.TypeGranted)
	y.acquire("y", req("a", 1), req("b", 1))
	y.expect(wire.TypeQueued)
	z.acquire("z", req("a", 1)) // a is free, but y is first in a's queue
	z.expect(wire.TypeQueued)
	// y holds nothing while it waits.
	var pools poolsResponse
	e.rest("GET", "/api/v1/pools", "", &pools)
	if pools.Pools[0].Name != "a" || pools.Pools[0].Resources[0].State != lease.StateFree {
		t.Fatalf("pool a while y waits: got %+v, want a1 free", pools.Pools[0].Resources[0])
	}
	if len(pools.Pools[0].Queue) != 2 || pools.Pools[0].Queue[0].Request != "y" || pools.Pools[0].Queue[1].Request != "z" {
		t.Fatalf("queue of a: got %+v, want y then z", pools.Pools[0].Queue)
	}
	x.release(gx.Lease)
	gy := y.expect(wire.TypeGranted)
	if ids(gy, "a") != "a1" || ids(gy, "b") != "b1" {
		t.Fatalf("y: got %v, want a1 and b1", gy.Resources)
	}
	z.quiet(50 * time.Millisecond)
	y.release(gy.Lease)
	z.expect(wire.TypeGranted)
}

func TestMultiPoolNoDeadlock(t *testing.T) {
	cfg := `
pools:
  a: {resources: [{id: a1}]}
  b: {resources: [{id: b1}]}
`
	e := newEnv(t, cfg, Options{}, lease.MemoryOptions{})
	const n = 20
	done := make(chan error, 2*n)
	for i := 0; i < 2*n; i++ {
		c := e.dial()
		first, second := "a", "b"
		if i%2 == 1 {
			first, second = "b", "a"
		}
		go func() {
			c.send(map[string]any{"type": "acquire", "id": "r", "requests": []any{req(first, 1), req(second, 1)}})
			for m := range c.msgs {
				if m.Type == wire.TypeGranted {
					c.send(map[string]any{"type": "release", "lease": m.Lease})
				}
				if m.Type == wire.TypeReleased {
					done <- nil
					return
				}
				if m.Type == wire.TypeError {
					done <- fmt.Errorf("%+v", m)
					return
				}
			}
			done <- fmt.Errorf("connection closed")
		}()
	}
	for i := 0; i < 2*n; i++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d clients served: deadlock", i, 2*n)
		}
	}
}

func TestMaxWaitTimeout(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	a, b := e.dial(), e.dial()
	a.acquire("a", req("one", 1))
	a.expect(wire.TypeGranted)
	start := time.Now()
	b.send(map[string]any{"type": "acquire", "id": "b", "requests": []any{req("one", 1)}, "max_wait_ms": 150})
	b.expect(wire.TypeQueued)
	m := b.expect(wire.TypeError)
	if m.Code != forge.ETIMEOUT || m.ID != "b" {
		t.Fatalf("got %+v, want timeout about b", m)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
		t.Fatalf("timeout after %s, want about 150ms", d)
	}
	var p lease.PoolState
	e.rest("GET", "/api/v1/pools/one", "", &p)
	if len(p.Queue) != 0 {
		t.Fatalf("queue after timeout: got %+v, want empty", p.Queue)
	}
}

func TestCancel(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	a, b := e.dial(), e.dial()
	a.acquire("a", req("one", 1))
	ga := a.expect(wire.TypeGranted)
	b.acquire("b", req("one", 1))
	b.expect(wire.TypeQueued)
	b.send(map[string]any{"type": "cancel", "id": "b"})
	if m := b.expect(wire.TypeCanceled); m.ID != "b" {
		t.Fatalf("got %+v, want canceled b", m)
	}
	b.send(map[string]any{"type": "cancel", "id": "b"})
	if m := b.expect(wire.TypeError); m.Code != forge.ENOTFOUND || m.ID != "b" {
		t.Fatalf("second cancel: got %+v, want not_found about b", m)
	}
	a.send(map[string]any{"type": "cancel", "id": "a"}) // granted: not cancelable
	if m := a.expect(wire.TypeError); m.Code != forge.ENOTFOUND {
		t.Fatalf("cancel of granted: got %+v, want not_found", m)
	}
	a.release(ga.Lease)
	b.quiet(100 * time.Millisecond) // the canceled request is not granted
	// The id is free again once the request left the queue.
	b.acquire("b", req("one", 1))
	b.expect(wire.TypeGranted)
}

func TestBadMessagesLeaveLeasesIntact(t *testing.T) {
	e := newEnv(t, dutConfig, Options{MaxMessageBytes: 1024}, lease.MemoryOptions{})
	c := e.dial()
	c.acquire("held", req("one", 1))
	g := c.expect(wire.TypeGranted)
	c.acquire("q", req("dut", 1, "arch=arm64"))
	c.expect(wire.TypeGranted)
	other := e.dial()
	other.acquire("dup", req("one", 1))
	other.expect(wire.TypeQueued)
	for _, tc := range []struct {
		name, msg, code, id string
	}{
		{"not JSON", `{"type":`, forge.EINVALID, ""},
		{"array", `[1,2]`, forge.EINVALID, ""},
		{"two objects", `{"type":"ping"} {"type":"ping"}`, forge.EINVALID, ""},
		{"no type", `{"id":"x"}`, forge.EINVALID, "x"},
		{"unknown type", `{"type":"steal","id":"x"}`, forge.EINVALID, "x"},
		{"acquire without id", `{"type":"acquire","requests":[{"pool":"one"}]}`, forge.EINVALID, ""},
		{"id too long", `{"type":"acquire","id":"` + strings.Repeat("x", 129) + `","requests":[{"pool":"one"}]}`, forge.EINVALID, ""},
		{"no requests", `{"type":"acquire","id":"r","requests":[]}`, forge.EINVALID, "r"},
		{"count zero", `{"type":"acquire","id":"r","requests":[{"pool":"one","count":0}]}`, forge.EINVALID, "r"},
		{"count negative", `{"type":"acquire","id":"r","requests":[{"pool":"one","count":-1}]}`, forge.EINVALID, "r"},
		{"count a string", `{"type":"acquire","id":"r","requests":[{"pool":"one","count":"2"}]}`, forge.EINVALID, "r"},
		{"no pool", `{"type":"acquire","id":"r","requests":[{"count":1}]}`, forge.EINVALID, "r"},
		{"negative wait", `{"type":"acquire","id":"r","requests":[{"pool":"one"}],"max_wait_ms":-5}`, forge.EINVALID, "r"},
		{"unknown pool", `{"type":"acquire","id":"r","requests":[{"pool":"zzz"}]}`, forge.ENOTFOUND, "r"},
		{"release without lease", `{"type":"release"}`, forge.EINVALID, ""},
		{"release unknown", `{"type":"release","lease":"Lnope"}`, forge.ENOTFOUND, ""},
		{"cancel without id", `{"type":"cancel"}`, forge.EINVALID, ""},
		{"oversized", `{"type":"ping","id":"` + strings.Repeat("x", 2000) + `"}`, forge.ETOOLARGE, ""},
	} {
		c.sendRaw(tc.msg)
		m := c.expect(wire.TypeError)
		if m.Code != tc.code || m.ID != tc.id || m.Message == "" {
			t.Errorf("%s: got %+v, want code %q, id %q and a message", tc.name, m, tc.code, tc.id)
		}
	}
	// Duplicate id of a queued request: conflict.
	other.acquire("dup", req("one", 1))
	if m := other.expect(wire.TypeError); m.Code != forge.ECONFLICT || m.ID != "dup" {
		t.Errorf("duplicate id: got %+v, want conflict about dup", m)
	}
	// Binary frame.
	if err := c.ws.Write(context.Background(), 2, []byte(`{"type":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	if m := c.expect(wire.TypeError); m.Code != forge.EINVALID {
		t.Errorf("binary: got %+v, want invalid", m)
	}
	// Everything still held: the waiter is still waiting, release works.
	other.quiet(50 * time.Millisecond)
	c.release(g.Lease)
	other.expect(wire.TypeGranted)
}

func TestRevokeByOperator(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	a, b := e.dial(), e.dial()
	a.acquire("a", req("one", 1))
	ga := a.expect(wire.TypeGranted)
	b.acquire("b", req("one", 1))
	b.expect(wire.TypeQueued)
	if code := e.rest("DELETE", "/api/v1/leases/"+ga.Lease, `{"reason":"device on fire"}`, nil); code != http.StatusNoContent {
		t.Fatalf("DELETE lease: got %d, want 204", code)
	}
	m := a.expect(wire.TypeRevoked)
	if m.Lease != ga.Lease || m.Reason != "forced release by operator: device on fire" {
		t.Fatalf("got %+v, want revoked %s with the reason", m, ga.Lease)
	}
	b.expect(wire.TypeGranted)
	var apiErr apiError
	if code := e.rest("DELETE", "/api/v1/leases/"+ga.Lease, "", &apiErr); code != http.StatusNotFound || apiErr.Code != forge.ENOTFOUND {
		t.Fatalf("second DELETE: got %d %+v, want 404 not_found", code, apiErr)
	}
	a.send(map[string]any{"type": "release", "lease": ga.Lease})
	if m := a.expect(wire.TypeError); m.Code != forge.ENOTFOUND {
		t.Fatalf("release after revoke: got %+v, want not_found", m)
	}
}

func TestDisableEnable(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	a, b := e.dial(), e.dial()
	a.acquire("a", req("one", 1))
	ga := a.expect(wire.TypeGranted)
	b.acquire("b", req("one", 1))
	b.expect(wire.TypeQueued)
	var rs lease.ResourceState
	if code := e.rest("POST", "/api/v1/pools/one/resources/only/disable", "", &rs); code != http.StatusOK || rs.State != lease.StateLeased || !rs.Disabled {
		t.Fatalf("disable leased: got %d %+v, want 200, still leased and disabled", code, rs)
	}
	a.release(ga.Lease) // the lease was intact
	b.quiet(100 * time.Millisecond)
	var p lease.PoolState
	e.rest("GET", "/api/v1/pools/one", "", &p)
	if p.Resources[0].State != lease.StateDisabled || p.Free != 0 || p.Disabled != 1 {
		t.Fatalf("after release: got %+v free %d, want disabled", p.Resources[0], p.Free)
	}
	if code := e.rest("POST", "/api/v1/pools/one/resources/only/enable", "", &rs); code != http.StatusOK {
		t.Fatalf("enable: got %d", code)
	}
	b.expect(wire.TypeGranted)
	var apiErr apiError
	if code := e.rest("POST", "/api/v1/pools/one/resources/nope/disable", "", &apiErr); code != http.StatusNotFound || apiErr.Code != forge.ENOTFOUND || !strings.Contains(apiErr.Message, "nope") {
		t.Fatalf("unknown resource: got %d %+v, want 404 naming it", code, apiErr)
	}
	if code := e.rest("POST", "/api/v1/pools/zzz/resources/only/enable", "", nil); code != http.StatusNotFound {
		t.Fatalf("unknown pool: got %d, want 404", code)
	}
}

func TestPoolEditsWhileLeased(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	a, w := e.dial(), e.dial()
	a.acquire("a", req("dut", 1, "arch=arm64"))
	ga := a.expect(wire.TypeGranted)
	w.acquire("w", req("dut", 3))
	w.expect(wire.TypeQueued)
	// Replace the pool without dut1: a keeps its lease; w can never get 3.
	var p lease.PoolState
	code := e.rest("PUT", "/api/v1/pools/dut", `{"resources":[{"id":"dut2","host":"10.0.0.9"},{"id":"dut4","labels":{"arch":"riscv"}}]}`, &p)
	if code != http.StatusOK {
		t.Fatalf("PUT: got %d, want 200", code)
	}
	if m := w.expect(wire.TypeError); m.Code != forge.EINVALID || m.ID != "w" {
		t.Fatalf("waiter after shrink: got %+v, want invalid about w", m)
	}
	byID := map[string]*lease.ResourceState{}
	for _, r := range p.Resources {
		byID[r.ID] = r
	}
	if r := byID["dut1"]; r == nil || r.State != lease.StateLeased || !r.Removing || r.Lease != ga.Lease {
		t.Fatalf("dut1 after PUT: got %+v, want leased by %s and removing", r, ga.Lease)
	}
	if r := byID["dut2"]; r == nil || r.Attributes["host"] != "10.0.0.9" || byID["dut3"] != nil || byID["dut4"] == nil {
		t.Fatalf("resources after PUT: got %+v, want dut2 updated, dut3 gone, dut4 new", p.Resources)
	}
	if p.Size != 2 {
		t.Fatalf("size: got %d, want 2", p.Size)
	}
	a.release(ga.Lease)
	e.rest("GET", "/api/v1/pools/dut", "", &p)
	for _, r := range p.Resources {
		if r.ID == "dut1" {
			t.Fatalf("dut1 still in the pool after its release")
		}
	}
	// Delete a pool while leased and waited for.
	b, c := e.dial(), e.dial()
	b.acquire("b", req("one", 1))
	gb := b.expect(wire.TypeGranted)
	c.acquire("c", req("one", 1))
	c.expect(wire.TypeQueued)
	if code := e.rest("DELETE", "/api/v1/pools/one", "", nil); code != http.StatusNoContent {
		t.Fatalf("DELETE pool: got %d, want 204", code)
	}
	if m := c.expect(wire.TypeError); m.Code != forge.ENOTFOUND || m.ID != "c" {
		t.Fatalf("waiter of deleted pool: got %+v, want not_found", m)
	}
	c.acquire("c2", req("one", 1))
	if m := c.expect(wire.TypeError); m.Code != forge.ENOTFOUND {
		t.Fatalf("acquire of deleted pool: got %+v, want not_found", m)
	}
	e.rest("GET", "/api/v1/pools/one", "", &p)
	if !p.Deleted || p.Resources[0].State != lease.StateLeased {
		t.Fatalf("deleted pool while leased: got %+v, want deleted with its leased resource", p)
	}
	b.release(gb.Lease)
	if code := e.rest("GET", "/api/v1/pools/one", "", nil); code != http.StatusNotFound {
		t.Fatalf("GET deleted pool after release: got %d, want 404", code)
	}
	// Create a pool.
	if code := e.rest("PUT", "/api/v1/pools/new", `{"order":"fill","range":"1-2","labels":{"zone":"a"}}`, &p); code != http.StatusCreated || p.Size != 2 || p.Order != lease.OrderFill || p.Resources[0].Labels["zone"] != "a" {
		t.Fatalf("PUT new: got %d %+v, want 201 with 2 resources", code, p)
	}
	c.acquire("n", req("new", 2, "zone=a"))
	c.expect(wire.TypeGranted)
	var apiErr apiError
	for _, tc := range []struct{ body, want string }{
		{`{"order":"random"}`, "unknown order"},
		{`{"range":"9-1"}`, "above high end"},
		{`{"resources":[{"id":"x"},{"id":"x"}]}`, "duplicate resource id"},
		{`{"resources":[{"host":"h"}]}`, "without an id"},
		{`{"colour":"red"}`, "unknown field"},
		{`nonsense`, "invalid"},
	} {
		code := e.rest("PUT", "/api/v1/pools/bad", tc.body, &apiErr)
		if code != http.StatusBadRequest || apiErr.Code != forge.EINVALID || !strings.Contains(apiErr.Message, tc.want) {
			t.Errorf("PUT %s: got %d %+v, want 400 mentioning %q", tc.body, code, apiErr, tc.want)
		}
	}
}

func TestAbruptCloseReleasesAtOnce(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	a, b := e.dial(), e.dial()
	a.acquire("a", req("one", 1))
	a.expect(wire.TypeGranted)
	a.acquire("a2", req("one", 1)) // a queued request of a too
	b.acquire("b", req("one", 1))
	b.expect(wire.TypeQueued)
	start := time.Now()
	a.ws.CloseNow() // no close handshake: like a killed process
	b.expect(wire.TypeGranted)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("granted %s after the close, want milliseconds", d)
	}
	var h historyResponse
	e.rest("GET", "/api/v1/leases/history", "", &h)
	if len(h.History) < 3 || h.History[1].Event != "released" || h.History[1].Reason != lease.ReasonDisconnected {
		t.Fatalf("history: got %+v, want a release by disconnection before b's grant", h.History)
	}
}

// rawWS opens a WebSocket by hand, sends text frames, and never reads
// again: it does not answer pings, like a peer behind a dead network.
func rawWS(t *testing.T, url string, frames ...string) net.Conn {
	t.Helper()
	hostPath := strings.TrimPrefix(url, "ws://")
	host, path, _ := strings.Cut(hostPath, "/")
	nc, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	key := make([]byte, 16)
	rand.Read(key)
	fmt.Fprintf(nc, "GET /%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
		path, host, base64.StdEncoding.EncodeToString(key))
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	for _, f := range frames {
		if _, err := nc.Write(textFrame(f)); err != nil {
			t.Fatal(err)
		}
	}
	return bufferedConn{nc, br}
}

// bufferedConn reads through the reader that read the handshake answer,
// which may hold the first frames.
type bufferedConn struct {
	net.Conn
	br *bufio.Reader
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.br.Read(p) }

func textFrame(payload string) []byte {
	p := []byte(payload)
	var b []byte
	b = append(b, 0x81)
	switch {
	case len(p) < 126:
		b = append(b, 0x80|byte(len(p)))
	default:
		b = append(b, 0x80|126, byte(len(p)>>8), byte(len(p)))
	}
	mask := []byte{1, 2, 3, 4}
	b = append(b, mask...)
	for i, c := range p {
		b = append(b, c^mask[i%4])
	}
	return b
}

func TestKeepaliveDropsSilentClient(t *testing.T) {
	// 2s: a silent peer loses its lease within 2s; a live one has 1s to
	// answer each ping, which a loaded CI machine needs.
	e := newEnv(t, dutConfig, Options{Keepalive: 2 * time.Second}, lease.MemoryOptions{})
	rawWS(t, e.wsURL, `{"type":"acquire","id":"r","holder":"silent","requests":[{"pool":"one"}]}`)
	e.waitForHolder("silent")
	silentSince := time.Now()
	b := e.dial()
	b.acquire("b", req("one", 1))
	b.expect(wire.TypeQueued)
	b.expect(wire.TypeGranted)
	d := time.Since(silentSince)
	if d > 3*time.Second {
		t.Fatalf("silent client kept its lease %s, want at most the 2s keepalive (plus scheduling slack)", d)
	}
	// b answers pings (its library does while reading): it keeps its lease
	// for several keepalive periods.
	b.quiet(4500 * time.Millisecond)
	var ls leasesResponse
	e.rest("GET", "/api/v1/leases", "", &ls)
	if len(ls.Leases) != 1 || ls.Leases[0].Connection != b.conn {
		t.Fatalf("leases after 4.5s: got %+v, want b's", ls.Leases)
	}
}

func TestShutdownClosesConnections(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	a := e.dial()
	a.acquire("a", req("one", 1))
	a.expect(wire.TypeGranted)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if m := a.expect(wire.TypeError); m.Code != forge.EUNAVAILABLE {
		t.Fatalf("got %+v, want unavailable", m)
	}
	select {
	case <-a.done:
	case <-time.After(5 * time.Second):
		t.Fatal("connection still open after Shutdown")
	}
	ls, _ := e.m.Leases(ctx)
	if len(ls) != 0 || e.s.Connections() != 0 {
		t.Fatalf("after shutdown: %d leases, %d connections; want none", len(ls), e.s.Connections())
	}
	if code := e.rest("GET", "/api/v1/leases/ws", "", nil); code != http.StatusServiceUnavailable {
		t.Fatalf("new connection after shutdown: got %d, want 503", code)
	}
}

func TestFloodingClientDoesNotStarveOthers(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	// The flooder never reads and sends as fast as it can.
	flood := rawWS(t, e.wsURL)
	stop := make(chan struct{})
	flooded := make(chan int)
	go func() {
		frame := textFrame(`{"type":"ping","id":"` + strings.Repeat("f", 100) + `"}`)
		n := 0
		defer func() { flooded <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			flood.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := flood.Write(frame); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					continue
				}
				return
			}
			n++
		}
	}()
	time.Sleep(100 * time.Millisecond)
	c := e.dial()
	var worst time.Duration
	for i := 0; i < 200; i++ {
		start := time.Now()
		c.acquire(fmt.Sprint(i), req("ports", 1))
		g := c.expect(wire.TypeGranted)
		c.release(g.Lease)
		worst = max(worst, time.Since(start))
	}
	close(stop)
	n := <-flooded
	if n < 1000 {
		t.Fatalf("the flooder sent only %d messages; the test did not flood", n)
	}
	if worst > 500*time.Millisecond {
		t.Fatalf("worst acquire/release round trip under flood: %s, want under 500ms", worst)
	}
	t.Logf("flooder sent %d messages; worst round trip of the other client %s", n, worst)
}

// readTextFrame reads server frames from a raw connection until a text
// frame, and returns its payload.
func readTextFrame(t *testing.T, nc net.Conn, br *bufio.Reader) string {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(3 * time.Second))
	for {
		h := make([]byte, 2)
		if _, err := io.ReadFull(br, h); err != nil {
			t.Fatalf("read frame: %v", err)
		}
		n := int(h[1] & 0x7f)
		switch n {
		case 126:
			b := make([]byte, 2)
			io.ReadFull(br, b)
			n = int(b[0])<<8 | int(b[1])
		case 127:
			t.Fatal("unexpectedly large frame")
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(br, p); err != nil {
			t.Fatalf("read payload: %v", err)
		}
		if h[0]&0x0f == 1 {
			return string(p)
		}
	}
}

// Messages and control frames that arrive together are all answered at
// once: holding back writes for pipelined messages must not wait for a
// data message that is not there.
func TestPipelinedMessagesAndControlFrames(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	nc := rawWS(t, e.wsURL)
	br := bufio.NewReader(nc)
	if m := readTextFrame(t, nc, br); !strings.Contains(m, `"hello"`) {
		t.Fatalf("first frame %s, want hello", m)
	}
	var batch []byte
	batch = append(batch, textFrame(`{"type":"acquire","id":"a","requests":[{"pool":"ports"}]}`)...)
	batch = append(batch, textFrame(`{"type":"ping","id":"p"}`)...)
	batch = append(batch, 0x89, 0x80, 1, 2, 3, 4) // a ping control frame, then nothing
	if _, err := nc.Write(batch); err != nil {
		t.Fatal(err)
	}
	if m := readTextFrame(t, nc, br); !strings.Contains(m, `"granted"`) {
		t.Fatalf("got %s, want granted", m)
	}
	if m := readTextFrame(t, nc, br); !strings.Contains(m, `"pong"`) {
		t.Fatalf("got %s, want pong", m)
	}
	// A message answered outside the normal path (a binary frame) after
	// a pipelined one.
	batch = append(textFrame(`{"type":"ping","id":"q"}`), 0x82, 0x81, 0, 0, 0, 0, 'x')
	if _, err := nc.Write(batch); err != nil {
		t.Fatal(err)
	}
	if m := readTextFrame(t, nc, br); !strings.Contains(m, `"pong"`) {
		t.Fatalf("got %s, want pong", m)
	}
	if m := readTextFrame(t, nc, br); !strings.Contains(m, `"invalid"`) {
		t.Fatalf("got %s, want an invalid error for the binary frame", m)
	}
}

// A client that floods but never reads is dropped, its lease going back
// to the pool, once its unwritten answers fill its send queue (or, had it
// stopped sending, by the keepalive).
func TestFloodingClientThatDoesNotReadIsDropped(t *testing.T) {
	e := newEnv(t, dutConfig, Options{MessageRate: 1e6, MessageBurst: 1e6, Keepalive: 2 * time.Second}, lease.MemoryOptions{})
	nc := rawWS(t, e.wsURL, `{"type":"acquire","id":"a","holder":"deaf","requests":[{"pool":"one"}]}`)
	e.waitForHolder("deaf")
	waiter := e.dial()
	waiter.acquire("w", req("one", 1))
	waiter.expect(wire.TypeQueued)
	frame := textFrame(`{"type":"ping","id":"` + strings.Repeat("p", 120) + `"}`)
	var burst []byte
	for i := 0; i < 100; i++ {
		burst = append(burst, frame...)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := nc.Write(burst); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					continue
				}
				return
			}
		}
	}()
	start := time.Now()
	waiter.expect(wire.TypeGranted)
	// About the 2s keepalive; on a loaded machine (make test-loaded) the
	// drop took more than 5s.
	if d := time.Since(start); d > testwait.Scale(20*time.Second) {
		t.Fatalf("the deaf client kept its lease %s, want about the 2s keepalive", d)
	}
}

// A connection whose outgoing queue overflows is dropped at once.
func TestSendQueueOverflowDrops(t *testing.T) {
	e := newEnv(t, dutConfig, Options{SendQueue: 16}, lease.MemoryOptions{})
	c := e.dial()
	c.acquire("a", req("one", 1))
	c.expect(wire.TypeGranted)
	sc := e.conn(c.conn)
	sc.cork(true) // nothing is written: as if the client did not read
	for i := 0; i < 17; i++ {
		sc.send(&wire.Message{Type: wire.TypePong, ID: fmt.Sprint(i)})
	}
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		t.Fatal("connection not dropped")
	}
	if got := metricValue(t, e, "forge_lease_slow_connections_dropped_total", nil).GetCounter().GetValue(); got != 1 {
		t.Fatalf("dropped connections: got %v, want 1", got)
	}
	w := e.dial()
	w.acquire("w", req("one", 1))
	w.expect(wire.TypeGranted) // the dropped connection's lease was released
}

// A message over 16 times the size limit closes the connection (1009),
// which releases its leases.
func TestHugeMessageClosesConnection(t *testing.T) {
	e := newEnv(t, dutConfig, Options{MaxMessageBytes: 1024}, lease.MemoryOptions{})
	c := e.dial()
	c.acquire("a", req("one", 1))
	c.expect(wire.TypeGranted)
	w := e.dial()
	w.acquire("w", req("one", 1))
	w.expect(wire.TypeQueued)
	c.sendRaw(`{"type":"ping","id":"` + strings.Repeat("x", 20000) + `"}`)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		t.Fatal("connection still open after a 20 KB message with a 1 KB limit")
	}
	w.expect(wire.TypeGranted)
}

// waitForHolder waits until holder holds a lease (a raw client cannot be
// told its grant).
func (e *testEnv) waitForHolder(holder string) {
	e.t.Helper()
	testwait.For(e.t, holder+" to hold its lease", func() bool {
		var ls leasesResponse
		e.rest("GET", "/api/v1/leases", "", &ls)
		for _, l := range ls.Leases {
			if l.Holder == holder {
				return true
			}
		}
		return false
	})
}
