//go:build linux

package shell

import "golang.org/x/sys/unix"

// ReapOrphans collects the exit status of every child of this process that
// has exited, and returns how many it collected.
//
// A step's background children are killed when the step ends; the kernel
// makes them children of the nearest subreaper, which is init, or forgexec
// itself when it is PID 1 in a container. There nobody else collects them,
// and they would stay zombies, so forgexec calls ReapOrphans after RunSteps.
// It must only be called when no other part of the process is waiting for a
// child it started (RunSteps has returned, no os/exec command is running):
// it would take that child's exit status away.
func ReapOrphans() int {
	n := 0
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		// ECHILD: no children at all. With WNOHANG, the kernel leaves
		// info zeroed when no child has exited, and sets Signo to
		// SIGCHLD when it collected one.
		if err != nil || info.Signo == 0 {
			return n
		}
		n++
	}
}
