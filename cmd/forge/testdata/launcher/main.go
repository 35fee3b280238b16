// Command launcher runs a command and writes, to file descriptor 3, its
// wall time in nanoseconds, its peak resident memory and the launcher's
// own, in KiB, and the CPU time (user and system) of the command and of
// the processes it waited for, in nanoseconds: "WALL CHILD SELF CPU". The exec benchmarks use it because the
// peak RSS of a process started straight from a large test binary counts
// the test's memory, which the child shares until it execs; this launcher
// is small, so what it adds to CHILD is bounded by SELF (its own peak since
// its exec, from /proc/self/status, since getrusage would count the test
// binary's memory for the same reason).
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: launcher CMD [ARGS...]")
		os.Exit(2)
	}
	cmd := exec.Command(os.Args[1], os.Args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	var child syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &child)
	cpu := time.Duration(child.Utime.Nano() + child.Stime.Nano())
	fmt.Fprintf(os.NewFile(3, "rusage"), "%d %d %d %d\n", int64(wall), child.Maxrss, selfHWM(), int64(cpu))
	if err != nil {
		if cmd.ProcessState != nil && cmd.ProcessState.ExitCode() > 0 {
			os.Exit(cmd.ProcessState.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "launcher:", err)
		os.Exit(1)
	}
}

// selfHWM is this process's peak resident memory in KiB (VmHWM).
func selfHWM() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return -1
}
