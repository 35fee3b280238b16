package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// A clean workspace DIR is owned by the forge process that holds an
// exclusive flock on DIR.forge-lock, a file that starts with lockMagic. The
// kernel drops the lock when that process dies, however it dies.
const (
	lockSuffix = ".forge-lock"
	lockMagic  = "forge clean workspace\n"
)

// ownerLock is a clean workspace's lock file, held while its job runs.
type ownerLock struct {
	f    *os.File
	path string
}

// lockOwner creates and locks dir's lock file. The file is locked under a
// temporary name and then renamed, so RemoveLeftovers never sees it
// unlocked. Where the file system has no flock, the workspace gets no lock
// file (nil): it is removed after its job as ever, only not after a crash.
func lockOwner(dir string) (*ownerLock, error) {
	f, err := os.CreateTemp(filepath.Dir(dir), ".forge-lock-*")
	if err != nil {
		return nil, fmt.Errorf("cannot lock the clean workspace %s: %w", dir, err)
	}
	tmp := f.Name()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, nil
	}
	_, err = fmt.Fprintf(f, "%sdir %s\npid %d\n", lockMagic, dir, os.Getpid())
	if err == nil {
		err = os.Rename(tmp, dir+lockSuffix)
	}
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("cannot lock the clean workspace %s: %w", dir, err)
	}
	return &ownerLock{f: f, path: dir + lockSuffix}, nil
}

// unlockOwner removes the lock file, then drops the lock: a RemoveLeftovers
// that opened the file meanwhile finds it gone once it gets the lock.
func unlockOwner(l *ownerLock) {
	if l == nil {
		return
	}
	os.Remove(l.path)
	l.f.Close()
}

// RemoveLeftovers removes the clean workspaces in TempDir that a forge
// process left when it died (killed with SIGKILL, or the machine stopped),
// with git's record of each when their checkout still exists, and returns
// how many it removed. Workspaces of live forge processes, of this one or
// another sharing TempDir, are left alone, and so are kept ones (--keep).
// forge server and forge exec call it at start.
func (b *Backend) RemoveLeftovers(ctx context.Context) (int, error) {
	dir := b.opts.TempDir
	if dir == "" {
		dir = os.TempDir()
	}
	locks, err := filepath.Glob(filepath.Join(dir, "forge-*"+lockSuffix))
	if err != nil {
		return 0, err
	}
	n := 0
	var errs error
	for _, path := range locks {
		removed, err := b.removeLeftover(ctx, path)
		if removed {
			n++
		}
		errs = errors.Join(errs, err)
	}
	return n, errs
}

// removeLeftover removes the workspace of the lock file path when its owner
// is dead, and reports whether it did.
func (b *Backend) removeLeftover(ctx context.Context, path string) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // its owner finished meanwhile
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return false, nil // its owner lives
	}
	// Removed (its owner finished) or replaced since it was opened: not a
	// leftover, or another forge's to remove.
	if fi, err := f.Stat(); err != nil {
		return false, err
	} else if cur, err := os.Stat(path); err != nil || !os.SameFile(fi, cur) {
		return false, nil
	}
	head := make([]byte, len(lockMagic))
	if _, err := io.ReadFull(f, head); err != nil || string(head) != lockMagic {
		return false, nil // not forge's
	}
	ws := strings.TrimSuffix(path, lockSuffix)
	common := worktreeCommonDir(ws)
	makeWritable(ws)
	if err := os.RemoveAll(ws); err != nil {
		return false, fmt.Errorf("removing the clean workspace %s left by a forge that died: %w", ws, err)
	}
	if common != "" {
		mu := b.repoLock(common)
		mu.Lock()
		git(ctx, common, "worktree", "prune")
		mu.Unlock()
	}
	os.Remove(path)
	return true, nil
}

// worktreeCommonDir returns the git directory of the checkout the worktree
// ws belongs to, or "" when there is none any more.
func worktreeCommonDir(ws string) string {
	b, err := os.ReadFile(filepath.Join(ws, ".git"))
	if err != nil {
		return ""
	}
	gitdir, ok := bytes.CutPrefix(bytes.TrimSpace(b), []byte("gitdir: "))
	if !ok {
		return ""
	}
	// gitdir is COMMON/worktrees/NAME.
	common := filepath.Dir(filepath.Dir(string(gitdir)))
	if filepath.Base(filepath.Dir(string(gitdir))) != "worktrees" {
		return ""
	}
	if fi, err := os.Stat(common); err != nil || !fi.IsDir() {
		return ""
	}
	return common
}

// makeWritable makes the directories under dir writable, so that they can
// be removed: steps may leave read-only ones (Go's module cache does).
func makeWritable(dir string) {
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
}
