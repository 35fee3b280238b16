package lease

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"slices"
	"time"

	"github.com/forgeci/forge"
)

// Session bounds, for MemoryOptions and the configuration file.
const (
	// DefaultGrace is how long a resumable session's leases and queued
	// requests wait for their holder to reconnect.
	DefaultGrace = 15 * time.Second
	// DefaultMaxGrace bounds the grace a client may ask for.
	DefaultMaxGrace = 5 * time.Minute
)

// ReasonExpired is the release reason of leases whose session's grace
// ended before its holder came back.
const ReasonExpired = "expired"

// Session is a resumable owner: its id is the owner of its requests and
// leases, and its secret proves a reconnecting client is the one that
// opened it. Grace is how long it survives without a connection.
type Session struct {
	ID     string
	Secret string
	Grace  time.Duration
	// Attachment identifies the connection the session is attached to;
	// Detach with an older attachment is ignored (the session moved).
	Attachment uint64
}

// Sessions are resumable owners (protocol version 2). A connection that
// opens a session owns its requests and leases under the session's id; when
// the connection breaks, Detach keeps them for the session's grace —
// neither held by anyone else nor free — and Resume on a new connection
// gets them back. An owner that never opened a session is not resumable:
// Detach of it is Disconnect.
//
// Contract: Resume of an unknown session, or of one whose grace ended,
// returns ENOTFOUND (the transport calls it "expired"); a wrong secret
// EUNAUTHORIZED. Events that happen while a session is detached are kept
// and delivered to the new Notify, before EventResumed. Resume of a session
// still attached moves it: the old Notify gets EventMoved and nothing more.
type Sessions interface {
	// OpenSession starts a session with notify as its connection's event
	// sink for session-wide events (EventMoved). grace 0 takes the
	// default; more than the maximum is cut to it.
	OpenSession(ctx context.Context, grace time.Duration, notify func(Event)) (*Session, error)
	// Detach marks the session owner's connection (attachment) as gone:
	// its leases and queued requests are kept for the grace, then
	// released (ReasonExpired). For an owner without a session it is
	// Disconnect. Idempotent; an attachment that is no longer current is
	// ignored.
	Detach(ctx context.Context, owner string, attachment uint64) error
	// Resume attaches session id to a new connection whose events go to
	// notify. On success notify gets, under the manager's lock, the events
	// kept while detached and then EventResumed with the session's state.
	Resume(ctx context.Context, id, secret string, notify func(Event)) (*Session, error)
}

// Resumed is the state of a session handed back on Resume.
type Resumed struct {
	Session string
	Grace   time.Duration
	Leases  []*Grant
	Queued  []QueuedRequest
}

// QueuedRequest is a request waiting in the queue, at Position.
type QueuedRequest struct {
	RequestID string
	Position  int
}

type memSession struct {
	secretHash [32]byte
	grace      time.Duration
	attachment uint64
	notify     func(Event) // session-wide events of the current connection (EventMoved), not held by the journal
	detached   bool
	until      time.Time // when the grace ends, while detached
	timer      *time.Timer
	kept       []Event // events while detached
}

func newSecret() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// OpenSession implements Sessions.
func (m *Memory) OpenSession(ctx context.Context, grace time.Duration, notify func(Event)) (*Session, error) {
	if grace < 0 {
		return nil, forge.Errorf(forge.EINVALID, "negative grace %s", grace)
	}
	if grace == 0 {
		grace = m.opts.Grace
	}
	grace = min(grace, m.opts.MaxGrace)
	if err := m.lock(); err != nil {
		return nil, err
	}
	s := &Session{ID: NewID("S"), Secret: newSecret(), Grace: grace}
	m.attachSeq++
	s.Attachment = m.attachSeq
	o := &memOwner{id: s.ID, session: &memSession{
		secretHash: sha256.Sum256([]byte(s.Secret)), grace: grace, attachment: s.Attachment, notify: notify,
	}}
	m.owners[s.ID] = o
	m.touch(o)
	journaled := m.jr != nil
	m.mu.Unlock()
	if journaled {
		// The client learns the session's id only once the store has it:
		// after a crash, a session its client knows is never unknown.
		fctx, cancel := context.WithTimeout(ctx, OpenSessionTimeout)
		err := m.Flush(fctx)
		cancel()
		if err != nil {
			_ = m.Disconnect(ctx, s.ID)
			return nil, forge.WrapError(forge.EUNAVAILABLE, err, "the session could not be kept in the store: "+forge.ErrorMessage(err))
		}
	}
	return s, nil
}

// OpenSessionTimeout bounds how long OpenSession waits for a journaled
// session to be kept in the store.
const OpenSessionTimeout = 10 * time.Second

// Detach implements Sessions.
func (m *Memory) Detach(ctx context.Context, owner string, attachment uint64) error {
	m.mu.Lock()
	o := m.owners[owner]
	if o == nil || o.session == nil {
		m.mu.Unlock()
		return m.Disconnect(ctx, owner)
	}
	defer m.mu.Unlock()
	s := o.session
	if s.attachment != attachment || s.detached || m.closed {
		return nil
	}
	s.detached = true
	s.notify = nil
	grace := m.effectiveGrace(o)
	s.until = time.Now().Add(grace)
	m.setNotify(o, m.keeper(o))
	s.timer = time.AfterFunc(grace, func() { m.expireSession(o, attachment) })
	return nil
}

// setNotify sends every later event of o's requests and leases to notify.
func (m *Memory) setNotify(o *memOwner, notify func(Event)) {
	for _, r := range o.reqs {
		r.notify = notify
	}
	for _, l := range o.leases {
		l.notify = notify
	}
}

func (m *Memory) expireSession(o *memOwner, attachment uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := o.session
	if m.closed || m.owners[o.id] != o || !s.detached || s.attachment != attachment {
		return
	}
	m.endOwner(o, ReasonExpired)
	m.schedule()
}

// endOwner drops o's queued requests and releases its leases for reason.
func (m *Memory) endOwner(o *memOwner, reason string) {
	for _, r := range o.reqs {
		m.dequeue(r)
	}
	for _, l := range slices.Clone(o.leases) {
		m.release(l, reason)
	}
	if o.session != nil && o.session.timer != nil {
		o.session.timer.Stop()
	}
	delete(m.owners, o.id)
	m.touch(o) // a deletion: o is no longer in m.owners
}

// Resume implements Sessions.
func (m *Memory) Resume(ctx context.Context, id, secret string, notify func(Event)) (*Session, error) {
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	// EventMoved goes to the old connection at once (it must not take the
	// session down with it when it closes); everything else the session's
	// client hears waits for the journal, if any.
	moved := notify
	notify = m.held(notify)
	o := m.owners[id]
	if o == nil || o.session == nil {
		return nil, forge.Errorf(forge.ENOTFOUND, "session %q is over: its grace ended before it was resumed (its leases were released and its requests left the queue), or this server never had it", id)
	}
	s := o.session
	h := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(h[:], s.secretHash[:]) != 1 {
		return nil, forge.Errorf(forge.EUNAUTHORIZED, "wrong secret for session %q", id)
	}
	if !s.detached && s.notify != nil {
		s.notify(Event{Type: EventMoved, Reason: "the session was resumed on another connection"})
	}
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	m.attachSeq++
	s.attachment = m.attachSeq
	s.detached, s.until, s.notify = false, time.Time{}, moved
	m.setNotify(o, notify)
	kept := s.kept
	s.kept = nil
	for _, ev := range kept {
		notify(ev)
	}
	st := &Resumed{Session: id, Grace: m.effectiveGrace(o)}
	for _, l := range o.leases {
		st.Leases = append(st.Leases, l.grant)
	}
	// Positions as they are now (the coalesced updates may lag).
	ahead := map[*memPool]int{}
	for r := m.head; r != nil; r = r.next {
		pos := 0
		for _, p := range r.pools {
			ahead[p]++
			pos = max(pos, ahead[p])
		}
		if r.owner == o {
			st.Queued = append(st.Queued, QueuedRequest{RequestID: r.id, Position: pos})
		}
	}
	notify(Event{Type: EventResumed, Resumed: st})
	return &Session{ID: id, Grace: st.Grace, Attachment: s.attachment}, nil
}

// effectiveGrace is o's grace cut to the smallest bound of the pools it
// holds leases in or waits for. Called with m.mu held.
func (m *Memory) effectiveGrace(o *memOwner) time.Duration {
	g := o.session.grace
	bound := func(p *memPool) {
		if p != nil && p.maxGrace > 0 {
			g = min(g, p.maxGrace)
		}
	}
	for _, l := range o.leases {
		for _, res := range l.res {
			bound(res.pool)
		}
	}
	for _, r := range o.reqs {
		for _, p := range r.pools {
			bound(p)
		}
	}
	return g
}
