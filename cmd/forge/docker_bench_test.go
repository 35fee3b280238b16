package main

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/backend/docker"
	"github.com/forgeci/forge/internal/backend/local"
	"github.com/forgeci/forge/internal/dockertest"
	"github.com/forgeci/forge/internal/runner"
	"github.com/forgeci/forge/internal/sqldb"
)

// BenchmarkDockerTrue compares a one-step job whose step is `true` on the
// docker backend (Backend.Run: workspace volume, container, forgexec, log,
// cleanup) with `docker run --rm IMAGE true` on the same image, side by
// side: each iteration runs one of each. It reports both times and their
// ratio (target: at most 1.2).
//
//	go test -run='^$' -bench=DockerTrue -benchtime=20x ./cmd/forge
func BenchmarkDockerTrue(b *testing.B) {
	env := dockertest.Setup(b)
	if _, err := exec.LookPath("docker"); err != nil {
		b.Skip("the docker command is needed for the side-by-side figure")
	}
	scope := "bench-true"
	be, err := docker.New(docker.Options{Client: env.Client, Scope: scope, Forgexec: env.Forge})
	if err != nil {
		b.Fatal(err)
	}
	defer be.Clean(context.Background(), nil)
	defer dockertest.RemoveExecVolumes(env.Client, env.Forge)
	job := &forge.Job{Name: "true", Image: dockertest.ImageShell, Steps: []forge.Step{{Run: "true"}}}
	ctx := context.Background()
	runJob := func() {
		st, err := be.Run(ctx, &forge.JobRun{Job: job, BuildID: "bench", Attempt: 1}, forge.ReporterFunc(func(forge.Event) {}))
		if st != forge.StatusSuccess {
			b.Fatalf("job: %s %v", st, err)
		}
	}
	dockerRun := func() {
		if out, err := exec.Command("docker", "run", "--rm", dockertest.ImageShell, "true").CombinedOutput(); err != nil {
			b.Fatalf("docker run: %v %s", err, out)
		}
	}
	runJob() // fill the forgexec volume once, as a server's first job does
	dockerRun()
	var forgeT, dockerT time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		runJob()
		t1 := time.Now()
		dockerRun()
		forgeT += t1.Sub(t0)
		dockerT += time.Since(t1)
	}
	b.ReportMetric(float64(forgeT.Milliseconds())/float64(b.N), "forge-ms/job")
	b.ReportMetric(float64(dockerT.Milliseconds())/float64(b.N), "docker-run-ms")
	b.ReportMetric(float64(forgeT)/float64(dockerT), "ratio")
}

// BenchmarkMillionLinesToStore runs a build of one job, one step `seq 1
// 1000000`, through the runner into SQLite (the recorder, batching lines
// as in production), on the local and on the docker backend, and reports
// how fast the lines reach the store (target: docker at least half of
// local).
//
//	go test -run='^$' -bench=MillionLinesToStore -benchtime=1x -count=3 ./cmd/forge
func BenchmarkMillionLinesToStore(b *testing.B) {
	b.Run("local", func(b *testing.B) {
		benchLinesToStore(b, "local", local.New(local.Options{}))
	})
	b.Run("docker", func(b *testing.B) {
		env := dockertest.Setup(b)
		be, err := docker.New(docker.Options{Client: env.Client, Scope: "bench-lines", Forgexec: env.Forge})
		if err != nil {
			b.Fatal(err)
		}
		defer be.Clean(context.Background(), nil)
		defer dockertest.RemoveExecVolumes(env.Client, env.Forge)
		benchLinesToStore(b, "docker", be)
	})
}

func benchLinesToStore(b *testing.B, name string, be forge.Backend) {
	const lines = 1000000
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		db, err := sqldb.Open(ctx, sqldb.Config{DataDir: dir})
		if err != nil {
			b.Fatal(err)
		}
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
		plan := &forge.Plan{Action: "execute", Jobs: []*forge.Job{{Name: "seq", Image: dockertest.ImageShell,
			Steps: []forge.Step{{Run: "seq 1 1000000"}}}}}
		r, err := runner.New(runner.Options{
			Builds: db, Repos: db, Logs: db,
			Git: checkoutFunc(func(ctx context.Context, _ *forge.Repo, _, dir string) error {
				// A commit of its own: jobs get a clean copy of it.
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
			Executor: runner.Engine{Backend: be},
			Backend:  name,
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
		n, err := db.LogLen(ctx, jobs[0].ID)
		if err != nil || n != lines {
			b.Fatalf("stored %d lines, want %d (%v)", n, lines, err)
		}
		db.Close()
		b.ReportMetric(float64(lines)/elapsed.Seconds(), "lines/s")
		b.ReportMetric(elapsed.Seconds(), "s/build")
	}
}

// checkoutFunc adapts a function to runner.Checkouter.
type checkoutFunc func(ctx context.Context, repo *forge.Repo, sha, dir string) error

func (f checkoutFunc) Checkout(ctx context.Context, repo *forge.Repo, sha, dir string) error {
	return f(ctx, repo, sha, dir)
}
