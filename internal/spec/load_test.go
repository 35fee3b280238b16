package spec

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/forgeci/forge"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.yml", "execute: [true]\n")
	big := write("big.yml", "execute: [true]\n"+strings.Repeat("# padding\n", 60_000))
	bad := write("bad.yml", "execute: []\n")

	f, err := Load(good)
	if err != nil || f.Name != good {
		t.Fatalf("Load(good): %v, name %q", err, f.Name)
	}
	tests := []struct {
		name, path, code, want string
		problems               bool
	}{
		{"missing", filepath.Join(dir, "nope.yml"), forge.ENOTFOUND, "cannot read " + filepath.Join(dir, "nope.yml") + ": no such file", false},
		{"directory", dir, forge.EINVALID, dir + " is a directory, not a spec file", false},
		{"too large", big, forge.EINVALID, big + ":1:1: the file has more than 524288 bytes (512 KiB), the most a spec may have", true},
		{"invalid", bad, forge.EINVALID, bad + ":1:1: action `execute` has no commands: give it a list of shell commands", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.path)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			if got := forge.ErrorCode(err); got != tc.code {
				t.Errorf("code: got %q, want %q", got, tc.code)
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("error: got %q, want %q", got, tc.want)
			}
			var errs *Errors
			if got := errors.As(err, &errs); got != tc.problems {
				t.Errorf("is *Errors: got %v, want %v", got, tc.problems)
			}
		})
	}
}
