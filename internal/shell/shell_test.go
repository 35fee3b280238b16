package shell

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/forgeci/forge"
)

func TestStepResults(t *testing.T) {
	tests := []struct {
		name  string
		steps []forge.Step
		job   forge.Status
		// want is each step's status, exit code and message.
		want []string
	}{
		{"success", []forge.Step{{Run: "true"}, {Run: "exit 0"}}, forge.StatusSuccess,
			[]string{"success 0 ", "success 0 "}},
		{"failure skips the rest", []forge.Step{{Run: "exit 3"}, {Run: "true"}, {Run: "true"}}, forge.StatusFailure,
			[]string{"failure 3 exit code 3", "skipped 0 not run: an earlier step failed", "skipped 0 not run: an earlier step failed"}},
		{"sh -e stops at the first failing command", []forge.Step{{Run: "false; echo never"}}, forge.StatusFailure,
			[]string{"failure 1 exit code 1"}},
		{"continue_on_error", []forge.Step{{Run: "exit 7", ContinueOnError: true}, {Run: "true"}}, forge.StatusSuccess,
			[]string{"failure 7 exit code 7 (continue_on_error: the job goes on)", "success 0 "}},
		{"continue_on_error then a failure", []forge.Step{{Run: "exit 7", ContinueOnError: true}, {Run: "exit 2"}, {Run: "true"}}, forge.StatusFailure,
			[]string{"failure 7 exit code 7 (continue_on_error: the job goes on)", "failure 2 exit code 2", "skipped 0 not run: an earlier step failed"}},
		{"killed by a signal", []forge.Step{{Run: "kill -9 $$"}}, forge.StatusFailure,
			[]string{"failure 137 exit code 137"}},
		{"command not found", []forge.Step{{Run: "no-such-command-forge"}}, forge.StatusFailure,
			[]string{"failure 127 exit code 127"}},
		{"no steps", nil, forge.StatusSuccess, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, rec := run(t, t.Context(), Options{}, nil, tt.steps...)
			if st != tt.job {
				t.Errorf("job status: got %s, want %s", st, tt.job)
			}
			var got []string
			for _, e := range rec.finished() {
				got = append(got, string(e.Status)+" "+strconv.Itoa(e.ExitCode)+" "+e.Message)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("steps:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestEventsAndLineNumbers(t *testing.T) {
	st, rec := run(t, t.Context(), Options{}, nil,
		forge.Step{Name: "one", Run: "echo a; echo b"},
		forge.Step{Name: "two", Run: "echo c"})
	if st != forge.StatusSuccess {
		t.Fatalf("got %s, want success", st)
	}
	var got []string
	for _, e := range rec.events {
		s := string(e.Type) + " " + strconv.Itoa(e.Step) + " " + e.StepName
		if e.Line != nil {
			s += " " + strconv.Itoa(e.Line.Number) + " " + string(e.Line.Stream) + " " + e.Line.Text
			if e.Line.Time.IsZero() || !e.Time.Equal(e.Line.Time) {
				t.Errorf("line %d: time %v, event time %v", e.Line.Number, e.Line.Time, e.Time)
			}
		}
		if e.Type == forge.EventStepFinished && e.Duration <= 0 {
			t.Errorf("step %d: duration %v, want > 0", e.Step, e.Duration)
		}
		got = append(got, s)
	}
	want := []string{
		"step_started 0 one",
		"line 0 one 1 stdout a",
		"line 0 one 2 stdout b",
		"step_finished 0 one",
		"step_started 1 two",
		"line 1 two 3 stdout c",
		"step_finished 1 two",
	}
	if !slices.Equal(got, want) {
		t.Errorf("events:\n got %q\nwant %q", got, want)
	}
}

func TestOutput(t *testing.T) {
	type line struct {
		stream forge.Stream
		text   string
	}
	tests := []struct {
		name string
		run  string
		want []line
	}{
		{"stdout and stderr keep their order",
			"echo out1; sleep 0.1; echo err1 >&2; sleep 0.1; echo out2; sleep 0.1; echo err2 >&2",
			[]line{{forge.Stdout, "out1"}, {forge.Stderr, "err1"}, {forge.Stdout, "out2"}, {forge.Stderr, "err2"}}},
		{"last line without newline", "printf 'a\\nb'",
			[]line{{forge.Stdout, "a"}, {forge.Stdout, "b"}}},
		{"last line of stderr without newline", "printf 'c' >&2",
			[]line{{forge.Stderr, "c"}}},
		{"empty lines are lines", "printf '\\n\\nx\\n'",
			[]line{{forge.Stdout, ""}, {forge.Stdout, ""}, {forge.Stdout, "x"}}},
		{"CRLF loses its CR, a lone CR stays", "printf 'dos\\r\\nbar\\rbaz\\n'",
			[]line{{forge.Stdout, "dos"}, {forge.Stdout, "bar\rbaz"}}},
		{"a line split across writes is one line", "printf 'hel'; sleep 0.05; printf 'lo\\n'",
			[]line{{forge.Stdout, "hello"}}},
		{"invalid UTF-8 and NUL become U+FFFD", "printf 'a\\000b\\377\\376c\\n'",
			[]line{{forge.Stdout, "a\uFFFDb\uFFFDc"}}},
		{"valid UTF-8 is kept", "printf 'h\\303\\251 \\342\\234\\223\\n'",
			[]line{{forge.Stdout, "hé ✓"}}},
		{"stdin is empty", "cat; echo done",
			[]line{{forge.Stdout, "done"}}},
		{"no output", "true", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, rec := run(t, t.Context(), Options{}, nil, forge.Step{Run: tt.run})
			var got []line
			for _, l := range rec.lines() {
				got = append(got, line{l.Stream, l.Text})
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestBinaryOutput(t *testing.T) {
	st, rec := run(t, t.Context(), Options{MaxLine: 4096}, nil, forge.Step{Run: "head -c 2000000 /dev/urandom"})
	if st != forge.StatusSuccess {
		t.Fatalf("got %s, want success", st)
	}
	lines := rec.lines()
	if len(lines) < 1000 {
		t.Errorf("got %d lines from 2 MB of random bytes, want about 7800", len(lines))
	}
	for _, l := range lines {
		if !utf8.ValidString(l.Text) || strings.ContainsRune(l.Text, 0) {
			t.Fatalf("line %d is not clean UTF-8: %q", l.Number, l.Text)
		}
		if len(l.Text) > 4096*3 {
			t.Fatalf("line %d: %d bytes, want at most 3x MaxLine after replacements", l.Number, len(l.Text))
		}
	}
}

func TestLongLine(t *testing.T) {
	const size = 10 << 20 // 10 MiB, one line
	st, rec := run(t, t.Context(), Options{}, nil,
		forge.Step{Run: "head -c 10485760 /dev/zero | tr '\\000' x; echo; echo next"})
	if st != forge.StatusSuccess {
		t.Fatalf("got %s, want success", st)
	}
	texts := rec.texts(forge.Stdout)
	if len(texts) != 11 || texts[10] != "next" {
		t.Fatalf("got %d lines, want 10 pieces of 1 MiB and \"next\"", len(texts))
	}
	total := 0
	for i, s := range texts[:10] {
		if len(s) != DefaultMaxLine {
			t.Errorf("piece %d: %d bytes, want %d", i, len(s), DefaultMaxLine)
		}
		if strings.Trim(s, "x") != "" {
			t.Errorf("piece %d holds other bytes than x", i)
		}
		total += len(s)
	}
	if total != size {
		t.Errorf("got %d bytes, want %d", total, size)
	}
}

func TestLongLineKeepsRunes(t *testing.T) {
	// 3-byte runes in pieces of at most 10 bytes: no rune is cut.
	_, rec := run(t, t.Context(), Options{MaxLine: 10}, nil, forge.Step{Run: "printf '✓✓✓✓✓✓✓✓✓✓'"})
	texts := rec.texts(forge.Stdout)
	if got := strings.Join(texts, ""); got != strings.Repeat("✓", 10) {
		t.Errorf("got %q, want ten ✓", got)
	}
	for _, s := range texts {
		if !utf8.ValidString(s) || len(s) > 10 {
			t.Errorf("piece %q: a cut rune or longer than 10 bytes", s)
		}
	}
}

// TestHugeOutputMemory pushes 200 MB through the pipe and checks that the
// heap stays flat: nothing buffers the log.
func TestHugeOutputMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	var peak uint64
	var bytesSeen, n int
	var lineRep forge.ReporterFunc = func(e forge.Event) {
		if e.Line == nil {
			return
		}
		bytesSeen += len(e.Line.Text) + 1
		if n++; n%20000 == 0 || len(e.Line.Text) > 64<<10 {
			peak = max(peak, heapInUse())
		}
	}
	// 200 MB by default (FORGE_TEST_HUGE_MB=4096 for gigabytes): half in
	// lines of 1000 bytes, half in one line.
	mb := 200
	if s := os.Getenv("FORGE_TEST_HUGE_MB"); s != "" {
		var err error
		if mb, err = strconv.Atoi(s); err != nil || mb < 10 {
			t.Fatalf("FORGE_TEST_HUGE_MB=%q: want a number of megabytes, at least 10", s)
		}
	}
	size := mb * 1_000_000
	step := forge.Step{Run: fmt.Sprintf(`yes "$(head -c 999 /dev/zero | tr '\000' y)" | head -c %d; head -c %d /dev/zero | tr '\000' z`, size/2, size/2)}
	before := heapInUse()
	st, err := RunSteps(t.Context(), []forge.Step{step}, t.TempDir(), testEnv, nil, lineRep, Options{})
	if st != forge.StatusSuccess || err != nil {
		t.Fatalf("got %s, %v; want success", st, err)
	}
	peak = max(peak, heapInUse())
	// Each line adds 1 for its newline; each cut of the long line adds 1.
	if want := size + size/2/DefaultMaxLine + 1; bytesSeen < size || bytesSeen > want {
		t.Errorf("saw %d bytes, want %d and a newline per cut", bytesSeen, size)
	}
	if grew := int64(peak) - int64(before); grew > 64<<20 {
		t.Errorf("heap in use grew by %d MiB while %d MB went through, want at most 64 MiB", grew>>20, mb)
	}
	t.Logf("heap in use: %d MiB before, %d MiB at most", before>>20, peak>>20)
}

// heapInUse reads the heap's size from the runtime.
func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func TestSecretsMasked(t *testing.T) {
	secrets := map[string]string{
		"TOKEN":    "hunter2-token",
		"MULTI":    "line-one\nline-two\r\n",
		"SHORT":    "ab",
		"OVERLAP1": "abcdef",
		"OVERLAP2": "defghi",
	}
	tests := []struct {
		name string
		run  string
		want []string
	}{
		{"whole value", `echo "token=$TOKEN."`, []string{"token=***."}},
		{"value split across two writes", `printf 'x hunter2-'; sleep 0.1; printf 'token y\n'`, []string{"x *** y"}},
		{"every occurrence", `echo "$TOKEN$TOKEN $TOKEN"`, []string{"*** ***"}},
		{"multi-line value, line by line", `printf '%s' "$MULTI"; echo; echo "a line-two b"`,
			[]string{"***", "***", "", "a *** b"}},
		{"short values are not masked", `echo "$SHORT"`, []string{"ab"}},
		{"overlapping values are masked as one", `echo abcdefghi`, []string{"***"}},
		{"on stderr too", `echo "$TOKEN" >&2`, []string{"***"}},
		{"secrets reach the step", `test "$TOKEN" = hunter2-token && echo yes`, []string{"yes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, rec := run(t, t.Context(), Options{}, secrets, forge.Step{Run: tt.run})
			if got := rec.texts(""); !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSecretNotSplitByLongLineCut(t *testing.T) {
	// MaxLine 16: a naive cut at byte 16 would split the secret in two
	// unmasked halves.
	secrets := map[string]string{"S": "SECRETVALUE"}
	_, rec := run(t, t.Context(), Options{MaxLine: 16}, secrets,
		forge.Step{Run: `printf '0123456789ab'; sleep 0.05; printf 'SECRETVALUE tail and more text here'`})
	got := strings.Join(rec.texts(""), "|")
	if strings.Contains(got, "SECRET") || strings.Contains(got, "VALUE") || !strings.Contains(got, "***") {
		t.Errorf("got %q: the secret is not masked", got)
	}
	for _, s := range rec.texts("") {
		if len(s) > 16 {
			t.Errorf("piece %q longer than MaxLine", s)
		}
	}
}

func TestNotesAreSystemLinesOfTheFirstStep(t *testing.T) {
	_, rec := run(t, t.Context(), Options{Notes: []string{"workspace kept at /tmp/x"}}, nil,
		forge.Step{Run: "echo a"}, forge.Step{Run: "echo b"})
	lines := rec.lines()
	if len(lines) != 3 || lines[0].Stream != forge.System || lines[0].Text != "workspace kept at /tmp/x" || lines[0].Number != 1 {
		t.Errorf("got %+v, want the note as system line 1", lines)
	}
}

func TestEnvironment(t *testing.T) {
	t.Setenv("FORGE_TEST_HOST_ONLY", "leaked")
	env := []string{"PATH=/usr/bin:/bin", "CI=true", "FORGE_JOB=test job", "SPACES=a  b", "TOKEN=overridden"}
	rec := &recorder{t: t}
	st, err := RunSteps(t.Context(), []forge.Step{{Run: "env"}}, t.TempDir(), env,
		map[string]string{"TOKEN": "s3cret-value"}, rec, Options{})
	if st != forge.StatusSuccess || err != nil {
		t.Fatalf("got %s, %v", st, err)
	}
	got := rec.texts(forge.Stdout)
	for _, want := range []string{"PATH=/usr/bin:/bin", "CI=true", "FORGE_JOB=test job", "SPACES=a  b", "TOKEN=***"} {
		if !slices.Contains(got, want) {
			t.Errorf("env lacks %q; got %q", want, got)
		}
	}
	for _, l := range got {
		if strings.HasPrefix(l, "FORGE_TEST_HOST_ONLY=") || l == "TOKEN=overridden" {
			t.Errorf("env has %q, which was not given", l)
		}
	}
}

func TestWorkingDirectory(t *testing.T) {
	dir := t.TempDir()
	rec := &recorder{t: t}
	if _, err := RunSteps(t.Context(), []forge.Step{{Run: "pwd -P"}}, dir, testEnv, nil, rec, Options{}); err != nil {
		t.Fatal(err)
	}
	want, _ := os.Readlink(dir)
	if want == "" {
		want = dir
	}
	if got := rec.texts(forge.Stdout); len(got) != 1 || got[0] != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		script  string
		dir     string
		env     []string
		secrets map[string]string
		opts    Options
		code    string
		msg     string
	}{
		{"no such directory", "true", dir + "/missing", testEnv, nil, Options{}, forge.EINVALID, "not a directory"},
		{"no such shell", "true", dir, testEnv, nil, Options{Shell: "/no/such/sh"}, forge.EINVALID, "shell /no/such/sh not found"},
		{"no such shell in PATH", "true", dir, testEnv, nil, Options{Shell: "no-such-sh"}, forge.EINVALID, "shell no-such-sh not found"},
		{"env entry without =", "true", dir, []string{"PATH"}, nil, Options{}, forge.EINVALID, `"PATH" is not NAME=VALUE`},
		{"env entry with empty name", "true", dir, []string{"=x"}, nil, Options{}, forge.EINVALID, "empty name"},
		{"secret with NUL", "true", dir, testEnv, map[string]string{"S": "a\x00b"}, Options{}, forge.EINVALID, "S contains a NUL byte"},
		{"script with NUL", "echo \x00", dir, testEnv, nil, Options{}, forge.EINVALID, "script contains a NUL byte"},
		{"script too long", strings.Repeat("#", 200_000), dir, testEnv, nil, Options{}, forge.ETOOLARGE, "too long to pass to the shell (200000 bytes, at most 131072)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{t: t}
			st, err := RunSteps(t.Context(), []forge.Step{{Run: tt.script}, {Run: "true"}}, tt.dir, tt.env, tt.secrets, rec, tt.opts)
			if st != forge.StatusError || err == nil {
				t.Fatalf("got %s, %v; want error", st, err)
			}
			if forge.ErrorCode(err) != tt.code || !strings.Contains(forge.ErrorMessage(err), tt.msg) {
				t.Errorf("got %s %q, want %s containing %q", forge.ErrorCode(err), forge.ErrorMessage(err), tt.code, tt.msg)
			}
		})
	}
}

func TestStepTimeout(t *testing.T) {
	m := marker(t)
	killMarked(t, m)
	start := time.Now()
	st, rec := run(t, t.Context(), Options{KillGrace: time.Second}, nil,
		forge.Step{Run: "echo start; sleep " + m, Timeout: 200 * time.Millisecond},
		forge.Step{Run: "true"})
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %v, want about 200ms", el)
	}
	if st != forge.StatusFailure {
		t.Errorf("job: got %s, want failure", st)
	}
	f := rec.finished()
	if len(f) != 2 || f[0].Status != forge.StatusFailure || f[0].Message != "timed out after 200ms" || f[1].Status != forge.StatusSkipped {
		t.Errorf("got %+v, want a failure \"timed out after 200ms\" and a skipped step", f)
	}
	if f[0].ExitCode != 128+15 {
		t.Errorf("exit code: got %d, want 143 (SIGTERM)", f[0].ExitCode)
	}
	assertNoneRunning(t, m)
}

func TestSIGTERMIgnoredGetsSIGKILL(t *testing.T) {
	m := marker(t)
	killMarked(t, m)
	grace := 300 * time.Millisecond
	start := time.Now()
	_, rec := run(t, t.Context(), Options{KillGrace: grace}, nil,
		forge.Step{Run: "trap '' TERM; sleep " + m + " & sleep " + m, Timeout: 100 * time.Millisecond})
	el := time.Since(start)
	if el < 400*time.Millisecond || el > 3*time.Second {
		t.Errorf("took %v, want timeout + grace = 400ms", el)
	}
	f := rec.finished()
	if len(f) != 1 || f[0].ExitCode != 128+9 || f[0].Message != "timed out after 100ms" {
		t.Errorf("got %+v, want killed (137), \"timed out after 100ms\"", f)
	}
	assertNoneRunning(t, m)
}

func TestGraceLetsTheGroupFinish(t *testing.T) {
	// The shell dies at SIGTERM at once; its child traps it and needs
	// 200ms to clean up, within the grace period: it must get them.
	dir := t.TempDir()
	script := `sh -c 'trap "sleep 0.2; echo cleaned > ` + dir + `/done; exit 0" TERM; while :; do sleep 0.05; done' & wait`
	rec := &recorder{t: t}
	RunSteps(t.Context(), []forge.Step{{Run: script, Timeout: 200 * time.Millisecond}}, dir, testEnv, nil, rec, Options{KillGrace: 3 * time.Second})
	if b, err := os.ReadFile(dir + "/done"); err != nil || string(b) != "cleaned\n" {
		t.Errorf("child's cleanup: got %q, %v; want it done within the grace period", b, err)
	}
}

func TestBackgroundChildIsKilled(t *testing.T) {
	m := marker(t)
	killMarked(t, m)
	start := time.Now()
	st, rec := run(t, t.Context(), Options{}, nil,
		forge.Step{Run: "sleep " + m + " & sh -c 'sleep " + m + "' >/dev/null 2>&1 & echo started"},
		forge.Step{Run: "echo second"})
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %v: waited for the background child", el)
	}
	if st != forge.StatusSuccess || !slices.Equal(rec.texts(""), []string{"started", "second"}) {
		t.Errorf("got %s %q, want success, started, second", st, rec.texts(""))
	}
	assertNoneRunning(t, m)
}

func TestCancel(t *testing.T) {
	m := marker(t)
	killMarked(t, m)
	ctx, cancel := context.WithCancel(t.Context())
	rec := &recorder{t: t}
	var st forge.Status
	done := make(chan error)
	go func() {
		var err error
		st, err = RunSteps(ctx, []forge.Step{
			{Run: "echo ok"},
			{Run: "sleep " + m + " & sleep " + m + " & echo running; wait"},
			{Run: "echo never"},
		}, t.TempDir(), testEnv, nil, rec, Options{KillGrace: time.Second})
		done <- err
	}()
	for deadline := time.Now().Add(5 * time.Second); len(running(t, m)) < 2; {
		if time.Now().After(deadline) {
			t.Fatal("the step did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RunSteps did not return after cancel")
	}
	if st != forge.StatusCanceled {
		t.Errorf("job: got %s, want canceled", st)
	}
	var got []string
	for _, e := range rec.finished() {
		got = append(got, string(e.Status))
	}
	if want := []string{"success", "canceled", "skipped"}; !slices.Equal(got, want) {
		t.Errorf("steps: got %q, want %q", got, want)
	}
	assertNoneRunning(t, m)
}

func TestJobDeadline(t *testing.T) {
	m := marker(t)
	killMarked(t, m)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	st, rec := run(t, ctx, Options{}, nil, forge.Step{Run: "sleep " + m}, forge.Step{Run: "true"})
	if st != forge.StatusFailure {
		t.Errorf("job: got %s, want failure", st)
	}
	f := rec.finished()
	if len(f) != 2 || f[0].Status != forge.StatusFailure || f[0].Message != "the job timed out" || f[1].Status != forge.StatusSkipped || f[1].Message != "not run: the job timed out" {
		t.Errorf("got %+v", f)
	}
	assertNoneRunning(t, m)
}

func TestJobDeadlineBeatsContinueOnError(t *testing.T) {
	m := marker(t)
	killMarked(t, m)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	st, rec := run(t, ctx, Options{}, nil, forge.Step{Run: "sleep " + m, ContinueOnError: true}, forge.Step{Run: "echo never"})
	if st != forge.StatusFailure {
		t.Errorf("job: got %s, want failure", st)
	}
	if f := rec.finished(); len(f) != 2 || f[1].Status != forge.StatusSkipped || f[1].Message != "not run: the job timed out" {
		t.Errorf("got %+v, want the second step skipped: the job timed out", f)
	}
	if len(rec.lines()) != 0 {
		t.Errorf("got lines %q, want none", rec.texts(""))
	}
}

func TestCancelledBeforeStart(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	st, rec := run(t, ctx, Options{}, nil, forge.Step{Run: "echo never"})
	if st != forge.StatusCanceled || len(rec.lines()) != 0 {
		t.Errorf("got %s with %d lines, want canceled with none", st, len(rec.lines()))
	}
	if f := rec.finished(); len(f) != 1 || f[0].Status != forge.StatusSkipped {
		t.Errorf("got %+v, want the step skipped", f)
	}
}

func TestEscapedProcessIsKilled(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		skipUnlessCI(t, "no setsid: %v", err)
	}
	m := marker(t)
	killMarked(t, m)
	tests := []struct {
		name string
		run  string
	}{
		{"setsid child holding stdout", "setsid sleep " + m + " & sleep 0.2; echo bye"},
		{"setsid child holding stderr, and its own child", "setsid sh -c 'sleep " + m + " & sleep " + m + "' >/dev/null & sleep 0.2; echo bye"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			st, rec := run(t, t.Context(), Options{}, nil, forge.Step{Run: tt.run})
			if el := time.Since(start); el > 3*time.Second {
				t.Errorf("took %v, want about 300ms", el)
			}
			if st != forge.StatusSuccess {
				t.Errorf("got %s, want success", st)
			}
			var said bool
			for _, l := range rec.lines() {
				said = said || (l.Stream == forge.System && strings.HasPrefix(l.Text, "killed ") && strings.Contains(l.Text, "left the step's process group"))
			}
			if !said {
				t.Errorf("no system line about the escaped process: %q", rec.texts(""))
			}
			assertNoneRunning(t, m)
		})
	}
}

func TestReportsNeverOverlap(t *testing.T) {
	// recorder fails the test if two Report calls overlap; both streams
	// write at full speed.
	_, rec := run(t, t.Context(), Options{}, nil, forge.Step{Run: "seq 1 20000 & seq 1 20000 >&2; wait"})
	lines := rec.lines()
	if len(lines) != 40000 {
		t.Fatalf("got %d lines, want 40000", len(lines))
	}
	for i, l := range lines {
		if l.Number != i+1 {
			t.Fatalf("line %d numbered %d", i+1, l.Number)
		}
		if i > 0 && l.Time.Before(lines[i-1].Time) {
			t.Fatalf("line %d is older than line %d", i+1, i)
		}
	}
	// Texts kept by the consumer stay intact while later lines are read.
	for _, s := range []forge.Stream{forge.Stdout, forge.Stderr} {
		for i, text := range rec.texts(s) {
			if want := strconv.Itoa(i + 1); text != want {
				t.Fatalf("%s line %d: got %q, want %q", s, i+1, text, want)
			}
		}
	}
}

// slowReporter is a deliberately slow consumer: the first line's Report
// waits until the step's shell (its PID in pidFile) has exited and been
// reaped, then takes longer than every timeout forge applies after a step
// ends. The engine slows its Reporter like this when the log writer lags.
type slowReporter struct {
	recorder
	pidFile string
	slow    time.Duration
	waited  bool
}

func (r *slowReporter) Report(e forge.Event) {
	if e.Type == forge.EventLine && !r.waited {
		r.waited = true
		deadline := time.Now().Add(30 * time.Second)
		for {
			b, err := os.ReadFile(r.pidFile)
			if err == nil && strings.HasSuffix(string(b), "\n") {
				if _, err := os.Stat("/proc/" + strings.TrimSpace(string(b))); os.IsNotExist(err) {
					break
				}
			}
			if time.Now().After(deadline) {
				r.t.Errorf("the step's shell did not end within 30s")
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(r.slow)
	}
	r.recorder.Report(e)
}

// TestSlowConsumerGetsEveryLine: a step whose processes have all exited
// loses none of its output, however slowly it is consumed (issue 7, item 4:
// forge used to stop reading 1.1s after the shell exited).
func TestSlowConsumerGetsEveryLine(t *testing.T) {
	dir := t.TempDir()
	rec := &slowReporter{recorder: recorder{t: t}, pidFile: filepath.Join(dir, "pid"), slow: escapeDelay + 2*DrainTimeout}
	// Both streams hold more than one read takes (the first lines are read
	// before the consumer stalls) and less than a pipe holds, so the shell
	// exits while most of its output waits in the pipes.
	script := "seq 1 5000; seq 1 5000 >&2; echo $$ > pid.tmp; mv pid.tmp pid"
	st, err := RunSteps(t.Context(), []forge.Step{{Run: script}}, dir, testEnv, nil, rec, Options{})
	if err != nil || st != forge.StatusSuccess {
		t.Fatalf("RunSteps = %s, %v; want success", st, err)
	}
	for _, s := range []forge.Stream{forge.Stdout, forge.Stderr} {
		texts := rec.texts(s)
		if len(texts) != 5000 {
			t.Errorf("%s: got %d lines, want 5000", s, len(texts))
		}
		for i, text := range texts {
			if want := strconv.Itoa(i + 1); text != want {
				t.Fatalf("%s line %d: got %q, want %q", s, i+1, text, want)
			}
		}
	}
	if sys := rec.texts(forge.System); len(sys) != 0 {
		t.Errorf("system lines %q, want none: no process held the output open", sys)
	}
}

// TestReadStopsOnlyForALiveWriter drives a reader after the step's group is
// gone: a pipe whose writer is alive and silent is cut off after
// DrainTimeout, every byte written before read; a pipe whose writers are
// gone is read to its end, however long the consumer takes.
func TestReadStopsOnlyForALiveWriter(t *testing.T) {
	for _, writerAlive := range []bool{true, false} {
		t.Run(fmt.Sprintf("writer alive %v", writerAlive), func(t *testing.T) {
			pr, pw, err := pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			rec := &recorder{t: t}
			r := &runner{rep: rec, masker: NewMasker(nil)}
			lb := &lineBuffer{max: DefaultMaxLine, m: r.masker}
			lb.emit = func(line []byte, complete bool) { r.line(forge.Stdout, line, complete) }
			if _, err := pw.WriteString("one\ntwo\nthree"); err != nil {
				t.Fatal(err)
			}
			if !writerAlive {
				pw.Close()
			} else {
				defer pw.Close()
			}
			var draining atomic.Bool
			draining.Store(true)
			// A deadline already passed: as when the consumer was slow.
			pr.SetReadDeadline(time.Now().Add(-time.Second))
			start := time.Now()
			cut := r.read(pr, lb, &draining)
			if cut != writerAlive {
				t.Errorf("cut short = %v, want %v", cut, writerAlive)
			}
			if el := time.Since(start); writerAlive && el < DrainTimeout {
				t.Errorf("gave up after %v, want at least %v of silence", el, DrainTimeout)
			}
			if got := rec.texts(""); !slices.Equal(got, []string{"one", "two", "three"}) {
				t.Errorf("lines = %q, want one two three", got)
			}
		})
	}
}

// fakeGuard records what RunSteps asks of a Guard.
type fakeGuard struct {
	t       *testing.T
	mu      sync.Mutex
	calls   []string
	watched map[int]bool
	fail    error
}

func (g *fakeGuard) Watch(pgid int, grace time.Duration) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fail != nil {
		return g.fail
	}
	// The group runs: its leader is the step's shell.
	if pg, err := syscall.Getpgid(pgid); err != nil || pg != pgid {
		g.t.Errorf("Watch(%d): not a running process group (%d, %v)", pgid, pg, err)
	}
	g.watched[pgid] = true
	g.calls = append(g.calls, fmt.Sprintf("watch %v", grace))
	return nil
}

func (g *fakeGuard) Release(pgid int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.watched[pgid] {
		g.t.Errorf("Release(%d) of a group not watched", pgid)
	}
	// Released before the leader is reaped: the group id is still taken.
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pgid)); err != nil {
		g.t.Errorf("Release(%d) after the group's leader was reaped: its id may be reused", pgid)
	}
	delete(g.watched, pgid)
	g.calls = append(g.calls, "release")
}

// TestGuardWatchesEachStep: each step's group is watched while it runs and
// released before its leader is reaped; a guard that fails is told once.
func TestGuardWatchesEachStep(t *testing.T) {
	g := &fakeGuard{t: t, watched: map[int]bool{}}
	st, _ := run(t, t.Context(), Options{Guard: g, KillGrace: 3 * time.Second}, nil,
		forge.Step{Run: "true"}, forge.Step{Run: "sleep 1000 & exit 3", ContinueOnError: true}, forge.Step{Run: "echo hi"})
	if st != forge.StatusSuccess {
		t.Errorf("job = %s, want success", st)
	}
	want := []string{"watch 3s", "release", "watch 3s", "release", "watch 3s", "release"}
	if !slices.Equal(g.calls, want) {
		t.Errorf("guard calls %q, want %q", g.calls, want)
	}

	g = &fakeGuard{t: t, watched: map[int]bool{}, fail: fmt.Errorf("no guard binary")}
	st, rec := run(t, t.Context(), Options{Guard: g}, nil, forge.Step{Run: "true"}, forge.Step{Run: "true"})
	if st != forge.StatusSuccess {
		t.Errorf("job with a failing guard = %s, want success", st)
	}
	if sys := rec.texts(forge.System); len(sys) != 1 || !strings.Contains(sys[0], "cannot guard this job's processes (no guard binary)") {
		t.Errorf("system lines %q, want one saying the job is unguarded", sys)
	}
}
