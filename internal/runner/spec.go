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
// see. The trigger creates a build's job rows with the same options, so
// the plan compiled at run time has the same jobs.
//
// Event is the hook's event ("pull_request", "push", "tag", "manual"),
// "merged" for a merged pull request, and "manual" when the hook has
// none; Branch is the branch the change goes into for a pull request (as
// Drone and Woodpecker match it) and the built branch otherwise.
func CompileOptions(b *forge.Build) spec.Options {
	h := b.Hook
	o := spec.Options{Action: b.Action, Event: h.Event, Branch: h.Branch, Tag: h.Tag, Paths: h.Paths}
	if h.Event == "pull_request" {
		o.Branch = h.Target
		if h.Merged {
			o.Event = "merged"
		}
	}
	if o.Event == "" {
		o.Event = "manual"
	}
	return o
}
