package main

import (
	"context"
	"log/slog"

	"github.com/forgeci/forge/internal/prometheus"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/git"
	"github.com/forgeci/forge/internal/github"
	"github.com/forgeci/forge/internal/runner"
	"github.com/forgeci/forge/internal/sqldb"
	"github.com/forgeci/forge/internal/trigger"
)

// newProcessor wires internal/trigger: stored deliveries become builds,
// each new build wakes the runner, and a superseded build is cancelled
// through the runner (which kills it if it runs). Servers sharing the
// database claim repositories' deliveries under the runner's ID, so each
// delivery is processed by one of them.
func newProcessor(c *serverConfig, db *sqldb.DB, g *git.Git, run *runner.Runner, changes forge.Observer, gh *reporting, log *slog.Logger, reg prometheus.Registerer) (*trigger.Processor, error) {
	keep := c.Builds.CancelSuperseded != nil && !*c.Builds.CancelSuperseded
	return trigger.New(trigger.Options{
		Deliveries:       db,
		Claims:           db,
		ID:               run.ID(),
		Home:             run.Home(),
		Registerer:       reg,
		Repos:            db,
		Builds:           db,
		Logs:             db,
		Git:              g,
		ParseHook:        github.ParseHook,
		ProductionBranch: c.Builds.ProductionBranch,
		BuildDrafts:      c.Builds.BuildDrafts,
		KeepSuperseded:   keep,
		Cancel: func(ctx context.Context, id int64, reason string) error {
			_, err := run.Cancel(ctx, id, reason)
			return err
		},
		Created: func(b *forge.Build) {
			run.Notify()
			publishCreated(db, changes, b, log)
		},
		Logger:       log.With("component", "trigger"),
		ForkApproval: c.Builds.ForkApproval,
		MainBranch:   c.GitHub.MainBranch,
		Reply:        gh.reply(),
		Promote:      gh.promote(c),
		CanWrite:     gh.canWrite(),
	})
}
