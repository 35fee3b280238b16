package swarm

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

func TestPass(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{})
	ws := t.TempDir()
	if err := os.WriteFile(filepath.Join(ws, "hello.txt"), []byte("from the checkout\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	build := newBuild()
	run := jobRun(build, &forge.Job{Name: "test", Image: imageShell, Steps: []forge.Step{
		{Name: "one", Run: "echo one; cat hello.txt; echo err >&2"},
		{Name: "two", Run: `echo "two in $PWD as $FORGE_WORKSPACE, CI=$CI"`},
	}})
	run.Workspace = forge.Workspace{Dir: ws}
	var rep events
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := b.Run(ctx, run, &rep)
	if err != nil || st != forge.StatusSuccess {
		t.Fatalf("Run = %s, %v; want success\n%s", st, err, rep.text())
	}
	want := []string{"one", "from the checkout", "err", "two in /workspace as /workspace, CI=true"}
	if got := rep.lines(); !slices.Equal(got, want) {
		t.Errorf("lines = %q, want %q", got, want)
	}
	if h := rep.ofType(forge.EventJobHandle); len(h) != 1 || len(h[0].Handle) == 0 {
		t.Errorf("handle events = %d, want 1 with a handle", len(h))
	}
	fin := rep.ofType(forge.EventStepFinished)
	if len(fin) != 2 || fin[0].Status != forge.StatusSuccess || fin[1].Status != forge.StatusSuccess {
		t.Errorf("step_finished events = %+v, want 2 successes", fin)
	}
	for i, l := range rep.ofType(forge.EventLine) {
		if l.Line.Number != i+1 {
			t.Errorf("line %d has number %d", i+1, l.Line.Number)
		}
		if (l.Line.Text == "err") != (l.Line.Stream == forge.Stderr) {
			t.Errorf("line %q on %s", l.Line.Text, l.Line.Stream)
		}
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left after the job: %s", strings.Join(left, ", "))
	}
}
