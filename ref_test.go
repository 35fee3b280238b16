package forge_test

import (
	"testing"

	"github.com/forgeci/forge"
)

func TestRefHelpers(t *testing.T) {
	for _, tt := range []struct {
		s   string
		sha bool
		ref bool
	}{
		{"0123456789abcdef0123456789abcdef01234567", true, true},
		{"0123456789ABCDEF0123456789abcdef01234567", false, true},
		{"main", false, true},
		{"refs/pull/7/head", false, true},
		{"feature/x.y", false, true},
		{"-upload-pack", false, false},
		{"a..b", false, false},
		{"a/.hidden", false, false},
		{"x.lock/y", false, false},
		{"has space", false, false},
		{"@", false, false},
		{"", false, false},
	} {
		if got := forge.IsSHA(tt.s); got != tt.sha {
			t.Errorf("IsSHA(%q) = %v", tt.s, got)
		}
		if got := forge.ValidRefName(tt.s); got != tt.ref {
			t.Errorf("ValidRefName(%q) = %v", tt.s, got)
		}
	}
	if got := forge.ShortSHA("0123456789abcdef0123"); got != "0123456789ab" {
		t.Errorf("ShortSHA = %q", got)
	}
	if got := forge.FirstLine("  \n first line \r\nsecond"); got != "first line" {
		t.Errorf("FirstLine = %q", got)
	}
}

// TestHookTrusted: only code forge can show to be the repository's own is
// trusted with secrets.
func TestHookTrusted(t *testing.T) {
	for _, tt := range []struct {
		h    forge.Hook
		want bool
	}{
		{forge.Hook{Event: "push", Ref: "refs/heads/main"}, true},
		{forge.Hook{Event: "tag", Ref: "refs/tags/v1"}, true},
		{forge.Hook{Event: "push", Ref: "refs/heads/patch-1", Fork: true}, false},
		{forge.Hook{Event: "pull_request", Ref: "refs/pull/1/head"}, true},
		{forge.Hook{Event: "pull_request", Ref: "refs/pull/1/head", Fork: true}, false},
		{forge.Hook{Event: "pull_request", Ref: "refs/heads/main", Merged: true, Fork: true}, true},
		{forge.Hook{Event: "manual", Ref: "refs/heads/main"}, true},
		{forge.Hook{Event: "manual", Ref: "refs/pull/1/head"}, false},
		{forge.Hook{Event: "manual"}, false},
		{forge.Hook{Event: "push"}, false},
		{forge.Hook{Ref: "refs/heads/main"}, false},
	} {
		if got := tt.h.Trusted(); got != tt.want {
			t.Errorf("%+v.Trusted() = %v, want %v", tt.h, got, tt.want)
		}
	}
}
