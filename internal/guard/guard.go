// Package guard stops process groups that must not outlive the process that
// started them, however it dies.
//
// forge runs a job's steps, and forge lease its CMD, each in a process group
// of its own. When forge ends normally it stops those groups itself; killed
// with SIGKILL, it cannot, and the groups would run on (a build's sleep, a
// test still using a device whose lease was freed). So forge starts a guard:
// a small shell process (Script) whose stdin is a pipe that only forge
// holds, and which is given a table of the groups to watch (a memory file
// forge updates with one pwrite per change, so that a step costs the guard
// nothing: it sleeps until the pipe ends). When the pipe reaches its end,
// forge is gone (or done), and the guard reads the table and stops every
// group still in it: SIGTERM, then SIGKILL after that group's grace period.
//
// Why a guard process, and not the alternatives:
//
//   - PR_SET_PDEATHSIG reaches only the direct child (the step's shell), not
//     what the shell started; and it fires when the thread that forked the
//     child exits, which Go's runtime does not pin.
//   - A cgroup per job can kill a whole tree, but only cgroup v2 with
//     delegation to forge offers that to an unprivileged service; the
//     machines forge targets include hybrid v1 hosts (this project's CI VM
//     among them) and containers without a writable cgroup tree, and
//     nothing would kill the cgroup at the moment forge dies, only at its
//     next start.
//   - A guard needs nothing but /bin/sh, works as any user, in a container
//     as on a host, and acts the moment forge dies: the kernel closes
//     forge's end of the pipe. It is a shell rather than the forge binary
//     re-executed because it starts in about a millisecond, against the
//     several milliseconds of CPU the forge binary's start-up takes, which
//     every forge exec would pay.
//
// Limits: a process that left its group (setsid) is not the guard's to
// find; the step runner kills those while forge lives (see package shell).
// A group is watched from just after it is started, so forge dying in that
// instant leaves it unguarded. The guard ignores the terminal signals and
// runs in its own process group, so that what interrupts forge does not kill
// it first; it exits once it has stopped the groups. A group whose processes
// are zombies its parent never reaps counts as running for the guard, which
// then only waits out the grace period before its SIGKILL.
package guard

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Script is the guard. It waits for the end of its stdin, then reads the
// table of groups from descriptor 3 (reopened from the start when /dev/fd
// allows), sends SIGTERM to every group listed, polls every 50 ms, and
// sends SIGKILL to each group still there when its grace period is over.
// A table row is "PGID GRACE_MS", space-padded; a blank row is a free slot.
// It is plain POSIX sh (dash, bash, busybox).
const Script = `trap '' INT TERM HUP QUIT
while read -r _; do :; done
if [ -r /dev/fd/3 ]; then exec 4</dev/fd/3; else exec 4<&3; fi
w=
while read -r pg grace; do [ -z "$pg" ] || w="$w $pg:$grace"; done <&4
for e in $w; do kill -TERM "-${e%%:*}" 2>/dev/null; done
t=0
while [ -n "$w" ]; do
	n=
	for e in $w; do
		kill -0 "-${e%%:*}" 2>/dev/null || continue
		if [ "$t" -ge "${e#*:}" ]; then kill -KILL "-${e%%:*}" 2>/dev/null; else n="$n $e"; fi
	done
	w=$n
	[ -z "$w" ] || { sleep 0.05; t=$((t + 50)); }
done
`

// shell runs Script.
const shell = "/bin/sh"

// rowSize is the size of a row of the table, newline included.
const rowSize = 32

// Guard is forge's side of a guard process, started at the first Watch.
// It is safe for concurrent use.
type Guard struct {
	mu     sync.Mutex
	closed bool
	w      *os.File      // the pipe to the guard's stdin; nil until started
	pid    int           // the guard process's
	exited chan struct{} // closed when the guard process has exited
	table  *os.File      // the rows the guard reads at the end
	rows   map[int]int   // watched group → its row
	free   []int         // rows released, to reuse
	next   int           // rows in the table
}

// New returns a guard, to be started when first needed.
func New() *Guard {
	return &Guard{rows: map[int]int{}}
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
	if err := g.runningLocked(); err != nil {
		return err
	}
	row, ok := g.rows[pgid]
	if !ok {
		if n := len(g.free); n > 0 {
			row, g.free = g.free[n-1], g.free[:n-1]
		} else {
			row = g.next
			g.next++
		}
	}
	text := fmt.Sprintf("%d %d", pgid, max(grace.Milliseconds(), 0))
	if err := g.writeRow(row, text); err != nil {
		g.free = append(g.free, row)
		delete(g.rows, pgid)
		return fmt.Errorf("guard: %w", err)
	}
	g.rows[pgid] = row
	return nil
}

// Release tells the guard to forget pgid: the caller has stopped that group
// itself. It must come before the group's leader is reaped, so that the
// guard never signals a group id the kernel gave to someone else.
func (g *Guard) Release(pgid int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	row, ok := g.rows[pgid]
	if !ok {
		return
	}
	delete(g.rows, pgid)
	if g.writeRow(row, "") == nil {
		g.free = append(g.free, row)
	}
	// A row that could not be blanked (a write to memory failed) is left
	// out of use rather than given to another group.
}

// writeRow writes text into row of the table, padded with spaces.
func (g *Guard) writeRow(row int, text string) error {
	var b [rowSize]byte
	for i := range b {
		b[i] = ' '
	}
	copy(b[:rowSize-1], text)
	b[rowSize-1] = '\n'
	_, err := g.table.WriteAt(b[:], int64(row)*rowSize)
	return err
}

// Close ends the guard process and waits for it: it stops the groups still
// watched, as if this process had died, then exits. Later Watches fail.
// Close is idempotent.
func (g *Guard) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	if g.w != nil {
		g.w.Close()
		<-g.exited
	}
	if g.table != nil {
		g.table.Close()
	}
	return nil
}

// runningLocked makes sure a guard process runs: it starts one the first
// time, and another when the last one died (someone killed it); the table
// goes with the new one.
func (g *Guard) runningLocked() error {
	if g.w != nil {
		select {
		case <-g.exited:
			g.w.Close()
			g.w = nil
		default:
			return nil
		}
	}
	if g.table == nil {
		t, err := newTable()
		if err != nil {
			return fmt.Errorf("guard: %w", err)
		}
		g.table = t
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("guard: %w", err)
	}
	cmd := exec.Command(shell, "-c", Script, "forge-guard")
	cmd.Stdin = r
	cmd.ExtraFiles = []*os.File{g.table}
	// Its own group: a Ctrl-C for forge's group does not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return fmt.Errorf("guard: cannot start %s: %w", shell, err)
	}
	exited := make(chan struct{})
	go func() {
		// The owner of this goroutine is the guard process: it ends when
		// the process exits, at the latest when this process closes w.
		cmd.Wait()
		close(exited)
	}()
	g.w, g.exited, g.pid = w, exited, cmd.Process.Pid
	return nil
}

// newTable returns an empty file for the table: in memory where the kernel
// allows (memfd), else an unlinked temporary file.
func newTable() (*os.File, error) {
	if f := memTable(); f != nil {
		return f, nil
	}
	f, err := os.CreateTemp("", "forge-guard-")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	return f, nil
}

// Stop ends process group pgid from within the process that started it
// (forge lease, at CMD's end): SIGTERM, then SIGKILL to what is left after
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
