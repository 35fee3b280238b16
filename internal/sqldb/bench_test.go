package sqldb

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// Benchmarks of the store. Run them with
//
//	go test -run '^$' -bench . -benchtime 3x ./internal/sqldb/
//
// PostgreSQL variants run when FORGE_TEST_POSTGRES_URL is set.

// benchDialects runs fn per database, skipping PostgreSQL without a URL.
func benchDialects(b *testing.B, fn func(b *testing.B, db *DB)) {
	for _, kind := range dialects {
		b.Run(kind, func(b *testing.B) {
			if kind == "postgres" && os.Getenv(envTestPostgresURL) == "" {
				b.Skipf("%s is not set", envTestPostgresURL)
			}
			db := benchDB(b, kind)
			fn(b, db)
		})
	}
}

// benchDB returns a new migrated database of kind.
func benchDB(b *testing.B, kind string) *DB {
	b.Helper()
	db := openTest(b, testConfig(b, kind))
	if _, err := db.Migrate(context.Background(), "up"); err != nil {
		b.Fatal(err)
	}
	return db
}

// logLines returns n log lines numbered from first, about 80 bytes each
// like a compiler's or a test runner's output.
func logLines(first, n int) []forge.LogLine {
	t := time.Now()
	out := make([]forge.LogLine, n)
	for i := range out {
		num := first + i
		out[i] = forge.LogLine{Number: num, Time: t, Stream: "stdout",
			Text: fmt.Sprintf("ok  \tgithub.com/acme/rocket/pkg%05d\t0.%03ds\tcoverage: %d.%d%% of statements", num%100000, num%1000, num%100, num%10)}
	}
	return out
}

// BenchmarkAppend100k appends a 100,000-line log in one call (one
// transaction): the figure of the log target.
func BenchmarkAppend100k(b *testing.B) {
	benchAppend(b, 100_000)
}

// BenchmarkAppend1M appends a 1,000,000-line log in one call.
func BenchmarkAppend1M(b *testing.B) {
	if testing.Short() {
		b.Skip("short")
	}
	benchAppend(b, 1_000_000)
}

func benchAppend(b *testing.B, n int) {
	benchDialects(b, func(b *testing.B, db *DB) {
		ctx := context.Background()
		repo := mustRepo(b, db, "bench", "logs")
		lines := logLines(1, n)
		for b.Loop() {
			b.StopTimer()
			_, jobs := mustBuild(b, db, repo, forge.Hook{Event: "push"}, "build")
			b.StartTimer()
			if err := db.Append(ctx, jobs[0].ID, lines); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "lines/s")
	})
}

// BenchmarkAppendLive appends 10 lines at a time, as a running job's
// output arrives.
func BenchmarkAppendLive(b *testing.B) {
	benchDialects(b, func(b *testing.B, db *DB) {
		ctx := context.Background()
		repo := mustRepo(b, db, "bench", "live")
		_, jobs := mustBuild(b, db, repo, forge.Hook{Event: "push"}, "build")
		next := 1
		for b.Loop() {
			if err := db.Append(ctx, jobs[0].ID, logLines(next, 10)); err != nil {
				b.Fatal(err)
			}
			next += 10
		}
	})
}

// BenchmarkLinesPage reads 1,000 lines from anywhere in a 1,000,000-line
// log: a page of the log viewer. (b.Loop runs the setup once.)
func BenchmarkLinesPage(b *testing.B) {
	if testing.Short() {
		b.Skip("short")
	}
	benchDialects(b, func(b *testing.B, db *DB) {
		ctx := context.Background()
		repo := mustRepo(b, db, "bench", "read")
		_, jobs := mustBuild(b, db, repo, forge.Hook{Event: "push"}, "build")
		const n = 1_000_000
		if err := db.Append(ctx, jobs[0].ID, logLines(1, n)); err != nil {
			b.Fatal(err)
		}
		i := 0
		for b.Loop() {
			i++
			from := 1 + (i*7919*1000)%(n-1000)
			got, err := db.Lines(ctx, jobs[0].ID, from, 1000)
			if err != nil || len(got) != 1000 {
				b.Fatalf("Lines(%d, 1000): %d lines, %v", from, len(got), err)
			}
		}
	})
}

// BenchmarkCreateDelivery stores one webhook delivery: the database's
// share of acknowledging a webhook.
func BenchmarkCreateDelivery(b *testing.B) {
	benchDialects(b, func(b *testing.B, db *DB) {
		ctx := context.Background()
		payload := []byte(strings.Repeat(`{"action":"opened","number":7}`, 300))
		i := 0
		for b.Loop() {
			i++
			if err := db.CreateDelivery(ctx, &forge.Delivery{ID: fmt.Sprintf("d-%d", i), Event: "pull_request", Payload: payload}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkCreateBuild creates a build with three jobs.
func BenchmarkCreateBuild(b *testing.B) {
	benchDialects(b, func(b *testing.B, db *DB) {
		ctx := context.Background()
		repo := mustRepo(b, db, "bench", "builds")
		i := 0
		for b.Loop() {
			i++
			build := &forge.Build{RepoID: repo.ID, Action: "execute", DeliveryID: fmt.Sprint(i),
				Hook: forge.Hook{Event: "pull_request", Branch: "feature", PullRequest: 7, SHA: "0123456789abcdef"}}
			jobs := []*forge.BuildJob{{Name: "build"}, {Name: "test", Needs: []string{"build"}}, {Name: "lint"}}
			if err := db.CreateBuild(ctx, build, jobs); err != nil {
				b.Fatal(err)
			}
		}
	})
}
