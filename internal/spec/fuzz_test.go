package spec

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// FuzzParse feeds Parse and Compile arbitrary bytes: they must never panic
// or hang, and must give either a plan or problems with positions.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("../../examples/*.yml")
	more, _ := filepath.Glob("testdata/*/*.yml")
	for _, path := range append(seeds, more...) {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"execute: [true]\n",
		"a: &a [*a]\n",
		"jobs:\n  a: {needs: b, steps: [x]}\n  b: {needs: a, steps: [y]}\n",
		"jobs:\n  t:\n    matrix: {x: [1, 2], y: [a, b]}\n    steps: ['echo ${x}$$']\n",
		"on:\n  push: {branches: ['[', main], run: execute}\nexecute: [true]\n",
		"execute:\n\t- true\n",
		"x: <<: *y\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			checkParseCompile(t, data)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("Parse+Compile did not finish in 10s on %q", data)
		}
	})
}

// checkParseCompile parses data and compiles every action, checking that
// each outcome is a plan or problems with positions.
func checkParseCompile(t *testing.T, data []byte) {
	f, err := Parse("fuzz.yml", data)
	if err != nil {
		checkProblems(t, err)
		return
	}
	if len(f.Actions()) == 0 {
		t.Fatalf("Parse accepted a file with no action: %q", data)
	}
	for _, a := range f.Actions() {
		plan, err := Compile(f, Options{Action: a, Event: "push", Branch: "main", Paths: []string{"a/b.go"}})
		if err != nil {
			t.Fatalf("Parse accepted the file but Compile(%q) failed: %v", a, err)
		}
		checkPlan(t, plan)
	}
	if _, err := Compile(f, Options{Action: "no-such-action"}); err != nil {
		checkProblems(t, err)
	} else {
		t.Fatalf("Compile of an unknown action succeeded")
	}
}

func checkProblems(t *testing.T, err error) {
	t.Helper()
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error is %T, not *Errors: %v", err, err)
	}
	if len(errs.Problems) == 0 {
		t.Fatalf("*Errors with no problem")
	}
	for _, p := range errs.Problems {
		if p.Line < 1 || p.Col < 1 || p.Message == "" || p.File == "" {
			t.Fatalf("problem without a position or a message: %#v", p)
		}
	}
}

// checkPlan checks a plan's invariants: unique names, at least one step
// per job, needs that exist and come earlier in the order.
func checkPlan(t *testing.T, p *forge.Plan) {
	t.Helper()
	if len(p.Jobs) == 0 {
		t.Fatalf("plan %q has no job", p.Action)
	}
	seen := map[string]bool{}
	for _, j := range p.Jobs {
		if seen[j.Name] {
			t.Fatalf("plan %q has two jobs named %q", p.Action, j.Name)
		}
		if len(j.Steps) == 0 {
			t.Fatalf("job %q has no step", j.Name)
		}
		for _, n := range j.Needs {
			if !seen[n] {
				t.Fatalf("job %q needs %q, which does not come before it", j.Name, n)
			}
		}
		seen[j.Name] = true
	}
}
