package main

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// leaseSysProcAttr starts forge lease's CMD in its own process group, with
// SIGTERM when forge lease dies (Pdeathsig).
func leaseSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// becomeSubreaper makes orphans of this process's descendants its
// children (PR_SET_CHILD_SUBREAPER), so forge lease can reap them.
func becomeSubreaper() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }
