package trigger_test

import (
	"context"
	"strings"
	"testing"

	"github.com/forgeci/forge"
)

// TestManualResolvesRefs (issue 7.1): a manual build's ref is resolved
// before anything is decided. A pull request's ref and a bare commit id
// may be a fork's code: their builds are not trusted (no secrets); a
// branch or a tag is. A short name is a branch or tag of that exact name,
// never git's guess ("pull/10/head" is not refs/pull/10/head).
func TestManualResolvesRefs(t *testing.T) {
	e := newEnv(t, nil)
	sha := e.up.commit("x", map[string]string{".forge.yml": jobsSpec})
	e.up.git("tag", "v1", sha)
	forked := e.up.commit("from a fork", nil)
	e.up.git("update-ref", "refs/pull/10/head", forked)
	e.up.git("reset", "--quiet", "--hard", sha)
	ctx := context.Background()
	repo := &forge.Repo{Owner: "acme", Name: "app", CloneURL: e.up.dir, DefaultBranch: "master"}
	if err := e.db.UpsertRepo(ctx, repo); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		ref          string
		sha          string
		trusted      bool
		branch, tag  string
		pullRequest  int
		wantRef      string
		code, errMsg string
	}{
		{ref: "master", sha: sha, trusted: true, branch: "master", wantRef: "refs/heads/master"},
		{ref: "refs/heads/master", sha: sha, trusted: true, branch: "master", wantRef: "refs/heads/master"},
		{ref: "v1", sha: sha, trusted: true, tag: "v1", wantRef: "refs/tags/v1"},
		{ref: "refs/tags/v1", sha: sha, trusted: true, tag: "v1", wantRef: "refs/tags/v1"},
		{ref: "refs/pull/10/head", sha: forked, trusted: false, pullRequest: 10, wantRef: "refs/pull/10/head"},
		{ref: forked, sha: forked, trusted: false},
		{ref: sha, sha: sha, trusted: false},
		{ref: "pull/10/head", code: forge.ENOTFOUND, errMsg: `no branch or tag named "pull/10/head" in acme/app`},
		{ref: "refs/remotes/origin/master", code: forge.EINVALID, errMsg: `manual build: "refs/remotes/origin/master" is not a branch, tag or pull request ref`},
		{ref: "refs/pull/x/head", code: forge.EINVALID, errMsg: `manual build: "refs/pull/x/head" is not a pull request ref (refs/pull/N/head or refs/pull/N/merge)`},
		{ref: "a..b", code: forge.EINVALID, errMsg: `manual build: "a..b" is not a valid ref`},
	} {
		b, err := e.proc.Manual(ctx, repo, tt.ref, "")
		if tt.code != "" {
			if forge.ErrorCode(err) != tt.code || forge.ErrorMessage(err) != tt.errMsg {
				t.Errorf("Manual(%q) = %v, want %s %q", tt.ref, err, tt.code, tt.errMsg)
			}
			continue
		}
		if err != nil {
			t.Errorf("Manual(%q): %v", tt.ref, err)
			continue
		}
		h := b.Hook
		if h.SHA != tt.sha || h.Trusted() != tt.trusted || h.Branch != tt.branch || h.Tag != tt.tag || h.PullRequest != tt.pullRequest || h.Ref != tt.wantRef {
			t.Errorf("Manual(%q) hook = %+v (trusted %v); want sha %s, trusted %v, branch %q, tag %q, pull request %d, ref %q",
				tt.ref, h, h.Trusted(), tt.sha[:7], tt.trusted, tt.branch, tt.tag, tt.pullRequest, tt.wantRef)
		}
	}
}

// TestCheckSuiteOfForkBranch (issue 7.1): GitHub sends re-requested check
// suites of a fork's commits under the fork's branch name. A suite's
// commit counts as the repository's only when it is on the repository's
// branch of that name.
func TestCheckSuiteOfForkBranch(t *testing.T) {
	e := newEnv(t, nil)
	base := e.up.commit("base", map[string]string{".forge.yml": "on:\n  push:\n    run: [execute]\nexecute:\n  - echo x\n"})
	e.up.git("checkout", "--quiet", "-b", "changes")
	onBranch := e.up.commit("on the branch", nil)
	tip := e.up.commit("tip", nil)
	e.up.git("checkout", "--quiet", "master")
	// A fork's commit: reachable by id (as GitHub serves it), on no branch.
	e.up.git("checkout", "--quiet", "--detach", base)
	forked := e.up.commit("fork's commit", nil)
	e.up.git("update-ref", "refs/fork/keep", forked)
	e.up.git("checkout", "--quiet", "master")
	suite := func(sha string) []byte {
		return e.payload("check_suite.rerequested.payload.json", func(p map[string]any) {
			cs := obj(p, "check_suite")
			cs["head_sha"], cs["head_branch"], cs["pull_requests"] = sha, "changes", []any{}
			delete(cs, "head_commit")
		})
	}
	for _, tt := range []struct {
		name    string
		sha     string
		trusted bool
	}{
		{"the branch's tip", tip, true},
		{"an earlier commit of the branch", onBranch, true},
		{"a fork's commit under the branch's name", forked, false},
	} {
		got := e.deliver("check_suite", suite(tt.sha))
		bs := e.builds()
		b := bs[len(bs)-1]
		if !strings.HasPrefix(got, "builds created: execute") || b.Hook.SHA != tt.sha {
			t.Fatalf("%s: result %q, last build at %s", tt.name, got, b.Hook.SHA)
		}
		if b.Hook.Trusted() != tt.trusted {
			t.Errorf("%s: build trusted = %v, want %v (hook %+v)", tt.name, b.Hook.Trusted(), tt.trusted, b.Hook)
		}
	}
}

// TestRefusedCloneURL (issue 7.2): a delivery naming a clone URL on
// another host than the configured GitHub never replaces the stored one;
// its build fails with a message that says why, and nothing is fetched.
func TestRefusedCloneURL(t *testing.T) {
	e := newEnv(t, nil)
	sha := e.up.commit("x", map[string]string{".forge.yml": dagSpec})
	if got := e.deliver("push", e.push("master", sha, "first")); got != "builds created: execute #1" {
		t.Fatalf("first push: %q", got)
	}
	evil := e.payload("push.with-new-branch.payload.json", func(p map[string]any) {
		p["ref"], p["after"] = "refs/heads/master", sha
		obj(p, "repository")["clone_url"] = "http://127.0.0.1:1/evil/repo.git"
	})
	got := e.deliver("push", evil)
	want := `builds created: execute #2 (failed: could not fetch the commit: git: clone URL "http://127.0.0.1:1/evil/repo.git" is on host 127.0.0.1:1, not on the configured GitHub (https://github.com)`
	if !strings.HasPrefix(got, want) {
		t.Errorf("result = %q\nwant %q…", got, want)
	}
	repo, err := e.db.RepoByName(context.Background(), "Codertocat", "Hello-World")
	if err != nil || repo.CloneURL != e.up.dir {
		t.Errorf("stored clone URL = %q, %v; want it kept: %q", repo.CloneURL, err, e.up.dir)
	}

	// A repository forge has not seen is recorded without the URL.
	newRepo := e.payload("push.with-new-branch.payload.json", func(p map[string]any) {
		p["ref"], p["after"] = "refs/heads/master", sha
		r := obj(p, "repository")
		r["clone_url"], r["name"], r["full_name"] = "ext::sh -c touch% /tmp/pwned", "other", "Codertocat/other"
	})
	got = e.deliver("push", newRepo)
	if !strings.Contains(got, `uses the git transport "ext", which forge refuses`) {
		t.Errorf("result = %q, want the refusal", got)
	}
	repo, err = e.db.RepoByName(context.Background(), "Codertocat", "other")
	if err != nil || repo.CloneURL != "" {
		t.Errorf("new repository = %+v, %v; want it stored without a clone URL", repo, err)
	}
}
