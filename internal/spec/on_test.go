package spec

import (
	"reflect"
	"testing"

	"github.com/forgeci/forge"
)

func TestActionsFor(t *testing.T) {
	f := mustParse(t, `on:
  pull_request:
    branches: [main, "release/*"]
  push:
    branches: main
    run: [execute, docs]
  merged:
    branches: production
    run: deploy
  tag:
    tags: ["v*", "!v*-rc*"]
    run: release
  manual: [execute, deploy]
execute: [x]
deploy: [x]
release: [x]
docs: [x]
`)
	if !f.HasOn() {
		t.Fatal("HasOn: got false")
	}
	tests := []struct {
		name string
		hook forge.Hook
		want []string
	}{
		{"pull request into main", forge.Hook{Event: "pull_request", Action: "opened", Target: "main", Branch: "feature"}, []string{"execute"}},
		{"pull request updated", forge.Hook{Event: "pull_request", Action: "synchronize", Target: "release/2"}, []string{"execute"}},
		{"pull request ready", forge.Hook{Event: "pull_request", Action: "ready_for_review", Target: "main"}, []string{"execute"}},
		{"pull request into another branch", forge.Hook{Event: "pull_request", Action: "opened", Target: "develop"}, nil},
		{"pull request labelled", forge.Hook{Event: "pull_request", Action: "labeled", Target: "main"}, nil},
		{"pull request closed unmerged", forge.Hook{Event: "pull_request", Action: "closed", Target: "production"}, nil},
		{"merged into production", forge.Hook{Event: "pull_request", Action: "closed", Merged: true, Target: "production"}, []string{"deploy"}},
		{"merged into main", forge.Hook{Event: "pull_request", Action: "closed", Merged: true, Target: "main"}, nil},
		{"merged event", forge.Hook{Event: "merged", Target: "production"}, []string{"deploy"}},
		{"push to main", forge.Hook{Event: "push", Ref: "refs/heads/main", Target: "main"}, []string{"execute", "docs"}},
		{"push to main, branch only", forge.Hook{Event: "push", Branch: "main"}, []string{"execute", "docs"}},
		{"push to main, ref only", forge.Hook{Event: "push", Ref: "refs/heads/main"}, []string{"execute", "docs"}},
		{"push without a branch", forge.Hook{Event: "push"}, nil},
		{"push to a feature branch", forge.Hook{Event: "push", Target: "feature"}, nil},
		{"push of a tag", forge.Hook{Event: "push", Ref: "refs/tags/v1.0"}, []string{"release"}},
		{"tag event", forge.Hook{Event: "tag", Tag: "v2.0"}, []string{"release"}},
		{"release candidate tag excluded", forge.Hook{Event: "tag", Tag: "v2.0-rc1"}, nil},
		{"tag not matching", forge.Hook{Event: "tag", Tag: "nightly"}, nil},
		{"manual", forge.Hook{Event: "manual"}, []string{"execute", "deploy"}},
		{"unknown event", forge.Hook{Event: "issue_comment"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := f.ActionsFor(&tc.hook); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestActionsForDefaults(t *testing.T) {
	tests := []struct {
		name string
		src  string
		hook forge.Hook
		want []string
	}{
		{"no on section", "execute: [x]\n", forge.Hook{Event: "push", Target: "main"}, nil},
		{"empty event runs execute on every branch", "on:\n  push:\nexecute: [x]\n", forge.Hook{Event: "push", Target: "any"}, []string{"execute"}},
		{"action name shorthand", "on:\n  pull_request: deploy\nexecute: [x]\ndeploy: [y]\n", forge.Hook{Event: "pull_request", Action: "opened", Target: "x"}, []string{"deploy"}},
		{"filter without run runs execute", "on:\n  push: {branches: main}\nexecute: [x]\n", forge.Hook{Event: "push", Target: "main"}, []string{"execute"}},
		{"event not listed", "on:\n  push:\nexecute: [x]\n", forge.Hook{Event: "pull_request", Action: "opened", Target: "main"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := mustParse(t, tc.src)
			if got := f.ActionsFor(&tc.hook); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	var nilFile *File
	if got := nilFile.ActionsFor(&forge.Hook{Event: "push"}); got != nil {
		t.Errorf("nil file: got %q", got)
	}
}

func TestOnProblems(t *testing.T) {
	tests := []struct{ name, src, want string }{
		{"default action missing", "on:\n  push: {branches: main}\ndeploy: [x]\n",
			"f.yml:2:3: `on.push` runs `execute` by default, which this file does not have: add `run:` with one of `deploy`"},
		{"on is a list", "on: [push]\nexecute: [x]\n",
			"f.yml:1:5: `on` must be a mapping of keys to values, not a list"},
		{"empty run", "on:\n  push: {run: []}\nexecute: [x]\n",
			"f.yml:2:10: `run` of `on.push` is empty: name the actions to run"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("f.yml", []byte(tc.src))
			if err == nil || err.Error() != tc.want {
				t.Errorf("got %v\nwant %s", err, tc.want)
			}
		})
	}
}
