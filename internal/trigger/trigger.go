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
// A spec that is missing or invalid does not make a delivery disappear: it
// creates a build that fails at once (StatusError) with the lint messages
// as its error and as the log of its one job, "spec".
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
// secrets). A new build of a pull request cancels the older unfinished
// builds of the same pull request and action unless
// Options.KeepSuperseded. A pull request's changed files, for when:
// paths, come from git: the files between the merge base of the target's
// tip and the head.
package trigger

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/spec"
)

// Git is what the processor needs of the repository mirrors
// (internal/git implements it). Every method is safe for concurrent use
// and honours ctx.
type Git interface {
	// Fetch makes a commit available and returns its SHA: sha when set
	// (fetched by id, or through ref), else the commit ref names.
	// ENOTFOUND when it does not exist, EINVALID for a bad ref or clone
	// URL; other codes (EUNAVAILABLE: the remote is down) may pass.
	Fetch(ctx context.Context, repo *forge.Repo, ref, sha string) (string, error)
	// ReadFile returns path at commit sha (fetched before); ENOTFOUND
	// when there is no such file, EINVALID when it is not a file,
	// ETOOLARGE when it is too large to read.
	ReadFile(ctx context.Context, repo *forge.Repo, sha, path string) ([]byte, error)
	// Message returns the commit message of sha (fetched before).
	Message(ctx context.Context, repo *forge.Repo, sha string) (string, error)
	// ChangedPaths lists the files head changes since its merge base with
	// base (both fetched before); ENOTFOUND when the history fetched is
	// too shallow to tell.
	ChangedPaths(ctx context.Context, repo *forge.Repo, base, head string) ([]string, error)
}

// ParseFunc interprets a delivery's payload: a hook to build, or a reason
// it is ignored, or an EINVALID error (github.ParseHook). A hook with an
// empty SHA names its commit by Ref only (a /retest comment).
type ParseFunc func(event string, payload []byte) (hook *forge.Hook, ignored string, err error)

// Defaults of Options.
const (
	DefaultSpecFile         = ".forge.yml"
	DefaultProductionBranch = "production"
	DefaultInterval         = 5 * time.Second
	DefaultBatch            = 100
	DefaultAttempts         = 5
	DefaultParallel         = 4
	DefaultBackoff          = 2 * time.Second
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
	// Batch is how many deliveries are read at once; 0 means DefaultBatch.
	Batch int
	// Parallel is how many repositories' deliveries are processed at
	// once; 0 means DefaultParallel.
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
}

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
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Processor{opts: opts, log: log, wake: make(chan struct{}, 1), retry: map[string]*attempt{}}, nil
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
	t := time.NewTicker(p.opts.Interval)
	defer t.Stop()
	for {
		if _, err := p.Drain(ctx); err != nil && ctx.Err() == nil {
			p.log.Error("trigger: process deliveries", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-p.wake:
		case <-t.C:
		}
	}
}

// Drain processes the pending deliveries until none is left that is due
// (deliveries waiting for a retry are skipped), and returns how many it
// finished. Deliveries of one repository are processed one after the
// other, oldest first (a newer push supersedes an older one); different
// repositories proceed in parallel, up to Options.Parallel, so one slow
// clone does not hold up every other repository.
func (p *Processor) Drain(ctx context.Context) (int, error) {
	var (
		mu       sync.Mutex
		done     int
		firstErr error
	)
	// run processes one repository's deliveries in order.
	run := func(ds []*forge.Delivery) (progressed bool) {
		for _, d := range ds {
			if ctx.Err() != nil {
				return progressed
			}
			finished, err := p.Process(ctx, d)
			if err != nil {
				if ctx.Err() != nil {
					return progressed
				}
				// One delivery the store chokes on must not hold up the
				// others: it waits for its next try like a failed fetch.
				p.postpone(d.ID)
				p.log.Error("trigger: process delivery", "delivery", d.ID, "err", err)
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				continue
			}
			if finished {
				mu.Lock()
				done++
				mu.Unlock()
				progressed = true
			}
		}
		return progressed
	}
	for ctx.Err() == nil {
		p.mu.Lock()
		waiting := len(p.retry)
		p.mu.Unlock()
		limit := p.opts.Batch + waiting
		pending, err := p.opts.Deliveries.PendingDeliveries(ctx, limit)
		if err != nil {
			return done, err
		}
		if len(pending) < limit {
			p.forget(pending)
		}
		groups := map[string][]*forge.Delivery{}
		var order []string
		for _, d := range pending {
			if !p.due(d.ID) {
				continue
			}
			key := p.repoKey(d)
			if _, ok := groups[key]; !ok {
				order = append(order, key)
			}
			groups[key] = append(groups[key], d)
		}
		var (
			wg         sync.WaitGroup
			progressed atomic.Bool
			slots      = make(chan struct{}, p.opts.Parallel)
		)
		for _, key := range order {
			slots <- struct{}{}
			wg.Go(func() {
				defer func() { <-slots }()
				if run(groups[key]) {
					progressed.Store(true)
				}
			})
		}
		wg.Wait()
		if !progressed.Load() || len(pending) < limit {
			return done, firstErr
		}
	}
	return done, firstErr
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

// repoKey names the repository a delivery is about, "" when it names none
// (those are only recorded, so their order does not matter).
func (p *Processor) repoKey(d *forge.Delivery) string {
	hook, _, err := p.opts.ParseHook(d.Event, d.Payload)
	if err != nil || hook == nil {
		return ""
	}
	return hook.Repo.FullName()
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
// store fails.
func (p *Processor) Process(ctx context.Context, d *forge.Delivery) (finished bool, err error) {
	start := p.opts.Now()
	result, retry, err := p.process(ctx, d)
	if err != nil {
		return false, err
	}
	if retry != nil {
		if n := p.postpone(d.ID); n < p.opts.Attempts {
			p.log.Warn("trigger: delivery will be tried again", "delivery", d.ID, "attempt", n, "err", retry)
			return false, nil
		}
		// Out of attempts: a failed build says what happened.
		result, err = p.fetchFailed(ctx, d, retry)
		if err != nil {
			return false, err
		}
	}
	if err := p.opts.Deliveries.FinishDelivery(ctx, d.ID, result); err != nil {
		return false, err
	}
	p.mu.Lock()
	delete(p.retry, d.ID)
	p.mu.Unlock()
	p.log.Info("trigger: delivery processed", "delivery", d.ID, "event", d.Event, "action", d.Action, "result", result, "took", p.opts.Now().Sub(start))
	return true, nil
}

// retryable is a failure of fetching that may pass.
type retryable struct {
	hook *forge.Hook
	err  error
}

func (r *retryable) Error() string { return r.err.Error() }

// process returns the delivery's result, or a retryable failure, or a
// store error.
func (p *Processor) process(ctx context.Context, d *forge.Delivery) (string, *retryable, error) {
	hook, ignored, err := p.opts.ParseHook(d.Event, d.Payload)
	switch {
	case err != nil:
		return "invalid: " + forge.ErrorMessage(err), nil, nil
	case hook == nil:
		return "ignored: " + ignored, nil, nil
	}
	if err := p.recordRepo(ctx, &hook.Repo); err != nil {
		return "", nil, err
	}
	if res, retry, err, ok := p.command(ctx, hook); ok {
		return res, retry, err
	}
	rebuild := hook.Action == "retest" || hook.Action == "rerequested"
	// Decided before fetching anything: a draft costs no clone.
	if hook.Event == "pull_request" && hook.Draft && !hook.Merged && !p.opts.BuildDrafts {
		return fmt.Sprintf("ignored: pull request #%d is a draft (built when ready for review)", hook.PullRequest), nil, nil
	}
	sha, err := p.opts.Git.Fetch(ctx, &hook.Repo, hook.Ref, hook.SHA)
	if err != nil {
		if ctx.Err() != nil {
			return "", nil, ctx.Err()
		}
		switch forge.ErrorCode(err) {
		case forge.ENOTFOUND, forge.EINVALID:
			builds, cerr := p.failAll(ctx, hook, d.ID, "could not fetch the commit: "+forge.ErrorMessage(err))
			return result(builds), nil, cerr
		}
		return "", &retryable{hook: hook, err: err}, nil
	}
	hook.SHA = sha
	if hook.Message == "" {
		if msg, err := p.opts.Git.Message(ctx, &hook.Repo, sha); err == nil {
			hook.Message = msg
		}
	}
	if hook.Action == "retest" {
		if err := p.completeRetest(ctx, hook); err != nil {
			return "", nil, err
		}
	}
	p.changedPaths(ctx, hook)
	p.promote(ctx, hook)
	if !rebuild && skipCI(hook.Message) {
		return "ignored: [skip ci] in the commit message", nil, nil
	}
	builds, why, err := p.createBuilds(ctx, hook, d.ID, "")
	if err != nil {
		return "", nil, err
	}
	if len(builds) == 0 {
		return "ignored: " + why, nil, nil
	}
	return result(builds), nil, nil
}

func result(builds []*forge.Build) string {
	parts := make([]string, len(builds))
	for i, b := range builds {
		parts[i] = fmt.Sprintf("%s #%d", b.Action, b.Number)
		if b.Status == forge.StatusError {
			parts[i] += " (failed: " + firstLine(b.Error) + ")"
		}
	}
	if len(parts) == 0 {
		return "no builds"
	}
	return "builds created: " + strings.Join(parts, ", ")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// skipCI reports whether a commit message asks not to be built, with
// "[skip ci]" or "[ci skip]" in any case, as GitHub Actions, Drone and
// Woodpecker understand it.
func skipCI(message string) bool {
	m := strings.ToLower(message)
	return strings.Contains(m, "[skip ci]") || strings.Contains(m, "[ci skip]")
}

// recordRepo creates or updates the repository and sets its ID, keeping
// what the payload does not say from the stored row.
func (p *Processor) recordRepo(ctx context.Context, r *forge.Repo) error {
	old, err := p.opts.Repos.RepoByName(ctx, r.Owner, r.Name)
	switch {
	case err == nil:
		if r.CloneURL == "" {
			r.CloneURL = old.CloneURL
		}
		if r.DefaultBranch == "" {
			r.DefaultBranch = old.DefaultBranch
		}
		if r.CloneURL == old.CloneURL && r.DefaultBranch == old.DefaultBranch && r.Private == old.Private {
			*r = *old
			return nil
		}
	case forge.ErrorCode(err) != forge.ENOTFOUND:
		return err
	}
	return p.opts.Repos.UpsertRepo(ctx, r)
}

// changedPaths fills in the files a pull request changes, for when:
// paths conditions, from its head and the target branch's tip. When that
// cannot be told (the target's tip is gone, the history fetched is too
// shallow to hold the merge base) Paths stays nil, which when: treats as
// unknown: path-filtered jobs run rather than being skipped wrongly.
func (p *Processor) changedPaths(ctx context.Context, h *forge.Hook) {
	if h.Event != "pull_request" || h.Merged || h.Paths != nil || h.Base == "" || h.Target == "" {
		return
	}
	if _, err := p.opts.Git.Fetch(ctx, &h.Repo, "refs/heads/"+h.Target, h.Base); err != nil {
		p.log.Debug("trigger: fetch pull request base", "base", h.Base, "err", err)
		return
	}
	paths, err := p.opts.Git.ChangedPaths(ctx, &h.Repo, h.Base, h.SHA)
	if err != nil {
		p.log.Debug("trigger: changed paths", "base", h.Base, "head", h.SHA, "err", err)
		return
	}
	h.Paths = paths
}

// completeRetest fills what a /retest comment does not say from the pull
// request's latest build: the branches and whether it comes from a fork.
// Without an earlier build the target is the default branch and the pull
// request counts as a fork, so its jobs get no secrets.
func (p *Processor) completeRetest(ctx context.Context, h *forge.Hook) error {
	prev, err := p.opts.Builds.ListBuilds(ctx, forge.BuildFilter{RepoID: h.Repo.ID, PullRequest: h.PullRequest, Limit: 1})
	if err != nil {
		return err
	}
	if len(prev) == 0 || prev[0].Hook.Event != "pull_request" {
		h.Target = h.Repo.DefaultBranch
		h.Fork = true
		return nil
	}
	last := prev[0].Hook
	h.Branch, h.Target, h.Fork, h.Draft = last.Branch, last.Target, last.Fork, last.Draft
	h.CommitCount = last.CommitCount
	if h.Author == "" {
		h.Author = last.Author
	}
	return nil
}

// fetchFailed creates the failed builds of a delivery whose commit could
// not be fetched after every attempt.
func (p *Processor) fetchFailed(ctx context.Context, d *forge.Delivery, r *retryable) (string, error) {
	builds, err := p.failAll(ctx, r.hook, d.ID, fmt.Sprintf("could not fetch the commit after %d attempts: %s", p.opts.Attempts, forge.ErrorMessage(r.err)))
	return result(builds), err
}

// failAll creates failed builds for the default actions of hook (the spec
// cannot be read without the commit).
func (p *Processor) failAll(ctx context.Context, h *forge.Hook, deliveryID, msg string) ([]*forge.Build, error) {
	var out []*forge.Build
	for _, action := range p.defaultActions(decisionHook(h)) {
		b, err := p.createFailed(ctx, h, deliveryID, action, msg)
		if err != nil {
			return out, err
		}
		out = append(out, b)
	}
	return out, nil
}

// decisionHook is the hook actions are decided on: a rebuild (a /retest
// comment, a re-requested check suite) runs what a new commit would.
func decisionHook(h *forge.Hook) *forge.Hook {
	if h.Action != "retest" && h.Action != "rerequested" {
		return h
	}
	c := *h
	c.Action = ""
	if c.Event == "pull_request" {
		c.Action = "synchronize"
	}
	return &c
}

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
