// Package runner runs the builds queued in the database: workers take the
// oldest queued builds within a server-wide and a per-repository limit, make
// a workspace at the build's commit, compile its plan and execute it, and
// record every job, step and log line as it happens.
//
// The queue is the database (forge.BuildStore): nothing queued is lost when
// the server stops, and several servers sharing one PostgreSQL database
// claim builds with the build row's optimistic lock, so a build runs once.
// Each runner stamps the builds it claims with its ID and keeps their
// heartbeat fresh; a running build whose heartbeat goes stale was left by a
// server that died, and any runner ends it (see Recover).
package runner

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/engine"
	"github.com/forgeci/forge/internal/prometheus"
)

// Checkouter makes a build's workspace. It is implemented by internal/git.
//
// Checkout makes dir (which does not exist yet) a git working tree of repo
// at commit sha, fetching what is missing. It is safe for concurrent use
// and honours ctx.
type Checkouter interface {
	Checkout(ctx context.Context, repo *forge.Repo, sha, dir string) error
}

// Planner reads the build spec in a workspace and compiles the plan of a
// build's action for the build's hook.
//
// Errors with code EINVALID are problems of the spec (a missing or invalid
// .forge.yml); their message is shown to the user as the jobs' log.
type Planner interface {
	Plan(ctx context.Context, dir string, b *forge.Build) (*forge.Plan, error)
}

// PlannerFunc adapts a function to Planner.
type PlannerFunc func(ctx context.Context, dir string, b *forge.Build) (*forge.Plan, error)

// Plan calls f.
func (f PlannerFunc) Plan(ctx context.Context, dir string, b *forge.Build) (*forge.Plan, error) {
	return f(ctx, dir, b)
}

// Executor runs a compiled plan: internal/engine with a backend.
//
// Execute runs every job of plan to the end, reporting each event to rep
// (from one goroutine at a time), and returns the overall status. When ctx
// is cancelled it kills every job and returns StatusCanceled. A non-nil
// error means the plan could not be run at all (StatusError).
type Executor interface {
	Execute(ctx context.Context, plan *forge.Plan, run *Run, rep forge.Reporter) (forge.Status, error)
}

// Run describes one build's execution to an Executor.
type Run struct {
	Build *forge.Build
	Repo  *forge.Repo
	// Env is what every job of the build sees: forge.RunEnv.Vars().
	Env map[string]string
	// JobURL returns a job's page, its FORGE_STATUS_URL.
	JobURL func(job string) string
	// Secrets for the steps; nil for builds of forks.
	Secrets map[string]string
	// Resume, when set, continues the build a dead server left running
	// (engine.RunInfo.Resume).
	Resume map[string]engine.Resumed
	// Workspace is the checkout at the build's commit; each job gets a
	// clean copy of it.
	Workspace forge.Workspace
}

// Publisher carries log lines live to followers (internal/livelog).
// Publish must not block; Finish says a job's log is complete.
type Publisher interface {
	Publish(jobID int64, lines []forge.LogLine)
	Finish(jobID int64)
}

// SecretsFunc returns the secrets a repository's builds get.
type SecretsFunc func(ctx context.Context, repo *forge.Repo) (map[string]string, error)

// Options configure a Runner. Builds, Repos, Logs, Git, Planner and Executor
// are required.
type Options struct {
	Builds   forge.BuildStore
	Repos    forge.RepoStore
	Logs     forge.LogStore
	Git      Checkouter
	Planner  Planner
	Executor Executor
	// Backend names the backend the Executor runs jobs on ("local"); it is
	// recorded with each job, for reattaching after a restart.
	Backend string
	// Reattach says that the Executor's backend can take over jobs that
	// outlived their server (forge.Attacher): Recover then continues the
	// builds of dead servers (see Recover) instead of ending them.
	Reattach bool
	// Janitor, when set, removes at start what the backend made for builds
	// that are no longer running (leftovers of a server that crashed).
	Janitor forge.Janitor
	// Live, when set, receives every log line as it is recorded.
	Live Publisher
	// Observer, when set, is told of every change of a build's or a
	// job's state this runner makes (forge.Change).
	Observer forge.Observer
	// Secrets, when set, gives the secrets of a repository's builds; only
	// builds whose hook is Trusted get them (never a fork's code).
	Secrets SecretsFunc
	// WorkDir holds the builds' workspaces (one directory per build,
	// removed when the build ends). It belongs to this runner alone: Run
	// removes the build-* directories it finds there at start.
	WorkDir string
	// PublicURL is the server's address as users reach it, for
	// FORGE_STATUS_URL (e.g. https://ci.example.com).
	PublicURL string
	// Concurrency bounds the builds this runner runs at once (default:
	// the number of CPUs); PerRepo bounds them per repository (default: no
	// bound beyond Concurrency). Both are per runner: servers sharing a
	// database each apply their own.
	Concurrency int
	PerRepo     int
	// Poll is how often the queue is looked at without a Notify, and how
	// often a running build checks whether it was cancelled elsewhere
	// (default 2s).
	Poll time.Duration
	// Grace is how long running builds may go on after Run's context ends
	// before they are cancelled (default 30s).
	Grace time.Duration
	// ID identifies this runner in the builds it claims (Build.Runner).
	// It must differ from that of every other runner sharing the
	// database, including this process's own later incarnations. Default:
	// the host name, a digest of WorkDir, the process ID and random bytes;
	// with the default, a runner recognises at once the builds a previous
	// process with the same host and WorkDir left running (WorkDir belongs
	// to one runner at a time, so that process is gone).
	ID string
	// Heartbeat is how often the runner stamps its running builds as
	// alive (default 10s). Stale is how old a running build's heartbeat
	// may get before Recover takes its server for dead (default three
	// heartbeats; at least two). Clocks of servers sharing a database
	// must agree to well within Stale - Heartbeat.
	Heartbeat time.Duration
	Stale     time.Duration
	// NoRecover skips Recover, at start and periodically. It is no longer
	// needed with several servers sharing a database (Recover only ends
	// builds whose server stopped heartbeating); with it, the builds of a
	// server that died stay running until a runner without it ends them.
	NoRecover bool
	// FlushInterval is how often buffered log lines are written (default
	// 100ms; they are also written at every step's end).
	FlushInterval time.Duration
	Logger        *slog.Logger
	// Registerer, when set, gets the runner's Prometheus metrics.
	Registerer prometheus.Registerer
}

// Runner runs queued builds. Create it with New, start it with Run.
type Runner struct {
	opts Options
	// id is Options.ID or the generated one; home, when the ID was
	// generated, is its host-and-WorkDir prefix shared by every
	// incarnation of this runner.
	id      string
	home    string
	log     *slog.Logger
	metrics *metrics
	wake    chan struct{}

	// base is the parent of every build's context: it outlives Run's ctx
	// so running builds get their grace period, and stopBuilds cancels it.
	base       context.Context
	stopBuilds context.CancelCauseFunc

	mu       sync.Mutex
	running  map[int64]*active // by build ID
	perRepo  map[int64]int
	stopping bool
	wg       sync.WaitGroup
}

type active struct {
	build  *forge.Build
	cancel context.CancelCauseFunc
	// resume: the build was left running by a dead server and is
	// continued (see Recover).
	resume bool
}

// Reasons a build is cancelled, stored as its Error.
var (
	ErrShutdown      = errors.New("server shutting down")
	ErrServerRestart = errors.New("server restarted")
)

// New returns a Runner; it checks the required options.
func New(opts Options) (*Runner, error) {
	switch {
	case opts.Builds == nil, opts.Repos == nil, opts.Logs == nil:
		return nil, errors.New("runner: Builds, Repos and Logs stores are required")
	case opts.Git == nil, opts.Planner == nil, opts.Executor == nil:
		return nil, errors.New("runner: Git, Planner and Executor are required")
	case opts.WorkDir == "":
		return nil, errors.New("runner: WorkDir is required")
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = runtime.NumCPU()
	}
	if opts.PerRepo <= 0 || opts.PerRepo > opts.Concurrency {
		opts.PerRepo = opts.Concurrency
	}
	if opts.Poll <= 0 {
		opts.Poll = 2 * time.Second
	}
	if opts.Grace <= 0 {
		opts.Grace = 30 * time.Second
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 10 * time.Second
	}
	if opts.Stale <= 0 {
		opts.Stale = 3 * opts.Heartbeat
	}
	if opts.Stale < 2*opts.Heartbeat {
		return nil, fmt.Errorf("runner: Stale (%v) must be at least twice Heartbeat (%v), or live builds look dead", opts.Stale, opts.Heartbeat)
	}
	id, home := opts.ID, ""
	if id == "" {
		var err error
		if id, home, err = newID(opts.WorkDir); err != nil {
			return nil, err
		}
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = 100 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	builds := opts.Builds
	m, err := newMetrics(opts.Registerer, func() float64 {
		// Counted when scraped: the queue is the database.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		q, err := builds.ListBuilds(ctx, forge.BuildFilter{Status: forge.StatusQueued, Limit: forge.MaxBuildLimit})
		if err != nil {
			return -1
		}
		return float64(len(q))
	})
	if err != nil {
		return nil, err
	}
	base, stop := context.WithCancelCause(context.Background())
	return &Runner{
		opts:       opts,
		id:         id,
		home:       home,
		log:        opts.Logger.With("component", "runner"),
		metrics:    m,
		wake:       make(chan struct{}, 1),
		base:       base,
		stopBuilds: stop,
		running:    make(map[int64]*active),
		perRepo:    make(map[int64]int),
	}, nil
}

// newID returns a runner ID, host:workdir-digest:pid:random, and its
// home, the host:workdir-digest: prefix.
func newID(workDir string) (id, home string, err error) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	if abs, err := filepath.Abs(workDir); err == nil {
		workDir = abs
	}
	sum := sha256.Sum256([]byte(workDir))
	var nonce [4]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", "", fmt.Errorf("runner: id: %w", err)
	}
	home = host + ":" + hex.EncodeToString(sum[:4]) + ":"
	return fmt.Sprintf("%s%d:%s", home, os.Getpid(), hex.EncodeToString(nonce[:])), home, nil
}

// ID returns the runner's ID, as stored in the builds it claims.
func (r *Runner) ID() string { return r.id }

// Home returns the prefix of ID shared by every process of this runner
// (same host and WorkDir) and by no other runner, or "" when Options.ID
// was given: what such a process left behind, it left by dying.
func (r *Runner) Home() string { return r.home }

// Notify tells the runner that builds were queued; it never blocks.
func (r *Runner) Notify() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Running returns the IDs of the builds this runner is running now.
func (r *Runner) Running() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]int64, 0, len(r.running))
	for id := range r.running {
		ids = append(ids, id)
	}
	return ids
}

// Run recovers the builds dead servers left running, then runs queued
// builds until ctx ends, keeping the heartbeat of its running builds fresh
// and recovering again every Options.Stale. Then it stops taking builds,
// lets the running ones finish for up to Options.Grace (still heartbeating),
// cancels the rest (recorded as cancelled, "server shutting down") and
// returns once every build has ended.
func (r *Runner) Run(ctx context.Context) error {
	if !r.opts.NoRecover {
		if _, err := r.Recover(ctx); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(r.opts.WorkDir, 0o755); err != nil {
		return fmt.Errorf("runner: work directory: %w", err)
	}
	// Nothing runs yet but the builds Recover continued (they make their
	// workspace anew): workspaces found now were left by a server that
	// died mid-build.
	running := map[string]bool{}
	for _, id := range r.Running() {
		running[fmt.Sprintf("build-%d", id)] = true
	}
	if old, err := os.ReadDir(r.opts.WorkDir); err == nil {
		for _, e := range old {
			if !strings.HasPrefix(e.Name(), "build-") || running[e.Name()] {
				continue // not ours, or a continued build's
			}
			if err := os.RemoveAll(filepath.Join(r.opts.WorkDir, e.Name())); err != nil {
				r.log.Warn("removing a workspace left behind", "dir", e.Name(), "err", err)
			}
		}
	}
	if r.opts.Janitor != nil {
		r.clean(ctx)
	}
	// The heartbeat outlives ctx: builds in their grace period still run.
	hctx, stopHeartbeat := context.WithCancel(context.WithoutCancel(ctx))
	heartbeatDone := make(chan struct{})
	go func() { defer close(heartbeatDone); r.heartbeat(hctx) }()
	defer func() { stopHeartbeat(); <-heartbeatDone }()
	if !r.opts.NoRecover {
		rctx, stopRecover := context.WithCancel(ctx)
		recoverDone := make(chan struct{})
		go func() { defer close(recoverDone); r.recoverEvery(rctx) }()
		defer func() { stopRecover(); <-recoverDone }()
	}
	tick := time.NewTicker(r.opts.Poll)
	defer tick.Stop()
	for {
		r.schedule(ctx)
		select {
		case <-ctx.Done():
			return r.drain()
		case <-r.wake:
		case <-tick.C:
		}
	}
}

// drain waits for the running builds, cancelling them after the grace period.
func (r *Runner) drain() error {
	r.mu.Lock()
	r.stopping = true
	n := len(r.running)
	r.mu.Unlock()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	if n > 0 {
		r.log.Info("waiting for running builds", "builds", n, "grace", r.opts.Grace.String())
	}
	select {
	case <-done:
		return nil
	case <-time.After(r.opts.Grace):
	}
	r.log.Warn("grace period over: cancelling running builds", "builds", len(r.Running()))
	r.stopBuilds(ErrShutdown)
	select {
	case <-done:
		return nil
	case <-time.After(time.Minute):
		return fmt.Errorf("runner: builds %v did not stop within a minute of being cancelled", r.Running())
	}
}

// queueScan bounds how many queued builds one scheduling pass looks at.
const queueScan = 200

// schedule claims as many of the oldest queued builds as the limits allow.
func (r *Runner) schedule(ctx context.Context) {
	r.mu.Lock()
	free := r.opts.Concurrency - len(r.running)
	stopping := r.stopping
	r.mu.Unlock()
	if stopping || free <= 0 {
		return
	}
	// Look at a few more builds than there are free slots (some may belong
	// to repositories at their limit, others be taken by another server
	// first); when none of those could be taken, look further.
	limit := min(free*4+16, queueScan)
	for pass := 0; pass < 4 && free > 0; pass++ {
		queued, err := r.opts.Builds.ListBuilds(ctx, forge.BuildFilter{Status: forge.StatusQueued, Ascending: true, Limit: limit})
		if err != nil {
			if ctx.Err() == nil {
				r.log.Error("listing queued builds", "err", err)
			}
			return
		}
		claimed := r.claim(ctx, queued, &free)
		if len(queued) < limit {
			return // that was the whole queue
		}
		if claimed == 0 {
			if limit == queueScan {
				return
			}
			limit = queueScan
		}
	}
}

// claim claims builds from queued, oldest first, while free > 0, and
// starts them; it returns how many it started.
func (r *Runner) claim(ctx context.Context, queued []*forge.Build, free *int) int {
	n := 0
	for _, b := range queued {
		if *free <= 0 || ctx.Err() != nil {
			return n
		}
		r.mu.Lock()
		_, dup := r.running[b.ID]
		full := r.perRepo[b.RepoID] >= r.opts.PerRepo
		r.mu.Unlock()
		if dup || full {
			continue
		}
		b.Status = forge.StatusRunning
		b.Started = time.Now().UTC()
		b.Error = ""
		b.Runner, b.Heartbeat = r.id, b.Started
		if err := r.opts.Builds.UpdateBuild(ctx, b); err != nil {
			if forge.ErrorCode(err) != forge.ECONFLICT {
				r.log.Error("claiming build", "build", b.ID, "err", err)
			}
			continue // someone else took it, or cancelled it
		}
		*free--
		n++
		r.publishBuild(b)
		r.start(b, false)
	}
	return n
}

// start runs the claimed build b in a goroutine owned by r.wg; resume
// continues a build a dead server left running.
func (r *Runner) start(b *forge.Build, resume bool) {
	ctx, cancel := context.WithCancelCause(r.base)
	r.mu.Lock()
	r.running[b.ID] = &active{build: b, cancel: cancel, resume: resume}
	r.perRepo[b.RepoID]++
	r.mu.Unlock()
	r.metrics.running.Inc()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() {
			cancel(nil)
			r.mu.Lock()
			delete(r.running, b.ID)
			if r.perRepo[b.RepoID]--; r.perRepo[b.RepoID] <= 0 {
				delete(r.perRepo, b.RepoID)
			}
			r.mu.Unlock()
			r.metrics.running.Dec()
			r.Notify() // a slot is free
		}()
		r.runBuild(ctx, b, resume)
	}()
}

// Cancel cancels build id with reason (e.g. "canceled by alice"): a queued
// build is marked cancelled, a running one has its jobs killed. It returns
// ENOTFOUND for an unknown build and ECONFLICT when the build has already
// finished. A build running on another server sharing the database is
// marked cancelled and stops within Options.Poll.
func (r *Runner) Cancel(ctx context.Context, id int64, reason string) (*forge.Build, error) {
	if reason == "" {
		reason = "canceled"
	}
	var b *forge.Build
	for attempt := 0; ; attempt++ {
		var err error
		if b, err = r.opts.Builds.Build(ctx, id); err != nil {
			return nil, err
		}
		if b.Status.Done() {
			return b, forge.Errorf(forge.ECONFLICT, "build %d has already finished (%s)", id, b.Status)
		}
		b.Status = forge.StatusCanceled
		b.Error = reason
		b.Finished = time.Now().UTC()
		err = r.opts.Builds.UpdateBuild(ctx, b)
		if err == nil {
			break
		}
		if forge.ErrorCode(err) != forge.ECONFLICT || attempt == 5 {
			return nil, err
		}
	}
	r.mu.Lock()
	a := r.running[id]
	r.mu.Unlock()
	if a != nil {
		r.publishBuild(b)
		a.cancel(errors.New(reason))
		return b, nil
	}
	// Not running here: close its jobs too, unless another server runs it
	// (its runner sees the cancel and records the jobs itself).
	if !b.Started.IsZero() {
		r.publishBuild(b)
		return b, nil
	}
	defer r.publishBuild(b) // once its jobs are closed too
	jobs, err := r.opts.Builds.Jobs(ctx, id)
	if err != nil {
		return b, err
	}
	for _, j := range jobs {
		if !j.Status.Done() {
			j.Status = forge.StatusCanceled
			j.Error = reason
			if err := r.opts.Builds.UpdateJob(ctx, j); err != nil {
				return b, err
			}
		}
	}
	r.metrics.finished.WithLabelValues(string(forge.StatusCanceled)).Inc()
	return b, nil
}

// Restart queues a new build of the same repository, commit, hook and
// action as the finished build id, with the same jobs. ECONFLICT when build
// id has not finished yet.
func (r *Runner) Restart(ctx context.Context, id int64) (*forge.Build, error) {
	old, err := r.opts.Builds.Build(ctx, id)
	if err != nil {
		return nil, err
	}
	if !old.Status.Done() {
		return nil, forge.Errorf(forge.ECONFLICT, "build %d is still %s: cancel it before restarting", id, old.Status)
	}
	oldJobs, err := r.opts.Builds.Jobs(ctx, id)
	if err != nil {
		return nil, err
	}
	nb := &forge.Build{
		RepoID:  old.RepoID,
		Action:  old.Action,
		Status:  forge.StatusQueued,
		Hook:    old.Hook,
		Created: time.Now().UTC(),
	}
	jobs := make([]*forge.BuildJob, len(oldJobs))
	for i, j := range oldJobs {
		jobs[i] = &forge.BuildJob{Name: j.Name, Needs: j.Needs, Status: forge.StatusQueued}
	}
	if err := r.opts.Builds.CreateBuild(ctx, nb, jobs); err != nil {
		return nil, err
	}
	r.publish(&forge.Change{Build: *nb, Jobs: jobs})
	r.Notify()
	return nb, nil
}

// workspace is build b's directory under WorkDir.
func (r *Runner) workspace(b *forge.Build) string {
	return filepath.Join(r.opts.WorkDir, fmt.Sprintf("build-%d", b.ID))
}
