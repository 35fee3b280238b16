package local

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/testwait"
)

// recorder keeps every event.
type recorder struct {
	mu     sync.Mutex
	events []forge.Event
}

func (r *recorder) Report(e forge.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) texts(s forge.Stream) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		if e.Line != nil && (s == "" || e.Line.Stream == s) {
			out = append(out, e.Line.Text)
		}
	}
	return out
}

func (r *recorder) statuses() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		if e.Type == forge.EventStepFinished {
			out = append(out, string(e.Status))
		}
	}
	return out
}

func job(steps ...string) *forge.Job {
	j := &forge.Job{Name: "test"}
	for i, s := range steps {
		j.Steps = append(j.Steps, forge.Step{Name: "step " + string(rune('a'+i)), Run: s})
	}
	return j
}

// gitRepo makes a repository with one commit holding file.txt.
func gitRepo(t *testing.T) string { return gitRepoB(t) }

// gitRepoB is gitRepo for tests and benchmarks.
func gitRepoB(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "project")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mustGit(t, dir, "init", "-q", "-b", "main")
	if err := os.WriteFile(filepath.Join(dir, "file.txt"), []byte("committed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustGit(t, dir, "add", "file.txt")
	mustGit(t, dir, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "first")
	return dir
}

func mustGit(t testing.TB, dir string, args ...string) string {
	t.Helper()
	out, err := exec.Command("git", append([]string{"-C", dir}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// worktrees lists the worktrees git knows of repo, besides repo itself.
func worktrees(t *testing.T, repo string) []string {
	var out []string
	for _, l := range strings.Split(mustGit(t, repo, "worktree", "list", "--porcelain"), "\n") {
		if p, ok := strings.CutPrefix(l, "worktree "); ok && p != repo {
			out = append(out, p)
		}
	}
	return out
}

func TestRunInCheckout(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "here.txt"), []byte("uncommitted\n"), 0o644)
	rec := &recorder{}
	st, err := New(Options{}).Run(t.Context(), &forge.JobRun{
		Job: job("cat here.txt", "touch made-by-step"), Workspace: forge.Workspace{Dir: dir},
	}, rec)
	if st != forge.StatusSuccess || err != nil {
		t.Fatalf("got %s, %v; want success", st, err)
	}
	if got := rec.texts(""); !slices.Equal(got, []string{"uncommitted"}) {
		t.Errorf("got %q, want the checkout's file", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "made-by-step")); err != nil {
		t.Errorf("the step did not run in the checkout: %v", err)
	}
}

func TestEnvironment(t *testing.T) {
	t.Setenv("FORGE_TEST_HOST_SECRET", "must-not-leak")
	t.Setenv("HOME", "/home/from-host")
	t.Setenv("TERM", "xterm-test")
	dir := t.TempDir()
	rec := &recorder{}
	env := map[string]string{
		"CI": "true", "FORGE_JOB": "test", "FORGE_SHA": "abc123", "FORGE_PULL_REQUEST": "7",
		"FORGE_WORKSPACE": "/wrong", "TERM": "dumb", "APP_ENV": "with spaces and $dollar",
	}
	st, err := New(Options{}).Run(t.Context(), &forge.JobRun{
		Job: job("env"), Env: env, Secrets: map[string]string{"API_TOKEN": "tok-123456"},
		Workspace: forge.Workspace{Dir: dir},
	}, rec)
	if st != forge.StatusSuccess || err != nil {
		t.Fatalf("got %s, %v", st, err)
	}
	got := rec.texts(forge.Stdout)
	want := []string{
		"CI=true", "FORGE_JOB=test", "FORGE_SHA=abc123", "FORGE_PULL_REQUEST=7",
		"FORGE_WORKSPACE=" + dir, "TERM=dumb", "APP_ENV=with spaces and $dollar",
		"HOME=/home/from-host", "PATH=" + os.Getenv("PATH"), "API_TOKEN=***",
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("env lacks %q", w)
		}
	}
	for _, l := range got {
		if strings.Contains(l, "FORGE_TEST_HOST_SECRET") || l == "TERM=xterm-test" {
			t.Errorf("env has %q from forge's own environment", l)
		}
	}
}

func TestShellOption(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	rec := &recorder{}
	st, err := New(Options{Shell: bash}).Run(t.Context(), &forge.JobRun{
		Job: job(`[[ -n "$BASH_VERSION" ]] && echo bash; false; echo "not reached: -e"`), Workspace: forge.Workspace{Dir: t.TempDir()},
	}, rec)
	if st != forge.StatusFailure || err != nil {
		t.Errorf("got %s, %v; want failure (set -e)", st, err)
	}
	if got := rec.texts(""); !slices.Equal(got, []string{"bash"}) {
		t.Errorf("got %q, want the step run by bash -e", got)
	}
}

func TestBadInput(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	notGit := t.TempDir()
	empty := t.TempDir()
	mustGit(t, empty, "init", "-q")
	tests := []struct {
		name string
		run  *forge.JobRun
		msg  string
	}{
		{"no job", &forge.JobRun{Workspace: forge.Workspace{Dir: notGit}}, "no job to run"},
		{"no workspace", &forge.JobRun{Job: job("true")}, "no workspace directory given"},
		{"missing workspace", &forge.JobRun{Job: job("true"), Workspace: forge.Workspace{Dir: notGit + "/nope"}}, "does not exist"},
		{"workspace is a file", &forge.JobRun{Job: job("true"), Workspace: forge.Workspace{Dir: file}}, "is not a directory"},
		{"clean outside git", &forge.JobRun{Job: job("true"), Workspace: forge.Workspace{Dir: notGit, Clean: true}},
			"a clean workspace needs a git repository: " + notGit + " is not one"},
		{"clean without commits", &forge.JobRun{Job: job("true"), Workspace: forge.Workspace{Dir: empty, Clean: true}},
			"has none yet"},
		{"bad env name", &forge.JobRun{Job: job("true"), Env: map[string]string{"A=B": "x"}, Workspace: forge.Workspace{Dir: notGit}},
			"contains '='"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := New(Options{}).Run(t.Context(), tt.run, &recorder{})
			if st != forge.StatusError || err == nil {
				t.Fatalf("got %s, %v; want an error", st, err)
			}
			if forge.ErrorCode(err) != forge.EINVALID || !strings.Contains(forge.ErrorMessage(err), tt.msg) {
				t.Errorf("got %s %q, want invalid containing %q", forge.ErrorCode(err), forge.ErrorMessage(err), tt.msg)
			}
		})
	}
}

func TestCleanWorkspace(t *testing.T) {
	repo := gitRepo(t)
	hookRan := filepath.Join(t.TempDir(), "hook-ran")
	hook := filepath.Join(repo, ".git", "hooks", "post-checkout")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\ntouch "+hookRan+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(repo, "file.txt"), []byte("dirty\n"), 0o644)
	os.WriteFile(filepath.Join(repo, "untracked.txt"), []byte("x\n"), 0o644)
	tmp := t.TempDir()
	rec := &recorder{}
	st, err := New(Options{TempDir: tmp}).Run(t.Context(), &forge.JobRun{
		Job:       job(`cat file.txt; test ! -e untracked.txt; echo "$FORGE_WORKSPACE" | grep -q '^'"$(pwd -P)"'$' && echo ws-ok; basename "$PWD"; mkdir -p ro/sub; chmod 555 ro ro/sub`),
		Workspace: forge.Workspace{Dir: repo, Clean: true},
	}, rec)
	if st != forge.StatusSuccess || err != nil {
		t.Fatalf("got %s, %v; want success (%q)", st, err, rec.texts(""))
	}
	if got := rec.texts(""); len(got) != 3 || got[0] != "committed" || got[1] != "ws-ok" || !strings.HasPrefix(got[2], "forge-project-") {
		t.Errorf("got %q, want HEAD's content, in FORGE_WORKSPACE, named forge-project-*", got)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("temporary directory not removed: %v", left)
	}
	if wts := worktrees(t, repo); len(wts) != 0 {
		t.Errorf("git still knows worktrees %q", wts)
	}
	if _, err := os.Stat(hookRan); err == nil {
		t.Errorf("the checkout's post-checkout hook ran for the clean workspace")
	}
	if b, _ := os.ReadFile(filepath.Join(repo, "file.txt")); string(b) != "dirty\n" {
		t.Errorf("the checkout was changed: %q", b)
	}
}

func TestCleanWorkspaceOfSubdirectory(t *testing.T) {
	repo := gitRepo(t)
	os.MkdirAll(filepath.Join(repo, "svc", "api"), 0o755)
	os.WriteFile(filepath.Join(repo, "svc", "api", "main.txt"), []byte("api\n"), 0o644)
	mustGit(t, repo, "add", ".")
	mustGit(t, repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "api")
	os.MkdirAll(filepath.Join(repo, "untracked-dir"), 0o755)
	tmp := t.TempDir()
	b := New(Options{TempDir: tmp})

	rec := &recorder{}
	st, err := b.Run(t.Context(), &forge.JobRun{Job: job("cat main.txt; test -e ../../file.txt && echo top-ok"),
		Workspace: forge.Workspace{Dir: filepath.Join(repo, "svc", "api"), Clean: true}}, rec)
	if st != forge.StatusSuccess || err != nil {
		t.Fatalf("got %s, %v (%q)", st, err, rec.texts(""))
	}
	if got, want := rec.texts(""), []string{"api", "top-ok"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q: the steps run in the worktree's svc/api", got, want)
	}

	st, err = b.Run(t.Context(), &forge.JobRun{Job: job("true"),
		Workspace: forge.Workspace{Dir: filepath.Join(repo, "untracked-dir"), Clean: true}}, &recorder{})
	if st != forge.StatusError || forge.ErrorCode(err) != forge.EINVALID || !strings.Contains(forge.ErrorMessage(err), "untracked-dir is not in the commit") {
		t.Errorf("untracked directory: got %s, %v; want an error saying it is not in the commit", st, err)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("temporary directories not removed: %v", left)
	}
	if wts := worktrees(t, repo); len(wts) != 0 {
		t.Errorf("git still knows worktrees %q", wts)
	}
}

func TestCleanWorkspaceRemovedAfterFailureAndCancel(t *testing.T) {
	repo := gitRepo(t)
	tmp := t.TempDir()
	b := New(Options{TempDir: tmp, KillGrace: time.Second})
	st, _ := b.Run(t.Context(), &forge.JobRun{Job: job("exit 1"), Workspace: forge.Workspace{Dir: repo, Clean: true}}, &recorder{})
	if st != forge.StatusFailure {
		t.Errorf("got %s, want failure", st)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	st, _ = b.Run(ctx, &forge.JobRun{Job: job("sleep 30"), Workspace: forge.Workspace{Dir: repo, Clean: true}}, &recorder{})
	if st != forge.StatusFailure {
		t.Errorf("got %s, want failure (deadline)", st)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("temporary directories not removed: %v", left)
	}
	if wts := worktrees(t, repo); len(wts) != 0 {
		t.Errorf("git still knows worktrees %q", wts)
	}
}

func TestCleanWorkspaceKeep(t *testing.T) {
	repo := gitRepo(t)
	tmp := t.TempDir()
	rec := &recorder{}
	st, err := New(Options{TempDir: tmp}).Run(t.Context(), &forge.JobRun{
		Job: job("echo made > made.txt", "true"), Workspace: forge.Workspace{Dir: repo, Clean: true, Keep: true},
	}, rec)
	if st != forge.StatusSuccess || err != nil {
		t.Fatalf("got %s, %v", st, err)
	}
	sys := rec.texts(forge.System)
	if len(sys) != 1 {
		t.Fatalf("got system lines %q, want one naming the kept workspace", sys)
	}
	path := strings.TrimSuffix(strings.TrimPrefix(sys[0], "clean workspace "), " (kept after the job)")
	if b, err := os.ReadFile(filepath.Join(path, "made.txt")); err != nil || string(b) != "made\n" {
		t.Errorf("kept workspace %q: made.txt: %q, %v", path, b, err)
	}
	if wts := worktrees(t, repo); len(wts) != 1 {
		t.Errorf("git worktrees: got %q, want the kept one", wts)
	}
	mustGit(t, repo, "worktree", "remove", "--force", path)
}

func TestConcurrentCleanJobs(t *testing.T) {
	repo := gitRepo(t)
	tmp := t.TempDir()
	b := New(Options{TempDir: tmp})
	const n = 6
	var wg sync.WaitGroup
	results := make([]string, n)
	for i := range n {
		wg.Go(func() {
			rec := &recorder{}
			// Each job writes the same file name: they must not see each other's.
			st, err := b.Run(t.Context(), &forge.JobRun{
				Job:       job("test ! -e mine.txt", "echo "+string(rune('a'+i))+" > mine.txt; sleep 0.2; cat mine.txt"),
				Workspace: forge.Workspace{Dir: repo, Clean: true},
			}, rec)
			results[i] = string(st) + " " + strings.Join(rec.texts(""), ",")
			if err != nil {
				results[i] += " " + err.Error()
			}
		})
	}
	wg.Wait()
	for i, got := range results {
		if want := "success " + string(rune('a'+i)); got != want {
			t.Errorf("job %d: got %q, want %q", i, got, want)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("temporary directories not removed: %v", left)
	}
	if wts := worktrees(t, repo); len(wts) != 0 {
		t.Errorf("git still knows worktrees %q", wts)
	}
}

// TestKillsEverythingOnCancel cancels three jobs running at once, one in a
// clean workspace, each with a child that ignores SIGTERM and a background
// child: nothing may be left running, and the clean workspace is removed.
func TestKillsEverythingOnCancel(t *testing.T) {
	m := marker()
	t.Cleanup(func() { killMarked(m) })
	repo := gitRepo(t)
	tmp := t.TempDir()
	b := New(Options{KillGrace: 200 * time.Millisecond, TempDir: tmp})
	ctx, cancel := context.WithCancel(t.Context())
	const jobs = 3
	done := make(chan forge.Status, jobs)
	for i := range jobs {
		ws := forge.Workspace{Dir: t.TempDir()}
		if i == 0 {
			ws = forge.Workspace{Dir: repo, Clean: true}
		}
		go func() {
			st, _ := b.Run(ctx, &forge.JobRun{
				Job:       job("true", "(trap '' TERM; sleep "+m+") & sleep "+m+" & echo up; wait", "echo never"),
				Workspace: ws,
			}, &recorder{})
			done <- st
		}()
	}
	testwait.For(t, fmt.Sprintf("the %d step processes to start", 2*jobs), func() bool { return len(running(m)) >= 2*jobs })
	cancel()
	start := time.Now()
	for range jobs {
		select {
		case st := <-done:
			if st != forge.StatusCanceled {
				t.Errorf("got %s, want canceled", st)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	}
	// KillGrace is 200ms: the TERM-ignoring children are killed after it,
	// not after the default 5s (4s: room for a loaded machine).
	if el := time.Since(start); el > 4*time.Second {
		t.Errorf("cancel took %v, want about the 200ms grace", el)
	}
	if err := testwait.Until(testwait.Scale(10*time.Second), func() bool { return len(running(m)) == 0 }); err != nil {
		t.Errorf("left running after cancel: %q (%v)", running(m), err)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("clean workspace not removed after cancel: %v", left)
	}
}

func TestCancelledBeforeWorkspace(t *testing.T) {
	repo := gitRepo(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	rec := &recorder{}
	st, err := New(Options{TempDir: t.TempDir()}).Run(ctx, &forge.JobRun{Job: job("true", "true"), Workspace: forge.Workspace{Dir: repo, Clean: true}}, rec)
	if st != forge.StatusCanceled || err != nil {
		t.Errorf("got %s, %v; want canceled", st, err)
	}
	if got := rec.statuses(); !slices.Equal(got, []string{"skipped", "skipped"}) {
		t.Errorf("got %q, want both steps skipped", got)
	}
}

// marker returns a sleep duration unique to the test run, to find its
// processes in the process table.
func marker() string {
	return "986." + strconv.FormatUint(uint64(rand.Uint32()), 10)
}

// running lists the live processes whose command line contains m.
func running(m string) []string {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []string
	for _, d := range dirs {
		cmdline, err := os.ReadFile(d + "/cmdline")
		if err != nil || !bytes.Contains(cmdline, []byte(m)) {
			continue
		}
		if stat, err := os.ReadFile(d + "/stat"); err == nil {
			if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
				continue
			}
		}
		out = append(out, d)
	}
	return out
}

func killMarked(m string) {
	for _, d := range running(m) {
		exec.Command("kill", "-9", filepath.Base(d)).Run()
	}
}

// TestRemoveLeftovers: the clean workspace of a dead forge is removed with
// git's record of it; that of a running job (this process's, as for another
// live forge sharing TempDir), a kept one and files that are not forge's
// workspaces are left alone (issue 7, item 7).
func TestRemoveLeftovers(t *testing.T) {
	repo := gitRepo(t)
	tmp := t.TempDir()
	b := New(Options{TempDir: tmp})

	// A kept workspace: the user's now.
	rec := &recorder{}
	if st, err := b.Run(t.Context(), &forge.JobRun{Job: job("true"), Workspace: forge.Workspace{Dir: repo, Clean: true, Keep: true}}, rec); st != forge.StatusSuccess {
		t.Fatalf("kept job: %s, %v", st, err)
	}
	kept := strings.TrimSuffix(strings.TrimPrefix(rec.texts(forge.System)[0], "clean workspace "), " (kept after the job)")
	t.Cleanup(func() { mustGit(t, repo, "worktree", "remove", "--force", kept) })

	// A dead forge's workspace: a worktree whose lock file nobody holds.
	dead := filepath.Join(tmp, "forge-project-dead")
	mustGit(t, repo, "worktree", "add", "--detach", dead, "HEAD")
	os.WriteFile(dead+lockSuffix, []byte(lockMagic+"dir "+dead+"\npid 1\n"), 0o600)
	// Not forge's: no magic in the lock file; no lock file at all.
	other := filepath.Join(tmp, "forge-other-1")
	os.Mkdir(other, 0o755)
	os.WriteFile(other+lockSuffix, []byte("something else\n"), 0o600)
	plain := filepath.Join(tmp, "forge-plain-2")
	os.Mkdir(plain, 0o755)

	// A running job holds its workspace's lock.
	release := filepath.Join(t.TempDir(), "release")
	started := filepath.Join(t.TempDir(), "started")
	done := make(chan forge.Status, 1)
	go func() {
		st, _ := b.Run(t.Context(), &forge.JobRun{Job: job(`touch ` + started + `; while [ ! -e ` + release + ` ]; do sleep 0.01; done`),
			Workspace: forge.Workspace{Dir: repo, Clean: true}}, &recorder{})
		done <- st
	}()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(started); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the running job did not start")
		}
	}

	n, err := New(Options{TempDir: tmp}).RemoveLeftovers(t.Context())
	if n != 1 || err != nil {
		t.Errorf("RemoveLeftovers = %d, %v; want 1 removed", n, err)
	}
	for _, p := range []string{dead, dead + lockSuffix} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s is still there (%v)", p, err)
		}
	}
	for _, p := range []string{kept, other, other + lockSuffix, plain} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed: %v", p, err)
		}
	}
	wts := worktrees(t, repo)
	if slices.Contains(wts, dead) || len(wts) != 2 {
		t.Errorf("git worktrees %q, want the kept and the running one only", wts)
	}

	os.WriteFile(release, nil, 0o644)
	if st := <-done; st != forge.StatusSuccess {
		t.Errorf("the running job: %s, want success: its workspace was removed under it", st)
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "*"+lockSuffix)); len(left) != 1 || left[0] != other+lockSuffix {
		t.Errorf("lock files left: %q, want only the foreign one", left)
	}
}

// The local backend says once per key what it ignores, naming the
// backends that would honour it.
func TestWarnsOnceAboutIgnoredKeys(t *testing.T) {
	var warnings []string
	b := New(Options{Warn: func(msg string) { warnings = append(warnings, msg) }})
	job := &forge.Job{Name: "j", Image: "python:3.12-slim", Ports: []forge.Port{{Published: 8080, Target: 80}},
		Services: []forge.Service{{Name: "db", Image: "postgres"}}, Steps: []forge.Step{{Run: "true"}}}
	for range 3 {
		if st, err := b.Run(t.Context(), &forge.JobRun{Job: job, Workspace: forge.Workspace{Dir: t.TempDir()}}, forge.ReporterFunc(func(forge.Event) {})); st != forge.StatusSuccess {
			t.Fatalf("run: %s, %v", st, err)
		}
	}
	if len(warnings) != 3 {
		t.Fatalf("got %d warnings, want one per key: %q", len(warnings), warnings)
	}
	for i, prefix := range []string{"image: python:3.12-slim is ignored", "services: are not started", "ports: are not published"} {
		if !strings.HasPrefix(warnings[i], prefix) || !strings.Contains(warnings[i], "--backend docker") {
			t.Errorf("warning %d: got %q, want %q... naming the docker backend", i, warnings[i], prefix)
		}
	}
}
