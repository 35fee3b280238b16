package main

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/github/githubtest"
	"github.com/forgeci/forge/internal/pgtest"
	"github.com/forgeci/forge/internal/testwait"
)

const e2eSecret = "e2e-webhook-secret"

// e2eServerProc is a forge server started as a process by a test.
type e2eServerProc struct {
	cmd  *exec.Cmd
	url  string
	mu   sync.Mutex
	logs bytes.Buffer
	done chan error
}

// e2eStartServer runs `forge server` on 127.0.0.1:0 with data dir data and
// extra environment, and waits for it to log its address.
func e2eStartServer(t testing.TB, data string, env ...string) *e2eServerProc {
	t.Helper()
	return e2eStart(t, data, "", env...)
}

// e2eStart starts the server with the configuration file config, if any.
func e2eStart(t testing.TB, data, config string, env ...string) *e2eServerProc {
	t.Helper()
	bin := buildForge(t)
	args := []string{"server", "--addr", "127.0.0.1:0", "--data", data, "--grace", "2s"}
	if config != "" {
		args = append(args, "--config", config)
	}
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FORGE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// The tests' repositories are local directories.
	cmd.Env = append(cmd.Env, "FORGE_MIGRATE=auto", "FORGE_GITHUB_WEBHOOK_SECRET="+e2eSecret, "FORGE_GIT_ALLOW_FILE=true")
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &e2eServerProc{cmd: cmd, done: make(chan error, 1)}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.logs.WriteString(line + "\n")
			p.mu.Unlock()
			var rec struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "listening" {
				addr <- rec.Addr
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("server log:\n%s", p.log())
		}
	})
	select {
	case a := <-addr:
		p.url = "http://" + a
	case err := <-p.done:
		t.Fatalf("forge server exited before listening: %v\n%s", err, p.log())
	case <-time.After(30 * time.Second):
		t.Fatalf("forge server did not listen within 30s\n%s", p.log())
	}
	return p
}

func (p *e2eServerProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// stop sends SIGTERM and waits for a clean exit.
func (p *e2eServerProc) stop(t testing.TB) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Errorf("forge server after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("forge server did not stop within 30s of SIGTERM")
	}
}

// kill9 kills the server with SIGKILL and waits for it.
func (p *e2eServerProc) kill9(t testing.TB) {
	t.Helper()
	_ = p.cmd.Process.Kill()
	err := <-p.done
	p.done <- err
}

// e2eRepo makes a git repository with spec as its .forge.yml and returns
// its directory and HEAD commit.
func e2eRepo(t testing.TB, spec string) (dir, sha string) {
	t.Helper()
	dir = t.TempDir()
	run := func(args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	run("init", "-q", "-b", "master")
	if err := os.WriteFile(filepath.Join(dir, ".forge.yml"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	run("add", ".forge.yml")
	run("commit", "-q", "-m", "add the build spec")
	return dir, run("rev-parse", "HEAD")
}

// e2ePrPayload is the pull_request fixture of action with its clone URLs
// pointing at repo, its head at sha and its number set.
func e2ePrPayload(t testing.TB, action, repo, sha string, number int) []byte {
	t.Helper()
	var p map[string]any
	if err := json.Unmarshal(githubtest.Payload(t, "pull_request."+action+".payload.json"), &p); err != nil {
		t.Fatal(err)
	}
	pr := p["pull_request"].(map[string]any)
	p["repository"].(map[string]any)["clone_url"] = repo
	p["number"] = number
	pr["number"] = number
	pr["draft"] = false
	head := pr["head"].(map[string]any)
	head["sha"] = sha
	head["repo"].(map[string]any)["clone_url"] = repo
	pr["base"].(map[string]any)["repo"].(map[string]any)["clone_url"] = repo
	out, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// e2eDeliver posts a signed delivery and returns the HTTP status.
func e2eDeliver(client *http.Client, base, event, id string, payload []byte) (int, error) {
	mac := hmac.New(sha256.New, []byte(e2eSecret))
	mac.Write(payload)
	req, err := http.NewRequest("POST", base+"/hooks/github", bytes.NewReader(payload))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-GitHub-Event", event)
	req.Header.Set("X-GitHub-Delivery", id)
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// e2eApiCall calls the REST API and decodes the JSON answer into v.
func e2eApiCall(t testing.TB, method, u, token string, v any) int {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if v != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(body, v); err != nil {
			if s, ok := v.(*string); ok {
				*s = string(body)
			} else {
				t.Fatalf("%s %s: %v: %s", method, u, err, body)
			}
		}
	}
	return resp.StatusCode
}

const e2eRepoPath = "/api/v1/repos/Codertocat/Hello-World"

type e2eBuildView struct {
	forge.Build
	Jobs []*forge.BuildJob `json:"jobs"`
}

// e2eWaitProcess waits for a process whose command line has marker.
func e2eWaitProcess(t testing.TB, marker string) {
	t.Helper()
	testwait.For(t, "a process running "+marker, func() bool { return len(processesWith(marker)) > 0 })
}

// e2eWaitBuild polls the build with number n until cond holds. within is
// how long that takes at most on a quiet machine; the test fails only
// after testwait.Patience (or within, when longer): a loaded machine
// running the race detector is many times slower.
func e2eWaitBuild(t testing.TB, p *e2eServerProc, n int64, within time.Duration, cond func(*e2eBuildView) bool) *e2eBuildView {
	t.Helper()
	var b e2eBuildView
	st := 0
	err := testwait.Until(testwait.Scale(max(within, testwait.Patience)), func() bool {
		b = e2eBuildView{}
		st = e2eApiCall(t, "GET", fmt.Sprintf("%s%s/builds/%d", p.url, e2eRepoPath, n), "", &b)
		return st == 200 && cond(&b)
	})
	if err != nil {
		t.Fatalf("build %d: status %d, %+v: condition not met: %v", n, st, b.Build, err)
	}
	return &b
}

func e2eBuildDone(b *e2eBuildView) bool { return b.Status.Done() }

// e2eJobLog fetches the raw log of job j of build n.
func e2eJobLog(t testing.TB, p *e2eServerProc, n int64, j *forge.BuildJob) string {
	t.Helper()
	var s string
	if st := e2eApiCall(t, "GET", fmt.Sprintf("%s%s/builds/%d/jobs/%d/log", p.url, e2eRepoPath, n, j.ID), "", &s); st != 200 {
		t.Fatalf("log: status %d", st)
	}
	return s
}

// e2eForgeCmd runs the forge binary with args and returns stdout.
func e2eForgeCmd(t testing.TB, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(buildForge(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("forge %v: %v\n%s", args, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

const e2eE2eSpec = `execute:
  - echo "hello from $FORGE_OWNER/$FORGE_REPO at $FORGE_SHA for pull request $FORGE_PULL_REQUEST"
  - test "$CI" = true
  - if env | grep -q e2e-webhook-secret; then echo "the server's secret reached the job"; exit 1; fi
`

func e2eTestEndToEnd(t *testing.T, env ...string) {
	repo, sha := e2eRepo(t, e2eE2eSpec)
	p := e2eStartServer(t, t.TempDir(), env...)
	st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "e2e-1", e2ePrPayload(t, "opened", repo, sha, 2))
	if err != nil || st != http.StatusAccepted {
		t.Fatalf("delivery: %d %v, want 202", st, err)
	}
	b := e2eWaitBuild(t, p, 1, 30*time.Second, e2eBuildDone)
	if b.Status != forge.StatusSuccess {
		t.Fatalf("build = %s %q, want success", b.Status, b.Error)
	}
	if b.Hook.SHA != sha || b.Hook.PullRequest != 2 || b.DeliveryID != "e2e-1" || b.Action != "execute" {
		t.Errorf("build hook = sha %s pr %d delivery %q action %q", b.Hook.SHA, b.Hook.PullRequest, b.DeliveryID, b.Action)
	}
	if len(b.Jobs) != 1 || b.Jobs[0].Status != forge.StatusSuccess || len(b.Jobs[0].Steps) != 3 {
		t.Fatalf("jobs = %+v, want one successful job with three steps", b.Jobs)
	}
	want := fmt.Sprintf("hello from Codertocat/Hello-World at %s for pull request 2\n", sha)
	if log := e2eJobLog(t, p, 1, b.Jobs[0]); !strings.Contains(log, want) {
		t.Errorf("job log = %q, want it to contain %q", log, want)
	}
	// A redelivery is acknowledged and builds nothing more.
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "e2e-1", e2ePrPayload(t, "opened", repo, sha, 2)); err != nil || st != http.StatusAccepted {
		t.Errorf("redelivery: %d %v, want 202", st, err)
	}
	var list struct{ Builds []forge.Build }
	time.Sleep(300 * time.Millisecond)
	e2eApiCall(t, "GET", p.url+e2eRepoPath+"/builds", "", &list)
	if len(list.Builds) != 1 {
		t.Errorf("%d builds after a redelivery, want 1", len(list.Builds))
	}
	p.stop(t)
}

// TestServerEndToEnd is issue 4's acceptance: a signed pull_request
// delivery to the real forge server (SQLite) runs a build of a local
// repository that passes, seen through the REST API.
func TestServerEndToEnd(t *testing.T) {
	e2eTestEndToEnd(t)
}

// TestServerEndToEndPostgres is the same against PostgreSQL, in a
// database of its own.
func TestServerEndToEndPostgres(t *testing.T) {
	e2eTestEndToEnd(t, "FORGE_DATABASE_URL="+pgtest.Database(t, "forge_e2e"))
}

// e2eAdminToken prepares data's database and returns a new admin token.
func e2eAdminToken(t testing.TB, data string) string {
	t.Helper()
	e2eForgeCmd(t, nil, "migrate", "up", "--data", data)
	return e2eForgeCmd(t, nil, "token", "create", "--admin", "--name", "e2e", "--data", data)
}

// TestServerCancelKillsJobProcesses cancels a running build through the
// API and checks that the job's processes are gone.
func TestServerCancelKillsJobProcesses(t *testing.T) {
	marker := fmt.Sprintf("%d%06d", os.Getpid()%1000, time.Now().UnixNano()/1000%1000000)
	repo, sha := e2eRepo(t, fmt.Sprintf("execute:\n  - echo started; sleep 3000.%s\n", marker))
	data := t.TempDir()
	token := e2eAdminToken(t, data)
	p := e2eStartServer(t, data)
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "cancel-1", e2ePrPayload(t, "opened", repo, sha, 2)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	e2eWaitBuild(t, p, 1, 30*time.Second, func(b *e2eBuildView) bool { return b.Status == forge.StatusRunning })
	e2eWaitProcess(t, "3000."+marker)
	if st := e2eApiCall(t, "POST", fmt.Sprintf("%s%s/builds/1/cancel", p.url, e2eRepoPath), "", nil); st != 401 {
		t.Errorf("cancel without a token: %d, want 401", st)
	}
	if st := e2eApiCall(t, "POST", fmt.Sprintf("%s%s/builds/1/cancel", p.url, e2eRepoPath), token, nil); st != 200 {
		t.Fatalf("cancel: %d, want 200", st)
	}
	b := e2eWaitBuild(t, p, 1, 20*time.Second, e2eBuildDone)
	if b.Status != forge.StatusCanceled {
		t.Errorf("build = %s, want canceled", b.Status)
	}
	testwait.For(t, "the cancelled job's processes to end", func() bool { return len(processesWith("3000."+marker)) == 0 })
	b = e2eWaitBuild(t, p, 1, 5*time.Second, func(b *e2eBuildView) bool { return b.Jobs[0].Status.Done() })
	if b.Jobs[0].Status != forge.StatusCanceled {
		t.Errorf("job = %s, want canceled", b.Jobs[0].Status)
	}
	p.stop(t)
}

// TestServerRestartRecovery kills the server while a build runs and
// another waits, restarts it, and checks that the running one ends as
// error "server restarted" and the queued one runs.
func TestServerRestartRecovery(t *testing.T) {
	marker := fmt.Sprintf("%d%06d", os.Getpid()%1000, time.Now().UnixNano()/1000%1000000)
	spec := fmt.Sprintf("execute:\n  - if [ \"$FORGE_PULL_REQUEST\" = 2 ]; then sleep 3000.%s; fi; echo done $FORGE_PULL_REQUEST\n", marker)
	repo, sha := e2eRepo(t, spec)
	data := t.TempDir()
	p := e2eStartServer(t, data, "FORGE_BUILDS_CONCURRENCY=1")
	for i, n := range []int{2, 3} {
		if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", fmt.Sprint("recover-", i), e2ePrPayload(t, "opened", repo, sha, n)); err != nil || st != 202 {
			t.Fatalf("delivery: %d %v", st, err)
		}
		e2eWaitBuild(t, p, int64(i+1), 30*time.Second, func(*e2eBuildView) bool { return true })
	}
	e2eWaitBuild(t, p, 1, 30*time.Second, func(b *e2eBuildView) bool { return b.Status == forge.StatusRunning })
	e2eWaitProcess(t, "3000."+marker)
	p.kill9(t)
	// The local backend's processes do not outlive a server that is
	// killed -9 on purpose in production only by accident; end them here.
	for _, pr := range processesWith("3000." + marker) {
		var pid int
		fmt.Sscanf(pr, "%d:", &pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}

	p = e2eStartServer(t, data, "FORGE_BUILDS_CONCURRENCY=1")
	// Recovery ends the build, then its jobs.
	b := e2eWaitBuild(t, p, 1, 10*time.Second, func(b *e2eBuildView) bool { return b.Status.Done() && b.Jobs[0].Status.Done() })
	if b.Status != forge.StatusError || b.Error != "server restarted" {
		t.Errorf("build 1 = %s %q, want error: server restarted", b.Status, b.Error)
	}
	if j := b.Jobs[0]; j.Status != forge.StatusError || j.Error != "server restarted" {
		t.Errorf("job of build 1 = %s %q, want error: server restarted", j.Status, j.Error)
	}
	b = e2eWaitBuild(t, p, 2, 30*time.Second, e2eBuildDone)
	if b.Status != forge.StatusSuccess {
		t.Errorf("queued build 2 after the restart = %s %q, want success", b.Status, b.Error)
	}
	if log := e2eJobLog(t, p, 2, b.Jobs[0]); !strings.Contains(log, "done 3") {
		t.Errorf("build 2 log = %q", log)
	}
	p.stop(t)
}

// TestServerCrashDuringDeliveryBurst kills -9 the server in the middle of
// a burst of 500 signed deliveries (some sent twice), restarts it, and
// checks that every delivery answered 2xx produced exactly one build and
// that no delivery produced two.
func TestServerCrashDuringDeliveryBurst(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testCrashDuringBurst(t) })
	t.Run("postgres", func(t *testing.T) {
		testCrashDuringBurst(t, "FORGE_DATABASE_URL="+pgtest.Database(t, "forge_e2e"))
	})
}

func testCrashDuringBurst(t *testing.T, env ...string) {
	repo, sha := e2eRepo(t, "execute:\n  - true\n")
	data := t.TempDir()
	env = append(env, "FORGE_BUILDS_CONCURRENCY=1")
	p := e2eStartServer(t, data, env...)
	payload := e2ePrPayload(t, "opened", repo, sha, 2)
	// Warm the mirror so the burst measures intake, not the first clone.
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "warm", payload); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	e2eWaitBuild(t, p, 1, 30*time.Second, e2eBuildDone)

	const total = 500
	client := &http.Client{Timeout: 10 * time.Second}
	var mu sync.Mutex
	acked := map[string]bool{}
	sent := 0
	ids := make(chan string)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				st, err := e2eDeliver(client, p.url, "pull_request", id, payload)
				if err == nil && st >= 200 && st < 300 {
					mu.Lock()
					acked[id] = true
					mu.Unlock()
				}
			}
		}()
	}
	killed := false
	for i := 0; i < total; i++ {
		id := fmt.Sprintf("burst-%03d", i)
		ids <- id
		if i%50 == 7 {
			ids <- id // GitHub redelivers now and then
		}
		sent++
		if i == total/2 {
			p.kill9(t)
			killed = true
		}
	}
	close(ids)
	wg.Wait()
	if !killed {
		t.Fatal("the server was not killed")
	}
	mu.Lock()
	n := len(acked)
	mu.Unlock()
	if n < 50 || n >= total {
		t.Fatalf("%d of %d deliveries acknowledged: the kill did not land mid-burst", n, total)
	}
	t.Logf("%d of %d deliveries acknowledged before the kill", n, total)

	p = e2eStartServer(t, data, env...)
	restarted := time.Now()
	var missing int
	if err := testwait.Until(testwait.Scale(testwait.Patience), func() bool {
		count := map[string]int{}
		before := ""
		for {
			var page struct {
				Builds     []forge.Build `json:"builds"`
				NextBefore int64         `json:"next_before"`
			}
			if st := e2eApiCall(t, "GET", p.url+e2eRepoPath+"/builds?limit=1000"+before, "", &page); st != 200 {
				t.Fatalf("listing builds: %d", st)
			}
			for _, b := range page.Builds {
				count[b.DeliveryID]++
			}
			if page.NextBefore == 0 {
				break
			}
			before = fmt.Sprintf("&before=%d", page.NextBefore)
		}
		missing = 0
		for id := range acked {
			if count[id] == 0 {
				missing++
			}
		}
		for id, c := range count {
			if c > 1 {
				t.Fatalf("delivery %s produced %d builds", id, c)
			}
		}
		return missing == 0
	}); err != nil {
		t.Fatalf("%d acknowledged deliveries produced no build after the restart: %v", missing, err)
	}
	t.Logf("every acknowledged delivery built %v after the restart", time.Since(restarted).Round(time.Millisecond))
	p.stop(t)
}

// e2eStartServerWith is e2eStartServer with a configuration file.
func e2eStartServerWith(t testing.TB, data, config string, env ...string) *e2eServerProc {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return e2eStart(t, data, path, env...)
}

// TestServerManualRestartLeasesMetrics drives the rest of the API on the
// real server: a manual build of a branch, a restart, a pipeline job that
// leases a resource from the server's own pool, the pool listing and the
// metrics.
func TestServerManualRestartLeasesMetrics(t *testing.T) {
	repo, sha := e2eRepo(t, `jobs:
  test:
    resources:
      - ports
    steps:
      - echo "leased port $FORGE_LEASE_PORTS for $FORGE_EVENT"
`)
	data := t.TempDir()
	token := e2eAdminToken(t, data)
	p := e2eStartServerWith(t, data, "pools:\n  ports:\n    range: 20000-20001\n")
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "m-1", e2ePrPayload(t, "opened", repo, sha, 2)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	b := e2eWaitBuild(t, p, 1, 30*time.Second, e2eBuildDone)
	if b.Status != forge.StatusSuccess {
		t.Fatalf("build 1 = %s %q", b.Status, b.Error)
	}
	if log := e2eJobLog(t, p, 1, b.Jobs[0]); !strings.Contains(log, "leased port 2000") {
		t.Errorf("build 1 log = %q, want a leased port", log)
	}

	// Manual build of the branch.
	req, _ := http.NewRequest("POST", p.url+e2eRepoPath+"/builds", strings.NewReader(`{"ref": "master"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("manual build: %d %s", resp.StatusCode, body)
	}
	b = e2eWaitBuild(t, p, 2, 30*time.Second, e2eBuildDone)
	if b.Status != forge.StatusSuccess || b.Hook.Event != "manual" || b.Hook.SHA != sha {
		t.Errorf("manual build = %s event %q sha %s", b.Status, b.Hook.Event, b.Hook.SHA)
	}
	if log := e2eJobLog(t, p, 2, b.Jobs[0]); !strings.Contains(log, "for manual") {
		t.Errorf("manual build log = %q", log)
	}

	// Restart it: a new build of the same commit and hook.
	if st := e2eApiCall(t, "POST", p.url+e2eRepoPath+"/builds/2/restart", token, nil); st != 201 {
		t.Fatalf("restart: %d", st)
	}
	b = e2eWaitBuild(t, p, 3, 30*time.Second, e2eBuildDone)
	if b.Status != forge.StatusSuccess || b.Hook.Event != "manual" {
		t.Errorf("restarted build = %s %q", b.Status, b.Hook.Event)
	}

	var pools string
	if st := e2eApiCall(t, "GET", p.url+"/api/v1/pools", "", &pools); st != 200 || !strings.Contains(pools, "20001") {
		t.Errorf("pools: %d %s", st, pools)
	}
	var metrics string
	e2eApiCall(t, "GET", p.url+"/metrics", "", &metrics)
	for _, want := range []string{
		`forge_builds_finished_total{result="success"} 3`,
		`forge_webhooks_total{event="pull_request",result="accepted"} 1`,
		`forge_job_duration_seconds_count{result="success"} 3`,
		"forge_builds_queued 0",
		"forge_deliveries_pending 0",
		"forge_deliveries_oldest_pending_seconds 0",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	p.stop(t)
}

// TestServerSIGTERMGrace sends SIGTERM while a build runs a step longer
// than the grace period: the server stops answering, cancels the build as
// "server shutting down" once the grace (2s) is over, leaves no process of
// the job behind and exits 0.
func TestServerSIGTERMGrace(t *testing.T) {
	marker := fmt.Sprintf("%d%06d", os.Getpid()%1000, time.Now().UnixNano()/1000%1000000)
	repo, sha := e2eRepo(t, fmt.Sprintf("execute:\n  - sleep 3000.%s\n", marker))
	data := t.TempDir()
	p := e2eStartServer(t, data)
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "term-1", e2ePrPayload(t, "opened", repo, sha, 2)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	e2eWaitBuild(t, p, 1, 30*time.Second, func(b *e2eBuildView) bool { return b.Status == forge.StatusRunning })
	e2eWaitProcess(t, "3000."+marker)
	began := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	// While the build gets its grace, the server is not ready but still
	// answers.
	for deadline := time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
		if st := e2eApiCall(t, "GET", p.url+"/readyz", "", nil); st == 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz did not answer 503 after SIGTERM")
		}
	}
	var running e2eBuildView
	if st := e2eApiCall(t, "GET", p.url+e2eRepoPath+"/builds/1", "", &running); st != 200 || running.Status != forge.StatusRunning {
		t.Errorf("during the grace period: %d, build %s; want the API up and the build running", st, running.Status)
	}
	p.stop(t)
	if d := time.Since(began); d < 2*time.Second || d > 20*time.Second {
		t.Errorf("shutdown took %v, want the 2s grace and a little more", d)
	}
	if left := processesWith("3000." + marker); len(left) > 0 {
		t.Errorf("processes left after shutdown: %v", left)
	}
	// Read the outcome with the server started again (recovery has
	// nothing left to do: the build ended before the exit).
	p = e2eStartServer(t, data)
	b := e2eWaitBuild(t, p, 1, 5*time.Second, e2eBuildDone)
	if b.Status != forge.StatusCanceled || b.Error != "server shutting down" {
		t.Errorf("build = %s %q, want canceled: server shutting down", b.Status, b.Error)
	}
	if j := b.Jobs[0]; j.Status != forge.StatusCanceled {
		t.Errorf("job = %s %q, want canceled", j.Status, j.Error)
	}
	if strings.Contains(p.log(), "ended builds left running") {
		t.Error("the restart found builds left running: the shutdown did not record the cancel")
	}
	p.stop(t)
}

// TestServerFollowLog follows a running job's log on the real server and
// gets every line once, in order, the response ending with the job.
func TestServerFollowLog(t *testing.T) {
	repo, sha := e2eRepo(t, "execute:\n  - for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done\n")
	p := e2eStartServer(t, t.TempDir())
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "follow-1", e2ePrPayload(t, "opened", repo, sha, 2)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	b := e2eWaitBuild(t, p, 1, 30*time.Second, func(b *e2eBuildView) bool { return b.Jobs[0].Status == forge.StatusRunning })
	resp, err := http.Get(fmt.Sprintf("%s%s/builds/1/jobs/%d/log?follow=true", p.url, e2eRepoPath, b.Jobs[0].ID))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(data), "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n"; got != want {
		t.Errorf("followed log = %q, want %q", got, want)
	}
	if b = e2eWaitBuild(t, p, 1, 5*time.Second, e2eBuildDone); b.Status != forge.StatusSuccess {
		t.Errorf("build = %s", b.Status)
	}
	p.stop(t)
}

// TestServerSIGTERMLetsLeasedJobFinish: a job holding a lease from the
// server's own pool keeps it through the grace period after SIGTERM and
// finishes (the lease connections close after the builds).
func TestServerSIGTERMLetsLeasedJobFinish(t *testing.T) {
	repo, sha := e2eRepo(t, "jobs:\n  test:\n    resources: [ports]\n    steps:\n      - echo started; sleep 1; echo finished with $FORGE_LEASE_PORTS\n")
	data := t.TempDir()
	p := e2eStartServerWith(t, data, "pools:\n  ports:\n    range: 20000-20000\n")
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "term-lease", e2ePrPayload(t, "opened", repo, sha, 2)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	e2eWaitBuild(t, p, 1, 30*time.Second, func(b *e2eBuildView) bool {
		return len(b.Jobs) == 1 && b.Jobs[0].Status == forge.StatusRunning
	})
	p.stop(t)
	p = e2eStartServerWith(t, data, "pools:\n  ports:\n    range: 20000-20000\n")
	b := e2eWaitBuild(t, p, 1, 5*time.Second, e2eBuildDone)
	if b.Status != forge.StatusSuccess {
		t.Fatalf("build = %s %q, want success within the grace period", b.Status, b.Error)
	}
	if log := e2eJobLog(t, p, 1, b.Jobs[0]); !strings.Contains(log, "finished with 20000") {
		t.Errorf("log = %q", log)
	}
	p.stop(t)
}

// TestServerReplicas runs two servers on one PostgreSQL database, each
// with its own data directory, and sends deliveries to both: every
// delivery is processed once and builds once, and every build runs once,
// on one of them.
func TestServerReplicas(t *testing.T) {
	dbURL := "FORGE_DATABASE_URL=" + pgtest.Database(t, "forge_e2e")
	marks := t.TempDir()
	repo, sha := e2eRepo(t, fmt.Sprintf("execute:\n  - echo $FORGE_BUILD_ID >> %s/ran\n  - sleep 0.2\n", marks))
	// Recovery is on and runs every 2s; the second replica starts while
	// the first runs builds, and neither ends the other's. (A window of a
	// few 100ms heartbeats is missed by a loaded machine with the race
	// detector, and the replicas then rightly end each other's builds.)
	config := "builds:\n  concurrency: 2\n  heartbeat: 200ms\n  stale: 2s\n"
	a := e2eStartServerWith(t, t.TempDir(), config, dbURL)
	const n = 40
	for i := 0; i < 4; i++ {
		if st, err := e2eDeliver(http.DefaultClient, a.url, "pull_request", fmt.Sprint("replica-", i), e2ePrPayload(t, "opened", repo, sha, 100+i)); err != nil || st != 202 {
			t.Fatalf("delivery %d: %d %v", i, st, err)
		}
	}
	e2eWaitBuild(t, a, 1, 30*time.Second, func(b *e2eBuildView) bool { return b.Status == forge.StatusRunning || b.Status.Done() })
	b := e2eStartServerWith(t, t.TempDir(), config, dbURL)
	for i := 4; i < n; i++ {
		to := a
		if i%2 == 1 {
			to = b
		}
		if st, err := e2eDeliver(http.DefaultClient, to.url, "pull_request", fmt.Sprint("replica-", i), e2ePrPayload(t, "opened", repo, sha, 100+i)); err != nil || st != 202 {
			t.Fatalf("delivery %d: %d %v", i, st, err)
		}
	}
	for k := int64(1); k <= n; k++ {
		if bd := e2eWaitBuild(t, a, k, 60*time.Second, e2eBuildDone); bd.Status != forge.StatusSuccess {
			t.Errorf("build %d = %s %q", k, bd.Status, bd.Error)
		}
	}
	var list struct{ Builds []forge.Build }
	e2eApiCall(t, "GET", b.url+e2eRepoPath+"/builds?limit=1000", "", &list)
	if len(list.Builds) != n {
		t.Errorf("%d builds for %d deliveries", len(list.Builds), n)
	}
	data, err := os.ReadFile(filepath.Join(marks, "ran"))
	if err != nil {
		t.Fatal(err)
	}
	ran := map[string]int{}
	for _, id := range strings.Fields(string(data)) {
		ran[id]++
	}
	for id, c := range ran {
		if c != 1 {
			t.Errorf("build %s ran %d times", id, c)
		}
	}
	if len(ran) != n {
		t.Errorf("%d builds ran, want %d", len(ran), n)
	}
	// Each delivery was processed (fetched, compiled, logged) by one of
	// them: they claim a repository's deliveries (issue 7.8).
	processed := map[string]int{}
	for _, p := range []*e2eServerProc{a, b} {
		for _, line := range strings.Split(p.log(), "\n") {
			var rec struct{ Msg, Delivery string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "trigger: delivery processed" {
				processed[rec.Delivery]++
			}
		}
	}
	for i := 0; i < n; i++ {
		if id := fmt.Sprint("replica-", i); processed[id] != 1 {
			t.Errorf("delivery %s processed %d times by the two servers, want once", id, processed[id])
		}
	}
	for _, p := range []*e2eServerProc{a, b} {
		if !strings.Contains(p.log(), `"msg":"build started"`) {
			t.Errorf("server %s ran no build: the queue was not shared", p.url)
		}
		p.stop(t)
	}
}

// TestServerPrivateReadsLeasedJob: with private reads, anonymous reads are
// refused, while a pipeline job still leases from the server's own pool
// (the engine's lease client has the server's internal token).
func TestServerPrivateReadsLeasedJob(t *testing.T) {
	repo, sha := e2eRepo(t, "jobs:\n  test:\n    resources: [ports]\n    steps:\n      - echo got $FORGE_LEASE_PORTS\n")
	data := t.TempDir()
	token := e2eAdminToken(t, data)
	p := e2eStartServerWith(t, data, "api:\n  private_reads: true\npools:\n  ports:\n    range: 20000-20000\n")
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "private-1", e2ePrPayload(t, "opened", repo, sha, 2)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	if st := e2eApiCall(t, "GET", p.url+e2eRepoPath, "", nil); st != 401 {
		t.Errorf("anonymous read with private reads: %d, want 401", st)
	}
	var b e2eBuildView
	testwait.For(t, "build 1 to finish", func() bool {
		e2eApiCall(t, "GET", p.url+e2eRepoPath+"/builds/1", token, &b)
		return b.Status.Done()
	})
	if b.Status != forge.StatusSuccess {
		t.Fatalf("build = %s %q, want success", b.Status, b.Error)
	}
	var log string
	if st := e2eApiCall(t, "GET", fmt.Sprintf("%s%s/builds/1/jobs/%d/log", p.url, e2eRepoPath, b.Jobs[0].ID), token, &log); st != 200 || !strings.Contains(log, "got 20000") {
		t.Errorf("log: %d %q", st, log)
	}
	p.stop(t)
}
