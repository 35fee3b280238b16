package shell

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The parts of running a step that use Linux's interfaces (pipe2, waitid,
// /proc); proc_darwin.go has the macOS versions.

// pipe returns a pipe whose read end forge polls and whose write end is
// for a child only: unlike os.Pipe, the write end is left blocking and out
// of the poller, which saves a few system calls per step.
func pipe() (r, w *os.File, err error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, os.NewSyscallError("pipe2", err)
	}
	if err := unix.SetNonblock(p[0], true); err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, nil, os.NewSyscallError("fcntl", err)
	}
	return os.NewFile(uintptr(p[0]), "|0"), os.NewFile(uintptr(p[1]), "|1"), nil
}

// killPipeHolders sends SIGKILL to every process that has the write end of
// one of the pipes of files open, and returns how many there were. Only the
// step's processes can: forge closed its write ends after starting the
// step, and a child forge forks for another job holds forge's descriptors
// (read ends included) only until it execs, as they are close-on-exec.
func killPipeHolders(files []*os.File) int {
	var targets []string
	for _, f := range files {
		fi, err := f.Stat()
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			targets = append(targets, "pipe:["+strconv.FormatUint(st.Ino, 10)+"]")
		}
	}
	procs, _ := os.ReadDir("/proc")
	killed := 0
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		dir := "/proc/" + p.Name()
		fds, _ := os.ReadDir(dir + "/fd")
		for _, fd := range fds {
			link, err := os.Readlink(dir + "/fd/" + fd.Name())
			if err != nil || !slices.Contains(targets, link) || !writeOnly(dir+"/fdinfo/"+fd.Name()) {
				continue
			}
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
			break
		}
	}
	return killed
}

// writeOnly reports whether the descriptor described by the fdinfo file was
// opened for writing only, as a pipe's write end is.
func writeOnly(fdinfo string) bool {
	b, err := os.ReadFile(fdinfo)
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			return err == nil && flags&unix.O_ACCMODE == unix.O_WRONLY
		}
	}
	return false
}

// waitExited blocks until process pid has exited, without reaping it.
func waitExited(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return err
		}
	}
}
