package shell

import "syscall"

// ReapOrphans collects the exit status of every child of this process that
// has exited, and returns how many it collected (see reap.go; on macOS,
// with wait4, which has the same effect as Linux's waitid here).
func ReapOrphans() int {
	n := 0
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return n
		}
		n++
	}
}
