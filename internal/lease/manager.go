// Package lease is the state of forge's test resource leases: pools, the
// wait queue and the leases in force, which hand scarce test resources
// (lab devices, ports, accounts) to exactly one holder at a time. Manager
// is its contract and Memory the in-process implementation; Config is the
// configuration file's part. It knows nothing of how it is served:
// internal/lease/leasehttp speaks the WebSocket protocol of docs/leases.md
// over any Manager and serves the operators' REST API (layout_test.go
// keeps it so), so a store-backed Manager can take Memory's place.
package lease

import (
	"context"
	"time"

	"github.com/forgeci/forge"
)

// Manager is the lease state: pools, the wait queue and the leases in
// force. The transport (internal/lease/leasehttp) talks only to it; an
// owner is whatever holds leases and waits in the queue (a connection, a
// pipeline job). Memory is the in-process implementation; a
// database-backed one shares the state between server replicas.
//
// Contract, for every implementation:
//   - Every method is safe for concurrent use and atomic: a caller never
//     observes half of a change.
//   - A grant is all or nothing: every ResourceRequest of a Request is
//     satisfied at once, by distinct resources, or nothing is granted.
//   - No resource is ever held by two leases at once.
//   - Errors are *forge.Error: EINVALID for bad input, ENOTFOUND for an
//     unknown pool, resource, lease or queued request, ECONFLICT for a
//     request id already queued by the same owner, EUNAVAILABLE once the
//     manager is closed.
//   - Release, Cancel, Disconnect and Revoke of something already gone
//     return ENOTFOUND (Disconnect: nil) and change nothing, so retrying
//     them is harmless.
//   - Events of one owner are delivered in the order they happen, by
//     calling Request.Notify; see Event.
type Manager interface {
	Queue
	Sessions
	Admin
	Health
}

// Queue is what a connection does: ask, give up, give back.
type Queue interface {
	// Acquire queues req and grants it as soon as its turn comes: at once
	// when it can be, before Acquire returns. The outcome arrives through
	// req.Notify (EventQueued, EventGranted, EventTimeout, EventFailed).
	// An error means req was not queued: EINVALID (malformed, or asks for
	// more than the pool could ever give), ENOTFOUND (unknown pool),
	// ECONFLICT (req.ID is already queued for req.Owner).
	Acquire(ctx context.Context, req *Request) error
	// Cancel removes the queued request id of owner from the queue and
	// sends it EventCanceled; ENOTFOUND when it is not queued (unknown,
	// granted, timed out).
	Cancel(ctx context.Context, owner, requestID string) error
	// Release ends the lease leaseID held by owner, returns its resources
	// and sends EventReleased; ENOTFOUND when owner holds no such lease.
	Release(ctx context.Context, owner, leaseID string) error
	// Disconnect releases every lease of owner and drops its queued
	// requests, at once (the owner's connection is gone). Idempotent.
	Disconnect(ctx context.Context, owner string) error
}

// Admin is what an operator does.
type Admin interface {
	// Pools returns every pool with the state of each resource and the
	// wait queue, sorted by name.
	Pools(ctx context.Context) ([]*PoolState, error)
	// Pool returns one pool; ENOTFOUND if it does not exist.
	Pool(ctx context.Context, name string) (*PoolState, error)
	// PutPool creates or replaces the pool p.Name. Leases in force are
	// never revoked: a leased resource left out of p leaves the pool when
	// it is released. Queued requests p can never satisfy fail
	// (EventFailed, EINVALID). created reports whether the pool is new.
	PutPool(ctx context.Context, p *forge.Pool) (created bool, err error)
	// DeletePool removes a pool. Its free resources go at once; leased
	// ones when released. Its queued requests fail (ENOTFOUND).
	DeletePool(ctx context.Context, name string) error
	// SetDisabled disables or enables a resource; reason (optional) says
	// why it is disabled. A leased resource stays leased and is not
	// granted again once released until enabled. Enabling ends a fault
	// too (Health).
	SetDisabled(ctx context.Context, pool, resource string, disabled bool, reason string) error
	// Revoke force-releases a lease; its holder gets EventRevoked with
	// reason.
	Revoke(ctx context.Context, leaseID, reason string) error
	// Leases returns the leases in force, oldest first.
	Leases(ctx context.Context) ([]*LeaseState, error)
	// History returns up to limit recent grants and releases, newest
	// first.
	History(ctx context.Context, limit int) ([]*HistoryEntry, error)
	// Stats returns counters for metrics, one entry per pool.
	Stats(ctx context.Context) ([]*PoolStats, error)
}

// Request is one acquire: several resource requests granted together.
type Request struct {
	// Owner identifies the connection; Disconnect(Owner) ends everything
	// it holds or waits for.
	Owner string
	// ID is the client's request id, unique among Owner's queued requests.
	ID string
	// Holder describes who holds the lease (shown to operators).
	Holder string
	// Wants are granted all at once or not at all.
	Wants []forge.ResourceRequest
	// MaxWait bounds the time in the queue; zero waits forever.
	MaxWait time.Duration
	// Notify receives the request's events and, once granted, its lease's
	// events. It is called with the manager's lock held: it must return at
	// once and must not call the Manager.
	Notify func(Event)
}

// EventType says what happened to a request or lease.
type EventType int

// Event types.
const (
	// EventQueued: the request waits at Position (1 = next in line). Sent
	// when it is queued and when the position changes; changes are
	// coalesced (at most one update per request every PositionInterval).
	EventQueued EventType = iota + 1
	// EventGranted: the request was granted Lease.
	EventGranted
	// EventTimeout: MaxWait passed; the request left the queue.
	EventTimeout
	// EventFailed: the request left the queue because it can no longer be
	// served (its pool was deleted or shrunk); Err says why.
	EventFailed
	// EventRevoked: an operator force-released Lease; Reason says why.
	EventRevoked
	// EventReleased: Release of Lease succeeded. Sent before any event the
	// release causes, so the owner hears of it first.
	EventReleased
	// EventCanceled: Cancel of the request succeeded.
	EventCanceled
	// EventResumed: the session was resumed; Resumed is its state.
	EventResumed
	// EventMoved: the session was resumed on another connection; this
	// connection gets nothing more.
	EventMoved
)

// Event is one notification to a request's owner.
type Event struct {
	Type      EventType
	RequestID string
	Position  int
	// Lease is set for EventGranted and EventRevoked. Treat it as
	// read-only: it is shared.
	Lease  *Grant
	Err    error
	Reason string
	// Resumed is set for EventResumed.
	Resumed *Resumed
}

// Grant describes a lease: who, since when, and which resources.
type Grant struct {
	ID        string
	Owner     string
	RequestID string
	Holder    string
	Granted   time.Time
	// Pools are the granted resources of each pool, in the order the
	// pools were first asked for, each pool's resources in pool order.
	// (A slice, not a map: a lease per idle connection adds up.)
	Pools []GrantedPool
}

// GrantedPool is the part of a grant from one pool.
type GrantedPool struct {
	Pool      string
	Resources []forge.Resource
}

// ResourceIDs returns pool name → resource ids.
func (g *Grant) ResourceIDs() map[string][]string {
	out := make(map[string][]string, len(g.Pools))
	for _, gp := range g.Pools {
		ids := make([]string, len(gp.Resources))
		for i, r := range gp.Resources {
			ids[i] = r.ID
		}
		out[gp.Pool] = ids
	}
	return out
}

// Resource states in PoolState.
const (
	StateFree     = "free"
	StateLeased   = "leased"
	StateDisabled = "disabled"
	// StateChecking: its pool's check runs (or is about to) before it is
	// handed out again.
	StateChecking = "checking"
)

// PoolState is an operator's view of a pool.
type PoolState struct {
	Name  string `json:"name"`
	Order string `json:"order"`
	// MaxGrace is the pool's bound on the grace of sessions holding or
	// waiting for its resources ("30s"), when it has one.
	MaxGrace string `json:"max_grace,omitempty"`
	// Deleted pools linger while some of their resources are leased.
	Deleted  bool `json:"deleted,omitempty"`
	Size     int  `json:"size"`
	Free     int  `json:"free"`
	InUse    int  `json:"in_use"`
	Disabled int  `json:"disabled"`
	Checking int  `json:"checking,omitempty"`
	// Check is the pool's health check, in the form it is declared.
	Check     *CheckConfig     `json:"check,omitempty"`
	Resources []*ResourceState `json:"resources"`
	Queue     []*QueueEntry    `json:"queue"`
}

// ResourceState is one resource as an operator sees it.
type ResourceState struct {
	ID         string            `json:"id"`
	Attributes map[string]string `json:"attributes,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	// State is "free", "leased", "disabled" or "checking" (leased wins: a
	// disabled resource still leased shows "leased" with Disabled true).
	State    string `json:"state"`
	Disabled bool   `json:"disabled,omitempty"`
	// DisabledBy says who took it out of service: "operator" (Disabled
	// is true), else the source of Fault ("check" or "holder");
	// DisabledReason and DisabledSince say why and since when (the
	// operator's, else the fault's).
	DisabledBy     string     `json:"disabled_by,omitempty"`
	DisabledReason string     `json:"disabled_reason,omitempty"`
	DisabledSince  *time.Time `json:"disabled_since,omitempty"`
	// Fault is why a check or a holder took it out of service.
	Fault *forge.ResourceFault `json:"fault,omitempty"`
	// Check is its last health check, and when the next is due.
	Check *CheckStatus `json:"check,omitempty"`
	// Removing: the pool no longer lists it; it leaves when released.
	Removing bool `json:"removing,omitempty"`
	// Lease, Holder and Since are set while it is leased.
	Lease  string     `json:"lease,omitempty"`
	Holder string     `json:"holder,omitempty"`
	Since  *time.Time `json:"since,omitempty"`
}

// QueueEntry is one waiting request in a pool's queue.
type QueueEntry struct {
	Request    string                  `json:"request"`
	Connection string                  `json:"connection"`
	Holder     string                  `json:"holder"`
	Position   int                     `json:"position"`
	Since      time.Time               `json:"since"`
	Wants      []forge.ResourceRequest `json:"wants"`
}

// LeaseState is a lease in force.
type LeaseState struct {
	ID         string              `json:"id"`
	Holder     string              `json:"holder"`
	Connection string              `json:"connection"`
	Request    string              `json:"request"`
	Granted    time.Time           `json:"granted"`
	Resources  map[string][]string `json:"resources"`
	// DetachedUntil is set while the holder's session is disconnected:
	// the lease is kept for it until then.
	DetachedUntil *time.Time `json:"detached_until,omitempty"`
}

// Release reasons, in history and metrics.
const (
	ReasonReleased     = "released"     // the holder released it
	ReasonDisconnected = "disconnected" // the holder's connection ended
	ReasonRevoked      = "revoked"      // an operator force-released it
	ReasonBroken       = "broken"       // the holder released it as broken
	// ReasonExpired (session.go): the session's grace ended.
)

// HistoryEntry is one grant or release.
type HistoryEntry struct {
	Time       time.Time           `json:"time"`
	Event      string              `json:"event"` // "granted" or "released"
	Lease      string              `json:"lease"`
	Holder     string              `json:"holder"`
	Connection string              `json:"connection"`
	Resources  map[string][]string `json:"resources"`
	// Reason is set on releases: released, broken, disconnected,
	// revoked or expired.
	Reason string `json:"reason,omitempty"`
	// Broken is the holder's reason on a release as broken.
	Broken string `json:"broken,omitempty"`
	// Waited is how long the request queued (grants) or the lease was held
	// (releases), in milliseconds.
	WaitedMS float64 `json:"waited_ms,omitempty"`
	HeldMS   float64 `json:"held_ms,omitempty"`
}

// WaitBuckets are the upper bounds, in seconds, of the wait-time histogram.
var WaitBuckets = []float64{0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 3600}

// PoolStats are a pool's gauges and counters, for metrics.
type PoolStats struct {
	Pool     string
	Size     int // resources, enabled or not, excluding ones being removed
	InUse    int
	Disabled int // out of service, whoever took it out
	// DisabledBy counts disabled resources by who took them out:
	// DisabledOperator, forge.FaultCheck, forge.FaultHolder.
	DisabledBy map[string]int
	Checking   int
	// Checks counts health checks run, by result (CheckPassed,
	// CheckFailed).
	Checks  map[string]uint64
	Waiters int
	Grants  uint64
	// Releases counts releases by reason.
	Releases map[string]uint64
	// WaitCounts[i] counts grants that waited at most WaitBuckets[i]
	// (non-cumulative; the last entry counts the rest).
	WaitCounts []uint64
	WaitSum    float64
}
