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
	"internal/ssh", "internal/lease", "internal/livelog", "internal/backend/", "internal/web",
}

// orchestration packages import the domain and each other, never adapters.
var orchestration = []string{"internal/spec", "internal/engine", "internal/runner", "internal/trigger"}

// views show a run to a person (forge exec's terminal output): they read
// the domain's events and the engine's results, never an adapter, and only
// a command imports them.
var views = []string{"internal/console"}

// below lists, for orchestration packages, the orchestration packages
// each may import: they import one another downward only (the trigger
// turns deliveries into builds and the runner runs them; neither needs the
// other, and what both need lives in internal/spec or the domain).
var below = map[string][]string{
	"internal/spec":    nil,
	"internal/engine":  {"internal/spec"},
	"internal/runner":  {"internal/spec", "internal/engine"},
	"internal/trigger": {"internal/spec"},
}

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
// forgexec inside containers) runs steps with, forgexec's protocol that the
// container backends speak, the guard that stops its processes when forge
// dies, the sanitizer of log text shown to people, the public lease client
// whose wire types the lease server speaks, and the metrics every part
// exports.
var shared = []string{"internal/shell", "internal/forgexec", "internal/guard", "internal/ansi", "client/", "internal/prometheus"}

// engineLib is what the container backends share of the Docker engine
// (its errors, the forgexec volume): an adapter-level library that only
// they and cmd/forge import, so that neither backend imports the other.
const engineLib = "internal/moby"

var engineLibUsers = []string{"internal/backend/docker", "internal/backend/swarm", "cmd/forge"}

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

// heavyModules are libraries whose package initialisation costs every
// forge command its start-up, forge exec included, whatever the command
// uses (issue 8 item 11: client_golang's default registry, runtime
// collectors and protocol buffer descriptors took about 1.4 ms of each
// start). internal/prometheus writes the metrics instead; tests may still
// use these modules to check it.
var heavyModules = []string{
	"github.com/prometheus/client_golang/",
	"github.com/prometheus/client_model/",
	"github.com/prometheus/procfs",
	"google.golang.org/protobuf/",
	"expvar",
}

func TestForgeLinksNoHeavyInit(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "./cmd/forge").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, heavy := range heavyModules {
			if pkg == heavy || strings.HasPrefix(pkg, heavy) {
				t.Errorf("the forge binary links %s, whose initialisation slows the start of every command", pkg)
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
	case in(dep, []string{engineLib}) && !in(pkg, []string{engineLib}) && !in(pkg, engineLibUsers):
		return "only the container backends and cmd/forge use the engine library"
	case in(pkg, []string{engineLib}) && (in(dep, adapters) || in(dep, orchestration) || in(dep, views)):
		return "the engine library depends only on the domain and shared libraries"
	case in(pkg, adapters) && in(dep, adapters) && group(pkg) != group(dep):
		return "adapters do not import each other; wire them in cmd/forge"
	case in(pkg, orchestration) && in(dep, adapters):
		return "orchestration declares the interfaces it needs; cmd/forge passes the adapter in"
	case in(pkg, orchestration) && in(dep, orchestration) && group2(pkg) != group2(dep) && !in(dep, below[group2(pkg)]):
		return "orchestration packages import each other downward only (spec, engine, runner; spec, trigger): move what both need below both"
	case in(pkg, shared) && (in(dep, adapters) || in(dep, orchestration) || in(dep, views)):
		return "shared libraries depend only on the domain"
	case in(pkg, views) && in(dep, adapters):
		return "a view shows events; cmd/forge gives it what adapters know"
	case in(dep, views) && !strings.HasPrefix(pkg, "cmd/") && !in(pkg, views):
		return "only commands choose how a run is shown"
	}
	return ""
}

// group2 is the orchestration package pkg belongs to.
func group2(pkg string) string {
	for _, o := range orchestration {
		if pkg == o || strings.HasPrefix(pkg, o+"/") {
			return o
		}
	}
	return pkg
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
		{"internal/backend/swarm", "internal/backend/docker", true},
		{"internal/backend/docker", "internal/moby", false},
		{"internal/backend/swarm", "internal/moby", false},
		{"cmd/forge", "internal/moby", false},
		{"internal/backend/local", "internal/moby", true},
		{"internal/runner", "internal/moby", true},
		{"internal/moby", "internal/backend/docker", true},
		{"internal/moby", "internal/forgexec", false},
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
		{"internal/console", "internal/engine", false},
		{"internal/console", "internal/git", true},
		{"internal/console", "internal/backend/local", true},
		{"cmd/forge", "internal/console", false},
		{"internal/runner", "internal/console", true},
		{"internal/http", "internal/console", true},
		{"internal/shell", "internal/console", true},
		{"internal/runner", "internal/prometheus", false},
		{"internal/prometheus", "internal/http", true},
		{"internal/trigger", "internal/runner", true},
		{"internal/runner", "internal/trigger", true},
		{"internal/trigger", "internal/spec", false},
		{"internal/engine", "internal/runner", true},
		{"internal/runner/sub", "internal/runner", false},
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
