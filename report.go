package forge

import (
	"context"
	"sync"
	"time"
)

// Change is one change of the state of a build or of one of its jobs, as
// forge records it: a build created (queued, or blocked for approval),
// claimed (running) or ended; a job queued, waiting, started (per
// attempt) or ended. Every change is published once, by the part of forge
// that made it, to the Observer it was given: the GitHub reporter
// subscribes to them, and so can the web UI's live updates.
type Change struct {
	// Time is when the change happened.
	Time time.Time `json:"time"`
	// Build is the build after the change. Subscribers may keep it: it is
	// a copy.
	Build Build `json:"build"`
	// Job is the job that changed, with its steps as far as they are
	// known; nil when the build itself changed.
	Job *BuildJob `json:"job,omitempty"`
	// Jobs, for a build change, are the build's jobs when the publisher
	// has them at hand (a build's creation); nil means "look them up".
	Jobs []*BuildJob `json:"jobs,omitempty"`
	// Tests summarises the job's test reports; set when a job that
	// declared reports ends.
	Tests *TestSummary `json:"tests,omitempty"`
	// Coverage is the percentage a job's coverage report gives; set when
	// a job that declared one ends.
	Coverage *float64 `json:"coverage,omitempty"`
	// Tail is the last lines of the log of a job that did not pass, for
	// summaries.
	Tail []string `json:"tail,omitempty"`
}

// Observer is told of changes.
//
// Observe is called once per change, in the order the changes happened
// for each build (changes of different builds may interleave), from any
// goroutine. It must not block and must not fail the build: an observer
// that needs I/O queues the change and does the work elsewhere. It must
// not modify c.
type Observer interface {
	Observe(c *Change)
}

// ObserverFunc adapts a function to Observer.
type ObserverFunc func(c *Change)

// Observe calls f(c).
func (f ObserverFunc) Observe(c *Change) { f(c) }

// Observers fans a change out to several observers, in order. A nil or
// empty Observers observes nothing.
type Observers []Observer

// Observe tells every observer of c.
func (os Observers) Observe(c *Change) {
	for _, o := range os {
		if o != nil {
			o.Observe(c)
		}
	}
}

// Hub is an Observer that subscribers join and leave while it runs: the
// seam between the parts that make changes and the ones that follow them.
// The zero value is ready to use; it is safe for concurrent use.
type Hub struct {
	mu   sync.RWMutex
	subs map[int]Observer
	next int
}

// Subscribe adds o; the returned function removes it.
func (h *Hub) Subscribe(o Observer) (unsubscribe func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == nil {
		h.subs = map[int]Observer{}
	}
	id := h.next
	h.next++
	h.subs[id] = o
	return func() {
		h.mu.Lock()
		delete(h.subs, id)
		h.mu.Unlock()
	}
}

// Observe passes c to every subscriber.
func (h *Hub) Observe(c *Change) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, o := range h.subs {
		o.Observe(c)
	}
}

// TestSummary is what a job's test reports say.
type TestSummary struct {
	Total   int `json:"total"`
	Failed  int `json:"failed"` // failures and errors
	Skipped int `json:"skipped"`
	// Failures lists failing test cases, at most MaxTestFailures of them
	// (Failed counts them all).
	Failures []TestFailure `json:"failures,omitempty"`
	// Reports are the report files read, relative to the workspace.
	Reports []string `json:"reports,omitempty"`
	// Problems says which report files could not be read, and why.
	Problems []string `json:"problems,omitempty"`
}

// MaxTestFailures bounds TestSummary.Failures.
const MaxTestFailures = 1000

// TestFailure is one failing test case of a report.
type TestFailure struct {
	Suite string `json:"suite,omitempty"`
	Name  string `json:"name"`
	// File and Line are where the report places the test; File is
	// relative to the workspace, empty when the report names none.
	File string `json:"file,omitempty"`
	Line int    `json:"line,omitempty"`
	// Message is the failure's message, Details its text (a stack trace).
	Message string `json:"message,omitempty"`
	Details string `json:"details,omitempty"`
	// Report is the report file it came from.
	Report string `json:"report"`
}

// ReportFile is a test report a backend read from a job's workspace when
// the job's steps ended (EventReport).
type ReportFile struct {
	Type string `json:"type"` // "junit"
	// Path is relative to the workspace; Root is the workspace's absolute
	// path as the steps saw it, so that file names a report gives as
	// absolute paths can be made relative.
	Path string `json:"path"`
	Root string `json:"root,omitempty"`
	Data []byte `json:"-"`
	// Error says why the file could not be read (too large, unreadable);
	// Data is empty then.
	Error string `json:"error,omitempty"`
}

// OutboxItem is one message for an outside service (GitHub: a commit
// status, a check run, a comment, a deployment), kept in the database
// until it is delivered, so that a restart loses none.
//
// Items are identified by Key: a newer message about the same thing
// replaces an older one that has not been delivered yet, and one that is
// outdated is dropped (see OutboxStore.Enqueue).
type OutboxItem struct {
	Key string `json:"key"`
	// Kind says how to deliver the item ("status", "check_run", ...).
	Kind string `json:"kind"`
	// Rank orders the messages about one Key: a message never replaces
	// one of higher rank. Weak messages (a reconciliation) do not
	// replace one of equal rank either.
	Rank int64 `json:"rank"`
	Weak bool  `json:"weak,omitempty"`
	// Payload is what to send, in the deliverer's own format.
	Payload []byte `json:"payload"`
	// Ref is what the service answered that later deliveries of the same
	// Key need (a check run's ID; it survives replacement), and Progress
	// how far a multi-request delivery of this payload got (annotation
	// batches sent).
	Ref      string `json:"ref,omitempty"`
	Progress int    `json:"progress,omitempty"`
	// Version counts replacements; Delivered is the version delivered.
	Version   int64 `json:"version"`
	Delivered int64 `json:"delivered"`
	// Attempts counts failed deliveries of this version; NextAt is when
	// to try again; Error is the last failure.
	Attempts int       `json:"attempts"`
	NextAt   time.Time `json:"next_at,omitzero"`
	Error    string    `json:"error,omitempty"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

// Pending reports whether the item has a version not yet delivered.
func (o *OutboxItem) Pending() bool { return o.Version > o.Delivered }

// OutboxStore keeps outbox items (internal/sqldb). Every method is safe
// for concurrent use, honours ctx and returns *Error codes (EINTERNAL on
// a database failure).
//
// Items are claimed by an owner (a server) for a lease: only the owner of
// an unexpired claim delivers an item, so replicas sharing the database
// never deliver one at the same time. An owner's name stays the same when
// its server restarts, so that it can take back at once what it had
// claimed when it died.
type OutboxStore interface {
	// Enqueue stores items in one transaction: a new Key is added; an
	// existing one is replaced (Payload, Rank, Weak, Version+1, Attempts
	// 0, Progress 0, NextAt zero, Error ""; Ref stays) when the item's Rank is higher, or equal
	// while the item is not Weak and its Payload differs; otherwise the
	// item is dropped. Each stored item is claimed by owner until
	// leaseUntil and returned as stored (Version, Ref, Progress, ...);
	// dropped items are not returned.
	Enqueue(ctx context.Context, owner string, leaseUntil time.Time, items []*OutboxItem) ([]*OutboxItem, error)
	// Claim claims up to limit pending items due at now (NextAt zero or
	// passed) whose claim is free or expired (or held by owner itself,
	// with reclaim: a restarted server), oldest first, for owner until
	// leaseUntil.
	Claim(ctx context.Context, owner string, now, leaseUntil time.Time, limit int, reclaim bool) ([]*OutboxItem, error)
	// Settle records the outcome of deliveries in one transaction. Ref and
	// Progress are saved whatever happened. A result for the current
	// version of its item marks it delivered (Delivered = Version) or, when
	// it failed, sets Attempts+1, NextAt and Error; either way the claim
	// is freed. A result for a version replaced meanwhile changes nothing
	// else: the new version keeps its claim and is delivered next.
	Settle(ctx context.Context, results []OutboxResult) error
	// PurgeOutbox removes the delivered items last updated before before
	// and returns how many.
	PurgeOutbox(ctx context.Context, before time.Time) (int, error)
}

// OutboxResult is the outcome of one delivery of an outbox item.
type OutboxResult struct {
	Key      string
	Version  int64
	Ref      string
	Progress int
	// Failed, when set, is why the delivery failed; the item is tried
	// again at NextAt, or, with a zero NextAt, given up: marked delivered
	// with Failed as its Error.
	Failed string
	NextAt time.Time
}
