// Package trigger turns stored webhook deliveries into builds.
//
// A Processor drains the deliveries the webhook handler stored: it parses
// each into a forge.Hook, records the repository, fetches the commit,
// reads .forge.yml at that commit, decides which actions run (the spec's
// on: section, or the defaults), compiles each action's plan into the
// build's job rows and creates the builds, queued for the runner. A
// delivery never builds twice: builds carry the delivery's id, and the
// store refuses a second build of one delivery and action, so a processor
// that crashes between creating a build and finishing the delivery just
// finds the build there when it tries again.
//
// Deliveries are drained in rounds. A round lists the oldest pending
// deliveries and groups them by repository; repositories proceed in
// parallel (Options.Parallel), and one repository's deliveries are handled
// together, oldest first: one fetch of every commit they name, one read
// of every spec, one transaction creating their builds and one finishing
// them, so a burst costs a few git commands and commits per repository
// rather than per delivery. With Options.Claims, servers sharing a
// database claim a repository before processing its deliveries, so each
// delivery is processed by one server; a claim is kept alive while the
// server works and expires when it dies, and another server takes it over.
//
// A spec that is missing or invalid does not make a delivery disappear: it
// creates a build that fails at once (StatusError) with the lint messages
// as its error and as the log of its one job, "spec". So does a clone URL
// forge refuses (see Git.CheckCloneURL), which never replaces the stored
// one.
//
// What runs, without an on: section in the spec:
//
//	pull request opened, reopened, synchronize, ready_for_review → execute
//	push to the repository's default branch                      → execute
//	pull request merged into the production branch               → deploy
//
// Draft pull requests are skipped unless Options.BuildDrafts; a commit
// message with [skip ci] or [ci skip] builds nothing (except on an
// explicit rebuild). A "/retest" comment by a collaborator on a pull
// request, and a re-requested check suite, rebuild the pull request's
// current head (fetched through refs/pull/N/head) with what its latest
// build knew (target branch, fork); without an earlier build the target is
// the default branch and the pull request is treated as a fork (no
// secrets). A re-requested check suite of a branch counts as the
// repository's code only when its commit is on that branch (GitHub sends
// suites of forks' commits under the fork's branch name). A new build of a
// pull request cancels the older unfinished builds of the same pull
// request and action unless Options.KeepSuperseded. A pull request's
// changed files, for when: paths, come from git: the files between the
// merge base of the target's tip and the head.
package trigger

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/forgeci/forge/internal/prometheus"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/spec"
)

// Git is what the processor needs of the repository mirrors
// (internal/git implements it). Every method is safe for concurrent use
// and honours ctx.
type Git interface {
	// CheckCloneURL returns nil when commits may be fetched from the
	// clone URL raw, else an EINVALID error saying why (another host than
	// the configured GitHub, a refused transport).
	CheckCloneURL(raw string) error
	// Fetch makes a commit available and returns its SHA: sha when set
	// (fetched by id, or through ref), else the commit ref names.
	// ENOTFOUND when it does not exist, EINVALID for a bad ref or clone
	// URL; other codes (EUNAVAILABLE: the remote is down) may pass.
	Fetch(ctx context.Context, repo *forge.Repo, ref, sha string) (string, error)
	// Prefetch makes many commits available with as few fetches as it
	// can, and returns those it could not and why (EUNAVAILABLE: the
	// remote is down; otherwise the batch failed as a whole, and Fetch
	// fetches, or reports, each commit alone).
	Prefetch(ctx context.Context, repo *forge.Repo, shas []string) (missing []string, err error)
	// ReadFiles returns path at each of shas (fetched before), or for
	// each the reason it cannot: ENOTFOUND when there is no such file,
	// EINVALID when it is not a file, ETOOLARGE when it is too large to
	// read. err is a failure of the whole batch.
	ReadFiles(ctx context.Context, repo *forge.Repo, path string, shas []string) (files [][]byte, errs []error, err error)
	// Messages returns the commit messages of shas (fetched before).
	Messages(ctx context.Context, repo *forge.Repo, shas []string) ([]string, error)
	// ChangedPaths lists the files head changes since its merge base with
	// base (both fetched before); ENOTFOUND when the history fetched is
	// too shallow to tell.
	ChangedPaths(ctx context.Context, repo *forge.Repo, base, head string) ([]string, error)
	// IsAncestor reports whether commit a is b or one of its ancestors
	// (both fetched before); false when the history fetched is too
	// shallow to tell.
	IsAncestor(ctx context.Context, repo *forge.Repo, a, b string) (bool, error)
}

// Claims keeps the claims by which one server at a time processes a
// repository's deliveries, when several share a database (internal/sqldb
// implements it). A key is a repository's full name, "" for deliveries
// that name none. Every method is safe for concurrent use.
type Claims interface {
	// ClaimDeliveries claims for owner, until the time until, each of
	// keys no other server holds at now (no claim, owner's own, one that
	// expired before now, or one of an owner starting with home, when
	// home is not empty) and returns the keys owner holds.
	ClaimDeliveries(ctx context.Context, owner, home string, keys []string, now, until time.Time) ([]string, error)
	// TouchDeliveryClaims moves the expiry of owner's claims on keys to
	// until, and returns how many it moved (a claim taken over by
	// another server is not).
	TouchDeliveryClaims(ctx context.Context, owner string, keys []string, until time.Time) (int, error)
	// ReleaseDeliveryClaims gives up owner's claims on keys.
	ReleaseDeliveryClaims(ctx context.Context, owner string, keys []string) error
}

// Optional abilities of the stores, found by type assertion: batches that
// make a burst of deliveries cost one commit per repository and round.
type (
	// buildBatcher creates many builds in one transaction; per build
	// errors as CreateBuild's (internal/sqldb).
	buildBatcher interface {
		CreateBuilds(ctx context.Context, builds []*forge.Build, jobs [][]*forge.BuildJob) []error
	}
	// deliveryBatcher finishes many deliveries (ID and Result of each)
	// in one transaction (internal/sqldb).
	deliveryBatcher interface {
		FinishDeliveries(ctx context.Context, ds []*forge.Delivery) error
	}
	// backlogger counts the pending deliveries and says when the oldest
	// was received, for the metrics (internal/sqldb).
	backlogger interface {
		DeliveryBacklog(ctx context.Context) (int, time.Time, error)
	}
)

// ParseFunc interprets a delivery's payload: a hook to build, or a reason
// it is ignored, or an EINVALID error (github.ParseHook). A hook with an
// empty SHA names its commit by Ref only (a /retest comment).
type ParseFunc func(event string, payload []byte) (hook *forge.Hook, ignored string, err error)

// Defaults of Options.
const (
	DefaultSpecFile         = spec.FileName
	DefaultProductionBranch = "production"
	DefaultInterval         = 5 * time.Second
	DefaultBatch            = 1000
	DefaultAttempts         = 5
	DefaultParallel         = 8
	DefaultBackoff          = 2 * time.Second
	DefaultClaimTTL         = 30 * time.Second
)

// Options configures a Processor. Deliveries, Repos, Builds, Git and
// ParseHook are required.
type Options struct {
	Deliveries forge.DeliveryStore
	Repos      forge.RepoStore
	Builds     forge.BuildStore
	// Logs, when set, receives the lint messages of a spec that cannot
	// be built, as the log of the failed build's "spec" job.
	Logs      forge.LogStore
	Git       Git
	ParseHook ParseFunc
	// Claims, when set, makes servers sharing the database process each
	// repository's deliveries one at a time (see Claims); without it the
	// processor assumes it is alone.
	Claims Claims
	// ID names this server in its claims; "" means a random one. It must
	// differ between servers sharing the database, and between the
	// processes of one server.
	ID string
	// Home, when set, is a prefix of ID that every process of this server
	// shares and no other server's ID has (runner.Runner.Home): claims
	// held under it were left by an earlier process, gone since, and are
	// taken over at once rather than when they expire.
	Home string
	// ClaimTTL is how long a claim outlives its last renewal: a server
	// that dies holds its repositories' deliveries that long (default
	// 30s). Claims are renewed every ClaimTTL/3 while held; clocks of
	// servers sharing a database must agree to well within ClaimTTL/3.
	ClaimTTL time.Duration
	// SpecFile is the spec's path in the repository; "" means .forge.yml.
	SpecFile string
	// ProductionBranch is where a merged pull request runs deploy by
	// default; "" means "production".
	ProductionBranch string
	// BuildDrafts builds draft pull requests too.
	BuildDrafts bool
	// KeepSuperseded keeps older unfinished builds of a pull request when
	// a newer one is created; by default they are cancelled.
	KeepSuperseded bool
	// Cancel cancels a superseded build: the runner marks a queued one
	// cancelled and kills a running one (runner.Cancel). ECONFLICT means
	// it has finished meanwhile. Without it the processor marks queued
	// builds cancelled itself and leaves running ones alone.
	Cancel func(ctx context.Context, buildID int64, reason string) error
	// Created, when set, is called after each build is created (to wake
	// the runner). It must not block.
	Created func(b *forge.Build)
	// Interval is how often pending deliveries are looked for without a
	// Notify; 0 means DefaultInterval.
	Interval time.Duration
	// Batch is how many deliveries a round reads at once; 0 means
	// DefaultBatch.
	Batch int
	// Parallel is how many repositories' deliveries are processed at
	// once; 0 means DefaultParallel. Their time is mostly waiting for git
	// and the disk, so more than the CPUs pays.
	Parallel int
	// Attempts is how often a delivery whose commit cannot be fetched
	// (the remote is down) is tried before it becomes a failed build, and
	// Backoff the first wait between tries, doubled each time.
	Attempts int
	Backoff  time.Duration
	// ForkApproval says which builds of forks' pull requests wait for a
	// maintainer's approval: ForkApprovalAlways ("" too),
	// ForkApprovalFirstTime or ForkApprovalNever (see github.go).
	ForkApproval string
	// CanWrite, when set, tells whether user may write to repo; a
	// "/forge approve" is checked with it (the comment's author
	// association is checked in any case).
	CanWrite func(ctx context.Context, repo *forge.Repo, user string) (bool, error)
	// Reply, when set, comments on the pull request of h (a command that
	// did nothing says why). It must not block for long.
	Reply func(ctx context.Context, h *forge.Hook, body string) error
	// Promote, when set, opens or updates the promotion pull request from
	// main into production listing the pull request h merged; it is
	// called when that pull request's build passed. MainBranch is the
	// main branch ("" means the repository's default branch).
	Promote    func(ctx context.Context, h *forge.Hook, main, production string) error
	MainBranch string
	// Logger gets one line per delivery; nil discards.
	Logger *slog.Logger
	// Registerer, when set, gets the metrics forge_deliveries_pending and
	// forge_deliveries_oldest_pending_seconds (when the delivery store
	// can count its backlog).
	Registerer prometheus.Registerer
	// Now returns the time; nil means time.Now.
	Now func() time.Time
}

// Processor turns deliveries into builds. Run drives it; Notify wakes it.
type Processor struct {
	opts Options
	log  *slog.Logger
	wake chan struct{}

	mu    sync.Mutex
	retry map[string]*attempt // deliveries waiting to be tried again
	// held is set when the last Drain left deliveries of repositories
	// other servers held: Run looks again soon rather than at Interval.
	held bool
}

// heldRetry is how soon Run looks again for deliveries another server
// held: it releases them when its round ends.
const heldRetry = 250 * time.Millisecond

type attempt struct {
	n    int
	next time.Time
}

// New returns a Processor.
func New(opts Options) (*Processor, error) {
	var missing []string
	for name, ok := range map[string]bool{
		"Deliveries": opts.Deliveries != nil, "Repos": opts.Repos != nil, "Builds": opts.Builds != nil,
		"Git": opts.Git != nil, "ParseHook": opts.ParseHook != nil,
	} {
		if !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, forge.Errorf(forge.EINVALID, "trigger: options %s are required", strings.Join(missing, ", "))
	}
	if opts.SpecFile == "" {
		opts.SpecFile = DefaultSpecFile
	}
	if opts.ProductionBranch == "" {
		opts.ProductionBranch = DefaultProductionBranch
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Batch <= 0 {
		opts.Batch = DefaultBatch
	}
	if opts.Parallel <= 0 {
		opts.Parallel = DefaultParallel
	}
	if opts.Attempts <= 0 {
		opts.Attempts = DefaultAttempts
	}
	if opts.Backoff <= 0 {
		opts.Backoff = DefaultBackoff
	}
	if opts.ClaimTTL <= 0 {
		opts.ClaimTTL = DefaultClaimTTL
	}
	if opts.ID == "" {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("trigger: id: %w", err)
		}
		opts.ID = "trigger:" + hex.EncodeToString(b[:])
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Processor{opts: opts, log: log, wake: make(chan struct{}, 1), retry: map[string]*attempt{}}
	if err := p.registerMetrics(opts.Registerer); err != nil {
		return nil, err
	}
	return p, nil
}

// Notify wakes Run to look for deliveries now. It never blocks; wakes
// that arrive while one is pending merge into it.
func (p *Processor) Notify() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run processes pending deliveries until ctx ends: at once, on every
// Notify and every Interval. It returns nil when ctx ends; a failing store
// is logged and tried again at the next wake, never fatal.
func (p *Processor) Run(ctx context.Context) error {
	t := time.NewTimer(p.opts.Interval)
	defer t.Stop()
	for {
		if _, err := p.Drain(ctx); err != nil && ctx.Err() == nil {
			p.log.Error("trigger: process deliveries", "err", err)
		}
		p.mu.Lock()
		next := p.opts.Interval
		if p.held {
			next = min(next, heldRetry)
		}
		p.mu.Unlock()
		t.Reset(next)
		select {
		case <-ctx.Done():
			return nil
		case <-p.wake:
		case <-t.C:
		}
	}
}

// Drain processes the pending deliveries until none is left that is due
// (deliveries waiting for a retry are skipped, and so are those of
// repositories another server holds), and returns how many it finished.
// Deliveries of one repository are processed together, oldest first (a
// newer push supersedes an older one); different repositories proceed in
// parallel, up to Options.Parallel, so one slow clone does not hold up
// every other repository.
func (p *Processor) Drain(ctx context.Context) (int, error) {
	done := 0
	var firstErr error
	for ctx.Err() == nil {
		limit := p.opts.Batch + p.waiting()
		pending, err := p.opts.Deliveries.PendingDeliveries(ctx, limit)
		if err != nil {
			return done, err
		}
		whole := len(pending) < limit
		if whole {
			p.forget(pending)
		}
		groups, keys := p.group(pending)
		if len(keys) == 0 {
			return done, firstErr
		}
		held, err := p.claim(ctx, keys)
		if err != nil {
			return done, err
		}
		p.mu.Lock()
		p.held = len(held) < len(keys)
		p.mu.Unlock()
		if len(held) == 0 {
			return done, firstErr
		}
		if p.opts.Claims != nil {
			// Listed before the claims: the server that held a
			// repository then may have finished some since. Only what
			// is still pending now, when no one else can take it, runs.
			if groups, err = p.stillPending(ctx, groups, limit); err != nil {
				p.release(ctx, held)
				return done, err
			}
		}
		n, progressed, err := p.runGroups(ctx, held, groups)
		p.release(ctx, held)
		done += n
		if err != nil && firstErr == nil {
			firstErr = err
		}
		if !progressed || whole {
			return done, firstErr
		}
	}
	return done, firstErr
}

// item is one delivery in a round: parsed, then decided.
type item struct {
	d       *forge.Delivery
	hook    *forge.Hook
	ignored string
	invalid error

	result string     // set when the delivery is finished
	retry  *retryable // set when a fetch failed in a way that may pass
	fail   string     // set when it builds only failed builds saying this
	builds []*newBuild
}

// group parses pending and groups what is due by repository, in the
// order of each repository's oldest delivery.
func (p *Processor) group(pending []*forge.Delivery) (map[string][]*item, []string) {
	groups := map[string][]*item{}
	var keys []string
	for _, d := range pending {
		if !p.due(d.ID) {
			continue
		}
		it := &item{d: d}
		it.hook, it.ignored, it.invalid = p.opts.ParseHook(d.Event, d.Payload)
		key := ""
		if it.invalid == nil && it.hook != nil {
			key = it.hook.Repo.FullName()
		}
		if _, ok := groups[key]; !ok {
			keys = append(keys, key)
		}
		groups[key] = append(groups[key], it)
	}
	return groups, keys
}

// stillPending keeps of groups the deliveries that are still pending.
func (p *Processor) stillPending(ctx context.Context, groups map[string][]*item, limit int) (map[string][]*item, error) {
	now, err := p.opts.Deliveries.PendingDeliveries(ctx, limit)
	if err != nil {
		return nil, err
	}
	ids := make(map[string]bool, len(now))
	for _, d := range now {
		ids[d.ID] = true
	}
	for k, items := range groups {
		groups[k] = slices.DeleteFunc(items, func(it *item) bool { return !ids[it.d.ID] })
	}
	return groups, nil
}

// runGroups processes the groups of keys, Parallel at a time, keeping
// their claims alive meanwhile. progressed says whether any delivery was
// finished; err is the first store error.
func (p *Processor) runGroups(ctx context.Context, keys []string, groups map[string][]*item) (done int, progressed bool, err error) {
	stop := p.keepClaims(ctx, keys)
	defer stop()
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		slots = make(chan struct{}, p.opts.Parallel)
	)
	for _, key := range keys {
		items := groups[key]
		if len(items) == 0 {
			continue
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-slots }()
			n, gerr := p.processGroup(ctx, items)
			if gerr != nil && ctx.Err() == nil {
				// One repository the store chokes on must not hold up the
				// others: its deliveries wait for their next try like a
				// failed fetch.
				for _, it := range items {
					if it.result == "" {
						p.postpone(it.d.ID)
					}
				}
				p.log.Error("trigger: process deliveries of a repository", "repo", key, "deliveries", len(items), "err", gerr)
			}
			mu.Lock()
			defer mu.Unlock()
			done += n
			if n > 0 {
				progressed = true
			}
			if gerr != nil && err == nil && ctx.Err() == nil {
				err = gerr
			}
		})
	}
	wg.Wait()
	return done, progressed, err
}

// waiting is how many deliveries wait for a retry.
func (p *Processor) waiting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.retry)
}

// forget drops the retry state of deliveries no longer pending (another
// server finished them); pending is the complete list.
func (p *Processor) forget(pending []*forge.Delivery) {
	ids := make(map[string]bool, len(pending))
	for _, d := range pending {
		ids[d.ID] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id := range p.retry {
		if !ids[id] {
			delete(p.retry, id)
		}
	}
}

// postpone counts a failed try of delivery id and returns the attempts
// so far; the delivery is due again after a backoff that doubles each
// time, up to a minute.
func (p *Processor) postpone(id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	a := p.retry[id]
	if a == nil {
		a = &attempt{}
		p.retry[id] = a
	}
	a.n++
	wait := p.opts.Backoff << min(a.n-1, 10)
	a.next = p.opts.Now().Add(min(wait, time.Minute))
	return a.n
}

func (p *Processor) due(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, ok := p.retry[id]
	return !ok || !p.opts.Now().Before(a.next)
}

// Process handles one delivery: it creates its builds (or decides it
// builds nothing) and marks it processed with a result. It returns
// finished=false, leaving the delivery pending, when the commit could not
// be fetched for a reason that may pass (it is tried again after a
// backoff, Attempts times, then fails as a build); an error only when the
// store fails. It takes no claim: the caller knows no other server
// processes d.
func (p *Processor) Process(ctx context.Context, d *forge.Delivery) (finished bool, err error) {
	it := &item{d: d}
	it.hook, it.ignored, it.invalid = p.opts.ParseHook(d.Event, d.Payload)
	n, err := p.processGroup(ctx, []*item{it})
	return n == 1, err
}

// retryable is a failure of fetching that may pass.
type retryable struct {
	hook *forge.Hook
	err  error
}

func (r *retryable) Error() string { return r.err.Error() }

func result(builds []*forge.Build) string {
	parts := make([]string, len(builds))
	for i, b := range builds {
		parts[i] = fmt.Sprintf("%s #%d", b.Action, b.Number)
		if b.Status == forge.StatusError {
			parts[i] += " (failed: " + forge.FirstLine(b.Error) + ")"
		}
	}
	if len(parts) == 0 {
		return "no builds"
	}
	return "builds created: " + strings.Join(parts, ", ")
}

// skipCI reports whether a commit message asks not to be built, with
// "[skip ci]" or "[ci skip]" in any case, as GitHub Actions, Drone and
// Woodpecker understand it.
func skipCI(message string) bool {
	m := strings.ToLower(message)
	return strings.Contains(m, "[skip ci]") || strings.Contains(m, "[ci skip]")
}

// decisionHook is the hook actions are decided on: a rebuild (a /retest
// comment, a re-requested check suite) runs what a new commit would.
func decisionHook(h *forge.Hook) *forge.Hook {
	if !rebuild(h) {
		return h
	}
	c := *h
	c.Action = ""
	if c.Event == "pull_request" {
		c.Action = "synchronize"
	}
	return &c
}

// rebuild reports whether h asks to build again what was built (a
// /retest comment, a re-requested check suite).
func rebuild(h *forge.Hook) bool { return h.Action == "retest" || h.Action == "rerequested" }

// defaultActions are the actions without an on: section: a pull request
// opened, reopened, synchronized or ready for review → execute; a push to
// the default branch → execute; a pull request merged into the production
// branch → deploy.
func (p *Processor) defaultActions(h *forge.Hook) []string {
	switch h.Event {
	case "pull_request":
		switch h.Action {
		case "opened", "reopened", "synchronize", "ready_for_review":
			return []string{spec.DefaultAction}
		case "closed":
			if h.Merged && h.Target == p.opts.ProductionBranch {
				return []string{"deploy"}
			}
		}
	case "push":
		if h.Branch != "" && h.Branch == h.Repo.DefaultBranch {
			return []string{spec.DefaultAction}
		}
	}
	return nil
}

// describe says in words what a hook is, for "ignored: ..." results.
func describe(h *forge.Hook) string {
	switch {
	case h.Event == "pull_request" && h.Merged:
		return fmt.Sprintf("pull request #%d merged into %s", h.PullRequest, h.Target)
	case h.Event == "pull_request":
		return fmt.Sprintf("pull request #%d %s into %s", h.PullRequest, h.Action, h.Target)
	case h.Event == "push":
		return "push to " + h.Branch
	case h.Event == "tag":
		return "tag " + h.Tag
	}
	return h.Event + " " + h.Ref
}
