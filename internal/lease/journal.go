package lease

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/forgeci/forge"
)

// SessionStore keeps the resumable sessions' state as it changes, one
// record per session (a SavedSession as JSON), so that a server killed
// with kill -9 restarts with it. The SQL store implements it
// (sqldb.LeaseSessionStore, table lease_sessions); a Memory writes to it
// through its journal (Memory.Journal).
type SessionStore interface {
	// LeaseSessions returns every kept session's state, by session id.
	LeaseSessions(ctx context.Context) (map[string][]byte, error)
	// WriteLeaseSessions applies changes in ONE transaction, all or
	// nothing: an id with a state is upserted, an id with a nil state
	// deleted. An implementation may run more checks in that transaction
	// (sqldb.LeaseSessionStore.Fence: servers sharing a database check
	// there that the writer is still the leader); an error from them
	// fails the write.
	WriteLeaseSessions(ctx context.Context, changes map[string][]byte) error
}

// JournalOptions tune a Memory's journal; zero values take the defaults.
type JournalOptions struct {
	// Linger is how long the writer waits after a change before it takes
	// the batch, so that changes close together share a transaction
	// (default 0: a batch is whatever changed while the previous one was
	// being written, which batches by itself under load).
	Linger time.Duration
	// OnError hears every failed write (it is retried, with a backoff
	// from 10 ms doubling to 1 s, until it succeeds or the Memory is
	// closed). A server that must stop on some errors (a leader fenced
	// out) closes the Memory from here. It must not call the Memory.
	OnError func(error)
}

// journal is a Memory's write-behind log of its sessions' state: the
// sessions changed since the last batch and the events their clients must
// not hear before the change is kept. Everything but the channels and
// progress is guarded by Memory.mu.
type journal struct {
	store SessionStore
	opts  JournalOptions

	// dirty: session id → the owner whose state to write; a nil owner,
	// or one no longer in Memory.owners, is a deletion.
	dirty   map[string]*memOwner
	out     []pendingEvent // events held until their batch is kept
	spare   []pendingEvent
	changes uint64 // counts dirty marks and held events: Flush's target

	kick    chan struct{}
	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once
	cancel  context.CancelFunc

	pmu      sync.Mutex
	done     uint64        // changes kept (and their events delivered)
	progress chan struct{} // closed and replaced at every batch
}

type pendingEvent struct {
	notify func(Event)
	ev     Event
}

// Journal makes m durable: it loads the sessions kept in store — each
// detached, with its whole grace from now (cut to its pools' max_grace),
// its leases on the same resources and its queued requests in their
// order, as Restore does — and from then on keeps every change of a
// session's state (opened, ended, a lease granted or released, a request
// queued or leaving the queue) in store.
//
// Changes are written by one goroutine in group-commit transactions: each
// transaction holds every session changed since the previous one began,
// one record per session. A session's events (granted, resumed, and all
// the others, in their order) reach its client only once the transaction
// holding the change that caused them has committed: after a crash, no
// client holds a lease the store does not know. Owners without a session
// are not kept and their events are not held: their leases end with their
// connections, as the protocol says.
//
// Call it once, on a new Memory, before it serves anyone. It returns how
// many sessions and leases it loaded.
func (m *Memory) Journal(ctx context.Context, store SessionStore, opts JournalOptions) (sessions, leases int, err error) {
	rows, err := store.LeaseSessions(ctx)
	if err != nil {
		return 0, 0, err
	}
	var snap Snapshot
	for id, b := range rows {
		var ss SavedSession
		if json.Unmarshal(b, &ss) != nil || ss.ID != id {
			continue // unreadable: deleted below, as its session is gone
		}
		snap.Sessions = append(snap.Sessions, ss)
	}
	if err := m.lock(); err != nil {
		return 0, 0, err
	}
	if m.jr != nil {
		m.mu.Unlock()
		return 0, 0, forge.Errorf(forge.ECONFLICT, "the lease manager already has a journal")
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	j := &journal{
		store: store, opts: opts, dirty: map[string]*memOwner{},
		kick: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{}),
		cancel: cancel, progress: make(chan struct{}),
	}
	m.jr = j
	sessions, leases = m.restore(&snap, true)
	for id := range rows {
		if m.owners[id] == nil {
			j.dirty[id] = nil
			j.changes++
		}
	}
	m.mu.Unlock()
	go m.writeJournal(wctx)
	j.poke()
	return sessions, leases, nil
}

// touch marks o's session state as changed. Called with m.mu held.
func (m *Memory) touch(o *memOwner) {
	if m.jr == nil || o.session == nil {
		return
	}
	m.jr.dirty[o.id] = o
	m.jr.changes++
	m.jr.poke()
}

// held returns notify, or, when m has a journal, a notify that holds each
// event until everything changed before it is kept. Called with m.mu held
// (and the result too: events are sent under the manager's lock).
func (m *Memory) held(notify func(Event)) func(Event) {
	j := m.jr
	if j == nil {
		return notify
	}
	return func(ev Event) {
		j.out = append(j.out, pendingEvent{notify, ev})
		j.changes++
		j.poke()
	}
}

func (j *journal) poke() {
	select {
	case j.kick <- struct{}{}:
	default:
	}
}

// Flush waits until every change made before it is kept in the store and
// its events delivered. Without a journal it returns at once.
func (m *Memory) Flush(ctx context.Context) error {
	m.mu.Lock()
	j := m.jr
	if j == nil {
		m.mu.Unlock()
		return nil
	}
	target := j.changes
	m.mu.Unlock()
	j.poke()
	for {
		j.pmu.Lock()
		done, ch := j.done, j.progress
		j.pmu.Unlock()
		if done >= target {
			return nil
		}
		select {
		case <-ch:
		case <-j.stopped:
			return forge.Errorf(forge.EUNAVAILABLE, "the lease manager closed before its state was kept")
		case <-ctx.Done():
			return forge.WrapError(forge.ETIMEOUT, ctx.Err(), "waiting for the lease state to be kept")
		}
	}
}

// closeJournal stops the writer and waits for it; what it had not written
// is lost (Flush first to keep it). Called without m.mu.
func (j *journal) close() {
	j.once.Do(func() {
		close(j.stop)
		j.cancel()
	})
	<-j.stopped
}

func (m *Memory) writeJournal(ctx context.Context) {
	j := m.jr
	defer close(j.stopped)
	for {
		select {
		case <-j.stop:
			return
		case <-j.kick:
		}
		if j.opts.Linger > 0 {
			select {
			case <-j.stop:
				return
			case <-time.After(j.opts.Linger):
			}
		}
		// Take the batch: the state of every changed session and the
		// events sent so far, at one instant, under the manager's lock.
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return
		}
		var saved map[string]*SavedSession
		if len(j.dirty) > 0 {
			saved = make(map[string]*SavedSession, len(j.dirty))
			for id, o := range j.dirty {
				if o != nil && m.owners[id] == o && o.session != nil {
					ss := m.savedSession(o)
					saved[id] = &ss
				} else {
					saved[id] = nil
				}
			}
			clear(j.dirty)
		}
		evs := j.out
		j.out = j.spare[:0]
		upto := j.changes
		m.mu.Unlock()

		if len(saved) > 0 {
			changes := make(map[string][]byte, len(saved))
			for id, ss := range saved {
				if ss == nil {
					changes[id] = nil
					continue
				}
				b, err := json.Marshal(ss)
				if err != nil { // cannot happen: plain data
					panic(err)
				}
				changes[id] = b
			}
			if !j.write(ctx, changes) {
				return
			}
		}
		for i := range evs {
			evs[i].notify(evs[i].ev)
			evs[i] = pendingEvent{}
		}
		m.mu.Lock()
		j.spare = evs[:0]
		m.mu.Unlock()
		j.pmu.Lock()
		j.done = upto
		close(j.progress)
		j.progress = make(chan struct{})
		j.pmu.Unlock()
	}
}

// write writes changes until it succeeds (true) or the journal stops.
func (j *journal) write(ctx context.Context, changes map[string][]byte) bool {
	backoff := 10 * time.Millisecond
	for {
		err := j.store.WriteLeaseSessions(ctx, changes)
		if err == nil {
			return true
		}
		select {
		case <-j.stop: // closed mid-write: not the store's failure
			return false
		default:
		}
		if j.opts.OnError != nil {
			j.opts.OnError(err)
		}
		select {
		case <-j.stop:
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}
