package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/forgeci/forge"
)

// MemoryOptions tune a Memory manager; zero values take the defaults.
type MemoryOptions struct {
	// FillMaxPasses and FillMaxWait bound how long a waiter in an
	// "order: fill" pool may be passed over (defaults 10 and 30s).
	FillMaxPasses int
	FillMaxWait   time.Duration
	// PositionInterval is how often queue position changes are sent
	// (default 250ms): changes in between are coalesced, so a busy queue
	// does not flood its waiters.
	PositionInterval time.Duration
	// HistorySize bounds the grant/release history (default 1000).
	HistorySize int
	// MaxQueuedPerOwner bounds one owner's queued requests (default 1024).
	MaxQueuedPerOwner int
	// MaxWants bounds the resource requests of one acquire (default 32).
	MaxWants int
	// Grace is a session's grace when its client asks for none (default
	// 15s); MaxGrace bounds what a client may ask for (default 5m).
	Grace    time.Duration
	MaxGrace time.Duration
}

// Memory is the in-process Manager: all state in memory behind one mutex.
// A server restart releases every lease, as the protocol says.
type Memory struct {
	opts MemoryOptions

	mu         sync.Mutex
	closed     bool
	pools      map[string]*memPool
	owners     map[string]*memOwner
	leases     map[string]*memLease
	head, tail *memReq // the wait queue, in arrival order
	seq        uint64
	pass       uint64
	pick       uint64
	posTimer   *time.Timer
	history    []*HistoryEntry
	histNext   int
	attachSeq  uint64
	jr         *journal // nil: the state is kept in memory only

	// Health checks (health.go).
	checksOn  bool
	checkWake chan struct{}
	checkGen  uint64
}

var _ Manager = (*Memory)(nil)

type memPool struct {
	name    string
	order   string
	res     []*memRes
	byID    map[string]*memRes
	deleted bool
	// maxGrace bounds the grace of sessions holding or waiting for its
	// resources (0: only the server's bound).
	maxGrace time.Duration
	waiters  int
	free     int // not leased, not disabled (removed ones are always leased)

	// Per scheduling pass.
	avail       int
	fillBlocked []*memReq

	grants     uint64
	releases   map[string]uint64
	waitCounts []uint64
	waitSum    float64

	check  *forge.PoolCheck
	checks map[string]uint64 // by result
}

type memRes struct {
	pool      *memPool
	r         forge.Resource
	lease     *memLease
	since     time.Time
	removed   bool
	claimPass uint64
	pickStamp uint64
	chk       *resCheck // health check state (health.go)
}

type memReq struct {
	seq         uint64
	owner       *memOwner
	id          string
	holder      string
	wants       []forge.ResourceRequest
	allocOrder  []int
	pools       []*memPool
	since       time.Time
	deadline    time.Time // when MaxWait ends; zero: never
	timer       *time.Timer
	notify      func(Event)
	queued      bool
	passes      int
	firstPassed time.Time
	passStamp   uint64
	pos         int
	prev, next  *memReq
}

type memOwner struct {
	id      string
	session *memSession // nil: not resumable
	reqs    map[string]*memReq
	leases  []*memLease // few per owner
}

type memLease struct {
	grant  *Grant
	owner  *memOwner
	res    []*memRes
	notify func(Event)
	broken string // the holder's reason, when it released the lease as broken
}

// NewMemory returns a Memory manager holding pools.
func NewMemory(pools []*forge.Pool, opts MemoryOptions) (*Memory, error) {
	if opts.FillMaxPasses <= 0 {
		opts.FillMaxPasses = DefaultFillMaxPasses
	}
	if opts.FillMaxWait <= 0 {
		opts.FillMaxWait = DefaultFillMaxWait
	}
	if opts.PositionInterval <= 0 {
		opts.PositionInterval = 250 * time.Millisecond
	}
	if opts.HistorySize <= 0 {
		opts.HistorySize = 1000
	}
	if opts.MaxQueuedPerOwner <= 0 {
		opts.MaxQueuedPerOwner = 1024
	}
	if opts.MaxWants <= 0 {
		opts.MaxWants = 32
	}
	if opts.MaxGrace <= 0 {
		opts.MaxGrace = DefaultMaxGrace
	}
	if opts.Grace <= 0 {
		opts.Grace = DefaultGrace
	}
	opts.Grace = min(opts.Grace, opts.MaxGrace)
	m := &Memory{
		opts:    opts,
		pools:   map[string]*memPool{},
		owners:  map[string]*memOwner{},
		leases:  map[string]*memLease{},
		history: make([]*HistoryEntry, 0, opts.HistorySize),

		checkWake: make(chan struct{}, 1),
	}
	for _, p := range pools {
		if err := checkPool(p); err != nil {
			return nil, err
		}
		if m.pools[p.Name] != nil {
			return nil, forge.Errorf(forge.EINVALID, "duplicate pool %q", p.Name)
		}
		m.pools[p.Name] = newMemPool(p)
	}
	return m, nil
}

func newMemPool(p *forge.Pool) *memPool {
	mp := &memPool{
		name:       p.Name,
		order:      p.Order,
		maxGrace:   p.MaxGrace,
		byID:       make(map[string]*memRes, len(p.Resources)),
		releases:   map[string]uint64{},
		waitCounts: make([]uint64, len(WaitBuckets)+1),
		check:      copyCheck(p.Check),
		checks:     map[string]uint64{},
	}
	for _, r := range p.Resources {
		mr := &memRes{pool: mp, r: copyResource(r)}
		mp.res = append(mp.res, mr)
		mp.byID[r.ID] = mr
		if !mr.out() {
			mp.free++
		}
	}
	return mp
}

func copyResource(r *forge.Resource) forge.Resource {
	c := forge.Resource{ID: r.ID, Disabled: r.Disabled, DisabledReason: r.DisabledReason, DisabledSince: r.DisabledSince}
	if r.Fault != nil {
		f := *r.Fault
		c.Fault = &f
	}
	// Copies, so that a caller changing its maps cannot change ours; ours
	// are never mutated afterwards and may be shared with grants.
	if len(r.Attributes) > 0 {
		c.Attributes = make(map[string]string, len(r.Attributes))
		for k, v := range r.Attributes {
			c.Attributes[k] = v
		}
	}
	if len(r.Labels) > 0 {
		c.Labels = make(map[string]string, len(r.Labels))
		for k, v := range r.Labels {
			c.Labels[k] = v
		}
	}
	return c
}

// Close stops the manager's timers; later calls fail with EUNAVAILABLE.
// Leases and queued requests are forgotten without events: the server
// closes their connections.
func (m *Memory) Close() {
	m.mu.Lock()
	defer func() {
		j := m.jr
		m.mu.Unlock()
		if j != nil {
			j.close()
		}
	}()
	m.closed = true
	for r := m.head; r != nil; r = r.next {
		if r.timer != nil {
			r.timer.Stop()
		}
	}
	if m.posTimer != nil {
		m.posTimer.Stop()
	}
	for _, o := range m.owners {
		if o.session != nil && o.session.timer != nil {
			o.session.timer.Stop()
		}
	}
}

func (m *Memory) lock() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return forge.Errorf(forge.EUNAVAILABLE, "the lease manager is shutting down")
	}
	return nil
}

func matches(r *forge.Resource, labels map[string]string) bool {
	for k, v := range labels {
		if got, ok := r.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func labelString(l map[string]string) string {
	if len(l) == 0 {
		return ""
	}
	parts := make([]string, 0, len(l))
	for k, v := range l {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return " matching " + strings.Join(parts, ",")
}

// Acquire implements Queue.
func (m *Memory) Acquire(ctx context.Context, req *Request) error {
	if err := ctx.Err(); err != nil {
		return forge.WrapError(forge.ECANCELED, err, "acquire canceled")
	}
	if req.Notify == nil {
		return forge.Errorf(forge.EINVALID, "request %q has no Notify", req.ID)
	}
	if len(req.Wants) == 0 {
		return forge.Errorf(forge.EINVALID, "request %q asks for nothing: give at least one {pool, count}", req.ID)
	}
	if len(req.Wants) > m.opts.MaxWants {
		return forge.Errorf(forge.EINVALID, "request %q has %d resource requests, more than the limit of %d", req.ID, len(req.Wants), m.opts.MaxWants)
	}
	if req.MaxWait < 0 {
		return forge.Errorf(forge.EINVALID, "request %q: negative maximum wait", req.ID)
	}
	if err := m.lock(); err != nil {
		return err
	}
	defer m.mu.Unlock()

	r := &memReq{
		id:     req.ID,
		holder: req.Holder,
		wants:  append([]forge.ResourceRequest(nil), req.Wants...),
		notify: req.Notify,
		since:  time.Now(),
	}
	if err := m.prepare(r); err != nil {
		return err
	}
	if err := m.checkCapacity(r); err != nil {
		return err
	}
	o := m.owners[req.Owner]
	if o == nil {
		o = &memOwner{id: req.Owner}
		m.owners[req.Owner] = o
	}
	if o.reqs[req.ID] != nil {
		return forge.Errorf(forge.ECONFLICT, "request id %q is already queued on this connection", req.ID)
	}
	if len(o.reqs) >= m.opts.MaxQueuedPerOwner {
		return forge.Errorf(forge.EINVALID, "too many queued requests on this connection (limit %d)", m.opts.MaxQueuedPerOwner)
	}
	r.owner = o
	if o.session != nil {
		r.notify = m.held(r.notify)
	}
	m.seq++
	r.seq = m.seq
	m.enqueue(r)
	m.schedule()
	if r.queued {
		pos := 0
		for _, p := range r.pools {
			pos = max(pos, p.waiters)
		}
		r.pos = pos
		r.notify(Event{Type: EventQueued, RequestID: r.id, Position: pos})
		if req.MaxWait > 0 {
			r.deadline = r.since.Add(req.MaxWait)
			r.timer = time.AfterFunc(req.MaxWait, func() { m.expire(r) })
		}
	}
	return nil
}

// prepare checks r's wants against the pools and works out the order in
// which they pick resources.
func (m *Memory) prepare(r *memReq) error {
	for i, w := range r.wants {
		p := m.pools[w.Pool]
		if p == nil || p.deleted {
			return forge.Errorf(forge.ENOTFOUND, "unknown pool %q", w.Pool)
		}
		if w.Count <= 0 {
			return forge.Errorf(forge.EINVALID, "pool %q: count %d must be at least 1", w.Pool, w.Count)
		}
		if err := checkLabels(w.Labels); err != nil {
			return forge.Errorf(forge.EINVALID, "pool %q: %s", w.Pool, forge.ErrorMessage(err))
		}
		r.allocOrder = append(r.allocOrder, i)
		seen := false
		for _, q := range r.pools {
			seen = seen || q == p
		}
		if !seen {
			r.pools = append(r.pools, p)
		}
	}
	// The most selective requests pick first, so that a request for "any"
	// does not take the one resource a labelled request needs.
	sort.SliceStable(r.allocOrder, func(a, b int) bool {
		return len(r.wants[r.allocOrder[a]].Labels) > len(r.wants[r.allocOrder[b]].Labels)
	})
	return nil
}

// checkCapacity fails r when its pools could never satisfy it, even with
// every enabled resource free.
func (m *Memory) checkCapacity(r *memReq) error {
	m.pick++
	for _, i := range r.allocOrder {
		w := r.wants[i]
		p := m.pools[w.Pool]
		n := 0
		for _, res := range p.res {
			if n == w.Count {
				break
			}
			if res.removed || res.r.Disabled || res.pickStamp == m.pick || !matches(&res.r, w.Labels) {
				continue
			}
			res.pickStamp = m.pick
			n++
		}
		if n < w.Count {
			return forge.Errorf(forge.EINVALID, "pool %q can never grant %d resources%s: it has %d enabled (besides those this request already takes)", w.Pool, w.Count, labelString(w.Labels), n)
		}
	}
	return nil
}

func (m *Memory) enqueue(r *memReq) {
	r.queued = true
	r.prev = m.tail
	if m.tail != nil {
		m.tail.next = r
	} else {
		m.head = r
	}
	m.tail = r
	if r.owner.reqs == nil {
		r.owner.reqs = map[string]*memReq{}
	}
	r.owner.reqs[r.id] = r
	for _, p := range r.pools {
		p.waiters++
	}
	m.touch(r.owner)
}

func (m *Memory) dequeue(r *memReq) {
	if !r.queued {
		return
	}
	r.queued = false
	if r.prev != nil {
		r.prev.next = r.next
	} else {
		m.head = r.next
	}
	if r.next != nil {
		r.next.prev = r.prev
	} else {
		m.tail = r.prev
	}
	r.prev, r.next = nil, nil
	delete(r.owner.reqs, r.id)
	if len(r.owner.reqs) == 0 {
		r.owner.reqs = nil // an idle owner keeps no empty map
	}
	for _, p := range r.pools {
		p.waiters--
	}
	if r.timer != nil {
		r.timer.Stop()
	}
	m.touch(r.owner)
	m.positionsChanged()
}

func (m *Memory) forgetOwnerIfIdle(o *memOwner) {
	if len(o.reqs) == 0 && len(o.leases) == 0 && o.session == nil && m.owners[o.id] == o {
		delete(m.owners, o.id)
	}
}

func (m *Memory) expire(r *memReq) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || !r.queued {
		return
	}
	m.dequeue(r)
	r.notify(Event{Type: EventTimeout, RequestID: r.id})
	m.forgetOwnerIfIdle(r.owner)
	m.schedule()
}

// bounded reports whether a waiter in a fill pool has been passed over
// enough: from now on it claims its resources as in a fifo pool.
func (m *Memory) bounded(r *memReq, now time.Time) bool {
	return r.passes >= m.opts.FillMaxPasses ||
		(!r.firstPassed.IsZero() && now.Sub(r.firstPassed) >= m.opts.FillMaxWait)
}

// schedule grants every queued request whose turn has come. It walks the
// queue in arrival order. A request that cannot be granted claims the free
// resources it could use, in every pool it asks for, so that no later
// request takes them (strict first come, first served per pool and per
// matching resource); in an "order: fill" pool the claim is ignored until
// the waiter has been passed over FillMaxPasses times or for FillMaxWait.
// The walk stops as soon as no pool has an unclaimed free resource.
func (m *Memory) schedule() {
	m.pass++
	pass := m.pass
	open := 0
	for _, p := range m.pools {
		p.avail = p.free
		p.fillBlocked = p.fillBlocked[:0]
		if p.avail > 0 {
			open++
		}
	}
	take := func(p *memPool, n int) {
		if p.avail > 0 && p.avail-n <= 0 {
			open--
		}
		p.avail -= n
	}
	var now time.Time
	for r := m.head; r != nil && open > 0; {
		next := r.next
		hope := false
		for _, p := range r.pools {
			hope = hope || p.avail > 0
		}
		if !hope {
			r = next
			continue
		}
		if picked := m.allocate(r, pass); picked != nil {
			if now.IsZero() {
				now = time.Now()
			}
			for _, res := range picked {
				p := res.pool
				take(p, 1)
				for _, w := range p.fillBlocked {
					if w.passStamp != pass && wantsResource(w, res) {
						w.passStamp = pass
						w.passes++
						if w.firstPassed.IsZero() {
							w.firstPassed = now
						}
					}
				}
			}
			m.grant(r, picked, now)
			r = next
			continue
		}
		if now.IsZero() {
			now = time.Now()
		}
		strict := m.bounded(r, now)
		for _, i := range r.allocOrder {
			w := r.wants[i]
			p := m.pools[w.Pool]
			if p.order == OrderFill && !strict {
				if len(p.fillBlocked) == 0 || p.fillBlocked[len(p.fillBlocked)-1] != r {
					p.fillBlocked = append(p.fillBlocked, r)
				}
				continue
			}
			if p.avail <= 0 {
				continue
			}
			for _, res := range p.res {
				if res.lease == nil && !res.out() && res.claimPass != pass && matches(&res.r, w.Labels) {
					res.claimPass = pass
					take(p, 1)
				}
			}
		}
		r = next
	}
}

func wantsResource(r *memReq, res *memRes) bool {
	for _, w := range r.wants {
		if w.Pool == res.pool.name && matches(&res.r, w.Labels) {
			return true
		}
	}
	return false
}

// allocate picks free, unclaimed resources for every want of r, or
// returns nil.
func (m *Memory) allocate(r *memReq, pass uint64) []*memRes {
	m.pick++
	var picked []*memRes
	for _, i := range r.allocOrder {
		w := r.wants[i]
		p := m.pools[w.Pool]
		n := 0
		for _, res := range p.res {
			if n == w.Count {
				break
			}
			if res.lease != nil || res.out() || res.claimPass == pass || res.pickStamp == m.pick || !matches(&res.r, w.Labels) {
				continue
			}
			res.pickStamp = m.pick
			picked = append(picked, res)
			n++
		}
		if n < w.Count {
			return nil
		}
	}
	return picked
}

// NewID returns a random id with prefix: leases are "L…", connections
// "C…". Twenty hex digits: collisions are not a concern.
func NewID(prefix string) string {
	var b [10]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand documents it)
	return prefix + hex.EncodeToString(b[:])
}

func (m *Memory) grant(r *memReq, picked []*memRes, now time.Time) {
	m.dequeue(r)
	g := &Grant{
		ID:        NewID("L"),
		Owner:     r.owner.id,
		RequestID: r.id,
		Holder:    r.holder,
		Granted:   now,
	}
	l := &memLease{grant: g, owner: r.owner, res: picked, notify: r.notify}
	for _, res := range picked {
		res.lease = l
		res.since = now
		res.pool.free--
		i := slices.IndexFunc(g.Pools, func(gp GrantedPool) bool { return gp.Pool == res.pool.name })
		if i < 0 {
			g.Pools = append(g.Pools, GrantedPool{Pool: res.pool.name})
			i = len(g.Pools) - 1
		}
		g.Pools[i].Resources = append(g.Pools[i].Resources, res.r)
	}
	waited := now.Sub(r.since)
	for _, p := range r.pools {
		p.grants++
		p.waitSum += waited.Seconds()
		p.waitCounts[sort.SearchFloat64s(WaitBuckets, waited.Seconds())]++
	}
	r.owner.leases = append(r.owner.leases, l)
	m.leases[g.ID] = l
	m.touch(r.owner)
	m.record(&HistoryEntry{
		Time: now, Event: "granted", Lease: g.ID, Holder: g.Holder, Connection: g.Owner,
		Resources: g.ResourceIDs(), WaitedMS: float64(waited.Microseconds()) / 1000,
	})
	r.notify(Event{Type: EventGranted, RequestID: r.id, Lease: g})
}

func (m *Memory) release(l *memLease, reason string) {
	now := time.Now()
	seen := map[*memPool]bool{}
	for _, res := range l.res {
		p := res.pool
		res.lease = nil
		res.since = time.Time{}
		if !seen[p] {
			seen[p] = true
			p.releases[reason]++
		}
		switch {
		case res.removed:
			m.dropResource(p, res)
		default:
			m.released(res) // a check may keep it out of service
			if !res.out() {
				p.free++
			}
		}
	}
	for p := range seen {
		if p.deleted && len(p.res) == 0 && m.pools[p.name] == p {
			delete(m.pools, p.name)
		}
	}
	delete(m.leases, l.grant.ID)
	l.owner.leases = slices.DeleteFunc(l.owner.leases, func(x *memLease) bool { return x == l })
	if len(l.owner.leases) == 0 {
		l.owner.leases = nil
	}
	m.touch(l.owner)
	m.record(&HistoryEntry{
		Time: now, Event: "released", Lease: l.grant.ID, Holder: l.grant.Holder, Connection: l.grant.Owner,
		Resources: l.grant.ResourceIDs(), Reason: reason, Broken: l.broken,
		HeldMS: float64(now.Sub(l.grant.Granted).Microseconds()) / 1000,
	})
}

func (m *Memory) dropResource(p *memPool, res *memRes) {
	for i, x := range p.res {
		if x == res {
			p.res = append(p.res[:i], p.res[i+1:]...)
			break
		}
	}
	if p.byID[res.r.ID] == res {
		delete(p.byID, res.r.ID)
	}
}

func (m *Memory) record(e *HistoryEntry) {
	if len(m.history) < m.opts.HistorySize {
		m.history = append(m.history, e)
		return
	}
	m.history[m.histNext] = e
	m.histNext = (m.histNext + 1) % m.opts.HistorySize
}

// positionsChanged arranges for queue positions to be sent soon, once for
// many changes.
func (m *Memory) positionsChanged() {
	if m.posTimer != nil || m.head == nil {
		return
	}
	m.posTimer = time.AfterFunc(m.opts.PositionInterval, m.flushPositions)
}

func (m *Memory) flushPositions() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.posTimer = nil
	if m.closed {
		return
	}
	m.positions(true)
}

// positions works out every queued request's position and, with send,
// tells those whose position changed.
func (m *Memory) positions(send bool) {
	for _, p := range m.pools {
		p.avail = 0 // reused as the running count of waiters
	}
	for r := m.head; r != nil; r = r.next {
		pos := 0
		for _, p := range r.pools {
			p.avail++
			pos = max(pos, p.avail)
		}
		if pos != r.pos {
			r.pos = pos
			if send {
				r.notify(Event{Type: EventQueued, RequestID: r.id, Position: pos})
			}
		}
	}
}

// Cancel implements Queue.
func (m *Memory) Cancel(ctx context.Context, owner, requestID string) error {
	if err := m.lock(); err != nil {
		return err
	}
	defer m.mu.Unlock()
	o := m.owners[owner]
	var r *memReq
	if o != nil {
		r = o.reqs[requestID]
	}
	if r == nil {
		return forge.Errorf(forge.ENOTFOUND, "no queued request %q on this connection (it may have been granted: release its lease instead)", requestID)
	}
	m.dequeue(r)
	r.notify(Event{Type: EventCanceled, RequestID: r.id})
	m.forgetOwnerIfIdle(o)
	m.schedule()
	return nil
}

// Release implements Queue.
func (m *Memory) Release(ctx context.Context, owner, leaseID string) error {
	return m.releaseOwned(owner, leaseID, ReasonReleased, nil)
}

// releaseOwned ends owner's lease leaseID for reason (Release and
// ReleaseBroken); first, under the lock, it applies before (if not nil)
// to the lease.
func (m *Memory) releaseOwned(owner, leaseID, reason string, before func(*memLease)) error {
	if err := m.lock(); err != nil {
		return err
	}
	defer m.mu.Unlock()
	l := m.leases[leaseID]
	if l == nil || l.owner.id != owner {
		return forge.Errorf(forge.ENOTFOUND, "no lease %q held by this connection", leaseID)
	}
	if before != nil {
		before(l)
	}
	m.release(l, reason)
	l.notify(Event{Type: EventReleased, Lease: l.grant})
	m.forgetOwnerIfIdle(l.owner)
	m.schedule()
	return nil
}

// Disconnect implements Queue.
func (m *Memory) Disconnect(ctx context.Context, owner string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	o := m.owners[owner]
	if o == nil {
		return nil
	}
	m.endOwner(o, ReasonDisconnected)
	if !m.closed {
		m.schedule()
	}
	return nil
}

// Revoke implements Admin.
func (m *Memory) Revoke(ctx context.Context, leaseID, reason string) error {
	if err := m.lock(); err != nil {
		return err
	}
	defer m.mu.Unlock()
	l := m.leases[leaseID]
	if l == nil {
		return forge.Errorf(forge.ENOTFOUND, "no lease %q in force", leaseID)
	}
	m.release(l, ReasonRevoked)
	l.notify(Event{Type: EventRevoked, Lease: l.grant, Reason: reason})
	m.forgetOwnerIfIdle(l.owner)
	m.schedule()
	return nil
}

// PutPool implements Admin.
func (m *Memory) PutPool(ctx context.Context, p *forge.Pool) (bool, error) {
	if p == nil {
		return false, forge.Errorf(forge.EINVALID, "no pool given")
	}
	if p.Order == "" {
		c := *p
		c.Order = OrderFIFO
		p = &c
	}
	if err := checkPool(p); err != nil {
		return false, err
	}
	if err := m.lock(); err != nil {
		return false, err
	}
	defer m.mu.Unlock()
	if err := checkPoolCheck(p.Name, p.Check); err != nil {
		return false, err
	}
	old := m.pools[p.Name]
	if old == nil {
		np := newMemPool(p)
		m.pools[p.Name] = np
		m.checkPoolChanged(np)
		m.schedule()
		return true, nil
	}
	created := old.deleted
	keep := make([]*memRes, 0, len(p.Resources))
	byID := make(map[string]*memRes, len(p.Resources))
	for _, r := range p.Resources {
		mr := old.byID[r.ID]
		if mr == nil {
			mr = &memRes{pool: old}
		}
		was := mr.r // a pool's definition does not end a fault, nor forget why a resource is disabled
		mr.r = copyResource(r)
		if mr.r.Fault == nil {
			mr.r.Fault = was.Fault
		}
		if mr.r.Disabled && was.Disabled && mr.r.DisabledReason == "" {
			mr.r.DisabledReason, mr.r.DisabledSince = was.DisabledReason, was.DisabledSince
		}
		mr.removed = false
		keep = append(keep, mr)
		byID[r.ID] = mr
	}
	for _, mr := range old.res {
		if byID[mr.r.ID] == nil && mr.lease != nil {
			mr.removed = true
			keep = append(keep, mr)
			byID[mr.r.ID] = mr
		}
	}
	old.res, old.byID = keep, byID
	old.order, old.deleted, old.maxGrace = p.Order, false, p.MaxGrace
	if !sameCheck(old.check, p.Check) {
		old.check = copyCheck(p.Check)
		m.recheckPool(old)
	}
	m.checkPoolChanged(old)
	old.free = 0
	for _, mr := range keep {
		if mr.available() {
			old.free++
		}
	}
	// Requests the new pool can never satisfy leave the queue.
	for r := m.head; r != nil; {
		next := r.next
		if wantsPool(r, old) {
			if err := m.checkCapacity(r); err != nil {
				m.dequeue(r)
				r.notify(Event{Type: EventFailed, RequestID: r.id, Err: err})
				m.forgetOwnerIfIdle(r.owner)
			}
		}
		r = next
	}
	m.positionsChanged()
	m.schedule()
	return created, nil
}

func wantsPool(r *memReq, p *memPool) bool {
	for _, q := range r.pools {
		if q == p {
			return true
		}
	}
	return false
}

// DeletePool implements Admin.
func (m *Memory) DeletePool(ctx context.Context, name string) error {
	if err := m.lock(); err != nil {
		return err
	}
	defer m.mu.Unlock()
	p := m.pools[name]
	if p == nil || p.deleted {
		return forge.Errorf(forge.ENOTFOUND, "no pool %q", name)
	}
	p.deleted = true
	p.free = 0
	var keep []*memRes
	for _, res := range p.res {
		if res.lease != nil {
			res.removed = true
			keep = append(keep, res)
		} else {
			delete(p.byID, res.r.ID)
		}
	}
	p.res = keep
	if len(keep) == 0 {
		delete(m.pools, name)
	}
	for r := m.head; r != nil; {
		next := r.next
		if wantsPool(r, p) {
			m.dequeue(r)
			r.notify(Event{Type: EventFailed, RequestID: r.id, Err: forge.Errorf(forge.ENOTFOUND, "pool %q was deleted", name)})
			m.forgetOwnerIfIdle(r.owner)
		}
		r = next
	}
	m.schedule()
	return nil
}

// SetDisabled implements Admin.
func (m *Memory) SetDisabled(ctx context.Context, pool, resource string, disabled bool, reason string) error {
	reason = truncateReason(reason)
	if err := m.lock(); err != nil {
		return err
	}
	defer m.mu.Unlock()
	p := m.pools[pool]
	if p == nil || p.deleted {
		return forge.Errorf(forge.ENOTFOUND, "no pool %q", pool)
	}
	res := p.byID[resource]
	if res == nil || res.removed {
		return forge.Errorf(forge.ENOTFOUND, "pool %q has no resource %q", pool, resource)
	}
	if res.r.Disabled == disabled && (disabled && (reason == "" || reason == res.r.DisabledReason) || !disabled && res.r.Fault == nil) {
		return nil
	}
	m.change(res, func() {
		// A new value, not a mutation: grants share the old one. Enabling
		// ends a fault too: the operator's word.
		r := res.r
		switch {
		case !disabled:
			r.Disabled, r.DisabledReason, r.DisabledSince, r.Fault = false, "", time.Time{}, nil
		case !r.Disabled:
			r.Disabled, r.DisabledReason, r.DisabledSince = true, reason, time.Now().UTC()
		default:
			r.DisabledReason = reason // a new reason for a resource already disabled
		}
		res.r = r
	})
	if !disabled {
		if res.chk != nil && p.check != nil && m.checksOn {
			res.chk.due, res.chk.failures = time.Time{}, 0 // checked as it enters service
			m.wakeChecks()
		}
		m.schedule()
	}
	return nil
}

// Pools implements Admin.
func (m *Memory) Pools(ctx context.Context) ([]*PoolState, error) {
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	out := make([]*PoolState, 0, len(m.pools))
	for _, name := range sortedKeys(m.pools) {
		out = append(out, m.poolState(m.pools[name]))
	}
	return out, nil
}

// Pool implements Admin.
func (m *Memory) Pool(ctx context.Context, name string) (*PoolState, error) {
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	p := m.pools[name]
	if p == nil {
		return nil, forge.Errorf(forge.ENOTFOUND, "no pool %q", name)
	}
	return m.poolState(p), nil
}

func (m *Memory) poolState(p *memPool) *PoolState {
	ps := &PoolState{Name: p.name, Order: p.order, Deleted: p.deleted, Free: p.free,
		Check: checkConfigOf(p.check), Resources: make([]*ResourceState, 0, len(p.res)), Queue: []*QueueEntry{}}
	if p.maxGrace > 0 {
		ps.MaxGrace = p.maxGrace.String()
	}
	for _, res := range p.res {
		rs := &ResourceState{ID: res.r.ID, Attributes: res.r.Attributes, Labels: res.r.Labels,
			Disabled: res.r.Disabled, Removing: res.removed, State: StateFree,
			DisabledBy: disabledBy(&res.r), Fault: res.r.Fault, Check: checkStatus(res)}
		rs.DisabledReason, rs.DisabledSince = disabledWhy(&res.r)
		if !res.removed {
			ps.Size++
		}
		switch {
		case res.lease != nil:
			rs.State = StateLeased
			rs.Lease, rs.Holder = res.lease.grant.ID, res.lease.grant.Holder
			since := res.since
			rs.Since = &since
			ps.InUse++
		case rs.DisabledBy != "":
			rs.State = StateDisabled
		case res.out():
			rs.State = StateChecking
			ps.Checking++
		}
		if rs.DisabledBy != "" && !res.removed {
			ps.Disabled++
		}
		ps.Resources = append(ps.Resources, rs)
	}
	n := 0
	for r := m.head; r != nil; r = r.next {
		if wantsPool(r, p) {
			n++
			ps.Queue = append(ps.Queue, &QueueEntry{Request: r.id, Connection: r.owner.id, Holder: r.holder,
				Position: n, Since: r.since, Wants: r.wants})
		}
	}
	return ps
}

// Leases implements Admin.
func (m *Memory) Leases(ctx context.Context) ([]*LeaseState, error) {
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	out := make([]*LeaseState, 0, len(m.leases))
	for _, l := range m.leases {
		g := l.grant
		ls := &LeaseState{ID: g.ID, Holder: g.Holder, Connection: g.Owner, Request: g.RequestID,
			Granted: g.Granted, Resources: g.ResourceIDs()}
		if s := l.owner.session; s != nil && s.detached {
			until := s.until
			ls.DetachedUntil = &until
		}
		out = append(out, ls)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Granted.Equal(out[j].Granted) {
			return out[i].Granted.Before(out[j].Granted)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// History implements Admin.
func (m *Memory) History(ctx context.Context, limit int) ([]*HistoryEntry, error) {
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	n := len(m.history)
	if limit <= 0 || limit > n {
		limit = n
	}
	out := make([]*HistoryEntry, 0, limit)
	// Newest first: the entry before histNext, going back around the ring.
	for i := 0; i < limit; i++ {
		idx := (m.histNext - 1 - i + 2*n) % n
		if n < m.opts.HistorySize {
			idx = n - 1 - i
		}
		out = append(out, m.history[idx])
	}
	return out, nil
}

// Stats implements Admin.
func (m *Memory) Stats(ctx context.Context) ([]*PoolStats, error) {
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	out := make([]*PoolStats, 0, len(m.pools))
	for _, name := range sortedKeys(m.pools) {
		p := m.pools[name]
		s := &PoolStats{Pool: name, Waiters: p.waiters, Grants: p.grants, WaitSum: p.waitSum,
			Releases: make(map[string]uint64, len(p.releases)), WaitCounts: append([]uint64(nil), p.waitCounts...),
			DisabledBy: map[string]int{}, Checks: make(map[string]uint64, len(p.checks))}
		for k, v := range p.releases {
			s.Releases[k] = v
		}
		for k, v := range p.checks {
			s.Checks[k] = v
		}
		for _, res := range p.res {
			if res.removed {
				continue
			}
			s.Size++
			if res.lease != nil {
				s.InUse++
			}
			if by := disabledBy(&res.r); by != "" {
				s.Disabled++
				s.DisabledBy[by]++
			} else if res.lease == nil && res.out() {
				s.Checking++
			}
		}
		out = append(out, s)
	}
	return out, nil
}
