package github

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	gh "github.com/google/go-github/v76/github"

	"github.com/forgeci/forge"
)

// DefaultBranch returns repository owner/name's default branch.
func (c *Client) DefaultBranch(ctx context.Context, owner, name string) (string, error) {
	g, err := c.For(ctx, owner, name, 0)
	if err != nil {
		return "", err
	}
	r, _, err := g.Repositories.Get(ctx, owner, name)
	if err != nil {
		return "", classify(err, fmt.Sprintf("read %s/%s", owner, name))
	}
	return r.GetDefaultBranch(), nil
}

// File returns path at ref of repository owner/name; ENOTFOUND when there
// is no such file.
func (c *Client) File(ctx context.Context, owner, name, ref, path string) ([]byte, error) {
	g, err := c.For(ctx, owner, name, 0)
	if err != nil {
		return nil, err
	}
	f, _, _, err := g.Repositories.GetContents(ctx, owner, name, path, &gh.RepositoryContentGetOptions{Ref: ref})
	if err != nil {
		if notFound(err) {
			return nil, forge.Errorf(forge.ENOTFOUND, "%s/%s has no %s at %s", owner, name, path, ref)
		}
		return nil, classify(err, fmt.Sprintf("read %s at %s of %s/%s", path, ref, owner, name))
	}
	if f == nil {
		return nil, forge.Errorf(forge.EINVALID, "%s at %s of %s/%s is a directory", path, ref, owner, name)
	}
	s, err := f.GetContent()
	if err != nil {
		return nil, forge.Errorf(forge.EINVALID, "%s at %s of %s/%s: %v", path, ref, owner, name, err)
	}
	return []byte(s), nil
}

// Protection is what RequireContexts found and did on a branch.
type Protection struct {
	Branch string
	// Before are the contexts the branch required; After those it
	// requires now (forge's replaced, the others kept).
	Before, After []string
	// Created says the branch was not protected before.
	Created bool
}

// PlanContexts returns what RequireContexts would set on branch: the
// required contexts not of forge (forge/...) kept, forge's replaced by
// contexts. It changes nothing.
func (c *Client) PlanContexts(ctx context.Context, owner, name, branch string, contexts []string) (*Protection, error) {
	g, err := c.For(ctx, owner, name, 0)
	if err != nil {
		return nil, err
	}
	p := &Protection{Branch: branch}
	cur, _, err := g.Repositories.GetBranchProtection(ctx, owner, name, branch)
	switch {
	case errors.Is(err, gh.ErrBranchNotProtected) || err != nil && notFound(err):
		p.Created = true
	case err != nil:
		return nil, classify(err, fmt.Sprintf("read the protection of %s of %s/%s", branch, owner, name))
	case cur.GetRequiredStatusChecks() != nil && cur.GetRequiredStatusChecks().Contexts != nil:
		p.Before = slices.Clone(*cur.GetRequiredStatusChecks().Contexts)
	}
	for _, b := range p.Before {
		if !strings.HasPrefix(b, "forge/") {
			p.After = append(p.After, b)
		}
	}
	p.After = append(p.After, contexts...)
	slices.Sort(p.After)
	p.After = slices.Compact(p.After)
	return p, nil
}

// RequireContexts makes branch require the contexts of p (PlanContexts):
// a branch without protection gets one that only requires them (and
// that the branch be up to date); a protected branch keeps every other
// setting.
func (c *Client) RequireContexts(ctx context.Context, owner, name string, p *Protection) error {
	g, err := c.For(ctx, owner, name, 0)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("set the required checks of %s of %s/%s", p.Branch, owner, name)
	contexts := p.After
	if contexts == nil {
		contexts = []string{}
	}
	if p.Created {
		_, _, err = g.Repositories.UpdateBranchProtection(ctx, owner, name, p.Branch, &gh.ProtectionRequest{
			RequiredStatusChecks: &gh.RequiredStatusChecks{Strict: true, Contexts: &contexts},
		})
		return classify(err, what)
	}
	_, _, err = g.Repositories.UpdateRequiredStatusChecks(ctx, owner, name, p.Branch, &gh.RequiredStatusChecksRequest{Strict: gh.Ptr(true), Contexts: contexts})
	return classify(err, what)
}
