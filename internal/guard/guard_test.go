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
)

// The test binary plays the guard ("guard-main") and a forge that starts a
// guarded group ("owner-main") when run with those arguments.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "guard-main":
			if err := Main(os.Stdin); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			os.Exit(0)
		case "owner-main":
			ownerMain(os.Args[2], os.Args[3])
			return
		}
	}
	os.Exit(m.Run())
}

// ownerMain starts script in a process group of its own, has a guard watch
// it with a grace of 200ms, prints the group's id and waits to be killed.
func ownerMain(script, marker string) {
	g := New(os.Args[0], "guard-main", marker)
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
	owner := exec.Command(os.Args[0], "owner-main", script, fmt.Sprintf("marker-%d", time.Now().UnixNano()))
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

// TestGroupDiesWithItsOwner kills the owner with SIGKILL: the guard gives
// the group SIGTERM, and SIGKILL after the grace period to what ignores it.
func TestGroupDiesWithItsOwner(t *testing.T) {
	dir := t.TempDir()
	t.Run("SIGTERM", func(t *testing.T) {
		termed := filepath.Join(dir, "termed")
		owner, pgid := startOwner(t, fmt.Sprintf(`trap 'echo > %s; exit 0' TERM; sleep 1000 & wait`, termed))
		if !Alive(pgid) {
			t.Fatal("the group is not running")
		}
		owner.Process.Signal(syscall.SIGKILL)
		waitGoneOrFail(t, pgid, "SIGTERM")
		if _, err := os.Stat(termed); err != nil {
			t.Errorf("the group's shell did not get SIGTERM first: %v", err)
		}
	})
	t.Run("SIGKILL after the grace period", func(t *testing.T) {
		owner, pgid := startOwner(t, `trap '' TERM; sleep 1000 & wait`)
		owner.Process.Signal(syscall.SIGKILL)
		waitGoneOrFail(t, pgid, "SIGKILL")
	})
}

// TestCloseStopsWatchedNotReleased: Close acts as the owner's death for
// the groups still watched, and leaves released ones alone.
func TestCloseStopsWatchedNotReleased(t *testing.T) {
	g := New(os.Args[0], "guard-main", "close-test")
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
	marker := fmt.Sprintf("restart-%d", time.Now().UnixNano())
	g := New(os.Args[0], "guard-main", marker)
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
	guards := processesWith(marker)
	if len(guards) != 1 {
		t.Fatalf("guard processes: %v, want one", guards)
	}
	syscall.Kill(guards[0], syscall.SIGKILL)
	g.mu.Lock()
	exited := g.exited
	g.mu.Unlock()
	<-exited
	second := start()
	if now := processesWith(marker); len(now) != 1 || now[0] == guards[0] {
		t.Fatalf("guard processes after the restart: %v (the dead one was %d)", now, guards[0])
	}
	g.Close()
	for _, pgid := range []int{first, second} {
		if !waitGone(pgid, 10*time.Second) {
			t.Errorf("group %d still runs: the new guard did not watch it", pgid)
		}
	}
}

// processesWith returns the live processes whose command line contains s.
func processesWith(s string) []int {
	var pids []int
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err == nil && strings.Contains(string(b), s) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
			pids = append(pids, pid)
		}
	}
	return pids
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

func TestMainRejectsBadRequestsButKeepsWatching(t *testing.T) {
	cmd := exec.Command("sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	defer cmd.Process.Kill()
	in := fmt.Sprintf("watch %d 100000000\nwatch 1 5\nrelease x\nbogus\n", cmd.Process.Pid)
	err := Main(strings.NewReader(in))
	if err == nil || !strings.Contains(err.Error(), `bad request "watch 1 5"`) || !strings.Contains(err.Error(), `"bogus"`) {
		t.Errorf("Main = %v, want the bad requests named", err)
	}
	if Alive(cmd.Process.Pid) {
		t.Errorf("the watched group runs after Main returned")
	}
}
