package github

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/forgeci/forge/internal/prometheus"

	"github.com/forgeci/forge"
)

// DeliverFunc delivers one outbox item. It returns the item's Ref and
// Progress as they stand after the attempt (also when it fails half-way,
// so that what was done is not done again) and an error classified by
// classify when the delivery failed.
type DeliverFunc func(ctx context.Context, it *forge.OutboxItem) (ref string, progress int, err error)

// OutboxOptions configure an Outbox. Store, Owner and Deliver are required.
type OutboxOptions struct {
	Store forge.OutboxStore
	// Owner names this server in claims; it must stay the same across
	// restarts of the same server and differ between replicas.
	Owner   string
	Deliver DeliverFunc
	// Workers bounds the deliveries in flight (default 16): a slow answer
	// holds up one worker, not the queue.
	Workers int
	// Lease is how long a claim lasts (default 5m); Poll how often the
	// store is looked at for items to retry or left by others (default
	// 2s).
	Lease time.Duration
	Poll  time.Duration
	// Backoff is the first wait after a failure, doubled per attempt up
	// to MaxBackoff (defaults 1s and 10m); after MaxAttempts failures
	// (default 30) an item is given up.
	Backoff     time.Duration
	MaxBackoff  time.Duration
	MaxAttempts int
	// Retention is how long delivered items are kept, so that an outdated
	// message is still recognised (default 7 days).
	Retention time.Duration
	Logger    *slog.Logger
	// Registerer, when set, gets the outbox's Prometheus metrics.
	Registerer prometheus.Registerer
}

// Outbox delivers outbox items: Add stores them (in batches: one
// transaction however many arrive together) and hands them to workers at
// once; failures are tried again after an exponential backoff, or when
// GitHub says (Retry-After, X-RateLimit-Reset); what was stored survives a
// restart. Items of one Key are delivered one at a time, in order, and a
// newer one replaces an older one not yet sent. Add never blocks.
type Outbox struct {
	opts    OutboxOptions
	log     *slog.Logger
	metrics *outboxMetrics

	mu       sync.Mutex
	incoming []*forge.OutboxItem
	inflight map[string]bool              // keys being delivered or ready
	latest   map[string]*forge.OutboxItem // newer version of an in-flight key
	ready    []*forge.OutboxItem
	results  []forge.OutboxResult
	// refs remembers the Ref of recent deliveries: a newer version
	// stored before the delivery's outcome was recorded comes back from
	// the store without it (a check run would be created twice).
	refs    map[string]knownRef
	retryAt time.Time
	stopped bool
	idle    *sync.Cond // signalled when work is done

	wakeWriter chan struct{}
	wakeWork   chan struct{}
	wakeSettle chan struct{}
	wakePoll   chan struct{}
}

// NewOutbox returns an Outbox; Run starts it. It fails only when its
// metrics cannot be registered.
func NewOutbox(opts OutboxOptions) (*Outbox, error) {
	if opts.Workers <= 0 {
		opts.Workers = 16
	}
	if opts.Lease <= 0 {
		opts.Lease = 5 * time.Minute
	}
	if opts.Poll <= 0 {
		opts.Poll = 2 * time.Second
	}
	if opts.Backoff <= 0 {
		opts.Backoff = time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 10 * time.Minute
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 30
	}
	if opts.Retention <= 0 {
		opts.Retention = 7 * 24 * time.Hour
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	o := &Outbox{
		opts:       opts,
		log:        opts.Logger,
		inflight:   map[string]bool{},
		latest:     map[string]*forge.OutboxItem{},
		refs:       map[string]knownRef{},
		wakeWriter: make(chan struct{}, 1),
		wakeWork:   make(chan struct{}, 1),
		wakeSettle: make(chan struct{}, 1),
		wakePoll:   make(chan struct{}, 1),
	}
	o.idle = sync.NewCond(&o.mu)
	m, err := newOutboxMetrics(opts.Registerer, func() float64 {
		o.mu.Lock()
		defer o.mu.Unlock()
		return float64(len(o.inflight))
	})
	if err != nil {
		return nil, err
	}
	o.metrics = m
	return o, nil
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Add queues items for storing and delivery. It never blocks.
func (o *Outbox) Add(items ...*forge.OutboxItem) {
	if len(items) == 0 {
		return
	}
	o.mu.Lock()
	o.incoming = append(o.incoming, items...)
	o.mu.Unlock()
	wake(o.wakeWriter)
}

// Run stores and delivers items until ctx ends. It first takes back what
// this owner had claimed before a restart. When ctx ends it stores what
// was added and not yet stored, lets the deliveries in flight finish for
// a few seconds, records their outcome and returns.
func (o *Outbox) Run(ctx context.Context) error {
	// What a previous incarnation of this server claimed is ours again.
	o.claim(ctx, true)
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var wg sync.WaitGroup
	wg.Add(3 + o.opts.Workers)
	go func() { defer wg.Done(); o.writer(ctx) }()
	go func() { defer wg.Done(); o.settler(ctx) }()
	go func() { defer wg.Done(); o.poller(ctx) }()
	for range o.opts.Workers {
		go func() { defer wg.Done(); o.worker(ctx, work) }()
	}
	<-ctx.Done()
	// Deliveries in flight get a moment to finish: their outcome is
	// recorded, or they are delivered again after the restart.
	stop := time.AfterFunc(5*time.Second, cancelWork)
	wg.Wait()
	stop.Stop()
	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o.store(fctx)
	o.settle(fctx)
	o.mu.Lock()
	o.stopped = true
	o.idle.Broadcast()
	o.mu.Unlock()
	return nil
}

// writer stores what Add queued and schedules it for delivery.
func (o *Outbox) writer(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.wakeWriter:
		}
		for !o.store(ctx) && ctx.Err() == nil {
			// The database is down: keep the items and try again.
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// store writes the incoming items in one transaction; false when the
// store failed (the items stay queued).
func (o *Outbox) store(ctx context.Context) bool {
	o.mu.Lock()
	batch := o.incoming
	o.incoming = nil
	o.mu.Unlock()
	if len(batch) == 0 {
		return true
	}
	stored, err := o.opts.Store.Enqueue(ctx, o.opts.Owner, time.Now().Add(o.opts.Lease), batch)
	if err != nil {
		o.log.Error("github: storing reports", "items", len(batch), "err", err)
		o.mu.Lock()
		o.incoming = append(batch, o.incoming...)
		o.mu.Unlock()
		return false
	}
	o.mu.Lock()
	for _, it := range stored {
		o.scheduleLocked(it)
	}
	o.idle.Broadcast()
	o.mu.Unlock()
	return true
}

type knownRef struct {
	ref string
	at  time.Time
}

// refsKept is how long refs remembers a delivery's Ref.
const refsKept = 10 * time.Minute

// scheduleLocked makes it ready, or the next of its key to deliver.
func (o *Outbox) scheduleLocked(it *forge.OutboxItem) {
	if k, ok := o.refs[it.Key]; ok && it.Ref == "" {
		it.Ref = k.ref
	}
	if o.inflight[it.Key] {
		if cur := o.latest[it.Key]; cur == nil || it.Version >= cur.Version {
			o.latest[it.Key] = it
		}
		return
	}
	o.inflight[it.Key] = true
	o.ready = append(o.ready, it)
	wake(o.wakeWork)
}

// worker delivers ready items until ctx ends.
func (o *Outbox) worker(ctx, work context.Context) {
	for {
		o.mu.Lock()
		var it *forge.OutboxItem
		if len(o.ready) > 0 && ctx.Err() == nil {
			it = o.ready[0]
			o.ready[0] = nil
			o.ready = o.ready[1:]
			if len(o.ready) > 0 {
				wake(o.wakeWork) // another worker can take the next
			}
		}
		o.mu.Unlock()
		if it == nil {
			select {
			case <-ctx.Done():
				return
			case <-o.wakeWork:
				continue
			}
		}
		o.deliver(work, it)
	}
}

// deliver makes one attempt at it and queues the outcome.
func (o *Outbox) deliver(ctx context.Context, it *forge.OutboxItem) {
	start := time.Now()
	ref, progress, err := o.opts.Deliver(ctx, it)
	o.metrics.seconds.WithLabelValues(it.Kind).Observe(time.Since(start).Seconds())
	res := forge.OutboxResult{Key: it.Key, Version: it.Version, Ref: ref, Progress: progress}
	outcome := "delivered"
	if err != nil {
		outcome = "given_up"
		retry, after := retryable(err)
		attempts := it.Attempts + 1
		if retry && attempts < o.opts.MaxAttempts {
			wait := max(after, o.backoff(attempts))
			res.NextAt = time.Now().Add(wait)
			outcome = "retry"
			o.log.Warn("github: report failed; trying again", "key", it.Key, "attempt", attempts, "in", wait.Round(time.Millisecond).String(), "err", err)
		} else {
			o.log.Error("github: report failed; giving up", "key", it.Key, "attempts", attempts, "err", err)
		}
		res.Failed = err.Error()
	}
	o.metrics.deliveries.WithLabelValues(it.Kind, outcome).Inc()
	o.mu.Lock()
	o.results = append(o.results, res)
	if ref != "" {
		o.refs[it.Key] = knownRef{ref: ref, at: time.Now()}
	}
	if next := o.latest[it.Key]; next != nil {
		delete(o.latest, it.Key)
		if next.Version > it.Version {
			next.Ref, next.Progress = ref, 0 // a new payload starts over
			o.ready = append(o.ready, next)
			wake(o.wakeWork)
		} else {
			delete(o.inflight, it.Key)
		}
	} else {
		delete(o.inflight, it.Key)
	}
	if !res.NextAt.IsZero() && (o.retryAt.IsZero() || res.NextAt.Before(o.retryAt)) {
		o.retryAt = res.NextAt
		wake(o.wakePoll)
	}
	o.idle.Broadcast()
	o.mu.Unlock()
	wake(o.wakeSettle)
}

// backoff is the wait after attempts failures: doubling from Backoff,
// up to MaxBackoff, with a little jitter so replicas do not retry in step.
func (o *Outbox) backoff(attempts int) time.Duration {
	d := o.opts.Backoff << min(attempts-1, 20)
	if d <= 0 || d > o.opts.MaxBackoff {
		d = o.opts.MaxBackoff
	}
	return d + time.Duration(rand.Int64N(int64(d)/10+1))
}

// settler records delivery outcomes in batches.
func (o *Outbox) settler(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.wakeSettle:
		}
		for !o.settle(ctx) && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (o *Outbox) settle(ctx context.Context) bool {
	o.mu.Lock()
	batch := o.results
	o.results = nil
	o.mu.Unlock()
	if len(batch) == 0 {
		return true
	}
	if err := o.opts.Store.Settle(ctx, batch); err != nil {
		o.log.Error("github: recording report outcomes", "items", len(batch), "err", err)
		o.mu.Lock()
		o.results = append(batch, o.results...)
		o.mu.Unlock()
		return false
	}
	o.mu.Lock()
	o.idle.Broadcast()
	o.mu.Unlock()
	return true
}

// poller claims items to retry, and those another server left, every
// Poll or when a retry is due; and purges old delivered items hourly.
func (o *Outbox) poller(ctx context.Context) {
	t := time.NewTimer(o.opts.Poll)
	defer t.Stop()
	purged := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-o.wakePoll:
		}
		o.claim(ctx, false)
		o.mu.Lock()
		wait := o.opts.Poll
		if !o.retryAt.IsZero() {
			if d := time.Until(o.retryAt); d <= 0 {
				o.retryAt = time.Time{}
			} else if d < wait {
				wait = d + 10*time.Millisecond
			}
		}
		o.mu.Unlock()
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(wait)
		o.mu.Lock()
		for k, r := range o.refs {
			if time.Since(r.at) > refsKept {
				delete(o.refs, k)
			}
		}
		o.mu.Unlock()
		if time.Since(purged) > time.Hour {
			purged = time.Now()
			if n, err := o.opts.Store.PurgeOutbox(ctx, time.Now().Add(-o.opts.Retention)); err != nil {
				o.log.Warn("github: purging delivered reports", "err", err)
			} else if n > 0 {
				o.log.Debug("github: purged delivered reports", "items", n)
			}
		}
	}
}

// claim takes due items from the store and schedules them.
func (o *Outbox) claim(ctx context.Context, reclaim bool) {
	for ctx.Err() == nil {
		items, err := o.opts.Store.Claim(ctx, o.opts.Owner, time.Now(), time.Now().Add(o.opts.Lease), 200, reclaim)
		if err != nil {
			if ctx.Err() == nil {
				o.log.Error("github: claiming reports", "err", err)
			}
			return
		}
		o.mu.Lock()
		for _, it := range items {
			if !o.inflight[it.Key] {
				o.scheduleLocked(it)
			}
		}
		o.mu.Unlock()
		if len(items) < 200 {
			return
		}
	}
}

// Idle waits until nothing is queued, in flight or unrecorded, or ctx
// ends; it reports whether the outbox went idle. Items waiting for a retry
// do not count as queued. (For tests and benchmarks.)
func (o *Outbox) Idle(ctx context.Context) bool {
	stop := context.AfterFunc(ctx, func() {
		o.mu.Lock()
		o.idle.Broadcast()
		o.mu.Unlock()
	})
	defer stop()
	o.mu.Lock()
	defer o.mu.Unlock()
	for !o.stopped && ctx.Err() == nil && (len(o.incoming) > 0 || len(o.inflight) > 0 || len(o.results) > 0) {
		o.idle.Wait()
	}
	return ctx.Err() == nil
}
