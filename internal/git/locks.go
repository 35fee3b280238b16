package git

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/forgeci/forge"
)

// RemoveStaleLocks removes the *.lock files git leaves in the mirrors when
// it dies mid-operation (a server killed -9, a power cut): git refuses to
// touch a ref or index while its lock file exists. Call it before the
// first fetch: only this Git runs git in its directory, and not yet, so
// every lock found then is stale. It returns how many files it removed.
func (g *Git) RemoveStaleLocks() (int, error) {
	n := 0
	err := filepath.WalkDir(g.opts.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) && path == g.opts.Dir {
				return filepath.SkipDir
			}
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(d.Name(), ".lock") {
			if err := os.Remove(path); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return n, forge.Errorf(forge.EINTERNAL, "removing stale git locks: %w", err)
	}
	return n, nil
}
