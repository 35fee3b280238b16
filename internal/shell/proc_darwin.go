package shell

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// The macOS versions of proc_linux.go, so forge exec runs on a Mac: macOS
// has no pipe2, no waitid and no /proc.

// pipe returns a pipe whose read end forge polls and whose write end is
// for a child only (see proc_linux.go). Without pipe2, ForkLock keeps a
// child started meanwhile from inheriting the descriptors before they are
// close-on-exec, as os.Pipe does.
func pipe() (r, w *os.File, err error) {
	var p [2]int
	syscall.ForkLock.RLock()
	err = unix.Pipe(p[:])
	if err == nil {
		unix.CloseOnExec(p[0])
		unix.CloseOnExec(p[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, nil, os.NewSyscallError("pipe", err)
	}
	if err := unix.SetNonblock(p[0], true); err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, nil, os.NewSyscallError("fcntl", err)
	}
	return os.NewFile(uintptr(p[0]), "|0"), os.NewFile(uintptr(p[1]), "|1"), nil
}

// killPipeHolders finds nothing on macOS, which has no /proc to search for
// the holders of a pipe: a process that left the step's process group
// (setsid) and kept its output open is not killed; the step's reader gives
// up on the pipe after DrainTimeout.
func killPipeHolders(files []*os.File) int { return 0 }

// waitExited blocks until process pid has exited, without reaping it: a
// kqueue reports the exit of a process (EVFILT_PROC, NOTE_EXIT) and leaves
// its status to wait.
func waitExited(pid int) error {
	kq, err := unix.Kqueue()
	if err != nil {
		return os.NewSyscallError("kqueue", err)
	}
	defer unix.Close(kq)
	var change unix.Kevent_t
	unix.SetKevent(&change, pid, unix.EVFILT_PROC, unix.EV_ADD|unix.EV_ONESHOT)
	change.Fflags = unix.NOTE_EXIT
	events := make([]unix.Kevent_t, 1)
	for {
		_, err := unix.Kevent(kq, []unix.Kevent_t{change}, events, nil)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ESRCH):
			return nil // it had exited already (a zombie we have not reaped)
		}
		return os.NewSyscallError("kevent", err)
	}
}
