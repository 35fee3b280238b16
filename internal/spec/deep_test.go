package spec

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge/internal/testwait"
)

// TestHostileInputsAreFast feeds Parse inputs on which the YAML library
// takes quadratic time or worse, at sizes just under the file limit: each
// must be refused (or read) quickly.
func TestHostileInputsAreFast(t *testing.T) {
	manyKeys := func(n int, line string) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, line, i)
		}
		return b.String()
	}
	tests := []struct {
		name, src, want string // want: a substring of the first problem, "" for none
	}{
		{"unclosed flow lists", "execute: " + strings.Repeat("[", 500_000), "f.yml:1:74: lists and mappings nested more than 64 deep"},
		{"nested flow mappings", "execute: " + strings.Repeat("{a: ", 100_000), "nested more than 64 deep"},
		{"flow lists after a stray quote", "a: [x'" + strings.Repeat("[", 500_000), "nested more than 64 deep"},
		{"compact block lists", strings.Repeat("- ", 200_000) + "x\n", "f.yml:1:1: lists and mappings nested more than 64 deep"},
		{"compact explicit keys", strings.Repeat("? ", 200_000) + "x\n", "nested more than 64 deep"},
		{"just under the key limit", manyKeys(10_000, "k%d: x\n"), "f.yml:1:1: unknown key `k0`"},
		{"many keys", manyKeys(30_000, "k%d: x\n"), "f.yml:10001:1: more than 10000 keys"},
		{"one key many times", strings.Repeat("a: x\n", 100_000), "more than 10000 keys"},
		{"many empty block scalars", manyKeys(30_000, "k%d: |\n"), "more than 10000 keys"},
		{"too large", strings.Repeat("#", 600_000), "f.yml:1:1: the file has more than 524288 bytes (512 KiB), the most a spec may have"},
		{"64 levels are fine", "execute: " + strings.Repeat("[", 64) + strings.Repeat("]", 64) + "\n", "command 1 of action `execute` must be a command"},
		{"brackets in quotes do not count", "execute: ['" + strings.Repeat("[", 100) + "', \"" + strings.Repeat("{", 100) + "\"]\n", ""},
		{"brackets in comments do not count", "execute: [x] # " + strings.Repeat("[", 100) + "\n", ""},
		{"a long list", "execute:\n" + strings.Repeat("  - x\n", 80_000), ""},
		{"many jobs", "jobs:\n" + manyKeys(3_000, "  j%d: {steps: [x]}\n"), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := testwait.CPU()
			_, err := Parse("f.yml", []byte(tc.src))
			// Unguarded, these take minutes; quiet, each takes under half
			// a second (2s with the race detector). CPU time, not wall
			// time: busy loops on every core stretched a parse past a wall
			// clock bound of 15s without it doing any more work.
			if d := testwait.CPU() - start; d > testwait.Scale(15*time.Second) {
				t.Errorf("took %v of CPU time", d)
			}
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("got %v, want no problem", strings.SplitN(err.Error(), "\n", 2)[0])
			case tc.want != "" && (err == nil || !strings.Contains(strings.SplitN(err.Error(), "\n", 2)[0], tc.want)):
				t.Errorf("got %v, want a problem containing %q", err, tc.want)
			}
		})
	}
}
