package shell

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/testwait"
)

// recorder keeps every event; it checks that reports never overlap.
type recorder struct {
	mu     sync.Mutex
	busy   bool
	events []forge.Event
	t      testing.TB
}

func (r *recorder) Report(e forge.Event) {
	r.mu.Lock()
	if r.busy {
		r.t.Errorf("Report called while another Report is running")
	}
	r.busy = true
	r.events = append(r.events, e)
	r.busy = false
	r.mu.Unlock()
}

// lines returns the lines reported, in order.
func (r *recorder) lines() []forge.LogLine {
	var out []forge.LogLine
	for _, e := range r.events {
		if e.Type == forge.EventLine {
			out = append(out, *e.Line)
		}
	}
	return out
}

// texts returns the text of the lines of stream s ("" for all streams).
func (r *recorder) texts(s forge.Stream) []string {
	var out []string
	for _, l := range r.lines() {
		if s == "" || l.Stream == s {
			out = append(out, l.Text)
		}
	}
	return out
}

// finished returns the EventStepFinished events, in order.
func (r *recorder) finished() []forge.Event {
	var out []forge.Event
	for _, e := range r.events {
		if e.Type == forge.EventStepFinished {
			out = append(out, e)
		}
	}
	return out
}

var testEnv = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"}

// run runs steps in a temporary directory and returns the job's status and
// the events.
func run(t testing.TB, ctx context.Context, opts Options, secrets map[string]string, steps ...forge.Step) (forge.Status, *recorder) {
	t.Helper()
	rec := &recorder{t: t}
	st, err := RunSteps(ctx, steps, t.TempDir(), testEnv, secrets, rec, opts)
	if err != nil {
		t.Fatalf("RunSteps: %v", err)
	}
	return st, rec
}

// marker returns a sleep duration unique to this test run, e.g. "987.1234567",
// so `sleep MARKER` can be found in the process table.
func marker(t testing.TB) string {
	b := make([]byte, 4)
	rand.Read(b)
	n, _ := strconv.ParseUint(hex.EncodeToString(b), 16, 64)
	return "987." + strconv.FormatUint(n, 10)
}

// running returns the live processes (not zombies) whose command line
// contains m.
func running(t testing.TB, m string) []string {
	t.Helper()
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range dirs {
		cmdline, err := os.ReadFile(d + "/cmdline")
		if err != nil || !bytes.Contains(cmdline, []byte(m)) {
			continue
		}
		stat, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		// The state follows the command name in parentheses.
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			continue
		}
		out = append(out, filepath.Base(d)+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
	return out
}

// assertNoneRunning fails when a process with m in its command line lives,
// allowing a moment for the kernel to finish killing.
func assertNoneRunning(t testing.TB, m string) {
	t.Helper()
	var left []string
	if err := testwait.Until(testwait.Scale(10*time.Second), func() bool {
		left = running(t, m)
		return len(left) == 0
	}); err != nil {
		t.Errorf("processes left running: %q (%v)", left, err)
	}
}

// skipUnlessCI skips the test for a missing tool or ability, except under
// CI=true, where everything the tests need must be there.
func skipUnlessCI(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// killMarked kills whatever test processes are left, so a failing test does
// not leak them.
func killMarked(t testing.TB, m string) {
	t.Cleanup(func() {
		for _, p := range running(t, m) {
			pid, _ := strconv.Atoi(strings.SplitN(p, ":", 2)[0])
			if pid > 0 {
				if proc, err := os.FindProcess(pid); err == nil {
					proc.Kill()
				}
			}
		}
	})
}
