package lease

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// recorder collects a request's events.
type recorder struct {
	mu  sync.Mutex
	evs []Event
}

func (r *recorder) notify(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, ev)
}

func (r *recorder) last() Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.evs) == 0 {
		return Event{}
	}
	return r.evs[len(r.evs)-1]
}

func newTestMemory(t *testing.T, cfg string) *Memory {
	t.Helper()
	pools, _ := poolsFromYAML(t, cfg)
	m, err := NewMemory(pools, MemoryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func TestMemoryContract(t *testing.T) {
	ctx := context.Background()
	m := newTestMemory(t, "pools: {p: {range: 1-2}}")
	var a, b recorder
	want := []forge.ResourceRequest{{Pool: "p", Count: 2}}
	if err := m.Acquire(ctx, &Request{Owner: "A", ID: "r", Wants: want, Notify: a.notify}); err != nil {
		t.Fatal(err)
	}
	ga := a.last()
	if ga.Type != EventGranted || len(ga.Lease.Pools) != 1 || len(ga.Lease.Pools[0].Resources) != 2 {
		t.Fatalf("A: got %+v, want a grant of 2", ga)
	}
	if err := m.Acquire(ctx, &Request{Owner: "B", ID: "r", Wants: want, Notify: b.notify}); err != nil {
		t.Fatal(err)
	}
	if ev := b.last(); ev.Type != EventQueued || ev.Position != 1 {
		t.Fatalf("B: got %+v, want queued at 1", ev)
	}
	for _, tc := range []struct {
		name string
		err  error
		code string
	}{
		{"duplicate queued id", m.Acquire(ctx, &Request{Owner: "B", ID: "r", Wants: want, Notify: b.notify}), forge.ECONFLICT},
		{"no notify", m.Acquire(ctx, &Request{Owner: "B", ID: "x", Wants: want}), forge.EINVALID},
		{"nothing wanted", m.Acquire(ctx, &Request{Owner: "B", ID: "x", Notify: b.notify}), forge.EINVALID},
		{"zero count", m.Acquire(ctx, &Request{Owner: "B", ID: "x", Wants: []forge.ResourceRequest{{Pool: "p"}}, Notify: b.notify}), forge.EINVALID},
		{"release by another owner", m.Release(ctx, "B", ga.Lease.ID), forge.ENOTFOUND},
		{"cancel unknown", m.Cancel(ctx, "B", "nope"), forge.ENOTFOUND},
		{"revoke unknown", m.Revoke(ctx, "Lnope", "x"), forge.ENOTFOUND},
		{"disable unknown", m.SetDisabled(ctx, "p", "9", true, ""), forge.ENOTFOUND},
		{"delete unknown", m.DeletePool(ctx, "q"), forge.ENOTFOUND},
		{"disconnect unknown", m.Disconnect(ctx, "nobody"), ""},
	} {
		if got := forge.ErrorCode(tc.err); got != tc.code {
			t.Errorf("%s: got %q (%v), want %q", tc.name, got, tc.err, tc.code)
		}
	}
	// Disconnect releases at once and is idempotent.
	if err := m.Disconnect(ctx, "A"); err != nil {
		t.Fatal(err)
	}
	if err := m.Disconnect(ctx, "A"); err != nil {
		t.Fatal(err)
	}
	if ev := b.last(); ev.Type != EventGranted {
		t.Fatalf("B after A's disconnect: got %+v, want granted", ev)
	}
	if err := m.Release(ctx, "A", ga.Lease.ID); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Fatalf("release after disconnect: got %v, want not_found", err)
	}
	gb := b.last().Lease.ID
	if err := m.Release(ctx, "B", gb); err != nil {
		t.Fatal(err)
	}
	if ev := b.last(); ev.Type != EventReleased || ev.Lease.ID != gb {
		t.Fatalf("B after release: got %+v, want released", ev)
	}
	st, _ := m.Stats(ctx)
	if st[0].Grants != 2 || st[0].Releases[ReasonDisconnected] != 1 || st[0].Releases[ReasonReleased] != 1 || st[0].InUse != 0 {
		t.Fatalf("stats: got %+v", st[0])
	}
	// After Close, everything but Disconnect is unavailable.
	m.Close()
	if err := m.Acquire(ctx, &Request{Owner: "C", ID: "r", Wants: want, Notify: b.notify}); forge.ErrorCode(err) != forge.EUNAVAILABLE {
		t.Fatalf("acquire after close: got %v, want unavailable", err)
	}
}

func TestMemoryPositionsCoalesced(t *testing.T) {
	ctx := context.Background()
	pools, _ := poolsFromYAML(t, "pools: {p: {range: 1-1}}")
	m, err := NewMemory(pools, MemoryOptions{PositionInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var holder recorder
	m.Acquire(ctx, &Request{Owner: "H", ID: "h", Wants: []forge.ResourceRequest{{Pool: "p", Count: 1}}, Notify: holder.notify})
	recs := make([]*recorder, 5)
	for i := range recs {
		recs[i] = &recorder{}
		m.Acquire(ctx, &Request{Owner: string(rune('a' + i)), ID: "r", Wants: []forge.ResourceRequest{{Pool: "p", Count: 1}}, Notify: recs[i].notify})
	}
	// The first three waiters give up; the last two move from 4 and 5 to
	// 1 and 2 in one update each.
	for i := 0; i < 3; i++ {
		if err := m.Cancel(ctx, string(rune('a'+i)), "r"); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	for i, want := range []int{1, 2} {
		r := recs[3+i]
		r.mu.Lock()
		evs := append([]Event(nil), r.evs...)
		r.mu.Unlock()
		if len(evs) != 2 || evs[0].Position != 4+i || evs[1].Position != want {
			t.Errorf("waiter %d: got %+v, want queued %d then %d", 3+i, evs, 4+i, want)
		}
	}
}

// BenchmarkMemoryGrant: the lease state alone, no network: 1,000 owners
// cycle acquire → release on a pool of 100 (900 always waiting). One op
// is one grant. Shows the Manager is not what limits the server.
func BenchmarkMemoryGrant(b *testing.B) {
	pools, _ := poolsFromYAML(b, "pools: {bench: {range: 1-100}}")
	m, err := NewMemory(pools, MemoryOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	const owners = 1000
	granted := make(chan string, owners*2) // lease ids, in grant order
	owner := map[string]string{}           // lease → owner
	var mu sync.Mutex
	want := []forge.ResourceRequest{{Pool: "bench", Count: 1}}
	acquire := func(o string) {
		m.Acquire(ctx, &Request{Owner: o, ID: "r", Wants: want, Notify: func(ev Event) {
			if ev.Type == EventGranted {
				mu.Lock()
				owner[ev.Lease.ID] = o
				mu.Unlock()
				granted <- ev.Lease.ID
			}
		}})
	}
	for i := 0; i < owners; i++ {
		acquire(strconv.Itoa(i))
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := <-granted
		mu.Lock()
		o := owner[id]
		delete(owner, id)
		mu.Unlock()
		if err := m.Release(ctx, o, id); err != nil {
			b.Fatal(err)
		}
		acquire(o)
	}
}
