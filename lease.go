package forge

import (
	"context"
	"strings"
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
	// Check, when set, is the pool's health check (docs/leases.md,
	// "Health checks").
	Check *PoolCheck `json:"check,omitempty"`
}

// PoolCheck is a pool's health check: a shell command run on the
// server's host, with the resource in its environment, after each
// release and every Interval on idle resources. A resource whose check
// fails is out of service until it passes, retried after Retry, doubling
// up to Interval. Timeout bounds one run.
type PoolCheck struct {
	Command  string        `json:"command"`
	Interval time.Duration `json:"interval"`
	Timeout  time.Duration `json:"timeout"`
	Retry    time.Duration `json:"retry"`
}

// Sources of a ResourceFault.
const (
	FaultCheck  = "check"  // the pool's health check failed
	FaultHolder = "holder" // a holder released it as broken
)

// ResourceFault says why a resource is out of service although no
// operator disabled it: its health check failed, or a holder reported it
// broken. It is kept with the pool, so it survives restarts.
type ResourceFault struct {
	Source string    `json:"source"` // FaultCheck or FaultHolder
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// Resource is one leasable thing: a lab device, a port, an account.
type Resource struct {
	ID string `json:"id"`
	// Attributes are free-form facts a holder needs (host, serial, ...).
	Attributes map[string]string `json:"attributes,omitempty"`
	// Labels select resources in a request.
	Labels map[string]string `json:"labels,omitempty"`
	// Disabled resources are not granted (maintenance). DisabledReason
	// and DisabledSince say why and since when, when an operator said so
	// through the REST API.
	Disabled       bool      `json:"disabled,omitempty"`
	DisabledReason string    `json:"disabled_reason,omitempty"`
	DisabledSince  time.Time `json:"disabled_since,omitzero"`
	// Fault, when set, keeps the resource out of service until its pool's
	// check passes or an operator enables it.
	Fault *ResourceFault `json:"fault,omitempty"`
}

// EnvName returns prefix followed by name upper-cased, every character
// other than an ASCII letter or digit replaced by "_": the shape of the
// variables forge sets for leases and health checks ("lab-dut.x" gives
// prefix+"LAB_DUT_X").
func EnvName(prefix, name string) string {
	var b strings.Builder
	b.Grow(len(prefix) + len(name))
	b.WriteString(prefix)
	for _, r := range name { // an invalid byte is a rune of its own, as for regexp
		switch {
		case r >= 'a' && r <= 'z':
			b.WriteRune(r - 'a' + 'A')
		case r >= 'A' && r <= 'Z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
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
