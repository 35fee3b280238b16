package shell

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"testing"

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

// BenchmarkSteps50 runs one job of 50 steps of `true`; compare with
// BenchmarkShellLoop50, the same 50 shells started by a shell loop.
func BenchmarkSteps50(b *testing.B) {
	steps := make([]forge.Step, 50)
	for i := range steps {
		steps[i] = forge.Step{Name: fmt.Sprint("step ", i), Run: "true"}
	}
	env := []string{"PATH=/usr/bin:/bin"}
	dir := b.TempDir()
	for b.Loop() {
		st, err := RunSteps(context.Background(), steps, dir, env, nil, &discardReporter{w: io.Discard}, Options{})
		if st != forge.StatusSuccess || err != nil {
			b.Fatalf("got %s, %v; want success", st, err)
		}
	}
}

// BenchmarkShellLoop50 is the baseline of BenchmarkSteps50: a shell loop
// running `sh -c true` 50 times.
func BenchmarkShellLoop50(b *testing.B) {
	for b.Loop() {
		cmd := exec.Command("/bin/sh", "-c", `i=0; while [ $i -lt 50 ]; do sh -c true; i=$((i+1)); done`)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("shell loop: %v: %s", err, out)
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
