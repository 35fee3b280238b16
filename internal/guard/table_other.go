//go:build !linux

package guard

import "os"

// memTable returns nil: only Linux has memfd; the caller falls back to an
// unlinked temporary file.
func memTable() *os.File { return nil }
