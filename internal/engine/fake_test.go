package engine

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/forgeci/forge"
)

// scripted is a fake backend in the spirit of Woodpecker's dummy backend:
// each step's Run is a tiny script of commands, one per line:
//
//	print TEXT        report a line of output
//	sleep DURATION    wait (ends early with the context)
//	hang              wait for the context
//	await N           wait until N jobs have run at once (at most 5s)
//	exit N            fail the step with exit code N (0 passes)
//	fail-until N      fail with exit code 1 while the attempt is below N
//	env NAME          print NAME=value of the job's environment
//	error TEXT        return an infrastructure error
//
// It records when jobs start and end and how many run at once.
type scripted struct {
	mu      sync.Mutex
	running int
	max     int
	log     []string // "start job", "end job"
	runs    []*forge.JobRun
	active  atomic.Int64
	started chan string // if not nil, receives each job's name as it starts
}

var _ forge.Backend = (*scripted)(nil)

func (b *scripted) Run(ctx context.Context, run *forge.JobRun, rep forge.Reporter) (forge.Status, error) {
	b.mu.Lock()
	b.running++
	b.max = max(b.max, b.running)
	b.log = append(b.log, "start "+run.Job.Name)
	b.runs = append(b.runs, run)
	b.mu.Unlock()
	b.active.Add(1)
	defer func() {
		b.active.Add(-1)
		b.mu.Lock()
		b.running--
		b.log = append(b.log, "end "+run.Job.Name)
		b.mu.Unlock()
	}()
	if b.started != nil {
		b.started <- run.Job.Name
	}

	ctxStatus := func() forge.Status {
		if ctx.Err() == context.DeadlineExceeded {
			return forge.StatusFailure
		}
		return forge.StatusCanceled
	}
	lineNo := 0
	result := forge.StatusSuccess
	for i, s := range run.Job.Steps {
		if result != forge.StatusSuccess {
			rep.Report(forge.Event{Type: forge.EventStepFinished, Step: i, StepName: s.Name, Status: forge.StatusSkipped})
			continue
		}
		rep.Report(forge.Event{Type: forge.EventStepStarted, Step: i, StepName: s.Name, Status: forge.StatusRunning})
		exit := 0
	script:
		for _, line := range strings.Split(s.Run, "\n") {
			cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
			switch cmd {
			case "":
			case "print":
				lineNo++
				rep.Report(forge.Event{Type: forge.EventLine, Step: i, StepName: s.Name,
					Line: &forge.LogLine{Number: lineNo, Time: time.Now(), Stream: forge.Stdout, Text: arg}})
			case "env":
				lineNo++
				rep.Report(forge.Event{Type: forge.EventLine, Step: i, StepName: s.Name,
					Line: &forge.LogLine{Number: lineNo, Time: time.Now(), Stream: forge.Stdout, Text: arg + "=" + run.Env[arg]}})
			case "sleep":
				d, err := time.ParseDuration(arg)
				if err != nil {
					return forge.StatusError, err
				}
				select {
				case <-time.After(d):
				case <-ctx.Done():
					return ctxStatus(), nil
				}
			case "await":
				// wait until n jobs have run at once (or give up after 5s)
				n, _ := strconv.Atoi(arg)
				for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
					b.mu.Lock()
					most := b.max
					b.mu.Unlock()
					if most >= n {
						break
					}
					select {
					case <-time.After(time.Millisecond):
					case <-ctx.Done():
						return ctxStatus(), nil
					}
				}
			case "hang":
				<-ctx.Done()
				return ctxStatus(), nil
			case "exit":
				exit, _ = strconv.Atoi(arg)
				break script
			case "fail-until":
				n, _ := strconv.Atoi(arg)
				if run.Attempt < n {
					exit = 1
					break script
				}
			case "error":
				return forge.StatusError, fmt.Errorf("%s", arg)
			default:
				return forge.StatusError, fmt.Errorf("scripted: unknown command %q", cmd)
			}
		}
		st := forge.StatusSuccess
		if exit != 0 {
			st = forge.StatusFailure
			if !s.ContinueOnError {
				result = forge.StatusFailure
			}
		}
		rep.Report(forge.Event{Type: forge.EventStepFinished, Step: i, StepName: s.Name, Status: st, ExitCode: exit})
	}
	return result, nil
}

// fakeLeaser grants leases from a channel the test feeds, so a test
// decides when a waiting job gets its resources.
type fakeLeaser struct {
	grants  chan *fakeGrant
	err     error
	mu      sync.Mutex
	holders []string
}

func (l *fakeLeaser) Acquire(ctx context.Context, reqs []forge.ResourceRequest, holder string, queued func(int)) (forge.Grant, error) {
	l.mu.Lock()
	l.holders = append(l.holders, holder)
	l.mu.Unlock()
	if l.err != nil {
		return nil, l.err
	}
	queued(2)
	queued(1)
	select {
	case g := <-l.grants:
		return g, nil
	case <-ctx.Done():
		return nil, forge.Errorf(forge.ECANCELED, "lease wait canceled")
	}
}

type fakeGrant struct {
	env      map[string]string
	lost     chan struct{}
	released atomic.Int32
}

func newGrant(env map[string]string) *fakeGrant {
	return &fakeGrant{env: env, lost: make(chan struct{})}
}

// Lease describes the fake lease.
func (g *fakeGrant) Lease() *forge.Lease { return &forge.Lease{ID: "l1"} }

// Env returns the variables the test gave.
func (g *fakeGrant) Env() map[string]string { return g.env }

// Lost is closed by loseNow.
func (g *fakeGrant) Lost() <-chan struct{} { return g.lost }

// Release counts releases.
func (g *fakeGrant) Release(context.Context) error { g.released.Add(1); return nil }
