package runner

import (
	"context"
	"os"
	"path/filepath"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/spec"
)

// SpecPlanner reads .forge.yml from the workspace and compiles the build's
// action for its hook (event, branch, tag and changed paths, for when:).
// A missing or invalid file is an EINVALID error listing the problems with
// their positions in .forge.yml.
func SpecPlanner() Planner {
	return PlannerFunc(func(ctx context.Context, dir string, b *forge.Build) (*forge.Plan, error) {
		data, err := os.ReadFile(filepath.Join(dir, spec.FileName))
		if os.IsNotExist(err) {
			return nil, forge.Errorf(forge.EINVALID, "%s: no such file at commit %s: add one to the repository's root (see docs/spec.md)", spec.FileName, forge.ShortSHA(b.Hook.SHA))
		}
		if err != nil {
			return nil, forge.WrapError(forge.EINTERNAL, err, "reading "+spec.FileName)
		}
		f, err := spec.Parse(spec.FileName, data)
		if err != nil {
			return nil, err
		}
		return spec.Compile(f, spec.BuildOptions(b))
	})
}
