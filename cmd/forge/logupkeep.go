package main

import (
	"context"
	"log/slog"
	"time"

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
