package runner

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/coverage"
	"github.com/forgeci/forge/internal/junit"
)

// tailLines is how many of a job's last log lines a change carries when
// the job did not pass.
const tailLines = 20

// publish tells the observer of c, if there is one.
func (r *Runner) publish(c *forge.Change) {
	if r.opts.Observer == nil {
		return
	}
	if c.Time.IsZero() {
		c.Time = time.Now().UTC()
	}
	r.opts.Observer.Observe(c)
}

// publishBuild publishes a change of build b itself.
func (r *Runner) publishBuild(b *forge.Build) {
	if r.opts.Observer == nil {
		return
	}
	r.publish(&forge.Change{Build: *b})
}

// publishJob publishes js's state when its status or attempt changed
// since it was last published; the caller holds rec.mu.
func (rec *recorder) publishJob(js *jobState) {
	row := js.row
	if rec.r.opts.Observer == nil || (row.Status == js.pubStatus && row.Attempt == js.pubAttempt) {
		return
	}
	js.pubStatus, js.pubAttempt = row.Status, row.Attempt
	job := *row
	job.Steps = make([]*forge.BuildStep, 0, len(js.steps))
	for _, s := range js.steps {
		c := *s
		job.Steps = append(job.Steps, &c)
	}
	slices.SortFunc(job.Steps, func(a, b *forge.BuildStep) int { return a.Index - b.Index })
	if row.Status == forge.StatusCanceled && rec.ctx != nil {
		// Say who cancelled it ("superseded by build #7"), not only that
		// it was.
		if cause := context.Cause(rec.ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			job.Error = cause.Error()
		}
	}
	c := &forge.Change{Time: row.Finished, Build: *rec.build, Job: &job}
	if !row.Status.Done() {
		c.Time = time.Now().UTC()
	}
	if row.Status.Done() {
		if js.tests != nil {
			t := *js.tests
			c.Tests = &t
		}
		if js.cover != nil && js.cover.Total > 0 {
			pct := js.cover.Percent()
			c.Coverage = &pct
		}
		if row.Status != forge.StatusSuccess && row.Status != forge.StatusSkipped {
			c.Tail = js.tailLines()
		}
	}
	rec.r.publish(c)
}

// report reads a test report the backend found; the caller holds rec.mu.
func (rec *recorder) report(js *jobState, f *forge.ReportFile) {
	if f == nil {
		return
	}
	if f.Type == "coverage" {
		// A coverage report that cannot be read leaves the badge as it
		// was; the job's log and result say more than a badge could.
		if f.Error != "" {
			return
		}
		c, err := coverage.Parse(f.Data)
		if err != nil {
			return
		}
		if js.cover == nil {
			js.cover = &coverage.Counts{}
		}
		*js.cover = js.cover.Add(c)
		return
	}
	if js.tests == nil {
		js.tests = &forge.TestSummary{}
	}
	if f.Error != "" {
		js.tests.Problems = append(js.tests.Problems, f.Path+": "+f.Error)
		return
	}
	if f.Type != "" && f.Type != "junit" {
		js.tests.Problems = append(js.tests.Problems, f.Path+": report type "+f.Type+" is not read")
		return
	}
	if err := junit.Add(js.tests, f.Path, f.Root, f.Data); err != nil {
		js.tests.Problems = append(js.tests.Problems, err.Error())
	}
}

// keepTail remembers line as one of js's last lines; the caller holds
// rec.mu.
func (js *jobState) keepTail(text string) {
	if len(js.tail) < tailLines {
		js.tail = append(js.tail, text)
		return
	}
	js.tail[js.tailAt] = text
	js.tailAt = (js.tailAt + 1) % tailLines
}

func (js *jobState) tailLines() []string {
	out := make([]string, 0, len(js.tail))
	out = append(out, js.tail[js.tailAt:]...)
	return append(out, js.tail[:js.tailAt]...)
}

// coverageCounts are the summed coverage reports of a job.
type coverageCounts = coverage.Counts
