package spec

import (
	"path/filepath"
	"testing"
)

// TestExamplesLintClean checks that every file in examples/ parses and
// compiles for each of its actions.
func TestExamplesLintClean(t *testing.T) {
	paths, err := filepath.Glob("../../examples/*.yml")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	have := map[string]bool{}
	for _, p := range paths {
		have[filepath.Base(p)] = true
	}
	for _, name := range []string{"single-job.yml", "dag.yml", "dag-failing.yml", "matrix.yml", "steps.yml", "actions.yml", "on.yml"} {
		if !have[name] {
			t.Errorf("examples/%s is missing", name)
		}
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			f, err := Load(path)
			if err != nil {
				t.Fatalf("Load: %s", Report(err))
			}
			for _, a := range f.Actions() {
				plan, err := Compile(f, Options{Action: a})
				if err != nil {
					t.Fatalf("Compile(%s): %s", a, Report(err))
				}
				checkPlan(t, plan)
			}
		})
	}
}
