package runner_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/runner"
	"github.com/forgeci/forge/internal/sqldb"
	"github.com/forgeci/forge/internal/testwait"
)

// fast makes a runner heartbeat every 100ms and recover every
// staleWindow. A live runner's build looks stale only after thirty missed
// heartbeats: a loaded machine running the race detector delays a ticker
// by hundreds of milliseconds and a heartbeat's write (stamped before it
// waits for SQLite's lock) by more than a second; a window of 1s made
// replicas end each other's live builds there (TestTwoRunnersNeverRunABuildTwice).
func fast(o *runner.Options) { o.Heartbeat, o.Stale = 100*time.Millisecond, staleWindow }

// staleWindow is fast's Stale (FORGE_TEST_WAIT_SCALE scales it).
var staleWindow = testwait.Scale(3 * time.Second)

// eachDB runs fn on SQLite, and on PostgreSQL when it is configured.
func eachDB(t *testing.T, fn func(t *testing.T, db *sqldb.DB)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, openDB(t)) })
	t.Run("postgres", func(t *testing.T) { fn(t, openPostgres(t)) })
}

// markRunning makes build b look claimed by runner, last stamped at beat.
func markRunning(t testing.TB, db *sqldb.DB, b *forge.Build, runnerID string, beat time.Time) {
	t.Helper()
	b.Status, b.Started, b.Runner, b.Heartbeat = forge.StatusRunning, time.Now(), runnerID, beat
	if err := db.UpdateBuild(context.Background(), b); err != nil {
		t.Fatal(err)
	}
}

// TestLiveReplicaBuildIsNotRecovered: a runner that starts while another
// runs a build, and recovers every staleWindow, never ends that build, whose
// heartbeat keeps advancing.
func TestLiveReplicaBuildIsNotRecovered(t *testing.T) {
	eachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		repo := makeRepo(t, db, "app")
		first := newRunner(t, db, planOf("block"), fast)
		b := queue(t, db, repo, "test")
		first.start(t)
		waitStatus(t, db, b.ID, forge.StatusRunning)
		waitActive(t, first, 1)
		claimed, err := db.Build(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if claimed.Runner != first.runner.ID() || claimed.Heartbeat.IsZero() {
			t.Fatalf("claimed build: runner %q heartbeat %v, want runner %q and a heartbeat", claimed.Runner, claimed.Heartbeat, first.runner.ID())
		}

		second := newRunner(t, db, planOf("echo hi"), fast)
		if second.runner.ID() == first.runner.ID() {
			t.Fatalf("two runners share the ID %q", first.runner.ID())
		}
		second.start(t)
		// Nothing happens to show: let each recover three times.
		time.Sleep(3 * staleWindow)
		if n, err := second.runner.Recover(ctx); err != nil || n != 0 {
			t.Fatalf("Recover by the second runner: ended %d, %v; want 0", n, err)
		}
		cur, err := db.Build(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if cur.Status != forge.StatusRunning || cur.Runner != first.runner.ID() || cur.Version != claimed.Version {
			t.Fatalf("the live replica's build: %s %q runner %q version %d; want running, untouched (version %d)",
				cur.Status, cur.Error, cur.Runner, cur.Version, claimed.Version)
		}
		if !cur.Heartbeat.After(claimed.Heartbeat.Add(staleWindow)) {
			t.Errorf("heartbeat went from %v to %v in 3 stale windows: want it refreshed every 100ms", claimed.Heartbeat, cur.Heartbeat)
		}
		if n := first.be.active.Load(); n != 1 {
			t.Errorf("%d jobs running on the first runner, want 1", n)
		}
		close(first.be.release)
		if got := waitBuild(t, db, b.ID); got.Status != forge.StatusSuccess {
			t.Errorf("build = %s %q, want success", got.Status, got.Error)
		}
	})
}

// frozen is a build store whose heartbeats can be stopped, as when a
// server hangs or loses the database while its builds look running.
type frozen struct {
	*sqldb.DB
	stopped atomic.Bool
}

func (f *frozen) TouchBuilds(ctx context.Context, runner string, ids []int64, at time.Time) error {
	if f.stopped.Load() {
		return nil
	}
	return f.DB.TouchBuilds(ctx, runner, ids, at)
}

// TestStaleBuildIsRecovered: when a runner's heartbeat stops, another
// ends its build as "server restarted" within a few periods, and the
// runner that still had it kills its job.
func TestStaleBuildIsRecovered(t *testing.T) {
	eachDB(t, func(t *testing.T, db *sqldb.DB) {
		repo := makeRepo(t, db, "app")
		store := &frozen{DB: db}
		hung := newRunner(t, db, planOf("block"), func(o *runner.Options) { fast(o); o.Builds = store })
		b := queue(t, db, repo, "test")
		hung.start(t)
		waitStatus(t, db, b.ID, forge.StatusRunning)
		waitActive(t, hung, 1)
		other := newRunner(t, db, planOf("echo hi"), fast)
		other.start(t)
		time.Sleep(staleWindow + staleWindow/2) // more than one recovery period
		if cur, _ := db.Build(context.Background(), b.ID); cur.Status != forge.StatusRunning {
			t.Fatalf("build %s %q while its runner heartbeats, want running", cur.Status, cur.Error)
		}
		stopped := time.Now()
		store.stopped.Store(true)
		got := waitBuild(t, db, b.ID)
		if got.Status != forge.StatusError || got.Error != "server restarted" {
			t.Fatalf("build of the hung runner = %s %q, want error server restarted", got.Status, got.Error)
		}
		// Stale after one window, seen at the next recovery: about two
		// windows; ten is room for a loaded machine, and still far below
		// the server's 30s.
		if d := time.Since(stopped); d > 10*staleWindow {
			t.Errorf("recovered %v after the heartbeat stopped, want within a few %v periods", d, staleWindow)
		}
		// The hung runner kills the job of a build another runner ended.
		waitActive(t, hung, 0)
		// Both runners record the job's end (the hung one as cancelled,
		// when it notices): it must not be left running.
		waitJobsEnded(t, db, b.ID)
	})
}

// TestRecoverStaleAndMissingHeartbeats: at start and periodically, a
// runner ends running builds whose heartbeat is stale or missing, and
// those of an earlier process with its WorkDir, but no build with a fresh
// heartbeat of another runner.
func TestRecoverStaleAndMissingHeartbeats(t *testing.T) {
	eachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		repo := makeRepo(t, db, "app")
		work := filepath.Join(t.TempDir(), "work")
		earlier, err := runner.New(runner.Options{Builds: db, Repos: db, Logs: db, Git: &checkout{}, Planner: planOf(), Executor: runner.Engine{}, WorkDir: work})
		if err != nil {
			t.Fatal(err)
		}
		stale, none, fresh, previous := queue(t, db, repo, "test"), queue(t, db, repo, "test"), queue(t, db, repo, "test"), queue(t, db, repo, "test")
		markRunning(t, db, stale, "gone-host:0:1:x", time.Now().Add(-time.Hour))
		markRunning(t, db, none, "", time.Time{})
		markRunning(t, db, fresh, "live-host:0:1:x", time.Now().Add(time.Hour)) // stays fresh through the test
		markRunning(t, db, previous, earlier.ID(), time.Now())

		s := newRunner(t, db, planOf("echo hi"), func(o *runner.Options) { fast(o); o.WorkDir = work })
		s.start(t)
		for _, b := range []*forge.Build{stale, none, previous} {
			if got := waitBuild(t, db, b.ID); got.Status != forge.StatusError || got.Error != "server restarted" {
				t.Errorf("build %d = %s %q, want error server restarted", b.ID, got.Status, got.Error)
			}
		}
		// A server dies after this one started: its build goes stale.
		// (Created running: a queued one could be claimed first.)
		later := &forge.Build{RepoID: repo.ID, Action: "execute", Status: forge.StatusRunning, Hook: forge.Hook{Repo: *repo},
			Started: time.Now(), Runner: "dies-later:0:1:x", Heartbeat: time.Now().Add(-time.Second)}
		if err := db.CreateBuild(ctx, later, []*forge.BuildJob{{Name: "test", Status: forge.StatusRunning}}); err != nil {
			t.Fatal(err)
		}
		if got := waitBuild(t, db, later.ID); got.Status != forge.StatusError || got.Error != "server restarted" {
			t.Errorf("build that went stale later = %s %q, want error server restarted", got.Status, got.Error)
		}
		if cur, err := db.Build(ctx, fresh.ID); err != nil || cur.Status != forge.StatusRunning || cur.Version != fresh.Version {
			t.Errorf("build with a fresh heartbeat: %+v, %v; want running, untouched", cur, err)
		}
	})
}

// TestConcurrentRecoverEndsEachBuildOnce: runners recovering at once end
// every stale build exactly once between them.
func TestConcurrentRecoverEndsEachBuildOnce(t *testing.T) {
	eachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		repo := makeRepo(t, db, "app")
		const n = 30
		var builds []*forge.Build
		for range n {
			b := queue(t, db, repo, "test", "lint")
			markRunning(t, db, b, "gone-host:0:1:x", time.Now().Add(-time.Hour))
			builds = append(builds, b)
		}
		runners := []*setup{newRunner(t, db, planOf(), fast), newRunner(t, db, planOf(), fast), newRunner(t, db, planOf(), fast)}
		counts := make([]int, len(runners))
		var wg sync.WaitGroup
		for i, s := range runners {
			wg.Go(func() {
				var err error
				if counts[i], err = s.runner.Recover(ctx); err != nil {
					t.Errorf("Recover: %v", err)
				}
			})
		}
		wg.Wait()
		if total := counts[0] + counts[1] + counts[2]; total != n {
			t.Errorf("the runners ended %v builds, %d in all; want %d in all", counts, total, n)
		}
		for _, b := range builds {
			got, err := db.Build(ctx, b.ID)
			if err != nil {
				t.Fatal(err)
			}
			// Created, claimed, ended: one write each.
			if got.Status != forge.StatusError || got.Error != "server restarted" || got.Version != b.Version+1 {
				t.Errorf("build %d = %s %q version %d, want error server restarted, version %d", b.ID, got.Status, got.Error, got.Version, b.Version+1)
			}
			jobs, _ := db.Jobs(ctx, b.ID)
			for _, j := range jobs {
				if j.Status != forge.StatusError || j.Error != "server restarted" {
					t.Errorf("build %d job %s = %s %q, want error server restarted", b.ID, j.Name, j.Status, j.Error)
				}
			}
		}
	})
}

func TestStaleMustExceedTwoHeartbeats(t *testing.T) {
	db := openDB(t)
	_, err := runner.New(runner.Options{Builds: db, Repos: db, Logs: db, Git: &checkout{}, Planner: planOf(), Executor: runner.Engine{},
		WorkDir: t.TempDir(), Heartbeat: time.Second, Stale: 1500 * time.Millisecond})
	if err == nil {
		t.Fatal("New accepted a Stale shorter than two heartbeats")
	}
}

// TestRecoverKeepsWhatFinished (issue 7.5): a build whose jobs had all
// finished when its server died ends with the status they give, not
// "server restarted"; in a build that was still running, finished jobs
// keep their status, the running one fails and the one that never
// started is cancelled.
func TestRecoverKeepsWhatFinished(t *testing.T) {
	eachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		repo := makeRepo(t, db, "app")
		setJob := func(j *forge.BuildJob, st forge.Status, started bool) {
			t.Helper()
			j.Status = st
			if started {
				j.Started = time.Now()
			}
			if st.Done() {
				j.Finished = time.Now()
			}
			if err := db.UpdateJob(ctx, j); err != nil {
				t.Fatal(err)
			}
		}
		jobsOf := func(b *forge.Build) []*forge.BuildJob {
			t.Helper()
			js, err := db.Jobs(ctx, b.ID)
			if err != nil {
				t.Fatal(err)
			}
			return js
		}

		// The only job succeeded; the server died before the build's row
		// said so.
		done := queue(t, db, repo, "test")
		markRunning(t, db, done, "gone-host:0:1:x", time.Now().Add(-time.Hour))
		setJob(jobsOf(done)[0], forge.StatusSuccess, true)
		// One job failed, the other succeeded.
		failed := queue(t, db, repo, "test", "lint")
		markRunning(t, db, failed, "gone-host:0:1:x", time.Now().Add(-time.Hour))
		setJob(jobsOf(failed)[0], forge.StatusFailure, true)
		setJob(jobsOf(failed)[1], forge.StatusSuccess, true)
		// Still running: build finished, deploy running, notify waiting for it.
		running := queue(t, db, repo, "build", "deploy", "notify")
		markRunning(t, db, running, "gone-host:0:1:x", time.Now().Add(-time.Hour))
		js := jobsOf(running)
		setJob(js[0], forge.StatusSuccess, true)
		setJob(js[1], forge.StatusRunning, true)
		setJob(js[2], forge.StatusPending, false)

		s := newRunner(t, db, planOf(), fast)
		if n, err := s.runner.Recover(ctx); err != nil || n != 3 {
			t.Fatalf("Recover = %d, %v; want 3", n, err)
		}
		for _, tt := range []struct {
			b      *forge.Build
			status forge.Status
			err    string
			jobs   []string
		}{
			{done, forge.StatusSuccess, "", []string{"test success "}},
			{failed, forge.StatusFailure, "", []string{"test failure ", "lint success "}},
			{running, forge.StatusError, "server restarted", []string{"build success ", "deploy error server restarted",
				"notify canceled server restarted before the job started"}},
		} {
			got, err := db.Build(ctx, tt.b.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != tt.status || got.Error != tt.err || got.Finished.IsZero() {
				t.Errorf("build %d = %s %q (finished %v), want %s %q", got.ID, got.Status, got.Error, got.Finished, tt.status, tt.err)
			}
			var jobs []string
			for _, j := range jobsOf(got) {
				jobs = append(jobs, fmt.Sprintf("%s %s %s", j.Name, j.Status, j.Error))
			}
			if !slices.Equal(jobs, tt.jobs) {
				t.Errorf("build %d jobs = %q, want %q", got.ID, jobs, tt.jobs)
			}
		}
	})
}
