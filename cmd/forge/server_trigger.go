package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/forgeci/forge/internal/git"
	httpapi "github.com/forgeci/forge/internal/http"
	"github.com/forgeci/forge/internal/runner"
	"github.com/forgeci/forge/internal/sqldb"
)

// processor turns stored webhook deliveries into builds (internal/trigger).
type processor struct {
	notify func()
	run    func(ctx context.Context) error
	manual httpapi.Trigger
}

// Notify wakes the processor after a delivery was stored.
func (p *processor) Notify() {
	if p.notify != nil {
		p.notify()
	}
}

// Run processes deliveries until ctx ends.
func (p *processor) Run(ctx context.Context) error {
	if p.run == nil {
		<-ctx.Done()
		return nil
	}
	return p.run(ctx)
}

func (p *processor) trigger() httpapi.Trigger { return p.manual }

// newProcessor wires internal/trigger.
func newProcessor(m *serverMain, db *sqldb.DB, g *git.Git, run *runner.Runner, log *slog.Logger, reg prometheus.Registerer) (*processor, error) {
	log.Warn("internal/trigger is not wired yet: webhook deliveries are stored but not turned into builds")
	return &processor{}, nil
}
