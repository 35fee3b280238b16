package trigger

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/runner"
	"github.com/forgeci/forge/internal/spec"
)

// specJob is the one job of a build whose spec cannot be compiled.
const specJob = "spec"

// createBuilds reads the spec at h.SHA and creates a build for each action
// that runs for h (only action, when it is not ""). It returns the builds,
// or none and why nothing runs.
func (p *Processor) createBuilds(ctx context.Context, h *forge.Hook, deliveryID, action string) ([]*forge.Build, string, error) {
	f, specErr, err := p.loadSpec(ctx, h)
	if err != nil {
		return nil, "", err
	}
	var actions []string
	switch {
	case action != "":
		actions = []string{action}
	case f != nil && f.HasOn():
		actions = f.ActionsFor(decisionHook(h))
		if len(actions) == 0 {
			return nil, fmt.Sprintf("the on: section of %s runs nothing for %s", p.opts.SpecFile, describe(h)), nil
		}
	default:
		actions = p.defaultActions(decisionHook(h))
		if len(actions) == 0 {
			return nil, fmt.Sprintf("no action runs for %s by default (add an on: section to %s)", describe(h), p.opts.SpecFile), nil
		}
	}
	actions = slices.DeleteFunc(actions, func(a string) bool { return !forkAllows(h, a) })
	if len(actions) == 0 {
		return nil, fmt.Sprintf("pull request #%d comes from a fork, which never runs deploy-type actions", h.PullRequest), nil
	}
	var builds []*forge.Build
	for _, a := range actions {
		var b *forge.Build
		if specErr != "" {
			b, err = p.createFailed(ctx, h, deliveryID, a, specErr)
		} else {
			b, err = p.createPlanned(ctx, h, deliveryID, a, f)
		}
		if err != nil {
			return builds, "", err
		}
		builds = append(builds, b)
	}
	return builds, "", nil
}

// loadSpec reads and parses the spec at h.SHA. A missing or invalid spec
// is not an error but a message (specErr) for a failed build.
func (p *Processor) loadSpec(ctx context.Context, h *forge.Hook) (f *spec.File, specErr string, err error) {
	data, err := p.opts.Git.ReadFile(ctx, &h.Repo, h.SHA, p.opts.SpecFile)
	switch forge.ErrorCode(err) {
	case "":
	case forge.ENOTFOUND:
		return nil, fmt.Sprintf("%s: no such file at commit %s: add one to build this repository", p.opts.SpecFile, short(h.SHA)), nil
	case forge.EINVALID, forge.ETOOLARGE:
		return nil, forge.ErrorMessage(err), nil
	default:
		return nil, "", err
	}
	f, err = spec.Parse(p.opts.SpecFile, data)
	if err != nil {
		return nil, strings.TrimRight(spec.Report(err), "\n"), nil
	}
	return f, "", nil
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}

// createPlanned compiles action and creates its queued build with one
// pending job row per plan job. An action the spec cannot compile (an
// action it does not have, a when: it cannot evaluate) gives a failed build.
func (p *Processor) createPlanned(ctx context.Context, h *forge.Hook, deliveryID, action string, f *spec.File) (*forge.Build, error) {
	b := p.newBuild(h, deliveryID, action)
	// The runner compiles the build again in its workspace with the same
	// options: the job rows made here are the jobs it runs.
	plan, err := spec.Compile(f, runner.CompileOptions(b))
	if err != nil {
		return p.createFailed(ctx, h, deliveryID, action, strings.TrimRight(spec.Report(err), "\n"))
	}
	if len(plan.Jobs) == 0 {
		return p.createFailed(ctx, h, deliveryID, action, fmt.Sprintf("%s: action %s has no jobs", p.opts.SpecFile, action))
	}
	jobs := make([]*forge.BuildJob, len(plan.Jobs))
	for i, j := range plan.Jobs {
		jobs[i] = &forge.BuildJob{Name: j.Name, Status: forge.StatusPending, Needs: slices.Clone(j.Needs)}
	}
	b.Status = p.initialStatus(h)
	created, err := p.store(ctx, b, jobs)
	if err != nil || !created {
		return b, err
	}
	if err := p.supersede(ctx, b); err != nil {
		p.log.Warn("trigger: cancel superseded builds", "build", b.ID, "err", err)
	}
	if p.opts.Created != nil {
		p.opts.Created(b)
	}
	return b, nil
}

// createFailed creates a build that failed before it could run: its one
// job, "spec", carries msg as its error and its log.
func (p *Processor) createFailed(ctx context.Context, h *forge.Hook, deliveryID, action, msg string) (*forge.Build, error) {
	now := p.opts.Now().UTC()
	b := p.newBuild(h, deliveryID, action)
	b.Status = forge.StatusError
	b.Error = msg
	b.Started, b.Finished = now, now
	job := &forge.BuildJob{Name: specJob, Status: forge.StatusError, Error: firstLine(msg), Started: now, Finished: now}
	created, err := p.store(ctx, b, []*forge.BuildJob{job})
	if err != nil || !created {
		return b, err
	}
	if p.opts.Logs != nil && job.ID != 0 {
		lines := strings.Split(msg, "\n")
		logLines := make([]forge.LogLine, len(lines))
		for i, l := range lines {
			logLines[i] = forge.LogLine{Number: i + 1, Time: now, Stream: forge.System, Text: l}
		}
		if err := p.opts.Logs.Append(ctx, job.ID, logLines); err != nil {
			p.log.Warn("trigger: write spec errors to the log", "build", b.ID, "err", err)
		}
	}
	if p.opts.Created != nil {
		p.opts.Created(b)
	}
	return b, nil
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

// store creates b, or finds the build an earlier attempt of the same
// delivery created (created=false then, and b is that build).
func (p *Processor) store(ctx context.Context, b *forge.Build, jobs []*forge.BuildJob) (created bool, err error) {
	err = p.opts.Builds.CreateBuild(ctx, b, jobs)
	if forge.ErrorCode(err) != forge.ECONFLICT || b.DeliveryID == "" {
		return err == nil, err
	}
	// Already built by an attempt that did not get to finish the delivery.
	prev, lerr := p.opts.Builds.ListBuilds(ctx, forge.BuildFilter{RepoID: b.RepoID, DeliveryID: b.DeliveryID, Action: b.Action})
	if lerr != nil {
		return false, lerr
	}
	for _, o := range prev {
		if o.DeliveryID == b.DeliveryID {
			*b = *o
			return false, nil
		}
	}
	// The store says the build exists; it is just not among the listed.
	p.log.Warn("trigger: build of this delivery exists but was not found", "delivery", b.DeliveryID, "action", b.Action)
	return false, nil
}

// supersede cancels the older unfinished builds of the same action of b's
// pull request, unless KeepSuperseded.
func (p *Processor) supersede(ctx context.Context, b *forge.Build) error {
	h := b.Hook
	if p.opts.KeepSuperseded || h.Event != "pull_request" || h.PullRequest == 0 || h.Merged {
		return nil
	}
	older, err := p.opts.Builds.ListBuilds(ctx, forge.BuildFilter{
		RepoID: b.RepoID, PullRequest: h.PullRequest, Action: b.Action, Before: b.ID,
		Statuses: []forge.Status{forge.StatusBlocked, forge.StatusPending, forge.StatusQueued, forge.StatusWaiting, forge.StatusRunning},
	})
	if err != nil {
		return err
	}
	reason := fmt.Sprintf("superseded by build #%d", b.Number)
	var errs []string
	for _, o := range older {
		if o.ID >= b.ID || o.Status.Done() || o.Hook.PullRequest != h.PullRequest || o.Action != b.Action {
			continue
		}
		if err := p.cancel(ctx, o, reason); err != nil {
			errs = append(errs, fmt.Sprintf("build %d: %v", o.ID, err))
			continue
		}
		p.log.Info("trigger: build superseded", "build", o.ID, "by", b.ID)
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
		if b, err = p.opts.Builds.Build(ctx, b.ID); err != nil {
			return err
		}
	}
	return forge.Errorf(forge.ECONFLICT, "build %d kept changing", b.ID)
}

// Manual creates a build of action (default "execute") of repo (a stored
// repository) at ref: a branch name, a full ref (refs/tags/v1,
// refs/pull/7/head) or a commit id. The build is queued like a webhook's,
// or failed when the spec at that commit is missing or invalid. Errors:
// EINVALID for a bad ref or an action the spec does not have; ENOTFOUND
// when the ref does not exist; EUNAVAILABLE when the remote is down.
func (p *Processor) Manual(ctx context.Context, repo *forge.Repo, ref, action string) (*forge.Build, error) {
	if repo == nil || repo.ID == 0 {
		return nil, forge.Errorf(forge.EINVALID, "manual build: the repository is not known to forge")
	}
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return nil, forge.Errorf(forge.EINVALID, "manual build: a ref (branch, tag or commit) is required")
	}
	if action == "" {
		action = spec.DefaultAction
	}
	sha, err := p.opts.Git.Fetch(ctx, repo, ref, "")
	if err != nil {
		return nil, err
	}
	h := &forge.Hook{Event: "manual", Repo: *repo, SHA: sha}
	switch {
	case strings.HasPrefix(ref, "refs/heads/"):
		h.Ref, h.Branch = ref, strings.TrimPrefix(ref, "refs/heads/")
	case strings.HasPrefix(ref, "refs/tags/"):
		h.Ref, h.Tag = ref, strings.TrimPrefix(ref, "refs/tags/")
	case strings.HasPrefix(ref, "refs/pull/"):
		h.Ref = ref
		fmt.Sscanf(strings.TrimPrefix(ref, "refs/pull/"), "%d", &h.PullRequest)
	case ref == sha:
	default:
		h.Ref, h.Branch = "refs/heads/"+ref, ref
	}
	h.Target = h.Branch
	if msg, err := p.opts.Git.Message(ctx, repo, sha); err == nil {
		h.Message = msg
	}
	f, specErr, err := p.loadSpec(ctx, h)
	if err != nil {
		return nil, err
	}
	if specErr == "" && !slices.Contains(f.Actions(), action) {
		return nil, forge.Errorf(forge.EINVALID, "%s at %s has no action %q (it has %s)", p.opts.SpecFile, short(sha), action, strings.Join(f.Actions(), ", "))
	}
	builds, _, err := p.createBuilds(ctx, h, "", action)
	if err != nil {
		return nil, err
	}
	return builds[0], nil
}
