package forge_test

import (
	"maps"
	"slices"
	"testing"

	"github.com/forgeci/forge"
)

// designVars are the variables DESIGN.md part 4 promises every job, with
// the three the server added (branch, event, build number).
var designVars = []string{"CI", "FORGE_ACTION", "FORGE_OWNER", "FORGE_REPO", "FORGE_SHA", "FORGE_REF",
	"FORGE_PULL_REQUEST", "FORGE_COMMIT_COUNT", "FORGE_BUILD_ID", "FORGE_JOB", "FORGE_STATUS_URL",
	"FORGE_WORKSPACE", "FORGE_BRANCH", "FORGE_EVENT", "FORGE_BUILD_NUMBER"}

func TestRunEnv(t *testing.T) {
	b := &forge.Build{ID: 41, Number: 7, Action: "execute", Hook: forge.Hook{
		Event: "pull_request", Ref: "refs/pull/3/head", Branch: "fix", SHA: "abc", PullRequest: 3, CommitCount: 2}}
	env := forge.RunEnv{Build: b, Repo: &forge.Repo{Owner: "acme", Name: "app"}, BuildID: "41", StatusURL: "https://ci/acme/app/builds/7"}.Vars()
	forge.SetJobVars(env, "test", "/ws", "https://ci/acme/app/builds/7/jobs/9")
	want := map[string]string{
		"CI": "true", "FORGE_ACTION": "execute", "FORGE_OWNER": "acme", "FORGE_REPO": "app", "FORGE_SHA": "abc",
		"FORGE_REF": "refs/pull/3/head", "FORGE_BRANCH": "fix", "FORGE_EVENT": "pull_request", "FORGE_PULL_REQUEST": "3",
		"FORGE_COMMIT_COUNT": "2", "FORGE_BUILD_ID": "41", "FORGE_BUILD_NUMBER": "7", "FORGE_JOB": "test",
		"FORGE_WORKSPACE": "/ws", "FORGE_STATUS_URL": "https://ci/acme/app/builds/7/jobs/9",
	}
	if !maps.Equal(env, want) {
		t.Errorf("got %v\nwant %v", env, want)
	}
	if got, wantKeys := slices.Sorted(maps.Keys(env)), slices.Sorted(slices.Values(designVars)); !slices.Equal(got, wantKeys) {
		t.Errorf("names: got %v, want %v", got, wantKeys)
	}

	// A local run: no pull request, build number or page, yet every name
	// is there, so steps test them the same way everywhere.
	local := forge.RunEnv{Build: &forge.Build{Action: "execute", Hook: forge.Hook{Event: "push", SHA: "abc"}}, BuildID: "local-1"}.Vars()
	forge.SetJobVars(local, "test", "/src", "")
	for _, k := range designVars {
		if _, ok := local[k]; !ok {
			t.Errorf("local run: %s is not set", k)
		}
	}
	for _, k := range []string{"FORGE_PULL_REQUEST", "FORGE_BUILD_NUMBER", "FORGE_STATUS_URL", "FORGE_OWNER"} {
		if local[k] != "" {
			t.Errorf("local run: %s = %q, want empty", k, local[k])
		}
	}
	if empty := (forge.RunEnv{}).Vars(); empty["CI"] != "true" || len(empty) != len(designVars)-2 {
		t.Errorf("a RunEnv without a build: got %v", empty)
	}
}
