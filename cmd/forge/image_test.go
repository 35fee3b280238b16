package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// requireDocker skips the test when no Docker engine answers, and fails it
// then when CI=true.
func requireDocker(t *testing.T) {
	t.Helper()
	if err := exec.Command("docker", "version").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no Docker engine (%v), and CI=true: the image test must run in CI", err)
		}
		t.Skipf("no Docker engine (%v): skipping the image test", err)
	}
}

// dockerCLI runs the docker command and returns its trimmed output.
func dockerCLI(t *testing.T, args ...string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command("docker", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// TestImage builds the container image with `make image` (FROM scratch,
// offline) and runs a build in it: a signed pull_request webhook to the
// server in the container makes it fetch a repository with the image's git
// and run the job's commands with the image's /bin/sh; SIGTERM stops it
// with status 0.
func TestImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a container image")
	}
	requireDocker(t)
	tag := fmt.Sprintf("forge-test-image:%d", os.Getpid())
	version := "image-test"
	dist := t.TempDir()
	mk := exec.Command("make", "-C", "../..", "image", "IMAGE="+tag, "VERSION="+version, "DIST="+dist)
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", tag).Run() })

	out := dockerCLI(t, "run", "--rm", "--network", "none", tag, "version")
	if first, _, _ := strings.Cut(out, "\n"); first != "forge "+version || !strings.Contains(out, "\ncommit: ") {
		t.Fatalf("forge version in the image:\n%s\nwant forge %s and its commit", out, version)
	}

	repo, sha := e2eRepo(t, "execute:\n  - echo \"hello from $FORGE_OWNER/$FORGE_REPO in the image\"\n  - test \"$CI\" = true\n")
	// The server runs as the image's user forge (10001), and git refuses a
	// repository another user owns: give it the repository, or, when this
	// test may not, run the server as this test's user with its data in
	// /tmp (the volume /data belongs to 10001).
	args := []string{"run", "-d", "--name", strings.ReplaceAll(tag, ":", "-"), "-p", "127.0.0.1::8080",
		"-e", "FORGE_GITHUB_WEBHOOK_SECRET=" + e2eSecret, "-v", repo + ":/repo:ro",
		// The test's repository is a local path, which forge clones only when told to.
		"-e", "FORGE_GIT_ALLOW_FILE=true"}
	if os.Geteuid() == 0 {
		if err := filepath.Walk(repo, func(p string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, 10001, 10001)
		}); err != nil {
			t.Fatalf("give the repository to the image's user 10001: %v", err)
		}
	} else {
		args = append(args, "--user", fmt.Sprintf("%d:%d", os.Getuid(), os.Getgid()), "-e", "FORGE_DATA=/tmp/forge-data")
	}
	name := strings.ReplaceAll(tag, ":", "-")
	dockerCLI(t, append(args, tag)...)
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := exec.Command("docker", "logs", name).CombinedOutput()
			t.Logf("server log:\n%s", logs)
		}
		exec.Command("docker", "rm", "-f", name).Run()
	})
	hostPort := dockerCLI(t, "port", name, "8080/tcp")
	hostPort = strings.TrimSpace(strings.Split(hostPort, "\n")[0])
	p := &e2eServerProc{url: "http://" + hostPort}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get(p.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server in the container did not answer /healthz within 60s: %v", err)
		}
	}
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "image-1", e2ePrPayload(t, "opened", "/repo", sha, 3)); err != nil || st != http.StatusAccepted {
		t.Fatalf("delivery: %d %v, want 202", st, err)
	}
	b := e2eWaitBuild(t, p, 1, 120*time.Second, e2eBuildDone)
	if b.Status != forge.StatusSuccess || len(b.Jobs) != 1 {
		t.Fatalf("the build in the image ended %s (%s) with %d jobs, want success", b.Status, b.Error, len(b.Jobs))
	}
	if log := e2eJobLog(t, p, 1, b.Jobs[0]); !strings.Contains(log, "hello from Codertocat/Hello-World in the image") {
		t.Errorf("job log:\n%s", log)
	}
	dockerCLI(t, "stop", "-t", "30", name)
	if code := dockerCLI(t, "inspect", "-f", "{{.State.ExitCode}}", name); code != "0" {
		t.Errorf("the server in the container exited %s after SIGTERM, want 0", code)
	}
}
