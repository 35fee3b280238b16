package sqldb

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/forgeci/forge"
)

// chunkLog returns lines numbered from first, step apart (gaps when step
// > 1), with times that go back and forth and every kind of stream.
func chunkLog(first, n, step int) []forge.LogLine {
	streams := []forge.Stream{forge.Stdout, forge.Stderr, forge.System, "", "custom stream"}
	var out []forge.LogLine
	for i := range n {
		num := first + i*step
		text := fmt.Sprintf("line %d", num)
		switch num % 97 {
		case 0:
			text = "Größe ÜBER alles ✓ " + text
		case 1:
			text = ""
		}
		out = append(out, forge.LogLine{Number: num, Time: at(num % 60), Stream: streams[num%len(streams)], Text: text})
	}
	return out
}

// TestLogChunks: lines appended in batches of every size, some of them
// longer than a chunk, come back whole from any range, across chunk
// boundaries and gaps in the numbering; the last chunk is extended by
// small appends instead of piling up small chunks.
func TestLogChunks(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)
		r := mustRepo(t, db, "acme", "chunks")
		_, jobs := mustBuild(t, db, r, forge.Hook{Event: "push"}, "a")
		job := jobs[0].ID
		lines := chunkLog(1, 3000, 1)
		lines = append(lines, chunkLog(3005, 400, 3)...) // gaps
		var batches []int
		for _, n := range []int{1, 2, 7, 1500, 3, 1, 2000} {
			batches = append(batches, n)
		}
		start := 0
		for _, n := range batches {
			end := min(start+n, len(lines))
			if err := db.Append(ctx, job, lines[start:end]); err != nil {
				t.Fatalf("Append %d..%d: %v", start, end, err)
			}
			start = end
		}
		if start != len(lines) {
			t.Fatalf("appended %d of %d lines", start, len(lines))
		}
		var chunks int
		if err := db.w.QueryRow(db.q("SELECT count(*) FROM log_chunks WHERE job_id = ?"), job).Scan(&chunks); err != nil {
			t.Fatal(err)
		}
		if want := (len(lines) + chunkLines - 1) / chunkLines; chunks > want+1 {
			t.Errorf("%d lines in %d chunks, want at most %d: small appends should extend the last chunk", len(lines), chunks, want+1)
		}
		last := lines[len(lines)-1].Number
		if n, err := db.LogLen(ctx, job); err != nil || n != last {
			t.Fatalf("LogLen: %d, %v; want %d", n, err, last)
		}
		all, err := db.Lines(ctx, job, 1, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(all, lines) {
			t.Fatalf("Lines(1, 0): %d lines, differ from the %d appended", len(all), len(lines))
		}
		for _, rg := range [][2]int{{1020, 10}, {1024, 1}, {1025, 2048}, {2999, 20}, {3001, 4}, {3006, 1}, {4000, 0}, {last, 5}, {last + 1, 5}, {5, 0}} {
			got, err := db.Lines(ctx, job, rg[0], rg[1])
			if err != nil {
				t.Fatal(err)
			}
			var want []forge.LogLine
			for _, l := range lines {
				if l.Number >= rg[0] && (rg[1] <= 0 || l.Number < rg[0]+rg[1]) {
					want = append(want, l)
				}
			}
			if len(got) != len(want) || (len(want) > 0 && !reflect.DeepEqual(got, want)) {
				t.Errorf("Lines(%d, %d): got %d lines, want %d", rg[0], rg[1], len(got), len(want))
			}
		}
		// Search, ignoring case of every letter, on both databases.
		got, total, err := db.SearchLog(ctx, job, "größe über", 1, 2)
		if err != nil {
			t.Fatal(err)
		}
		var want []int
		for _, l := range lines {
			if l.Number%97 == 0 {
				want = append(want, l.Number)
			}
		}
		if total != len(want) || !slices.Equal(got, want[:2]) {
			t.Errorf("SearchLog(größe über): %v of %d, want %v of %d", got, total, want[:2], len(want))
		}
		want = nil
		for _, l := range lines {
			if l.Number >= 3000 && strings.Contains(l.Text, "line 3") {
				want = append(want, l.Number)
			}
		}
		if got, total, err := db.SearchLog(ctx, job, "LINE 3", 3000, 0); err != nil || total != len(want) || !slices.Equal(got, want) {
			t.Errorf("SearchLog(LINE 3, from 3000): %d matches, %v; want %d", total, err, len(want))
		}
		wantCode(t, db.Append(ctx, job, []forge.LogLine{{Number: last, Text: "again"}}), forge.ECONFLICT)
		wantCode(t, db.Append(ctx, job, []forge.LogLine{{Number: last + 2, Text: "x"}, {Number: last + 1, Text: "y"}}), forge.ECONFLICT)
		if n, _ := db.LogLen(ctx, job); n != last {
			t.Fatalf("LogLen after refused appends: %d, want %d", n, last)
		}
	})
}

// TestMigrateLogsIntoChunks: migration 00008 turns the log lines stored a
// row a line (schema 00007) into chunks that read back the same, with any
// text (NUL and bad UTF-8 were cleaned on the way in), streams, gaps and
// times; the log then grows from its last line, its search index and
// pruning work, and its rows of the old table are pruned with it.
func TestMigrateLogsIntoChunks(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := openTest(t, testConfig(t, kind))
		migrateTo(t, db, 7)
		r := mustRepo(t, db, "acme", "old")
		b, jobs := mustBuild(t, db, r, forge.Hook{Event: "push"}, "a", "b", "empty")
		logs := map[int64][]forge.LogLine{
			jobs[0].ID: chunkLog(1, 2500, 1),
			jobs[1].ID: append(chunkLog(1, 3, 1), chunkLog(2000, 5, 1000)...),
		}
		logs[jobs[1].ID][1].Text = "tab\tand: colon 12 34 56:  "
		logs[jobs[1].ID][2].Stream = "a: stream 7 8"
		for job, lines := range logs {
			for _, l := range lines {
				_, err := db.w.ExecContext(ctx, db.q("INSERT INTO logs (job_id, number, time, stream, text) VALUES (?, ?, ?, ?, ?)"),
					job, l.Number, l.Time.UnixMicro(), string(l.Stream), l.Text)
				if err != nil {
					t.Fatal(err)
				}
			}
		}
		if _, err := db.Migrate(ctx, "up"); err != nil {
			t.Fatal(err)
		}
		for job, lines := range logs {
			got, err := db.Lines(ctx, job, 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, lines) {
				t.Fatalf("job %d after the migration: %d lines, differ from the %d stored before", job, len(got), len(lines))
			}
			if n, err := db.LogLen(ctx, job); err != nil || n != lines[len(lines)-1].Number {
				t.Fatalf("LogLen of job %d: %d, %v", job, n, err)
			}
		}
		if n, err := db.LogLen(ctx, jobs[2].ID); err != nil || n != 0 {
			t.Fatalf("LogLen of a job without lines: %d, %v", n, err)
		}
		got, err := db.Lines(ctx, jobs[0].ID, 1023, 4)
		if err != nil || !reflect.DeepEqual(got, logs[jobs[0].ID][1022:1026]) {
			t.Fatalf("Lines(1023, 4) after the migration: %v, %v", got, err)
		}
		// The converted last chunk grows (it is rewritten in the store's
		// own form) and its lines stay.
		more := chunkLog(6001, 10, 1)
		if err := db.Append(ctx, jobs[1].ID, more); err != nil {
			t.Fatal(err)
		}
		want := append(slices.Clone(logs[jobs[1].ID]), more...)
		if got, err := db.Lines(ctx, jobs[1].ID, 0, 0); err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("job %d after an append: %d lines, %v; want %d", jobs[1].ID, len(got), err, len(want))
		}
		wantCode(t, db.Append(ctx, jobs[0].ID, chunkLog(2500, 1, 1)), forge.ECONFLICT)

		// Index, search across builds, prune.
		for _, j := range jobs {
			j.Status = forge.StatusSuccess
			if err := db.UpdateJob(ctx, j); err != nil {
				t.Fatal(err)
			}
		}
		b.Status = forge.StatusSuccess
		if err := db.UpdateBuild(ctx, b); err != nil {
			t.Fatal(err)
		}
		if n, err := db.IndexLogs(ctx, 1<<20); err != nil || n != 2500+8+10 {
			t.Fatalf("IndexLogs: %d, %v; want %d lines", n, err, 2500+8+10)
		}
		ms, err := db.SearchLogs(ctx, r.ID, "colon 12", 10)
		if err != nil || len(ms) != 1 || ms[0].Line != 2 || ms[0].Text != logs[jobs[1].ID][1].Text {
			t.Fatalf("SearchLogs after the migration: %+v, %v", ms, err)
		}
		b2, _ := mustBuild(t, db, r, forge.Hook{Event: "push"}, "a")
		b2.Status = forge.StatusSuccess
		if err := db.UpdateBuild(ctx, b2); err != nil {
			t.Fatal(err)
		}
		if n, err := db.PruneLogs(ctx, Retention{Builds: 1}); err != nil || n != 2 {
			t.Fatalf("PruneLogs: %d, %v; want the 2 logs of the older build", n, err)
		}
		for _, table := range []string{"logs", "log_chunks"} {
			var n int
			if err := db.w.QueryRow("SELECT count(*) FROM " + table).Scan(&n); err != nil || n != 0 {
				t.Errorf("%s after pruning: %d rows, %v", table, n, err)
			}
		}
		if ms, err := db.SearchLogs(ctx, r.ID, "colon 12", 10); err != nil || len(ms) != 0 {
			t.Errorf("SearchLogs after pruning: %+v, %v", ms, err)
		}
	})
}

// FuzzChunkReader: no data makes the decoder panic or loop; what the
// encoder writes decodes to what it was given.
func FuzzChunkReader(f *testing.F) {
	var e chunkEncoder
	e.reset()
	for _, l := range chunkLog(1, 5, 2) {
		e.add(int64(l.Number), l.Time.UnixMicro(), l.Stream, l.Text)
	}
	f.Add(e.buf)
	f.Add([]byte("T1 2 6 4:stdouttext3 4 0 0:"))
	f.Add([]byte("T1 2 99 4:x"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := chunkReader{data: data}
		if r.start() != nil {
			return
		}
		for i := 0; r.next(); i++ {
			if i > len(data) {
				t.Fatal("more lines than bytes")
			}
		}
	})
}

// TestFoldMatcher: the search of a whole chunk finds exactly the lines a
// line-by-line lower-case comparison finds, whatever the query matches in
// the encoding between the texts or across two lines.
func TestFoldMatcher(t *testing.T) {
	lines := chunkLog(1, 300, 1)
	lines[10].Text = "INDEX out of Range"
	lines[11].Text = "index"
	lines[12].Text = " out of range"
	lines[13].Text = "aaaaaaaaaaaaab"
	lines[14].Text = "stdout"
	var e chunkEncoder
	e.reset()
	for _, l := range lines {
		e.add(int64(l.Number), l.Time.UnixMicro(), l.Stream, l.Text)
	}
	data := e.buf
	for _, q := range []string{"index out of range", "INDEX", "line 1", "e 29", "aab", "A", "stdout", "\x01", "ö", "GRÖSSE ÜBER", "x", "line 300", " ", "range" + "\n"} {
		lq := strings.ToLower(q)
		var want []int64
		for _, l := range lines {
			if l.Number >= 5 && strings.Contains(strings.ToLower(l.Text), lq) {
				want = append(want, int64(l.Number))
			}
		}
		m := newFoldMatcher(q)
		r := &chunkReader{data: data}
		if err := r.start(); err != nil {
			t.Fatal(err)
		}
		var got []int64
		m.each(r, 5, func(n int64) { got = append(got, n) })
		if r.err != nil || !slices.Equal(got, want) {
			t.Errorf("search %q: got %v (%v), want %v", q, got, r.err, want)
		}
	}
}

// FuzzIndexFoldASCII: indexFoldASCII agrees with strings.Index on the
// lower-cased text.
func FuzzIndexFoldASCII(f *testing.F) {
	f.Add("Connection RESET by peer", "reset")
	f.Add("aAaAb", "aab")
	f.Fuzz(func(t *testing.T, s, q string) {
		lq := strings.ToLower(q)
		if lq == "" || nonASCII([]byte(lq)) || nonASCII([]byte(s)) {
			return
		}
		if got, want := indexFoldASCII([]byte(s), []byte(lq)), strings.Index(strings.ToLower(s), lq); got != want {
			t.Fatalf("indexFoldASCII(%q, %q) = %d, want %d", s, lq, got, want)
		}
	})
}
