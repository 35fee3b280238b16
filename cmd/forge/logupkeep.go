package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/sqldb"
)

// The log upkeep's pace: the indexer looks for newly finished jobs every
// indexIdle while it has nothing to do, and retention runs every
// pruneEvery (and once at start).
const (
	indexIdle  = 2 * time.Second
	indexBatch = 50000
	pruneEvery = time.Hour
)

// logUpkeep is what runLogUpkeep needs of the database.
type logUpkeep interface {
	IndexLogs(ctx context.Context, lines int) (int, error)
	PruneLogs(ctx context.Context, r sqldb.Retention) (int, error)
}

// runLogUpkeep indexes finished jobs' logs for the search across builds,
// off the builds' hot path, and deletes the logs retention does not keep,
// until ctx ends. Errors are logged and retried on the next round: the
// upkeep never stops the server.
func runLogUpkeep(ctx context.Context, db logUpkeep, keep sqldb.Retention, log *slog.Logger) error {
	log = log.With("component", "logs")
	prune := func() {
		if keep.Builds == 0 && keep.Days == 0 {
			return
		}
		n, err := db.PruneLogs(ctx, keep)
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("deleting old logs", "err", err, "deleted", n)
		case n > 0:
			log.Info("deleted old logs", "jobs", n, "keep_builds", keep.Builds, "keep_days", keep.Days)
		}
	}
	prune()
	lastPrune := time.Now()
	idle := time.NewTimer(0)
	defer idle.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-idle.C:
		}
		n, err := db.IndexLogs(ctx, indexBatch)
		if err != nil && ctx.Err() == nil {
			log.Warn("indexing logs for search", "err", err)
		}
		if time.Since(lastPrune) >= pruneEvery {
			prune()
			lastPrune = time.Now()
		}
		if n > 0 && err == nil {
			idle.Reset(0) // more may wait
		} else {
			idle.Reset(indexIdle)
		}
	}
}

// reportKeeper keeps what finished jobs' reports said, for the badges: it
// observes job changes and saves their summaries from a goroutine of its
// own, so the build never waits for the database. When the queue is full
// a summary is dropped (and logged): a badge then shows an older one.
type reportKeeper struct {
	db interface {
		SaveJobReport(ctx context.Context, r *forge.JobReport) error
	}
	queue chan *forge.JobReport
	log   *slog.Logger
}

func newReportKeeper(db *sqldb.DB, log *slog.Logger) *reportKeeper {
	return &reportKeeper{db: db, queue: make(chan *forge.JobReport, 1024), log: log.With("component", "reports")}
}

// Observe queues the report summary of a job that ended with reports.
func (k *reportKeeper) Observe(c *forge.Change) {
	if c.Job == nil || !c.Job.Status.Done() || c.Tests == nil && c.Coverage == nil {
		return
	}
	r := &forge.JobReport{JobID: c.Job.ID, Coverage: c.Coverage}
	if c.Tests != nil {
		r.Tests = &forge.TestSummary{Total: c.Tests.Total, Failed: c.Tests.Failed, Skipped: c.Tests.Skipped}
	}
	select {
	case k.queue <- r:
	default:
		k.log.Warn("report summaries queue full: dropped one", "job", c.Job.ID)
	}
}

// run saves queued summaries until ctx ends.
func (k *reportKeeper) run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-k.queue:
			if err := k.db.SaveJobReport(ctx, r); err != nil && ctx.Err() == nil {
				k.log.Warn("saving a job's report summary", "job", r.JobID, "err", err)
			}
		}
	}
}
