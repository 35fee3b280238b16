package main

import "syscall"

// leaseSysProcAttr starts forge lease's CMD in its own process group.
// macOS has no Pdeathsig: should forge lease die without cleaning up, the
// lease guard process (startLeaseGuard) is what stops CMD's group.
func leaseSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// becomeSubreaper does nothing on macOS, which has no subreapers: orphans
// of CMD go to launchd, which reaps them.
func becomeSubreaper() {}
