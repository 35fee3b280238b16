package swarm

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
)

// samplesPerOp is how many jobs one benchmark op runs: the targets are
// medians, so even -benchtime=1x gives one.
const samplesPerOp = 10

// BenchmarkSwarmStart is issue 9's start target: from Run's call to the
// first line of the job's first command reaching the reporter, on the
// single-node swarm, p50 under 2 s. The job is one `echo` step in the
// busybox image with a small checkout; "node" has forgexec and the
// workspace in volumes on forge's node (the default), "spread" has
// forgexec bound from the node and the workspace fetched from the backend.
func BenchmarkSwarmStart(b *testing.B) {
	b.Run("node", func(b *testing.B) { benchStart(b, Options{}) })
	b.Run("spread", func(b *testing.B) { benchStart(b, spreadOptions(b)) })
}

func benchStart(b *testing.B, opts Options) {
	be := newBackend(b, opts)
	ws := b.TempDir()
	os.WriteFile(filepath.Join(ws, "README"), []byte("a small checkout\n"), 0o644)
	var took []time.Duration
	for range b.N * samplesPerOp {
		var first time.Time
		rep := forge.ReporterFunc(func(e forge.Event) {
			if e.Type == forge.EventLine && first.IsZero() {
				first = time.Now()
			}
		})
		run := jobRun(newBuild(), &forge.Job{Name: "start", Image: imageShell, Steps: []forge.Step{{Name: "echo", Run: "echo first"}}})
		run.Workspace = forge.Workspace{Dir: ws}
		start := time.Now()
		st, err := be.Run(context.Background(), run, rep)
		if err != nil || st != forge.StatusSuccess || first.IsZero() {
			b.Fatalf("job %d: Run = %s, %v (a line: %v)", len(took), st, err, !first.IsZero())
		}
		took = append(took, first.Sub(start))
	}
	p50, p90 := percentiles(took)
	b.ReportMetric(p50.Seconds(), "p50-s")
	b.ReportMetric(p90.Seconds(), "p90-s")
	if p50 > 2*time.Second {
		b.Errorf("start to first command p50 = %s, target 2s", p50)
	}
}

// BenchmarkSwarmServicesGone is issue 9's cleanup target: from the end of
// a build's job (its last step's end reaching the reporter) until no
// service of the build is left, under 1 s. The job has a sidecar, so two
// services go.
func BenchmarkSwarmServicesGone(b *testing.B) {
	be := newBackend(b, Options{})
	var took []time.Duration
	for range b.N * samplesPerOp {
		build := newBuild()
		var end time.Time
		ended := make(chan struct{})
		rep := forge.ReporterFunc(func(e forge.Event) {
			if e.Type == forge.EventStepFinished {
				end = time.Now()
				close(ended)
			}
		})
		gone := make(chan time.Time, 1)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			// Watch the build's services from the job's end on.
			select {
			case <-ended:
			case <-ctx.Done():
				return
			}
			f := client.Filters{}.Add("label", LabelScope+"="+testScope, LabelBuild+"="+build)
			for ctx.Err() == nil {
				res, err := testCli.ServiceList(ctx, client.ServiceListOptions{Filters: f})
				if err == nil && len(res.Items) == 0 {
					gone <- time.Now()
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
		job := &forge.Job{Name: "gone", Image: imageShell,
			Services: []forge.Service{{Name: "db", Image: imageShell, Command: []string{"sleep", "600"}}},
			Steps:    []forge.Step{{Name: "echo", Run: "echo done"}}}
		st, err := be.Run(ctx, jobRun(build, job), rep)
		if err != nil || st != forge.StatusSuccess {
			cancel()
			b.Fatalf("Run = %s, %v", st, err)
		}
		select {
		case g := <-gone:
			took = append(took, g.Sub(end))
		case <-time.After(time.Minute):
			b.Fatal("the build's services are still there a minute after its job ended")
		}
		cancel()
	}
	p50, p90 := percentiles(took)
	b.ReportMetric(p50.Seconds(), "p50-s")
	b.ReportMetric(p90.Seconds(), "p90-s")
	b.ReportMetric(slices.Max(took).Seconds(), "max-s")
	if slices.Max(took) > time.Second {
		b.Errorf("services gone after the job's end: max %s, target 1s", slices.Max(took))
	}
}

func percentiles(d []time.Duration) (p50, p90 time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2], s[len(s)*9/10]
}
