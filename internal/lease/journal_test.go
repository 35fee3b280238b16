package lease

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/testwait"
)

// sessionStore is a SessionStore in memory whose writes can be held back.
type sessionStore struct {
	mu     sync.Mutex
	rows   map[string][]byte
	writes int
	fail   error
	gate   chan struct{} // when set, each write waits for a value on it
}

func (s *sessionStore) LeaseSessions(ctx context.Context) (map[string][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]byte{}
	for k, v := range s.rows {
		out[k] = v
	}
	return out, nil
}

func (s *sessionStore) WriteLeaseSessions(ctx context.Context, changes map[string][]byte) error {
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	s.writes++
	if s.rows == nil {
		s.rows = map[string][]byte{}
	}
	for k, v := range changes {
		if v == nil {
			delete(s.rows, k)
		} else {
			s.rows[k] = v
		}
	}
	return nil
}

func (s *sessionStore) session(t *testing.T, id string) *SavedSession {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.rows[id]
	if b == nil {
		return nil
	}
	var ss SavedSession
	if err := json.Unmarshal(b, &ss); err != nil {
		t.Fatal(err)
	}
	return &ss
}

func (r *recorder) count(typ EventType) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, ev := range r.evs {
		if ev.Type == typ {
			n++
		}
	}
	return n
}

func journaled(t *testing.T, cfg string, store *sessionStore) *Memory {
	t.Helper()
	m := newTestMemory(t, cfg)
	if _, _, err := m.Journal(context.Background(), store, JournalOptions{}); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestJournalHoldsGrantUntilKept: a session's grant reaches its client
// only after the store has it; a connection without a session is not
// held back (nor kept).
func TestJournalHoldsGrantUntilKept(t *testing.T) {
	ctx := context.Background()
	store := &sessionStore{}
	m := journaled(t, "pools: {p: {range: 1-2}}", store)
	var a recorder
	sa, err := m.OpenSession(ctx, 0, a.notify)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	store.mu.Lock()
	store.gate = gate
	store.mu.Unlock()
	one := []forge.ResourceRequest{{Pool: "p", Count: 1}}
	if err := m.Acquire(ctx, &Request{Owner: sa.ID, ID: "r1", Wants: one, Notify: a.notify}); err != nil {
		t.Fatal(err)
	}
	// Without a session: granted at once, whatever the store does.
	var v1 recorder
	if err := m.Acquire(ctx, &Request{Owner: "C1", ID: "x", Wants: one, Notify: v1.notify}); err != nil {
		t.Fatal(err)
	}
	if v1.count(EventGranted) != 1 {
		t.Fatalf("a connection without a session waited for the store: %+v", v1.evs)
	}
	if a.count(EventGranted) != 0 {
		t.Fatal("granted reached the session's client before the store kept it")
	}
	gate <- struct{}{}
	a.waitEvent(t, EventGranted)
	ss := store.session(t, sa.ID)
	if ss == nil || len(ss.Leases) != 1 || ss.Leases[0].Resources[0].IDs[0] != "1" {
		t.Fatalf("stored session: %+v, want its lease on p/1", ss)
	}
	store.mu.Lock()
	store.gate = nil
	store.mu.Unlock()
	// Its end deletes its record.
	if err := m.Disconnect(ctx, sa.ID); err != nil {
		t.Fatal(err)
	}
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if ss := store.session(t, sa.ID); ss != nil {
		t.Fatalf("ended session still kept: %+v", ss)
	}
	if len(store.rows) != 0 {
		t.Fatalf("connection without a session kept: %v", store.rows)
	}
}

// TestJournalRestart: a Memory that stops without a word (the journal is
// all that is left) comes back, in a new Memory on the same store, with
// every session detached, its lease on the same resource and its queued
// request in its place; a session nobody resumes is freed when its grace
// ends and its record deleted.
func TestJournalRestart(t *testing.T) {
	ctx := context.Background()
	store := &sessionStore{}
	const cfg = "pools: {p: {range: 1-1}}"
	m := journaled(t, cfg, store)
	var a, b, c recorder
	one := []forge.ResourceRequest{{Pool: "p", Count: 1}}
	sa, _ := m.OpenSession(ctx, time.Hour, a.notify)
	sb, _ := m.OpenSession(ctx, 50*time.Millisecond, b.notify)
	sc, _ := m.OpenSession(ctx, time.Hour, c.notify)
	m.Acquire(ctx, &Request{Owner: sb.ID, ID: "b1", Wants: one, Notify: b.notify})
	b.waitEvent(t, EventGranted)
	m.Acquire(ctx, &Request{Owner: sa.ID, ID: "a1", Wants: one, Notify: a.notify})
	m.Acquire(ctx, &Request{Owner: sc.ID, ID: "c1", Wants: one, Notify: c.notify})
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	m.Close() // as if killed: nothing more is written

	m2 := newTestMemory(t, cfg)
	sessions, leases, err := m2.Journal(ctx, store, JournalOptions{})
	if err != nil || sessions != 3 || leases != 1 {
		t.Fatalf("Journal: %d sessions, %d leases, %v; want 3 and 1", sessions, leases, err)
	}
	var b2 recorder
	if _, err := m2.Resume(ctx, sb.ID, "wrong", b2.notify); forge.ErrorCode(err) != forge.EUNAUTHORIZED {
		t.Fatalf("resume with a wrong secret: %v", err)
	}
	// B does not come back: its grace (50ms) ends, A (first in line) gets p/1.
	var a2 recorder
	testwait.For(t, "b's grace to end and a's request to be granted", func() bool {
		st, _ := m2.Leases(ctx)
		return len(st) == 1 && st[0].Connection == sa.ID
	})
	if err := m2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if ss := store.session(t, sb.ID); ss != nil {
		t.Fatalf("expired session still kept: %+v", ss)
	}
	if _, err := m2.Resume(ctx, sa.ID, sa.Secret, a2.notify); err != nil {
		t.Fatal(err)
	}
	r := a2.waitEvent(t, EventResumed).Resumed
	if len(r.Leases) != 1 || r.Leases[0].RequestID != "a1" {
		t.Fatalf("resumed A: %+v, want its request a1 granted while away", r)
	}
	var c2 recorder
	if _, err := m2.Resume(ctx, sc.ID, sc.Secret, c2.notify); err != nil {
		t.Fatal(err)
	}
	if r := c2.waitEvent(t, EventResumed).Resumed; len(r.Queued) != 1 || r.Queued[0].Position != 1 {
		t.Fatalf("resumed C: %+v, want c1 first in line", r)
	}
}

// TestJournalRetriesFailedWrites: a write the store refuses is retried;
// the grant waits for it, and OnError hears of each failure.
func TestJournalRetriesFailedWrites(t *testing.T) {
	ctx := context.Background()
	store := &sessionStore{}
	m := newTestMemory(t, "pools: {p: {range: 1-1}}")
	var mu sync.Mutex
	fails := 0
	if _, _, err := m.Journal(ctx, store, JournalOptions{OnError: func(error) { mu.Lock(); fails++; mu.Unlock() }}); err != nil {
		t.Fatal(err)
	}
	var a recorder
	sa, err := m.OpenSession(ctx, 0, a.notify)
	if err != nil {
		t.Fatal(err)
	}
	store.mu.Lock()
	store.fail = forge.Errorf(forge.EUNAVAILABLE, "database down")
	store.mu.Unlock()
	m.Acquire(ctx, &Request{Owner: sa.ID, ID: "r", Wants: []forge.ResourceRequest{{Pool: "p", Count: 1}}, Notify: a.notify})
	testwait.For(t, "two failed writes", func() bool { mu.Lock(); defer mu.Unlock(); return fails >= 2 })
	if a.count(EventGranted) != 0 {
		t.Fatal("granted while the store refused to keep it")
	}
	store.mu.Lock()
	store.fail = nil
	store.mu.Unlock()
	a.waitEvent(t, EventGranted)
	if ss := store.session(t, sa.ID); ss == nil || len(ss.Leases) != 1 {
		t.Fatalf("stored: %+v", ss)
	}
}

// TestJournalMovedNotHeld: resuming a session still attached tells the
// old connection at once, even while the store holds the other events
// back (the old connection must not end the session when it closes).
func TestJournalMovedNotHeld(t *testing.T) {
	ctx := context.Background()
	store := &sessionStore{}
	m := journaled(t, "pools: {p: {range: 1-1}}", store)
	var a, b recorder
	sa, _ := m.OpenSession(ctx, 0, a.notify)
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	store.mu.Lock()
	store.gate = gate
	store.mu.Unlock()
	m.Acquire(ctx, &Request{Owner: sa.ID, ID: "r", Wants: []forge.ResourceRequest{{Pool: "p", Count: 1}}, Notify: a.notify})
	if _, err := m.Resume(ctx, sa.ID, sa.Secret, b.notify); err != nil {
		t.Fatal(err)
	}
	if a.count(EventMoved) != 1 {
		t.Fatalf("old connection not told of the move at once: %+v", a.evs)
	}
	if b.count(EventResumed) != 0 {
		t.Fatal("resumed reached the client before the grant it lists was kept")
	}
	close(gate)
	if r := b.waitEvent(t, EventResumed).Resumed; len(r.Leases) != 1 {
		t.Fatalf("resumed: %+v, want the lease", r)
	}
}

// TestJournalRestoresMaxWait: a restored request keeps its max_wait
// deadline: it times out on the new Memory, and its client hears of it
// on resume.
func TestJournalRestoresMaxWait(t *testing.T) {
	ctx := context.Background()
	store := &sessionStore{}
	const cfg = "pools: {p: {range: 1-1}}"
	m := journaled(t, cfg, store)
	var a, b recorder
	sa, _ := m.OpenSession(ctx, 0, a.notify)
	sb, _ := m.OpenSession(ctx, 0, b.notify)
	one := []forge.ResourceRequest{{Pool: "p", Count: 1}}
	m.Acquire(ctx, &Request{Owner: sa.ID, ID: "hold", Wants: one, Notify: a.notify})
	m.Acquire(ctx, &Request{Owner: sb.ID, ID: "wait", Wants: one, Notify: b.notify, MaxWait: 300 * time.Millisecond})
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if ss := store.session(t, sb.ID); len(ss.Queued) != 1 || ss.Queued[0].Deadline.IsZero() {
		t.Fatalf("stored waiter: %+v, want its deadline", ss)
	}
	m.Close()
	m2 := newTestMemory(t, cfg)
	if _, _, err := m2.Journal(ctx, store, JournalOptions{}); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the restored request to time out", func() bool {
		p, _ := m2.Pool(ctx, "p")
		return len(p.Queue) == 0
	})
	var b2 recorder
	if _, err := m2.Resume(ctx, sb.ID, sb.Secret, b2.notify); err != nil {
		t.Fatal(err)
	}
	b2.waitEvent(t, EventResumed)
	if b2.count(EventTimeout) != 1 {
		t.Fatalf("resume did not report the timeout: %+v", b2.evs)
	}
}

// TestJournalSessionOpenKept: OpenSession returns (and the client learns
// the session's id) only once the store has the session.
func TestJournalSessionOpenKept(t *testing.T) {
	ctx := context.Background()
	store := &sessionStore{}
	m := journaled(t, "pools: {p: {range: 1-1}}", store)
	gate := make(chan struct{})
	store.mu.Lock()
	store.gate = gate
	store.mu.Unlock()
	opened := make(chan *Session, 1)
	go func() {
		s, err := m.OpenSession(ctx, 0, func(Event) {})
		if err != nil {
			t.Error(err)
		}
		opened <- s
	}()
	select {
	case <-opened:
		t.Fatal("OpenSession returned before the store had the session")
	case <-time.After(50 * time.Millisecond):
	}
	close(gate)
	s := <-opened
	if store.session(t, s.ID) == nil {
		t.Fatal("the session OpenSession returned is not in the store")
	}
}

// TestJournalRestartWritesOnlyChanges: taking back what the store holds
// rewrites nothing that did not change, and a new request queues after
// the restored ones (they keep their arrival numbers).
func TestJournalRestartWritesOnlyChanges(t *testing.T) {
	ctx := context.Background()
	store := &sessionStore{}
	const cfg = "pools: {p: {range: 1-1}}"
	m := journaled(t, cfg, store)
	var a, b recorder
	one := []forge.ResourceRequest{{Pool: "p", Count: 1}}
	sa, _ := m.OpenSession(ctx, time.Hour, a.notify)
	sb, _ := m.OpenSession(ctx, time.Hour, b.notify)
	m.Acquire(ctx, &Request{Owner: sa.ID, ID: "a", Wants: one, Notify: a.notify})
	m.Acquire(ctx, &Request{Owner: sb.ID, ID: "b", Wants: one, Notify: b.notify})
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	m.Close()
	store.mu.Lock()
	writes := store.writes
	store.mu.Unlock()

	m2 := newTestMemory(t, cfg)
	if _, _, err := m2.Journal(ctx, store, JournalOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := m2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	store.mu.Lock()
	rewrites := store.writes - writes
	store.mu.Unlock()
	if rewrites != 0 {
		t.Errorf("restoring unchanged sessions wrote %d transactions, want none", rewrites)
	}
	var c recorder
	sc, _ := m2.OpenSession(ctx, 0, c.notify)
	m2.Acquire(ctx, &Request{Owner: sc.ID, ID: "c", Wants: one, Notify: c.notify})
	p, _ := m2.Pool(ctx, "p")
	if len(p.Queue) != 2 || p.Queue[0].Request != "b" || p.Queue[1].Request != "c" {
		t.Fatalf("queue after restart: %+v, want b (restored) then c (new)", p.Queue)
	}
}
