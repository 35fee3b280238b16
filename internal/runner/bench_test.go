package runner_test

import (
	"context"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/runner"
	"github.com/forgeci/forge/internal/sqldb"
	"github.com/forgeci/forge/internal/testwait"
)

// BenchmarkDrain measures the runner's scheduling overhead: 1,000 queued
// trivial builds (one job, one step printing one line, run by a backend
// that does nothing else) drained from a real SQLite database, with every
// claim, job, step, log and result written as in production. The figure is
// ms/build: the whole drain divided by the number of builds; cpu-ms/build
// is the CPU the process (runner, engine and SQLite) spent per build. On a
// disk where a durable SQLite commit (synchronous=FULL) takes milliseconds,
// the wall figure is mostly the five commits a build needs: its claim, its
// log lines, its step, its job and its result.
//
// The postgres variant runs when FORGE_TEST_POSTGRES_URL is set.
//
//	go test -run='^$' -bench=Drain -benchtime=1x -count=5 ./internal/runner
func BenchmarkDrain(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) { benchDrain(b, func() *sqldb.DB { return openDB(b) }) })
	b.Run("postgres", func(b *testing.B) { benchDrain(b, func() *sqldb.DB { return openPostgres(b) }) })
}

func benchDrain(b *testing.B, open func() *sqldb.DB) {
	const builds = 1000
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		db := open()
		repo := makeRepo(b, db, "app")
		var ids []int64
		for n := 0; n < builds; n++ {
			ids = append(ids, queue(b, db, repo, "test").ID)
		}
		s := newRunner(b, db, planOf("echo hi"), func(o *runner.Options) { o.Concurrency = 4; o.Poll = time.Second })
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		b.StartTimer()
		cpu0 := testwait.CPU()
		start := time.Now()
		go func() { done <- s.runner.Run(ctx) }()
		last := ids[len(ids)-1]
		for {
			got, err := db.Build(context.Background(), last)
			if err != nil {
				b.Fatal(err)
			}
			if got.Status.Done() {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		// The last queued build may finish before a few earlier ones.
		for _, id := range ids {
			for {
				got, err := db.Build(context.Background(), id)
				if err != nil {
					b.Fatal(err)
				}
				if got.Status.Done() {
					if got.Status != forge.StatusSuccess {
						b.Fatalf("build %d: %s %s", id, got.Status, got.Error)
					}
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
		elapsed := time.Since(start)
		cpu := testwait.CPU() - cpu0
		b.StopTimer()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(elapsed.Microseconds())/1000/builds, "ms/build")
		b.ReportMetric(float64(cpu.Microseconds())/1000/builds, "cpu-ms/build")
	}
}
