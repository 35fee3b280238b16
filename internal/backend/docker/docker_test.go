package docker

import (
	"slices"
	"testing"

	"github.com/forgeci/forge"
)

func TestPassAndFail(t *testing.T) {
	b := newBackend(t, Options{})
	build := "pass-" + randHex(3)
	rec := &events{}
	st, err := b.Run(t.Context(), jobRun(build, &forge.Job{Name: "j", Image: imageShell, Steps: []forge.Step{
		{Name: "a", Run: "echo hello; echo \"ws=$FORGE_WORKSPACE ci=$CI pwd=$(pwd)\""},
		{Name: "b", Run: "exit 3"},
		{Name: "c", Run: "echo never"},
	}}), rec)
	if st != forge.StatusFailure || err != nil {
		t.Fatalf("got %s, %v; want failure", st, err)
	}
	if got, want := rec.lines(), []string{"hello", "ws=/workspace ci=true pwd=/workspace"}; !slices.Equal(got, want) {
		t.Errorf("lines: got %q, want %q", got, want)
	}
	fin := rec.steps()
	if len(fin) != 3 || fin[0].Status != forge.StatusSuccess || fin[1].ExitCode != 3 || fin[2].Status != forge.StatusSkipped {
		t.Errorf("steps: %+v", fin)
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}
