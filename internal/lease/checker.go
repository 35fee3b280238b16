package lease

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/forgeci/forge"
)

// DefaultMaxChecks bounds the health checks a Checker runs at once.
const DefaultMaxChecks = 8

// maxCheckOutput is how much of a check's output is kept (its end).
const maxCheckOutput = 4096

// Checker runs the pools' health checks of a Health (a Manager) until its
// context ends. It is a component of its own, started by the server, so
// that with several replicas only one of them (the leader) runs checks.
type Checker struct {
	// Health is where the checks come from and their results go.
	Health Health
	// Run runs one check; default RunCheck.
	Run func(ctx context.Context, job *CheckJob) *CheckResult
	// Max bounds the checks running at once; default DefaultMaxChecks.
	Max int
	// Now and After are the clock; default the real one (tests drive a
	// fake).
	Now   func() time.Time
	After func(d time.Duration) <-chan time.Time
	// Logger gets a line per check that changes a resource's state.
	Logger *slog.Logger
}

// Serve runs checks until ctx ends; then it stops the running ones
// (their results are dropped) and calls StopChecks. It returns nil when
// ctx ended, or the error that stopped it.
func (c *Checker) Serve(ctx context.Context) error {
	run, limit, now, after, log := c.Run, c.Max, c.Now, c.After, c.Logger
	if run == nil {
		run = RunCheck
	}
	if limit <= 0 {
		limit = DefaultMaxChecks
	}
	if now == nil {
		now = time.Now
	}
	if after == nil {
		after = time.After
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wake, err := c.Health.StartChecks(ctx)
	if err != nil {
		return err
	}
	type done struct {
		job *CheckJob
		res *CheckResult
	}
	finished := make(chan done)
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		c.Health.StopChecks(context.WithoutCancel(ctx))
	}()
	running := 0
	for {
		var timer <-chan time.Time
		if running < limit {
			jobs, next, err := c.Health.TakeChecks(ctx, now(), limit-running)
			if forge.ErrorCode(err) == forge.EUNAVAILABLE {
				return nil // the manager closed: nothing left to check
			}
			if err != nil {
				return err
			}
			for _, job := range jobs {
				running++
				wg.Add(1)
				go func() {
					defer wg.Done()
					start := now()
					res := run(runCtx, job)
					if res.Duration == 0 {
						res.Duration = now().Sub(start)
					}
					res.Finished = now()
					select {
					case finished <- done{job, res}:
					case <-runCtx.Done():
					}
				}()
			}
			if !next.IsZero() && running < limit {
				timer = after(max(next.Sub(now()), 0))
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-timer:
		case d := <-finished:
			running--
			if ctx.Err() != nil {
				return nil // killed by the end of ctx: not a result
			}
			changed, err := c.Health.FinishCheck(ctx, d.job, d.res)
			if err != nil {
				log.Warn("lease health check result not recorded", "pool", d.job.Pool, "resource", d.job.Resource.ID, "err", err)
			}
			if changed && d.res.OK {
				log.Info("lease resource back in service: its check passed", "pool", d.job.Pool, "resource", d.job.Resource.ID)
			} else if changed {
				log.Warn("lease resource out of service: its check failed", "pool", d.job.Pool, "resource", d.job.Resource.ID,
					"reason", d.res.reason())
			}
		}
	}
}

// RunCheck runs job's command with /bin/sh -c on this host, in a process
// group of its own, with the resource in its environment (CheckJob.Env)
// and its standard input empty. It passes when the command exits 0 within
// the check's timeout; at the timeout the whole process group is killed.
// The result keeps the last 4 KiB of its output (stdout and stderr).
func RunCheck(ctx context.Context, job *CheckJob) *CheckResult {
	ctx, cancel := context.WithTimeout(ctx, job.Check.Timeout)
	defer cancel()
	out := &tailBuffer{max: maxCheckOutput}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", job.Check.Command)
	cmd.Env = append(os.Environ(), job.Env()...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A descendant that left the group may hold the output open: stop
	// waiting for it soon after the command ended.
	cmd.WaitDelay = time.Second
	start := time.Now()
	err := cmd.Run()
	res := &CheckResult{OK: err == nil, Output: out.String(), Duration: time.Since(start)}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() == context.DeadlineExceeded:
		res.OK = false
		res.Problem = fmt.Sprintf("the check timed out after %s", job.Check.Timeout)
	case errors.As(err, &exit):
		res.Problem = fmt.Sprintf("the check exited with status %d", exit.ExitCode())
		if exit.ExitCode() < 0 {
			res.Problem = "the check " + exit.String()
		}
	default:
		res.Problem = "the check could not run: " + err.Error()
	}
	return res
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex // stdout and stderr are copied by two goroutines
	max int
	buf bytes.Buffer
	cut bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) >= t.max {
		t.buf.Reset()
		p = p[len(p)-t.max:]
		t.cut = true
	}
	if over := t.buf.Len() + len(p) - t.max; over > 0 {
		t.buf.Next(over)
		t.cut = true
	}
	t.buf.Write(p)
	return n, nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.buf.String()
	if t.cut {
		for len(s) > 0 && !utf8.RuneStart(s[0]) {
			s = s[1:]
		}
		s = "…" + s
	}
	return s
}
