package lease

import (
	"context"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/testwait"
)

// waitEvent waits for r to record an event of type typ.
func (r *recorder) waitEvent(t *testing.T, typ EventType) Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		for _, ev := range r.evs {
			if ev.Type == typ {
				r.mu.Unlock()
				return ev
			}
		}
		r.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no event %d within 10s; got %+v", typ, r.evs)
	return Event{}
}

// TestSessionResume: a detached session keeps its lease and its place in
// the queue, nobody else gets them, and Resume hands them back, with
// what happened meanwhile first.
func TestSessionResume(t *testing.T) {
	ctx := context.Background()
	m := newTestMemory(t, "pools: {p: {range: 1-1}}")
	var a1, b1 recorder
	sa, err := m.OpenSession(ctx, time.Hour, a1.notify)
	if err != nil {
		t.Fatal(err)
	}
	if sa.Grace != DefaultMaxGrace {
		t.Errorf("grace: got %s, want it cut to the maximum %s", sa.Grace, DefaultMaxGrace)
	}
	one := []forge.ResourceRequest{{Pool: "p", Count: 1}}
	if err := m.Acquire(ctx, &Request{Owner: sa.ID, ID: "r1", Wants: one, Notify: a1.notify}); err != nil {
		t.Fatal(err)
	}
	g := a1.waitEvent(t, EventGranted).Lease
	sb, _ := m.OpenSession(ctx, 0, b1.notify)
	if sb.Grace != DefaultGrace {
		t.Errorf("default grace: got %s, want %s", sb.Grace, DefaultGrace)
	}
	// Both queue behind the lease: A's second request is first in line.
	if err := m.Acquire(ctx, &Request{Owner: sa.ID, ID: "r2", Wants: one, Notify: a1.notify}); err != nil {
		t.Fatal(err)
	}
	if err := m.Acquire(ctx, &Request{Owner: sb.ID, ID: "q", Wants: one, Notify: b1.notify, MaxWait: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := m.Detach(ctx, sa.ID, sa.Attachment); err != nil {
		t.Fatal(err)
	}
	ls, _ := m.Leases(ctx)
	if len(ls) != 1 || ls[0].DetachedUntil == nil {
		t.Fatalf("leases while detached: got %+v, want A's lease, detached", ls)
	}
	if ev := b1.last(); ev.Type == EventGranted {
		t.Fatalf("B was granted a detached session's resource: %+v", ev)
	}
	// An operator revokes the lease meanwhile: r2 (A's, first in line) gets
	// the resource, B keeps waiting.
	if err := m.Revoke(ctx, g.ID, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Resume(ctx, sa.ID, "wrong", nil); forge.ErrorCode(err) != forge.EUNAUTHORIZED {
		t.Fatalf("wrong secret: got %v, want unauthorized", err)
	}
	var a2 recorder
	if _, err := m.Resume(ctx, sa.ID, sa.Secret, a2.notify); err != nil {
		t.Fatal(err)
	}
	if len(a2.evs) != 2 || a2.evs[0].Type != EventRevoked || a2.evs[1].Type != EventResumed {
		t.Fatalf("resume events: got %+v, want revoked then resumed", a2.evs)
	}
	st := a2.evs[1].Resumed
	if len(st.Leases) != 1 || st.Leases[0].RequestID != "r2" || len(st.Queued) != 0 {
		t.Fatalf("resumed state: got %+v, want r2 granted while away", st)
	}
	if ev := b1.last(); ev.Type == EventGranted {
		t.Fatalf("B was granted: %+v", ev)
	}
	// Resumed on yet another connection: the old one is told it moved.
	var a3 recorder
	s3, err := m.Resume(ctx, sa.ID, sa.Secret, a3.notify)
	if err != nil {
		t.Fatal(err)
	}
	a2.waitEvent(t, EventMoved)
	// A detach of the superseded connection changes nothing.
	if err := m.Detach(ctx, sa.ID, sa.Attachment); err != nil {
		t.Fatal(err)
	}
	if ls, _ := m.Leases(ctx); ls[0].DetachedUntil != nil {
		t.Fatalf("a stale detach detached the session: %+v", ls[0])
	}
	_ = s3
}

// TestSessionExpires: when the grace ends the leases go to the next in
// line, and a late resume is told the session is over.
func TestSessionExpires(t *testing.T) {
	ctx := context.Background()
	pools, _ := poolsFromYAML(t, "pools: {p: {range: 1-1}}")
	m, err := NewMemory(pools, MemoryOptions{Grace: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var a, b recorder
	sa, _ := m.OpenSession(ctx, 0, a.notify)
	one := []forge.ResourceRequest{{Pool: "p", Count: 1}}
	m.Acquire(ctx, &Request{Owner: sa.ID, ID: "r", Wants: one, Notify: a.notify})
	a.waitEvent(t, EventGranted)
	m.Acquire(ctx, &Request{Owner: "B", ID: "r", Wants: one, Notify: b.notify})
	m.Detach(ctx, sa.ID, sa.Attachment)
	b.waitEvent(t, EventGranted)
	if _, err := m.Resume(ctx, sa.ID, sa.Secret, a.notify); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Fatalf("late resume: got %v, want not_found (expired)", err)
	}
	h, _ := m.History(ctx, 10)
	if h[1].Event != "released" || h[1].Reason != ReasonExpired {
		t.Fatalf("history: got %+v, want a release for %q", h[1], ReasonExpired)
	}
	// A connection without a session is not resumable: Detach releases.
	m.Detach(ctx, "B", 0)
	if ls, _ := m.Leases(ctx); len(ls) != 0 {
		t.Fatalf("leases after detaching a plain owner: %+v", ls)
	}
}

// TestSnapshotRestore: a new Memory restored from a snapshot has every
// session detached, with its leases on the same resources and its
// requests ahead of newcomers; a resume gets them back.
func TestSnapshotRestore(t *testing.T) {
	ctx := context.Background()
	const cfg = "pools: {p: {range: 1-2}}"
	m := newTestMemory(t, cfg)
	var a recorder
	s, _ := m.OpenSession(ctx, time.Minute, a.notify)
	two := []forge.ResourceRequest{{Pool: "p", Count: 2}}
	one := []forge.ResourceRequest{{Pool: "p", Count: 1}}
	m.Acquire(ctx, &Request{Owner: s.ID, ID: "r1", Wants: one, Notify: a.notify})
	g := a.waitEvent(t, EventGranted).Lease
	m.Acquire(ctx, &Request{Owner: s.ID, ID: "r2", Wants: two, Notify: a.notify})
	var plain recorder
	m.Acquire(ctx, &Request{Owner: "plain", ID: "x", Wants: one, Notify: plain.notify}) // not a session: not kept
	data, err := m.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}

	m2 := newTestMemory(t, cfg)
	sessions, leases, err := m2.Restore(ctx, data)
	if err != nil || sessions != 1 || leases != 1 {
		t.Fatalf("Restore: got %d sessions, %d leases, %v; want 1 and 1", sessions, leases, err)
	}
	var b recorder
	m2.Acquire(ctx, &Request{Owner: "new", ID: "n", Wants: one, Notify: b.notify})
	if ev := b.last(); ev.Type != EventQueued {
		t.Fatalf("a newcomer: got %+v, want queued behind the restored r2", ev)
	}
	var a2 recorder
	if _, err := m2.Resume(ctx, s.ID, "wrong", a2.notify); forge.ErrorCode(err) != forge.EUNAUTHORIZED {
		t.Fatalf("wrong secret after restore: %v", err)
	}
	if _, err := m2.Resume(ctx, s.ID, s.Secret, a2.notify); err != nil {
		t.Fatal(err)
	}
	st := a2.waitEvent(t, EventResumed).Resumed
	if len(st.Leases) != 1 || st.Leases[0].ID != g.ID || st.Leases[0].Pools[0].Resources[0].ID != g.Pools[0].Resources[0].ID ||
		len(st.Queued) != 1 || st.Queued[0].RequestID != "r2" {
		t.Fatalf("resumed after restore: got %+v, want lease %s on the same resource and r2 queued", st, g.ID)
	}
	if _, _, err := m2.Restore(ctx, []byte("{")); forge.ErrorCode(err) != forge.EINVALID {
		t.Fatalf("bad snapshot: %v", err)
	}
}

// TestPoolMaxGrace: a pool's max_grace cuts the grace of a session that
// holds or waits for its resources (the smallest bound of its pools), at
// detach and in what Resume reports; a session holding nothing keeps its
// own grace.
func TestPoolMaxGrace(t *testing.T) {
	ctx := context.Background()
	m := newTestMemory(t, `
pools:
  short: {range: 1-1, max_grace: 50ms}
  medium: {range: 1-2, max_grace: 1m}
  free: {range: 1-1}
`)
	var a, b recorder
	sa, _ := m.OpenSession(ctx, time.Hour, a.notify)
	if sa.Grace != DefaultMaxGrace {
		t.Fatalf("session grace before any pool: %s, want %s", sa.Grace, DefaultMaxGrace)
	}
	m.Acquire(ctx, &Request{Owner: sa.ID, ID: "r", Wants: []forge.ResourceRequest{{Pool: "medium", Count: 1}, {Pool: "free", Count: 1}}, Notify: a.notify})
	a.waitEvent(t, EventGranted)
	m.Detach(ctx, sa.ID, sa.Attachment)
	var a2 recorder
	s2, err := m.Resume(ctx, sa.ID, sa.Secret, a2.notify)
	if err != nil {
		t.Fatal(err)
	}
	if got := a2.waitEvent(t, EventResumed).Resumed.Grace; got != time.Minute || s2.Grace != time.Minute {
		t.Fatalf("grace holding medium: resumed %s, session %s; want medium's 1m", got, s2.Grace)
	}
	// Waiting for "short" (held by B) cuts it to 50ms: detached, it ends
	// in 50ms and its lease goes back.
	sb, _ := m.OpenSession(ctx, time.Hour, b.notify)
	m.Acquire(ctx, &Request{Owner: sb.ID, ID: "s", Wants: []forge.ResourceRequest{{Pool: "short", Count: 1}}, Notify: b.notify})
	b.waitEvent(t, EventGranted)
	m.Acquire(ctx, &Request{Owner: sa.ID, ID: "w", Wants: []forge.ResourceRequest{{Pool: "short", Count: 1}}, Notify: a2.notify})
	m.Detach(ctx, sa.ID, s2.Attachment)
	leases, _ := m.Leases(ctx)
	for _, l := range leases {
		if l.Connection == sa.ID && (l.DetachedUntil == nil || time.Until(*l.DetachedUntil) > 50*time.Millisecond) {
			t.Fatalf("detached until %v, want within 50ms (short's max_grace)", l.DetachedUntil)
		}
	}
	testwait.For(t, "the session to expire after short's 50ms", func() bool {
		leases, _ := m.Leases(ctx)
		return len(leases) == 1 && leases[0].Connection == sb.ID
	})
	if _, err := m.Resume(ctx, sa.ID, sa.Secret, func(Event) {}); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Fatalf("resume after the pool's grace: %v, want ENOTFOUND (expired)", err)
	}
	st, _ := m.Pool(ctx, "short")
	if st.MaxGrace != "50ms" {
		t.Fatalf("pool state max_grace %q, want 50ms", st.MaxGrace)
	}
}
