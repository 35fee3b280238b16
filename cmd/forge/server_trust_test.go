package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// TestServerForkCodeNeverGetsSecrets (issue 7.1) drives the real server:
// a fork's pull request built by webhook, by a manual trigger of its ref
// (POST .../builds {"ref": "refs/pull/10/head"}) and by a restart of that
// build never sees the repository's secret, not even base64-encoded past
// the log's masking; a manual build of the repository's own branch does.
func TestServerForkCodeNeverGetsSecrets(t *testing.T) {
	const secret = "s3cr3t-deploy-key"
	encoded := base64.StdEncoding.EncodeToString([]byte(secret))
	spec := "execute:\n  - echo \"key:$(printf %s \"$DEPLOY_KEY\" | base64)\"\n"
	repo, sha := e2eRepo(t, spec)
	git := func(args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Dir = repo
		cmd.Env = append(cmd.Environ(), "GIT_AUTHOR_NAME=f", "GIT_AUTHOR_EMAIL=f@example.com", "GIT_COMMITTER_NAME=f", "GIT_COMMITTER_EMAIL=f@example.com")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	// The fork's commit, as GitHub serves it: under refs/pull/10/head of
	// the repository, on none of its branches.
	git("checkout", "-q", "--detach")
	git("commit", "-q", "--allow-empty", "-m", "from a fork")
	forked := git("rev-parse", "HEAD")
	git("update-ref", "refs/pull/10/head", forked)
	git("checkout", "-q", "master")

	data := t.TempDir()
	token := e2eAdminToken(t, data)
	// Forks' builds run without waiting for /forge approve: this test is
	// about what the fork's code gets once it runs.
	p := e2eStartServerWith(t, data, "secrets:\n  Codertocat/Hello-World: {DEPLOY_KEY: "+secret+"}\nbuilds:\n  fork_approval: never\n")

	var payload map[string]any
	if err := json.Unmarshal(e2ePrPayload(t, "opened", repo, forked, 10), &payload); err != nil {
		t.Fatal(err)
	}
	head := payload["pull_request"].(map[string]any)["head"].(map[string]any)
	head["repo"].(map[string]any)["id"] = 999999
	head["repo"].(map[string]any)["full_name"] = "mallory/Hello-World"
	body, _ := json.Marshal(payload)
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "fork-1", body); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	e2eWaitBuild(t, p, 1, 30*time.Second, e2eBuildDone)

	trigger := func(ref string) {
		t.Helper()
		req, _ := http.NewRequest("POST", p.url+e2eRepoPath+"/builds", strings.NewReader(`{"ref": "`+ref+`"}`))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 201 {
			t.Fatalf("manual build of %s: %d %s", ref, resp.StatusCode, out)
		}
	}
	trigger("refs/pull/10/head") // build 2
	e2eWaitBuild(t, p, 2, 30*time.Second, e2eBuildDone)
	if st := e2eApiCall(t, "POST", p.url+e2eRepoPath+"/builds/2/restart", token, nil); st != 201 {
		t.Fatalf("restart: %d", st)
	}
	trigger("master") // build 4

	for _, tt := range []struct {
		n       int64
		what    string
		sha     string
		secrets bool
	}{
		{1, "the fork's pull request, by webhook", forked, false},
		{2, "a manual build of refs/pull/10/head", forked, false},
		{3, "the restart of that manual build", forked, false},
		{4, "a manual build of master", sha, true},
	} {
		b := e2eWaitBuild(t, p, tt.n, 30*time.Second, e2eBuildDone)
		if b.Status != forge.StatusSuccess || b.Hook.SHA != tt.sha {
			t.Errorf("build %d (%s) = %s %q at %s, want success at %s", tt.n, tt.what, b.Status, b.Error, b.Hook.SHA, tt.sha)
			continue
		}
		log := e2eJobLog(t, p, tt.n, b.Jobs[0])
		switch got := strings.Contains(log, "key:"+encoded); {
		case got && !tt.secrets:
			t.Errorf("build %d (%s) got the secret: %q", tt.n, tt.what, log)
		case !got && tt.secrets:
			t.Errorf("build %d (%s) lacks the secret: %q", tt.n, tt.what, log)
		case !strings.Contains(log, "key:"):
			t.Errorf("build %d (%s) log = %q", tt.n, tt.what, log)
		}
	}
	p.stop(t)
}

// TestServerTokenStaysWithGitHub (issue 7.2): with FORGE_GITHUB_TOKEN
// set, a signed delivery naming a clone URL on another host makes forge
// send nothing there; the build fails saying why.
func TestServerTokenStaysWithGitHub(t *testing.T) {
	var mu sync.Mutex
	var got []string
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, fmt.Sprintf("%s %s auth=%q", r.Method, r.URL, r.Header.Get("Authorization")))
		mu.Unlock()
		http.Error(w, "nope", http.StatusNotFound)
	}))
	defer evil.Close()
	_, sha := e2eRepo(t, "execute:\n  - true\n")
	p := e2eStartServer(t, t.TempDir(), "FORGE_GITHUB_TOKEN=ghs_e2e_token")
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "evil-1", e2ePrPayload(t, "opened", evil.URL+"/evil/repo.git", sha, 2)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	b := e2eWaitBuild(t, p, 1, 30*time.Second, e2eBuildDone)
	if b.Status != forge.StatusError || !strings.Contains(b.Error, "is on host "+strings.TrimPrefix(evil.URL, "http://")+", not on the configured GitHub (https://github.com)") {
		t.Errorf("build = %s %q, want error naming the refused host", b.Status, b.Error)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 0 {
		t.Errorf("forge sent requests to the payload's host: %q", got)
	}
	p.stop(t)
}
