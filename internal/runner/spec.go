package runner

import (
	"context"
	"os"
	"path/filepath"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/spec"
)

// SpecFile is the build spec's name in a repository's root.
const SpecFile = ".forge.yml"

// SpecPlanner reads .forge.yml from the workspace and compiles the build's
// action for its hook (event, branch, tag and changed paths, for when:).
// A missing or invalid file is an EINVALID error listing the problems with
// their positions in .forge.yml.
func SpecPlanner() Planner {
	return PlannerFunc(func(ctx context.Context, dir string, b *forge.Build) (*forge.Plan, error) {
		data, err := os.ReadFile(filepath.Join(dir, SpecFile))
		if os.IsNotExist(err) {
			return nil, forge.Errorf(forge.EINVALID, "%s: no such file at commit %s: add one to the repository's root (see docs/spec.md)", SpecFile, short(b.Hook.SHA))
		}
		if err != nil {
			return nil, forge.WrapError(forge.EINTERNAL, err, "reading "+SpecFile)
		}
		f, err := spec.Parse(SpecFile, data)
		if err != nil {
			return nil, err
		}
		return spec.Compile(f, CompileOptions(b))
	})
}

// CompileOptions are the spec.Options of build b: what when: conditions
// see. The trigger creates a build's job rows with the same options.
func CompileOptions(b *forge.Build) spec.Options {
	h := b.Hook
	event := h.Event
	if event == "" {
		event = "manual"
	}
	return spec.Options{Action: b.Action, Event: event, Branch: h.Branch, Tag: h.Tag, Paths: h.Paths}
}
