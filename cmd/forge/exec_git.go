package main

import (
	"bytes"
	"context"
	"os/exec"
	"path"
	"strconv"
	"strings"
	"sync"
)

// gitInfo is what forge exec learns from the checkout it runs in.
type gitInfo struct {
	top    string // the working tree's root; "" outside git
	sha    string // HEAD; "" before the first commit
	ref    string // refs/heads/<branch>, or the SHA when detached
	branch string
	tag    string // a tag at HEAD, when asked for
	owner  string
	repo   string
	count  int
	err    error // why sha is empty
}

// readGit asks git about the working directory: the three commands run at
// once, since they add to the start-up of every forge exec.
func readGit(ctx context.Context, wantTag bool) *gitInfo {
	g := &gitInfo{}
	var wg sync.WaitGroup
	var revParse, count, origin, tag string
	var revErr error
	wg.Go(func() {
		revParse, revErr = gitOut(ctx, "rev-parse", "--show-toplevel", "HEAD", "--symbolic-full-name", "HEAD")
	})
	wg.Go(func() { count, _ = gitOut(ctx, "rev-list", "--count", "HEAD") })
	wg.Go(func() { origin, _ = gitOut(ctx, "config", "--get", "remote.origin.url") })
	if wantTag {
		wg.Go(func() { tag, _ = gitOut(ctx, "describe", "--exact-match", "--tags", "HEAD") })
	}
	wg.Wait()

	lines := strings.Split(revParse, "\n")
	if revErr != nil {
		g.err = revErr
		// No commit yet, or not a checkout: the top may still be known.
		if top, err := gitOut(ctx, "rev-parse", "--show-toplevel"); err == nil {
			g.top = top
		}
	} else if len(lines) == 3 {
		g.top, g.sha = lines[0], lines[1]
		g.ref = lines[2]
		if g.ref == "HEAD" { // detached
			g.ref = g.sha
		}
		g.branch = strings.TrimPrefix(g.ref, "refs/heads/")
		if g.branch == g.ref {
			g.branch = ""
		}
	}
	g.count, _ = strconv.Atoi(count)
	g.tag = tag
	g.owner, g.repo = ownerRepo(origin)
	if g.repo == "" && g.top != "" {
		g.repo = path.Base(g.top)
	}
	return g
}

// describeErr says why there is no commit.
func (g *gitInfo) describeErr() string {
	if g.err == nil {
		return "no commit"
	}
	return g.err.Error()
}

// env is the FORGE_* base environment of a local run.
func (g *gitInfo) env(action string) map[string]string {
	return map[string]string{
		"FORGE_ACTION":       action,
		"FORGE_OWNER":        g.owner,
		"FORGE_REPO":         g.repo,
		"FORGE_SHA":          g.sha,
		"FORGE_REF":          g.ref,
		"FORGE_PULL_REQUEST": "",
		"FORGE_COMMIT_COUNT": strconv.Itoa(g.count),
		"FORGE_STATUS_URL":   "",
	}
}

// gitOut runs git and returns its trimmed output.
func gitOut(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(errb.String()); msg != "" {
			return "", &gitError{strings.Join(args, " "), msg}
		}
		return "", err
	}
	return strings.TrimSpace(out.String()), nil
}

type gitError struct{ cmd, msg string }

func (e *gitError) Error() string { return "git " + e.cmd + ": " + e.msg }

// ownerRepo takes owner and repository from a remote URL:
// https://github.com/o/r.git, git@github.com:o/r.git, ssh://git@host/o/r,
// or a local path /srv/git/o/r.git.
func ownerRepo(url string) (string, string) {
	url = strings.TrimSpace(url)
	if url == "" {
		return "", ""
	}
	url = strings.TrimSuffix(strings.TrimSuffix(url, "/"), ".git")
	if i := strings.Index(url, "://"); i >= 0 {
		url = url[i+3:]
		if j := strings.IndexByte(url, '/'); j >= 0 {
			url = url[j+1:] // drop user@host:port
		}
	} else if i := strings.IndexByte(url, ':'); i >= 0 && !strings.HasPrefix(url, "/") {
		url = url[i+1:] // scp-like user@host:path
	}
	parts := strings.Split(strings.Trim(url, "/"), "/")
	switch len(parts) {
	case 0:
		return "", ""
	case 1:
		return "", parts[0]
	}
	return parts[len(parts)-2], parts[len(parts)-1]
}
