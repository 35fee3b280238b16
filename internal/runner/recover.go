package runner

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/forgeci/forge"
)

// heartbeat stamps the builds this runner runs as alive every
// Options.Heartbeat, with one TouchBuilds call, until ctx ends.
func (r *Runner) heartbeat(ctx context.Context) {
	t := time.NewTicker(r.opts.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ids := r.Running()
		if len(ids) == 0 {
			continue
		}
		if err := r.opts.Builds.TouchBuilds(ctx, r.id, ids, time.Now().UTC()); err != nil && ctx.Err() == nil {
			// The next beat tries again; only Options.Stale without one
			// makes the builds look dead.
			r.log.Error("heartbeat of running builds", "builds", len(ids), "err", err)
		}
	}
}

// recoverEvery runs Recover every Options.Stale until ctx ends, so the
// builds of a server that dies are ended while the others run on.
func (r *Runner) recoverEvery(ctx context.Context) {
	t := time.NewTicker(r.opts.Stale)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := r.Recover(ctx); err != nil && ctx.Err() == nil {
			r.log.Error("recovering builds of dead servers", "err", err)
		}
	}
}

// Recover ends, or with Options.Reattach continues, the running builds
// whose server is gone: those whose
// heartbeat is older than Options.Stale or missing (rows from before
// heartbeats), and those a previous process of this runner (same host and
// WorkDir, see Options.ID) left behind. Builds of live servers, this one's
// included, are never touched, so it is safe while other servers share the
// database. The local backend cannot reattach to a job whose server died
// (its processes died with it), so every unfinished job of such a build is
// ended, and so is the build: no build stays running forever. What had
// finished is kept (see recoverBuild). With Options.Reattach the backend's
// jobs outlive their server: such a build is claimed by this runner and
// continued instead, the jobs still running followed again from where
// their stored log stops (see recorder.resume). Queued builds are left
// alone: they simply run.
//
// Each build is ended with its row's optimistic lock, so of several
// runners recovering at once one ends it and the others leave it. Recover
// returns how many builds it ended itself. Run calls it at start and every
// Options.Stale.
func (r *Runner) Recover(ctx context.Context) (int, error) {
	n := 0
	cutoff := time.Now().Add(-r.opts.Stale)
	var before int64
	for {
		list, err := r.opts.Builds.ListBuilds(ctx, forge.BuildFilter{Status: forge.StatusRunning, Before: before, Limit: 100})
		if err != nil {
			return n, fmt.Errorf("runner: listing running builds: %w", err)
		}
		for _, b := range list {
			if !r.abandoned(b, cutoff) {
				continue
			}
			if r.opts.Reattach {
				resumed, err := r.resumeBuild(ctx, b)
				if err != nil {
					return n, err
				}
				if resumed {
					n++
				}
				continue
			}
			ended, err := r.recoverBuild(ctx, b)
			if err != nil {
				return n, err
			}
			if ended {
				n++
			}
		}
		if len(list) < 100 {
			break
		}
		before = list[len(list)-1].ID
	}
	if n > 0 {
		r.log.Warn("ended builds left running by a server that is gone", "builds", n)
	}
	return n, nil
}

// abandoned reports whether the running build b was left by a server that
// is gone, given that a live one stamped its builds after cutoff.
func (r *Runner) abandoned(b *forge.Build, cutoff time.Time) bool {
	if b.Runner == r.id {
		r.mu.Lock()
		_, ours := r.running[b.ID]
		r.mu.Unlock()
		if ours {
			return false // even if a heartbeat failed: it runs here
		}
	}
	if r.home != "" && strings.HasPrefix(b.Runner, r.home) && b.Runner != r.id {
		return true // a previous process of this runner
	}
	return b.Heartbeat.IsZero() || b.Heartbeat.Before(cutoff)
}

// recoverBuild ends the abandoned build b, then its unfinished jobs and
// steps. What had finished stays as it was recorded: a build whose jobs
// had all finished when its server died ends with the status they give
// (its server died before writing it); otherwise it ends as error "server
// restarted", its jobs that may have been running (queued, waiting,
// running) as error, those that never started (pending) as cancelled. It
// reports false when the build changed since it was read (another runner
// recovered it, its server finished it, someone cancelled it): then it
// leaves it alone.
func (r *Runner) recoverBuild(ctx context.Context, b *forge.Build) (bool, error) {
	reason := ErrServerRestart.Error()
	now := time.Now().UTC()
	jobs, err := r.opts.Builds.Jobs(ctx, b.ID)
	if err != nil {
		return false, fmt.Errorf("runner: recovering build %d: %w", b.ID, err)
	}
	// The build first, with its lock: only the runner that wins it goes
	// on to the jobs, so two recovering runners never both act.
	b.Status, b.Error = recoveredStatus(jobs, reason)
	b.Finished = now
	if err := r.opts.Builds.UpdateBuild(ctx, b); err != nil {
		if forge.ErrorCode(err) == forge.ECONFLICT {
			return false, nil
		}
		return false, fmt.Errorf("runner: recovering build %d: %w", b.ID, err)
	}
	r.metrics.finished.WithLabelValues(string(b.Status)).Inc()
	for _, j := range jobs {
		for _, s := range j.Steps {
			if !s.Status.Done() {
				s.Status, s.Finished = forge.StatusError, now
				if err := r.opts.Builds.SaveStep(ctx, s); err != nil {
					return true, fmt.Errorf("runner: recovering build %d: %w", b.ID, err)
				}
			}
		}
		if j.Status.Done() {
			continue
		}
		if j.Status == forge.StatusPending && j.Started.IsZero() {
			j.Status, j.Error = forge.StatusCanceled, reason+" before the job started"
		} else {
			// Even a job recorded as queued may have started: its status
			// is written a moment after it changes.
			j.Status, j.Error = forge.StatusError, reason
		}
		j.Finished = now
		if err := r.opts.Builds.UpdateJob(ctx, j); err != nil {
			return true, fmt.Errorf("runner: recovering build %d: %w", b.ID, err)
		}
	}
	r.publishBuild(b)
	return true, nil
}

// recoveredStatus is the status and error of a build whose server died,
// from its jobs as recorded: when every job had finished, what they give
// (as the engine would have: failure, else error, else cancelled, else
// success) with the first failed job's error; otherwise error, reason.
func recoveredStatus(jobs []*forge.BuildJob, reason string) (forge.Status, string) {
	if len(jobs) == 0 {
		return forge.StatusError, reason
	}
	var failed, errored, canceled bool
	var errMsg, cancelMsg string
	for _, j := range jobs {
		switch j.Status {
		case forge.StatusSuccess, forge.StatusSkipped:
		case forge.StatusFailure:
			failed = true
		case forge.StatusError:
			errored = true
			if errMsg == "" && j.Error != "" {
				errMsg = "job " + j.Name + ": " + j.Error
			}
		case forge.StatusCanceled:
			canceled = true
			if cancelMsg == "" {
				cancelMsg = j.Error
			}
		default:
			return forge.StatusError, reason
		}
	}
	switch {
	case failed:
		return forge.StatusFailure, ""
	case errored:
		return forge.StatusError, errMsg
	case canceled:
		return forge.StatusCanceled, cmp.Or(cancelMsg, "canceled")
	}
	return forge.StatusSuccess, ""
}
