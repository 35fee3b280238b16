package http_test

import (
	"bufio"
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forgeci/forge"
	httpapi "github.com/forgeci/forge/internal/http"
	"github.com/forgeci/forge/internal/livelog"
	"github.com/forgeci/forge/internal/testwait"
)

// newJob creates a build of f's repository with one job of status st and
// the given log lines.
func newJob(t *testing.T, f *fixture, st forge.Status, n int, text func(i int) string) (*forge.Build, *forge.BuildJob) {
	t.Helper()
	ctx := context.Background()
	job := &forge.BuildJob{Name: "test"}
	b := &forge.Build{RepoID: f.repo.ID, Action: "execute", Hook: f.done.Hook}
	must(t, f.db.CreateBuild(ctx, b, []*forge.BuildJob{job}))
	job.Status = st
	must(t, f.db.UpdateJob(ctx, job))
	var lines []forge.LogLine
	for i := 1; i <= n; i++ {
		lines = append(lines, forge.LogLine{Number: i, Time: time.Date(2026, 12, 1, 10, 0, 0, i*1000, time.UTC), Stream: forge.Stdout, Text: text(i)})
		if len(lines) == 5000 || i == n {
			must(t, f.db.Append(ctx, job.ID, lines))
			lines = lines[:0]
		}
	}
	return b, job
}

func get(t *testing.T, url string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// TestLogRangesJSONAndTimestamps: any range of a log as JSON with its
// length and completeness, exact text; raw text with timestamps; a raw log
// longer than a page streams whole, and by range across pages (issue 11,
// item 1).
func TestLogRangesJSONAndTimestamps(t *testing.T) {
	f := newFixture(t, nil)
	const n = 25000 // more than two pages of the raw stream
	b, job := newJob(t, f, forge.StatusRunning, n, func(i int) string { return fmt.Sprintf("line %d \x1b[31m<b>", i) })
	base := fmt.Sprintf("%s/api/v1/repos/acme/app/builds/%d/jobs/%d/log", f.srv.URL, b.Number, job.ID)

	resp, body := get(t, base+"?from=12000&limit=3", "Accept", "application/json")
	var page struct {
		Lines []forge.LogLine `json:"lines"`
		Total int             `json:"total"`
		Done  bool            `json:"done"`
	}
	if err := json.Unmarshal(body, &page); err != nil || resp.StatusCode != 200 {
		t.Fatalf("JSON range: %d %s (%v)", resp.StatusCode, body, err)
	}
	if len(page.Lines) != 3 || page.Lines[0].Number != 12000 || page.Lines[2].Text != "line 12002 \x1b[31m<b>" ||
		page.Total != n || page.Done || resp.Header.Get("X-Log-Next") != "12003" {
		t.Errorf("JSON range = %+v next %s; want lines 12000-12002 with exact text, total %d, not done", page, resp.Header.Get("X-Log-Next"), n)
	}
	for _, q := range []string{"?limit=10001", "?follow=true", "?from=0"} {
		if resp, body := get(t, base+q, "Accept", "application/json"); resp.StatusCode != 400 {
			t.Errorf("JSON %s: %d %s, want 400", q, resp.StatusCode, body)
		}
	}

	resp, body = get(t, base)
	if got := strings.Count(string(body), "\n"); got != n || resp.Header.Get("X-Log-Next") != strconv.Itoa(n+1) {
		t.Errorf("whole raw log: %d lines next %s, want %d next %d", got, resp.Header.Get("X-Log-Next"), n, n+1)
	}
	if !strings.HasSuffix(string(body), "line 25000 \x1b[31m<b>\n") {
		t.Errorf("whole raw log ends %q", body[len(body)-40:])
	}
	resp, body = get(t, base+"?from=9999&limit=10003")
	lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
	if len(lines) != 10003 || lines[0] != "line 9999 \x1b[31m<b>" || lines[10002] != "line 20001 \x1b[31m<b>" || resp.Header.Get("X-Log-Next") != "20002" {
		t.Errorf("range across pages: %d lines %q..%q next %s", len(lines), lines[0], lines[len(lines)-1], resp.Header.Get("X-Log-Next"))
	}
	_, body = get(t, base+"?from=2&limit=1&timestamps=true")
	if want := "2026-12-01T10:00:00.000002Z line 2 \x1b[31m<b>\n"; string(body) != want {
		t.Errorf("timestamps: %q, want %q", body, want)
	}
}

// TestLogSearchEndpoints: in-log search and search across builds answer
// with what the store finds (issue 11, items 3 and 4).
func TestLogSearchEndpoints(t *testing.T) {
	f := newFixture(t, nil)
	b, job := newJob(t, f, forge.StatusFailure, 3000, func(i int) string {
		if i%1000 == 7 {
			return "read tcp: Connection Reset by peer"
		}
		return fmt.Sprintf("line %d", i)
	})
	url := fmt.Sprintf("%s/api/v1/repos/acme/app/builds/%d/jobs/%d/log/search?q=connection+reset&from=10&limit=1", f.srv.URL, b.Number, job.ID)
	_, body := get(t, url)
	if want := `{"matches":[1007],"total":2}` + "\n"; string(body) != want {
		t.Errorf("in-log search = %s, want %s", body, want)
	}
	for {
		n, err := f.db.IndexLogs(context.Background(), 100000)
		must(t, err)
		if n == 0 {
			break
		}
	}
	_, body = get(t, f.srv.URL+"/api/v1/repos/acme/app/search?q=connection%20reset&limit=5")
	var found []forge.LogMatch
	if err := json.Unmarshal(body, &found); err != nil || len(found) != 3 || found[0].Line != 2007 || found[0].Build != b.Number || found[0].JobName != "test" {
		t.Errorf("search across builds = %s (%v), want lines 2007, 1007, 7 of build %d", body, err, b.Number)
	}
}

// sseEvent is one Server-Sent Event.
type sseEvent struct{ id, event, data string }

// readEvents reads events from r into out until r ends or stop says so.
func readEvents(r io.Reader, stop func(sseEvent) bool) []sseEvent {
	var out []sseEvent
	var ev sseEvent
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.event != "" || ev.data != "" {
				out = append(out, ev)
				if stop(ev) {
					return out
				}
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			ev.data = line[6:]
		}
	}
	return out
}

// TestLogEventsResumeWithoutGapOrRepeat: a viewer of a fast-printing job
// disconnects in the middle and reconnects with Last-Event-ID; together
// the two streams hold every line exactly once, in order, then the end
// event with the job's status. A late viewer with ?from= gets the stored
// lines first (issue 11, item 2).
func TestLogEventsResumeWithoutGapOrRepeat(t *testing.T) {
	hub := livelog.New()
	f := newFixture(t, func(o *httpapi.Options) { o.Live = hubLogs{hub} })
	ctx := context.Background()
	b, job := newJob(t, f, forge.StatusRunning, 100, func(i int) string { return fmt.Sprintf("early %d", i) })
	url := fmt.Sprintf("%s/api/v1/repos/acme/app/builds/%d/jobs/%d/log/events", f.srv.URL, b.Number, job.ID)

	const total = 20000
	var printing sync.WaitGroup
	printing.Add(1)
	start := make(chan struct{})
	go func() { // the job: publish live, store a little later, like the runner
		defer printing.Done()
		<-start
		for n := 101; n <= total; n += 50 {
			var lines []forge.LogLine
			for i := n; i < n+50 && i <= total; i++ {
				lines = append(lines, forge.LogLine{Number: i, Time: time.Now(), Stream: forge.Stderr, Text: fmt.Sprintf("line %d <script>", i)})
			}
			hub.Publish(job.ID, lines)
			if err := f.db.Append(ctx, job.ID, lines); err != nil {
				t.Error(err)
				return
			}
		}
		job.Status = forge.StatusFailure
		if err := f.db.UpdateJob(ctx, job); err != nil {
			t.Error(err)
		}
		hub.Finish(job.ID)
	}()

	// First viewer: from line 50, gone after 3,000 lines.
	resp, err := http.Get(url + "?from=50")
	must(t, err)
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("content type %q", ct)
	}
	close(start)
	first := readEvents(resp.Body, func(e sseEvent) bool { return e.event == "line" && e.id == "3049" })
	resp.Body.Close()
	last := first[len(first)-1].id

	// Second viewer: resumes after the last line it saw.
	req, _ := http.NewRequest("GET", url+"?from=50", nil)
	req.Header.Set("Last-Event-ID", last)
	resp, err = http.DefaultClient.Do(req)
	must(t, err)
	done := make(chan []sseEvent, 1)
	go func() { done <- readEvents(resp.Body, func(sseEvent) bool { return false }) }()
	var second []sseEvent
	select {
	case second = <-done:
	case <-time.After(testwait.Scale(5 * time.Minute)): // 60s was not enough under make test-loaded
		t.Fatal("the event stream did not end with the job")
	}
	resp.Body.Close()
	printing.Wait()

	all := append(first, second...)
	want := 50
	for _, e := range all[:len(all)-1] {
		var l forge.LogLine
		if err := json.Unmarshal([]byte(e.data), &l); err != nil || e.event != "line" || l.Number != want || e.id != strconv.Itoa(want) {
			t.Fatalf("event %+v: want line %d (%v)", e, want, err)
		}
		if wantText := fmt.Sprintf("early %d", want); want > 100 {
			wantText = fmt.Sprintf("line %d <script>", want)
			if l.Text != wantText || l.Stream != forge.Stderr {
				t.Fatalf("line %d = %+v, want text %q on stderr", want, l, wantText)
			}
		} else if l.Text != wantText {
			t.Fatalf("line %d = %q, want %q", want, l.Text, wantText)
		}
		want++
	}
	if want != total+1 {
		t.Errorf("got lines 50 to %d, want to %d", want-1, total)
	}
	if end := all[len(all)-1]; end.event != "end" || end.data != `{"status":"failure"}` {
		t.Errorf("last event %+v, want end with status failure", end)
	}

	// A reconnect after the end gets the end at once.
	req.Header.Set("Last-Event-ID", strconv.Itoa(total))
	resp, err = http.DefaultClient.Do(req)
	must(t, err)
	evs := readEvents(resp.Body, func(sseEvent) bool { return false })
	resp.Body.Close()
	if len(evs) != 1 || evs[0].event != "end" {
		t.Errorf("reconnect after the end: %+v, want the end event only", evs)
	}
	if resp, _ := get(t, url, "Last-Event-ID", "x"); resp.StatusCode != 400 {
		t.Errorf("Last-Event-ID x: %d, want 400", resp.StatusCode)
	}
}

// svgDoc is what the badge tests read of an SVG.
type svgDoc struct {
	XMLName xml.Name `xml:"svg"`
	Width   string   `xml:"width,attr"`
	Title   string   `xml:"title"`
	Rects   []struct {
		Fill string `xml:"fill,attr"`
	} `xml:"g>rect"`
	Texts []string `xml:"g>text"`
}

// TestBadges: status, tests and coverage badges are valid SVG with the
// expected texts and colours, per branch and job; unknown things give a
// grey "unknown" badge with 200; status.json is shields.io's endpoint
// format; caches may keep them a minute (issue 11, item 7).
func TestBadges(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	// f.done: build 1 on main, succeeded, job "test". A later failing
	// build of a pull request must not count.
	pr := &forge.Build{RepoID: f.repo.ID, Action: "execute", Hook: f.done.Hook}
	pr.Hook.PullRequest = 7
	prJob := &forge.BuildJob{Name: "test"}
	must(t, f.db.CreateBuild(ctx, pr, []*forge.BuildJob{prJob}))
	pr.Status, pr.Finished = forge.StatusFailure, time.Now()
	must(t, f.db.UpdateBuild(ctx, pr))
	prJob.Status = forge.StatusFailure
	must(t, f.db.UpdateJob(ctx, prJob))
	cov := 87.9
	must(t, f.db.SaveJobReport(ctx, &forge.JobReport{JobID: f.job.ID, Tests: &forge.TestSummary{Total: 123, Failed: 2, Skipped: 3}, Coverage: &cov}))

	for _, tt := range []struct {
		path, title, color string
	}{
		{"status.svg", "build: passing", "#4c1"},
		{"status.svg?branch=main&job=test", "test: passing", "#4c1"},
		{"status.svg?job=nope", "nope: unknown", "#9f9f9f"},
		{"status.svg?branch=gone", "build: unknown", "#9f9f9f"},
		{"tests.svg", "tests: 118 passed, 2 failed, 3 skipped", "#e05d44"},
		{"coverage.svg", "coverage: 87%", "#97ca00"},
		{"../nobody/status.svg", "build: unknown", "#9f9f9f"},
	} {
		url := f.srv.URL + "/badges/acme/app/" + tt.path
		if strings.HasPrefix(tt.path, "../") {
			url = f.srv.URL + "/badges/acme/" + tt.path[3:]
		}
		resp, body := get(t, url)
		var doc svgDoc
		if err := xml.Unmarshal(body, &doc); err != nil || resp.StatusCode != 200 {
			t.Errorf("%s: %d, not an SVG (%v): %s", tt.path, resp.StatusCode, err, body)
			continue
		}
		if ct, cc := resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"); !strings.HasPrefix(ct, "image/svg+xml") || !strings.Contains(cc, "max-age=60") {
			t.Errorf("%s: Content-Type %q Cache-Control %q", tt.path, ct, cc)
		}
		label, value, _ := strings.Cut(tt.title, ": ")
		if doc.Title != tt.title || len(doc.Rects) < 2 || doc.Rects[0].Fill != "#555" || doc.Rects[1].Fill != tt.color ||
			len(doc.Texts) != 4 || doc.Texts[1] != label || doc.Texts[3] != value {
			t.Errorf("%s: title %q rects %+v texts %q; want %q in %s", tt.path, doc.Title, doc.Rects, doc.Texts, tt.title, tt.color)
		}
	}
	resp, body := get(t, f.srv.URL+"/badges/acme/app/status.json")
	if want := `{"schemaVersion":1,"label":"build","message":"passing","color":"4c1"}` + "\n"; string(body) != want || resp.StatusCode != 200 {
		t.Errorf("status.json = %d %s, want %s", resp.StatusCode, body, want)
	}
	// Public even when reads are private.
	g := newFixture(t, func(o *httpapi.Options) { o.PrivateReads = true })
	if resp, _ := get(t, g.srv.URL+"/badges/acme/app/status.svg"); resp.StatusCode != 200 {
		t.Errorf("badge with private reads: %d, want 200", resp.StatusCode)
	}
}
