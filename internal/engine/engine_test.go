package engine

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// recorder keeps every event and fails the test if it is ever called
// concurrently, since the engine promises one call at a time.
type recorder struct {
	t      *testing.T
	in     atomic.Int32
	events []forge.Event
	delay  time.Duration
}

func (r *recorder) Report(e forge.Event) {
	if r.in.Add(1) != 1 {
		r.t.Errorf("Report called concurrently (event %s of %s)", e.Type, e.Job)
	}
	if r.delay > 0 {
		time.Sleep(r.delay)
	}
	r.events = append(r.events, e)
	r.in.Add(-1)
}

// of returns the types of the events of job, in order.
func (r *recorder) of(job string) []forge.EventType {
	var out []forge.EventType
	for _, e := range r.events {
		if e.Job == job {
			out = append(out, e.Type)
		}
	}
	return out
}

// finished returns the EventJobFinished of job.
func (r *recorder) finished(job string) forge.Event {
	for _, e := range r.events {
		if e.Job == job && e.Type == forge.EventJobFinished {
			return e
		}
	}
	return forge.Event{}
}

func job(name string, needs []string, steps ...string) *forge.Job {
	j := &forge.Job{Name: name, Needs: needs}
	for i, s := range steps {
		j.Steps = append(j.Steps, forge.Step{Name: fmt.Sprintf("%s-%d", name, i+1), Run: s})
	}
	return j
}

func run(t *testing.T, ctx context.Context, opts Options, plan *forge.Plan, info RunInfo) (*Result, *recorder) {
	t.Helper()
	rec := &recorder{t: t}
	if opts.Reporter == nil {
		opts.Reporter = rec
	} else if r, ok := opts.Reporter.(*recorder); ok {
		rec = r
	}
	res, err := New(opts).Run(ctx, plan, info)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := len(rec.events); n == 0 || rec.events[n-1].Type != forge.EventPlanFinished {
		t.Fatalf("last event is not plan_finished: %v", rec.events)
	}
	return res, rec
}

func TestDAGOrder(t *testing.T) {
	b := &scripted{}
	plan := &forge.Plan{Action: "execute", Jobs: []*forge.Job{
		job("a", nil, "sleep 20ms"),
		job("b", []string{"a"}, "await 2"),
		job("c", []string{"a"}, "await 2"),
		job("d", []string{"b", "c"}, "print done"),
	}}
	res, _ := run(t, context.Background(), Options{Backend: b, Parallel: 4}, plan, RunInfo{})
	if res.Status != forge.StatusSuccess {
		t.Fatalf("status: got %s, want success", res.Status)
	}
	pos := func(s string) int { return slices.Index(b.log, s) }
	for _, c := range []struct{ before, after string }{
		{"end a", "start b"}, {"end a", "start c"}, {"end b", "start d"}, {"end c", "start d"},
	} {
		if pos(c.before) < 0 || pos(c.after) < 0 || pos(c.before) > pos(c.after) {
			t.Errorf("order: want %q before %q, got %v", c.before, c.after, b.log)
		}
	}
	if b.max < 2 {
		t.Errorf("b and c should run at once: max concurrency %d, want 2", b.max)
	}
}

func TestParallelLimit(t *testing.T) {
	for _, tc := range []struct{ parallel, jobs, want int }{
		{1, 4, 1}, {2, 6, 2}, {3, 10, 3}, {8, 5, 5},
	} {
		t.Run(fmt.Sprintf("parallel=%d/jobs=%d", tc.parallel, tc.jobs), func(t *testing.T) {
			b := &scripted{}
			plan := &forge.Plan{}
			for i := range tc.jobs {
				// Each job waits until as many run at once as may: more
				// would break the limit, fewer would time out the wait.
				plan.Jobs = append(plan.Jobs, job(fmt.Sprintf("j%d", i), nil, fmt.Sprintf("await %d\nsleep 5ms", tc.want)))
			}
			res, _ := run(t, context.Background(), Options{Backend: b, Parallel: tc.parallel}, plan, RunInfo{})
			if res.Status != forge.StatusSuccess {
				t.Fatalf("status: got %s, want success", res.Status)
			}
			if b.max != tc.want {
				t.Errorf("max concurrency: got %d, want %d", b.max, tc.want)
			}
		})
	}
}

func TestFailureSkipsDependents(t *testing.T) {
	b := &scripted{}
	plan := &forge.Plan{Jobs: []*forge.Job{
		job("build", nil, "exit 3"),
		job("test", []string{"build"}, "print never"),
		job("deploy", []string{"test"}, "print never"),
		job("lint", nil, "print ok"),
	}}
	res, rec := run(t, context.Background(), Options{Backend: b}, plan, RunInfo{})
	if res.Status != forge.StatusFailure {
		t.Errorf("status: got %s, want failure", res.Status)
	}
	for _, c := range []struct {
		job     string
		status  forge.Status
		message string
	}{
		{"build", forge.StatusFailure, `step "build-1" failed with exit code 3`},
		{"test", forge.StatusSkipped, `needs "build", which failed`},
		{"deploy", forge.StatusSkipped, `needs "test", which was skipped (needs "build", which failed)`},
		{"lint", forge.StatusSuccess, ""},
	} {
		jr := res.Job(c.job)
		if jr.Status != c.status || jr.Message != c.message {
			t.Errorf("%s: got %s %q, want %s %q", c.job, jr.Status, jr.Message, c.status, c.message)
		}
		if e := rec.finished(c.job); e.Status != c.status || e.Message != c.message {
			t.Errorf("%s job_finished: got %s %q, want %s %q", c.job, e.Status, e.Message, c.status, c.message)
		}
	}
	if got := res.Job("build").ExitCode; got != 3 {
		t.Errorf("build exit code: got %d, want 3", got)
	}
	for _, l := range b.log {
		if strings.HasSuffix(l, "test") || strings.HasSuffix(l, "deploy") {
			t.Errorf("skipped job ran: %v", b.log)
		}
	}
	if got, want := rec.of("test"), []forge.EventType{forge.EventJobQueued, forge.EventJobFinished}; !slices.Equal(got, want) {
		t.Errorf("events of a skipped job: got %v, want %v", got, want)
	}
}

func TestWhenSkipped(t *testing.T) {
	b := &scripted{}
	j := job("deploy", nil, "print never")
	j.Skip = "when: branch is not main"
	plan := &forge.Plan{Jobs: []*forge.Job{
		job("test", nil, "print ok"),
		j,
		job("notify", []string{"deploy"}, "print never"),
	}}
	res, _ := run(t, context.Background(), Options{Backend: b}, plan, RunInfo{})
	if res.Status != forge.StatusSuccess {
		t.Errorf("status: got %s, want success (skipped by when is fine)", res.Status)
	}
	if jr := res.Job("deploy"); jr.Status != forge.StatusSkipped || jr.Message != j.Skip || jr.Attempts != 0 {
		t.Errorf("deploy: got %s %q attempts %d, want skipped %q attempts 0", jr.Status, jr.Message, jr.Attempts, j.Skip)
	}
	if jr := res.Job("notify"); jr.Status != forge.StatusSkipped || !strings.Contains(jr.Message, `"deploy"`) {
		t.Errorf("notify: got %s %q, want skipped naming deploy", jr.Status, jr.Message)
	}
	if len(b.runs) != 1 {
		t.Errorf("ran %d jobs, want 1", len(b.runs))
	}
}

func TestContinueOnError(t *testing.T) {
	j := job("j", nil, "exit 4", "print after", "exit 5")
	j.Steps[0].ContinueOnError = true
	res, _ := run(t, context.Background(), Options{Backend: &scripted{}}, &forge.Plan{Jobs: []*forge.Job{j}}, RunInfo{})
	jr := res.Job("j")
	if jr.Status != forge.StatusFailure || jr.ExitCode != 5 || !strings.Contains(jr.Message, `"j-3"`) {
		t.Errorf("got %s exit %d %q, want failure exit 5 naming step j-3", jr.Status, jr.ExitCode, jr.Message)
	}
}

func TestRetries(t *testing.T) {
	for _, tc := range []struct {
		name         string
		script       string
		retries      int
		wantStatus   forge.Status
		wantAttempts int
	}{
		{"passes first time", "print ok", 2, forge.StatusSuccess, 1},
		{"passes on third", "fail-until 3", 2, forge.StatusSuccess, 3},
		{"runs out", "fail-until 3", 1, forge.StatusFailure, 2},
		{"no retries", "exit 1", 0, forge.StatusFailure, 1},
		{"errors are retried", "error disk full", 1, forge.StatusError, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := job("flaky", nil, tc.script)
			j.Retries = tc.retries
			b := &scripted{}
			res, rec := run(t, context.Background(), Options{Backend: b}, &forge.Plan{Jobs: []*forge.Job{j}}, RunInfo{})
			jr := res.Job("flaky")
			if jr.Status != tc.wantStatus || jr.Attempts != tc.wantAttempts {
				t.Errorf("got %s after %d attempts, want %s after %d", jr.Status, jr.Attempts, tc.wantStatus, tc.wantAttempts)
			}
			var attempts []int
			for _, e := range rec.events {
				if e.Type == forge.EventJobStarted {
					attempts = append(attempts, e.Attempt)
					if e.Attempt > 1 && !strings.HasPrefix(e.Message, fmt.Sprintf("retry %d of %d after", e.Attempt-1, tc.retries)) {
						t.Errorf("attempt %d message: got %q, want it to say it is a retry", e.Attempt, e.Message)
					}
				}
				if e.Type == forge.EventStepStarted && (e.Job != "flaky" || e.Attempt == 0) {
					t.Errorf("step event without job or attempt: %+v", e)
				}
			}
			if len(attempts) != tc.wantAttempts || (len(attempts) > 0 && attempts[len(attempts)-1] != tc.wantAttempts) {
				t.Errorf("job_started attempts: got %v, want 1..%d", attempts, tc.wantAttempts)
			}
			for i, r := range b.runs {
				if r.Attempt != i+1 {
					t.Errorf("JobRun.Attempt of run %d: got %d, want %d", i, r.Attempt, i+1)
				}
			}
		})
	}
}

func TestTimeout(t *testing.T) {
	j := job("slow", nil, "hang")
	j.Timeout = 50 * time.Millisecond
	j.Retries = 1
	start := time.Now()
	res, _ := run(t, context.Background(), Options{Backend: &scripted{}}, &forge.Plan{Jobs: []*forge.Job{j, job("after", []string{"slow"}, "print x")}}, RunInfo{})
	jr := res.Job("slow")
	if jr.Status != forge.StatusFailure || jr.Message != "timed out after 50ms" || jr.Attempts != 2 {
		t.Errorf("got %s %q attempts %d, want failure \"timed out after 50ms\" attempts 2", jr.Status, jr.Message, jr.Attempts)
	}
	if res.Status != forge.StatusFailure {
		t.Errorf("run status: got %s, want failure", res.Status)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %s, want about 100ms", el)
	}
	if jr := res.Job("after"); jr.Status != forge.StatusSkipped {
		t.Errorf("dependent: got %s, want skipped", jr.Status)
	}
}

func TestCancel(t *testing.T) {
	b := &scripted{started: make(chan string, 10)}
	plan := &forge.Plan{Jobs: []*forge.Job{
		job("a", nil, "hang"),
		job("b", nil, "hang"),
		job("c", nil, "hang"),
		job("d", []string{"a"}, "print never"),
	}}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-b.started
		<-b.started
		cancel()
	}()
	res, rec := run(t, ctx, Options{Backend: b, Parallel: 2}, plan, RunInfo{})
	if res.Status != forge.StatusCanceled {
		t.Errorf("status: got %s, want canceled", res.Status)
	}
	for _, j := range plan.Jobs {
		if jr := res.Job(j.Name); jr.Status != forge.StatusCanceled {
			t.Errorf("%s: got %s, want canceled", j.Name, jr.Status)
		}
		if e := rec.finished(j.Name); e.Status != forge.StatusCanceled {
			t.Errorf("%s job_finished: got %q, want canceled", j.Name, e.Status)
		}
	}
	if n := b.active.Load(); n != 0 {
		t.Errorf("%d jobs still running after Run returned", n)
	}
	if len(b.runs) != 2 {
		t.Errorf("started %d jobs, want 2", len(b.runs))
	}
}

func TestEventsAndEnv(t *testing.T) {
	b := &scripted{}
	j := job("build (go=1.22)", nil, "env FORGE_JOB\nenv CI\nenv FORGE_ACTION\nenv FORGE_BUILD_ID\nenv FORGE_SHA\nenv FORGE_WORKSPACE\nenv APP\nenv FORGE_STATUS_URL")
	j.Environment = map[string]string{"APP": "x", "CI": "false"}
	vars := forge.RunEnv{Build: &forge.Build{Action: "deploy", Hook: forge.Hook{SHA: "abc"}}, BuildID: "7"}.Vars()
	info := RunInfo{BuildID: "7", Env: vars, Secrets: map[string]string{"TOKEN": "s3"}, Workspace: forge.Workspace{Dir: "/src"},
		JobStatusURL: func(job string) string { return "https://ci.example.com/jobs/" + job }}
	_, rec := run(t, context.Background(), Options{Backend: b}, &forge.Plan{Action: "deploy", Jobs: []*forge.Job{j}}, info)
	want := []forge.EventType{forge.EventJobQueued, forge.EventJobStarted, forge.EventStepStarted,
		forge.EventLine, forge.EventLine, forge.EventLine, forge.EventLine, forge.EventLine, forge.EventLine, forge.EventLine, forge.EventLine,
		forge.EventStepFinished, forge.EventJobFinished}
	if got := rec.of(j.Name); !slices.Equal(got, want) {
		t.Fatalf("events: got %v, want %v", got, want)
	}
	var lines []string
	for _, e := range rec.events {
		if e.Time.IsZero() {
			t.Errorf("event without time: %+v", e)
		}
		if e.Type == forge.EventLine {
			lines = append(lines, e.Line.Text)
			if e.Attempt != 1 {
				t.Errorf("line attempt: got %d, want 1", e.Attempt)
			}
		}
	}
	wantLines := []string{"FORGE_JOB=build (go=1.22)", "CI=true", "FORGE_ACTION=deploy", "FORGE_BUILD_ID=7", "FORGE_SHA=abc", "FORGE_WORKSPACE=/src", "APP=x",
		"FORGE_STATUS_URL=https://ci.example.com/jobs/build (go=1.22)"}
	if !slices.Equal(lines, wantLines) {
		t.Errorf("environment: got %q, want %q", lines, wantLines)
	}
	if got := b.runs[0].Secrets["TOKEN"]; got != "s3" {
		t.Errorf("secrets not passed: got %q", got)
	}
	if e := rec.finished(j.Name); e.Status != forge.StatusSuccess || e.Duration <= 0 || e.Attempt != 1 {
		t.Errorf("job_finished: got %+v", e)
	}
	if last := rec.events[len(rec.events)-1]; last.Status != forge.StatusSuccess {
		t.Errorf("plan_finished status: got %s, want success", last.Status)
	}
}

func TestSlowReporterLosesNothing(t *testing.T) {
	var script strings.Builder
	for i := range 300 {
		fmt.Fprintf(&script, "print %d\n", i)
	}
	plan := &forge.Plan{}
	for i := range 4 {
		plan.Jobs = append(plan.Jobs, job(fmt.Sprintf("j%d", i), nil, script.String()))
	}
	rec := &recorder{t: t, delay: 20 * time.Microsecond}
	_, _ = run(t, context.Background(), Options{Backend: &scripted{}, Reporter: rec, Parallel: 4, QueueSize: 16}, plan, RunInfo{})
	for _, j := range plan.Jobs {
		n := 0
		for _, e := range rec.events {
			if e.Job == j.Name && e.Type == forge.EventLine {
				if e.Line.Text != fmt.Sprint(n) {
					t.Fatalf("%s: line %d: got %q, want %d (out of order or lost)", j.Name, n, e.Line.Text, n)
				}
				n++
			}
		}
		if n != 300 {
			t.Errorf("%s: got %d lines, want 300", j.Name, n)
		}
	}
}

func TestBackendError(t *testing.T) {
	res, _ := run(t, context.Background(), Options{Backend: &scripted{}},
		&forge.Plan{Jobs: []*forge.Job{job("a", nil, "error no such image"), job("b", []string{"a"}, "print x")}}, RunInfo{})
	if res.Status != forge.StatusError {
		t.Errorf("status: got %s, want error", res.Status)
	}
	if jr := res.Job("a"); jr.Status != forge.StatusError || jr.Message != "no such image" || jr.Err == nil {
		t.Errorf("a: got %s %q %v", jr.Status, jr.Message, jr.Err)
	}
	if jr := res.Job("b"); jr.Status != forge.StatusSkipped || jr.Message != `needs "a", which errored` {
		t.Errorf("b: got %s %q", jr.Status, jr.Message)
	}
}

func TestInvalidPlan(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		plan *forge.Plan
		want string
	}{
		{"no backend", Options{}, &forge.Plan{}, "no backend"},
		{"no plan", Options{Backend: &scripted{}}, nil, "no plan"},
		{"unknown need", Options{Backend: &scripted{}}, &forge.Plan{Jobs: []*forge.Job{job("a", []string{"zz"})}}, `job "a" needs "zz", which is not in the plan`},
		{"unsorted", Options{Backend: &scripted{}}, &forge.Plan{Jobs: []*forge.Job{job("a", []string{"b"}), job("b", nil)}}, "comes after it"},
		{"duplicate", Options{Backend: &scripted{}}, &forge.Plan{Jobs: []*forge.Job{job("a", nil), job("a", nil)}}, `two jobs named "a"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.opts).Run(context.Background(), tc.plan, RunInfo{})
			if err == nil || !strings.Contains(err.Error(), tc.want) || forge.ErrorCode(err) != forge.EINVALID {
				t.Errorf("got %v (code %q), want EINVALID containing %q", err, forge.ErrorCode(err), tc.want)
			}
		})
	}
}

func TestEmptyPlan(t *testing.T) {
	res, _ := run(t, context.Background(), Options{Backend: &scripted{}}, &forge.Plan{}, RunInfo{})
	if res.Status != forge.StatusSuccess || len(res.Jobs) != 0 {
		t.Errorf("got %s with %d jobs, want success with none", res.Status, len(res.Jobs))
	}
}
