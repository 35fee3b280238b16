package spec_test

import (
	"testing"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/spec"
)

func TestBuildOptions(t *testing.T) {
	tests := []struct {
		hook               forge.Hook
		event, branch, tag string
	}{
		{forge.Hook{Event: "pull_request", Branch: "feature", Target: "main"}, "pull_request", "main", ""},
		{forge.Hook{Event: "pull_request", Action: "closed", Merged: true, Branch: "main", Target: "production"}, "merged", "production", ""},
		{forge.Hook{Event: "push", Branch: "main", Target: "main"}, "push", "main", ""},
		{forge.Hook{Event: "tag", Tag: "v1"}, "tag", "", "v1"},
		{forge.Hook{Branch: "main"}, "manual", "main", ""},
	}
	for _, tt := range tests {
		o := spec.BuildOptions(&forge.Build{Action: "deploy", Hook: tt.hook})
		if o.Event != tt.event || o.Branch != tt.branch || o.Tag != tt.tag || o.Action != "deploy" {
			t.Errorf("BuildOptions(%+v) = %+v, want event %q branch %q tag %q", tt.hook, o, tt.event, tt.branch, tt.tag)
		}
	}
}
