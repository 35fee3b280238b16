package runner

import (
	"context"
	"strconv"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/engine"
)

// Engine is the Executor of forge server: internal/engine running each
// build's plan on Backend, with Leaser for jobs that need resources.
type Engine struct {
	Backend forge.Backend
	Leaser  forge.Leaser
	// Parallel bounds the jobs of one build running at once (default: the
	// number of CPUs). Jobs waiting for a lease do not count.
	Parallel int
}

var _ Executor = Engine{}

// Execute runs plan with a new engine.Engine reporting to rep.
func (e Engine) Execute(ctx context.Context, plan *forge.Plan, run *Run, rep forge.Reporter) (forge.Status, error) {
	eng := engine.New(engine.Options{
		Backend:  e.Backend,
		Leaser:   e.Leaser,
		Parallel: e.Parallel,
		Reporter: rep,
	})
	res, err := eng.Run(ctx, plan, engine.RunInfo{
		BuildID:      strconv.FormatInt(run.Build.ID, 10),
		Env:          run.Env,
		JobStatusURL: run.JobURL,
		Secrets:      run.Secrets,
		Workspace:    run.Workspace,
		Resume:       run.Resume,
	})
	if err != nil {
		return forge.StatusError, err
	}
	return res.Status, nil
}
