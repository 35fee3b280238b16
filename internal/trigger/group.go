package trigger

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/spec"
)

// processGroup processes items, deliveries of one repository (or one
// delivery) in the order received, and returns how many it finished.
// The git work and the store writes are shared by the whole group: one
// prefetch of every commit, one read of every spec, one transaction for
// the builds and one for the results, when the store can batch. Items
// whose fetch may pass are left pending for a later try. An error means
// the store failed; nothing of the group is finished then, and what was
// built is found again by the next try.
func (p *Processor) processGroup(ctx context.Context, items []*item) (int, error) {
	start := p.opts.Now()
	var hooked, work []*item
	for _, it := range items {
		switch {
		case it.invalid != nil:
			it.result = "invalid: " + forge.ErrorMessage(it.invalid)
		case it.hook == nil:
			it.result = "ignored: " + it.ignored
		default:
			hooked = append(hooked, it)
		}
	}
	if err := p.recordRepos(ctx, hooked); err != nil {
		return 0, err
	}
	for _, it := range hooked {
		h := it.hook
		switch {
		case it.fail != "":
			work = append(work, it)
		case isCommand(h):
			res, _, err, _ := p.command(ctx, h)
			if err != nil {
				return 0, err
			}
			it.result = res
		case h.Event == "pull_request" && h.Draft && !h.Merged && !p.opts.BuildDrafts:
			// Decided before fetching anything: a draft costs no clone.
			it.result = fmt.Sprintf("ignored: pull request #%d is a draft (built when ready for review)", h.PullRequest)
		default:
			work = append(work, it)
		}
	}
	if err := p.fetchAll(ctx, work); err != nil {
		return 0, err
	}
	var ok []*item
	for _, it := range work {
		switch {
		case it.retry != nil:
			if n := p.postpone(it.d.ID); n < p.opts.Attempts {
				p.log.Warn("trigger: delivery will be tried again", "delivery", it.d.ID, "attempt", n, "err", it.retry)
				continue
			}
			// Out of attempts: a failed build says what happened.
			it.fail = fmt.Sprintf("could not fetch the commit after %d attempts: %s", p.opts.Attempts, forge.ErrorMessage(it.retry.err))
			it.retry = nil
		case it.fail == "":
			ok = append(ok, it)
		}
	}
	ok, err := p.prepare(ctx, ok)
	if err != nil {
		return 0, err
	}
	if err := p.planAll(ctx, ok); err != nil {
		return 0, err
	}
	var nbs []*newBuild
	for _, it := range work {
		if it.fail != "" {
			it.builds = p.failAll(it.hook, it.d.ID, it.fail)
		}
		nbs = append(nbs, it.builds...)
	}
	if err := p.storeBuilds(ctx, nbs); err != nil {
		return 0, err
	}
	p.afterCreate(ctx, nbs)
	for _, it := range work {
		if it.result != "" || it.retry != nil {
			continue
		}
		builds := make([]*forge.Build, len(it.builds))
		for i, nb := range it.builds {
			builds[i] = nb.b
		}
		it.result = result(builds)
	}
	return p.finish(ctx, items, start)
}

// recordRepos records the repository of each item's hook and sets its
// ID, with one look-up for a run of deliveries that say the same of it.
// A clone URL forge refuses is not stored: the item fails with why.
func (p *Processor) recordRepos(ctx context.Context, items []*item) error {
	var last, lastSaid forge.Repo
	lastRefused := ""
	for i, it := range items {
		r := &it.hook.Repo
		if i > 0 && sameRepo(r, &lastSaid) {
			*r = last
			it.fail = lastRefused
			continue
		}
		said := *r
		refused, err := p.recordRepo(ctx, r)
		if err != nil {
			return err
		}
		if refused != "" {
			it.fail = "could not fetch the commit: " + refused
		}
		last, lastSaid, lastRefused = *r, said, it.fail
	}
	return nil
}

func sameRepo(a, b *forge.Repo) bool {
	return a.Owner == b.Owner && a.Name == b.Name && a.CloneURL == b.CloneURL && a.DefaultBranch == b.DefaultBranch && a.Private == b.Private
}

// recordRepo creates or updates the repository and sets its ID, keeping
// what the payload does not say from the stored row. A clone URL that
// Git.CheckCloneURL refuses never replaces the stored one (nor is stored
// for a new repository); refused says why.
func (p *Processor) recordRepo(ctx context.Context, r *forge.Repo) (refused string, err error) {
	old, err := p.opts.Repos.RepoByName(ctx, r.Owner, r.Name)
	switch {
	case err == nil:
		if r.CloneURL == "" {
			r.CloneURL = old.CloneURL
		}
		if r.DefaultBranch == "" {
			r.DefaultBranch = old.DefaultBranch
		}
	case forge.ErrorCode(err) != forge.ENOTFOUND:
		return "", err
	}
	if r.CloneURL != "" {
		if cerr := p.opts.Git.CheckCloneURL(r.CloneURL); cerr != nil {
			refused = forge.ErrorMessage(cerr)
			p.log.Warn("trigger: clone URL refused", "repo", r.FullName(), "err", refused)
			if old != nil {
				*r = *old
				return refused, nil
			}
			r.CloneURL = ""
		}
	}
	if old != nil && r.CloneURL == old.CloneURL && r.DefaultBranch == old.DefaultBranch && r.Private == old.Private {
		*r = *old
		return refused, nil
	}
	return refused, p.opts.Repos.UpsertRepo(ctx, r)
}

// fetchAll fetches the commit of each item: first every commit by id in
// one go, then each through Fetch (free for what the first step brought).
// An item whose commit does not exist gets fail; one whose fetch may pass
// gets retry.
func (p *Processor) fetchAll(ctx context.Context, items []*item) error {
	var shas []string
	var repo *forge.Repo
	for _, it := range items {
		if it.fail != "" {
			continue
		}
		h := it.hook
		repo = &h.Repo
		for _, s := range []string{h.SHA, h.Base} {
			if s != "" && !slices.Contains(shas, s) {
				shas = append(shas, s)
			}
		}
	}
	var down []string // commits not fetched because the remote is down
	var downErr error
	if len(shas) > 0 {
		missing, err := p.opts.Git.Prefetch(ctx, repo, shas)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case forge.ErrorCode(err) == forge.EUNAVAILABLE:
			// Asking again for each commit would only wait for the
			// remote once more per delivery: they wait for the next try.
			down, downErr = missing, err
		case err != nil:
			p.log.Debug("trigger: prefetch", "repo", repo.FullName(), "commits", len(shas), "err", err)
		}
	}
	for _, it := range items {
		if it.fail != "" {
			continue
		}
		h := it.hook
		if h.SHA != "" && slices.Contains(down, h.SHA) {
			it.retry = &retryable{hook: h, err: downErr}
			continue
		}
		sha, err := p.opts.Git.Fetch(ctx, &h.Repo, h.Ref, h.SHA)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			switch forge.ErrorCode(err) {
			case forge.ENOTFOUND, forge.EINVALID:
				it.fail = "could not fetch the commit: " + forge.ErrorMessage(err)
			default:
				it.retry = &retryable{hook: h, err: err}
			}
			continue
		}
		h.SHA = sha
	}
	return nil
}

// prepare completes the hooks of items whose commit was fetched: messages,
// what a rebuild knew, whether a re-requested branch suite is the
// repository's, changed paths. It returns the items that build, having
// finished those [skip ci] skips.
func (p *Processor) prepare(ctx context.Context, items []*item) ([]*item, error) {
	var need []*item
	for _, it := range items {
		if it.hook.Message == "" {
			need = append(need, it)
		}
	}
	if len(need) > 0 {
		shas := make([]string, len(need))
		for i, it := range need {
			shas[i] = it.hook.SHA
		}
		if msgs, err := p.opts.Git.Messages(ctx, &need[0].hook.Repo, shas); err == nil {
			for i, it := range need {
				it.hook.Message = msgs[i]
			}
		} else if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	paths := map[[2]string][]string{}
	var out []*item
	for _, it := range items {
		h := it.hook
		switch {
		case h.Action == "retest":
			if err := p.completeRetest(ctx, h); err != nil {
				return nil, err
			}
		case h.Action == "rerequested" && h.Event == "push":
			if err := p.placeOnBranch(ctx, h); err != nil {
				return nil, err
			}
		}
		p.changedPaths(ctx, h, paths)
		p.promote(ctx, h)
		if !rebuild(h) && skipCI(h.Message) {
			it.result = "ignored: [skip ci] in the commit message"
			continue
		}
		out = append(out, it)
	}
	return out, ctx.Err()
}

// completeRetest fills what a /retest comment does not say from the pull
// request's latest build: the branches and whether it comes from a fork.
// Without an earlier build the target is the default branch and the pull
// request counts as a fork, so its jobs get no secrets.
func (p *Processor) completeRetest(ctx context.Context, h *forge.Hook) error {
	prev, err := p.opts.Builds.ListBuilds(ctx, forge.BuildFilter{RepoID: h.Repo.ID, PullRequest: h.PullRequest, Limit: 1})
	if err != nil {
		return err
	}
	if len(prev) == 0 || prev[0].Hook.Event != "pull_request" {
		h.Target = h.Repo.DefaultBranch
		h.Fork = true
		return nil
	}
	last := prev[0].Hook
	h.Branch, h.Target, h.Fork, h.Draft = last.Branch, last.Target, last.Fork, last.Draft
	h.CommitCount = last.CommitCount
	if h.Author == "" {
		h.Author = last.Author
	}
	return nil
}

// placeOnBranch decides whether a re-requested check suite of a branch is
// the repository's code: GitHub sends suites of a fork's commits too,
// under the fork's branch name, and serves a fork's commits by id from
// the repository it forks. Its commit counts as the repository's only when
// it is on the repository's branch of that name (the tip, or an ancestor
// within the fetched history); otherwise the hook is marked Fork and its
// build gets no secrets.
func (p *Processor) placeOnBranch(ctx context.Context, h *forge.Hook) error {
	tip, err := p.opts.Git.Fetch(ctx, &h.Repo, h.Ref, "")
	if err == nil && tip != h.SHA {
		var on bool
		on, err = p.opts.Git.IsAncestor(ctx, &h.Repo, h.SHA, tip)
		if err == nil && !on {
			err = fmt.Errorf("commit %s is not on %s", forge.ShortSHA(h.SHA), h.Ref)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		p.log.Info("trigger: check suite commit not shown to be the repository's: built without secrets", "repo", h.Repo.FullName(), "sha", h.SHA, "why", err)
		h.Fork = true
	}
	return nil
}

// changedPaths fills in the files a pull request changes, for when:
// paths conditions, from its head and the target branch's tip (cache
// keeps what a group computed). When that cannot be told (the target's
// tip is gone, the history fetched is too shallow to hold the merge base)
// Paths stays nil, which when: treats as unknown: path-filtered jobs run
// rather than being skipped wrongly.
func (p *Processor) changedPaths(ctx context.Context, h *forge.Hook, cache map[[2]string][]string) {
	if h.Event != "pull_request" || h.Merged || h.Paths != nil || h.Base == "" || h.Target == "" {
		return
	}
	key := [2]string{h.Base, h.SHA}
	if paths, ok := cache[key]; ok {
		h.Paths = paths
		return
	}
	defer func() { cache[key] = h.Paths }()
	if _, err := p.opts.Git.Fetch(ctx, &h.Repo, "refs/heads/"+h.Target, h.Base); err != nil {
		p.log.Debug("trigger: fetch pull request base", "base", h.Base, "err", err)
		return
	}
	paths, err := p.opts.Git.ChangedPaths(ctx, &h.Repo, h.Base, h.SHA)
	if err != nil {
		p.log.Debug("trigger: changed paths", "base", h.Base, "head", h.SHA, "err", err)
		return
	}
	h.Paths = paths
}

// planAll reads the spec at each item's commit (one read for all) and
// plans its builds, or finishes it with why nothing runs.
func (p *Processor) planAll(ctx context.Context, items []*item) error {
	if len(items) == 0 {
		return nil
	}
	shas := make([]string, len(items))
	for i, it := range items {
		shas[i] = it.hook.SHA
	}
	files, errs, err := p.opts.Git.ReadFiles(ctx, &items[0].hook.Repo, p.opts.SpecFile, shas)
	if err != nil {
		return err
	}
	parsed := map[string]parsedSpec{}
	for i, it := range items {
		f, specErr, err := p.parseSpec(it.hook.SHA, files[i], errs[i], parsed)
		if err != nil {
			return err
		}
		builds, why := p.plan(it.hook, it.d.ID, "", f, specErr)
		if len(builds) == 0 {
			it.result = "ignored: " + why
			continue
		}
		it.builds = builds
	}
	return nil
}

// parsedSpec is a spec parsed once for every commit that has its text.
type parsedSpec struct {
	f       *spec.File
	specErr string
}

// parseSpec turns the spec read at sha (data, or readErr) into a parsed
// spec, or the message of a build that cannot run (specErr); err is for a
// failure of git. cache holds the specs parsed so far, by text.
func (p *Processor) parseSpec(sha string, data []byte, readErr error, cache map[string]parsedSpec) (f *spec.File, specErr string, err error) {
	switch forge.ErrorCode(readErr) {
	case "":
	case forge.ENOTFOUND:
		return nil, fmt.Sprintf("%s: no such file at commit %s: add one to build this repository", p.opts.SpecFile, forge.ShortSHA(sha)), nil
	case forge.EINVALID, forge.ETOOLARGE:
		return nil, forge.ErrorMessage(readErr), nil
	default:
		return nil, "", readErr
	}
	if c, ok := cache[string(data)]; ok {
		return c.f, c.specErr, nil
	}
	var c parsedSpec
	if c.f, err = spec.Parse(p.opts.SpecFile, data); err != nil {
		c.f, c.specErr = nil, strings.TrimRight(spec.Report(err), "\n")
	}
	if cache != nil {
		cache[string(data)] = c
	}
	return c.f, c.specErr, nil
}

// finish marks the items that have a result processed (in one
// transaction when the store can) and returns how many.
func (p *Processor) finish(ctx context.Context, items []*item, start time.Time) (int, error) {
	var done []*forge.Delivery
	for _, it := range items {
		if it.result != "" {
			done = append(done, &forge.Delivery{ID: it.d.ID, Result: it.result})
		}
	}
	if db, ok := p.opts.Deliveries.(deliveryBatcher); ok && len(done) > 1 {
		if err := db.FinishDeliveries(ctx, done); err != nil {
			return 0, err
		}
	} else {
		for _, d := range done {
			if err := p.opts.Deliveries.FinishDelivery(ctx, d.ID, d.Result); err != nil {
				return 0, err
			}
		}
	}
	p.mu.Lock()
	for _, d := range done {
		delete(p.retry, d.ID)
	}
	p.mu.Unlock()
	took := p.opts.Now().Sub(start)
	for _, it := range items {
		if it.result != "" {
			p.log.Info("trigger: delivery processed", "delivery", it.d.ID, "event", it.d.Event, "action", it.d.Action, "result", it.result, "took", took)
		}
	}
	return len(done), nil
}
