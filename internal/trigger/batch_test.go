package trigger_test

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forgeci/forge/internal/pgtest"
	"github.com/forgeci/forge/internal/prometheus"
	"github.com/forgeci/forge/internal/testwait"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/git"
	"github.com/forgeci/forge/internal/github"
	"github.com/forgeci/forge/internal/sqldb"
	"github.com/forgeci/forge/internal/trigger"
)

// processed counts the "delivery processed" log records per delivery, over
// every processor that logs to it.
type processed struct {
	mu    sync.Mutex
	count map[string]int
}

func (c *processed) Enabled(context.Context, slog.Level) bool { return true }
func (c *processed) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *processed) WithGroup(string) slog.Handler            { return c }
func (c *processed) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "trigger: delivery processed" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "delivery" {
			c.mu.Lock()
			c.count[a.Value.String()]++
			c.mu.Unlock()
		}
		return true
	})
	return nil
}

// openStore opens a migrated database: SQLite in a temporary directory,
// or a database of its own on FORGE_TEST_POSTGRES_URL's server (skipped
// without it, failed then with CI=true).
func openStore(t *testing.T, kind string) *sqldb.DB {
	t.Helper()
	ctx := context.Background()
	cfg := sqldb.Config{DataDir: t.TempDir()}
	if kind == "postgres" {
		cfg = sqldb.Config{URL: pgtest.Database(t, "forge_trigger")}
	}
	db, err := sqldb.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Migrate(ctx, "up"); err != nil {
		t.Fatal(err)
	}
	return db
}

// TestReplicasProcessEachDeliveryOnce (issue 7.8): servers sharing one
// database claim each repository's deliveries, so every delivery is
// processed (fetched, compiled, logged) by exactly one of them, and built
// once.
func TestReplicasProcessEachDeliveryOnce(t *testing.T) {
	for _, kind := range []string{"sqlite", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			db := openStore(t, kind)
			e := newEnv(t, nil)
			e.db = db
			sha := e.up.commit("x", map[string]string{".forge.yml": dagSpec})
			ctx := context.Background()
			const repos, perRepo = 4, 6
			for r := range repos {
				for i := range perRepo {
					payload := e.payload("push.with-new-branch.payload.json", func(p map[string]any) {
						p["ref"], p["after"] = "refs/heads/master", sha
						repo := obj(p, "repository")
						repo["name"], repo["full_name"] = fmt.Sprint("app", r), fmt.Sprint("Codertocat/app", r)
					})
					d := &forge.Delivery{ID: fmt.Sprintf("r%d-%d", r, i), Event: "push", Payload: payload, Received: time.Now()}
					if err := db.CreateDelivery(ctx, d); err != nil {
						t.Fatal(err)
					}
				}
			}
			count := &processed{count: map[string]int{}}
			var procs []*trigger.Processor
			for i := range 3 {
				p, err := trigger.New(trigger.Options{
					Deliveries: db, Repos: db, Builds: db, Git: mustGit(t), ParseHook: github.ParseHook,
					Claims: db, ID: fmt.Sprint("server-", i), Batch: 5, Parallel: 2,
					Logger: slog.New(count),
				})
				if err != nil {
					t.Fatal(err)
				}
				procs = append(procs, p)
			}
			// Every server drains until nothing is pending: some find
			// repositories claimed by others and come back for them.
			var wg sync.WaitGroup
			for _, p := range procs {
				wg.Go(func() {
					var n int
					if err := testwait.Until(testwait.Scale(testwait.Patience), func() bool {
						if _, err := p.Drain(ctx); err != nil {
							t.Errorf("Drain: %v", err)
							return true
						}
						var err error
						n, _, err = db.DeliveryBacklog(ctx)
						return err != nil || n == 0
					}); err != nil {
						t.Errorf("%d deliveries still pending: %v", n, err)
					}
				})
			}
			wg.Wait()
			per := map[string]int{}
			bs, err := db.ListBuilds(ctx, forge.BuildFilter{Limit: forge.MaxBuildLimit})
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range bs {
				per[b.DeliveryID]++
			}
			for r := range repos {
				for i := range perRepo {
					id := fmt.Sprintf("r%d-%d", r, i)
					if count.count[id] != 1 || per[id] != 1 {
						t.Errorf("delivery %s processed %d times, built %d times; want once each", id, count.count[id], per[id])
					}
				}
			}
		})
	}
}

// TestClaimOfDeadServerTakenOver (issue 7.8): a repository claimed by a
// server that died waits until the claim expires, then another server
// takes it over and builds its deliveries.
func TestClaimOfDeadServerTakenOver(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	e := newEnv(t, nil)
	ctx := context.Background()
	proc, err := trigger.New(trigger.Options{
		Deliveries: e.db, Repos: e.db, Builds: e.db, Git: mustGit(t), ParseHook: github.ParseHook,
		Claims: e.db, ID: "alive", ClaimTTL: 30 * time.Second,
		Now: func() time.Time { return time.Unix(0, now.Load()) },
	})
	if err != nil {
		t.Fatal(err)
	}
	sha := e.up.commit("x", map[string]string{".forge.yml": dagSpec})
	t0 := time.Unix(0, now.Load())
	if held, err := e.db.ClaimDeliveries(ctx, "dead", "", []string{"Codertocat/Hello-World"}, t0, t0.Add(30*time.Second)); err != nil || len(held) != 1 {
		t.Fatalf("the dead server's claim: %v, %v", held, err)
	}
	if err := e.db.CreateDelivery(ctx, &forge.Delivery{ID: "left", Event: "push", Payload: e.push("master", sha, "x"), Received: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if n, err := proc.Drain(ctx); err != nil || n != 0 {
		t.Fatalf("Drain while the claim is live = %d, %v; want 0", n, err)
	}
	if d, _ := e.db.Delivery(ctx, "left"); !d.Processed.IsZero() {
		t.Fatal("a delivery of a claimed repository was processed")
	}
	now.Add(int64(31 * time.Second))
	if n, err := proc.Drain(ctx); err != nil || n != 1 {
		t.Fatalf("Drain after the claim expired = %d, %v; want 1", n, err)
	}
	if d, _ := e.db.Delivery(ctx, "left"); d.Result != "builds created: execute #1" {
		t.Errorf("result = %q", d.Result)
	}
	// A later process of the same server (same home) takes over what an
	// earlier one left at once, without waiting for the expiry.
	t1 := time.Unix(0, now.Load())
	if held, err := e.db.ClaimDeliveries(ctx, "host:abc:1:x", "host:abc:", []string{"Codertocat/Hello-World"}, t1, t1.Add(time.Hour)); err != nil || len(held) != 1 {
		t.Fatalf("the earlier process's claim: %v, %v", held, err)
	}
	if err := e.db.CreateDelivery(ctx, &forge.Delivery{ID: "left-by-me", Event: "push", Payload: e.push("master", sha, "x"), Received: time.Now()}); err != nil {
		t.Fatal(err)
	}
	later, err := trigger.New(trigger.Options{
		Deliveries: e.db, Repos: e.db, Builds: e.db, Git: mustGit(t), ParseHook: github.ParseHook,
		Claims: e.db, ID: "host:abc:2:y", Home: "host:abc:",
		Now: func() time.Time { return time.Unix(0, now.Load()) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := later.Drain(ctx); err != nil || n != 1 {
		t.Fatalf("Drain by a later process of the claim's server = %d, %v; want 1", n, err)
	}
	// Released when done: the next server need not wait.
	if held, err := e.db.ClaimDeliveries(ctx, "other", "", []string{"Codertocat/Hello-World"}, time.Unix(0, now.Load()), time.Unix(0, now.Load()).Add(time.Second)); err != nil || len(held) != 1 {
		t.Errorf("claim after the processor finished: %v, %v; want it free", held, err)
	}
}

// TestBurstFetchesOncePerRepository (issue 8.7): a burst of pushes of
// different commits to one repository costs a few git commands in all,
// not a few per delivery, and every push is built.
func TestBurstFetchesOncePerRepository(t *testing.T) {
	realGit, err := exec.LookPath("git")
	if err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	bin := filepath.Join(dir, "git")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho \"$1\" >> "+runs+"\nexec "+realGit+" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, git.Options{Binary: bin}, nil)
	ctx := context.Background()
	const n = 60
	for i := range n {
		sha := e.up.commit(fmt.Sprint("c", i), map[string]string{".forge.yml": dagSpec, "f": fmt.Sprint(i)})
		d := &forge.Delivery{ID: fmt.Sprint("push-", i), Event: "push", Payload: e.push("master", sha, "c"), Received: time.Now().Add(time.Duration(i) * time.Microsecond)}
		if err := e.db.CreateDelivery(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := e.proc.Drain(ctx); err != nil || got != n {
		t.Fatalf("Drain = %d, %v; want %d", got, err, n)
	}
	data, _ := os.ReadFile(runs)
	calls := strings.Fields(string(data))
	// Making the mirror (init, three configs), then: which commits are
	// missing, one fetch, keep them, and the specs read in two.
	if len(calls) > 10 {
		t.Errorf("%d deliveries ran git %d times (%v), want at most 10", n, len(calls), calls)
	}
	if fetches := strings.Count(string(data), "fetch\n"); fetches != 1 {
		t.Errorf("%d fetches for one repository's burst, want 1", fetches)
	}
	bs := e.builds()
	if len(bs) != n {
		t.Fatalf("%d builds for %d pushes", len(bs), n)
	}
	for i, b := range bs {
		if b.Number != int64(i+1) || b.DeliveryID != fmt.Sprint("push-", i) || b.Status != forge.StatusQueued {
			t.Errorf("build %d = #%d of %s, %s; want #%d of push-%d, queued (oldest first)", i, b.Number, b.DeliveryID, b.Status, i+1, i)
		}
	}
}

// TestBacklogMetrics (issue 8.7): the backlog is exported, counted in
// the store when scraped.
func TestBacklogMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	e := newEnv(t, func(o *trigger.Options) {
		o.Registerer = reg
		o.Now = func() time.Time { return time.Unix(0, now.Load()) }
	})
	ctx := context.Background()
	sha := e.up.commit("x", map[string]string{".forge.yml": dagSpec})
	received := time.Unix(0, now.Load())
	for i := range 3 {
		if err := e.db.CreateDelivery(ctx, &forge.Delivery{ID: fmt.Sprint("m", i), Event: "push", Payload: e.push("master", sha, "x"), Received: received.Add(time.Duration(i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	now.Add(int64(90 * time.Second))
	// The store keeps microseconds.
	if got := gauges(t, reg); got["forge_deliveries_pending"] != 3 || math.Abs(got["forge_deliveries_oldest_pending_seconds"]-90) > 0.001 {
		t.Errorf("metrics = %v, want 3 pending, the oldest 90s old", got)
	}
	if _, err := e.proc.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if got := gauges(t, reg); got["forge_deliveries_pending"] != 0 || got["forge_deliveries_oldest_pending_seconds"] != 0 {
		t.Errorf("metrics after draining = %v, want 0 and 0", got)
	}
}

// gauges gathers reg's gauges by name.
func gauges(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out[mf.GetName()] = m.GetGauge().GetValue()
		}
	}
	return out
}
