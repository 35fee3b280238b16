package trigger

import (
	"testing"

	"github.com/forgeci/forge"
)

// TestForkPolicy: which builds wait for approval under each
// builds.fork_approval, and that forks never run deploy-type actions.
func TestForkPolicy(t *testing.T) {
	fork := func(assoc string) *forge.Hook {
		return &forge.Hook{Event: "pull_request", Action: "opened", Fork: true, Association: assoc}
	}
	tests := []struct {
		policy string
		hook   *forge.Hook
		wait   bool
	}{
		{"", fork("CONTRIBUTOR"), true},
		{ForkApprovalAlways, fork("MEMBER"), true},
		{ForkApprovalFirstTime, fork("FIRST_TIME_CONTRIBUTOR"), true},
		{ForkApprovalFirstTime, fork("FIRST_TIMER"), true},
		{ForkApprovalFirstTime, fork("NONE"), true},
		{ForkApprovalFirstTime, fork("CONTRIBUTOR"), false},
		{ForkApprovalNever, fork("NONE"), false},
		{ForkApprovalAlways, &forge.Hook{Event: "pull_request", Action: "opened"}, false},                           // not a fork
		{ForkApprovalAlways, &forge.Hook{Event: "pull_request", Action: "closed", Fork: true, Merged: true}, false}, // merged: the code is the repository's now
		{ForkApprovalAlways, &forge.Hook{Event: "push"}, false},
	}
	for _, tt := range tests {
		p := &Processor{opts: Options{ForkApproval: tt.policy}}
		if got := p.needsApproval(tt.hook); got != tt.wait {
			t.Errorf("policy %q, %+v: waits = %v, want %v", tt.policy, tt.hook, got, tt.wait)
		}
		want := forge.StatusQueued
		if tt.wait {
			want = forge.StatusBlocked
		}
		if got := p.initialStatus(tt.hook); got != want {
			t.Errorf("policy %q: initial status %s, want %s", tt.policy, got, want)
		}
	}
	for action, ok := range map[string]bool{"execute": true, "lint": true, "deploy": false, "deploy-staging": false, "release": false, "publish": false, "Deploy": false} {
		if got := forkAllows(fork("NONE"), action); got != ok {
			t.Errorf("a fork may run %s: %v, want %v", action, got, ok)
		}
		if !forkAllows(&forge.Hook{Event: "pull_request"}, action) {
			t.Errorf("a pull request from the repository itself may not run %s", action)
		}
	}
}
