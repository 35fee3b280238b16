package shell

import (
	"slices"
	"testing"

	"github.com/forgeci/forge"
)

// Steps given as arguments run without a shell: no word splitting, no
// expansion, the program looked up in the steps' PATH.
func TestStepArgs(t *testing.T) {
	rec := &recorder{t: t}
	st, err := RunSteps(t.Context(), []forge.Step{
		{Args: []string{"printf", "%s|%s\\n", "$HOME", "a b"}},
		{Args: []string{"/bin/sh", "-c", "exit 4"}, ContinueOnError: true},
		{Args: []string{"no-such-program-forge"}},
	}, t.TempDir(), testEnv, nil, rec, Options{Shell: "/nonexistent/sh"})
	if st != forge.StatusError || forge.ErrorCode(err) != forge.EINVALID {
		t.Errorf("job: got %s, %v; want error, EINVALID (the last program does not exist)", st, err)
	}
	var texts []string
	for _, l := range rec.lines() {
		texts = append(texts, l.Text)
	}
	if want := []string{"$HOME|a b"}; !slices.Equal(texts, want) {
		t.Errorf("lines: got %q, want %q", texts, want)
	}
	fin := rec.finished()
	if len(fin) != 3 || fin[1].ExitCode != 4 || fin[2].Status != forge.StatusError ||
		fin[2].Message != "cannot run the step: program no-such-program-forge not found" {
		t.Errorf("finished: got %+v", fin)
	}
}
