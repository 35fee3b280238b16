package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/engine"
)

func TestTimestamper(t *testing.T) {
	var ts timestamper
	base := time.Date(2026, 11, 26, 13, 4, 5, 0, time.UTC)
	for _, tm := range []time.Time{
		base, base.Add(123456 * time.Microsecond), base.Add(999999999), base.Add(time.Second + 7*time.Microsecond),
		base.Add(time.Hour + 1).In(time.FixedZone("X", 3600)), time.Date(1969, 12, 31, 23, 59, 59, 250000000, time.UTC),
	} {
		want := tm.UTC().Format("2006-01-02T15:04:05.000000Z")
		if got := string(ts.format(tm)); got != want {
			t.Errorf("format(%v) = %s, want %s", tm, got, want)
		}
	}
}

func TestLogFileName(t *testing.T) {
	for in, want := range map[string]string{
		"build":                    "build",
		"test (go=1.22, os=linux)": "test__go_1.22__os_linux_",
		"../etc/passwd":            ".._etc_passwd",
		"a/b":                      "a_b",
	} {
		if got := logFileName(in); got != want {
			t.Errorf("logFileName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFit(t *testing.T) {
	tests := []struct {
		in       string
		n        int
		coloured bool
		want     string
	}{
		{"hello", 10, false, "hello"},
		{"hello", 3, false, "hel"},
		{"héllo wörld", 4, false, "héll"},
		{"\x1b[32m✓\x1b[0m build", 3, true, "\x1b[32m✓\x1b[0m b\x1b[0m"},
	}
	for _, tt := range tests {
		if got := fitWidth(tt.in, tt.n, tt.coloured); got != tt.want {
			t.Errorf("fit(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}

// TestLiveView drives the terminal view with events and checks what a
// terminal would get: prefixed, coloured lines, a state block redrawn in
// place, and the summary at the end without the block.
func TestLiveView(t *testing.T) {
	plan := &forge.Plan{Jobs: []*forge.Job{
		{Name: "build", Steps: []forge.Step{{Name: "compile"}, {Name: "link"}}},
		{Name: "test", Needs: []string{"build"}, Steps: []forge.Step{{Name: "unit"}}},
	}}
	var out bytes.Buffer
	v := newTextView(&out, plan, true, true, func() (int, int) { return 60, 20 }, nil)
	now := time.Now()
	v.now = func() time.Time { return now.Add(1500 * time.Millisecond) }
	ev := func(e forge.Event) {
		if e.Time.IsZero() {
			e.Time = now
		}
		v.Report(e)
	}
	ev(forge.Event{Type: forge.EventJobQueued, Job: "build"})
	ev(forge.Event{Type: forge.EventJobQueued, Job: "test"})
	ev(forge.Event{Type: forge.EventJobStarted, Job: "build", Attempt: 1})
	ev(forge.Event{Type: forge.EventStepStarted, Job: "build", Step: 1, StepName: "link"})
	v.mu.Lock() // what a tick does, without waiting for one
	v.eraseBlock()
	v.drawBlock()
	v.mu.Unlock()
	ev(forge.Event{Type: forge.EventLine, Job: "build", Line: &forge.LogLine{Text: "linking\r\x1b[2Kdone"}})
	ev(forge.Event{Type: forge.EventJobFinished, Job: "build", Status: forge.StatusSuccess, Duration: time.Second})
	ev(forge.Event{Type: forge.EventJobFinished, Job: "test", Status: forge.StatusSkipped, Message: "needs nothing"})
	if err := v.Finish(&engine.Result{Status: forge.StatusSuccess, Duration: time.Second, Jobs: []*engine.JobResult{
		{Name: "build", Status: forge.StatusSuccess, Attempts: 1, Duration: time.Second},
		{Name: "test", Status: forge.StatusSkipped, Message: "needs nothing"},
	}}); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{
		"\x1b[36m[build] \x1b[0mdone\n", // prefix coloured; no cursor movement from the job
		"step 2/2 link",                 // the state block names the step
		"1.5s",                          // and the elapsed time
		"\x1b[2F\x1b[J",                 // a two-line block erased in place
		"\x1b[33m[test]  \x1b[0m\x1b[2mskipped: needs nothing\x1b", // padded to "build"; forge's own lines dimmed
		"1 passed, 1 skipped",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("live output lacks %q:\n%q", want, s)
		}
	}
	// The block is gone before the summary: the last erase comes after the
	// last block line.
	if i, j := strings.LastIndex(s, "\x1b[J"), strings.LastIndex(s, "\x1b[K"); i < j {
		t.Errorf("the state block is left on screen after the run:\n%q", s)
	}
	for _, l := range strings.Split(s, "\n") {
		if plain := regexp.MustCompile("\x1b\\[[0-9;]*[A-Za-z]").ReplaceAllString(l, ""); len([]rune(plain)) > 60 && strings.Contains(l, "\x1b[K") {
			t.Errorf("a block line is wider than the terminal: %q", plain)
		}
	}
}

func TestPlainViewNoColourNoBlock(t *testing.T) {
	plan := &forge.Plan{Jobs: []*forge.Job{{Name: "a", Steps: []forge.Step{{Name: "s"}}}}}
	var out bytes.Buffer
	v := newTextView(&out, plan, false, true, nil, nil)
	v.Report(forge.Event{Type: forge.EventJobQueued, Job: "a"})
	v.Report(forge.Event{Type: forge.EventJobStarted, Job: "a", Attempt: 1})
	v.Report(forge.Event{Type: forge.EventLine, Job: "a", Line: &forge.LogLine{Text: "raw\x1b[31m text"}})
	// Issue 7, item 3: output piped to a file and shown later in a
	// terminal cannot write the clipboard or retitle the window either.
	v.Report(forge.Event{Type: forge.EventLine, Job: "a", Line: &forge.LogLine{Text: "\x1b]52;c;cm0gLXJmIH4K\x07copy\x1b]0;title\x1b\\\a\b\x1b[2J\u009b2J"}})
	v.Finish(&engine.Result{Status: forge.StatusSuccess, Jobs: []*engine.JobResult{{Name: "a", Status: forge.StatusSuccess, Attempts: 1}}})
	s := out.String()
	if !strings.HasPrefix(s, "[a] raw\x1b[31m text\n[a] copy\n") {
		t.Errorf("plain output: got %q, want the job's text prefixed, colours kept, other controls removed", s)
	}
	if strings.Count(s, "\x1b") != 1 {
		t.Errorf("plain output has escape codes of forge's own: %q", s)
	}
}

// TestLiveViewOverflow: more jobs than half the terminal's rows shows the
// running ones and a line counting them all.
func TestLiveViewOverflow(t *testing.T) {
	plan := &forge.Plan{}
	for i := range 10 {
		plan.Jobs = append(plan.Jobs, &forge.Job{Name: fmt.Sprintf("job%d", i), Steps: []forge.Step{{Name: "s"}}})
	}
	var out bytes.Buffer
	v := newTextView(&out, plan, true, false, func() (int, int) { return 80, 6 }, nil)
	for _, j := range plan.Jobs {
		v.Report(forge.Event{Type: forge.EventJobQueued, Job: j.Name})
	}
	v.Report(forge.Event{Type: forge.EventJobStarted, Job: "job3", Attempt: 1, Time: time.Now()})
	v.Report(forge.Event{Type: forge.EventJobFinished, Job: "job0", Status: forge.StatusSuccess})
	v.mu.Lock()
	v.eraseBlock()
	v.w.Flush()
	mark := out.Len()
	v.drawBlock()
	v.w.Flush()
	block := out.String()[mark:]
	v.mu.Unlock()
	v.Halt()
	lines := strings.Split(strings.TrimSuffix(block, "\n"), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "job3") || !strings.Contains(lines[1], "all 10 jobs: 1 running, 8 queued, 1 success") {
		t.Errorf("block: got %q, want job3's line and the counts", lines)
	}
}

// TestJSONLineFastPath: the hand-written encoding of line events is byte
// for byte what encoding/json makes, for awkward text too.
func TestJSONLineFastPath(t *testing.T) {
	texts := []string{
		"", "plain", `quote " backslash \ slash /`, "tab\tnl\ncr\rbs\bff\f", "\x00\x01\x1f\x7f",
		"<html> & 'x'", "héllo wörld ✓ 🚀", "bad \xff\xfe utf8 \xc3", "sep \u2028 \u2029 end", "\xe2\x80", "ﾟ\uFFFD",
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for range 300 {
		b := make([]byte, rng.IntN(40))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		texts = append(texts, string(b))
	}
	zones := []*time.Location{time.UTC, time.FixedZone("X", -5*3600-30*60)}
	for i, text := range texts {
		e := forge.Event{
			Type: forge.EventLine, Time: time.Date(2026, 11, 26, 13, 4, 5, i*1000, zones[i%2]),
			Job: []string{"", "build", "test (go=1.22, os=\"x\")"}[i%3], Attempt: i % 3, Step: i % 4,
			StepName: []string{"", "go test ./...", text}[i%3],
			Line:     &forge.LogLine{Number: i + 1, Time: time.Date(2026, 1, 2, 3, 4, 5, 999999999-i, zones[(i+1)%2]), Stream: forge.Stderr, Text: text},
		}
		if !lineFastPath(&e) {
			t.Fatalf("event %d does not take the fast path", i)
		}
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		enc.Encode(e)
		if got := appendLineEvent(nil, &e); string(got) != want.String() {
			t.Errorf("text %q:\ngot  %s\nwant %s", text, got, want.String())
		}
	}
	for _, e := range []forge.Event{
		{Type: forge.EventLine},
		{Type: forge.EventLine, Line: &forge.LogLine{}, Message: "x"},
		{Type: forge.EventStepStarted, Line: &forge.LogLine{}},
		{Type: forge.EventLine, Line: &forge.LogLine{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}},
	} {
		if lineFastPath(&e) {
			t.Errorf("%+v takes the fast path", e)
		}
	}
}
