package forge

import (
	"context"
	"time"
)

// Pool is a named set of scarce test resources handed out by leases.
type Pool struct {
	Name string `json:"name"`
	// Order is "fifo" (default: strictly first come, first served) or
	// "fill" (a smaller request may pass a larger one while enough
	// resources are free, within a bound so nobody starves).
	Order     string      `json:"order"`
	Resources []*Resource `json:"resources"`
	// MaxGrace bounds the grace of a resumable session that holds or
	// waits for the pool's resources (0: only the server's
	// lease.max_grace).
	MaxGrace time.Duration `json:"max_grace,omitempty"`
}

// Resource is one leasable thing: a lab device, a port, an account.
type Resource struct {
	ID string `json:"id"`
	// Attributes are free-form facts a holder needs (host, serial, ...).
	Attributes map[string]string `json:"attributes,omitempty"`
	// Labels select resources in a request.
	Labels map[string]string `json:"labels,omitempty"`
	// Disabled resources are not granted (maintenance).
	Disabled bool `json:"disabled,omitempty"`
}

// Lease is a grant of resources to one holder; it lives as long as the
// holder's connection.
type Lease struct {
	ID        string              `json:"id"`
	Holder    string              `json:"holder"`
	Resources map[string][]string `json:"resources"` // pool name → resource ids
	Granted   time.Time           `json:"granted"`
}

// Leaser acquires resources for a pipeline job (a job's resources: key).
//
// Acquire blocks until every request in reqs is granted at once, ctx ends
// (ECANCELED or ETIMEOUT), or the requests cannot be served (EINVALID,
// ENOTFOUND for an unknown pool, EUNAVAILABLE when the lease server is
// unreachable). While it waits, queued is called (if not nil) with the
// position in the queue each time it changes. Safe for concurrent use.
type Leaser interface {
	Acquire(ctx context.Context, reqs []ResourceRequest, holder string, queued func(position int)) (Grant, error)
}

// Grant is a lease in force.
type Grant interface {
	// Lease describes the grant.
	Lease() *Lease
	// Env returns the variables a job sees: FORGE_LEASE_<POOL> with the
	// comma-separated resource ids, and FORGE_LEASE_JSON with the grant.
	Env() map[string]string
	// Lost is closed when the lease ends other than by Release: the
	// connection dropped or an operator revoked it. The resources may
	// already belong to someone else.
	Lost() <-chan struct{}
	// Release gives the resources back; it is idempotent.
	Release(ctx context.Context) error
}
