package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The end-to-end benchmarks of issue 2 run the forge binary (built once)
// the way a user does, in a git checkout of their own:
//
//	go test -run='^$' -bench='Exec|Startup' -benchtime=20x ./cmd/forge
//
// With FORGE_BENCH_BASELINE=/path/to/another/forge, the 50-step and
// start-up benchmarks time that binary too, in the same iterations.
//
// Each reports medians over its iterations; see BENCHMARKS.md.

// benchCheckout makes a git repository with one commit holding spec as
// .forge.yml, and returns its directory.
func benchCheckout(b *testing.B, spec string) string {
	b.Helper()
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ".forge.yml"), []byte(spec), 0o644); err != nil {
		b.Fatal(err)
	}
	for _, args := range [][]string{
		{"init", "-q", "-b", "main"},
		{"add", ".forge.yml"},
		{"-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-q", "-m", "bench"},
	} {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	return dir
}

// rusageLauncher builds testdata/launcher once.
var rusageLauncher = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "forge-launcher-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "launcher")
	out, err := exec.Command("go", "build", "-o", bin, "./testdata/launcher").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build launcher: %v\n%s", err, out)
	}
	return bin, nil
})

// timedRun runs bin with args through testdata/launcher, in dir, with its stdout
// drained through a pipe, and returns its wall time (measured by the
// launcher, so the launcher's own start does not count), the peak resident
// memory of the process in bytes, the launcher's own peak (an upper
// bound of what the first figure may include that is not the process's),
// and the CPU time of the process and its children: on a loaded machine
// that says more than the wall time.
func timedRun(b *testing.B, dir, bin string, args ...string) (wall time.Duration, rss, launcherRSS int64, cpu time.Duration) {
	b.Helper()
	l, err := rusageLauncher()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(l, append([]string{bin}, args...)...)
	cmd.Dir = dir
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	rr, rw, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	defer rr.Close()
	cmd.ExtraFiles = []*os.File{rw}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	rw.Close()
	// Drain like cat does, 64 KiB at a time (io.Copy to io.Discard reads
	// 8 KiB at a time, which makes forge wait on a full pipe more often
	// than any real reader would).
	buf := make([]byte, 64<<10)
	for {
		if _, err := stdout.Read(buf); err == io.EOF {
			break
		} else if err != nil {
			b.Fatal(err)
		}
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("%v: %v\n%s", args, err, stderr.String())
	}
	if _, err := fmt.Fscan(rr, &wall, &rss, &launcherRSS, &cpu); err != nil {
		b.Fatalf("reading the launcher's rusage: %v", err)
	}
	return wall, rss * 1024, launcherRSS * 1024, cpu
}

func medianDuration(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// pairedRatio is the median of a[i]/b[i]: each pair ran back to back, so
// the load of a shared machine weighs on both alike.
func pairedRatio(a, b []time.Duration) float64 {
	r := make([]float64, len(a))
	for i := range a {
		r[i] = float64(a[i]) / float64(b[i])
	}
	slices.Sort(r)
	if len(r) == 0 {
		return 0
	}
	return r[len(r)/2]
}

// baselineForge is another forge binary to time side by side with this
// one, from FORGE_BENCH_BASELINE (a build of an earlier commit, say): on a
// machine shared with other work, only runs interleaved in one benchmark
// compare fairly.
func baselineForge(b *testing.B) string {
	bin := os.Getenv("FORGE_BENCH_BASELINE")
	if bin == "" {
		return ""
	}
	if _, err := os.Stat(bin); err != nil {
		b.Fatalf("FORGE_BENCH_BASELINE: %v", err)
	}
	return bin
}

// BenchmarkExecSteps50 compares forge exec of one job of 50 steps of
// `true` with a shell loop starting `sh -c true` 50 times, as whole
// processes, alternating the two in every iteration (and the baseline
// binary, when FORGE_BENCH_BASELINE names one). Target: ratio at most 1.3.
func BenchmarkExecSteps50(b *testing.B) {
	bin, base := buildForge(b), baselineForge(b)
	var spec strings.Builder
	spec.WriteString("execute:\n")
	for range 50 {
		spec.WriteString("  - \"true\"\n")
	}
	dir := benchCheckout(b, spec.String())
	var forgeT, loopT, baseT, forgeCPU, loopCPU, baseCPU []time.Duration
	b.ResetTimer()
	for range b.N {
		d, _, _, cpu := timedRun(b, dir, bin, "exec")
		forgeT, forgeCPU = append(forgeT, d), append(forgeCPU, cpu)
		d, _, _, cpu = timedRun(b, dir, "/bin/sh", "-c", "i=0; while [ $i -lt 50 ]; do sh -c true; i=$((i+1)); done")
		loopT, loopCPU = append(loopT, d), append(loopCPU, cpu)
		if base != "" {
			d, _, _, cpu = timedRun(b, dir, base, "exec")
			baseT, baseCPU = append(baseT, d), append(baseCPU, cpu)
		}
	}
	b.StopTimer()
	b.ReportMetric(millis(medianDuration(forgeT)), "forge-ms")
	b.ReportMetric(millis(medianDuration(loopT)), "loop-ms")
	b.ReportMetric(float64(medianDuration(forgeT))/float64(medianDuration(loopT)), "ratio")
	b.ReportMetric(pairedRatio(forgeT, loopT), "paired-ratio")
	b.ReportMetric(millis(medianDuration(forgeCPU)), "forge-cpu-ms")
	b.ReportMetric(millis(medianDuration(loopCPU)), "loop-cpu-ms")
	if base != "" {
		b.ReportMetric(millis(medianDuration(baseT)), "base-ms")
		b.ReportMetric(float64(medianDuration(baseT))/float64(medianDuration(loopT)), "base-ratio")
		b.ReportMetric(pairedRatio(baseT, loopT), "base-paired-ratio")
		b.ReportMetric(millis(medianDuration(baseCPU)), "base-cpu-ms")
	}
}

// helloWorld builds a Go program that prints one line: the floor of a Go
// process's start-up on this machine.
var helloWorld = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "forge-hello-")
	if err != nil {
		return "", err
	}
	src := "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello\") }\n"
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "hello")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "main.go")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build hello: %v\n%s", err, out)
	}
	return bin, nil
})

// BenchmarkStartup times `forge version`, a command that does nothing but
// start, against a hello-world Go program, as whole processes, alternating
// them (and the baseline binary, when FORGE_BENCH_BASELINE names one).
// What forge adds is what every command, forge exec first, pays before it
// does anything.
func BenchmarkStartup(b *testing.B) {
	bin, base := buildForge(b), baselineForge(b)
	hello, err := helloWorld()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	var forgeT, helloT, baseT []time.Duration
	b.ResetTimer()
	for range b.N {
		d, _, _, _ := timedRun(b, dir, bin, "version")
		forgeT = append(forgeT, d)
		d, _, _, _ = timedRun(b, dir, hello)
		helloT = append(helloT, d)
		if base != "" {
			d, _, _, _ = timedRun(b, dir, base, "version")
			baseT = append(baseT, d)
		}
	}
	b.StopTimer()
	b.ReportMetric(millis(medianDuration(forgeT)), "forge-ms")
	b.ReportMetric(millis(medianDuration(helloT)), "hello-ms")
	b.ReportMetric(float64(medianDuration(forgeT))/float64(medianDuration(helloT)), "ratio")
	b.ReportMetric(pairedRatio(forgeT, helloT), "paired-ratio")
	if base != "" {
		b.ReportMetric(millis(medianDuration(baseT)), "base-ms")
		b.ReportMetric(float64(medianDuration(baseT))/float64(medianDuration(helloT)), "base-ratio")
		b.ReportMetric(pairedRatio(baseT, helloT), "base-paired-ratio")
	}
}

// BenchmarkExecSeqMillion runs one step `seq 1 N` with the output captured
// with timestamps to a log file (--log-dir) and to stdout, a pipe the
// benchmark drains. It reports the wall time and forge's peak RSS for a
// million lines and for 100,000, to show memory does not grow with the
// output. Target: 300 ms for the million.
func BenchmarkExecSeqMillion(b *testing.B) {
	bin := buildForge(b)
	dir := benchCheckout(b, "jobs:\n  million:\n    steps:\n      - seq 1 1000000\n  tenth:\n    action: tenth\n    steps:\n      - seq 1 100000\n")
	logs := b.TempDir()
	var wall1M, wall100k, cpu1M []time.Duration
	var rss1M, rss100k, launcherRSS int64
	// check reads a log as a stream, to keep the test process small.
	check := func(job string, lines int) {
		f, err := os.Open(filepath.Join(logs, job+".log"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		n := 0
		for sc.Scan() {
			if strings.Contains(sc.Text(), " out ") {
				n++
				if want := " out " + strconv.Itoa(n); !strings.HasSuffix(sc.Text(), want) {
					b.Fatalf("log of %s: line %q, want it to end in %q", job, sc.Text(), want)
				}
			}
		}
		if n != lines {
			b.Fatalf("log of %s: %d lines of output, want %d", job, n, lines)
		}
	}
	b.ResetTimer()
	for range b.N {
		d, rss, self, cpu := timedRun(b, dir, bin, "exec", "--log-dir", logs)
		wall1M, cpu1M = append(wall1M, d), append(cpu1M, cpu)
		rss1M, launcherRSS = max(rss1M, rss), max(launcherRSS, self)

		d, rss, self, _ = timedRun(b, dir, bin, "exec", "--action", "tenth", "--log-dir", logs)
		wall100k = append(wall100k, d)
		rss100k, launcherRSS = max(rss100k, rss), max(launcherRSS, self)
	}
	b.StopTimer()
	check("million", 1000000)
	check("tenth", 100000)
	b.ReportMetric(millis(medianDuration(wall1M)), "1M-ms")
	b.ReportMetric(millis(medianDuration(wall100k)), "100k-ms")
	b.ReportMetric(millis(medianDuration(cpu1M)), "1M-cpu-ms")
	b.ReportMetric(float64(rss1M)/(1<<20), "1M-rss-MB")
	b.ReportMetric(float64(rss100k)/(1<<20), "100k-rss-MB")
	b.ReportMetric(float64(launcherRSS)/(1<<20), "launcher-rss-MB")
}
