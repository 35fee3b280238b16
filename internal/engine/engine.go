// Package engine runs a compiled plan on a backend: the jobs of the DAG in
// parallel up to a limit, each after the jobs it needs, with retries,
// timeouts, resource leases and cancellation. It knows nothing of YAML or of
// the command line, so forge exec and the server run plans the same way.
package engine

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/forgeci/forge"
)

// Options configure an Engine.
type Options struct {
	// Backend runs the jobs. Required.
	Backend forge.Backend
	// Leaser acquires the resources of jobs that have Resources. When nil,
	// such jobs end with StatusError and a message saying how to give one.
	Leaser forge.Leaser
	// Parallel is how many jobs run at once; zero or less means
	// runtime.NumCPU(). Jobs waiting for a lease do not count.
	Parallel int
	// Reporter receives every event of a run; nil discards them. See Run
	// for how events are delivered.
	Reporter forge.Reporter
	// QueueSize bounds the events waiting for the Reporter; zero means
	// DefaultQueueSize.
	QueueSize int
}

// DefaultQueueSize is how many events may wait for a slow Reporter before
// the jobs producing them are held back.
const DefaultQueueSize = 8192

// Engine runs plans. It is safe to run several plans at once with one
// Engine; each Run has its own parallel limit.
type Engine struct {
	backend  forge.Backend
	leaser   forge.Leaser
	parallel int
	reporter forge.Reporter
	qsize    int
	now      func() time.Time
}

// New returns an Engine with opts.
func New(opts Options) *Engine {
	e := &Engine{
		backend:  opts.Backend,
		leaser:   opts.Leaser,
		parallel: opts.Parallel,
		reporter: opts.Reporter,
		qsize:    opts.QueueSize,
		now:      time.Now,
	}
	if e.parallel <= 0 {
		e.parallel = runtime.NumCPU()
	}
	if e.qsize <= 0 {
		e.qsize = DefaultQueueSize
	}
	return e
}

// RunInfo is what a run needs besides the plan: it builds each job's
// forge.JobRun.
type RunInfo struct {
	// BuildID identifies the run; it becomes FORGE_BUILD_ID.
	BuildID string
	// Env is the base environment of every job: forge.RunEnv.Vars(), the
	// variables of the run. The engine adds each job's own
	// (forge.SetJobVars: FORGE_JOB, FORGE_WORKSPACE as Workspace.Dir, which
	// a backend that runs the job elsewhere overrides, and the job's
	// FORGE_STATUS_URL) and the lease variables. These win over a job's
	// own environment of the same name, because they are facts about the
	// run.
	Env map[string]string
	// JobStatusURL, when set, returns the page of a job, which becomes its
	// FORGE_STATUS_URL; "" keeps the run's.
	JobStatusURL func(job string) string
	// Secrets are passed to every job (see forge.JobRun.Secrets).
	Secrets map[string]string
	// Workspace says where jobs run.
	Workspace forge.Workspace
	// Resume, when set, continues a run that a server which is gone had
	// started, by job name (see Resumed); the other jobs run as usual.
	Resume map[string]Resumed
}

// Resumed is the state, when its server died, of one job of a run that is
// being continued.
type Resumed struct {
	// Status, when final, is the job's result: the job is not run again
	// and no event is reported for it (its record already says it all).
	// ExitCode and Message complete it.
	Status   forge.Status
	ExitCode int
	Message  string
	// Handle, when set (and Status is not final), is the backend's handle
	// of the job's attempt number Attempt, still running or ended unseen:
	// the engine attaches to it (forge.Attacher) in a parallel slot,
	// without a new EventJobStarted, and reports its lines numbered above
	// From. Retries, if the attempt fails, go on from Attempt+1. A job
	// with resources gets no new lease for the attempt it attaches to.
	Attempt int
	Handle  []byte
	From    int
}

// Result is the outcome of a run.
type Result struct {
	// Status is StatusSuccess when no job failed (jobs skipped by their
	// when: condition are fine), StatusFailure when a job failed,
	// StatusError when none failed but forge could not run one, and
	// StatusCanceled when cancelling the run stopped a job (it takes
	// precedence).
	Status forge.Status
	// Jobs are the jobs' results in plan order.
	Jobs []*JobResult
	// Started is when Run began; Duration how long it took.
	Started  time.Time
	Duration time.Duration
}

// Job returns the result of the job named name, or nil.
func (r *Result) Job(name string) *JobResult {
	for _, j := range r.Jobs {
		if j.Name == name {
			return j
		}
	}
	return nil
}

// JobResult is the outcome of one job.
type JobResult struct {
	Name   string
	Status forge.Status
	// Attempts is how many times the job ran (0 when it never started).
	Attempts int
	// ExitCode is the exit code of the step that failed the last attempt.
	ExitCode int
	// Message says why the job did not pass: the error, the timeout, the
	// job whose failure skipped it.
	Message string
	// Err is the error behind StatusError, when there is one.
	Err error
	// Started is when the first attempt started; Duration runs from then
	// to the end of the last attempt (zero for jobs that never started).
	Started  time.Time
	Duration time.Duration
}

// Run runs plan and returns every job's result and the overall status.
//
// A job starts once every job it needs has passed; when one has not
// (failed, errored or skipped), the job is skipped, with a message naming
// it, and so on down the DAG. A job with Skip set (its when: excluded it)
// is skipped with that reason. A job with Resources first acquires a lease
// through the Leaser, holding no parallel slot while it waits; once it
// holds one, it goes before jobs without leases for the next free slot. The
// lease is kept across retries, its variables are added to the job's
// environment, and it is released when the job ends; if it is lost
// mid-job, the attempt is cancelled and the job errors with "lease lost"
// and is not retried. Job.Timeout bounds each attempt (a failure, "timed
// out after 5m0s"). A failed or errored attempt is run again up to
// Job.Retries more times; a cancelled one is not.
//
// Every job gets EventJobQueued when the run begins (in plan order), then,
// when it gets that far, EventJobWaiting (while it waits for a lease: once
// when it starts waiting and again each time its queue position changes),
// EventJobStarted (per attempt), the backend's step and line events with
// Job and Attempt filled in, and finally one EventJobFinished with the
// job's Status, Duration, ExitCode and Message. EventPlanFinished comes
// last, carrying the run's status; when Run returns, every event has been
// delivered.
//
// Events are delivered to the Reporter in order, one at a time, by a single
// goroutine, so reporters need not be safe for concurrent use. Between the
// jobs and that goroutine is a bounded queue (Options.QueueSize events): a
// reporter that is slow now and then does not hold up the jobs, while one
// that stays slower than the jobs' output slows the output down
// (backpressure) instead of losing events or growing memory without bound.
//
// Cancelling ctx cancels the run: running jobs are stopped by the backend,
// jobs not yet started end canceled, and Result.Status is StatusCanceled.
// Run returns an error only when the plan cannot be run at all (EINVALID).
func (e *Engine) Run(ctx context.Context, plan *forge.Plan, run RunInfo) (*Result, error) {
	if err := e.check(plan); err != nil {
		return nil, err
	}
	q := newQueue(e.reporter, e.qsize)
	go q.deliver()

	r := &runner{
		e:     e,
		plan:  plan,
		info:  run,
		q:     q,
		slots: newSlots(e.parallel),
		done:  make(map[string]chan struct{}, len(plan.Jobs)),
		res:   make(map[string]*JobResult, len(plan.Jobs)),
	}
	started := e.now()
	result := &Result{Started: started}
	for _, j := range plan.Jobs {
		r.done[j.Name] = make(chan struct{})
		jr := &JobResult{Name: j.Name, Status: forge.StatusQueued}
		r.res[j.Name] = jr
		result.Jobs = append(result.Jobs, jr)
	}
	for _, j := range plan.Jobs {
		q.push(forge.Event{Type: forge.EventJobQueued, Time: started, Job: j.Name, Status: forge.StatusQueued})
	}
	var wg sync.WaitGroup
	for _, j := range plan.Jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.job(ctx, j)
		}()
	}
	wg.Wait()

	result.Duration = e.now().Sub(started)
	result.Status = overall(ctx, result.Jobs)
	q.push(forge.Event{Type: forge.EventPlanFinished, Time: e.now(), Status: result.Status, Duration: result.Duration})
	q.close()
	return result, nil
}

// check refuses plans the engine cannot run.
func (e *Engine) check(plan *forge.Plan) error {
	if e.backend == nil {
		return forge.Errorf(forge.EINVALID, "engine: no backend")
	}
	if plan == nil {
		return forge.Errorf(forge.EINVALID, "engine: no plan")
	}
	seen := make(map[string]bool, len(plan.Jobs))
	for _, j := range plan.Jobs {
		if j == nil || j.Name == "" {
			return forge.Errorf(forge.EINVALID, "plan has a job without a name")
		}
		if seen[j.Name] {
			return forge.Errorf(forge.EINVALID, "plan has two jobs named %q", j.Name)
		}
		for _, n := range j.Needs {
			if !seen[n] {
				if plan.Job(n) == nil {
					return forge.Errorf(forge.EINVALID, "job %q needs %q, which is not in the plan", j.Name, n)
				}
				return forge.Errorf(forge.EINVALID, "job %q needs %q, which comes after it in the plan (a cycle or an unsorted plan)", j.Name, n)
			}
		}
		seen[j.Name] = true
	}
	return nil
}

// overall is the run's status from its jobs' results: cancelled when the
// cancel stopped a job (a cancel after every job ended changes nothing),
// else failure, error, success in that order.
func overall(ctx context.Context, jobs []*JobResult) forge.Status {
	var canceled, failed, errored bool
	for _, j := range jobs {
		switch j.Status {
		case forge.StatusCanceled:
			canceled = true
		case forge.StatusFailure:
			failed = true
		case forge.StatusError:
			errored = true
		}
	}
	switch {
	case canceled && ctx.Err() != nil:
		return forge.StatusCanceled
	case failed:
		return forge.StatusFailure
	case errored:
		return forge.StatusError
	case canceled:
		return forge.StatusCanceled
	}
	return forge.StatusSuccess
}

// runner is the state of one Run.
type runner struct {
	e     *Engine
	plan  *forge.Plan
	info  RunInfo
	q     *queue
	slots *slots

	// done[name] is closed when the job's result is final; res[name] may
	// be read after that without a lock.
	done map[string]chan struct{}
	res  map[string]*JobResult
}

// job runs one job from waiting for its needs to its final event.
func (r *runner) job(ctx context.Context, j *forge.Job) {
	jr := r.res[j.Name]
	defer close(r.done[j.Name])
	res, resumed := r.info.Resume[j.Name]
	if resumed && res.Status.Done() {
		// Finished before the restart: its record stands.
		jr.Status, jr.ExitCode, jr.Message = res.Status, res.ExitCode, res.Message
		return
	}
	if resumed && res.Handle == nil {
		resumed = false
	}
	defer func() {
		r.q.push(forge.Event{
			Type: forge.EventJobFinished, Time: r.e.now(), Job: j.Name, Attempt: jr.Attempts,
			Status: jr.Status, ExitCode: jr.ExitCode, Duration: jr.Duration, Message: jr.Message,
		})
	}()

	// Every need ends before the job does, even when an early one already
	// decided that it is skipped: events follow the DAG.
	for _, n := range j.Needs {
		select {
		case <-r.done[n]:
		case <-ctx.Done():
			r.canceled(jr)
			return
		}
	}
	for _, n := range j.Needs {
		if nr := r.res[n]; !nr.Status.Passed() {
			if nr.Status == forge.StatusCanceled {
				r.canceled(jr)
				return
			}
			jr.Status = forge.StatusSkipped
			jr.Message = skipMessage(n, nr)
			return
		}
	}
	if ctx.Err() != nil {
		r.canceled(jr)
		return
	}
	if j.Skip != "" {
		jr.Status = forge.StatusSkipped
		jr.Message = j.Skip
		return
	}

	env := r.env(j)
	var grant forge.Grant
	if len(j.Resources) > 0 && !resumed {
		g, err := r.lease(ctx, j)
		if err != nil {
			if ctx.Err() != nil {
				r.canceled(jr)
				return
			}
			jr.Status, jr.Err, jr.Message = forge.StatusError, err, err.Error()
			return
		}
		grant = g
		defer func() {
			// The job is over: give the resources back even if ctx is gone.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_ = grant.Release(rctx)
		}()
		for k, v := range grant.Env() {
			env[k] = v
		}
	}

	// Holders of a lease go first: their resources are idle until they run.
	if err := r.slots.acquire(ctx, grant != nil); err != nil {
		r.canceled(jr)
		return
	}
	defer r.slots.release()
	if ctx.Err() != nil { // the slot came free because of the cancel
		r.canceled(jr)
		return
	}

	var attach *Resumed
	if resumed {
		attach = &res
	}
	r.attempts(ctx, j, jr, env, grant, attach)
}

// canceled marks a job that was cancelled before it started.
func (r *runner) canceled(jr *JobResult) {
	jr.Status = forge.StatusCanceled
	jr.Message = "canceled before it started"
}

// skipMessage says why a job is skipped when its need n did not pass.
func skipMessage(n string, nr *JobResult) string {
	switch nr.Status {
	case forge.StatusSkipped:
		return fmt.Sprintf("needs %q, which was skipped (%s)", n, nr.Message)
	case forge.StatusError:
		return fmt.Sprintf("needs %q, which errored", n)
	}
	return fmt.Sprintf("needs %q, which failed", n)
}

// env is the base environment of job j, before lease variables.
func (r *runner) env(j *forge.Job) map[string]string {
	env := make(map[string]string, len(j.Environment)+len(r.info.Env)+2)
	for k, v := range j.Environment {
		env[k] = v
	}
	for k, v := range r.info.Env {
		env[k] = v
	}
	url := ""
	if r.info.JobStatusURL != nil {
		url = r.info.JobStatusURL(j.Name)
	}
	forge.SetJobVars(env, j.Name, r.info.Workspace.Dir, url)
	return env
}

// lease acquires the job's resources, reporting the wait.
func (r *runner) lease(ctx context.Context, j *forge.Job) (forge.Grant, error) {
	if r.e.leaser == nil {
		pools := make([]string, 0, len(j.Resources))
		for _, req := range j.Resources {
			pools = append(pools, req.Pool)
		}
		return nil, forge.Errorf(forge.EINVALID, "job %s needs resources from pool %s: run with --lease-server URL",
			j.Name, strings.Join(pools, ", "))
	}
	r.q.push(forge.Event{Type: forge.EventJobWaiting, Time: r.e.now(), Job: j.Name, Status: forge.StatusWaiting,
		Message: "waiting for " + describeResources(j.Resources)})
	holder := fmt.Sprintf("forge build %s job %s", r.info.BuildID, j.Name)
	g, err := r.e.leaser.Acquire(ctx, j.Resources, holder, func(pos int) {
		r.q.push(forge.Event{Type: forge.EventJobWaiting, Time: r.e.now(), Job: j.Name, Status: forge.StatusWaiting,
			Message: fmt.Sprintf("waiting for %s: position %d in the queue", describeResources(j.Resources), pos)})
	})
	if err != nil {
		return nil, fmt.Errorf("job %s could not lease %s: %w", j.Name, describeResources(j.Resources), err)
	}
	return g, nil
}

// describeResources names requests as "2 of dut, 1 of ports".
func describeResources(reqs []forge.ResourceRequest) string {
	parts := make([]string, 0, len(reqs))
	for _, q := range reqs {
		n := q.Count
		if n <= 0 {
			n = 1
		}
		parts = append(parts, fmt.Sprintf("%d of %s", n, q.Pool))
	}
	return strings.Join(parts, ", ")
}

// errLeaseLost is the cause of an attempt's cancellation when its lease ends.
var errLeaseLost = errors.New("lease lost")

// attempts runs the job until it passes, is cancelled or runs out of retries.
// With attach, the first attempt is the one attach names, already
// running: it is attached to, not started.
func (r *runner) attempts(ctx context.Context, j *forge.Job, jr *JobResult, env map[string]string, grant forge.Grant, attach *Resumed) {
	var lost <-chan struct{}
	if grant != nil {
		lost = grant.Lost()
	}
	first := 1
	if attach != nil {
		first = max(attach.Attempt, 1)
	}
	for attempt := first; ; attempt++ {
		jr.Attempts = attempt
		start := r.e.now()
		if attempt == first {
			jr.Started = start
		}
		resume := attach != nil && attempt == first
		if !resume {
			msg := ""
			if attempt > 1 {
				msg = fmt.Sprintf("retry %d of %d after %s: %s", attempt-1, j.Retries, jr.Status, jr.Message)
			}
			r.q.push(forge.Event{Type: forge.EventJobStarted, Time: start, Job: j.Name, Attempt: attempt, Status: forge.StatusRunning, Message: msg})
		}
		var handle *Resumed
		if resume {
			handle = attach
		}
		st, exit, err, why := r.attempt(ctx, j, attempt, env, lost, handle)
		jr.Duration = r.e.now().Sub(jr.Started)
		jr.Status, jr.ExitCode, jr.Err, jr.Message = st, exit, err, why
		if st == forge.StatusSuccess {
			jr.Message = ""
			return
		}
		if st == forge.StatusCanceled || ctx.Err() != nil || errors.Is(err, errLeaseLost) || attempt > j.Retries {
			return
		}
	}
}

// attempt runs one attempt; it returns the status, the exit code of the
// failing step, the error (for StatusError) and a message.
// With attach, it attaches to that running attempt instead of starting one.
func (r *runner) attempt(ctx context.Context, j *forge.Job, attempt int, env map[string]string, lost <-chan struct{}, attach *Resumed) (forge.Status, int, error, string) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if j.Timeout > 0 {
		var tcancel context.CancelFunc
		actx, tcancel = context.WithTimeout(actx, j.Timeout)
		defer tcancel()
	}
	if lost != nil {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			select {
			case <-lost:
				cancel(errLeaseLost)
			case <-stop:
			}
		}()
	}

	jobEnv := make(map[string]string, len(env))
	for k, v := range env {
		jobEnv[k] = v
	}
	jrun := &forge.JobRun{
		Job:       j,
		BuildID:   r.info.BuildID,
		Attempt:   attempt,
		Env:       jobEnv,
		Secrets:   r.info.Secrets,
		Workspace: r.info.Workspace,
	}
	rep := &jobReporter{q: r.q, job: j.Name, attempt: attempt, now: r.e.now}
	var st forge.Status
	var err error
	if attach != nil {
		if a, ok := r.e.backend.(forge.Attacher); ok {
			st, err = a.Attach(actx, attach.Handle, attach.From, rep)
		} else {
			st, err = forge.StatusError, forge.Errorf(forge.ENOTIMPL, "the backend cannot reattach to a running job")
		}
	} else {
		st, err = r.e.backend.Run(actx, jrun, rep)
	}

	switch {
	case ctx.Err() != nil:
		return forge.StatusCanceled, rep.exit, nil, "canceled"
	case errors.Is(context.Cause(actx), errLeaseLost):
		return forge.StatusError, rep.exit, errLeaseLost, "lease lost: the resources may belong to someone else now"
	case j.Timeout > 0 && errors.Is(actx.Err(), context.DeadlineExceeded):
		return forge.StatusFailure, rep.exit, nil, fmt.Sprintf("timed out after %s", j.Timeout)
	case err != nil:
		return forge.StatusError, rep.exit, err, err.Error()
	}
	switch st {
	case forge.StatusSuccess:
		return st, 0, nil, ""
	case forge.StatusFailure:
		msg := "failed"
		if rep.failed != "" {
			msg = fmt.Sprintf("step %s failed with exit code %d", rep.failed, rep.exit)
		}
		return st, rep.exit, nil, msg
	case forge.StatusCanceled:
		return st, rep.exit, nil, "canceled by the backend"
	}
	if !st.Done() || st == forge.StatusSkipped {
		return forge.StatusError, rep.exit, nil, fmt.Sprintf("backend returned status %q for a finished job", st)
	}
	return st, rep.exit, nil, string(st)
}

// jobReporter fills in Job and Attempt on a backend's events and notes the
// step that failed.
type jobReporter struct {
	q       *queue
	job     string
	attempt int
	now     func() time.Time
	exit    int
	failed  string
}

// Report passes e on.
func (p *jobReporter) Report(e forge.Event) {
	e.Job, e.Attempt = p.job, p.attempt
	if e.Time.IsZero() {
		e.Time = p.now()
	}
	// The last failed step is the one that failed the job: the ones before
	// it had continue_on_error.
	if e.Type == forge.EventStepFinished &&
		(e.Status == forge.StatusFailure || e.Status == forge.StatusError) && e.ExitCode != 0 {
		p.exit = e.ExitCode
		p.failed = stepLabel(e)
	}
	p.q.push(e)
}

// stepLabel names a step in a message.
func stepLabel(e forge.Event) string {
	if e.StepName != "" {
		return fmt.Sprintf("%q", e.StepName)
	}
	return fmt.Sprintf("%d", e.Step+1)
}
