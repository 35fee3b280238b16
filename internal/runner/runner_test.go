package runner_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/pgtest"
	"github.com/forgeci/forge/internal/runner"
	"github.com/forgeci/forge/internal/sqldb"
	"github.com/forgeci/forge/internal/testwait"
)

// openDB opens a migrated SQLite database in a temporary directory.
func openDB(t testing.TB) *sqldb.DB {
	t.Helper()
	return openDBWith(t, sqldb.Config{DataDir: t.TempDir()})
}

// openPostgres opens a migrated PostgreSQL database of the test's own when
// FORGE_TEST_POSTGRES_URL is set; it skips otherwise, or fails with CI=true.
func openPostgres(t testing.TB) *sqldb.DB {
	t.Helper()
	return openDBWith(t, sqldb.Config{URL: pgtest.Database(t, "forge_runner")})
}

func openDBWith(t testing.TB, cfg sqldb.Config) *sqldb.DB {
	t.Helper()
	ctx := context.Background()
	db, err := sqldb.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Migrate(ctx, "up"); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return db
}

func makeRepo(t testing.TB, db *sqldb.DB, name string) *forge.Repo {
	t.Helper()
	r := &forge.Repo{Owner: "acme", Name: name, CloneURL: "file:///nowhere/" + name, DefaultBranch: "main"}
	if err := db.UpsertRepo(context.Background(), r); err != nil {
		t.Fatalf("upsert repo: %v", err)
	}
	return r
}

// queue stores a queued build of repo with jobs named names.
func queue(t testing.TB, db *sqldb.DB, repo *forge.Repo, names ...string) *forge.Build {
	t.Helper()
	b := &forge.Build{RepoID: repo.ID, Action: "execute", Status: forge.StatusQueued, Hook: forge.Hook{
		Event: "pull_request", Action: "opened", Repo: *repo, Ref: "refs/pull/7/head", Branch: "feature",
		Target: "main", SHA: "0123456789abcdef0123456789abcdef01234567", PullRequest: 7, CommitCount: 2,
	}}
	jobs := make([]*forge.BuildJob, len(names))
	for i, n := range names {
		jobs[i] = &forge.BuildJob{Name: n, Status: forge.StatusQueued}
	}
	if err := db.CreateBuild(context.Background(), b, jobs); err != nil {
		t.Fatalf("create build: %v", err)
	}
	return b
}

// backend is a scripted forge.Backend: each step's Run says what to do:
// "echo TEXT" prints TEXT, "fail" exits 1, "block" waits for ctx or for
// release, "hold" waits for ctx alone, "sleep D" sleeps D.
type backend struct {
	mu      sync.Mutex
	runs    []*forge.JobRun
	release chan struct{}
	active  atomic.Int32
	peak    atomic.Int32
}

func newBackend() *backend { return &backend{release: make(chan struct{})} }

func (b *backend) Run(ctx context.Context, run *forge.JobRun, rep forge.Reporter) (forge.Status, error) {
	b.mu.Lock()
	b.runs = append(b.runs, run)
	b.mu.Unlock()
	n := b.active.Add(1)
	defer b.active.Add(-1)
	for {
		p := b.peak.Load()
		if n <= p || b.peak.CompareAndSwap(p, n) {
			break
		}
	}
	line := 0
	for i, s := range run.Job.Steps {
		rep.Report(forge.Event{Type: forge.EventStepStarted, Time: time.Now(), Step: i, StepName: s.Name})
		st, code := forge.StatusSuccess, 0
		cmd, arg, _ := strings.Cut(s.Run, " ")
		switch cmd {
		case "echo":
			for _, text := range strings.Split(arg, ";") {
				line++
				rep.Report(forge.Event{Type: forge.EventLine, Time: time.Now(), Step: i, Line: &forge.LogLine{Number: line, Time: time.Now(), Stream: forge.Stdout, Text: text}})
			}
		case "env":
			line++
			rep.Report(forge.Event{Type: forge.EventLine, Time: time.Now(), Step: i, Line: &forge.LogLine{Number: line, Time: time.Now(), Stream: forge.Stdout, Text: arg + "=" + run.Env[arg]}})
		case "many":
			n, _ := strconv.Atoi(arg)
			for k := 0; k < n; k++ {
				line++
				rep.Report(forge.Event{Type: forge.EventLine, Time: time.Now(), Step: i, Line: &forge.LogLine{Number: line, Time: time.Now(), Stream: forge.Stdout, Text: strconv.Itoa(line)}})
			}
		case "fail":
			st, code = forge.StatusFailure, 1
		case "block":
			select {
			case <-ctx.Done():
				st, code = forge.StatusCanceled, -1
			case <-b.release:
			}
		case "hold":
			<-ctx.Done()
			st, code = forge.StatusCanceled, -1
		case "sleep":
			d, _ := time.ParseDuration(arg)
			select {
			case <-ctx.Done():
				st, code = forge.StatusCanceled, -1
			case <-time.After(d):
			}
		}
		rep.Report(forge.Event{Type: forge.EventStepFinished, Time: time.Now(), Step: i, StepName: s.Name, Status: st, ExitCode: code})
		if st != forge.StatusSuccess {
			return st, nil
		}
	}
	return forge.StatusSuccess, nil
}

// planOf makes every job of the build run steps.
func planOf(steps ...string) runner.PlannerFunc {
	return func(ctx context.Context, dir string, b *forge.Build) (*forge.Plan, error) {
		if _, err := os.Stat(filepath.Join(dir, "checked-out")); err != nil {
			return nil, fmt.Errorf("the workspace was not checked out: %v", err)
		}
		p := &forge.Plan{Action: b.Action}
		p.Jobs = append(p.Jobs, &forge.Job{Name: "test"})
		for i, s := range steps {
			p.Jobs[0].Steps = append(p.Jobs[0].Steps, forge.Step{Name: fmt.Sprintf("step %d", i+1), Run: s})
		}
		return p, nil
	}
}

// checkout is a Checkouter that makes dir with a marker file.
type checkout struct{ calls atomic.Int32 }

func (c *checkout) Checkout(ctx context.Context, repo *forge.Repo, sha, dir string) error {
	c.calls.Add(1)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "checked-out"), []byte(sha), 0o644)
}

type setup struct {
	db      *sqldb.DB
	be      *backend
	runner  *runner.Runner
	workDir string
	cancel  context.CancelFunc // ends Run's context (set by start)
}

func newRunner(t testing.TB, db *sqldb.DB, plan runner.Planner, tweak func(*runner.Options)) *setup {
	t.Helper()
	be := newBackend()
	opts := runner.Options{
		Builds: db, Repos: db, Logs: db,
		Git:           &checkout{},
		Planner:       plan,
		Executor:      runner.Engine{Backend: be, Parallel: 4},
		Backend:       "fake",
		WorkDir:       filepath.Join(t.TempDir(), "work"),
		PublicURL:     "https://ci.example.com/",
		Concurrency:   4,
		Poll:          50 * time.Millisecond,
		Grace:         5 * time.Second,
		FlushInterval: 20 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&opts)
	}
	r, err := runner.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return &setup{db: db, be: be, runner: r, workDir: opts.WorkDir}
}

// start runs the runner until the test ends; stop stops it early.
func (s *setup) start(t testing.TB) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	errc := make(chan error, 1)
	go func() { errc <- s.runner.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-errc })
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// waitBuild waits until build id has finished and returns it.
func waitBuild(t testing.TB, db *sqldb.DB, id int64) *forge.Build {
	t.Helper()
	var b *forge.Build
	testwait.For(t, fmt.Sprintf("build %d to finish", id), func() bool {
		var err error
		if b, err = db.Build(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		return b.Status.Done()
	})
	return b
}

// waitStatus waits until build id has one of the statuses want.
func waitStatus(t testing.TB, db *sqldb.DB, id int64, want ...forge.Status) {
	t.Helper()
	testwait.For(t, fmt.Sprintf("build %d to be %v", id, want), func() bool {
		b, err := db.Build(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		return slices.Contains(want, b.Status)
	})
}

// waitJobsEnded waits until every job of build id has ended, and returns
// them. Recovery ends a build before its jobs (the build's version is the
// lock that lets one runner alone end them), so a reader can see an ended
// build whose jobs are still being ended.
func waitJobsEnded(t testing.TB, db *sqldb.DB, id int64) []*forge.BuildJob {
	t.Helper()
	var jobs []*forge.BuildJob
	testwait.For(t, fmt.Sprintf("every job of build %d to end", id), func() bool {
		var err error
		if jobs, err = db.Jobs(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		for _, j := range jobs {
			if !j.Status.Done() {
				return false
			}
		}
		return true
	})
	return jobs
}

// waitActive waits until s's backend runs n jobs.
func waitActive(t testing.TB, s *setup, n int32) {
	t.Helper()
	testwait.For(t, fmt.Sprintf("%d jobs running", n), func() bool { return s.be.active.Load() == n })
}

func logText(t testing.TB, db *sqldb.DB, jobID int64) string {
	t.Helper()
	lines, err := db.Lines(context.Background(), jobID, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	for i, l := range lines {
		if l.Number != i+1 {
			t.Errorf("line %d has number %d", i+1, l.Number)
		}
		sb.WriteString(l.Text + "\n")
	}
	return sb.String()
}

func TestRunsQueuedBuildAndRecordsEverything(t *testing.T) {
	db := openDB(t)
	repo := makeRepo(t, db, "app")
	s := newRunner(t, db, planOf("echo one;two", "env FORGE_STATUS_URL", "env FORGE_PULL_REQUEST"), nil)
	b := queue(t, db, repo, "test")
	s.start(t)
	s.runner.Notify()
	got := waitBuild(t, db, b.ID)
	if got.Status != forge.StatusSuccess || got.Error != "" {
		t.Fatalf("build = %s %q, want success", got.Status, got.Error)
	}
	if got.Started.IsZero() || got.Finished.Before(got.Started) {
		t.Errorf("build times started=%v finished=%v", got.Started, got.Finished)
	}
	jobs, err := db.Jobs(context.Background(), b.ID)
	if err != nil {
		t.Fatal(err)
	}
	j := jobs[0]
	if j.Status != forge.StatusSuccess || j.Attempt != 1 || j.Started.IsZero() || j.Finished.IsZero() || j.Backend != "fake" {
		t.Errorf("job = %+v, want success attempt 1 with times", j)
	}
	if len(j.Steps) != 3 {
		t.Fatalf("job has %d steps, want 3", len(j.Steps))
	}
	for _, st := range j.Steps {
		if st.Status != forge.StatusSuccess || st.Finished.IsZero() {
			t.Errorf("step %d = %s finished %v, want success", st.Index, st.Status, st.Finished)
		}
	}
	// The steps' lines: 1-2, 3, 4.
	for i, want := range [][2]int{{1, 2}, {3, 3}, {4, 4}} {
		if got := [2]int{j.Steps[i].FirstLine, j.Steps[i].LastLine}; got != want {
			t.Errorf("step %d lines %d-%d, want %d-%d", i, got[0], got[1], want[0], want[1])
		}
	}
	want := fmt.Sprintf("one\ntwo\nFORGE_STATUS_URL=https://ci.example.com/acme/app/builds/%d/jobs/%d\nFORGE_PULL_REQUEST=7\n", b.Number, j.ID)
	if log := logText(t, db, j.ID); log != want {
		t.Errorf("log =\n%s\nwant\n%s", log, want)
	}
	run := s.be.runs[0]
	for k, v := range map[string]string{"CI": "true", "FORGE_OWNER": "acme", "FORGE_REPO": "app", "FORGE_SHA": b.Hook.SHA,
		"FORGE_REF": "refs/pull/7/head", "FORGE_COMMIT_COUNT": "2", "FORGE_BUILD_ID": fmt.Sprint(b.ID), "FORGE_JOB": "test", "FORGE_ACTION": "execute"} {
		if run.Env[k] != v {
			t.Errorf("env %s = %q, want %q", k, run.Env[k], v)
		}
	}
	if _, err := os.Stat(filepath.Join(s.workDir, fmt.Sprintf("build-%d", b.ID))); !os.IsNotExist(err) {
		t.Errorf("workspace left behind: %v", err)
	}
}

func TestFailingStepFailsBuild(t *testing.T) {
	db := openDB(t)
	repo := makeRepo(t, db, "app")
	s := newRunner(t, db, planOf("echo before", "fail", "echo never"), nil)
	b := queue(t, db, repo, "test")
	s.start(t)
	got := waitBuild(t, db, b.ID)
	if got.Status != forge.StatusFailure {
		t.Fatalf("build = %s, want failure", got.Status)
	}
	j, _ := db.Jobs(context.Background(), b.ID)
	if j[0].Status != forge.StatusFailure || j[0].Steps[1].ExitCode != 1 {
		t.Errorf("job %s, step 2 exit %d: want failure, 1", j[0].Status, j[0].Steps[1].ExitCode)
	}
}

func TestInvalidSpecErrorsBuildWithMessageInLog(t *testing.T) {
	db := openDB(t)
	repo := makeRepo(t, db, "app")
	bad := runner.PlannerFunc(func(ctx context.Context, dir string, b *forge.Build) (*forge.Plan, error) {
		return nil, forge.Errorf(forge.EINVALID, ".forge.yml:3:5: unknown key \"exeute\" (did you mean \"execute\"?)")
	})
	s := newRunner(t, db, bad, nil)
	b := queue(t, db, repo, "test")
	s.start(t)
	got := waitBuild(t, db, b.ID)
	if got.Status != forge.StatusError || !strings.Contains(got.Error, "did you mean") {
		t.Fatalf("build = %s %q, want error naming the spec problem", got.Status, got.Error)
	}
	j, _ := db.Jobs(context.Background(), b.ID)
	if j[0].Status != forge.StatusError {
		t.Errorf("job = %s, want error", j[0].Status)
	}
	if log := logText(t, db, j[0].ID); !strings.Contains(log, ".forge.yml:3:5: unknown key") {
		t.Errorf("job log = %q, want the lint message", log)
	}
}

func TestLimits(t *testing.T) {
	db := openDB(t)
	a, b := makeRepo(t, db, "a"), makeRepo(t, db, "b")
	var mu sync.Mutex
	cur := map[int64]int{}
	peak := map[int64]int{}
	total, peakTotal := 0, 0
	// A build's planning waits until two builds have planned at once (or
	// a deadline), then holds 40ms more to catch a limit overstepped. (On
	// its own, the 40ms hold did not overlap any two builds on a loaded
	// machine.)
	parallel := make(chan struct{})
	plan := runner.PlannerFunc(func(ctx context.Context, dir string, bd *forge.Build) (*forge.Plan, error) {
		mu.Lock()
		cur[bd.RepoID]++
		total++
		peak[bd.RepoID] = max(peak[bd.RepoID], cur[bd.RepoID])
		if total >= 2 && peakTotal < 2 {
			close(parallel)
		}
		peakTotal = max(peakTotal, total)
		mu.Unlock()
		select {
		case <-parallel:
		case <-time.After(testwait.Scale(30 * time.Second)):
		}
		time.Sleep(40 * time.Millisecond)
		mu.Lock()
		cur[bd.RepoID]--
		total--
		mu.Unlock()
		return &forge.Plan{Action: "execute", Jobs: []*forge.Job{{Name: "test", Steps: []forge.Step{{Name: "s", Run: "echo x"}}}}}, nil
	})
	s := newRunner(t, db, plan, func(o *runner.Options) { o.Concurrency = 3; o.PerRepo = 2 })
	var ids []int64
	for i := 0; i < 6; i++ {
		ids = append(ids, queue(t, db, a, "test").ID, queue(t, db, b, "test").ID)
	}
	s.start(t)
	for _, id := range ids {
		if got := waitBuild(t, db, id); got.Status != forge.StatusSuccess {
			t.Errorf("build %d = %s %q", id, got.Status, got.Error)
		}
	}
	if peakTotal > 3 || peak[a.ID] > 2 || peak[b.ID] > 2 {
		t.Errorf("peak running: total %d (limit 3), repo a %d, repo b %d (limit 2)", peakTotal, peak[a.ID], peak[b.ID])
	}
	if peakTotal < 2 {
		t.Errorf("peak running %d: builds did not run in parallel", peakTotal)
	}
}

func TestCancelRunningBuildKillsItsJobs(t *testing.T) {
	db := openDB(t)
	repo := makeRepo(t, db, "app")
	s := newRunner(t, db, planOf("echo started", "block"), nil)
	b := queue(t, db, repo, "test")
	s.start(t)
	waitStatus(t, db, b.ID, forge.StatusRunning)
	waitActive(t, s, 1)
	if _, err := s.runner.Cancel(context.Background(), b.ID, "canceled by alice"); err != nil {
		t.Fatal(err)
	}
	got := waitBuild(t, db, b.ID)
	if got.Status != forge.StatusCanceled || got.Error != "canceled by alice" {
		t.Errorf("build = %s %q, want canceled by alice", got.Status, got.Error)
	}
	waitActive(t, s, 0)
	waitJobs(t, db, b.ID, forge.StatusCanceled)
	if _, err := s.runner.Cancel(context.Background(), b.ID, "again"); forge.ErrorCode(err) != forge.ECONFLICT {
		t.Errorf("cancelling a finished build: err %v, want conflict", err)
	}
}

// waitJobs waits until every job of build id has status want.
func waitJobs(t testing.TB, db *sqldb.DB, id int64, want forge.Status) {
	t.Helper()
	var jobs []*forge.BuildJob
	testwait.For(t, fmt.Sprintf("every job of build %d to be %s", id, want), func() bool {
		var err error
		if jobs, err = db.Jobs(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		for _, j := range jobs {
			if j.Status != want {
				return false
			}
		}
		return true
	})
}

func TestCancelQueuedBuildAndRestart(t *testing.T) {
	db := openDB(t)
	repo := makeRepo(t, db, "app")
	s := newRunner(t, db, planOf("echo hi"), nil)
	b := queue(t, db, repo, "test", "lint")
	ctx := context.Background()
	if _, err := s.runner.Cancel(ctx, b.ID, "superseded"); err != nil {
		t.Fatal(err)
	}
	got, _ := db.Build(ctx, b.ID)
	if got.Status != forge.StatusCanceled || got.Error != "superseded" {
		t.Errorf("build = %s %q, want canceled superseded", got.Status, got.Error)
	}
	waitJobs(t, db, b.ID, forge.StatusCanceled)
	if _, err := s.runner.Cancel(ctx, 999999, "x"); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Errorf("cancel of unknown build: %v, want not_found", err)
	}
	nb, err := s.runner.Restart(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if nb.ID == b.ID || nb.Number != b.Number+1 || nb.Hook.SHA != b.Hook.SHA || nb.Action != b.Action || nb.Status != forge.StatusQueued {
		t.Errorf("restarted build = %+v, want a new queued build of the same hook", nb)
	}
	jobs, _ := db.Jobs(ctx, nb.ID)
	if len(jobs) != 2 || jobs[0].Name != "test" || jobs[1].Name != "lint" {
		t.Errorf("restarted jobs = %v, want test and lint", jobs)
	}
	if _, err := s.runner.Restart(ctx, nb.ID); forge.ErrorCode(err) != forge.ECONFLICT {
		t.Errorf("restart of a queued build: %v, want conflict", err)
	}
}

func TestRecoverEndsBuildsLeftRunning(t *testing.T) {
	db := openDB(t)
	ctx := context.Background()
	repo := makeRepo(t, db, "app")
	b := queue(t, db, repo, "test", "later")
	queued := queue(t, db, repo, "test")
	b.Status, b.Started = forge.StatusRunning, time.Now()
	if err := db.UpdateBuild(ctx, b); err != nil {
		t.Fatal(err)
	}
	jobs, _ := db.Jobs(ctx, b.ID)
	jobs[0].Status, jobs[0].Started = forge.StatusRunning, time.Now()
	if err := db.UpdateJob(ctx, jobs[0]); err != nil {
		t.Fatal(err)
	}
	if err := db.SaveStep(ctx, &forge.BuildStep{JobID: jobs[0].ID, Index: 0, Name: "s", Status: forge.StatusRunning, Started: time.Now()}); err != nil {
		t.Fatal(err)
	}
	s := newRunner(t, db, planOf("echo ran"), nil)
	leftover := filepath.Join(s.workDir, fmt.Sprintf("build-%d", b.ID))
	if err := os.MkdirAll(filepath.Join(leftover, "src"), 0o755); err != nil {
		t.Fatal(err)
	}
	s.start(t)
	got := waitBuild(t, db, b.ID)
	if got.Status != forge.StatusError || got.Error != "server restarted" {
		t.Errorf("left-running build = %s %q, want error server restarted", got.Status, got.Error)
	}
	jobs = waitJobsEnded(t, db, b.ID)
	if jobs[0].Status != forge.StatusError || jobs[0].Error != "server restarted" || jobs[0].Steps[0].Status != forge.StatusError {
		t.Errorf("running job = %s %q step %s, want error server restarted", jobs[0].Status, jobs[0].Error, jobs[0].Steps[0].Status)
	}
	if jobs[1].Status != forge.StatusError {
		t.Errorf("job recorded as queued = %s, want error (it may have started)", jobs[1].Status)
	}
	if got := waitBuild(t, db, queued.ID); got.Status != forge.StatusSuccess {
		t.Errorf("queued build after restart = %s, want it run to success", got.Status)
	}
	// Run recovers builds, then removes workspaces, then takes queued
	// builds: once the queued one ran, the workspace must be gone.
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Errorf("the dead server's workspace is still there: %v", err)
	}
}

func TestShutdownLetsShortBuildsFinishAndCancelsLongOnes(t *testing.T) {
	db := openDB(t)
	repo := makeRepo(t, db, "app")
	// The short build runs until the test releases it, once the shutdown
	// has begun; the long one until it is cancelled. (A short build that
	// slept 100ms could end before the long one started on a loaded
	// machine, and the wait for two running jobs never ended.)
	plan := runner.PlannerFunc(func(ctx context.Context, dir string, b *forge.Build) (*forge.Plan, error) {
		step := "block"
		if b.Number == 2 {
			step = "hold"
		}
		return &forge.Plan{Action: "execute", Jobs: []*forge.Job{{Name: "test", Steps: []forge.Step{{Name: "s", Run: step}}}}}, nil
	})
	// The grace is long enough for the released build to record its end
	// under load; the long build holds the shutdown for all of it.
	grace := testwait.Scale(3 * time.Second)
	s := newRunner(t, db, plan, func(o *runner.Options) { o.Grace = grace })
	short, long := queue(t, db, repo, "test"), queue(t, db, repo, "test")
	stop := s.start(t)
	waitStatus(t, db, long.ID, forge.StatusRunning)
	waitActive(t, s, 2)
	began := time.Now()
	s.cancel()
	close(s.be.release)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(began); d < grace-100*time.Millisecond || d > grace+30*time.Second { // the long build would hold for ever
		t.Errorf("shutdown took %v, want about the %v grace", d, grace)
	}
	if got := waitBuild(t, db, short.ID); got.Status != forge.StatusSuccess {
		t.Errorf("short build = %s, want success within the grace period", got.Status)
	}
	if got := waitBuild(t, db, long.ID); got.Status != forge.StatusCanceled || got.Error != "server shutting down" {
		t.Errorf("long build = %s %q, want canceled: server shutting down", got.Status, got.Error)
	}
}

func TestTwoRunnersNeverRunABuildTwice(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testTwoRunners(t, openDB(t)) })
	t.Run("postgres", func(t *testing.T) { testTwoRunners(t, openPostgres(t)) })
}

func testTwoRunners(t *testing.T, db *sqldb.DB) {
	repo := makeRepo(t, db, "app")
	var mu sync.Mutex
	runs := map[int64]int{}
	plan := runner.PlannerFunc(func(ctx context.Context, dir string, b *forge.Build) (*forge.Plan, error) {
		mu.Lock()
		runs[b.ID]++
		mu.Unlock()
		return &forge.Plan{Action: "execute", Jobs: []*forge.Job{{Name: "test", Steps: []forge.Step{{Name: "s", Run: "echo x"}}}}}, nil
	})
	// Replicas run with recovery on, recovering often, and the second
	// starts while the first runs builds: neither takes the other's
	// running builds for a dead server's. Their 40 builds' writes queue
	// for SQLite's one writer lock, heartbeats among them: under make
	// test-loaded a heartbeat waited more than fast's 3s window and the
	// other replica ended six live builds as "server restarted", so the
	// window here is 10s (recovery still runs several times meanwhile).
	replica := func(o *runner.Options) { o.Heartbeat, o.Stale = 100*time.Millisecond, testwait.Scale(10*time.Second) }
	s1 := newRunner(t, db, plan, replica)
	s2 := newRunner(t, db, plan, replica)
	var ids []int64
	for i := 0; i < 40; i++ {
		ids = append(ids, queue(t, db, repo, "test").ID)
	}
	s1.start(t)
	waitStatus(t, db, ids[0], forge.StatusRunning, forge.StatusSuccess)
	s2.start(t)
	for _, id := range ids {
		if got := waitBuild(t, db, id); got.Status != forge.StatusSuccess {
			t.Errorf("build %d = %s %q", id, got.Status, got.Error)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		if runs[id] != 1 {
			t.Errorf("build %d ran %d times, want 1", id, runs[id])
		}
	}
}

func TestLinesOfRetriedJobKeepUniqueNumbers(t *testing.T) {
	db := openDB(t)
	repo := makeRepo(t, db, "app")
	plan := runner.PlannerFunc(func(ctx context.Context, dir string, b *forge.Build) (*forge.Plan, error) {
		return &forge.Plan{Action: "execute", Jobs: []*forge.Job{{Name: "test", Retries: 1, Steps: []forge.Step{{Name: "a", Run: "echo try"}, {Name: "b", Run: "fail"}}}}}, nil
	})
	s := newRunner(t, db, plan, nil)
	b := queue(t, db, repo, "test")
	s.start(t)
	if got := waitBuild(t, db, b.ID); got.Status != forge.StatusFailure {
		t.Fatalf("build = %s, want failure", got.Status)
	}
	j, _ := db.Jobs(context.Background(), b.ID)
	if j[0].Attempt != 2 {
		t.Errorf("attempt = %d, want 2", j[0].Attempt)
	}
	if log := logText(t, db, j[0].ID); log != "try\nattempt 2\ntry\n" {
		t.Errorf("log = %q, want both attempts' lines", log)
	}
	// The steps' lines are the last attempt's: "try" at 3, and none for b.
	if a, b := j[0].Steps[0], j[0].Steps[1]; a.FirstLine != 3 || a.LastLine != 3 || b.FirstLine != 4 || b.LastLine != 3 {
		t.Errorf("step lines a %d-%d, b %d-%d; want 3-3 and 4-3 (none)", a.FirstLine, a.LastLine, b.FirstLine, b.LastLine)
	}
}

func TestSecretsNeverReachForks(t *testing.T) {
	db := openDB(t)
	repo := makeRepo(t, db, "app")
	s := newRunner(t, db, planOf("echo hi"), func(o *runner.Options) {
		o.Secrets = func(ctx context.Context, r *forge.Repo) (map[string]string, error) {
			return map[string]string{"DEPLOY_KEY": "k-" + r.Name}, nil
		}
	})
	own := queue(t, db, repo, "test")
	fork := &forge.Build{RepoID: repo.ID, Action: "execute", Status: forge.StatusQueued, Hook: own.Hook}
	fork.Hook.Fork = true
	if err := db.CreateBuild(context.Background(), fork, []*forge.BuildJob{{Name: "test", Status: forge.StatusQueued}}); err != nil {
		t.Fatal(err)
	}
	s.start(t)
	waitBuild(t, db, own.ID)
	waitBuild(t, db, fork.ID)
	s.be.mu.Lock()
	defer s.be.mu.Unlock()
	got := map[string]string{}
	for _, run := range s.be.runs {
		got[run.BuildID] = run.Secrets["DEPLOY_KEY"]
	}
	if got[fmt.Sprint(own.ID)] != "k-app" {
		t.Errorf("own build's secret = %q, want k-app", got[fmt.Sprint(own.ID)])
	}
	if v, ok := got[fmt.Sprint(fork.ID)]; !ok || v != "" {
		t.Errorf("fork build's secret = %q (ran: %v), want none", v, ok)
	}
}

// TestSecretsOnlyForTrustedCode (issue 7.1): whatever started a build,
// only code forge can show to come from the repository gets secrets. A
// manual build of a pull request's ref, stored without Fork as the manual
// trigger used to make it, gets none, and neither does its restart.
func TestSecretsOnlyForTrustedCode(t *testing.T) {
	db := openDB(t)
	ctx := context.Background()
	repo := makeRepo(t, db, "app")
	s := newRunner(t, db, planOf("echo hi"), func(o *runner.Options) {
		o.Secrets = func(ctx context.Context, r *forge.Repo) (map[string]string, error) {
			return map[string]string{"DEPLOY_KEY": "k-" + r.Name}, nil
		}
	})
	sha := "0123456789abcdef0123456789abcdef01234567"
	hooks := []struct {
		name    string
		hook    forge.Hook
		secrets bool
	}{
		{"push to a branch", forge.Hook{Event: "push", Ref: "refs/heads/main", Branch: "main"}, true},
		{"tag", forge.Hook{Event: "tag", Ref: "refs/tags/v1", Tag: "v1"}, true},
		{"manual build of a branch", forge.Hook{Event: "manual", Ref: "refs/heads/main", Branch: "main"}, true},
		{"pull request from the repository", forge.Hook{Event: "pull_request", Ref: "refs/pull/7/head", PullRequest: 7}, true},
		{"fork's pull request", forge.Hook{Event: "pull_request", Ref: "refs/pull/7/head", PullRequest: 7, Fork: true}, false},
		{"fork's pull request merged", forge.Hook{Event: "pull_request", Action: "closed", Ref: "refs/heads/main", Merged: true, Fork: true}, true},
		{"manual build of a pull request ref", forge.Hook{Event: "manual", Ref: "refs/pull/10/head", PullRequest: 10}, false},
		{"manual build of a commit id", forge.Hook{Event: "manual"}, false},
		{"check suite of a commit not on its branch", forge.Hook{Event: "push", Action: "rerequested", Ref: "refs/heads/patch-1", Fork: true}, false},
		{"unknown event", forge.Hook{Event: "deployment", Ref: "refs/heads/main"}, false},
	}
	ids := map[int64]string{}
	want := map[string]bool{}
	var manualPR *forge.Build
	for _, h := range hooks {
		h.hook.Repo, h.hook.SHA = *repo, sha
		b := &forge.Build{RepoID: repo.ID, Action: "execute", Status: forge.StatusQueued, Hook: h.hook}
		if err := db.CreateBuild(ctx, b, []*forge.BuildJob{{Name: "test", Status: forge.StatusQueued}}); err != nil {
			t.Fatal(err)
		}
		ids[b.ID], want[h.name] = h.name, h.secrets
		if h.name == "manual build of a pull request ref" {
			manualPR = b
		}
	}
	s.start(t)
	for id := range ids {
		waitBuild(t, db, id)
	}
	restarted, err := s.runner.Restart(ctx, manualPR.ID)
	if err != nil {
		t.Fatal(err)
	}
	ids[restarted.ID], want["restart of the manual pull request build"] = "restart of the manual pull request build", false
	waitBuild(t, db, restarted.ID)
	s.be.mu.Lock()
	defer s.be.mu.Unlock()
	got := map[string]string{}
	for _, run := range s.be.runs {
		var id int64
		fmt.Sscan(run.BuildID, &id)
		got[ids[id]] = run.Secrets["DEPLOY_KEY"]
	}
	for name, secrets := range want {
		v, ran := got[name]
		switch {
		case !ran:
			t.Errorf("%s: did not run", name)
		case secrets && v != "k-app":
			t.Errorf("%s: secret = %q, want k-app", name, v)
		case !secrets && v != "":
			t.Errorf("%s: secret = %q, want none", name, v)
		}
	}
}

// TestManyLinesAreAllStoredInOrder runs a job printing more lines than the
// recorder keeps waiting, so the job is held back while they are written.
func TestManyLinesAreAllStoredInOrder(t *testing.T) {
	db := openDB(t)
	repo := makeRepo(t, db, "app")
	s := newRunner(t, db, planOf("many 120000", "echo last"), nil)
	b := queue(t, db, repo, "test")
	s.start(t)
	// Storing 120,000 lines in SQLite under the race detector took more
	// than testwait.Patience (2 minutes) on a loaded machine.
	var got *forge.Build
	testwait.Within(t, 10*time.Minute, "the build to finish", func() bool {
		var err error
		if got, err = db.Build(context.Background(), b.ID); err != nil {
			t.Fatal(err)
		}
		return got.Status.Done()
	})
	if got.Status != forge.StatusSuccess {
		t.Fatalf("build = %s %q", got.Status, got.Error)
	}
	j, _ := db.Jobs(context.Background(), b.ID)
	lines, err := db.Lines(context.Background(), j[0].ID, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 120001 {
		t.Fatalf("%d lines stored, want 120001", len(lines))
	}
	for i, l := range lines[:120000] {
		if l.Number != i+1 || l.Text != strconv.Itoa(i+1) {
			t.Fatalf("line %d = %d %q", i+1, l.Number, l.Text)
		}
	}
	if lines[120000].Text != "last" {
		t.Errorf("last line = %q", lines[120000].Text)
	}
}

// TestCancelThroughAnotherServer cancels a build through a runner that is
// not running it: the one running it sees the cancel and kills its jobs.
func TestCancelThroughAnotherServer(t *testing.T) {
	db := openDB(t)
	repo := makeRepo(t, db, "app")
	replica := fast
	runs := newRunner(t, db, planOf("block"), replica)
	other := newRunner(t, db, planOf("block"), replica)
	b := queue(t, db, repo, "test")
	runs.start(t)
	waitStatus(t, db, b.ID, forge.StatusRunning)
	waitActive(t, runs, 1)
	// The other replica starts, with recovery on, while the build runs.
	other.start(t)
	if _, err := other.runner.Cancel(context.Background(), b.ID, "canceled by bob"); err != nil {
		t.Fatal(err)
	}
	// The running server sees the cancel by polling the store.
	waitActive(t, runs, 0)
	if got := waitBuild(t, db, b.ID); got.Status != forge.StatusCanceled || got.Error != "canceled by bob" {
		t.Errorf("build = %s %q, want canceled by bob", got.Status, got.Error)
	}
	waitJobs(t, db, b.ID, forge.StatusCanceled)
}
