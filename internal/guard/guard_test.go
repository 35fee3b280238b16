package guard

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/forgeci/forge/internal/testwait"
)

// The test binary plays a forge that starts a guarded group when run as
// "owner-main SCRIPT".
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == "owner-main" {
		ownerMain(os.Args[2])
		return
	}
	os.Exit(m.Run())
}

// ownerMain starts script in a process group of its own, has a guard watch
// it with a grace of 200ms, prints the group's id and waits to be killed.
func ownerMain(script string) {
	g := New()
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	if err := g.Watch(cmd.Process.Pid, 200*time.Millisecond); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println(cmd.Process.Pid)
	select {}
}

// startOwner runs ownerMain in a new process and returns it with the id of
// the group it guards.
func startOwner(t *testing.T, script string) (*exec.Cmd, int) {
	t.Helper()
	owner := exec.Command(os.Args[0], "owner-main", script)
	out, err := owner.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { owner.Process.Kill(); owner.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	pgid, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		t.Fatalf("owner said %q: %v", line, err)
	}
	t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) })
	return owner, pgid
}

// waitGoneOrFail waits for group pgid to have no live process.
func waitGoneOrFail(t *testing.T, pgid int, what string) {
	t.Helper()
	if !waitGone(pgid, 20*time.Second) {
		t.Fatalf("%s: process group %d still runs 20s after its owner died", what, pgid)
	}
}

// waitFile waits for the script of a group to create path.
func waitFile(t *testing.T, path string) {
	t.Helper()
	testwait.For(t, "the group's shell to write "+path, func() bool {
		_, err := os.Stat(path)
		return err == nil
	})
}

// TestGroupDiesWithItsOwner kills the owner with SIGKILL: the guard gives
// the group SIGTERM, and SIGKILL after the grace period to what ignores it.
func TestGroupDiesWithItsOwner(t *testing.T) {
	dir := t.TempDir()
	t.Run("SIGTERM", func(t *testing.T) {
		termed := filepath.Join(dir, "termed")
		ready := filepath.Join(dir, "ready-term")
		owner, pgid := startOwner(t, fmt.Sprintf(`trap 'echo > %s; exit 0' TERM; echo > %s; sleep 1000 & wait`, termed, ready))
		if !Alive(pgid) {
			t.Fatal("the group is not running")
		}
		// Killed before its trap is set, the shell would die of SIGTERM
		// without saying so.
		waitFile(t, ready)
		owner.Process.Signal(syscall.SIGKILL)
		waitGoneOrFail(t, pgid, "SIGTERM")
		if _, err := os.Stat(termed); err != nil {
			t.Errorf("the group's shell did not get SIGTERM first: %v", err)
		}
	})
	t.Run("SIGKILL after the grace period", func(t *testing.T) {
		ready := filepath.Join(dir, "ready-ignore")
		owner, pgid := startOwner(t, fmt.Sprintf(`trap '' TERM; echo > %s; sleep 1000 & wait`, ready))
		waitFile(t, ready)
		owner.Process.Signal(syscall.SIGKILL)
		waitGoneOrFail(t, pgid, "SIGKILL")
	})
}

// TestCloseStopsWatchedNotReleased: Close acts as the owner's death for
// the groups still watched, and leaves released ones alone.
func TestCloseStopsWatchedNotReleased(t *testing.T) {
	g := New()
	var groups [2]int
	for i := range groups {
		cmd := exec.Command("sleep", "1000")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go cmd.Wait()
		groups[i] = cmd.Process.Pid
		t.Cleanup(func() { cmd.Process.Kill() })
		if err := g.Watch(cmd.Process.Pid, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	g.Release(groups[1])
	g.Close()
	if !waitGone(groups[0], 10*time.Second) {
		t.Errorf("the watched group still runs after Close")
	}
	if !Alive(groups[1]) {
		t.Errorf("the released group was stopped")
	}
	if err := g.Watch(groups[1], time.Second); err == nil {
		t.Errorf("Watch after Close succeeded")
	}
	g.Close() // idempotent
}

// TestWatchRestartsADeadGuard: when someone kills the guard process, the
// next Watch starts another, which watches every group again.
func TestWatchRestartsADeadGuard(t *testing.T) {
	g := New()
	defer g.Close()
	start := func() int {
		cmd := exec.Command("sleep", "1000")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go cmd.Wait()
		t.Cleanup(func() { cmd.Process.Kill() })
		if err := g.Watch(cmd.Process.Pid, time.Second); err != nil {
			t.Fatal(err)
		}
		return cmd.Process.Pid
	}
	first := start()
	g.mu.Lock()
	dead, exited := g.pid, g.exited
	g.mu.Unlock()
	syscall.Kill(dead, syscall.SIGKILL)
	<-exited
	second := start()
	g.mu.Lock()
	now := g.pid
	g.mu.Unlock()
	if now == dead {
		t.Fatalf("no new guard process")
	}
	g.Close()
	for _, pgid := range []int{first, second} {
		if !waitGone(pgid, 10*time.Second) {
			t.Errorf("group %d still runs: the new guard did not watch it", pgid)
		}
	}
}

// TestAliveIgnoresZombies: a group whose only process exited but was not
// reaped runs nothing, though signals still reach it.
func TestAliveIgnoresZombies(t *testing.T) {
	cmd := exec.Command("true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if syscall.Kill(-cmd.Process.Pid, 0) != nil {
		t.Skip("this kernel does not signal zombies: nothing to check")
	}
	if Alive(cmd.Process.Pid) {
		t.Errorf("Alive = true for a group of one zombie")
	}
}

// TestScriptReadsTheTable: at the end of its stdin, the guard stops the
// groups of the table's rows and skips blank (released) rows.
func TestScriptReadsTheTable(t *testing.T) {
	var pgs []int
	for range 3 {
		cmd := exec.Command("sleep", "1000")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go cmd.Wait()
		defer cmd.Process.Kill()
		pgs = append(pgs, cmd.Process.Pid)
	}
	table, err := os.CreateTemp(t.TempDir(), "table")
	if err != nil {
		t.Fatal(err)
	}
	defer table.Close()
	row := func(s string) string { return s + strings.Repeat(" ", rowSize-1-len(s)) + "\n" }
	fmt.Fprint(table, row(fmt.Sprint(pgs[0], " 100")), row(""), row(fmt.Sprint(pgs[1], " 100")))
	g := exec.Command("/bin/sh", "-c", Script, "forge-guard")
	g.Stdin = strings.NewReader("")
	g.ExtraFiles = []*os.File{table}
	if out, err := g.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("guard: %v %q", err, out)
	}
	for i, pg := range pgs {
		if gone := !Alive(pg); gone != (i < 2) {
			t.Errorf("group %d of 3: gone = %v, want %v", i+1, gone, i < 2)
		}
	}
}
