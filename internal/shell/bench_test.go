package shell

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// discardReporter formats each line as a log writer would and discards it,
// so the benchmarks include a consumer's cost.
type discardReporter struct {
	w   io.Writer
	buf []byte
}

func (d *discardReporter) Report(e forge.Event) {
	if e.Line == nil {
		return
	}
	d.buf = strconv.AppendInt(d.buf[:0], int64(e.Line.Number), 10)
	d.buf = append(d.buf, ' ')
	d.buf = e.Line.Time.AppendFormat(d.buf, "15:04:05.000")
	d.buf = append(d.buf, ' ')
	d.buf = append(d.buf, e.Line.Text...)
	d.buf = append(d.buf, '\n')
	d.w.Write(d.buf)
}

// BenchmarkSteps50 runs one job of 50 steps of `true`. Each iteration also
// runs the baseline, a shell loop running `sh -c true` 50 times, outside the
// timer, and the benchmark reports both and their ratio (x-loop), which is
// what the target bounds (at most 1.3) and is steadier than either time on a
// shared machine.
func BenchmarkSteps50(b *testing.B) {
	steps := make([]forge.Step, 50)
	for i := range steps {
		steps[i] = forge.Step{Name: fmt.Sprint("step ", i), Run: "true"}
	}
	env := []string{"PATH=/usr/bin:/bin"}
	dir := b.TempDir()
	var steps50, loop time.Duration
	for b.Loop() {
		start := time.Now()
		st, err := RunSteps(context.Background(), steps, dir, env, nil, &discardReporter{w: io.Discard}, Options{})
		steps50 += time.Since(start)
		if st != forge.StatusSuccess || err != nil {
			b.Fatalf("got %s, %v; want success", st, err)
		}
		b.StopTimer()
		start = time.Now()
		cmd := exec.Command("/bin/sh", "-c", `i=0; while [ $i -lt 50 ]; do sh -c true; i=$((i+1)); done`)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("shell loop: %v: %s", err, out)
		}
		loop += time.Since(start)
		b.StartTimer()
	}
	b.ReportMetric(float64(loop.Nanoseconds())/float64(b.N), "loop-ns/op")
	b.ReportMetric(float64(steps50)/float64(loop), "x-loop")
}

// BenchmarkRawExec50 is the floor of BenchmarkSteps50 for a Go program:
// os/exec running `/bin/sh -e -c true` 50 times, output discarded.
func BenchmarkRawExec50(b *testing.B) {
	for b.Loop() {
		for range 50 {
			if err := exec.Command("/bin/sh", "-e", "-c", "true").Run(); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkSeqMillion captures the 1,000,000 lines of `seq 1 1000000`, with
// timestamps, through a consumer that formats them for a log and discards them.
func BenchmarkSeqMillion(b *testing.B) {
	steps := []forge.Step{{Name: "seq", Run: "seq 1 1000000"}}
	env := []string{"PATH=/usr/bin:/bin"}
	dir := b.TempDir()
	for b.Loop() {
		rep := &discardReporter{w: io.Discard}
		st, err := RunSteps(context.Background(), steps, dir, env, nil, rep, Options{})
		if st != forge.StatusSuccess || err != nil {
			b.Fatalf("got %s, %v; want success", st, err)
		}
	}
}
