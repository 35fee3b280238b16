package http_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge"
	httpapi "github.com/forgeci/forge/internal/http"
	"github.com/forgeci/forge/internal/livelog"
)

// hubLogs adapts livelog.Hub to httpapi.LiveLogs, as cmd/forge does.
type hubLogs struct{ hub *livelog.Hub }

func (h hubLogs) Follow(jobID int64) (<-chan forge.LogLine, func() bool, func()) {
	s := h.hub.Subscribe(jobID, 1024)
	return s.C(), s.Dropped, s.Close
}

func line(n int) forge.LogLine {
	return forge.LogLine{Number: n, Time: time.Now(), Stream: forge.Stdout, Text: fmt.Sprintf("line %d", n)}
}

func TestFollowLogStreamsStoredThenLiveLinesOnce(t *testing.T) {
	for _, withLive := range []bool{true, false} {
		t.Run(fmt.Sprintf("live=%v", withLive), func(t *testing.T) {
			hub := livelog.New()
			f := newFixture(t, func(o *httpapi.Options) {
				if withLive {
					o.Live = hubLogs{hub}
				}
			})
			ctx := context.Background()
			// A running job with one stored line.
			job := &forge.BuildJob{Name: "test"}
			b := &forge.Build{RepoID: f.repo.ID, Action: "execute", Hook: f.done.Hook}
			must(t, f.db.CreateBuild(ctx, b, []*forge.BuildJob{job}))
			job.Status = forge.StatusRunning
			must(t, f.db.UpdateJob(ctx, job))
			must(t, f.db.Append(ctx, job.ID, []forge.LogLine{line(1), line(2)}))

			url := fmt.Sprintf("%s/api/v1/repos/acme/app/builds/%d/jobs/%d/log?follow=true&from=2", f.srv.URL, b.Number, job.ID)
			resp, err := http.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body := make(chan string, 1)
			go func() {
				data, _ := io.ReadAll(resp.Body)
				body <- string(data)
			}()
			for hub.Subscribers(job.ID) == 0 && withLive {
				time.Sleep(time.Millisecond)
			}
			// Like the runner: lines go live at once and reach the
			// store a little later. Line 3 went live before the
			// follower subscribed: line 4 arrives live after a gap.
			hub.Publish(job.ID, []forge.LogLine{line(4)})
			time.Sleep(30 * time.Millisecond)
			must(t, f.db.Append(ctx, job.ID, []forge.LogLine{line(3), line(4)}))
			hub.Publish(job.ID, []forge.LogLine{line(5)})
			must(t, f.db.Append(ctx, job.ID, []forge.LogLine{line(5)}))
			job.Status = forge.StatusSuccess
			must(t, f.db.UpdateJob(ctx, job))
			hub.Finish(job.ID)
			select {
			case got := <-body:
				want := "line 2\nline 3\nline 4\nline 5\n"
				if got != want {
					t.Errorf("followed log = %q, want %q", got, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the follow did not end with the job")
			}
		})
	}
}

func TestFollowFinishedJobReturnsAtOnce(t *testing.T) {
	f := newFixture(t, func(o *httpapi.Options) { o.Live = hubLogs{livelog.New()} })
	url := fmt.Sprintf("/api/v1/repos/acme/app/builds/%d/jobs/%d/log?follow=1", f.done.Number, f.job.ID)
	start := time.Now()
	resp, body := f.do(t, "GET", url, "", "")
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "line 1 <b>\n") || strings.Count(string(body), "\n") != 5 {
		t.Errorf("follow of a finished job = %d %q", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v for a finished job", d)
	}
	if resp, _ := f.do(t, "GET", strings.Replace(url, "follow=1", "follow=maybe", 1), "", ""); resp.StatusCode != 400 {
		t.Errorf("follow=maybe: %d, want 400", resp.StatusCode)
	}
}

// TestRawLogNeutralisesTerminalEscapes: the raw log, paged or followed,
// keeps colours and neutralises every other control sequence, so that
// reading a stranger's log in a terminal cannot write the clipboard or
// retitle the window; ?download=true gives the exact bytes as an attachment
// (issue 7, item 3).
func TestRawLogNeutralisesTerminalEscapes(t *testing.T) {
	f := newFixture(t, func(o *httpapi.Options) { o.Live = hubLogs{livelog.New()} })
	ctx := context.Background()
	job := &forge.BuildJob{Name: "evil"}
	b := &forge.Build{RepoID: f.repo.ID, Action: "execute", Hook: f.done.Hook}
	must(t, f.db.CreateBuild(ctx, b, []*forge.BuildJob{job}))
	job.Status = forge.StatusFailure
	must(t, f.db.UpdateJob(ctx, job))
	raw := []string{
		"\x1b]52;c;cm0gLXJmIH4K\x07copied",
		"\x1b]0;pwned\x1b\\title",
		"\x1b[2J\x1b[Hcleared\a\b",
		"\x1b[31mred\x1b[0m",
		"10%\r100%",
	}
	var lines []forge.LogLine
	for i, text := range raw {
		lines = append(lines, forge.LogLine{Number: i + 1, Time: time.Now(), Stream: forge.Stdout, Text: text})
	}
	must(t, f.db.Append(ctx, job.ID, lines))
	base := fmt.Sprintf("/api/v1/repos/acme/app/builds/%d/jobs/%d/log", b.Number, job.ID)
	shown := "copied\ntitle\ncleared\n\x1b[31mred\x1b[0m\n100%\n"
	exact := strings.Join(raw, "\n") + "\n"
	for _, tt := range []struct{ query, want string }{
		{"", shown},
		{"?follow=true", shown},
		{"?download=true", exact},
		{"?download=1&follow=true", exact},
	} {
		resp, body := f.do(t, "GET", base+tt.query, "", "")
		if resp.StatusCode != 200 || string(body) != tt.want {
			t.Errorf("log%s = %d %q, want %q", tt.query, resp.StatusCode, body, tt.want)
		}
		cd := resp.Header.Get("Content-Disposition")
		if download := strings.Contains(tt.query, "download"); download != (cd != "") ||
			download && cd != fmt.Sprintf(`attachment; filename=acme-app-build-%d-job-%d.log`, b.Number, job.ID) {
			t.Errorf("log%s: Content-Disposition %q", tt.query, cd)
		}
	}
	if resp, _ := f.do(t, "GET", base+"?download=yes-please", "", ""); resp.StatusCode != 400 {
		t.Errorf("download=yes-please: %d, want 400", resp.StatusCode)
	}
}
