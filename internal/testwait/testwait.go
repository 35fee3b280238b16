// Package testwait waits, in tests, for something another goroutine or
// process makes true: a build that finishes, a file that appears, a
// connection that drops. One helper for every package, so that how long
// a test waits on a slow machine is decided in one place.
//
// A deadline here bounds a failure, it is not a measurement: a test that
// passes never waits for it, so it is generous. A loaded 2-core machine
// running the race detector can be 20 times slower than a quiet laptop.
// FORGE_TEST_WAIT_SCALE multiplies every deadline (default 1).
package testwait

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Patience is how long For waits before it fails the test.
const Patience = 2 * time.Minute

// TB is the part of testing.TB these helpers use.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Scale returns d multiplied by FORGE_TEST_WAIT_SCALE when that is set to
// a number above 1, for a machine slower still than the deadlines allow.
func Scale(d time.Duration) time.Duration {
	if f, err := strconv.ParseFloat(os.Getenv("FORGE_TEST_WAIT_SCALE"), 64); err == nil && f > 1 {
		return time.Duration(float64(d) * f)
	}
	return d
}

// For polls cond until it returns true, and fails the test with what
// ("build 3 to finish") if it has not within Patience.
func For(t TB, what string, cond func() bool) {
	t.Helper()
	Within(t, Patience, what, cond)
}

// Within polls cond until it returns true, and fails the test with what
// if it has not within Scale(d). Polls start 1ms apart and slow down to
// 50ms, so a quick event is seen quickly and a slow one costs little.
func Within(t TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := Until(Scale(d), cond); err != nil {
		t.Fatalf("still waiting for %s: %v", what, err)
	}
}

// Until polls cond until it returns true, or returns an error saying how
// long it waited. It is for callers that must not fail a test from the
// goroutine they run on, or that report the failure themselves.
func Until(d time.Duration, cond func() bool) error {
	start := time.Now()
	deadline := start.Add(d)
	pause := time.Millisecond
	for {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %v", time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(pause)
		if pause < 50*time.Millisecond {
			pause *= 2
		}
	}
}

// CPU returns the CPU time (user and system) the process has used. A test
// that bounds how much work something takes measures CPU time: a loaded
// machine stretches wall time by however long others hold the cores.
func CPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
