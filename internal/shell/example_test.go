package shell_test

import (
	"context"
	"fmt"
	"os"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/shell"
)

func ExampleRunSteps() {
	steps := []forge.Step{
		{Name: "greet", Run: `echo "hello $WHO"`},
		{Name: "token", Run: `echo "token: $TOKEN" >&2`},
		{Name: "fail", Run: "exit 3"},
		{Name: "never", Run: "echo not run"},
	}
	env := []string{"PATH=/usr/bin:/bin", "WHO=forge"}
	secrets := map[string]string{"TOKEN": "s3cr3t-value"}
	rep := forge.ReporterFunc(func(e forge.Event) {
		switch e.Type {
		case forge.EventLine:
			fmt.Printf("%d %s: %s\n", e.Line.Number, e.Line.Stream, e.Line.Text)
		case forge.EventStepFinished:
			fmt.Printf("step %q: %s (exit %d)", e.StepName, e.Status, e.ExitCode)
			if e.Message != "" {
				fmt.Print(": ", e.Message)
			}
			fmt.Println()
		}
	})
	status, err := shell.RunSteps(context.Background(), steps, os.TempDir(), env, secrets, rep, shell.Options{})
	fmt.Println("job:", status, err)
	// Output:
	// 1 stdout: hello forge
	// step "greet": success (exit 0)
	// 2 stderr: token: ***
	// step "token": success (exit 0)
	// step "fail": failure (exit 3): exit code 3
	// step "never": skipped (exit 0): not run: an earlier step failed
	// job: failure <nil>
}

func ExampleNewWriter() {
	w := shell.NewWriter(os.Stdout, shell.NewMasker([]string{"hunter2"}), 0)
	fmt.Fprint(w, "password: hun")
	fmt.Fprint(w, "ter2\nshort values such as \"ab\" are not masked\n")
	w.Flush()
	// Output:
	// password: ***
	// short values such as "ab" are not masked
}
