package glob_test

import (
	"testing"

	"github.com/forgeci/forge/internal/glob"
)

func TestRegexp(t *testing.T) {
	tests := []struct {
		pattern, name string
		match         bool
	}{
		{"*.xml", "a.xml", true},
		{"*.xml", "out/a.xml", false},
		{"out/**/*.xml", "out/a.xml", true},
		{"out/**/*.xml", "out/b/c/a.xml", true},
		{"**", "any/thing", true},
		{"test-?.xml", "test-1.xml", true},
		{"test-?.xml", "test-/.xml", false},
		{"[!a]*.go", "b.go", true},
		{"[!a]*.go", "a.go", false},
		{"a+b.txt", "a+b.txt", true},
		{"a+b.txt", "aab.txt", false},
	}
	for _, tt := range tests {
		re, err := glob.Regexp(tt.pattern)
		if err != nil {
			t.Fatalf("%q: %v", tt.pattern, err)
		}
		if got := re.MatchString(tt.name); got != tt.match {
			t.Errorf("%q matches %q = %v, want %v", tt.pattern, tt.name, got, tt.match)
		}
	}
	for _, bad := range []string{"", "a[b", "[]"} {
		if _, err := glob.Regexp(bad); err == nil {
			t.Errorf("%q compiled, want an error", bad)
		}
	}
}
