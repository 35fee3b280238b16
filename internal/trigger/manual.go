package trigger

import (
	"context"
	"slices"
	"strconv"
	"strings"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/spec"
)

// Manual creates a build of action (default "execute") of repo (a stored
// repository) at ref: a branch name, a full ref (refs/heads/main,
// refs/tags/v1, refs/pull/7/head) or a commit id. The build is queued like
// a webhook's, or failed when the spec at that commit is missing or
// invalid.
//
// What ref is decides what the build may see (forge.Hook.Trusted): a
// branch or a tag of the repository gets the repository's secrets; a pull
// request's ref or a bare commit id does not, since either may hold a
// fork's code. A short name is a branch, else a tag, of that exact name.
//
// Errors: EINVALID for a bad ref or an action the spec does not have;
// ENOTFOUND when the ref does not exist; EUNAVAILABLE when the remote is
// down.
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
	h, err := p.resolve(ctx, repo, ref)
	if err != nil {
		return nil, err
	}
	if msgs, err := p.opts.Git.Messages(ctx, repo, []string{h.SHA}); err == nil {
		h.Message = msgs[0]
	}
	files, errs, err := p.opts.Git.ReadFiles(ctx, repo, p.opts.SpecFile, []string{h.SHA})
	if err != nil {
		return nil, err
	}
	f, specErr, err := p.parseSpec(h.SHA, files[0], errs[0], nil)
	if err != nil {
		return nil, err
	}
	if specErr == "" && !slices.Contains(f.Actions(), action) {
		return nil, forge.Errorf(forge.EINVALID, "%s at %s has no action %q (it has %s)", p.opts.SpecFile, forge.ShortSHA(h.SHA), action, strings.Join(f.Actions(), ", "))
	}
	nbs, _ := p.plan(h, "", action, f, specErr)
	if err := p.storeBuilds(ctx, nbs); err != nil {
		return nil, err
	}
	p.afterCreate(ctx, nbs)
	return nbs[0].b, nil
}

// resolve fetches what ref names in repo and says what it is, as the hook
// of a manual build: a branch (refs/heads/…, or a short name that is a
// branch), a tag (refs/tags/…, or a short name that is a tag), a pull
// request's ref (refs/pull/N/head or merge) or a commit id. The last two
// are marked Fork: nothing shows their code is the repository's.
func (p *Processor) resolve(ctx context.Context, repo *forge.Repo, ref string) (*forge.Hook, error) {
	h := &forge.Hook{Event: "manual", Repo: *repo}
	fetch := func(ref, sha string) error {
		got, err := p.opts.Git.Fetch(ctx, repo, ref, sha)
		h.SHA = got
		return err
	}
	switch {
	case forge.IsSHA(ref):
		h.Fork = true
		return h, fetch("", ref)
	case !forge.ValidRefName(ref):
		return nil, forge.Errorf(forge.EINVALID, "manual build: %q is not a valid ref", ref)
	case strings.HasPrefix(ref, "refs/heads/"):
		h.Ref, h.Branch = ref, strings.TrimPrefix(ref, "refs/heads/")
	case strings.HasPrefix(ref, "refs/tags/"):
		h.Ref, h.Tag = ref, strings.TrimPrefix(ref, "refs/tags/")
	case strings.HasPrefix(ref, "refs/pull/"):
		n, kind, _ := strings.Cut(strings.TrimPrefix(ref, "refs/pull/"), "/")
		pr, err := strconv.Atoi(n)
		if err != nil || pr <= 0 || (kind != "head" && kind != "merge") {
			return nil, forge.Errorf(forge.EINVALID, "manual build: %q is not a pull request ref (refs/pull/N/head or refs/pull/N/merge)", ref)
		}
		h.Ref, h.PullRequest, h.Fork = ref, pr, true
	case strings.HasPrefix(ref, "refs/"):
		return nil, forge.Errorf(forge.EINVALID, "manual build: %q is not a branch, tag or pull request ref", ref)
	default:
		// A short name: a branch of that exact name, else a tag. Never
		// git's own guessing, which would take "pull/7/head" for
		// refs/pull/7/head.
		err := fetch("refs/heads/"+ref, "")
		if err == nil {
			h.Ref, h.Branch, h.Target = "refs/heads/"+ref, ref, ref
			return h, nil
		}
		if forge.ErrorCode(err) != forge.ENOTFOUND {
			return nil, err
		}
		if err := fetch("refs/tags/"+ref, ""); err != nil {
			if forge.ErrorCode(err) == forge.ENOTFOUND {
				return nil, forge.WrapError(forge.ENOTFOUND, err, "no branch or tag named "+strconv.Quote(ref)+" in "+repo.FullName())
			}
			return nil, err
		}
		h.Ref, h.Tag = "refs/tags/"+ref, ref
		return h, nil
	}
	h.Target = h.Branch
	if err := fetch(h.Ref, ""); err != nil {
		return nil, err
	}
	return h, nil
}
