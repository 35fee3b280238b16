package runner

import (
	"context"
	"fmt"
	"time"

	"github.com/forgeci/forge"
)

// Recover ends the builds a previous server left running. The local backend
// cannot reattach to a job whose server died (its processes died with it),
// so every unfinished job of such a build is marked error "server
// restarted", and so is the build: no build stays running forever. Queued
// builds are left alone: they simply run. It returns how many builds it
// ended.
//
// Run calls Recover first. It assumes that every running build in the
// database was started by a server that is no longer running: with several
// servers sharing one database, run it only when no other server is up.
func (r *Runner) Recover(ctx context.Context) (int, error) {
	n := 0
	var before int64
	for {
		list, err := r.opts.Builds.ListBuilds(ctx, forge.BuildFilter{Status: forge.StatusRunning, Before: before, Limit: 100})
		if err != nil {
			return n, fmt.Errorf("runner: listing builds left running: %w", err)
		}
		for _, b := range list {
			if err := r.recoverBuild(ctx, b); err != nil {
				return n, err
			}
			n++
		}
		if len(list) < 100 {
			break
		}
		before = list[len(list)-1].ID
	}
	if n > 0 {
		r.log.Warn("ended builds left running by a previous server", "builds", n)
	}
	return n, nil
}

func (r *Runner) recoverBuild(ctx context.Context, b *forge.Build) error {
	reason := ErrServerRestart.Error()
	jobs, err := r.opts.Builds.Jobs(ctx, b.ID)
	if err != nil {
		return fmt.Errorf("runner: recovering build %d: %w", b.ID, err)
	}
	now := time.Now().UTC()
	for _, j := range jobs {
		for _, s := range j.Steps {
			if !s.Status.Done() {
				s.Status, s.Finished = forge.StatusError, now
				if err := r.opts.Builds.SaveStep(ctx, s); err != nil {
					return fmt.Errorf("runner: recovering build %d: %w", b.ID, err)
				}
			}
		}
		if j.Status.Done() {
			continue
		}
		// Even a job recorded as queued may have started: its status is
		// written a moment after it changes.
		j.Status, j.Error, j.Finished = forge.StatusError, reason, now
		if err := r.opts.Builds.UpdateJob(ctx, j); err != nil {
			return fmt.Errorf("runner: recovering build %d: %w", b.ID, err)
		}
	}
	for attempt := 0; ; attempt++ {
		b.Status, b.Error, b.Finished = forge.StatusError, reason, now
		err := r.opts.Builds.UpdateBuild(ctx, b)
		if err == nil {
			r.metrics.finished.WithLabelValues(string(forge.StatusError)).Inc()
			return nil
		}
		if forge.ErrorCode(err) != forge.ECONFLICT || attempt == 5 {
			return fmt.Errorf("runner: recovering build %d: %w", b.ID, err)
		}
		cur, err := r.opts.Builds.Build(ctx, b.ID)
		if err != nil {
			return fmt.Errorf("runner: recovering build %d: %w", b.ID, err)
		}
		if cur.Status.Done() {
			return nil
		}
		b = cur
	}
}
