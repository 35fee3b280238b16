// Package leasecheck checks, from the records its clients keep, that a
// lease server never let two holders hold a resource at once and served
// waiters first come, first served. The randomized tests of the lease
// server (internal/lease/leasehttp, in-process; cmd/forge, real server
// processes killed and restarted) share it.
package leasecheck

import (
	"sort"
	"sync"
	"testing"
	"time"
)

// Checker records grants and releases as the clients see them. A client
// calls Sent before sending an acquire, Queued on its first queued
// message, Granted on its grant, and Ended before it lets go of the
// resources (before sending release or closing the connection). Safe for
// concurrent use.
type Checker struct {
	mu   sync.Mutex
	reqs map[string]*seenReq
	// holds per resource ("pool/id"): when a client saw it granted and
	// when it let go of it.
	holds map[string][]*Hold
	// Unordered lists pools where requests may pass one another ("order:
	// fill"): only the no-double-holder check applies to them.
	unordered map[string]bool
}

type seenReq struct {
	id        string
	pools     []string
	sent      time.Time
	queued    time.Time // first queued message received; zero if none
	granted   bool
	grantedAt time.Time // server time of the grant
	gone      bool      // timed out, canceled or its connection dropped while queued
}

// Hold is one client's hold of one resource.
type Hold struct {
	req        string
	start, end time.Time
}

// New returns an empty Checker; unordered names the pools that do not
// serve first come, first served.
func New(unordered ...string) *Checker {
	c := &Checker{reqs: map[string]*seenReq{}, holds: map[string][]*Hold{}, unordered: map[string]bool{}}
	for _, p := range unordered {
		c.unordered[p] = true
	}
	return c
}

// Sent records that request id, for pools, is about to be sent.
func (c *Checker) Sent(id string, pools []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reqs[id] = &seenReq{id: id, pools: pools, sent: time.Now()}
}

// Queued records id's first queued message.
func (c *Checker) Queued(id string) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.reqs[id]; r.queued.IsZero() {
		r.queued = now
	}
}

// Granted records that id was granted resources (pool → ids) at the
// server's time grantedAt, and returns the holds to end.
func (c *Checker) Granted(id string, grantedAt time.Time, resources map[string][]string) []*Hold {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.reqs[id]
	r.granted = true
	r.grantedAt = grantedAt
	var hs []*Hold
	for pool, ids := range resources {
		for _, res := range ids {
			h := &Hold{req: id, start: now}
			c.holds[pool+"/"+res] = append(c.holds[pool+"/"+res], h)
			hs = append(hs, h)
		}
	}
	return hs
}

// Ended records that the holds hs end now.
func (c *Checker) Ended(hs []*Hold) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range hs {
		h.end = now
	}
}

// Gone records that id left the queue without a grant.
func (c *Checker) Gone(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reqs[id].gone = true
}

// Check fails t if a resource was held twice at once or a hold never
// ended; with fifo, also if a request queued before another was sent,
// sharing an ordered pool with it, was granted after it. It returns the
// number of holds and ordered pairs checked (and fails t if either is 0,
// when fifo).
func (c *Checker) Check(t testing.TB, fifo bool) (holds, pairs int) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for res, hs := range c.holds {
		sort.Slice(hs, func(i, j int) bool { return hs[i].start.Before(hs[j].start) })
		for i, h := range hs {
			holds++
			if h.end.IsZero() {
				t.Errorf("%s: the hold of %s never ended", res, h.req)
				continue
			}
			if i > 0 && h.start.Before(hs[i-1].end) {
				t.Errorf("%s held twice: %s from %s while %s held it until %s", res, h.req,
					h.start.Format(time.StampMicro), hs[i-1].req, hs[i-1].end.Format(time.StampMicro))
			}
		}
	}
	if !fifo {
		if holds == 0 {
			t.Errorf("the run granted nothing: nothing was tested")
		}
		t.Logf("checked %d resource holds", holds)
		return holds, 0
	}
	byPool := map[string][]*seenReq{}
	for _, r := range c.reqs {
		if r.granted {
			for _, p := range r.pools {
				if !c.unordered[p] {
					byPool[p] = append(byPool[p], r)
				}
			}
		}
	}
	for pool, rs := range byPool {
		for _, a := range rs {
			if a.queued.IsZero() {
				continue
			}
			for _, b := range rs {
				if a == b || !a.queued.Before(b.sent) {
					continue
				}
				pairs++
				if a.grantedAt.After(b.grantedAt) {
					t.Errorf("pool %s: %s (queued %s) granted at %s, after %s (sent %s) granted at %s",
						pool, a.id, a.queued.Format(time.StampMicro), a.grantedAt.Format(time.StampMicro),
						b.id, b.sent.Format(time.StampMicro), b.grantedAt.Format(time.StampMicro))
				}
			}
		}
	}
	t.Logf("checked %d resource holds and %d ordered pairs of requests", holds, pairs)
	if holds == 0 || pairs == 0 {
		t.Errorf("the run granted %d and ordered %d pairs: nothing was tested", holds, pairs)
	}
	return holds, pairs
}
