package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/backend/local"
	"github.com/forgeci/forge/internal/engine"
)

// TestEngineLocalParallel runs the engine on the real local backend and
// measures, from timestamps the steps write, how many jobs ran at once.
func TestEngineLocalParallel(t *testing.T) {
	for _, parallel := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("parallel=%d", parallel), func(t *testing.T) {
			dir := t.TempDir()
			plan := &forge.Plan{Action: "execute"}
			for i := range 6 {
				plan.Jobs = append(plan.Jobs, &forge.Job{
					Name: fmt.Sprintf("j%d", i),
					// Mark the start, wait (up to 5s) until as many jobs have
					// started as may run at once, mark the end: jobs beyond the
					// limit show as overlap, jobs held back as a timeout.
					Steps: []forge.Step{{Name: "s", Run: fmt.Sprintf(`echo "$(date +%%s%%N) 1" >> times; touch "started.$FORGE_JOB"
i=0; while [ "$(ls started.* | wc -l)" -lt %d ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
sleep 0.02; echo "$(date +%%s%%N) -1" >> times`, parallel)}},
				})
			}
			eng := engine.New(engine.Options{Backend: local.New(local.Options{}), Parallel: parallel})
			res, err := eng.Run(context.Background(), plan, engine.RunInfo{BuildID: "t", Workspace: forge.Workspace{Dir: dir}})
			if err != nil || res.Status != forge.StatusSuccess {
				t.Fatalf("run: %v %v", err, res)
			}
			data, err := os.ReadFile(filepath.Join(dir, "times"))
			if err != nil {
				t.Fatal(err)
			}
			type mark struct {
				at    int64
				delta int
			}
			var marks []mark
			for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
				f := strings.Fields(l)
				at, _ := strconv.ParseInt(f[0], 10, 64)
				d, _ := strconv.Atoi(f[1])
				marks = append(marks, mark{at, d})
			}
			sort.Slice(marks, func(i, j int) bool {
				if marks[i].at != marks[j].at {
					return marks[i].at < marks[j].at
				}
				return marks[i].delta < marks[j].delta // an end before a start at the same instant
			})
			n, most := 0, 0
			for _, m := range marks {
				n += m.delta
				most = max(most, n)
			}
			if len(marks) != 12 || most != parallel {
				t.Errorf("max jobs at once: got %d (from %d marks), want %d", most, len(marks), parallel)
			}
		})
	}
}

// TestEngineLocalCancel cancels a run on the real local backend and checks
// that Run returns promptly with every job canceled.
func TestEngineLocalCancel(t *testing.T) {
	plan := &forge.Plan{Action: "execute", Jobs: []*forge.Job{
		{Name: "a", Steps: []forge.Step{{Name: "s", Run: "sleep 60"}}},
		{Name: "b", Steps: []forge.Step{{Name: "s", Run: "sleep 60"}}},
		{Name: "c", Needs: []string{"a"}, Steps: []forge.Step{{Name: "s", Run: "true"}}},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := engine.New(engine.Options{Backend: local.New(local.Options{KillGrace: time.Second}), Parallel: 2}).
		Run(ctx, plan, engine.RunInfo{Workspace: forge.Workspace{Dir: t.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != forge.StatusCanceled {
		t.Errorf("status: got %s, want canceled", res.Status)
	}
	for _, j := range res.Jobs {
		if j.Status != forge.StatusCanceled {
			t.Errorf("%s: got %s, want canceled", j.Name, j.Status)
		}
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("took %s to cancel", el)
	}
}
