package sqldb

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// searchLines returns n varied log lines of build build numbered from
// first: test runner and compiler output, with "connection reset by peer"
// once in the logs of one build in 50.
func searchLines(build, first, n int) []forge.LogLine {
	t := time.Now()
	out := make([]forge.LogLine, n)
	for i := range out {
		num := first + i
		var text string
		switch {
		case build%50 == 7 && num == 4321:
			text = fmt.Sprintf("dial tcp 10.0.%d.%d:5432: read: connection reset by peer", build%250, num%250)
		case num%10 == 0:
			text = fmt.Sprintf("=== RUN   TestHandler%d/case_%d", num%997, build)
		case num%10 == 1:
			text = fmt.Sprintf("--- PASS: TestHandler%d/case_%d (0.%02ds)", num%997, build, num%100)
		case num%10 == 2:
			text = fmt.Sprintf("go: downloading github.com/acme/lib%d v1.%d.%d", num%313, build%20, num%7)
		default:
			text = fmt.Sprintf("ok  \tgithub.com/acme/rocket/pkg%05d\t0.%03ds\tcoverage: %d.%d%% of statements", (num*31+build)%100000, num%1000, num%100, num%10)
		}
		out[i] = forge.LogLine{Number: num, Time: t, Stream: "stdout", Text: text}
	}
	return out
}

// envInt reads a positive integer from the environment, else def.
func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// BenchmarkSearchLogs searches a repository's 1,000 builds of 10,000 log
// lines each (10,000,000 lines, all indexed) for a text that 20 of them
// printed, and for a common one (the 50 newest of millions of matches):
// issue 11's target is under 300 ms. The setup (storing and indexing the
// logs) takes minutes; FORGE_BENCH_BUILDS and FORGE_BENCH_LINES scale it.
//
//	go test -run '^$' -bench SearchLogs -benchtime 20x ./internal/sqldb/
func BenchmarkSearchLogs(b *testing.B) {
	if testing.Short() {
		b.Skip("short")
	}
	builds, lines := envInt("FORGE_BENCH_BUILDS", 1000), envInt("FORGE_BENCH_LINES", 10000)
	benchDialects(b, func(b *testing.B, db *DB) {
		ctx := context.Background()
		repo := mustRepo(b, db, "bench", "search")
		other := mustRepo(b, db, "bench", "other")
		start := time.Now()
		for i := 1; i <= builds; i++ {
			r := repo
			if i%10 == 0 {
				r = other // a neighbour whose matches must be skipped
			}
			build, jobs := mustBuild(b, db, r, forge.Hook{Event: "push"}, "test")
			for from := 1; from <= lines; from += 5000 {
				if err := db.Append(ctx, jobs[0].ID, searchLines(i, from, min(5000, lines-from+1))); err != nil {
					b.Fatal(err)
				}
			}
			jobs[0].Status = forge.StatusSuccess
			if err := db.UpdateJob(ctx, jobs[0]); err != nil {
				b.Fatal(err)
			}
			build.Status = forge.StatusSuccess
			if err := db.UpdateBuild(ctx, build); err != nil {
				b.Fatal(err)
			}
		}
		stored := time.Since(start)
		start = time.Now()
		indexed := 0
		for {
			n, err := db.IndexLogs(ctx, 1<<20)
			if err != nil {
				b.Fatal(err)
			}
			if n == 0 {
				break
			}
			indexed += n
		}
		b.Logf("%s: stored %d lines in %v, indexed them in %v (%.0f lines/s)", db.Dialect(), builds*lines,
			stored.Round(time.Second), time.Since(start).Round(time.Second), float64(indexed)/time.Since(start).Seconds())
		for _, q := range []struct{ name, text string }{{"rare", "connection reset"}, {"common", "TestHandler42"}} {
			b.Run(q.name, func(b *testing.B) {
				for b.Loop() {
					got, err := db.SearchLogs(ctx, repo.ID, q.text, 50)
					if err != nil || len(got) == 0 {
						b.Fatalf("SearchLogs(%q): %d matches, %v", q.text, len(got), err)
					}
				}
			})
		}
	})
}

// BenchmarkSearchLog searches a 1,000,000-line log for a text on one line
// near its start (the log viewer's search box): issue 11 asks for an
// answer within half a second.
//
//	go test -run '^$' -bench 'SearchLog$' -benchtime 10x ./internal/sqldb/
func BenchmarkSearchLog(b *testing.B) {
	if testing.Short() {
		b.Skip("short")
	}
	benchDialects(b, func(b *testing.B, db *DB) {
		ctx := context.Background()
		repo := mustRepo(b, db, "bench", "grep")
		_, jobs := mustBuild(b, db, repo, forge.Hook{Event: "push"}, "build")
		const n = 1_000_000
		lines := logLines(1, n)
		lines[1233].Text = "panic: runtime error: index out of range [3] with length 3"
		if err := db.Append(ctx, jobs[0].ID, lines); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			got, total, err := db.SearchLog(ctx, jobs[0].ID, "INDEX OUT OF RANGE", 1, 1000)
			if err != nil || total != 1 || got[0] != 1234 {
				b.Fatalf("SearchLog: %v %d %v", got, total, err)
			}
		}
	})
}
