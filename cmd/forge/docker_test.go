package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/backend/docker"
	"github.com/forgeci/forge/internal/dockertest"
)

// dockerScope is the forge.scope of what this test process makes on the
// engine; everything of it is removed when a test ends.
func dockerScope(t *testing.T) (*dockertest.Env, string) {
	t.Helper()
	env := dockertest.Setup(t)
	scope := fmt.Sprintf("test-cmd-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)
	t.Cleanup(func() {
		b, err := docker.New(docker.Options{Client: env.Client, Scope: scope, Forgexec: env.Forge})
		if err == nil {
			b.Clean(context.Background(), nil)
		}
		if left := dockertest.Leftovers(t, env.Client, docker.LabelScope+"="+scope); len(left) > 0 {
			t.Errorf("left on the engine: %v", left)
		}
		dockertest.RemoveExecVolumes(env.Client, env.Forge)
	})
	return env, scope
}

// execResult is what a forge exec --json run says of each job: its lines
// in order, and how it ended.
type execResult map[string][]string

func parseExecJSON(t *testing.T, out string) execResult {
	t.Helper()
	res := execResult{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e forge.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("not JSON: %q", sc.Text())
		}
		switch e.Type {
		case forge.EventLine:
			res[e.Job] = append(res[e.Job], string(e.Line.Stream)+" "+e.Line.Text)
		case forge.EventStepFinished:
			res[e.Job] = append(res[e.Job], fmt.Sprintf("step %d %s %d %s", e.Step, e.Status, e.ExitCode, e.Message))
		case forge.EventJobFinished:
			res[e.Job] = append(res[e.Job], fmt.Sprintf("job %s %d attempt %d %s", e.Status, e.ExitCode, e.Attempt, e.Message))
		}
	}
	return res
}

// The examples that need nothing of an image give the same lines and
// results on the docker backend (in the busybox test image) as on the
// local one.
func TestExecDockerMatchesLocal(t *testing.T) {
	env, scope := dockerScope(t)
	t.Setenv("FORGE_DOCKER_FORGEXEC", env.Forge)
	t.Setenv("FORGE_DOCKER_SCOPE", scope)
	reImage := regexp.MustCompile(`(?m)^image: .*$`)
	rePorts := regexp.MustCompile(`(?m)^ports:\n(  .*\n)+`)
	for _, tc := range []struct{ file, action string }{
		{"single-job.yml", "execute"}, {"single-job.yml", "deploy"}, {"dag.yml", "execute"},
		{"dag-failing.yml", "execute"}, {"matrix.yml", "execute"}, {"steps.yml", "execute"}, {"actions.yml", "deploy"},
	} {
		t.Run(tc.file+"/"+tc.action, func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join("..", "..", "examples", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			text := rePorts.ReplaceAllString(string(src), "")
			if reImage.MatchString(text) {
				text = reImage.ReplaceAllString(text, "image: "+dockertest.ImageShell)
			} else {
				text = "image: " + dockertest.ImageShell + "\n" + text
			}
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, ".forge.yml"), []byte(text), 0o644)
			t.Chdir(dir)
			results := map[string]execResult{}
			for _, backend := range []string{"local", "docker"} {
				code, out, errOut := forgeRun(t, "exec", "--json", "--event", "none", "--action", tc.action, "--backend", backend)
				if code > 1 {
					t.Fatalf("%s: exit %d\n%s", backend, code, errOut)
				}
				results[backend] = parseExecJSON(t, out)
			}
			local, dock := results["local"], results["docker"]
			if len(local) == 0 {
				t.Fatal("the local run reported nothing")
			}
			for job, want := range local {
				if got := dock[job]; !slices.Equal(got, want) {
					t.Errorf("job %s:\ndocker %q\n local %q", job, got, want)
				}
			}
			if len(dock) != len(local) {
				t.Errorf("docker ran %d jobs, local %d", len(dock), len(local))
			}
		})
	}
}

// The seed's single-job form runs in its image with its environment and
// its ports published.
func TestExecDockerSeedForm(t *testing.T) {
	env, scope := dockerScope(t)
	t.Setenv("FORGE_DOCKER_FORGEXEC", env.Forge)
	t.Setenv("FORGE_DOCKER_SCOPE", scope)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	spec := fmt.Sprintf(`image: %s
environment:
  APP_ENV: test
  GREETING: hello from ${APP_ENV}
ports:
  %d: 80
execute:
  - echo "$GREETING in $FORGE_WORKSPACE as $FORGE_JOB"
  - test -x /bin/busybox && test ! -e /bin/bash
  - test "$CI" = true
deploy:
  - echo "deploying with APP_ENV=${APP_ENV}"
`, dockertest.ImageShell, port)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".forge.yml"), []byte(spec), 0o644)
	t.Chdir(dir)
	code, out, errOut := forgeRun(t, "exec", "--backend", "docker")
	if code != 0 || !strings.Contains(out, "[execute] hello from test in /workspace as execute") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	if strings.Contains(errOut, "warning") {
		t.Errorf("the docker backend warned: %s", errOut)
	}
	code, out, errOut = forgeRun(t, "exec", "--backend", "docker", "--action", "deploy")
	if code != 0 || !strings.Contains(out, "[deploy] deploying with APP_ENV=test") {
		t.Fatalf("deploy: exit %d\n%s\n%s", code, out, errOut)
	}
	// The local backend says what it ignores (the host has a bash: the
	// second step fails there).
	code, _, errOut = forgeRun(t, "exec", "--backend", "local")
	if code > 1 || !strings.Contains(errOut, "forge: warning: image: "+dockertest.ImageShell+" is ignored") ||
		!strings.Contains(errOut, "forge: warning: ports: are not published") {
		t.Errorf("local: exit %d, stderr %s", code, errOut)
	}
	// A job without an image is refused before anything runs.
	os.WriteFile(filepath.Join(dir, ".forge.yml"), []byte("execute: [true]\n"), 0o644)
	code, _, errOut = forgeRun(t, "exec", "--backend", "docker")
	if code != exitUsage || !strings.Contains(errOut, "has no `image`") {
		t.Errorf("no image: exit %d, stderr %s", code, errOut)
	}
	if code, _, errOut = forgeRun(t, "exec", "--backend", "kubernetes"); code != exitUsage || !strings.Contains(errOut, `unknown backend "kubernetes"`) {
		t.Errorf("unknown backend: exit %d, stderr %s", code, errOut)
	}
}

// TestServerDockerReattach kills -9 the server while a job runs in its
// container, restarts it, and checks that the job's whole log arrives
// exactly once and its result is recorded.
func TestServerDockerReattach(t *testing.T) {
	env, scope := dockerScope(t)
	const n = 300
	spec := fmt.Sprintf("image: %s\nexecute:\n  - for i in $(seq 1 %d); do echo \"line $i\"; sleep 0.02; done\n  - echo second step; exit 3\n", dockertest.ImageShell, n)
	repo, sha := e2eRepo(t, spec)
	data := t.TempDir()
	denv := []string{"FORGE_BACKEND=docker", "FORGE_DOCKER_SCOPE=" + scope, "FORGE_DOCKER_FORGEXEC=" + env.Forge}
	p := e2eStartServer(t, data, denv...)
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "reattach-1", e2ePrPayload(t, "opened", repo, sha, 2)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	// Kill it once some lines are stored, while the job runs.
	b := e2eWaitBuild(t, p, 1, 60*time.Second, func(b *e2eBuildView) bool {
		return len(b.Jobs) == 1 && b.Jobs[0].Status == forge.StatusRunning
	})
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if log := e2eJobLog(t, p, 1, b.Jobs[0]); strings.Contains(log, "line 30\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line 30 within a minute:\n%s", p.log())
		}
	}
	p.kill9(t)
	if left := dockertest.Leftovers(t, env.Client, docker.LabelScope+"="+scope, docker.LabelRole+"=job"); len(left) != 1 {
		t.Fatalf("after kill -9: %v, want the job's container still there", left)
	}

	p = e2eStartServer(t, data, denv...)
	b = e2eWaitBuild(t, p, 1, 2*time.Minute, e2eBuildDone)
	j := b.Jobs[0]
	if b.Status != forge.StatusFailure || j.Status != forge.StatusFailure || j.ExitCode != 3 {
		t.Errorf("build %s %q, job %s %d %q; want failure, exit code 3", b.Status, b.Error, j.Status, j.ExitCode, j.Error)
	}
	log := e2eJobLog(t, p, 1, j)
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(log), "\n") {
		if strings.HasPrefix(l, "line ") || l == "second step" {
			got = append(got, l)
		}
	}
	var want []string
	for i := 1; i <= n; i++ {
		want = append(want, fmt.Sprintf("line %d", i))
	}
	want = append(want, "second step")
	if !slices.Equal(got, want) {
		t.Errorf("log after the restart: %d lines of the job, want %d, each once:\n%s", len(got), len(want), log)
	}
	if !strings.Contains(log, "forge restarted: following this job again") {
		t.Errorf("the log does not say the server restarted:\n%s", log)
	}
	if len(j.Steps) != 2 || j.Steps[0].Status != forge.StatusSuccess || j.Steps[1].ExitCode != 3 {
		t.Errorf("steps: %+v", j.Steps)
	}
	if left := dockertest.Leftovers(t, env.Client, docker.LabelScope+"="+scope); len(left) > 0 {
		t.Errorf("after the reattached job: %v left", left)
	}
	p.stop(t)
}
