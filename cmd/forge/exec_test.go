package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/console"
	"github.com/forgeci/forge/internal/git"
	"github.com/forgeci/forge/internal/testwait"
)

// forgeRun runs forge in-process with args and returns its exit status,
// stdout and stderr.
func forgeRun(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, append([]string{"forge"}, args...), strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// writeSpec writes a spec into a temporary directory and returns its path.
func writeSpec(t testing.TB, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "forge.yml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// summaryRow returns the summary table's row for job, split in columns.
func summaryRow(out, job string) []string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, job+"  ") {
			return regexp.MustCompile(`\s{2,}`).Split(l, 5)
		}
	}
	return nil
}

var ansiCSI = regexp.MustCompile("\x1b\\[")

func TestExecExamples(t *testing.T) {
	tests := []struct {
		file   string
		args   []string
		code   int
		result map[string]string // job → result in the summary
		lines  []string          // lines the output must have
	}{
		{file: "single-job.yml", code: 0, result: map[string]string{"execute": "success"},
			lines: []string{"[execute] hello from test"}},
		{file: "single-job.yml", args: []string{"--action", "deploy"}, code: 0, result: map[string]string{"deploy": "success"},
			lines: []string{"[deploy] deploying with APP_ENV=test"}},
		{file: "dag.yml", code: 0, result: map[string]string{"build": "success", "lint": "success", "test": "success", "package": "success"},
			lines: []string{"[package] packaging dag-out"}},
		{file: "dag-failing.yml", code: 1,
			result: map[string]string{"build": "success", "test": "failure", "lint": "success", "package": "skipped", "publish": "skipped"},
			lines:  []string{"[test] this test fails on purpose", `[package] skipped: needs "test", which failed`}},
		{file: "matrix.yml", code: 0, result: map[string]string{
			"test (word=alpha, size=small)": "success", "test (word=alpha, size=large)": "success",
			"test (word=beta, size=small)": "success", "test (word=beta, size=large)": "success", "report": "success"},
			lines: []string{"[test (word=beta, size=large)] testing beta at large (beta-large)"}},
		{file: "steps.yml", code: 0, result: map[string]string{"steps": "success"},
			lines: []string{"[steps] this step fails, and the job goes on"}},
		{file: "actions.yml", code: 0, result: map[string]string{"check": "success"},
			lines: []string{"[check] checking before a deploy to staging"}},
		{file: "actions.yml", args: []string{"--action", "deploy"}, code: 0, result: map[string]string{"deploy": "success", "smoke": "success"},
			lines: []string{"[deploy] deploying to staging", "[smoke] smoke-testing staging"}},
		{file: "on.yml", args: []string{"--branch", "main"}, code: 0, result: map[string]string{"test": "success", "nightly-only": "skipped"}},
		{file: "on.yml", args: []string{"--event", "manual", "--action", "deploy"}, code: 0, result: map[string]string{"deploy": "success"}},
		{file: "on.yml", args: []string{"--event", "none"}, code: 0, result: map[string]string{"test": "success", "nightly-only": "success"}},
		{file: "on.yml", args: []string{"--event", "tag", "--tag", "v1.2"}, code: 0, result: map[string]string{"release": "success"},
			lines: []string{"[release] releasing refs/"}},
	}
	files, _ := filepath.Glob("../../examples/*.yml")
	covered := map[string]bool{}
	for _, tc := range tests {
		covered[tc.file] = true
		t.Run(tc.file+" "+strings.Join(tc.args, " "), func(t *testing.T) {
			args := append([]string{"exec", "-f", "../../examples/" + tc.file}, tc.args...)
			code, out, errOut := forgeRun(t, args...)
			if code != tc.code {
				t.Fatalf("exit status: got %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out, errOut)
			}
			for job, want := range tc.result {
				row := summaryRow(out, job)
				if len(row) < 2 || row[1] != want {
					t.Errorf("summary of %s: got %q, want %s\n%s", job, row, want, out)
				}
			}
			for _, l := range tc.lines {
				if !strings.Contains(out, "\n"+l) && !strings.HasPrefix(out, l) {
					t.Errorf("output lacks line %q:\n%s", l, out)
				}
			}
			if ansiCSI.MatchString(out) {
				t.Errorf("escape codes in output off a terminal:\n%q", out)
			}
		})
	}
	// Examples added later run too: they must pass, unless their name says
	// they fail on purpose.
	for _, f := range files {
		name := filepath.Base(f)
		if covered[name] {
			continue
		}
		t.Run(name, func(t *testing.T) {
			want := 0
			if strings.Contains(name, "fail") {
				want = exitFailed
			}
			if code, out, errOut := forgeRun(t, "exec", "-f", f); code != want {
				t.Errorf("exit status: got %d, want %d\n%s\n%s", code, want, out, errOut)
			}
		})
	}
}

func TestExecUsageErrors(t *testing.T) {
	bad := writeSpec(t, "jobs:\n  build:\n    stepz:\n      - echo hi\n")
	good := writeSpec(t, "execute:\n  - echo hi\ndeploy:\n  - echo deploying\n")
	tests := []struct {
		name   string
		args   []string
		stderr []string // substrings of stderr
	}{
		{"invalid spec", []string{"-f", bad}, []string{bad + ":3:5: ", "stepz", "nothing was run"}},
		{"missing file", []string{"-f", filepath.Join(t.TempDir(), "nope.yml")}, []string{"nope.yml", "--file"}},
		{"unknown action", []string{"-f", good, "--action", "deplyo"}, []string{`no action "deplyo"`, "execute, deploy"}},
		{"bad parallel", []string{"-f", good, "--parallel", "-1"}, []string{"--parallel"}},
		{"keep without clean", []string{"-f", good, "--keep"}, []string{"--clean"}},
		{"bad event", []string{"-f", good, "--event", "pushh"}, []string{`unknown --event "pushh"`, "pull_request"}},
		{"bad secret", []string{"-f", good, "--secret", "NOVALUE"}, []string{"NAME=VALUE"}},
		{"bad secret name", []string{"-f", good, "--secret", "1X=abc"}, []string{"not a variable name"}},
		{"missing secret file", []string{"-f", good, "--secret-file", "/nonexistent/secrets"}, []string{"--secret-file"}},
		{"unknown flag", []string{"-f", good, "--nope"}, []string{"unknown flag"}},
		{"arguments", []string{"-f", good, "extra"}, []string{"unknown command"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := forgeRun(t, append([]string{"exec"}, tc.args...)...)
			if code != exitUsage {
				t.Errorf("exit status: got %d, want %d\nstderr: %s", code, exitUsage, errOut)
			}
			if out != "" {
				t.Errorf("stdout: got %q, want nothing (nothing runs)", out)
			}
			for _, s := range tc.stderr {
				if !strings.Contains(errOut, s) {
					t.Errorf("stderr lacks %q:\n%s", s, errOut)
				}
			}
		})
	}
}

func TestExecJSON(t *testing.T) {
	code, out, errOut := forgeRun(t, "exec", "--json", "-f", "../../examples/dag-failing.yml")
	if code != exitFailed {
		t.Fatalf("exit status: got %d, want 1\n%s", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	types := map[forge.EventType]int{}
	finished := map[string]forge.Status{}
	for i, l := range lines[:len(lines)-1] {
		var e forge.Event
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("line %d is not a JSON event: %v\n%s", i+1, err, l)
		}
		types[e.Type]++
		if e.Type == forge.EventJobFinished {
			finished[e.Job] = e.Status
		}
		if e.Type == forge.EventLine && (e.Line == nil || e.Job == "" || e.Attempt != 1) {
			t.Errorf("line event without line, job or attempt: %s", l)
		}
	}
	for typ, want := range map[forge.EventType]int{forge.EventJobQueued: 5, forge.EventJobStarted: 3, forge.EventJobFinished: 5, forge.EventPlanFinished: 1} {
		if types[typ] != want {
			t.Errorf("%s events: got %d, want %d", typ, types[typ], want)
		}
	}
	if finished["publish"] != forge.StatusSkipped || finished["test"] != forge.StatusFailure {
		t.Errorf("job results: got %v", finished)
	}
	var sum console.Summary
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil || sum.Type != "summary" {
		t.Fatalf("last line is not the summary (%v): %s", err, lines[len(lines)-1])
	}
	if sum.Status != forge.StatusFailure || len(sum.Jobs) != 5 || sum.Jobs[1].Name != "test" || sum.Jobs[1].ExitCode != 3 {
		t.Errorf("summary: got %+v", sum)
	}
}

func TestExecSecretsMasked(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secrets")
	os.WriteFile(secretFile, []byte("# deploy keys\n\nFILE_SECRET=from-a-file-42\n"), 0o600)
	spec := writeSpec(t, `execute:
  - echo "token is $TOKEN"
  - echo "file secret is $FILE_SECRET"
  - printf '%s' "$TOKEN" | cut -c1-6; printf '%s\n' "$TOKEN" | cut -c7-
`)
	logs := filepath.Join(dir, "logs")
	for _, mode := range []string{"plain", "json"} {
		t.Run(mode, func(t *testing.T) {
			args := []string{"exec", "-f", spec, "--secret", "TOKEN=s3cr3t-value", "--secret-file", secretFile, "--log-dir", logs}
			if mode == "json" {
				args = append(args, "--json")
			}
			code, out, errOut := forgeRun(t, args...)
			if code != 0 {
				t.Fatalf("exit status %d\n%s\n%s", code, out, errOut)
			}
			logText, err := os.ReadFile(filepath.Join(logs, "execute.log"))
			if err != nil {
				t.Fatal(err)
			}
			for _, text := range []string{out, string(logText)} {
				for _, secret := range []string{"s3cr3t-value", "from-a-file-42"} {
					if strings.Contains(text, secret) {
						t.Errorf("secret %q in output:\n%s", secret, text)
					}
				}
				for _, want := range []string{"token is ***", "file secret is ***"} {
					if !strings.Contains(text, want) {
						t.Errorf("output lacks %q:\n%s", want, text)
					}
				}
			}
		})
	}
}

func TestExecLogDir(t *testing.T) {
	dir := t.TempDir()
	code, _, errOut := forgeRun(t, "exec", "-f", "../../examples/matrix.yml", "--log-dir", dir)
	if code != 0 {
		t.Fatalf("exit status %d: %s", code, errOut)
	}
	data, err := os.ReadFile(filepath.Join(dir, "test__word_beta__size_large_.log"))
	if err != nil {
		t.Fatalf("log of a matrix job: %v", err)
	}
	stamp := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (out|err|sys) `)
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	for _, l := range lines {
		if !stamp.MatchString(l) {
			t.Errorf("log line without timestamp and stream: %q", l)
		}
	}
	if !strings.Contains(string(data), " out testing beta at large (beta-large)\n") || !strings.HasSuffix(string(data), "job success\n") &&
		!strings.Contains(lines[len(lines)-1], "sys job success in ") {
		t.Errorf("log content:\n%s", data)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 5 {
		t.Errorf("log files: got %d, want 5 (one per job)", len(entries))
	}
}

func TestExecRetriesAndTimeouts(t *testing.T) {
	dir := t.TempDir()
	spec := writeSpec(t, fmt.Sprintf(`jobs:
  flaky:
    retries: 2
    steps:
      - n=$(cat %[1]s/count 2>/dev/null || echo 0); echo $((n+1)) > %[1]s/count; test $n -ge 1
  slow:
    timeout: 300ms
    steps:
      - sleep 30
  after:
    needs: slow
    steps:
      - echo never
`, dir))
	start := time.Now()
	code, out, _ := forgeRun(t, "exec", "-f", spec)
	if code != exitFailed {
		t.Errorf("exit status: got %d, want 1", code)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("took %s: the timeout did not stop the job", el)
	}
	for job, want := range map[string][]string{
		"flaky": {"flaky", "success", "", "2"},
		"slow":  {"slow", "failure", "", "1", "timed out after 300ms"},
		"after": {"after", "skipped", "-", "0", `needs "slow", which failed`},
	} {
		row := summaryRow(out, job)
		if len(row) != len(want) || row[1] != want[1] || row[3] != want[3] || (len(want) == 5 && row[4] != want[4]) {
			t.Errorf("summary of %s: got %q, want %q\n%s", job, row, want, out)
		}
	}
	if !strings.Contains(out, "[flaky] attempt 2: retry 1 of 2 after failure") {
		t.Errorf("the retry is not shown:\n%s", out)
	}
}

func TestExecFORGEVariables(t *testing.T) {
	spec := writeSpec(t, `jobs:
  vars:
    steps:
      - echo "action=$FORGE_ACTION job=$FORGE_JOB ci=$CI"
      - echo "sha=$FORGE_SHA"
      - echo "ref=$FORGE_REF count=$FORGE_COMMIT_COUNT repo=$FORGE_REPO"
      - echo "ws=$FORGE_WORKSPACE id=$FORGE_BUILD_ID"
`)
	code, out, errOut := forgeRun(t, "exec", "-f", spec)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	cwd, _ := os.Getwd()
	g := git.ReadLocal(context.Background(), cwd, false)
	want := []string{
		"[vars] action=execute job=vars ci=true",
		"[vars] sha=" + g.SHA,
		fmt.Sprintf("[vars] ref=%s count=%d repo=%s", g.Ref, g.CommitCount, g.Repo),
		"[vars] ws=" + g.Top + " id=local-",
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	if g.SHA == "" || g.CommitCount == 0 {
		t.Errorf("the test runs in forge's own checkout, yet git gave sha %q count %d (%v)", g.SHA, g.CommitCount, g.Problem())
	}
}

// forgeBinary builds forge once for the tests and benchmarks that run it
// as a process, as `make build` does: static, without cgo (a dynamically
// linked forge starts about 0.8 ms later, in the dynamic loader).
var forgeBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "forge-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "forge")
	// Static, as make build makes it: the docker backend runs this binary
	// as forgexec in images without a C library.
	// Its version names this test process: the forgexec volume of its
	// digest is then this process's own (see dockertest.BuildForge).
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", fmt.Sprintf("-X main.version=dev-test-%d", os.Getpid()), "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func buildForge(t testing.TB) string {
	t.Helper()
	bin, err := forgeBinary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// processesWith returns the command lines of live processes containing s.
func processesWith(s string) []string {
	var found []string
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil || len(b) == 0 {
			continue
		}
		if cmd := strings.ReplaceAll(string(b), "\x00", " "); strings.Contains(cmd, s) {
			found = append(found, filepath.Base(filepath.Dir(d))+": "+cmd)
		}
	}
	return found
}

// TestExecInterrupt starts the forge binary on a parallel run whose steps
// start background children and ignore SIGTERM, interrupts it once, and
// checks that it exits 130 and that no process of the run is left.
func TestExecInterrupt(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("scans /proc")
	}
	bin := buildForge(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			// Sleep durations carry the marker, so the sleeps themselves
			// (not only their shells) can be found in /proc.
			marker := fmt.Sprintf("%d%06d", os.Getpid()%1000, time.Now().UnixNano()/1000%1000000)
			spec := writeSpec(t, fmt.Sprintf(`jobs:
  a:
    steps:
      - sleep 3000.%[1]s
  b:
    steps:
      - sh -c 'sleep 3001.%[1]s' & sleep 3002.%[1]s
  c:
    steps:
      - trap '' TERM; echo started; sleep 3003.%[1]s
  d:
    needs: a
    steps:
      - echo never
`, marker))
			cmd := exec.Command(bin, "exec", "-f", spec, "--parallel", "3")
			stdout, _ := cmd.StdoutPipe()
			var errb bytes.Buffer
			cmd.Stderr = &errb
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			sc := bufio.NewScanner(stdout)
			var out strings.Builder
			started := false
			for sc.Scan() {
				out.WriteString(sc.Text() + "\n")
				if strings.HasPrefix(sc.Text(), "[c] started") {
					started = true
					break
				}
			}
			if !started {
				t.Fatalf("the run did not start:\n%s\n%s", out.String(), errb.String())
			}
			// every step is running once its processes are visible
			testwait.For(t, "4 step processes", func() bool { return len(processesWith(marker)) >= 4 })
			start := time.Now()
			cmd.Process.Signal(sig)
			for sc.Scan() {
				out.WriteString(sc.Text() + "\n")
			}
			err := cmd.Wait()
			code := cmd.ProcessState.ExitCode()
			if code != exitCanceled {
				t.Errorf("exit status: got %d (%v), want 130\n%s\n%s", code, err, out.String(), errb.String())
			}
			if el := time.Since(start); el > 15*time.Second {
				t.Errorf("forge took %s to stop", el)
			}
			if left := processesWith(marker); len(left) > 0 {
				t.Errorf("processes left after forge exited:\n%s", strings.Join(left, "\n"))
			}
			if !strings.Contains(out.String(), "forge: interrupted: stopping every job") {
				t.Errorf("no word that the run is being stopped:\n%s", out.String())
			}
			for _, job := range []string{"a", "b", "c", "d"} {
				if row := summaryRow(out.String(), job); len(row) < 2 || row[1] != "canceled" {
					t.Errorf("summary of %s: got %q, want canceled\n%s", job, row, out.String())
				}
			}
		})
	}
}

func TestExecCompletionAndHelp(t *testing.T) {
	code, out, _ := forgeRun(t, "completion", "bash")
	if code != 0 || !strings.Contains(out, "__start_forge") {
		t.Errorf("forge completion bash: exit %d, output starts %q", code, out[:min(len(out), 80)])
	}
	code, out, _ = forgeRun(t, "__complete", "exec", "--event", "")
	if code != 0 || !strings.Contains(out, "pull_request") {
		t.Errorf("completing --event: exit %d, got %q", code, out)
	}
	code, out, _ = forgeRun(t, "__complete", "exec", "-f", "../../examples/actions.yml", "--action", "")
	if code != 0 || !strings.Contains(out, "deploy") || !strings.Contains(out, "execute") {
		t.Errorf("completing --action: exit %d, got %q", code, out)
	}
	code, out, _ = forgeRun(t, "exec", "--help")
	if code != 0 || !strings.Contains(out, "--parallel") || !strings.Contains(out, "Exit status") {
		t.Errorf("forge exec --help: exit %d\n%s", code, out)
	}
	code, out, _ = forgeRun(t, "version")
	if code != 0 || !strings.HasPrefix(out, "forge ") {
		t.Errorf("forge version: exit %d, %q", code, out)
	}
}

// gitRepo makes a repository with one commit of files, plus an uncommitted
// file "dirty", and returns its directory.
func gitRepo(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{
		{"init", "-q", "-b", "feature/x"},
		{"add", "."},
		{"-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "one"},
		{"remote", "add", "origin", "git@github.com:acme/widgets.git"},
	} {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	os.WriteFile(filepath.Join(dir, "dirty"), []byte("not committed"), 0o644)
	return dir
}

func TestExecCleanWorkspace(t *testing.T) {
	bin := buildForge(t)
	repo := gitRepo(t, map[string]string{".forge.yml": `jobs:
  where:
    steps:
      - echo "dir=$(pwd)"
      - echo "ws=$FORGE_WORKSPACE owner=$FORGE_OWNER repo=$FORGE_REPO ref=$FORGE_REF count=$FORGE_COMMIT_COUNT"
      - if [ -e dirty ]; then echo "has dirty"; else echo "no dirty"; fi
      - test -f .forge.yml
`})
	realRepo, _ := filepath.EvalSymlinks(repo)
	tests := []struct {
		args      []string
		inRepo    bool
		dirty     string
		keepAfter bool
	}{
		{nil, true, "has dirty", false},
		{[]string{"--clean"}, false, "no dirty", false},
		{[]string{"--clean", "--keep"}, false, "no dirty", true},
	}
	for _, tc := range tests {
		t.Run(strings.Join(append([]string{"exec"}, tc.args...), " "), func(t *testing.T) {
			cmd := exec.Command(bin, append([]string{"exec"}, tc.args...)...)
			cmd.Dir = repo
			outb, err := cmd.CombinedOutput()
			out := string(outb)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			m := regexp.MustCompile(`\[where\] dir=(.*)`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no dir line:\n%s", out)
			}
			dir, _ := filepath.EvalSymlinks(m[1])
			if (dir == realRepo) != tc.inRepo {
				t.Errorf("ran in %s; in the checkout %s: %v, want %v", m[1], repo, dir == realRepo, tc.inRepo)
			}
			if !strings.Contains(out, "[where] ws="+m[1]+" owner=acme repo=widgets ref=refs/heads/feature/x count=1") {
				t.Errorf("FORGE_* variables wrong:\n%s", out)
			}
			if !strings.Contains(out, "[where] "+tc.dirty) {
				t.Errorf("want %q:\n%s", tc.dirty, out)
			}
			if !tc.inRepo {
				_, err := os.Stat(m[1])
				if exists := err == nil; exists != tc.keepAfter {
					t.Errorf("workspace %s exists after the run: %v, want %v", m[1], exists, tc.keepAfter)
				}
				if tc.keepAfter {
					rm := exec.Command("git", "worktree", "remove", "--force", m[1])
					rm.Dir = repo
					rm.Run()
				}
			}
		})
	}
}

// TestExecStdoutClosed: `forge exec | head` stops the run cleanly when head
// exits, instead of dying of SIGPIPE and leaving the steps running.
func TestExecStdoutClosed(t *testing.T) {
	bin := buildForge(t)
	marker := fmt.Sprintf("%d%06d", os.Getpid()%1000, time.Now().UnixNano()/1000%1000000)
	spec := writeSpec(t, fmt.Sprintf(`jobs:
  spam:
    steps:
      - while :; do echo spam; sleep 0.01; done & sleep 3004.%[1]s
`, marker))
	cmd := exec.Command(bin, "exec", "-f", spec)
	stdout, _ := cmd.StdoutPipe()
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stdout)
	for n := 0; n < 3 && sc.Scan(); n++ {
	}
	stdout.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("forge went on after its stdout was closed")
	}
	if code := cmd.ProcessState.ExitCode(); code != exitFailed || !strings.Contains(errb.String(), "broken pipe") {
		t.Errorf("exit status %d, stderr %q; want 1 and a word about the closed output", code, errb.String())
	}
	if left := processesWith(marker); len(left) > 0 {
		t.Errorf("processes left:\n%s", strings.Join(left, "\n"))
	}
}
