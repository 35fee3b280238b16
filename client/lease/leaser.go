package lease

import (
	"context"

	"github.com/forgeci/forge"
)

// Leaser acquires resources for pipeline jobs from one lease server. Each
// Acquire opens its own connection, so each grant lives exactly as long as
// its job holds it, and a job's end (Release) closes its connection.
type Leaser struct {
	server string
	opts   *Options
}

var _ forge.Leaser = (*Leaser)(nil)

// NewLeaser returns a Leaser for the lease server at serverURL (any form
// WebSocketURL accepts). It checks the address but does not connect.
func NewLeaser(serverURL string, opts *Options) (*Leaser, error) {
	if _, err := WebSocketURL(serverURL); err != nil {
		return nil, err
	}
	return &Leaser{server: serverURL, opts: opts}, nil
}

// Acquire connects, asks for reqs as holder and waits for the grant,
// calling queued with each new queue position. Errors carry forge codes:
// EUNAVAILABLE when the server is unreachable, ENOTFOUND for an unknown
// pool, EINVALID for a request no pool could satisfy, ECANCELED/ETIMEOUT
// when ctx ends first. Safe for concurrent use.
func (lr *Leaser) Acquire(ctx context.Context, reqs []forge.ResourceRequest, holder string, queued func(position int)) (forge.Grant, error) {
	wire := make([]Request, len(reqs))
	for i, r := range reqs {
		wire[i] = Request{Pool: r.Pool, Count: r.Count, Labels: r.Labels}
	}
	if err := checkRequests(wire); err != nil {
		return nil, err
	}
	c, err := Dial(ctx, lr.server, lr.opts)
	if err != nil {
		return nil, err
	}
	l, err := c.Acquire(ctx, holder, wire, &AcquireOptions{Queued: queued})
	if err != nil {
		c.Close()
		return nil, err
	}
	return &grant{c: c, l: l}, nil
}

// grant is a lease that owns its connection.
type grant struct {
	c *Client
	l *Lease
}

func (g *grant) Lease() *forge.Lease    { return g.l.Info() }
func (g *grant) Env() map[string]string { return g.l.Env() }
func (g *grant) Lost() <-chan struct{}  { return g.l.Lost() }
func (g *grant) Release(ctx context.Context) error {
	err := g.l.Release(ctx)
	g.c.Close()
	return err
}
