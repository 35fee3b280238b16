package main

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/backend/local"
	"github.com/forgeci/forge/internal/livelog"
	"github.com/forgeci/forge/internal/runner"
	"github.com/forgeci/forge/internal/sqldb"
)

// BenchmarkIngestMillionLines is issue 11's ingest target: a job printing
// 1,000,000 lines (`seq 1 1000000`) through the runner and the local
// backend, with the live log hub, as in production, timed until the build
// is recorded finished: its lines stored in SQLite ("stored"), against
// the same job whose lines the same backend and runner read and then drop
// (a log store that discards, "discarded": the store's share is the
// difference), and against `seq 1 1000000 > /dev/null` (the process
// alone). The target is stored/discarded <= 1.1. Each iteration runs one
// of each, rotating which goes first.
//
//	go test -run '^$' -bench IngestMillionLines -benchtime 3x ./cmd/forge
func BenchmarkIngestMillionLines(b *testing.B) {
	var stored, discarded, devnull time.Duration
	for i := 0; i < b.N; i++ {
		runs := []struct {
			cmd     string
			lines   int
			discard bool
			into    *time.Duration
		}{
			{"seq 1 1000000", 1000000, false, &stored},
			{"seq 1 1000000", 0, true, &discarded},
			{"seq 1 1000000 > /dev/null", 0, false, &devnull},
		}
		for k := range runs {
			r := runs[(k+i)%len(runs)]
			*r.into += ingestRun(b, r.cmd, r.lines, r.discard)
		}
	}
	n := float64(b.N)
	b.ReportMetric(stored.Seconds()/n, "stored-s")
	b.ReportMetric(discarded.Seconds()/n, "discarded-s")
	b.ReportMetric(devnull.Seconds()/n, "devnull-s")
	b.ReportMetric(stored.Seconds()/discarded.Seconds(), "ratio")
}

// discardLogs is a log store that drops what it is given.
type discardLogs struct{ forge.LogStore }

func (discardLogs) Append(context.Context, int64, []forge.LogLine) error { return nil }

// ingestRun runs a build of one job, one step cmd, and returns how long it
// took from the runner's start until the build was recorded finished; the
// job's log must then hold lines lines.
func ingestRun(b *testing.B, cmd string, lines int, discard bool) time.Duration {
	b.Helper()
	b.StopTimer()
	defer b.StartTimer()
	ctx := context.Background()
	dir := b.TempDir()
	db, err := sqldb.Open(ctx, sqldb.Config{DataDir: dir})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Migrate(ctx, "up"); err != nil {
		b.Fatal(err)
	}
	repo := &forge.Repo{Owner: "acme", Name: "app", CloneURL: "file:///nowhere", DefaultBranch: "main"}
	if err := db.UpsertRepo(ctx, repo); err != nil {
		b.Fatal(err)
	}
	build := &forge.Build{RepoID: repo.ID, Action: "execute", Status: forge.StatusQueued,
		Hook: forge.Hook{Event: "push", Repo: *repo, Ref: "refs/heads/main", Branch: "main", SHA: "0123456789abcdef0123456789abcdef01234567"}}
	jobs := []*forge.BuildJob{{Name: "seq", Status: forge.StatusQueued}}
	if err := db.CreateBuild(ctx, build, jobs); err != nil {
		b.Fatal(err)
	}
	plan := &forge.Plan{Action: "execute", Jobs: []*forge.Job{{Name: "seq", Steps: []forge.Step{{Run: cmd}}}}}
	hub := livelog.New()
	var logs forge.LogStore = db
	if discard {
		logs = discardLogs{db}
	}
	r, err := runner.New(runner.Options{
		Builds: db, Repos: db, Logs: logs, Live: hub,
		Git: checkoutFunc(func(ctx context.Context, _ *forge.Repo, _, dir string) error {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			git := exec.CommandContext(ctx, "sh", "-c", "git init -q && git -c user.name=b -c user.email=b@b commit -q --allow-empty -m empty")
			git.Dir = dir
			return git.Run()
		}),
		Planner: runner.PlannerFunc(func(context.Context, string, *forge.Build) (*forge.Plan, error) {
			return plan, nil
		}),
		Executor: runner.Engine{Backend: local.New(local.Options{})},
		Backend:  "local",
		WorkDir:  dir + "/work",
		Poll:     10 * time.Millisecond,
	})
	if err != nil {
		b.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	b.StartTimer()
	start := time.Now()
	go func() { done <- r.Run(rctx) }()
	for {
		got, err := db.Build(ctx, build.ID)
		if err != nil {
			b.Fatal(err)
		}
		if got.Status.Done() {
			if got.Status != forge.StatusSuccess {
				b.Fatalf("build: %s %s", got.Status, got.Error)
			}
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	cancel()
	<-done
	if n, err := db.LogLen(ctx, jobs[0].ID); err != nil || n < lines {
		b.Fatalf("%s: stored %d lines, want %d (%v)", cmd, n, lines, err)
	}
	return elapsed
}
