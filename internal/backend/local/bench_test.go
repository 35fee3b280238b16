package local

import (
	"context"
	"fmt"
	"testing"

	"github.com/forgeci/forge"
)

// benchJob runs job in a fresh backend b.N times and fails on anything but
// success. Lines are counted and dropped.
func benchJob(b *testing.B, j *forge.Job, ws forge.Workspace) {
	be := New(Options{TempDir: b.TempDir()})
	lines := 0
	rep := forge.ReporterFunc(func(e forge.Event) {
		if e.Line != nil {
			lines++
		}
	})
	for b.Loop() {
		st, err := be.Run(context.Background(), &forge.JobRun{Job: j, Env: map[string]string{"CI": "true"}, Workspace: ws}, rep)
		if st != forge.StatusSuccess || err != nil {
			b.Fatalf("got %s, %v; want success", st, err)
		}
	}
}

// BenchmarkSteps50 is shell's BenchmarkSteps50 through the backend: 50 steps
// of `true` in the checkout itself.
func BenchmarkSteps50(b *testing.B) {
	j := &forge.Job{Name: "steps50"}
	for i := range 50 {
		j.Steps = append(j.Steps, forge.Step{Name: fmt.Sprint("step ", i), Run: "true"})
	}
	benchJob(b, j, forge.Workspace{Dir: b.TempDir()})
}

// BenchmarkSeqMillion is shell's BenchmarkSeqMillion through the backend.
func BenchmarkSeqMillion(b *testing.B) {
	benchJob(b, &forge.Job{Name: "seq", Steps: []forge.Step{{Run: "seq 1 1000000"}}}, forge.Workspace{Dir: b.TempDir()})
}

// BenchmarkCleanWorkspace is what --clean adds to a job: a git worktree of a
// small repository made and removed around one step of `true`.
func BenchmarkCleanWorkspace(b *testing.B) {
	repo := gitRepoB(b)
	benchJob(b, &forge.Job{Name: "clean", Steps: []forge.Step{{Run: "true"}}}, forge.Workspace{Dir: repo, Clean: true})
}
