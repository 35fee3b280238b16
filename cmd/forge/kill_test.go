package main

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/testwait"
)

// waitNoProcesses waits until no live process has marker in its command
// line.
func waitNoProcesses(t *testing.T, marker, after string) {
	t.Helper()
	var left []string
	if err := testwait.Until(testwait.Scale(testwait.Patience), func() bool {
		left = processesWith(marker)
		return len(left) == 0
	}); err != nil {
		t.Fatalf("processes still running after %s (%v):\n%s", after, err, strings.Join(left, "\n"))
	}
}

// waitProcesses waits until a live process has marker in its command line.
func waitProcesses(t *testing.T, marker string) {
	t.Helper()
	e2eWaitProcess(t, marker)
}

// TestServerKilledTakesJobProcessesAlong kills forge server with SIGKILL
// while a step runs sleep: the step's shell and sleep die with it, and the
// next start removes the clean workspace it left in data/tmp (issue 7,
// item 7).
func TestServerKilledTakesJobProcessesAlong(t *testing.T) {
	marker := fmt.Sprintf("%d%06d", os.Getpid()%1000, time.Now().UnixNano()/1000%1000000)
	t.Cleanup(func() { killProcessesWith(marker) })
	repo, sha := e2eRepo(t, fmt.Sprintf("execute:\n  - echo started; sleep 3000.%s\n", marker))
	data := t.TempDir()
	p := e2eStartServer(t, data)
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "kill-1", e2ePrPayload(t, "opened", repo, sha, 2)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	e2eWaitBuild(t, p, 1, 30*time.Second, func(b *e2eBuildView) bool { return b.Status == forge.StatusRunning })
	waitProcesses(t, marker)
	workspaces := func() []string {
		m, _ := filepath.Glob(filepath.Join(data, "tmp", "forge-build-*"))
		return m
	}
	if len(workspaces()) == 0 {
		t.Fatalf("no clean workspace in %s/tmp while the step runs", data)
	}

	p.kill9(t)
	waitNoProcesses(t, marker, "forge server was killed")
	if len(workspaces()) == 0 {
		t.Fatalf("the workspace is gone before the restart: the test no longer shows its removal")
	}

	p = e2eStartServer(t, data)
	if left := workspaces(); len(left) != 0 {
		t.Errorf("left in data/tmp after the restart: %q", left)
	}
	e2eWaitBuild(t, p, 1, 30*time.Second, e2eBuildDone)
	p.stop(t)
}

// TestExecKilledTakesStepsAlong kills forge exec --clean with SIGKILL while
// a step runs sleep: the step's processes die with it, and the next forge
// exec removes the worktree it left, with git's record of it (issue 7,
// item 7).
func TestExecKilledTakesStepsAlong(t *testing.T) {
	bin := buildForge(t)
	marker := fmt.Sprintf("%d%06d", os.Getpid()%1000, time.Now().UnixNano()/1000%1000000)
	t.Cleanup(func() { killProcessesWith(marker) })
	repo, _ := e2eRepo(t, fmt.Sprintf("execute:\n  - echo started; sleep 3000.%s\n", marker))
	if err := os.WriteFile(filepath.Join(repo, "quick.yml"), []byte("execute:\n  - echo quick\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	forgeExec := func(args ...string) *exec.Cmd {
		cmd := exec.Command(bin, append([]string{"exec", "--clean"}, args...)...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
		return cmd
	}
	leftovers := func() []string {
		m, _ := filepath.Glob(filepath.Join(tmp, "forge-*"))
		return m
	}

	cmd := forgeExec()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && !strings.HasSuffix(sc.Text(), "] started") {
	}
	waitProcesses(t, marker)
	if len(leftovers()) == 0 {
		t.Fatalf("no clean workspace in %s while the step runs", tmp)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	waitNoProcesses(t, marker, "forge exec was killed")
	if len(leftovers()) == 0 {
		t.Fatalf("the worktree is gone before the next forge exec: the test no longer shows its removal")
	}

	out, err := forgeExec("-f", "quick.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("the next forge exec: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "removed 1 clean workspace(s) a killed forge left") || !strings.Contains(string(out), "quick") {
		t.Errorf("the next forge exec said:\n%s", out)
	}
	if left := leftovers(); len(left) != 0 {
		t.Errorf("left in TMPDIR after the next forge exec: %q", left)
	}
	list, err := exec.Command("git", "-C", repo, "worktree", "list", "--porcelain").Output()
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(list), "worktree "); n != 1 {
		t.Errorf("git still records the killed run's worktree:\n%s", list)
	}
}

// killProcessesWith ends what a failing test left running.
func killProcessesWith(marker string) {
	for _, p := range processesWith(marker) {
		var pid int
		fmt.Sscanf(p, "%d:", &pid)
		if pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
