package trigger

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/spec"
)

// specJob is the one job of a build whose spec cannot be compiled.
const specJob = "spec"

// newBuild is a build planned for a delivery, before and after it is
// stored.
type newBuild struct {
	b    *forge.Build
	jobs []*forge.BuildJob
	// failed is the message of a build that failed before it could run
	// (its spec job's log).
	failed string
	// created is set when storing created it; an earlier attempt of the
	// same delivery may have (then b is that build).
	created bool
}

// plan returns the builds h makes from the spec f (or its error specErr):
// one per action that runs for h, or only action when it is not "". With
// none it says why nothing runs.
func (p *Processor) plan(h *forge.Hook, deliveryID, action string, f *spec.File, specErr string) ([]*newBuild, string) {
	var actions []string
	switch {
	case action != "":
		actions = []string{action}
	case f != nil && f.HasOn():
		actions = f.ActionsFor(decisionHook(h))
		if len(actions) == 0 {
			return nil, fmt.Sprintf("the on: section of %s runs nothing for %s", p.opts.SpecFile, describe(h))
		}
	default:
		actions = p.defaultActions(decisionHook(h))
		if len(actions) == 0 {
			return nil, fmt.Sprintf("no action runs for %s by default (add an on: section to %s)", describe(h), p.opts.SpecFile)
		}
	}
	actions = slices.DeleteFunc(actions, func(a string) bool { return !forkAllows(h, a) })
	if len(actions) == 0 {
		return nil, fmt.Sprintf("pull request #%d comes from a fork, which never runs deploy-type actions", h.PullRequest)
	}
	var builds []*newBuild
	for _, a := range actions {
		if specErr != "" {
			builds = append(builds, p.failed(h, deliveryID, a, specErr))
		} else {
			builds = append(builds, p.planned(h, deliveryID, a, f))
		}
	}
	return builds, ""
}

// planned compiles action into a queued build with one pending job row
// per plan job. An action the spec cannot compile (an action it does not
// have, a when: it cannot evaluate) gives a failed build.
func (p *Processor) planned(h *forge.Hook, deliveryID, action string, f *spec.File) *newBuild {
	b := p.newBuild(h, deliveryID, action)
	// The runner compiles the build again in its workspace with the same
	// options: the job rows made here are the jobs it runs.
	plan, err := spec.Compile(f, spec.BuildOptions(b))
	if err != nil {
		return p.failed(h, deliveryID, action, strings.TrimRight(spec.Report(err), "\n"))
	}
	if len(plan.Jobs) == 0 {
		return p.failed(h, deliveryID, action, fmt.Sprintf("%s: action %s has no jobs", p.opts.SpecFile, action))
	}
	jobs := make([]*forge.BuildJob, len(plan.Jobs))
	for i, j := range plan.Jobs {
		jobs[i] = &forge.BuildJob{Name: j.Name, Status: forge.StatusPending, Needs: slices.Clone(j.Needs)}
	}
	b.Status = p.initialStatus(h)
	return &newBuild{b: b, jobs: jobs}
}

// failed is a build that failed before it could run: its one job, "spec",
// carries msg as its error and its log.
func (p *Processor) failed(h *forge.Hook, deliveryID, action, msg string) *newBuild {
	now := p.opts.Now().UTC()
	b := p.newBuild(h, deliveryID, action)
	b.Status = forge.StatusError
	b.Error = msg
	b.Started, b.Finished = now, now
	job := &forge.BuildJob{Name: specJob, Status: forge.StatusError, Error: forge.FirstLine(msg), Started: now, Finished: now}
	return &newBuild{b: b, jobs: []*forge.BuildJob{job}, failed: msg}
}

// failAll is a failed build for each default action of hook (the spec
// cannot be read without the commit).
func (p *Processor) failAll(h *forge.Hook, deliveryID, msg string) []*newBuild {
	var out []*newBuild
	for _, action := range p.defaultActions(decisionHook(h)) {
		out = append(out, p.failed(h, deliveryID, action, msg))
	}
	return out
}

func (p *Processor) newBuild(h *forge.Hook, deliveryID, action string) *forge.Build {
	return &forge.Build{
		RepoID:     h.Repo.ID,
		Action:     action,
		Hook:       *h,
		DeliveryID: deliveryID,
		Created:    p.opts.Now().UTC(),
	}
}

// storeBuilds creates nbs in order, in one transaction when the store can
// batch; a build an earlier attempt of its delivery created is found
// instead (created stays false).
func (p *Processor) storeBuilds(ctx context.Context, nbs []*newBuild) error {
	bb, batch := p.opts.Builds.(buildBatcher)
	if !batch || len(nbs) < 2 {
		for _, nb := range nbs {
			created, err := p.store(ctx, nb.b, nb.jobs)
			if err != nil {
				return err
			}
			nb.created = created
		}
		return nil
	}
	builds := make([]*forge.Build, len(nbs))
	jobs := make([][]*forge.BuildJob, len(nbs))
	for i, nb := range nbs {
		builds[i], jobs[i] = nb.b, nb.jobs
	}
	for i, err := range bb.CreateBuilds(ctx, builds, jobs) {
		nb := nbs[i]
		switch {
		case err == nil:
			nb.created = true
		case forge.ErrorCode(err) == forge.ECONFLICT && nb.b.DeliveryID != "":
			if err := p.existing(ctx, nb.b); err != nil {
				return err
			}
		default:
			return err
		}
	}
	return nil
}

// store creates b, or finds the build an earlier attempt of the same
// delivery created (created=false then, and b is that build).
func (p *Processor) store(ctx context.Context, b *forge.Build, jobs []*forge.BuildJob) (created bool, err error) {
	err = p.opts.Builds.CreateBuild(ctx, b, jobs)
	if forge.ErrorCode(err) != forge.ECONFLICT || b.DeliveryID == "" {
		return err == nil, err
	}
	return false, p.existing(ctx, b)
}

// existing replaces b by the build of b's delivery and action an earlier
// attempt created.
func (p *Processor) existing(ctx context.Context, b *forge.Build) error {
	prev, err := p.opts.Builds.ListBuilds(ctx, forge.BuildFilter{RepoID: b.RepoID, DeliveryID: b.DeliveryID, Action: b.Action})
	if err != nil {
		return err
	}
	for _, o := range prev {
		if o.DeliveryID == b.DeliveryID {
			*b = *o
			return nil
		}
	}
	// The store says the build exists; it is just not among the listed.
	p.log.Warn("trigger: build of this delivery exists but was not found", "delivery", b.DeliveryID, "action", b.Action)
	return nil
}

// afterCreate does what follows the creation of builds: the newest build
// of each pull request and action cancels the older unfinished ones, the
// spec errors of failed builds become their logs, and Created hears of
// each.
func (p *Processor) afterCreate(ctx context.Context, nbs []*newBuild) {
	type prAction struct {
		repo   int64
		pr     int
		action string
	}
	newest := map[prAction]*forge.Build{}
	var order []prAction
	for _, nb := range nbs {
		b := nb.b
		if !nb.created || nb.failed != "" || b.Hook.Event != "pull_request" || b.Hook.PullRequest == 0 || b.Hook.Merged {
			continue
		}
		k := prAction{b.RepoID, b.Hook.PullRequest, b.Action}
		if o, ok := newest[k]; !ok || b.ID > o.ID {
			if !ok {
				order = append(order, k)
			}
			newest[k] = b
		}
	}
	for _, k := range order {
		if err := p.supersede(ctx, newest[k]); err != nil {
			p.log.Warn("trigger: cancel superseded builds", "build", newest[k].ID, "err", err)
		}
	}
	for _, nb := range nbs {
		if !nb.created {
			continue
		}
		if nb.failed != "" && p.opts.Logs != nil && len(nb.jobs) == 1 && nb.jobs[0].ID != 0 {
			lines := strings.Split(nb.failed, "\n")
			logLines := make([]forge.LogLine, len(lines))
			for i, l := range lines {
				logLines[i] = forge.LogLine{Number: i + 1, Time: nb.b.Created, Stream: forge.System, Text: l}
			}
			if err := p.opts.Logs.Append(ctx, nb.jobs[0].ID, logLines); err != nil {
				p.log.Warn("trigger: write spec errors to the log", "build", nb.b.ID, "err", err)
			}
		}
		if p.opts.Created != nil {
			p.opts.Created(nb.b)
		}
	}
}

// supersede cancels the older unfinished builds of the same action of b's
// pull request, unless KeepSuperseded.
func (p *Processor) supersede(ctx context.Context, b *forge.Build) error {
	h := b.Hook
	if p.opts.KeepSuperseded || h.Event != "pull_request" || h.PullRequest == 0 || h.Merged {
		return nil
	}
	reason := fmt.Sprintf("superseded by build #%d", b.Number)
	var errs []string
	for before := b.ID; ; {
		older, err := p.opts.Builds.ListBuilds(ctx, forge.BuildFilter{
			RepoID: b.RepoID, PullRequest: h.PullRequest, Action: b.Action, Before: before, Limit: forge.MaxBuildLimit,
			Statuses: []forge.Status{forge.StatusBlocked, forge.StatusPending, forge.StatusQueued, forge.StatusWaiting, forge.StatusRunning},
		})
		if err != nil {
			return err
		}
		for _, o := range older {
			before = min(before, o.ID)
			if o.ID >= b.ID || o.Status.Done() || o.Hook.PullRequest != h.PullRequest || o.Action != b.Action {
				continue
			}
			if err := p.cancel(ctx, o, reason); err != nil {
				errs = append(errs, fmt.Sprintf("build %d: %v", o.ID, err))
				continue
			}
			p.log.Info("trigger: build superseded", "build", o.ID, "by", b.ID)
		}
		if len(older) < forge.MaxBuildLimit {
			break
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// cancel cancels one superseded build through Options.Cancel, or marks it
// cancelled in the store when it is not running and there is no runner.
func (p *Processor) cancel(ctx context.Context, b *forge.Build, reason string) error {
	if p.opts.Cancel != nil {
		err := p.opts.Cancel(ctx, b.ID, reason)
		if forge.ErrorCode(err) == forge.ECONFLICT {
			return nil // finished meanwhile
		}
		return err
	}
	for range 3 {
		if b.Status.Done() || b.Status == forge.StatusRunning {
			return nil
		}
		b.Status = forge.StatusCanceled
		b.Error = reason
		b.Finished = p.opts.Now().UTC()
		err := p.opts.Builds.UpdateBuild(ctx, b)
		if forge.ErrorCode(err) != forge.ECONFLICT {
			return err
		}
		var gerr error
		if b, gerr = p.opts.Builds.Build(ctx, b.ID); gerr != nil {
			return gerr
		}
	}
	return forge.Errorf(forge.ECONFLICT, "build %d kept changing", b.ID)
}
