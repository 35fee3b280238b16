package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/backend/swarm"
)

// swarmImage is the busybox test image, built offline (the swarm
// package's tests build the same).
const swarmImage = "forge-swarm-test-busybox:1"

// swarmEnv returns a client of the local engine, which must manage a
// swarm, the static forge binary and a scope for this test: everything of
// the scope is removed (and checked gone) when the test ends. It skips
// without a swarm, and fails then under CI=true.
func swarmEnv(t *testing.T) (*client.Client, string, string) {
	t.Helper()
	skip := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf(format, args...)
		}
		t.Skipf(format, args...)
	}
	cli, err := swarm.NewClient("", "", false)
	if err != nil {
		skip("no Docker client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	info, err := cli.Info(ctx, client.InfoOptions{})
	if err != nil {
		skip("no Docker engine: %v", err)
	}
	if info.Info.Swarm.LocalNodeState != "active" || !info.Info.Swarm.ControlAvailable {
		skip("the Docker engine manages no swarm (docker swarm init makes one)")
	}
	bin := buildForge(t)
	if err := buildBusyboxImage(ctx, cli, swarmImage); err != nil {
		t.Fatal(err)
	}
	scope := fmt.Sprintf("test-cmd-swarm-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)
	t.Cleanup(func() {
		b, err := swarm.New(swarm.Options{Client: cli, Scope: scope, Forgexec: bin})
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := b.Clean(context.Background(), nil); err != nil {
			t.Errorf("cleaning the scope up: %v", err)
		}
		f := client.Filters{}.Add("label", swarm.LabelScope+"="+scope)
		if res, err := cli.ServiceList(context.Background(), client.ServiceListOptions{Filters: f}); err == nil && len(res.Items) > 0 {
			t.Errorf("%d services of the scope left", len(res.Items))
		}
		if res, err := cli.VolumeList(context.Background(), client.VolumeListOptions{Filters: f}); err == nil && len(res.Items) > 0 {
			t.Errorf("%d volumes of the scope left", len(res.Items))
		}
		if data, err := os.ReadFile(bin); err == nil {
			sum := sha256.Sum256(data)
			cli.VolumeRemove(context.Background(), "forge-exec-"+hex.EncodeToString(sum[:])[:16], client.VolumeRemoveOptions{})
		}
	})
	return cli, bin, scope
}

// buildBusyboxImage builds tag FROM scratch with Debian's static busybox
// and its applets, unless the engine has it.
func buildBusyboxImage(ctx context.Context, cli *client.Client, tag string) error {
	if _, err := cli.ImageInspect(ctx, tag); err == nil {
		return nil
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("the test image needs Debian's busybox-static: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, data []byte) {
		h.Size, h.ModTime = int64(len(data)), time.Unix(1, 0)
		tw.WriteHeader(h)
		tw.Write(data)
	}
	add(&tar.Header{Name: "Dockerfile", Mode: 0o644, Typeflag: tar.TypeReg}, []byte("FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\n"))
	add(&tar.Header{Name: "rootfs/", Mode: 0o755, Typeflag: tar.TypeDir}, nil)
	add(&tar.Header{Name: "rootfs/tmp/", Mode: 0o1777, Typeflag: tar.TypeDir}, nil)
	add(&tar.Header{Name: "rootfs/bin/", Mode: 0o755, Typeflag: tar.TypeDir}, nil)
	add(&tar.Header{Name: "rootfs/bin/busybox", Mode: 0o755, Typeflag: tar.TypeReg}, bb)
	for _, a := range []string{"sh", "echo", "cat", "sleep", "nc", "true", "false", "ls", "printf", "seq", "env", "kill",
		"ps", "wc", "yes", "head", "mkdir", "rm", "grep", "sed", "id", "pwd", "hostname", "test", "touch", "find",
		"wget", "date", "cut", "tr"} {
		add(&tar.Header{Name: "rootfs/bin/" + a, Linkname: "busybox", Mode: 0o777, Typeflag: tar.TypeSymlink}, nil)
	}
	tw.Close()
	res, err := cli.ImageBuild(ctx, &buf, client.ImageBuildOptions{Tags: []string{tag}, Remove: true, ForceRemove: true})
	if err != nil {
		return fmt.Errorf("building %s: %w", tag, err)
	}
	out, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if _, err := cli.ImageInspect(ctx, tag); err != nil {
		return fmt.Errorf("building %s: %s", tag, out)
	}
	return nil
}

// e2eCommit commits a file to repo and returns the new HEAD.
func e2eCommit(t *testing.T, repo, name, content string) string {
	t.Helper()
	if err := os.WriteFile(filepath.Join(repo, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"add", name}, {"commit", "-q", "-m", "add " + name}} {
		cmd := exec.Command("git", args...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	out, err := exec.Command("git", "-C", repo, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// swarmServerEnv is the environment of a server on the swarm backend.
func swarmServerEnv(bin, scope string) []string {
	return []string{"FORGE_BACKEND=swarm", "FORGE_DOCKER_SCOPE=" + scope, "FORGE_DOCKER_FORGEXEC=" + bin}
}

// A .forge.yml in the seed's form (image, environment, ports, execute,
// deploy) runs in its image under forge server with backend: swarm: one
// service named and labelled after the pull request, gone at the end.
func TestServerSwarmSeedForm(t *testing.T) {
	cli, bin, scope := swarmEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	spec := "image: " + swarmImage + `
environment:
  APP_ENV: test
ports:
  ` + strconv.Itoa(port) + `: 80
execute:
  - echo "running as $APP_ENV on $FORGE_OWNER/$FORGE_REPO#$FORGE_PULL_REQUEST"
  - cat README.md
  - sleep 2
deploy:
  - echo deploying
`
	repo, _ := e2eRepo(t, spec)
	sha := e2eCommit(t, repo, "README.md", "# the seed's form\n")
	p := e2eStartServer(t, t.TempDir(), swarmServerEnv(bin, scope)...)
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "swarm-seed-1", e2ePrPayload(t, "opened", repo, sha, 5)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	// While the job runs, its service is there, named and labelled after
	// the pull request.
	f := client.Filters{}.Add("label", swarm.LabelScope+"="+scope, swarm.LabelRole+"=job")
	var svc string
	for deadline := time.Now().Add(2 * time.Minute); svc == ""; time.Sleep(50 * time.Millisecond) {
		res, err := cli.ServiceList(context.Background(), client.ServiceListOptions{Filters: f})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range res.Items {
			svc = s.Spec.Name
			l := s.Spec.Labels
			if l[swarm.LabelRepo] != "Codertocat/Hello-World" || l[swarm.LabelPullRequest] != "5" || l[swarm.LabelBuild] != "1" || l[swarm.LabelJob] != "execute" {
				t.Errorf("service labels %v", l)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no job service within 2 minutes\n%s", p.log())
		}
	}
	if !regexp.MustCompile(`^forge-codertocat-hello-world-5-\d{8}-\d{6}-\d{3}$`).MatchString(svc) {
		t.Errorf("service name %q, want forge-codertocat-hello-world-5-{timestamp}", svc)
	}
	b := e2eWaitBuild(t, p, 1, 2*time.Minute, e2eBuildDone)
	if b.Status != forge.StatusSuccess {
		t.Fatalf("build %s %q\n%s", b.Status, b.Error, p.log())
	}
	log := e2eJobLog(t, p, 1, b.Jobs[0])
	for _, want := range []string{"running as test on Codertocat/Hello-World#5", "# the seed's form"} {
		if !strings.Contains(log, want+"\n") {
			t.Errorf("log has no line %q:\n%s", want, log)
		}
	}
	p.stop(t)
}

// TestServerSwarmReattach kills -9 the server while a job runs as a Swarm
// service, restarts it, and checks that the job's whole log arrives
// exactly once and its result is recorded.
func TestServerSwarmReattach(t *testing.T) {
	cli, bin, scope := swarmEnv(t)
	const n = 300
	spec := fmt.Sprintf("image: %s\nexecute:\n  - for i in $(seq 1 %d); do echo \"line $i\"; sleep 0.02; done\n  - echo second step; exit 3\n", swarmImage, n)
	repo, sha := e2eRepo(t, spec)
	data := t.TempDir()
	env := swarmServerEnv(bin, scope)
	p := e2eStartServer(t, data, env...)
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "swarm-reattach-1", e2ePrPayload(t, "opened", repo, sha, 2)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	b := e2eWaitBuild(t, p, 1, 2*time.Minute, func(b *e2eBuildView) bool {
		return len(b.Jobs) == 1 && b.Jobs[0].Status == forge.StatusRunning
	})
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if log := e2eJobLog(t, p, 1, b.Jobs[0]); strings.Contains(log, "line 30\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line 30 within 2 minutes:\n%s", p.log())
		}
	}
	p.kill9(t)
	f := client.Filters{}.Add("label", swarm.LabelScope+"="+scope, swarm.LabelRole+"=job")
	if res, err := cli.ServiceList(context.Background(), client.ServiceListOptions{Filters: f}); err != nil || len(res.Items) != 1 {
		t.Fatalf("after kill -9: %d job services (%v), want the job's service still there", len(res.Items), err)
	}

	p = e2eStartServer(t, data, env...)
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
	if res, err := cli.ServiceList(context.Background(), client.ServiceListOptions{Filters: f}); err != nil || len(res.Items) != 0 {
		t.Errorf("after the reattached job: %d job services left (%v)", len(res.Items), err)
	}
	p.stop(t)
}

func TestSwarmConfigEnv(t *testing.T) {
	env := map[string]string{
		"FORGE_SWARM_SCHEDULE_TIMEOUT": "90s", "FORGE_SWARM_ROUTING_MESH": "true",
		"FORGE_SWARM_NODE_FORGEXEC": "/usr/local/bin/forge", "FORGE_SWARM_SOURCE_ADDR": ":7901",
		"FORGE_SWARM_SOURCE_URL": "https://forge:7901", "FORGE_SWARM_NETWORKS": "forge_jobs, other",
	}
	var s swarmConfig
	if err := s.applyEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	want := swarmConfig{ScheduleTimeout: Duration(90 * time.Second), RoutingMesh: true, NodeForgexec: "/usr/local/bin/forge",
		SourceAddr: ":7901", SourceURL: "https://forge:7901", Networks: []string{"forge_jobs", "other"}}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("swarmConfig = %+v, want %+v", s, want)
	}
	if errs := s.check(); len(errs) > 0 {
		t.Errorf("check: %q", errs)
	}
	for k, v := range map[string]string{"FORGE_SWARM_SCHEDULE_TIMEOUT": "soon", "FORGE_SWARM_KEEP_SUPERSEDED": "maybe"} {
		var s swarmConfig
		if err := s.applyEnv(func(name string) string { return map[string]string{k: v}[name] }); forge.ErrorCode(err) != forge.EINVALID || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%s: err = %v, want EINVALID naming the variable", k, v, err)
		}
	}
	bad := swarmConfig{NodeForgexec: "forge", SourceURL: "http://forge:7901"}
	if errs := strings.Join(bad.check(), "; "); !strings.Contains(errs, "absolute") || !strings.Contains(errs, "https://") || !strings.Contains(errs, "source_addr") {
		t.Errorf("check = %q, want the three problems", errs)
	}
}
