package runner

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/forgeci/forge"
)

// recorder is the forge.Reporter of one build: it keeps the build's job and
// step rows and its logs up to date. Report only updates memory and queues
// the writes; one writer goroutine performs them in order, writing log lines
// in batches every FlushInterval and at every step's end, so the database
// never slows the build.
type recorder struct {
	r     *Runner
	build *forge.Build
	// ctx is the build's context: its cause says why a job was cancelled.
	ctx context.Context

	mu      sync.Mutex
	room    *sync.Cond           // signalled when the writer takes pending writes
	jobs    map[string]*jobState // by name
	order   []*jobState
	pending []write
	nlines  int // lines in pending
	stopped bool

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

type jobState struct {
	row *forge.BuildJob
	// offset renumbers the lines of later attempts so a job's line
	// numbers stay unique; last is the last number recorded.
	offset, last int
	steps        map[int]*forge.BuildStep
	started      time.Time
	// What was last published (see publishJob), the test reports read
	// and the last lines of the log.
	pubStatus  forge.Status
	pubAttempt int
	tests      *forge.TestSummary
	cover      *coverageCounts // the coverage reports read, summed
	tail       []string
	tailAt     int
	// resumed: the job is followed again after a restart, and its
	// backend may report the starts and ends of its steps again.
	resumed bool
}

// write is one queued database write: a job row, a step row or log lines.
type write struct {
	job   *forge.BuildJob
	step  *forge.BuildStep
	jobID int64
	lines []forge.LogLine
}

// flushLines makes the writer flush early when this many lines wait.
const flushLines = 2000

// maxPendingLines bounds the lines waiting for the writer: beyond it the
// job's output waits (the engine holds the job back) until they are written.
const maxPendingLines = 50000

// kickDelay is how long after a step's end its writes are made, so the
// writes of a quick succession of steps share a batch.
const kickDelay = 5 * time.Millisecond

func newRecorder(r *Runner, b *forge.Build, rows []*forge.BuildJob) *recorder {
	rec := &recorder{
		r:     r,
		build: b,
		jobs:  make(map[string]*jobState, len(rows)),
		wake:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	for _, j := range rows {
		js := &jobState{row: j, steps: make(map[int]*forge.BuildStep), pubStatus: j.Status, pubAttempt: j.Attempt}
		for _, s := range j.Steps {
			js.steps[s.Index] = s
		}
		rec.jobs[j.Name] = js
		rec.order = append(rec.order, js)
	}
	rec.room = sync.NewCond(&rec.mu)
	go rec.writer()
	return rec
}

// jobID returns the row ID of job name, 0 if unknown.
func (rec *recorder) jobID(name string) int64 {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if js := rec.jobs[name]; js != nil {
		return js.row.ID
	}
	return 0
}

// match checks that the plan's jobs are the build's job rows, and marks the
// rows the plan does not have skipped. It returns a message when a job of
// the plan has no row.
func (rec *recorder) match(plan *forge.Plan) string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	inPlan := make(map[string]bool, len(plan.Jobs))
	var missing []string
	for _, j := range plan.Jobs {
		inPlan[j.Name] = true
		if rec.jobs[j.Name] == nil {
			missing = append(missing, j.Name)
		}
	}
	if len(missing) > 0 {
		return fmt.Sprintf("the spec at %s has jobs this build was not created with: %s", forge.ShortSHA(rec.build.Hook.SHA), strings.Join(missing, ", "))
	}
	for _, js := range rec.order {
		if !inPlan[js.row.Name] && !js.row.Status.Done() {
			js.row.Status = forge.StatusSkipped
			js.row.Error = "not in the plan of this commit"
			rec.queueJob(js)
		}
	}
	return ""
}

// Report records e. It implements forge.Reporter.
func (rec *recorder) Report(e forge.Event) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	js := rec.jobs[e.Job]
	if js == nil {
		return // plan-level events, or a job without a row (match prevents it)
	}
	row := js.row
	switch e.Type {
	case forge.EventJobQueued:
		if row.Status == forge.StatusPending {
			row.Status = forge.StatusQueued
			rec.queueJob(js)
		}
	case forge.EventJobWaiting:
		row.Status = forge.StatusWaiting
		rec.queueJob(js)
		if e.Message != "" {
			rec.system(js, e.Time, e.Message)
		}
	case forge.EventJobStarted:
		if e.Attempt > 1 {
			js.offset = js.last
			rec.system(js, e.Time, fmt.Sprintf("attempt %d", e.Attempt))
		}
		// The attempt's line N is stored as offset+N: a reattach after a
		// restart knows from the stored log where the attempt's own
		// numbering stands.
		js.offset = js.last
		row.Status = forge.StatusRunning
		row.Backend = rec.r.opts.Backend
		row.Handle = nil
		row.Attempt = max(e.Attempt, 1)
		row.Started, row.Finished = e.Time, time.Time{}
		row.ExitCode, row.Error = 0, ""
		js.started = e.Time
		rec.queueJob(js)
		rec.kick() // show it running at once
	case forge.EventJobHandle:
		row.Handle = encodeHandle(js.offset, e.Handle)
		rec.queueJob(js)
		rec.kick() // a restart needs it soon
	case forge.EventStepStarted:
		if old := js.steps[e.Step]; js.resumed && old != nil && old.FirstLine > 0 && sameInstant(old.Started, e.Time) {
			// The start again, replayed by a backend following the job
			// after a restart: the step keeps what it has (its lines are
			// not where this recorder's count stands).
			return
		}
		// Its lines are numbered from the next one: the log page folds
		// it there, also while the job runs.
		s := &forge.BuildStep{JobID: row.ID, Index: e.Step, Name: e.StepName, Status: forge.StatusRunning, Started: e.Time,
			FirstLine: js.last + 1}
		js.steps[e.Step] = s
		rec.queueStep(s)
	case forge.EventLine:
		if e.Line == nil {
			return
		}
		l := *e.Line
		l.Number += js.offset
		rec.addLine(js, l)
	case forge.EventStepFinished:
		s := js.steps[e.Step]
		if s == nil {
			s = &forge.BuildStep{JobID: row.ID, Index: e.Step, Name: e.StepName}
			js.steps[e.Step] = s
		}
		if js.resumed && s.Status.Done() && s.FirstLine > 0 && sameInstant(s.Finished, e.Time) {
			return // the end again, replayed after a restart
		}
		s.Status, s.ExitCode, s.Finished = e.Status, e.ExitCode, e.Time
		if s.FirstLine > 0 {
			s.LastLine = js.last // its lines came before this event
		}
		if s.Started.IsZero() && e.Status != forge.StatusSkipped {
			s.Started = e.Time.Add(-e.Duration)
		}
		if e.StepName != "" {
			s.Name = e.StepName
		}
		rec.queueStep(s)
		rec.kick()
	case forge.EventReport:
		rec.report(js, e.Report)
	case forge.EventJobFinished:
		row.Status, row.ExitCode, row.Finished = e.Status, e.ExitCode, e.Time
		if e.Status != forge.StatusSuccess {
			row.Error = e.Message
		}
		if row.Status == forge.StatusSkipped && e.Message != "" {
			rec.system(js, e.Time, "skipped: "+e.Message)
		}
		rec.queueJob(js)
		rec.kick()
		d := e.Duration
		if d == 0 && !js.started.IsZero() {
			d = e.Time.Sub(js.started)
		}
		if e.Status != forge.StatusSkipped {
			rec.r.metrics.jobSeconds.WithLabelValues(string(e.Status)).Observe(d.Seconds())
		}
	}
}

// sameInstant tells whether a recorded time (stored to the microsecond)
// is that of event time t.
func sameInstant(recorded, t time.Time) bool {
	d := recorded.Sub(t)
	return !recorded.IsZero() && d > -time.Millisecond && d < time.Millisecond
}

// system adds one of forge's own lines to js's log; the caller holds mu.
func (rec *recorder) system(js *jobState, t time.Time, text string) {
	if t.IsZero() {
		t = time.Now().UTC()
	}
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		rec.addLine(js, forge.LogLine{Number: js.last + 1, Time: t, Stream: forge.System, Text: line})
	}
}

// addLine queues l for js's log and publishes it live; the caller holds mu.
func (rec *recorder) addLine(js *jobState, l forge.LogLine) {
	if l.Number <= js.last {
		l.Number = js.last + 1 // never store a number twice
	}
	js.last = l.Number
	js.keepTail(l.Text)
	if rec.r.opts.Live != nil {
		rec.r.opts.Live.Publish(js.row.ID, []forge.LogLine{l})
	}
	if n := len(rec.pending); n > 0 && rec.pending[n-1].lines != nil && rec.pending[n-1].jobID == js.row.ID {
		rec.pending[n-1].lines = append(rec.pending[n-1].lines, l)
	} else {
		rec.pending = append(rec.pending, write{jobID: js.row.ID, lines: []forge.LogLine{l}})
	}
	if rec.nlines++; rec.nlines >= flushLines {
		rec.kick()
	}
	// A job that prints faster than the database stores lines is held
	// back here rather than buffered without bound.
	for rec.nlines >= maxPendingLines && !rec.stopped {
		rec.kick()
		rec.room.Wait()
	}
}

func (rec *recorder) queueJob(js *jobState) {
	c := *js.row
	c.Steps = nil
	rec.pending = append(rec.pending, write{job: &c})
	rec.publishJob(js)
}

func (rec *recorder) queueStep(s *forge.BuildStep) {
	c := *s
	rec.pending = append(rec.pending, write{step: &c})
}

func (rec *recorder) kick() {
	select {
	case rec.wake <- struct{}{}:
	default:
	}
}

// writer performs the queued writes until close.
func (rec *recorder) writer() {
	defer close(rec.done)
	t := time.NewTicker(rec.r.opts.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-rec.stop:
			rec.flush()
			return
		case <-rec.wake:
			// Gather what happens together with the step's end (the
			// job's end, the next step's start) into the same batch.
			select {
			case <-rec.stop:
			case <-time.After(kickDelay):
			}
		case <-t.C:
		}
		rec.flush()
	}
}

// flush performs the queued writes. Within one batch only the last state
// of each job and step row matters, so a batch costs at most one write per
// row: first the log lines (in order, one Append per run of a job's
// lines), then the steps, then the jobs, so a reader never sees a step
// finished before its output.
func (rec *recorder) flush() {
	rec.mu.Lock()
	batch := rec.pending
	rec.pending, rec.nlines = nil, 0
	rec.room.Broadcast()
	rec.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), finalWrite)
	defer cancel()
	type stepKey struct {
		job   int64
		index int
	}
	var (
		jobs      []*forge.BuildJob
		jobAt     = map[int64]int{}
		steps     []*forge.BuildStep
		stepAt    = map[stepKey]int{}
		lineRuns  []write
		lastLines = map[int64]int{}
	)
	for _, w := range batch {
		switch {
		case w.job != nil:
			if i, ok := jobAt[w.job.ID]; ok {
				jobs[i] = w.job
			} else {
				jobAt[w.job.ID] = len(jobs)
				jobs = append(jobs, w.job)
			}
		case w.step != nil:
			k := stepKey{w.step.JobID, w.step.Index}
			if i, ok := stepAt[k]; ok {
				steps[i] = w.step
			} else {
				stepAt[k] = len(steps)
				steps = append(steps, w.step)
			}
		default:
			if i, ok := lastLines[w.jobID]; ok {
				lineRuns[i].lines = append(lineRuns[i].lines, w.lines...)
			} else {
				lastLines[w.jobID] = len(lineRuns)
				lineRuns = append(lineRuns, w)
			}
		}
	}
	st := rec.r.opts.Builds
	report := func(err error) {
		if err != nil {
			rec.r.log.Error("recording a build's progress", "build", rec.build.ID, "err", err)
		}
	}
	for _, w := range lineRuns {
		report(rec.appendLines(w.jobID, w.lines))
	}
	for _, s := range steps {
		report(st.SaveStep(ctx, s))
	}
	for _, j := range jobs {
		report(st.UpdateJob(ctx, j))
	}
}

// appendPatience bounds how long the writer keeps trying to store a run of
// log lines the store refused (a timeout on a loaded machine, a restarting
// database) before it gives up on them.
const appendPatience = 5 * time.Minute

// appendLines stores a run of a job's lines, trying again while the store
// fails: a slow store may delay a log, never lose its end (which holds the
// error the user needs). A run is one transaction, so a retry never stores
// a line twice; a conflict means an earlier try did store it.
func (rec *recorder) appendLines(jobID int64, lines []forge.LogLine) error {
	deadline := time.Now().Add(appendPatience)
	wait := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), finalWrite)
		err := rec.r.opts.Logs.Append(ctx, jobID, lines)
		cancel()
		switch {
		case err == nil:
			return nil
		case forge.ErrorCode(err) == forge.ECONFLICT || forge.ErrorCode(err) == forge.EINVALID ||
			forge.ErrorCode(err) == forge.ENOTFOUND || time.Now().After(deadline):
			return err
		}
		rec.r.log.Warn("storing log lines failed; trying again", "build", rec.build.ID, "job", jobID, "lines", len(lines), "err", err)
		time.Sleep(wait)
		wait = min(2*wait, 5*time.Second)
	}
}

// close writes what is left, ends the live logs and stops the writer.
func (rec *recorder) close() {
	select {
	case <-rec.stop:
		return
	default:
	}
	close(rec.stop)
	<-rec.done
	rec.mu.Lock()
	rec.stopped = true
	rec.room.Broadcast()
	rec.mu.Unlock()
	if rec.r.opts.Live != nil {
		for _, js := range rec.order {
			rec.r.opts.Live.Finish(js.row.ID)
		}
	}
}

// abortAll ends a build that could not run: every job gets msg as its log
// and status st. It returns st and msg for the build.
func (rec *recorder) abortAll(st forge.Status, msg string) (forge.Status, string) {
	rec.mu.Lock()
	now := time.Now().UTC()
	for _, js := range rec.order {
		if js.row.Status.Done() {
			continue
		}
		rec.system(js, now, msg)
		js.row.Status, js.row.Error, js.row.Finished = st, forge.FirstLine(msg), now
		rec.queueJob(js)
	}
	rec.mu.Unlock()
	return st, msg
}

// closeOpen gives every job and step the executor left unfinished status st.
func (rec *recorder) closeOpen(st forge.Status, msg string) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	now := time.Now().UTC()
	for _, js := range rec.order {
		for _, s := range js.steps {
			if !s.Status.Done() {
				s.Status, s.Finished = st, now
				rec.queueStep(s)
			}
		}
		if !js.row.Status.Done() {
			js.row.Status, js.row.Error, js.row.Finished = st, msg, now
			rec.queueJob(js)
		}
	}
}

// firstError is the first job error, to explain a build's StatusError.
func (rec *recorder) firstError() string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, js := range rec.order {
		if js.row.Status == forge.StatusError && js.row.Error != "" {
			return "job " + js.row.Name + ": " + js.row.Error
		}
	}
	return ""
}
