package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/engine"
)

// finalWrite bounds the database writes that record how a build ended;
// they run even when the build's context is cancelled.
const finalWrite = 15 * time.Second

// checkoutTimeout bounds making a build's workspace; checkoutGrace is how
// long a checkout may go on after its build was cancelled.
const (
	checkoutTimeout = 30 * time.Minute
	checkoutGrace   = 10 * time.Second
)

// runBuild runs the claimed build b to its end and records the outcome.
func (r *Runner) runBuild(ctx context.Context, b *forge.Build, resume bool) {
	start := time.Now()
	log := r.log.With("build", b.ID, "repo_id", b.RepoID, "number", b.Number, "action", b.Action)
	if resume {
		log.Info("build continued: its server is gone", "sha", b.Hook.SHA, "ref", b.Hook.Ref)
	} else {
		log.Info("build started", "sha", b.Hook.SHA, "ref", b.Hook.Ref)
	}

	stopWatch := r.watch(ctx, b)
	status, msg := r.execute(ctx, b, log, resume)
	stopWatch()

	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalWrite)
	defer cancel()
	final := r.finish(wctx, b, status, msg)
	r.metrics.finished.WithLabelValues(string(final.Status)).Inc()
	log.Info("build finished", "status", final.Status, "error", final.Error, "duration", time.Since(start).Round(time.Millisecond))
}

// watch cancels ctx's build when its row is marked finished by someone
// else (a cancel through another server, a superseding build), checking
// every Options.Poll. The returned function stops the watch.
func (r *Runner) watch(ctx context.Context, b *forge.Build) (stop func()) {
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(r.opts.Poll)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
			}
			cur, err := r.opts.Builds.Build(wctx, b.ID)
			if err != nil || !cur.Status.Done() {
				continue
			}
			reason := cur.Error
			if reason == "" {
				reason = string(cur.Status)
			}
			r.mu.Lock()
			a := r.running[b.ID]
			r.mu.Unlock()
			if a != nil {
				a.cancel(errors.New(reason))
			}
			return
		}
	}()
	return func() { cancel(); <-done }
}

// execute makes the workspace, compiles and runs the plan, and returns the
// build's status and, unless it passed or failed on its own, why.
func (r *Runner) execute(ctx context.Context, b *forge.Build, log *slog.Logger, resume bool) (forge.Status, string) {
	repo, err := r.opts.Repos.Repo(ctx, b.RepoID)
	if err != nil {
		return r.aborted(ctx, forge.StatusError, "loading the repository: "+forge.ErrorMessage(err))
	}
	jobs, err := r.opts.Builds.Jobs(ctx, b.ID)
	if err != nil {
		return r.aborted(ctx, forge.StatusError, "loading the jobs: "+forge.ErrorMessage(err))
	}
	rec := newRecorder(r, b, jobs)
	rec.ctx = ctx
	defer rec.close()
	var resumed map[string]engine.Resumed
	if resume {
		if resumed, err = rec.resume(ctx); err != nil {
			return rec.abortAll(forge.StatusError, "continuing the build after a restart: "+forge.ErrorMessage(err))
		}
	}

	dir := r.workspace(b)
	_ = os.RemoveAll(dir) // a leftover of a server that died mid-build
	defer func() {
		if err := os.RemoveAll(dir); err != nil {
			log.Warn("removing workspace", "dir", dir, "err", err)
		}
	}()
	// The checkout is not cut short by a cancel at once: git killed while
	// it updates a ref leaves a lock file that blocks the mirror for every
	// later build. A cancelled build gives its checkout checkoutGrace to
	// finish (a fetch from a slow remote is cut then), then ends.
	cctx, cancelCheckout := context.WithTimeout(context.WithoutCancel(ctx), checkoutTimeout)
	stopGrace := context.AfterFunc(ctx, func() { time.AfterFunc(checkoutGrace, cancelCheckout) })
	err = r.opts.Git.Checkout(cctx, repo, b.Hook.SHA, dir)
	stopGrace()
	cancelCheckout()
	if st, msg, ok := r.canceled(ctx); ok {
		return rec.abortAll(st, msg)
	}
	if err != nil {
		if st, msg, ok := r.canceled(ctx); ok {
			return rec.abortAll(st, msg)
		}
		return rec.abortAll(forge.StatusError, fmt.Sprintf("checking out %s at %s: %s", repo.FullName(), forge.ShortSHA(b.Hook.SHA), errText(err)))
	}
	plan, err := r.opts.Planner.Plan(ctx, dir, b)
	if err != nil {
		if st, msg, ok := r.canceled(ctx); ok {
			return rec.abortAll(st, msg)
		}
		if forge.ErrorCode(err) == forge.EINVALID {
			return rec.abortAll(forge.StatusError, "the build spec is not valid:\n"+errText(err))
		}
		return rec.abortAll(forge.StatusError, "reading the build spec: "+errText(err))
	}
	if msg := rec.match(plan); msg != "" {
		return rec.abortAll(forge.StatusError, msg)
	}

	var secrets map[string]string
	if r.opts.Secrets != nil && b.Hook.Trusted() {
		if secrets, err = r.opts.Secrets(ctx, repo); err != nil {
			return rec.abortAll(forge.StatusError, "loading secrets: "+forge.ErrorMessage(err))
		}
	}
	run := &Run{
		Build:     b,
		Repo:      repo,
		Env:       r.env(b, repo),
		JobURL:    func(job string) string { return r.jobURL(b, repo, rec.jobID(job)) },
		Secrets:   secrets,
		Workspace: forge.Workspace{Dir: dir, Clean: true},
		Resume:    resumed,
	}
	status, err := r.opts.Executor.Execute(ctx, plan, run, rec)
	if st, msg, ok := r.canceled(ctx); ok {
		rec.closeOpen(st, msg)
		return st, msg
	}
	if err != nil {
		msg := "running the plan: " + errText(err)
		rec.closeOpen(forge.StatusError, msg)
		return forge.StatusError, msg
	}
	rec.closeOpen(forge.StatusCanceled, "the plan ended without running this job")
	if status == forge.StatusError {
		return status, rec.firstError()
	}
	return status, ""
}

// canceled reports whether ctx was cancelled and the status and reason to
// record then.
func (r *Runner) canceled(ctx context.Context) (forge.Status, string, bool) {
	if ctx.Err() == nil {
		return "", "", false
	}
	cause := context.Cause(ctx)
	if cause == nil || errors.Is(cause, context.Canceled) {
		return forge.StatusCanceled, "canceled", true
	}
	return forge.StatusCanceled, cause.Error(), true
}

// aborted is the outcome of a build that failed before it had jobs to
// record into.
func (r *Runner) aborted(ctx context.Context, st forge.Status, msg string) (forge.Status, string) {
	if cst, cmsg, ok := r.canceled(ctx); ok {
		return cst, cmsg
	}
	return st, msg
}

// finish records b's end; when someone else finished the row first (a
// cancel), their record stands. It returns the build as stored.
func (r *Runner) finish(ctx context.Context, b *forge.Build, st forge.Status, msg string) *forge.Build {
	for attempt := 0; attempt < 10; attempt++ {
		b.Status, b.Error, b.Finished = st, msg, time.Now().UTC()
		err := r.opts.Builds.UpdateBuild(ctx, b)
		if err == nil {
			r.publishBuild(b)
			return b
		}
		if forge.ErrorCode(err) != forge.ECONFLICT {
			r.log.Error("recording the end of a build", "build", b.ID, "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		cur, gerr := r.opts.Builds.Build(ctx, b.ID)
		if gerr != nil {
			r.log.Error("reloading a build", "build", b.ID, "err", gerr)
			continue
		}
		if cur.Status.Done() {
			return cur
		}
		b.Version = cur.Version
	}
	return b
}

// env is what every job of b sees (DESIGN.md part 4), as forge exec
// gives it too: forge.RunEnv is the one place that says it.
func (r *Runner) env(b *forge.Build, repo *forge.Repo) map[string]string {
	return forge.RunEnv{Build: b, Repo: repo, BuildID: strconv.FormatInt(b.ID, 10), StatusURL: r.buildURL(b, repo)}.Vars()
}

// jobURL is the page of job (row jobID) of b.
func (r *Runner) jobURL(b *forge.Build, repo *forge.Repo, jobID int64) string {
	u := r.buildURL(b, repo)
	if jobID > 0 {
		u += "/jobs/" + strconv.FormatInt(jobID, 10)
	}
	return u
}

// buildURL is the build's page: PUBLIC/OWNER/REPO/builds/NUMBER.
func (r *Runner) buildURL(b *forge.Build, repo *forge.Repo) string {
	return fmt.Sprintf("%s/%s/%s/builds/%d", strings.TrimRight(r.opts.PublicURL, "/"), repo.Owner, repo.Name, b.Number)
}

// errText is the whole text of err: spec errors list every problem.
func errText(err error) string { return err.Error() }
