//go:build linux

package shell

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/forgeci/forge"
)

// zombieChildren lists the zombie children of this process.
func zombieChildren(t *testing.T) []string {
	t.Helper()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	self := strconv.Itoa(os.Getpid())
	var out []string
	for _, d := range dirs {
		b, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		i := strings.LastIndexByte(string(b), ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[0] == "Z" && f[1] == self {
			out = append(out, filepath.Base(d))
		}
	}
	return out
}

// TestReapOrphans makes this test process a subreaper, as forgexec is PID 1
// in a container: the background children a step leaves are killed and
// handed to it as zombies, and ReapOrphans collects them.
func TestReapOrphans(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		skipUnlessCI(t, "cannot become a subreaper: %v", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	m := marker(t)
	killMarked(t, m)
	ReapOrphans() // whatever earlier tests left
	st, _ := run(t, t.Context(), Options{}, nil, forge.Step{Run: "sleep " + m + " & sleep " + m + " & echo started"})
	if st != forge.StatusSuccess {
		t.Fatalf("got %s, want success", st)
	}
	assertNoneRunning(t, m)
	// The killed sleeps are handed to this process a moment after the
	// kill; an earlier test may have left a zombie of its own as well.
	var z []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if z = zombieChildren(t); len(z) >= 2 {
			break
		}
	}
	if len(z) < 2 {
		t.Fatalf("zombie children before reaping: got %q, want at least the two sleeps", z)
	}
	if n := ReapOrphans(); n < 2 {
		t.Errorf("ReapOrphans() = %d, want at least 2", n)
	}
	if z := zombieChildren(t); len(z) != 0 {
		t.Errorf("zombie children after reaping: %q", z)
	}
	if n := ReapOrphans(); n != 0 {
		t.Errorf("second ReapOrphans() = %d, want 0", n)
	}
}
