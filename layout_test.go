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

// leaseState is the lease state (the Manager and its implementations): it
// knows nothing of how it is served, so that a store can hold it and any
// transport serve it. Its HTTP/WebSocket transport, internal/lease/leasehttp,
// imports it, never the reverse.
const leaseState = "internal/lease"

// transportImports are what the lease state must not import (prefixes of
// import paths): HTTP, WebSockets, the wire types, metrics, its transport.
var transportImports = []string{
	"net/http", "net/http/", "github.com/coder/websocket", "github.com/prometheus/",
	module + "/client/", module + "/" + leaseState + "/",
}

// shared libraries adapters may use: the step runner every backend (and
// forgexec inside containers) runs steps with, and the public lease client
// whose wire types the lease server speaks.
var shared = []string{"internal/shell", "client/"}

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
			if reason := stateImport(rel, imp); reason != "" {
				t.Errorf("%s imports %s: %s", p.ImportPath, imp, reason)
			}
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

// stateImport says why pkg may not import imp (a full import path), or "".
func stateImport(pkg, imp string) string {
	if pkg != leaseState {
		return ""
	}
	for _, t := range transportImports {
		if imp == strings.TrimSuffix(t, "/") || strings.HasSuffix(t, "/") && strings.HasPrefix(imp, t) {
			return "the lease state knows nothing of its transport (HTTP, WebSocket, wire types, metrics): internal/lease/leasehttp serves it"
		}
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
		{"internal/lease/leasehttp", "client/lease", false},
		{"internal/lease/leasehttp", "internal/lease", false},
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
	state := []struct {
		pkg, imp string
		bad      bool
	}{
		{"internal/lease", "net/http", true},
		{"internal/lease", "github.com/coder/websocket", true},
		{"internal/lease", "github.com/prometheus/client_golang/prometheus", true},
		{"internal/lease", module + "/client/lease", true},
		{"internal/lease", module + "/internal/lease/leasehttp", true},
		{"internal/lease", "net/http/httputil", true},
		{"internal/lease", "net/url", false},
		{"internal/lease", "sync", false},
		{"internal/lease", module, false},
		{"internal/lease/leasehttp", "net/http", false},
		{"internal/lease/leasehttp", "github.com/coder/websocket", false},
	}
	for _, tt := range state {
		if got := stateImport(tt.pkg, tt.imp) != ""; got != tt.bad {
			t.Errorf("stateImport(%q, %q) = %v, want %v", tt.pkg, tt.imp, got, tt.bad)
		}
	}
}
