package guard

import (
	"os"

	"golang.org/x/sys/unix"
)

// memTable returns an in-memory file (memfd), or nil when the kernel
// refuses one.
func memTable() *os.File {
	fd, err := unix.MemfdCreate("forge-guard", unix.MFD_CLOEXEC)
	if err != nil {
		return nil
	}
	return os.NewFile(uintptr(fd), "forge-guard")
}
