// Package shell runs the steps of a job as shell processes and reports what
// they print, line by line.
//
// It is the one step runner of forge: the local backend uses it on the host,
// and forgexec uses it inside containers, so it assumes nothing about the
// machine beyond a POSIX shell: the caller gives the working directory and
// the complete environment.
//
// Each step runs as SHELL -e -c SCRIPT in a process group of its own, with
// stdin from /dev/null. Its stdout and stderr are read separately, cut into
// lines and reported as they are read, each with the time it was read; the
// lines of both streams keep the order in which they were read. A line is
// reported without its newline (and without a '\r' before it), when its
// newline arrives, when the step ends, or when MaxLine bytes of it have
// arrived; never earlier, so that a secret written in two parts is masked
// (a prompt without a newline shows when the line is done). A line longer
// than Options.MaxLine is reported as several lines, none of its bytes lost,
// so neither a single 10 MB line nor gigabytes of output use more memory than
// about two buffers of MaxLine bytes. Text is made valid UTF-8: each run of
// invalid bytes and each NUL byte becomes U+FFFD, so binary output cannot
// break a log store, a terminal or a browser. Secret values are replaced by
// *** (see Masker), also when a value is split across two writes.
//
// When a step's shell exits, whatever is left in its process group (a
// background child) gets SIGKILL at once, since nothing would wait for it;
// when a step is cancelled or times out, the group gets SIGTERM and has
// KillGrace to exit before SIGKILL; should forge itself be killed while a
// step runs, Options.Guard does the same from outside. Then the step's
// pipes are read to the end. A process that left the group (setsid, a
// double fork into a new session) but still holds the step's stdout or
// stderr is found by that pipe in /proc and killed too, with a system line
// saying so.
// A process that left the group and closed or redirected its output as well
// (a proper daemon) escapes: forge cannot tell it from any other process
// without a cgroup or a PID namespace (inside a container, removing the
// container ends it; PR_SET_CHILD_SUBREAPER would only make it forge's child,
// not tell which step it came from). Whatever the step wrote before its
// processes ended is read to the end, however slowly the Reporter takes it.
// Only a pipe that a live process still holds open is cut off: once it
// stays empty for DrainTimeout, forge stops reading it and says so in a
// system line, instead of waiting forever. Killed children are reparented
// to init, or to forge when it is PID 1 in a container: see ReapOrphans.
//
// Memory: output is copied once, from the pipe into the line's text. Short
// texts share append-only arenas and LogLines come from slabs, so a million
// lines cost a few thousand allocations; a consumer that keeps one short
// line keeps its neighbours' arena and slab (about 50 KB) alive with it.
package shell

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/forgeci/forge"
	"golang.org/x/sys/unix"
)

// DefaultShell is the shell steps run in when Options.Shell is empty.
const DefaultShell = "/bin/sh"

// DefaultKillGrace is the time between SIGTERM and SIGKILL when
// Options.KillGrace is zero.
const DefaultKillGrace = 5 * time.Second

// escapeDelay is how long a killed process group has to close the step's
// pipes before forge looks for processes outside the group that hold them.
const escapeDelay = 100 * time.Millisecond

// DrainTimeout is how long, once a step's process group is gone, a pipe may
// stay empty while a process that escaped the group still holds it open,
// before forge stops reading it.
const DrainTimeout = time.Second

// Options tune how steps run. The zero value is ready to use.
type Options struct {
	// Shell is the shell steps run in, as SHELL -e -c SCRIPT;
	// "" means DefaultShell.
	Shell string
	// KillGrace is how long a process group gets between SIGTERM and
	// SIGKILL when a step is cancelled or times out; 0 means
	// DefaultKillGrace.
	KillGrace time.Duration
	// MaxLine is the longest line reported whole, in bytes; 0 means
	// DefaultMaxLine.
	MaxLine int
	// Notes are system lines reported at the start of the first step
	// (the local backend says there where a kept workspace is).
	Notes []string
	// Guard, when set, stops a step's process group should this process
	// die while the step runs (forge server and forge exec pass a
	// *guard.Guard); nil leaves that to the caller.
	Guard Guard
}

// A Guard stops process groups on behalf of a process that died before it
// could stop them itself (see package guard). RunSteps watches each step's
// group from just after its start, and releases it once it has killed the
// group, before it reaps the group's leader. Both are safe for concurrent
// use.
type Guard interface {
	// Watch asks for group pgid to get SIGTERM, then SIGKILL after grace,
	// should this process die before Release(pgid). An error means the
	// group is not guarded.
	Watch(pgid int, grace time.Duration) error
	Release(pgid int)
}

// RunSteps runs steps in order in dir, with exactly the environment env
// ("NAME=VALUE" entries) plus secrets as variables (a secret replaces an env
// entry of the same name), and reports to rep, one call at a time:
//
//   - EventStepStarted, then EventLine for each line of output, then
//     EventStepFinished with the status, exit code, duration and a message
//     for anything but success. Lines are numbered across the whole job
//     from 1, and every occurrence of a secret value is masked.
//   - A step exits 0: success. Non-zero: failure, and the job fails unless
//     the step has ContinueOnError. The exit code of a step killed by a
//     signal is 128+signal, as shells report it.
//   - A step's Timeout passes: its process group gets SIGTERM, then SIGKILL
//     after KillGrace; the step fails with "timed out after 5s".
//   - ctx is cancelled: the same kill; the step and the job are
//     StatusCanceled. ctx's deadline passes: the step and the job fail.
//   - Steps after the one that ended the job are reported StatusSkipped.
//
// RunSteps returns the job's status: StatusSuccess, StatusFailure or
// StatusCanceled with a nil error; or StatusError with an error when a step
// could not be started at all (no such shell or directory, a bad
// environment entry). It returns only when every process it started is gone.
func RunSteps(ctx context.Context, steps []forge.Step, dir string, env []string, secrets map[string]string, rep forge.Reporter, opts Options) (forge.Status, error) {
	if opts.Shell == "" {
		opts.Shell = DefaultShell
	}
	if opts.KillGrace <= 0 {
		opts.KillGrace = DefaultKillGrace
	}
	if opts.MaxLine <= 0 {
		opts.MaxLine = DefaultMaxLine
	}
	env, values, err := stepEnv(env, secrets)
	if err != nil {
		return forge.StatusError, err
	}
	if !strings.Contains(opts.Shell, "/") {
		path, err := exec.LookPath(opts.Shell)
		if err != nil {
			return forge.StatusError, forge.WrapError(forge.EINVALID, err, "cannot run steps: shell "+opts.Shell+" not found")
		}
		opts.Shell = path
	}
	// One /dev/null for every step's stdin, rather than one open per step.
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return forge.StatusError, forge.WrapError(forge.EINTERNAL, err, "cannot open "+os.DevNull)
	}
	defer devNull.Close()
	r := &runner{opts: opts, dir: dir, env: env, rep: rep, stdin: devNull}
	r.masker = NewMasker(values)
	for i, s := range []forge.Stream{forge.Stdout, forge.Stderr} {
		r.out[i] = lineBuffer{max: opts.MaxLine, look: r.masker.Lookahead(), m: r.masker}
		r.out[i].emit = func(line []byte, complete bool) { r.line(s, line, complete) }
	}
	return r.run(ctx, steps)
}

// stepEnv checks env and adds the secrets to it, in a stable order. It
// returns the environment and the secret values to mask.
func stepEnv(env []string, secrets map[string]string) ([]string, []string, error) {
	out := make([]string, 0, len(env)+len(secrets))
	for _, e := range env {
		name, _, ok := strings.Cut(e, "=")
		if err := CheckEnv(name, e); err != nil || !ok {
			if err == nil {
				err = forge.Errorf(forge.EINVALID, "environment entry %q is not NAME=VALUE", e)
			}
			return nil, nil, err
		}
		if _, secret := secrets[name]; !secret {
			out = append(out, e)
		}
	}
	names := make([]string, 0, len(secrets))
	for name := range secrets {
		if err := CheckEnv(name, secrets[name]); err != nil {
			return nil, nil, err
		}
		names = append(names, name)
	}
	slices.Sort(names)
	values := make([]string, 0, len(names))
	for _, name := range names {
		out = append(out, name+"="+secrets[name])
		values = append(values, secrets[name])
	}
	return out, values, nil
}

// CheckEnv returns an EINVALID error when name=value cannot be passed in a
// process environment: an empty name, '=' or NUL in the name, NUL in the
// value.
func CheckEnv(name, value string) error {
	switch {
	case name == "":
		return forge.Errorf(forge.EINVALID, "environment variable with an empty name")
	case strings.ContainsAny(name, "=\x00"):
		return forge.Errorf(forge.EINVALID, "environment variable name %q contains '=' or NUL", name)
	case strings.ContainsRune(value, 0):
		return forge.Errorf(forge.EINVALID, "environment variable %s contains a NUL byte", name)
	}
	return nil
}

// runner runs the steps of one job. Its buffers live as long as the job.
type runner struct {
	opts   Options
	dir    string
	env    []string
	rep    forge.Reporter
	masker *Masker
	stdin  *os.File // /dev/null
	// unguarded is set once a step could not be guarded (and said so).
	unguarded bool

	// mu serialises reports: the two stream readers emit lines while
	// the step runs. The fields below are guarded by it.
	mu       sync.Mutex
	lines    int
	step     int
	stepName string
	now      time.Time       // when the chunk being cut into lines was read
	slab     []forge.LogLine // LogLines are handed out from here, to allocate in bulk
	arena    []byte          // short texts are copied here (see text)
	out      [2]lineBuffer   // stdout, stderr
}

// run runs the steps and returns the job's status.
func (r *runner) run(ctx context.Context, steps []forge.Step) (forge.Status, error) {
	status := forge.StatusSuccess
	var jobErr error
	skip := "" // why the steps left are not run
	for i, s := range steps {
		if skip == "" && ctx.Err() != nil {
			status, skip = ctxEnd(ctx.Err())
		}
		if skip != "" {
			r.report(forge.Event{Type: forge.EventStepFinished, Step: i, StepName: s.Name,
				Status: forge.StatusSkipped, Message: "not run: " + skip})
			continue
		}
		res := r.runStep(ctx, i, s)
		switch {
		case res.err != nil:
			status, jobErr, skip = forge.StatusError, res.err, "forge could not run an earlier step"
		case res.jobEnded != "":
			// The job was cancelled or timed out while the step ran.
			status, skip = res.status, res.jobEnded
		case res.status == forge.StatusFailure && s.ContinueOnError:
			// The step failed; the job goes on.
		case res.status != forge.StatusSuccess:
			status, skip = res.status, "an earlier step failed"
		}
	}
	return status, jobErr
}

// ctxEnd is the job's status, and why the steps left are skipped, when its
// context ends.
func ctxEnd(err error) (forge.Status, string) {
	if errors.Is(err, context.DeadlineExceeded) {
		return forge.StatusFailure, "the job timed out"
	}
	return forge.StatusCanceled, "the job was cancelled"
}

type stepResult struct {
	status forge.Status
	err    error
	// jobEnded says why, when the job's context ended the step.
	jobEnded string
}

// runStep runs one step to its end and reports it.
func (r *runner) runStep(ctx context.Context, i int, s forge.Step) stepResult {
	r.mu.Lock()
	r.step, r.stepName = i, s.Name
	r.mu.Unlock()
	start := time.Now()
	r.report(forge.Event{Type: forge.EventStepStarted, Time: start, Step: i, StepName: s.Name})
	if i == 0 {
		for _, n := range r.opts.Notes {
			r.System(n)
		}
	}
	finish := func(st forge.Status, code int, msg string) {
		now := time.Now()
		r.report(forge.Event{Type: forge.EventStepFinished, Time: now, Step: i, StepName: s.Name,
			Status: st, ExitCode: code, Duration: now.Sub(start), Message: msg})
	}

	var pr, pw [2]*os.File
	for k := range pr {
		var err error
		if pr[k], pw[k], err = pipe(); err != nil {
			closeAll(pr[:k], pw[:k])
			err = forge.WrapError(forge.EINTERNAL, err, "cannot create a pipe for the step's output")
			finish(forge.StatusError, -1, err.Error())
			return stepResult{status: forge.StatusError, err: err}
		}
	}
	path, args := r.opts.Shell, []string{r.opts.Shell, "-e", "-c", s.Run}
	if len(s.Args) > 0 {
		path, args = r.program(s.Args[0]), s.Args
	}
	cmd := &exec.Cmd{
		Path:        path,
		Args:        args,
		Dir:         r.dir,
		Env:         r.env,
		Stdin:       r.stdin,
		Stdout:      pw[0],
		Stderr:      pw[1],
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	err := cmd.Start()
	pw[0].Close()
	pw[1].Close()
	if err != nil {
		pr[0].Close()
		pr[1].Close()
		if len(s.Args) > 0 {
			err = programError(s.Args[0], path, r.dir, err)
		} else {
			err = startError(r.opts.Shell, r.dir, s.Run, err)
		}
		finish(forge.StatusError, -1, forge.ErrorMessage(err))
		return stepResult{status: forge.StatusError, err: err}
	}

	guarded := r.guard(cmd.Process.Pid)

	// Two readers, one per stream; readersLeft reaching 0 closes readersDone.
	readersDone := make(chan struct{})
	var readersLeft atomic.Int32
	readersLeft.Store(2)
	var escaped [2]bool
	var draining atomic.Bool // set once the step's process group is gone
	for k := range pr {
		go func() {
			escaped[k] = r.read(pr[k], &r.out[k], &draining)
			if readersLeft.Add(-1) == 0 {
				close(readersDone)
			}
		}()
	}

	k := &killer{pgid: cmd.Process.Pid, grace: r.opts.KillGrace, graceOver: make(chan struct{})}
	stepCtx := ctx
	if s.Timeout > 0 {
		var cancel context.CancelFunc
		stepCtx, cancel = context.WithTimeout(ctx, s.Timeout)
		defer cancel()
	}
	stopKill := context.AfterFunc(stepCtx, k.terminate)

	// Wait for the shell to exit but leave it a zombie, so its process
	// group id cannot be reused until the group has been killed.
	werr := waitExited(cmd.Process.Pid)
	terminating := !stopKill()
	if terminating && werr == nil {
		// Give the rest of the group its grace period too: it is gone
		// when it has closed the pipes.
		select {
		case <-readersDone:
		case <-k.graceOver:
		}
	}
	k.finish()
	if guarded {
		// The group is killed and its leader not reaped yet: its id is
		// still the step's.
		r.opts.Guard.Release(cmd.Process.Pid)
	}
	var exitErr *exec.ExitError
	if err := cmd.Wait(); err != nil && !errors.As(err, &exitErr) && werr == nil {
		werr = err
	}
	// Whatever held the pipes dies now, unless it left the group
	// (setsid): such a process is found by the pipe it holds and killed.
	select {
	case <-readersDone: // the common case: no timers needed
	default:
		escapeCheck := time.NewTimer(escapeDelay)
		select {
		case <-readersDone:
		case <-escapeCheck.C:
			if n := killPipeHolders(pr[:]); n > 0 {
				r.System(fmt.Sprintf("killed %d process(es) that left the step's process group but kept its output open", n))
			}
		}
		escapeCheck.Stop()
		// Now only a pipe that a live process holds open can keep a
		// reader waiting: the readers stop when a pipe stays empty and
		// open for DrainTimeout. A reader busy with what the pipe still
		// holds (a slow consumer) is not hurried: the output of a
		// process that exited is read to the end, however long that
		// takes. The deadline wakes a reader already waiting on an empty
		// pipe; the readers set their own before each read from now on.
		draining.Store(true)
		deadline := time.Now().Add(DrainTimeout)
		pr[0].SetReadDeadline(deadline)
		pr[1].SetReadDeadline(deadline)
		<-readersDone
	}
	pr[0].Close()
	pr[1].Close()
	for k, esc := range escaped {
		if esc {
			r.System(fmt.Sprintf("stopped reading %s: a process that left the step's process group still holds it open", []string{"stdout", "stderr"}[k]))
		}
	}

	if werr != nil {
		err := forge.WrapError(forge.EINTERNAL, werr, "cannot wait for the step's shell")
		finish(forge.StatusError, -1, err.Error())
		return stepResult{status: forge.StatusError, err: err}
	}
	code := exitCode(cmd.ProcessState)
	switch {
	case terminating && ctx.Err() != nil:
		st, msg := ctxEnd(ctx.Err())
		finish(st, code, msg)
		return stepResult{status: st, jobEnded: msg}
	case terminating:
		finish(forge.StatusFailure, code, "timed out after "+s.Timeout.String())
		return stepResult{status: forge.StatusFailure}
	case code != 0:
		msg := fmt.Sprintf("exit code %d", code)
		if s.ContinueOnError {
			msg += " (continue_on_error: the job goes on)"
		}
		finish(forge.StatusFailure, code, msg)
		return stepResult{status: forge.StatusFailure}
	}
	finish(forge.StatusSuccess, 0, "")
	return stepResult{status: forge.StatusSuccess}
}

// guard asks Options.Guard to watch the step's process group, and reports
// whether it does. The first failure is told in a system line.
func (r *runner) guard(pgid int) bool {
	if r.opts.Guard == nil {
		return false
	}
	err := r.opts.Guard.Watch(pgid, r.opts.KillGrace)
	if err != nil && !r.unguarded {
		r.unguarded = true
		r.System(fmt.Sprintf("forge cannot guard this job's processes (%v): they would outlive forge were it killed", err))
	}
	return err == nil
}

func closeAll(fs ...[]*os.File) {
	for _, l := range fs {
		for _, f := range l {
			f.Close()
		}
	}
}

// startError explains why the shell could not be started.
func startError(sh, dir, script string, err error) error {
	switch {
	case strings.ContainsRune(script, 0):
		return forge.WrapError(forge.EINVALID, err, "the step's script contains a NUL byte")
	case errors.Is(err, syscall.E2BIG):
		return forge.WrapError(forge.ETOOLARGE, err, fmt.Sprintf(
			"the step's script is too long to pass to the shell (%d bytes, at most %d): put it in a file", len(script), maxScript))
	}
	if fi, serr := os.Stat(dir); serr != nil || !fi.IsDir() {
		return forge.WrapError(forge.EINVALID, err, fmt.Sprintf("cannot run steps in %s: not a directory", dir))
	}
	if errors.Is(err, os.ErrNotExist) {
		return forge.WrapError(forge.EINVALID, err, fmt.Sprintf("cannot run steps: shell %s not found", sh))
	}
	return forge.WrapError(forge.EINTERNAL, err, "cannot start the step's shell "+sh)
}

// program finds the program of a step given as arguments: a name with a
// slash as it is, any other in the steps' PATH (the default PATH when
// they have none), as a shell would.
func (r *runner) program(name string) string {
	if strings.Contains(name, "/") {
		return name
	}
	path := defaultPath
	for _, e := range r.env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range strings.Split(path, ":") {
		if dir == "" {
			dir = "."
		}
		p := dir + "/" + name
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return name
}

// defaultPath is where programs are looked for when the steps have no PATH.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// programError explains why the program of a step given as arguments
// (name, found at path) could not be started.
func programError(name, path, dir string, err error) error {
	if fi, serr := os.Stat(dir); serr != nil || !fi.IsDir() {
		return forge.WrapError(forge.EINVALID, err, fmt.Sprintf("cannot run steps in %s: not a directory", dir))
	}
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, exec.ErrNotFound) || !strings.Contains(path, "/") {
		return forge.WrapError(forge.EINVALID, err, fmt.Sprintf("cannot run the step: program %s not found", name))
	}
	return forge.WrapError(forge.EINVALID, err, "cannot start the step's program "+name)
}

// maxScript is Linux's limit on one argument (MAX_ARG_STRLEN), which the
// script is.
const maxScript = 32 * 4096

// exitCode is the step's exit code; 128+signal when a signal killed it.
func exitCode(state *os.ProcessState) int {
	if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return state.ExitCode()
}

// read copies one stream into lines until EOF. Once draining is set (the
// step's process group is gone), it stops early only when the pipe stays
// empty for DrainTimeout while some process still holds it open, and then
// reports cutShort.
func (r *runner) read(f *os.File, lb *lineBuffer, draining *atomic.Bool) (cutShort bool) {
	for {
		if draining.Load() {
			f.SetReadDeadline(time.Now().Add(DrainTimeout))
		}
		n, err := f.Read(lb.space())
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			// Waited on an empty pipe: one read that does not wait tells
			// whether bytes came meanwhile, the writers are all gone (EOF)
			// or one is alive and silent.
			n, err = readNow(f, lb.space())
			if err == nil && n > 0 {
				r.commit(lb, n)
				continue
			}
			cutShort = errors.Is(err, unix.EAGAIN)
			break
		}
		if n > 0 {
			r.commit(lb, n)
		}
		if err != nil {
			break
		}
	}
	r.mu.Lock()
	r.now = time.Now()
	lb.flush()
	r.mu.Unlock()
	return cutShort
}

// commit cuts n bytes just read into lb's space into lines.
func (r *runner) commit(lb *lineBuffer, n int) {
	r.mu.Lock()
	r.now = time.Now()
	lb.commit(n)
	r.mu.Unlock()
}

// readNow reads from the non-blocking pipe f without waiting, whatever f's
// deadline: n > 0 with bytes, 0 and a nil error at EOF, EAGAIN when the pipe
// is empty and a writer still holds it.
func readNow(f *os.File, p []byte) (n int, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	if cerr := rc.Control(func(fd uintptr) {
		for {
			n, err = unix.Read(int(fd), p)
			if err != unix.EINTR {
				return
			}
		}
	}); cerr != nil {
		return 0, cerr
	}
	return max(n, 0), err
}

// line reports one line of a stream. r.mu is held.
func (r *runner) line(stream forge.Stream, b []byte, complete bool) {
	if complete && len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	r.emitLocked(stream, r.text(cleanText(r.masker.Mask(b))))
}

// text returns b as a string. Short texts are copied into an arena that
// is only ever appended to, so a million short lines cost a few hundred
// allocations rather than a million; like a slab, an arena lives while any
// of its texts does, hence only short texts go there.
func (r *runner) text(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if len(b) > slabText {
		return string(b)
	}
	if cap(r.arena)-len(r.arena) < len(b) {
		r.arena = make([]byte, 0, arenaSize)
	}
	start := len(r.arena)
	r.arena = append(r.arena, b...)
	// The bytes are never written again: the string may alias them.
	return unsafe.String(&r.arena[start], len(b))
}

// System reports a line of forge's own in the current step.
func (r *runner) System(text string) {
	r.mu.Lock()
	r.now = time.Now()
	r.emitLocked(forge.System, r.masker.MaskString(text))
	r.mu.Unlock()
}

func (r *runner) emitLocked(stream forge.Stream, text string) {
	// Short lines come from a slab, to allocate LogLines in bulk; a slab
	// lives while any of its lines does, so long texts are not put there.
	var l *forge.LogLine
	if len(text) <= slabText {
		if len(r.slab) == 0 {
			r.slab = make([]forge.LogLine, slabLines)
		}
		l = &r.slab[0]
		r.slab = r.slab[1:]
	} else {
		l = new(forge.LogLine)
	}
	r.lines++
	*l = forge.LogLine{Number: r.lines, Time: r.now, Stream: stream, Text: text}
	r.rep.Report(forge.Event{Type: forge.EventLine, Time: r.now, Step: r.step, StepName: r.stepName, Line: l})
}

// A slab holds slabLines LogLines of texts up to slabText bytes: at most
// about 50 KB kept alive by one line a consumer holds on to.
const (
	slabLines = 256
	slabText  = 128
	arenaSize = 16 << 10
)

// report sends a step event; Time is set if empty.
func (r *runner) report(e forge.Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	r.mu.Lock()
	r.rep.Report(e)
	r.mu.Unlock()
}

// killer ends a step's process group: SIGTERM, then SIGKILL after the grace
// period. Once the step is over (finish), it sends nothing more: the group's
// id may be reused.
type killer struct {
	pgid      int
	grace     time.Duration
	graceOver chan struct{} // closed when the grace period is over

	mu    sync.Mutex
	done  bool
	timer *time.Timer
}

// terminate sends SIGTERM to the group and arms SIGKILL.
func (k *killer) terminate() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.done {
		return
	}
	syscall.Kill(-k.pgid, syscall.SIGTERM)
	k.timer = time.AfterFunc(k.grace, func() {
		k.mu.Lock()
		if !k.done {
			syscall.Kill(-k.pgid, syscall.SIGKILL)
		}
		k.mu.Unlock()
		close(k.graceOver)
	})
}

// finish kills whatever is left of the group and disarms the killer.
func (k *killer) finish() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.done = true
	if k.timer != nil {
		k.timer.Stop()
	}
	// The leader is not reaped yet, so the group id is still the step's.
	syscall.Kill(-k.pgid, syscall.SIGKILL)
}
