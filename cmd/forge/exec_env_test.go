package main

import (
	"encoding/json"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// envSpec prints the variables forge gives a step, one per line.
const envSpec = `execute:
  - env | grep -E '^(CI|FORGE_[A-Z_]+)=' | sort
`

// reForgeVar finds those lines in a job's output, with or without forge
// exec's "[job] " prefix.
var reForgeVar = regexp.MustCompile(`(?m)^(?:\[[^\]]+\] )?((?:CI|FORGE_[A-Z_]+)=.*)$`)

func forgeVars(out string) map[string]string {
	vars := map[string]string{}
	for _, m := range reForgeVar.FindAllStringSubmatch(out, -1) {
		k, v, _ := strings.Cut(m[1], "=")
		vars[k] = v
	}
	return vars
}

// TestJobEnvSameForExecAndServer is issue 8's environment comparison: the
// same commit of the same repository, pushed to its default branch, runs
// under forge server (a signed push webhook) and under forge exec in a
// checkout of it; the steps of both must see the same variables, key by
// key, with the same values but for those that name the run itself.
func TestJobEnvSameForExecAndServer(t *testing.T) {
	repo, sha := e2eRepo(t, envSpec)
	if out, err := exec.Command("git", "-C", repo, "remote", "add", "origin", "https://github.com/Codertocat/Hello-World.git").CombinedOutput(); err != nil {
		t.Fatalf("git remote add: %v\n%s", err, out)
	}

	// forge exec, as a user runs it in the checkout.
	cmd := exec.Command(buildForge(t), "exec")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("forge exec: %v\n%s", err, out)
	}
	local := forgeVars(string(out))

	// forge server, given a push of that commit.
	p := e2eStartServer(t, t.TempDir())
	payload, err := json.Marshal(map[string]any{
		"ref": "refs/heads/master", "before": strings.Repeat("0", 40), "after": sha, "created": true,
		"repository": map[string]any{"id": 1, "name": "Hello-World", "full_name": "Codertocat/Hello-World",
			"owner": map[string]any{"login": "Codertocat"}, "clone_url": repo, "default_branch": "master"},
		"commits":     []map[string]any{{"id": sha, "message": "add the build spec"}},
		"head_commit": map[string]any{"id": sha, "message": "add the build spec"},
		"sender":      map[string]any{"login": "Codertocat"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := e2eDeliver(http.DefaultClient, p.url, "push", "env-1", payload); err != nil || st != http.StatusAccepted {
		t.Fatalf("push delivery: %d %v, want 202", st, err)
	}
	b := e2eWaitBuild(t, p, 1, 60*time.Second, e2eBuildDone)
	if b.Status != forge.StatusSuccess || len(b.Jobs) != 1 {
		t.Fatalf("build = %s %q with %d jobs, want success with one", b.Status, b.Error, len(b.Jobs))
	}
	server := forgeVars(e2eJobLog(t, p, 1, b.Jobs[0]))
	p.stop(t)

	// Every variable of DESIGN.md part 4, and those the server added.
	for _, k := range []string{"CI", "FORGE_ACTION", "FORGE_OWNER", "FORGE_REPO", "FORGE_SHA", "FORGE_REF",
		"FORGE_PULL_REQUEST", "FORGE_COMMIT_COUNT", "FORGE_BUILD_ID", "FORGE_JOB", "FORGE_STATUS_URL",
		"FORGE_WORKSPACE", "FORGE_BRANCH", "FORGE_EVENT", "FORGE_BUILD_NUMBER"} {
		if _, ok := server[k]; !ok {
			t.Errorf("forge server does not set %s", k)
		}
	}
	// What names the run itself differs; forge exec has no build number
	// and no pages.
	perRun := map[string]bool{"FORGE_BUILD_ID": true, "FORGE_BUILD_NUMBER": true, "FORGE_STATUS_URL": true, "FORGE_WORKSPACE": true}
	keys := map[string]bool{}
	for k := range local {
		keys[k] = true
	}
	for k := range server {
		keys[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		lv, lok := local[k]
		sv, sok := server[k]
		switch {
		case !lok:
			t.Errorf("%s: forge server sets it (%q), forge exec does not", k, sv)
		case !sok:
			t.Errorf("%s: forge exec sets it (%q), forge server does not", k, lv)
		case !perRun[k] && lv != sv:
			t.Errorf("%s: forge exec gives %q, forge server %q", k, lv, sv)
		}
	}
	want := map[string]string{"FORGE_SHA": sha, "FORGE_REF": "refs/heads/master", "FORGE_BRANCH": "master", "FORGE_EVENT": "push",
		"FORGE_OWNER": "Codertocat", "FORGE_REPO": "Hello-World", "FORGE_COMMIT_COUNT": "1", "FORGE_PULL_REQUEST": "", "CI": "true",
		"FORGE_BUILD_NUMBER": "", "FORGE_STATUS_URL": ""}
	for k, v := range want {
		if local[k] != v {
			t.Errorf("forge exec: %s = %q, want %q", k, local[k], v)
		}
	}
	if server["FORGE_BUILD_NUMBER"] != "1" || !strings.Contains(server["FORGE_STATUS_URL"], "/builds/1/jobs/") ||
		!strings.HasPrefix(local["FORGE_BUILD_ID"], "local-") || server["FORGE_BUILD_ID"] == "" {
		t.Errorf("per-run values: exec %v, server %v", local, server)
	}
}
