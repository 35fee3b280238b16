package runner

import (
	"context"
	"maps"
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
		Backend:  jobEnvBackend{inner: e.Backend, jobEnv: run.JobEnv},
		Leaser:   e.Leaser,
		Parallel: e.Parallel,
		Reporter: rep,
	})
	res, err := eng.Run(ctx, plan, engine.RunInfo{
		BuildID:   strconv.FormatInt(run.Build.ID, 10),
		Env:       run.Env,
		Secrets:   run.Secrets,
		Workspace: run.Workspace,
		Resume:    run.Resume,
	})
	if err != nil {
		return forge.StatusError, err
	}
	return res.Status, nil
}

// jobEnvBackend adds the per-job variables (FORGE_STATUS_URL of the job's
// own page) that the engine's build-wide environment cannot carry.
type jobEnvBackend struct {
	inner  forge.Backend
	jobEnv func(job string) map[string]string
}

func (b jobEnvBackend) Run(ctx context.Context, run *forge.JobRun, rep forge.Reporter) (forge.Status, error) {
	if b.jobEnv != nil && run.Job != nil {
		c := *run
		c.Env = maps.Clone(run.Env)
		if c.Env == nil {
			c.Env = map[string]string{}
		}
		maps.Copy(c.Env, b.jobEnv(run.Job.Name))
		run = &c
	}
	return b.inner.Run(ctx, run, rep)
}

// Attach passes a reattach on to the backend (see forge.Attacher).
func (b jobEnvBackend) Attach(ctx context.Context, handle []byte, from int, rep forge.Reporter) (forge.Status, error) {
	a, ok := b.inner.(forge.Attacher)
	if !ok {
		return forge.StatusError, forge.Errorf(forge.ENOTIMPL, "the backend cannot reattach to a running job")
	}
	return a.Attach(ctx, handle, from, rep)
}
