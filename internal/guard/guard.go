// Package guard stops process groups that must not outlive the process that
// started them, however it dies.
//
// forge runs a job's steps, and forge lease its CMD, each in a process group
// of its own. When forge ends normally it stops those groups itself; killed
// with SIGKILL, it cannot, and the groups would run on (a build's sleep, a
// test still using a device whose lease was freed). So forge starts a guard:
// a small process of its own (the forge binary, re-executed with a hidden
// command that calls Main) whose stdin is a pipe that only forge holds.
// forge tells it which groups to watch and which to forget; when the pipe
// reaches its end without a goodbye, forge is gone, and the guard stops every
// group still watched: SIGTERM, then SIGKILL after that group's grace period.
//
// Why a guard process, and not the alternatives:
//
//   - PR_SET_PDEATHSIG reaches only the direct child (the step's shell), not
//     what the shell started; and it fires when the thread that forked the
//     child exits, which Go's runtime does not pin.
//   - A cgroup per job can kill a whole tree, but only cgroup v2 with
//     delegation to forge offers that to an unprivileged service; the
//     machines forge targets include hybrid v1 hosts and containers without
//     a writable cgroup tree, and nothing would kill the cgroup at the
//     moment forge dies, only at its next start.
//   - The guard needs nothing but the binary itself, works as any user, in
//     a container as on a host, and acts the moment forge dies: the kernel
//     closes forge's end of the pipe.
//
// Limits: a process that left its group (setsid) is not the guard's to
// find; the step runner kills those while forge lives (see package shell).
// A group is watched from just after it is started, so forge dying in that
// instant leaves it unguarded. The guard process itself ignores the terminal
// signals and runs in its own process group, so that what interrupts forge
// does not kill it first; it exits once it has stopped the groups.
package guard

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Guard is the forge side of a guard process, started at the first Watch.
// It is safe for concurrent use.
type Guard struct {
	argv []string

	mu      sync.Mutex
	w       *os.File // the pipe to the guard's stdin; nil until started
	exited  chan struct{}
	closed  bool
	watched map[int]time.Duration // group → grace, resent to a restarted guard
}

// New returns a guard that runs argv (argv[0] a path, typically the
// program's own binary with a command that calls Main) when it is first
// needed.
func New(argv ...string) *Guard {
	return &Guard{argv: argv, watched: map[int]time.Duration{}}
}

// Watch asks the guard to stop process group pgid (SIGTERM, then SIGKILL
// after grace) should this process die before Release(pgid). It starts the
// guard process when none runs (the first time, or after it died); the
// error says why it could not, and the group is then unguarded.
func (g *Guard) Watch(pgid int, grace time.Duration) error {
	if pgid <= 1 {
		return fmt.Errorf("guard: bad process group %d", pgid)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return errors.New("guard: closed")
	}
	g.watched[pgid] = grace
	msg := fmt.Sprintf("watch %d %d\n", pgid, grace)
	if g.w != nil {
		if _, err := g.w.WriteString(msg); err == nil {
			return nil
		}
		// The guard died (someone killed it): start another.
		g.stopLocked()
	}
	if err := g.startLocked(); err != nil {
		delete(g.watched, pgid)
		return err
	}
	return nil
}

// Release tells the guard to forget pgid: the caller has stopped that group
// itself. It must come before the group's leader is reaped, so that the
// guard never signals a group id the kernel gave to someone else.
func (g *Guard) Release(pgid int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.watched[pgid]; !ok {
		return
	}
	delete(g.watched, pgid)
	if g.w != nil {
		if _, err := fmt.Fprintf(g.w, "release %d\n", pgid); err != nil {
			g.stopLocked()
		}
	}
}

// Close ends the guard process and waits for it: it stops the groups still
// watched, as if this process had died, then exits. Later Watches fail.
// Close is idempotent.
func (g *Guard) Close() error {
	g.mu.Lock()
	g.closed = true
	exited := g.exited
	if g.w != nil {
		g.w.Close()
		g.w = nil
	}
	g.mu.Unlock()
	if exited != nil {
		<-exited
	}
	return nil
}

// startLocked starts the guard process and sends it every watched group.
func (g *Guard) startLocked() error {
	if len(g.argv) == 0 {
		return errors.New("guard: no command to run")
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("guard: %w", err)
	}
	cmd := exec.Command(g.argv[0], g.argv[1:]...)
	cmd.Stdin = r
	// Its own group: a Ctrl-C for forge's group does not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return fmt.Errorf("guard: cannot start %s: %w", g.argv[0], err)
	}
	exited := make(chan struct{})
	go func() {
		// The owner of this goroutine is the guard process: it ends when
		// the process exits, at the latest when this process closes w.
		cmd.Wait()
		close(exited)
	}()
	var b strings.Builder
	for pgid, grace := range g.watched {
		fmt.Fprintf(&b, "watch %d %d\n", pgid, grace)
	}
	if _, err := w.WriteString(b.String()); err != nil {
		w.Close()
		<-exited
		return fmt.Errorf("guard: %s exited at once: %w", g.argv[0], err)
	}
	g.w, g.exited = w, exited
	return nil
}

// stopLocked lets go of a guard process that cannot be written to.
func (g *Guard) stopLocked() {
	g.w.Close()
	g.w = nil
	<-g.exited
}

// Main is the guard process: it reads "watch PGID GRACE" and "release
// PGID" lines (GRACE in nanoseconds) from r until r ends, then stops every
// group still watched, all at once, and returns when they are gone (or
// KILLed and given a moment). It ignores SIGINT, SIGTERM, SIGHUP and
// SIGQUIT.
func Main(r io.Reader) error {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	watched := map[int]time.Duration{}
	sc := bufio.NewScanner(r)
	var bad error
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		var pgid int
		var err error
		if len(f) >= 2 {
			pgid, err = strconv.Atoi(f[1])
		}
		switch {
		case len(f) == 3 && f[0] == "watch" && err == nil && pgid > 1:
			var grace int64
			if grace, err = strconv.ParseInt(f[2], 10, 64); err == nil {
				watched[pgid] = time.Duration(grace)
				continue
			}
		case len(f) == 2 && f[0] == "release" && err == nil:
			delete(watched, pgid)
			continue
		}
		// Keep watching what was asked: a bad line must not free groups.
		bad = errors.Join(bad, fmt.Errorf("guard: bad request %q", sc.Text()))
	}
	var wg sync.WaitGroup
	for pgid, grace := range watched {
		wg.Add(1)
		go func() {
			defer wg.Done()
			Stop(pgid, grace)
		}()
	}
	wg.Wait()
	return bad
}

// Stop ends process group pgid: SIGTERM, then SIGKILL to what is left after
// grace; it returns when no process of the group runs, or a second after
// the SIGKILL. Zombies count as gone: their parent may never reap them.
func Stop(pgid int, grace time.Duration) {
	if !Alive(pgid) {
		return
	}
	syscall.Kill(-pgid, syscall.SIGTERM)
	if waitGone(pgid, grace) {
		return
	}
	syscall.Kill(-pgid, syscall.SIGKILL)
	waitGone(pgid, time.Second)
}

// waitGone polls until group pgid has no live process or d passed, and
// reports whether it is gone.
func waitGone(pgid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		if !Alive(pgid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(wait)
	}
}

// Alive reports whether a process of group pgid runs (is not a zombie).
func Alive(pgid int) bool {
	if syscall.Kill(-pgid, 0) == syscall.ESRCH {
		return false
	}
	// Signals reach zombies too: look at each process's state.
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	for _, p := range procs {
		if p.Name()[0] < '0' || p.Name()[0] > '9' {
			continue
		}
		stat, err := os.ReadFile("/proc/" + p.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp …; comm may hold spaces and ')'.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) >= 3 && f[2] == strconv.Itoa(pgid) && f[0] != "Z" && f[0] != "X" {
			return true
		}
	}
	return false
}
