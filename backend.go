package forge

import (
	"context"
	"time"
)

// Backend runs jobs: host processes (local), containers (docker) or Swarm
// services (swarm).
//
// Run runs one attempt of one job to the end: it prepares the job's
// workspace, runs the steps in order (a step with Run in /bin/sh -e -c, a
// step with Args as that program and arguments; each in its own process
// group, bounded by the step's Timeout), reports every step and every
// output line to rep, and removes whatever it created. A failed step
// fails the job unless the step has ContinueOnError; the steps after a
// failed step are not run (they are reported skipped). After the steps,
// whatever their outcome, it reports the files matching the job's Reports
// as EventReport (shell.CollectReports), before the workspace goes.
//
// Run returns the job's status: StatusSuccess or StatusFailure for what the
// commands did; a non-nil error (with StatusError) when forge itself could
// not run the job. When ctx is cancelled or its deadline passes, Run kills
// every process it started (SIGTERM to the process group, SIGKILL after a
// grace period), waits for them, and returns StatusCanceled (cancel) or
// StatusFailure (deadline), with a nil error.
//
// A backend whose jobs run outside forge's process (a container, a Swarm
// service) reports, once the job runs and before its first step event, an
// EventJobHandle whose Handle names the running job; a job that outlives
// forge (kill -9, a crash) can then be found again with Attacher.Attach.
// The local backend reports no handle: its jobs die with forge.
//
// Run is safe to call concurrently for different jobs. rep is called from
// one goroutine at a time, in order, and must not block for long.
//
// Optional abilities are further interfaces a Backend may implement, found
// by type assertion: Attacher (reattach after a restart), Janitor (remove
// what crashed servers left behind).
type Backend interface {
	Run(ctx context.Context, run *JobRun, rep Reporter) (Status, error)
}

// Attacher is a Backend whose jobs outlive forge.
//
// Attach takes over an attempt that Run started, possibly in a forge
// process that is gone, from the Handle that Run reported: it reports the
// attempt's step events from the start (so they are reported again: a
// consumer saves them idempotently) and its lines with a Number above from
// (the lines the caller already has are not reported again, and none is
// missed), waits for the attempt to end, removes what it created and
// returns as Run does; cancelling ctx stops the job as it stops Run's.
// An attempt that ended while nobody watched is reported and cleaned up
// the same way. ENOTFOUND when the job is gone (removed by hand, or its
// machine lost): nothing more can be known about it; EINVALID when handle
// is not one of this backend's. Attach is safe to call concurrently for
// different handles; attaching twice to one handle at once is an error of
// the caller.
type Attacher interface {
	Attach(ctx context.Context, handle []byte, from int, rep Reporter) (Status, error)
}

// Janitor is a Backend that can remove what it made for jobs whose server
// died without cleaning up (containers, networks, volumes).
//
// Clean removes everything this backend made for builds that keep does not
// report as still running (keep gets the JobRun.BuildID the things were
// made for), and returns how many things it removed. Jobs of running
// builds are left for Attach. It is safe to call while jobs run.
type Janitor interface {
	Clean(ctx context.Context, keep func(buildID string) bool) (int, error)
}

// JobRun is what a backend needs to run one attempt of a job.
type JobRun struct {
	Job *Job
	// BuildID and Attempt identify the run (Attempt counts from 1).
	BuildID string
	Attempt int
	// Env is the complete environment of the steps, except secrets:
	// the job's variables, CI=true, FORGE_* and lease variables.
	// A backend that runs the job elsewhere than Workspace.Dir sets
	// FORGE_WORKSPACE to where the job sees its workspace.
	Env map[string]string
	// Secrets are passed to the steps as environment variables; every
	// occurrence of a value in the output is masked as ***.
	Secrets map[string]string
	// Workspace is where the job's source comes from.
	Workspace Workspace
}

// Workspace tells a backend where a job's source is, on the machine forge
// runs on.
//
// The local backend runs the steps in the source (or a worktree of it).
// A backend that runs the job elsewhere (a container, another machine)
// copies the source into a workspace of the job's own, which it removes
// afterwards: with Clean, the tree of Dir's HEAD commit (what a fresh clone
// has: no uncommitted changes, no .git); without it, the directory as it
// is. Nothing a job writes comes back into Dir then.
type Workspace struct {
	// Dir is a checkout of the source. Without Clean the local backend runs
	// in it directly.
	Dir string
	// Clean gives the job a fresh copy of Dir's HEAD (a git worktree) in a
	// temporary directory, removed afterwards unless Keep.
	Clean bool
	Keep  bool
}

// Reporter receives what happens while a plan runs.
type Reporter interface {
	Report(e Event)
}

// ReporterFunc adapts a function to Reporter.
type ReporterFunc func(e Event)

// Report calls f(e).
func (f ReporterFunc) Report(e Event) { f(e) }

// EventType says what an Event is about.
type EventType string

// The event types, in the order they happen for a job.
const (
	EventJobQueued    EventType = "job_queued"
	EventJobWaiting   EventType = "job_waiting" // waiting for a lease
	EventJobStarted   EventType = "job_started"
	EventJobHandle    EventType = "job_handle" // a backend's handle of a running attempt
	EventStepStarted  EventType = "step_started"
	EventLine         EventType = "line"
	EventStepFinished EventType = "step_finished"
	EventJobFinished  EventType = "job_finished"
	// EventReport carries a test report file the job's steps wrote
	// (Job.Reports), read by the backend after the steps and before the
	// workspace is removed.
	EventReport       EventType = "report"
	EventPlanFinished EventType = "plan_finished"
)

// Event is one thing that happened while a plan ran. Backends fill in the
// step fields; the engine adds Job and Attempt.
type Event struct {
	Type    EventType `json:"type"`
	Time    time.Time `json:"time"`
	Job     string    `json:"job,omitempty"`
	Attempt int       `json:"attempt,omitempty"`
	// Step is the step's index in the job, from 0; StepName its name.
	Step     int    `json:"step"`
	StepName string `json:"step_name,omitempty"`
	// Line is set for EventLine.
	Line *LogLine `json:"line,omitempty"`
	// Status, ExitCode and Duration are set when something finishes.
	Status   Status        `json:"status,omitempty"`
	ExitCode int           `json:"exit_code"`
	Duration time.Duration `json:"duration,omitempty"`
	// Message explains an error, a skip or a wait (e.g. the queue position).
	Message string `json:"message,omitempty"`
	// Handle is set for EventJobHandle: what Attacher.Attach needs to find
	// the attempt again. It may hold secrets of the backend's and is never
	// shown.
	Handle []byte `json:"-"`
	// Report is set for EventReport.
	Report *ReportFile `json:"report,omitempty"`
}

// Stream names where a line of output came from.
type Stream string

// The streams.
const (
	Stdout Stream = "stdout"
	Stderr Stream = "stderr"
	System Stream = "system" // forge's own messages in a job log
)

// LogLine is one line of a job's output, without its newline.
type LogLine struct {
	// Number counts the job's lines from 1.
	Number int       `json:"number"`
	Time   time.Time `json:"time"`
	Stream Stream    `json:"stream"`
	Text   string    `json:"text"`
}
