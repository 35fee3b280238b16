package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// TestRandomDAGs runs random plans (random needs, outcomes, retries and
// parallel limits; the seed is printed on failure) and checks the engine's
// invariants against a model computed from the plan alone: each job ends
// once, with the status the model predicts, never before the jobs it needs,
// and never more jobs at once than the limit.
func TestRandomDAGs(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 1))
	runs := 40
	if testing.Short() {
		runs = 10
	}
	for run := range runs {
		n := 1 + rng.IntN(12)
		parallel := 1 + rng.IntN(4)
		plan := &forge.Plan{Action: "execute"}
		want := map[string]forge.Status{}
		for i := range n {
			name := fmt.Sprintf("j%d", i)
			j := &forge.Job{Name: name}
			for k := range i {
				if rng.IntN(4) == 0 {
					j.Needs = append(j.Needs, fmt.Sprintf("j%d", k))
				}
			}
			outcome := forge.StatusSuccess
			script := fmt.Sprintf("sleep %dms", rng.IntN(4))
			switch rng.IntN(6) {
			case 0:
				script += "\nexit 2"
				outcome = forge.StatusFailure
			case 1:
				// fails until attempt 3: passes with 2 retries or more
				j.Retries = rng.IntN(4)
				script += "\nfail-until 3"
				if j.Retries < 2 {
					outcome = forge.StatusFailure
				}
			case 2:
				j.Skip = "when: excluded"
				outcome = forge.StatusSkipped
			}
			j.Steps = []forge.Step{{Name: "s", Run: script}}
			// The model: a job whose needs did not all pass is skipped.
			for _, need := range j.Needs {
				if want[need] != forge.StatusSuccess {
					outcome = forge.StatusSkipped
				}
			}
			want[name] = outcome
			plan.Jobs = append(plan.Jobs, j)
		}
		b := &scripted{}
		rec := &recorder{t: t}
		res, err := New(Options{Backend: b, Parallel: parallel, Reporter: rec}).Run(context.Background(), plan, RunInfo{})
		if err != nil {
			t.Fatalf("seed %d run %d: %v", seed, run, err)
		}
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %d run %d (parallel %d): %s", seed, run, parallel, fmt.Sprintf(format, args...))
		}
		if b.max > parallel {
			fail("%d jobs at once", b.max)
		}
		finished := map[string]int{}
		var order []string
		for _, e := range rec.events {
			if e.Type == forge.EventJobFinished {
				finished[e.Job]++
				order = append(order, e.Job)
			}
		}
		for _, j := range plan.Jobs {
			if got := res.Job(j.Name).Status; got != want[j.Name] {
				fail("%s: got %s, want %s", j.Name, got, want[j.Name])
			}
			if finished[j.Name] != 1 {
				fail("%s finished %d times", j.Name, finished[j.Name])
			}
			for _, need := range j.Needs {
				if slices.Index(order, need) > slices.Index(order, j.Name) {
					fail("%s finished before %s, which it needs", j.Name, need)
				}
				if slices.Index(b.log, "end "+need) > slices.Index(b.log, "start "+j.Name) && slices.Contains(b.log, "start "+j.Name) {
					fail("%s started before %s ended", j.Name, need)
				}
			}
		}
	}
}

// TestRandomCancel cancels random plans at a random moment: every job
// still ends exactly once, nothing is left running, and the run is
// canceled.
func TestRandomCancel(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 2))
	for run := range 20 {
		plan := &forge.Plan{}
		for i := range 2 + rng.IntN(8) {
			j := &forge.Job{Name: fmt.Sprintf("j%d", i), Retries: rng.IntN(2)}
			if i > 0 && rng.IntN(2) == 0 {
				j.Needs = []string{fmt.Sprintf("j%d", rng.IntN(i))}
			}
			j.Steps = []forge.Step{{Name: "s", Run: []string{"hang", "sleep 5ms", "exit 1", "sleep 2ms\nfail-until 2"}[rng.IntN(4)]}}
			plan.Jobs = append(plan.Jobs, j)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(15))*time.Millisecond)
		b := &scripted{}
		rec := &recorder{t: t}
		res, err := New(Options{Backend: b, Parallel: 1 + rng.IntN(3), Reporter: rec}).Run(ctx, plan, RunInfo{})
		cancel()
		if err != nil {
			t.Fatalf("seed %d run %d: %v", seed, run, err)
		}
		if n := b.active.Load(); n != 0 {
			t.Fatalf("seed %d run %d: %d jobs still running", seed, run, n)
		}
		finished := map[string]int{}
		for _, e := range rec.events {
			if e.Type == forge.EventJobFinished {
				finished[e.Job]++
			}
		}
		for _, j := range plan.Jobs {
			if finished[j.Name] != 1 || !res.Job(j.Name).Status.Done() {
				t.Fatalf("seed %d run %d: %s finished %d times with %s", seed, run, j.Name, finished[j.Name], res.Job(j.Name).Status)
			}
		}
		canceled := 0
		for _, j := range plan.Jobs {
			jr := res.Job(j.Name)
			if jr.Status == forge.StatusCanceled {
				canceled++
			}
			// A job that hangs ends only by the cancel.
			if j.Steps[0].Run == "hang" && jr.Attempts > 0 && jr.Status != forge.StatusCanceled {
				t.Fatalf("seed %d run %d: %s hangs, yet it ended %s", seed, run, j.Name, jr.Status)
			}
		}
		if (res.Status == forge.StatusCanceled) != (canceled > 0) {
			t.Fatalf("seed %d run %d: run %s with %d jobs canceled", seed, run, res.Status, canceled)
		}
	}
}
