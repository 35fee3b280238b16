package github_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/github"
	"github.com/forgeci/forge/internal/github/githubtest"
)

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	return githubtest.Payload(t, name)
}

// edit decodes a fixture, lets change modify it, and encodes it again.
func edit(t testing.TB, name string, change func(p map[string]any)) []byte {
	t.Helper()
	var p map[string]any
	if err := json.Unmarshal(fixture(t, name), &p); err != nil {
		t.Fatal(err)
	}
	change(p)
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func obj(p map[string]any, path ...string) map[string]any {
	for _, k := range path {
		p = p[k].(map[string]any)
	}
	return p
}

var helloWorld = forge.Repo{
	Owner:         "Codertocat",
	Name:          "Hello-World",
	CloneURL:      "https://github.com/Codertocat/Hello-World.git",
	DefaultBranch: "master",
}

const (
	headSHA  = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
	baseSHA  = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"
	mergeSHA = "c4295bd74fb0f4fda03689c3df3f2803b658fd85"
)

func prHook(action string) *forge.Hook {
	return &forge.Hook{
		Event: "pull_request", Action: action, Repo: helloWorld,
		Ref: "refs/pull/2/head", Branch: "changes", Target: "master", SHA: headSHA, Base: baseSHA,
		PullRequest: 2, Author: "Codertocat", Sender: "Codertocat", CommitCount: 1,
		Installation: 1, Association: "OWNER",
	}
}

// TestParseFixtures runs every payload of the shared fixtures through the
// parser; a fixture without a row here fails the test.
func TestParseFixtures(t *testing.T) {
	syncHook := prHook("synchronize")
	syncHook.Before = baseSHA
	tests := map[string]struct {
		hook    *forge.Hook
		ignored string
	}{
		"check_suite.rerequested.payload.json": {hook: &forge.Hook{
			Event: "pull_request", Action: "rerequested", Repo: helloWorld,
			Ref: "refs/pull/2/head", Branch: "changes", Target: "master", SHA: headSHA, Base: baseSHA, PullRequest: 2,
			Message: "Update README.md", Author: "Codertocat", Sender: "octocoders-linter[bot]", Installation: 957387,
		}},
		"create.payload.json":                   {ignored: "tag simple-tag created: built from the push event GitHub sends with it"},
		"delete.payload.json":                   {ignored: "tag simple-tag deleted"},
		"installation.created.payload.json":     {ignored: "installation 957387 created for Codertocat/Hello-World: recorded"},
		"issue_comment.created.payload.json":    {ignored: "comment is not a /retest command"},
		"ping.payload.json":                     {ignored: "ping"},
		"pull_request.closed.payload.json":      {ignored: "pull request #2 closed without merging"},
		"pull_request.labeled.payload.json":     {ignored: `pull_request action "labeled" is not built`},
		"pull_request.opened.payload.json":      {hook: prHook("opened")},
		"pull_request.reopened.payload.json":    {hook: prHook("reopened")},
		"pull_request.synchronize.payload.json": {hook: syncHook},
		"push.payload.json":                     {ignored: "refs/tags/simple-tag deleted"},
		"push.with-new-branch.payload.json": {hook: &forge.Hook{
			Event: "push", Repo: helloWorld, Ref: "refs/heads/master", Branch: "master", Target: "master",
			SHA: "6113728f27ae82c7b1a177c8d03f9e96e0adf246", Message: "Initial commit", Author: "Codertocat",
			Sender: "Codertocat", CommitCount: 1, Paths: []string{"README.md"}, Installation: 1,
		}},
	}
	for _, name := range githubtest.Names() {
		t.Run(name, func(t *testing.T) {
			want, ok := tests[name]
			if !ok {
				t.Fatalf("fixture %s has no expected hook in this test", name)
			}
			hook, ignored, err := github.ParseHook(githubtest.Event(name), fixture(t, name))
			if err != nil {
				t.Fatalf("ParseHook: %v", err)
			}
			if ignored != want.ignored {
				t.Errorf("ignored = %q, want %q", ignored, want.ignored)
			}
			if !reflect.DeepEqual(hook, want.hook) {
				t.Errorf("hook:\ngot  %s\nwant %s", js(hook), js(want.hook))
			}
		})
	}
}

func js(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestParseVariants(t *testing.T) {
	merged := prHook("closed")
	merged.Merged, merged.SHA, merged.Ref, merged.Before = true, mergeSHA, "refs/heads/master", baseSHA
	fork := prHook("opened")
	fork.Fork = true
	draft := prHook("ready_for_review")
	draft.Draft = true
	tests := []struct {
		name, event string
		payload     []byte
		want        *forge.Hook
		ignored     string
	}{
		{"merged pull request builds the merge commit", "pull_request", edit(t, "pull_request.closed.payload.json", func(p map[string]any) {
			obj(p, "pull_request")["merged"] = true
		}), merged, ""},
		{"fork by head repository", "pull_request", edit(t, "pull_request.opened.payload.json", func(p map[string]any) {
			r := obj(p, "pull_request", "head", "repo")
			r["id"], r["full_name"] = 99.0, "someone/Hello-World"
		}), fork, ""},
		{"deleted fork counts as a fork", "pull_request", edit(t, "pull_request.opened.payload.json", func(p map[string]any) {
			obj(p, "pull_request", "head")["repo"] = nil
		}), fork, ""},
		{"draft", "pull_request", edit(t, "pull_request.opened.payload.json", func(p map[string]any) {
			p["action"] = "ready_for_review"
			obj(p, "pull_request")["draft"] = true
		}), draft, ""},
		{"branch push with base_ref", "push", edit(t, "push.with-new-branch.payload.json", func(p map[string]any) {
			p["ref"] = "refs/tags/v1.0"
			p["base_ref"] = "refs/heads/master"
		}), &forge.Hook{
			Event: "tag", Repo: helloWorld, Ref: "refs/tags/v1.0", Branch: "master", Tag: "v1.0",
			SHA: "6113728f27ae82c7b1a177c8d03f9e96e0adf246", Message: "Initial commit", Author: "Codertocat",
			Sender: "Codertocat", CommitCount: 1, Paths: []string{"README.md"}, Installation: 1,
		}, ""},
		{"push paths from every commit, sorted, once", "push", edit(t, "push.with-new-branch.payload.json", func(p map[string]any) {
			c := p["commits"].([]any)
			second := map[string]any{"id": "x", "message": "more", "added": []any{"a/b.go"}, "removed": []any{"README.md"}, "modified": []any{"z"}}
			p["commits"] = append(c, second)
			p["before"] = baseSHA
		}), &forge.Hook{
			Event: "push", Repo: helloWorld, Ref: "refs/heads/master", Branch: "master", Target: "master",
			SHA: "6113728f27ae82c7b1a177c8d03f9e96e0adf246", Before: baseSHA, Message: "Initial commit", Author: "Codertocat",
			Sender: "Codertocat", CommitCount: 2, Paths: []string{"README.md", "a/b.go", "z"}, Installation: 1,
		}, ""},
		{"push to a note ref", "push", edit(t, "push.with-new-branch.payload.json", func(p map[string]any) {
			p["ref"] = "refs/notes/commits"
		}), nil, "push to refs/notes/commits, which is neither a branch nor a tag"},
		{"retest by a collaborator", "issue_comment", edit(t, "issue_comment.created.payload.json", func(p map[string]any) {
			obj(p, "issue")["pull_request"] = map[string]any{"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1"}
			obj(p, "comment")["body"] = "flaky network\n/retest please"
		}), &forge.Hook{Event: "pull_request", Action: "retest", Repo: helloWorld, Ref: "refs/pull/1/head", PullRequest: 1, Sender: "Codertocat"}, ""},
		{"retest on an issue", "issue_comment", edit(t, "issue_comment.created.payload.json", func(p map[string]any) {
			obj(p, "comment")["body"] = "/retest"
		}), nil, "/retest on issue #1, which is not a pull request"},
		{"retest by a stranger", "issue_comment", edit(t, "issue_comment.created.payload.json", func(p map[string]any) {
			obj(p, "issue")["pull_request"] = map[string]any{"url": "x"}
			obj(p, "comment")["body"] = "/retest"
			obj(p, "comment")["author_association"] = "NONE"
		}), &forge.Hook{Event: "pull_request", Action: "denied", Repo: helloWorld, Ref: "refs/pull/1/head", PullRequest: 1, Sender: "Codertocat",
			Message: "/retest", Association: "NONE"}, ""},
		{"approve by a maintainer", "issue_comment", edit(t, "issue_comment.created.payload.json", func(p map[string]any) {
			obj(p, "issue")["pull_request"] = map[string]any{"url": "x"}
			obj(p, "comment")["body"] = "looks safe\n/forge approve"
		}), &forge.Hook{Event: "pull_request", Action: "approve", Repo: helloWorld, Ref: "refs/pull/1/head", PullRequest: 1, Sender: "Codertocat",
			Message: "/forge approve", Association: "OWNER"}, ""},
		{"forge retest", "issue_comment", edit(t, "issue_comment.created.payload.json", func(p map[string]any) {
			obj(p, "issue")["pull_request"] = map[string]any{"url": "x"}
			obj(p, "comment")["body"] = "/forge retest"
		}), &forge.Hook{Event: "pull_request", Action: "retest", Repo: helloWorld, Ref: "refs/pull/1/head", PullRequest: 1, Sender: "Codertocat"}, ""},
		{"check suite of a branch", "check_suite", edit(t, "check_suite.rerequested.payload.json", func(p map[string]any) {
			obj(p, "check_suite")["pull_requests"] = []any{}
		}), &forge.Hook{
			Event: "push", Action: "rerequested", Repo: helloWorld, Ref: "refs/heads/changes", Branch: "changes", Target: "changes",
			SHA: headSHA, Message: "Update README.md", Author: "Codertocat", Sender: "octocoders-linter[bot]", Installation: 957387,
		}, ""},
		{"check suite requested", "check_suite", edit(t, "check_suite.rerequested.payload.json", func(p map[string]any) {
			p["action"] = "requested"
		}), nil, `check_suite action "requested": forge builds from push and pull_request events and rebuilds on rerequested`},
		{"unknown event", "star", []byte(`{"action":"created"}`), nil, `event "star" is not one forge builds`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hook, ignored, err := github.ParseHook(tt.event, tt.payload)
			if err != nil {
				t.Fatalf("ParseHook: %v", err)
			}
			if ignored != tt.ignored {
				t.Errorf("ignored = %q, want %q", ignored, tt.ignored)
			}
			if !reflect.DeepEqual(hook, tt.want) {
				t.Errorf("hook:\ngot  %s\nwant %s", js(hook), js(tt.want))
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name, event string
		payload     []byte
		want        string
	}{
		{"not json", "push", []byte(`{"ref":`), `"push" payload is not a JSON object`},
		{"array", "pull_request", []byte(`[1]`), `"pull_request" payload is not a JSON object`},
		{"empty object", "pull_request", []byte(`{}`), "pull_request payload has no repository"},
		{"wrong type", "push", edit(t, "push.with-new-branch.payload.json", func(p map[string]any) { p["ref"] = 7.0 }),
			"push payload does not have the shape of a GitHub push event: field ref is number, want string"},
		{"no head sha", "pull_request", edit(t, "pull_request.opened.payload.json", func(p map[string]any) {
			obj(p, "pull_request", "head")["sha"] = "main"
		}), `pull_request payload: head sha "main" is not a commit id`},
		{"path in repository name", "push", edit(t, "push.with-new-branch.payload.json", func(p map[string]any) {
			obj(p, "repository")["name"] = ".."
		}), `push payload: repository name "Codertocat/.." is not a valid GitHub owner/name`},
		{"merged without merge commit", "pull_request", edit(t, "pull_request.closed.payload.json", func(p map[string]any) {
			obj(p, "pull_request")["merged"] = true
			obj(p, "pull_request")["merge_commit_sha"] = nil
		}), "pull_request payload: merged pull request #2 has no merge_commit_sha"},
		{"bad branch", "push", edit(t, "push.with-new-branch.payload.json", func(p map[string]any) {
			p["ref"] = "refs/heads/a..b"
		}), `push payload: ref "refs/heads/a..b" is not a valid branch name`},
		{"create without ref type", "create", edit(t, "create.payload.json", func(p map[string]any) { delete(p, "ref_type") }),
			`create payload needs a ref and a ref_type of branch or tag (got "simple-tag", "")`},
		{"installation without id", "installation", []byte(`{"action":"created"}`), "installation payload has no installation id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hook, ignored, err := github.ParseHook(tt.event, tt.payload)
			if err == nil {
				t.Fatalf("ParseHook = %v, %q, nil; want error %q", hook, ignored, tt.want)
			}
			if got := forge.ErrorCode(err); got != forge.EINVALID {
				t.Errorf("code = %q, want %q", got, forge.EINVALID)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("error = %q\nwant    %q", got, tt.want)
			}
			if err := github.Validate(tt.event, tt.payload); err == nil {
				t.Errorf("Validate = nil, want an error")
			}
		})
	}
}

func TestIsRetest(t *testing.T) {
	for body, want := range map[string]bool{
		"/retest":              true,
		"  /retest  ":          true,
		"thanks\n/rebuild now": true,
		"please /retest":       false,
		"/retesting":           false,
		"":                     false,
	} {
		if got := github.IsRetest(body); got != want {
			t.Errorf("IsRetest(%q) = %v, want %v", body, got, want)
		}
	}
}

// FuzzParseHook feeds the parser arbitrary events and payloads: it must
// never panic, and must return exactly one of a hook, a reason or an
// EINVALID error; a hook always has a repository and a commit or ref.
func FuzzParseHook(f *testing.F) {
	for _, name := range githubtest.Names() {
		f.Add(githubtest.Event(name), githubtest.Payload(f, name))
	}
	f.Add("push", []byte(`{"ref":"refs/heads/x","after":"`+headSHA+`","repository":{"full_name":"a/b"}}`))
	f.Add("pull_request", []byte(`{"action":"opened","number":1,"pull_request":{"head":{"sha":"`+headSHA+`"},"base":{"ref":"m"}},"repository":{"name":"b","owner":{"login":"a"}}}`))
	f.Add("issue_comment", []byte(`{}`))
	f.Fuzz(func(t *testing.T, event string, payload []byte) {
		hook, ignored, err := github.ParseHook(event, payload)
		n := 0
		if hook != nil {
			n++
		}
		if ignored != "" {
			n++
		}
		if err != nil {
			n++
			if forge.ErrorCode(err) != forge.EINVALID {
				t.Fatalf("error code %q, want %q: %v", forge.ErrorCode(err), forge.EINVALID, err)
			}
		}
		if n != 1 {
			t.Fatalf("ParseHook(%q) = %v, %q, %v: want exactly one result", event, hook, ignored, err)
		}
		if hook != nil {
			if hook.Repo.Owner == "" || hook.Repo.Name == "" || strings.ContainsAny(hook.Repo.Owner+hook.Repo.Name, "/\\") {
				t.Fatalf("hook repository %q/%q", hook.Repo.Owner, hook.Repo.Name)
			}
			if hook.SHA == "" && hook.Ref == "" {
				t.Fatalf("hook has neither SHA nor Ref: %+v", hook)
			}
		}
	})
}

// TestParseCheckRunRerequested: re-running one of forge's check runs
// rebuilds its commit, like a re-requested check suite.
func TestParseCheckRunRerequested(t *testing.T) {
	suite := fixture(t, "check_suite.rerequested.payload.json")
	var p map[string]any
	if err := json.Unmarshal(suite, &p); err != nil {
		t.Fatal(err)
	}
	cs := p["check_suite"].(map[string]any)
	p["check_run"] = map[string]any{"id": 4, "head_sha": cs["head_sha"], "external_id": "1/test", "check_suite": cs, "pull_requests": cs["pull_requests"]}
	delete(p, "check_suite")
	payload, _ := json.Marshal(p)
	hook, ignored, err := github.ParseHook("check_run", payload)
	if err != nil || ignored != "" {
		t.Fatalf("ParseHook: %v %q", err, ignored)
	}
	want, _, _ := github.ParseHook("check_suite", suite)
	if !reflect.DeepEqual(hook, want) {
		t.Errorf("check_run hook:\ngot  %s\nwant %s", js(hook), js(want))
	}
	p["action"] = "completed"
	payload, _ = json.Marshal(p)
	if hook, ignored, err := github.ParseHook("check_run", payload); hook != nil || err != nil || ignored == "" {
		t.Errorf("completed check run: %v %q %v, want ignored", hook, ignored, err)
	}
}
