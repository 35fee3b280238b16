package main

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// reInitTrace reads a line of GODEBUG=inittrace=1:
// "init PKG @0.5 ms, 0.01 ms clock, 512 bytes, 4 allocs".
var reInitTrace = regexp.MustCompile(`^init (\S+) @\S+ ms, \S+ ms clock, (\d+) bytes, (\d+) allocs$`)

// TestStartupInitBudget: forge's own packages do next to nothing when the
// program starts (issue 8 item 11). Every command pays for their
// package-level variables and init functions, forge exec included, so a
// regexp compiled or a metric registered there shows here as allocations.
// Allocation counts, unlike times, do not depend on the machine's load.
func TestStartupInitBudget(t *testing.T) {
	cmd := exec.Command(buildForge(t), "version")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("forge version: %v\n%s", err, out)
	}
	const budget = 24 // allocations of all of forge's packages together
	total, seen := 0, 0
	for _, line := range strings.Split(string(out), "\n") {
		m := reInitTrace.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		seen++
		if m[1] != "main" && !strings.HasPrefix(m[1], module+"/") && m[1] != module {
			continue
		}
		allocs, _ := strconv.Atoi(m[3])
		total += allocs
		t.Logf("%s: %s bytes, %d allocs", m[1], m[2], allocs)
	}
	if seen == 0 {
		t.Fatalf("no inittrace lines in:\n%s", out)
	}
	if total > budget {
		t.Errorf("forge's packages allocate %d times while the program starts, more than %d: move the work out of package-level variables and init functions", total, budget)
	}
}

const module = "github.com/forgeci/forge"
