package trigger

import (
	"context"
	"fmt"
	"strings"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/spec"
)

// Fork approval policies (Options.ForkApproval).
const (
	ForkApprovalAlways    = "always"     // every pull request from a fork waits (the default)
	ForkApprovalFirstTime = "first-time" // only those of first-time contributors
	ForkApprovalNever     = "never"      // none waits
)

// Commands read from pull request comments (github.ParseHook): the hook's
// Action is one of these, and Message the comment's command.
const (
	ActionApprove = "approve" // "/forge approve" by someone with write access
	ActionDenied  = "denied"  // a command by someone without write access
)

// needsApproval reports whether a build for h waits for a maintainer
// before it runs: a pull request from a fork, under the policy.
func (p *Processor) needsApproval(h *forge.Hook) bool {
	if !h.Fork || h.Merged || h.Event != "pull_request" {
		return false
	}
	switch p.opts.ForkApproval {
	case ForkApprovalNever:
		return false
	case ForkApprovalFirstTime:
		switch h.Association {
		case "FIRST_TIME_CONTRIBUTOR", "FIRST_TIMER", "NONE", "":
			return true
		}
		return false
	}
	return true
}

// forkAllows reports whether action may run for h: code from a fork's
// pull request never runs a deploy-type action (deploy, deploy-*,
// release, publish), approved or not.
func forkAllows(h *forge.Hook, action string) bool {
	if !h.Fork || h.Merged {
		return true
	}
	a := strings.ToLower(action)
	return !(a == "deploy" || strings.HasPrefix(a, "deploy-") || strings.HasPrefix(a, "deploy_") || a == "release" || a == "publish")
}

// initialStatus is the status a new build of h starts with: blocked
// until approved, or queued.
func (p *Processor) initialStatus(h *forge.Hook) forge.Status {
	if p.needsApproval(h) {
		return forge.StatusBlocked
	}
	return forge.StatusQueued
}

// isCommand reports whether h is a comment command that builds nothing
// itself (see command).
func isCommand(h *forge.Hook) bool {
	return h.Action == ActionApprove || h.Action == ActionDenied
}

// command handles a pull request comment command (approve, or one by
// someone without write access); ok is false for other hooks.
func (p *Processor) command(ctx context.Context, h *forge.Hook) (result string, retry *retryable, err error, ok bool) {
	switch h.Action {
	case ActionApprove:
		if p.opts.CanWrite != nil {
			can, err := p.opts.CanWrite(ctx, &h.Repo, h.Sender)
			if err != nil {
				// GitHub could not say: the comment's author association
				// (OWNER, MEMBER or COLLABORATOR) stands.
				p.log.Warn("trigger: checking write access; trusting the comment's author association", "user", h.Sender, "err", err)
				can = true
			}
			if !can {
				p.reply(ctx, h, fmt.Sprintf("@%s `/forge approve` needs write access to %s; nothing was approved.", h.Sender, h.Repo.FullName()))
				return fmt.Sprintf("ignored: /forge approve by %s, who has no write access", h.Sender), nil, nil, true
			}
		}
		n, err := p.Approve(ctx, &h.Repo, h.PullRequest, h.Sender)
		if err != nil {
			return "", nil, err, true
		}
		if n == 0 {
			return fmt.Sprintf("ignored: pull request #%d has no build waiting for approval", h.PullRequest), nil, nil, true
		}
		return fmt.Sprintf("approved %d builds of pull request #%d (by %s)", n, h.PullRequest, h.Sender), nil, nil, true
	case ActionDenied:
		p.reply(ctx, h, fmt.Sprintf("@%s `%s` needs write access to %s (you are %s here), so forge did nothing. A maintainer can run it for you.",
			h.Sender, h.Message, h.Repo.FullName(), strings.ToLower(strings.ReplaceAll(firstNonEmpty(h.Association, "NONE"), "_", " "))))
		return fmt.Sprintf("ignored: %s by %s, who has no write access (replied)", h.Message, h.Sender), nil, nil, true
	}
	return "", nil, nil, false
}

// reply comments on h's pull request through Options.Reply.
func (p *Processor) reply(ctx context.Context, h *forge.Hook, body string) {
	if p.opts.Reply == nil || h.PullRequest <= 0 {
		return
	}
	if err := p.opts.Reply(ctx, h, body); err != nil {
		p.log.Warn("trigger: reply to a command", "pull_request", h.PullRequest, "err", err)
	}
}

// Approve lets the builds of pull request number of repo that wait for
// approval run, and returns how many it let run. by is who approved.
func (p *Processor) Approve(ctx context.Context, repo *forge.Repo, number int, by string) (int, error) {
	if repo == nil || repo.ID == 0 || number <= 0 {
		return 0, forge.Errorf(forge.EINVALID, "approve: a stored repository and a pull request number are required")
	}
	blocked, err := p.opts.Builds.ListBuilds(ctx, forge.BuildFilter{RepoID: repo.ID, PullRequest: number, Status: forge.StatusBlocked, Limit: forge.MaxBuildLimit})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, b := range blocked {
		for attempt := 0; attempt < 3; attempt++ {
			if b.Status != forge.StatusBlocked {
				break
			}
			b.Status = forge.StatusQueued
			err = p.opts.Builds.UpdateBuild(ctx, b)
			if err == nil {
				n++
				p.log.Info("trigger: build approved", "build", b.ID, "by", by)
				if p.opts.Created != nil {
					p.opts.Created(b)
				}
				break
			}
			if forge.ErrorCode(err) != forge.ECONFLICT {
				return n, err
			}
			if b, err = p.opts.Builds.Build(ctx, b.ID); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// promote asks for the promotion pull request when h merged a pull
// request into the main branch and that pull request's latest build
// passed. It only queues the request (Options.Promote); it never fails
// the delivery.
func (p *Processor) promote(ctx context.Context, h *forge.Hook) {
	if p.opts.Promote == nil || h.Event != "pull_request" || !h.Merged || h.PullRequest <= 0 {
		return
	}
	main := firstNonEmpty(p.opts.MainBranch, h.Repo.DefaultBranch)
	if h.Target != main || main == p.opts.ProductionBranch {
		return
	}
	prev, err := p.opts.Builds.ListBuilds(ctx, forge.BuildFilter{RepoID: h.Repo.ID, PullRequest: h.PullRequest, Action: spec.DefaultAction, Limit: 20})
	if err != nil {
		p.log.Warn("trigger: promotion: the pull request's builds", "pull_request", h.PullRequest, "err", err)
		return
	}
	for _, b := range prev {
		if b.Hook.Merged || b.Hook.Event != "pull_request" {
			continue
		}
		if b.Status != forge.StatusSuccess {
			p.log.Info("trigger: no promotion: the merged pull request's latest build did not pass", "pull_request", h.PullRequest, "build", b.ID, "status", b.Status)
			return
		}
		if err := p.opts.Promote(ctx, h, main, p.opts.ProductionBranch); err != nil {
			p.log.Warn("trigger: promotion", "pull_request", h.PullRequest, "err", err)
		}
		return
	}
	p.log.Info("trigger: no promotion: the merged pull request has no build", "pull_request", h.PullRequest)
}

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}
