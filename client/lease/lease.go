package lease

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/forgeci/forge"
)

// Lease is a grant in force on a Client's connection. Its methods are safe
// for concurrent use.
type Lease struct {
	c         *Client
	id        string
	holder    string
	grantedAt time.Time
	resources map[string][]Resource
	raw       []byte

	ctx    context.Context
	cancel context.CancelCauseFunc
	lost   chan struct{} // closed when lost
	ended  chan struct{} // closed when over, lost or released

	mu        sync.Mutex
	releasing bool   // Release was called
	broken    string // the reason given to ReleaseBroken
	sent      bool   // the release message was sent
	over      bool
	err       error // why it was lost
}

func newLease(c *Client, m *Message, raw []byte) *Lease {
	l := &Lease{
		c:         c,
		id:        m.Lease,
		holder:    m.Holder,
		grantedAt: m.Time(),
		resources: m.Resources,
		raw:       slices.Clone(raw),
		lost:      make(chan struct{}),
		ended:     make(chan struct{}),
	}
	if l.resources == nil {
		l.resources = map[string][]Resource{}
	}
	if l.grantedAt.IsZero() {
		l.grantedAt = time.Now()
	}
	l.ctx, l.cancel = context.WithCancelCause(context.Background())
	return l
}

// ID is the lease id the server gave.
func (l *Lease) ID() string { return l.id }

// Holder is the holder description the server recorded.
func (l *Lease) Holder() string { return l.holder }

// GrantedAt is when the server granted the lease.
func (l *Lease) GrantedAt() time.Time { return l.grantedAt }

// Resources maps each pool to the resources granted from it, with their
// attributes and labels. The caller must not modify the result.
func (l *Lease) Resources() map[string][]Resource { return l.resources }

// IDs returns the ids of the resources granted from pool, in order.
func (l *Lease) IDs(pool string) []string {
	var ids []string
	for _, r := range l.resources[pool] {
		ids = append(ids, r.ID)
	}
	return ids
}

// JSON is the granted message exactly as the server sent it.
func (l *Lease) JSON() []byte { return slices.Clone(l.raw) }

// Env returns the variables a program using the lease sees:
// FORGE_LEASE_<POOL> with the comma-separated resource ids of each pool
// (see EnvName) and FORGE_LEASE_JSON with the granted message.
func (l *Lease) Env() map[string]string { return GrantEnv(l.resources, l.raw) }

// Info describes the lease in forge's domain terms.
func (l *Lease) Info() *forge.Lease {
	fl := &forge.Lease{ID: l.id, Holder: l.holder, Granted: l.grantedAt, Resources: map[string][]string{}}
	for _, pool := range slices.Sorted(maps.Keys(l.resources)) {
		fl.Resources[pool] = l.IDs(pool)
	}
	return fl
}

// Lost is closed when the lease ends other than by Release or Close: the
// connection dropped or went silent, or the server revoked the lease. The
// resources may then already belong to someone else.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Context is cancelled when the lease ends, however it ends; its cause
// (context.Cause) is ErrReleased after Release, or the *forge.Error that
// says why the lease was lost. Work that uses the resources should run
// under it.
func (l *Lease) Context() context.Context { return l.ctx }

// Err says why the lease was lost; nil while it is held or after Release.
func (l *Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Release gives the resources back and waits for the server to confirm.
// It is idempotent, and returns nil for a lease already lost or released
// (a lost lease has nothing left to give back). When ctx ends before the
// server confirms it returns ECANCELED or ETIMEOUT; the release message
// is out and a second call waits for the confirmation again. Closing the
// Client releases too.
func (l *Lease) Release(ctx context.Context) error { return l.release(ctx, "") }

// ReleaseBroken is Release, and reports the lease's resources broken: the
// server takes every one of them out of service with reason (cut to
// MaxBrokenLength bytes; empty says only that they are broken). A pool
// with a health check brings them back when its check passes; otherwise
// an operator enables them. After a Release that is still waiting, it
// only waits for it.
func (l *Lease) ReleaseBroken(ctx context.Context, reason string) error {
	if len(reason) > MaxBrokenLength {
		reason = strings.ToValidUTF8(reason[:MaxBrokenLength], "")
	}
	if reason == "" {
		reason = "reported broken by its holder"
	}
	return l.release(ctx, reason)
}

func (l *Lease) release(ctx context.Context, broken string) error {
	l.mu.Lock()
	if l.over {
		l.mu.Unlock()
		return nil
	}
	l.releasing = true
	send := !l.sent
	l.sent = true
	if send {
		l.broken = broken
	}
	l.mu.Unlock()
	// An error here means the connection is gone, and the server released
	// everything it held: shutdown ends the lease as released.
	if send {
		l.c.send(l.releaseMessage())
	}
	select {
	case <-l.ended:
		return nil
	case <-ctx.Done():
		return contextError(ctx)
	}
}

// end finishes the lease once. A lease whose release was asked for ends as
// released even when the connection drops first, since the server releases
// everything on a closed connection.
func (l *Lease) end(cause error, lost bool) {
	l.mu.Lock()
	if l.over {
		l.mu.Unlock()
		return
	}
	l.over = true
	if lost && l.releasing {
		lost, cause = false, ErrReleased
	}
	if lost {
		l.err = cause
	}
	l.mu.Unlock()
	if lost {
		close(l.lost)
	}
	l.cancel(cause)
	close(l.ended)
}

// releaseMessage is the release of l, broken when ReleaseBroken asked.
func (l *Lease) releaseMessage() *Message {
	l.mu.Lock()
	defer l.mu.Unlock()
	return &Message{Type: TypeRelease, Lease: l.id, Broken: l.broken}
}

func (l *Lease) isReleasing() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.releasing
}
