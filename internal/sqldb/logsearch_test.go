package sqldb

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// finishJob appends text as job's log and records it finished.
func finishJob(t *testing.T, db *DB, b *forge.Build, j *forge.BuildJob, text ...string) {
	t.Helper()
	ctx := context.Background()
	var lines []forge.LogLine
	for i, s := range text {
		lines = append(lines, forge.LogLine{Number: i + 1, Time: at(i % 60), Stream: forge.Stdout, Text: s})
	}
	if len(lines) > 0 {
		if err := db.Append(ctx, j.ID, lines); err != nil {
			t.Fatal(err)
		}
	}
	j.Status = forge.StatusFailure
	if err := db.UpdateJob(ctx, j); err != nil {
		t.Fatal(err)
	}
	b.Status, b.Finished = forge.StatusFailure, time.Now()
	if err := db.UpdateBuild(ctx, b); err != nil {
		t.Fatal(err)
	}
}

// TestSearchLog: the in-log search finds a text ignoring case, counts all
// matches, pages with from and limit, and takes % and _ literally (issue
// 11, item 3's server side).
func TestSearchLog(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)
		r := mustRepo(t, db, "acme", "rocket")
		b, jobs := mustBuild(t, db, r, forge.Hook{Event: "push"}, "test")
		var text []string
		for i := 1; i <= 300; i++ {
			s := fmt.Sprintf("line %d", i)
			if i%100 == 0 {
				s += " Connection RESET by peer"
			}
			text = append(text, s)
		}
		text[4] = "100% done_x"
		finishJob(t, db, b, jobs[0], text...)
		for _, tt := range []struct {
			q           string
			from, limit int
			want        []int
			total       int
		}{
			{"connection reset", 1, 0, []int{100, 200, 300}, 3},
			{"connection reset", 150, 0, []int{200, 300}, 2},
			{"connection reset", 1, 1, []int{100}, 3},
			{"0% d", 1, 0, []int{5}, 1},
			{"e_x", 1, 0, []int{5}, 1},
			{"%", 1, 0, []int{5}, 1},
			{"absent", 1, 0, nil, 0},
		} {
			got, total, err := db.SearchLog(ctx, jobs[0].ID, tt.q, tt.from, tt.limit)
			if err != nil || !slices.Equal(got, tt.want) || total != tt.total {
				t.Errorf("SearchLog(%q, %d, %d) = %v, %d, %v; want %v, %d", tt.q, tt.from, tt.limit, got, total, err, tt.want, tt.total)
			}
		}
		_, _, err := db.SearchLog(ctx, 99999, "x", 1, 0)
		wantCode(t, err, forge.ENOTFOUND)
	})
}

// TestSearchLogsAcrossBuilds: finished jobs' logs are indexed off the hot
// path (IndexLogs) and found newest first in their repository only; a
// running job is not indexed until it ends (issue 11, item 4).
func TestSearchLogsAcrossBuilds(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)
		r := mustRepo(t, db, "acme", "rocket")
		other := mustRepo(t, db, "acme", "other")
		b1, j1 := mustBuild(t, db, r, forge.Hook{Event: "push"}, "unit", "lint")
		finishJob(t, db, b1, j1[0], "ok", "dial tcp: connection reset by peer", "FAIL")
		finishJob(t, db, b1, j1[1], "all clean")
		b2, j2 := mustBuild(t, db, r, forge.Hook{Event: "push"}, "unit")
		var many []string
		for i := range 12000 { // more than one indexing chunk
			many = append(many, fmt.Sprintf("step %d", i))
		}
		many[11000] = "read: connection reset by peer"
		finishJob(t, db, b2, j2[0], many...)
		bo, jo := mustBuild(t, db, other, forge.Hook{Event: "push"}, "unit")
		finishJob(t, db, bo, jo[0], "connection reset")
		b3, j3 := mustBuild(t, db, r, forge.Hook{Event: "push"}, "unit")
		if err := db.Append(ctx, j3[0].ID, []forge.LogLine{{Number: 1, Text: "connection reset while running"}}); err != nil {
			t.Fatal(err)
		}

		total := 0
		for {
			n, err := db.IndexLogs(ctx, 7000)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
			total += n
		}
		if want := 3 + 1 + 12000 + 1; total != want {
			t.Errorf("IndexLogs indexed %d lines, want %d", total, want)
		}
		got, err := db.SearchLogs(ctx, r.ID, "connection reset", 10)
		if err != nil {
			t.Fatal(err)
		}
		want := []forge.LogMatch{
			{Build: b2.Number, Job: j2[0].ID, JobName: "unit", Line: 11001, Text: "read: connection reset by peer"},
			{Build: b1.Number, Job: j1[0].ID, JobName: "unit", Line: 2, Text: "dial tcp: connection reset by peer"},
		}
		if !slices.Equal(got, want) {
			t.Errorf("SearchLogs = %+v, want %+v", got, want)
		}
		if got, _ := db.SearchLogs(ctx, r.ID, "connection reset", 1); len(got) != 1 || got[0].Build != b2.Number {
			t.Errorf("SearchLogs limit 1 = %+v, want build %d's line", got, b2.Number)
		}
		_, err = db.SearchLogs(ctx, r.ID, "ab", 10)
		wantCode(t, err, forge.EINVALID)

		// The running job, once finished, is indexed and found first.
		finishJob(t, db, b3, j3[0])
		if n, err := db.IndexLogs(ctx, 100); err != nil || n != 1 {
			t.Fatalf("IndexLogs after a job ended = %d, %v; want 1", n, err)
		}
		if got, _ := db.SearchLogs(ctx, r.ID, "connection reset", 10); len(got) != 3 || got[0].Build != b3.Number {
			t.Errorf("SearchLogs = %+v, want build %d's line first of 3", got, b3.Number)
		}
	})
}

// TestPruneLogs: retention deletes the logs (and their index entries) of
// the builds it does not keep, per repository, and nothing else (issue 11,
// item 1).
func TestPruneLogs(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)
		r := mustRepo(t, db, "acme", "rocket")
		other := mustRepo(t, db, "acme", "other")
		var jobs []*forge.BuildJob
		for i := range 4 {
			b, js := mustBuild(t, db, r, forge.Hook{Event: "push"}, "unit")
			var text []string
			for k := range 25000 { // more than one delete batch
				text = append(text, fmt.Sprintf("build %d line %d", i+1, k))
			}
			finishJob(t, db, b, js[0], text...)
			jobs = append(jobs, js[0])
		}
		bo, jo := mustBuild(t, db, other, forge.Hook{Event: "push"}, "unit")
		finishJob(t, db, bo, jo[0], "other build 1 line")
		for {
			if n, err := db.IndexLogs(ctx, 1<<20); err != nil || n == 0 {
				if err != nil {
					t.Fatal(err)
				}
				break
			}
		}
		n, err := db.PruneLogs(ctx, Retention{Builds: 2})
		if err != nil || n != 2 {
			t.Fatalf("PruneLogs keeping 2 builds = %d, %v; want 2 jobs", n, err)
		}
		for i, j := range jobs {
			got, err := db.LogLen(ctx, j.ID)
			if want := map[bool]int{true: 0, false: 25000}[i < 2]; err != nil || got != want {
				t.Errorf("build %d: LogLen = %d, %v; want %d", i+1, got, err, want)
			}
		}
		if got, _ := db.LogLen(ctx, jo[0].ID); got != 1 {
			t.Errorf("the other repository's only build lost its log")
		}
		if got, _ := db.SearchLogs(ctx, r.ID, "build 1 line 7", 10); len(got) != 0 {
			t.Errorf("a pruned log is still found: %+v", got)
		}
		if got, _ := db.SearchLogs(ctx, r.ID, "build 4 line 24999", 10); len(got) != 1 {
			t.Errorf("a kept log is not found: %+v", got)
		}
		if n, err := db.PruneLogs(ctx, Retention{Builds: 2}); err != nil || n != 0 {
			t.Errorf("PruneLogs again = %d, %v; want 0", n, err)
		}
		if n, _ := db.IndexLogs(ctx, 100); n != 0 {
			t.Errorf("pruned jobs were indexed again (%d lines)", n)
		}
		// Days: every build finished now; keep_days 1 keeps them.
		if n, err := db.PruneLogs(ctx, Retention{Days: 1}); err != nil || n != 0 {
			t.Errorf("PruneLogs keeping 1 day = %d, %v; want 0", n, err)
		}
		_, err = db.PruneLogs(ctx, Retention{Days: -1})
		wantCode(t, err, forge.EINVALID)
	})
}
