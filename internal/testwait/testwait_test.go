package testwait

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

type recorder struct{ msg string }

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
}

func TestWithinReturnsOnceTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	go func() {
		for range 3 {
			n.Add(1)
		}
	}()
	r := &recorder{}
	Within(r, time.Minute, "three", func() bool { return n.Load() == 3 })
	if r.msg != "" {
		t.Fatalf("failed: %s", r.msg)
	}
}

func TestWithinFailsNamingWhatItWaitedFor(t *testing.T) {
	r := &recorder{}
	start := time.Now()
	Within(r, 30*time.Millisecond, "the moon", func() bool { return false })
	if !strings.Contains(r.msg, "still waiting for the moon") || !strings.Contains(r.msg, "gave up after") {
		t.Errorf("message = %q, want it to name what it waited for and how long", r.msg)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("gave up after %v, before the 30ms deadline", d)
	}
}

func TestScale(t *testing.T) {
	t.Setenv("FORGE_TEST_WAIT_SCALE", "")
	if got := Scale(time.Second); got != time.Second {
		t.Errorf("unset: %v, want 1s", got)
	}
	t.Setenv("FORGE_TEST_WAIT_SCALE", "3")
	if got := Scale(time.Second); got != 3*time.Second {
		t.Errorf("3: %v, want 3s", got)
	}
	t.Setenv("FORGE_TEST_WAIT_SCALE", "0.1")
	if got := Scale(time.Second); got != time.Second {
		t.Errorf("0.1: %v, want 1s (never shorter)", got)
	}
}
