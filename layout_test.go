package forge_test

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/forgeci/forge"

// adapters wrap one technology each; they never import one another, and
// only cmd/forge wires them together (STYLE.md habit 3).
var adapters = []string{
	"internal/sqldb", "internal/github", "internal/git", "internal/http",
	"internal/ssh", "internal/lease", "internal/livelog", "internal/backend/",
}

// orchestration packages import the domain and each other, never adapters.
var orchestration = []string{"internal/spec", "internal/engine", "internal/runner", "internal/trigger"}

// shared libraries adapters may use: the step runner every backend (and
// forgexec inside containers) runs steps with, forgexec's protocol that the
// container backends speak, and the public lease client
// whose wire types the lease server speaks.
var shared = []string{"internal/shell", "internal/forgexec", "client/"}

func TestImportBoundaries(t *testing.T) {
	out, err := exec.Command("go", "list", "-e", "-json", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module) {
				if rel == "" && strings.Contains(strings.SplitN(imp, "/", 2)[0], ".") {
					t.Errorf("the domain package imports %s: it may import only the standard library", imp)
				}
				continue
			}
			dep := strings.TrimPrefix(strings.TrimPrefix(imp, module), "/")
			if reason := forbidden(rel, dep); reason != "" {
				t.Errorf("%s imports %s: %s", p.ImportPath, imp, reason)
			}
		}
	}
}

func forbidden(pkg, dep string) string {
	switch {
	case pkg == "":
		return "the domain imports nothing of ours"
	case strings.HasPrefix(dep, "cmd/"):
		return "nothing imports a command"
	case in(pkg, adapters) && in(dep, adapters) && group(pkg) != group(dep):
		return "adapters do not import each other; wire them in cmd/forge"
	case in(pkg, orchestration) && in(dep, adapters):
		return "orchestration declares the interfaces it needs; cmd/forge passes the adapter in"
	case in(pkg, shared) && (in(dep, adapters) || in(dep, orchestration)):
		return "shared libraries depend only on the domain"
	}
	return ""
}

// group is the adapter a package belongs to (a backend is its own group).
func group(pkg string) string {
	for _, a := range adapters {
		if strings.HasSuffix(a, "/") && strings.HasPrefix(pkg, a) {
			rest := strings.TrimPrefix(pkg, a)
			return a + strings.SplitN(rest, "/", 2)[0]
		}
		if pkg == a || strings.HasPrefix(pkg, a+"/") {
			return a
		}
	}
	return pkg
}

func in(pkg string, set []string) bool {
	for _, s := range set {
		if strings.HasSuffix(s, "/") && strings.HasPrefix(pkg, s) || pkg == s || strings.HasPrefix(pkg, s+"/") {
			return true
		}
	}
	return false
}

func TestForbidden(t *testing.T) {
	tests := []struct {
		pkg, dep string
		bad      bool
	}{
		{"", "internal/spec", true},
		{"internal/http", "internal/sqldb", true},
		{"internal/backend/docker", "internal/backend/local", true},
		{"internal/backend/local", "internal/shell", false},
		{"internal/lease", "client/lease", false},
		{"internal/runner", "internal/engine", false},
		{"internal/runner", "internal/backend/local", true},
		{"internal/engine", "internal/spec", false},
		{"internal/sqldb", "cmd/forge", true},
		{"cmd/forge", "internal/sqldb", false},
		{"internal/http/api", "internal/http", false},
		{"client/lease", "internal/lease", true},
	}
	for _, tt := range tests {
		if got := forbidden(tt.pkg, tt.dep) != ""; got != tt.bad {
			t.Errorf("forbidden(%q, %q) = %v, want %v", tt.pkg, tt.dep, got, tt.bad)
		}
	}
}
