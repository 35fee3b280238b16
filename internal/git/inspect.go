package git

import (
	"github.com/forgeci/forge"

	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// Local is what a checkout on this machine says about itself: what
// forge exec learns from the checkout it runs in.
type Local struct {
	Top         string // the working tree's root; "" outside git
	SHA         string // HEAD; "" before the first commit
	Ref         string // refs/heads/<branch>, or the SHA when detached
	Branch      string
	Tag         string // a tag at HEAD, when asked for
	Owner       string // from the origin remote's URL
	Repo        string // from the origin remote's URL, else the top's name
	CommitCount int    // commits reachable from HEAD

	common string // the repository's .git directory, when read from files
	err    error  // why SHA is empty
}

// ReadLocal learns about the checkout containing dir. The files under
// .git give the top, HEAD, its ref and the origin remote in microseconds;
// only the commit count needs git itself. Layouts the file reader does not
// know (reftable, GIT_DIR, core.worktree, ...) are asked of git instead.
// The git processes run at once, since they add to the start-up of every
// forge exec.
func ReadLocal(ctx context.Context, dir string, wantTag bool) *Local {
	g := readGitFiles(dir)
	var wg sync.WaitGroup
	var count, tag string
	cached := false
	if g == nil {
		wg.Go(func() { g = readGitCommands(ctx, dir) })
	} else if g.SHA != "" {
		g.CommitCount, cached = cachedCommitCount(g)
	}
	if !cached {
		wg.Go(func() { count, _ = localGit(ctx, dir, "rev-list", "--count", "HEAD") })
	}
	if wantTag {
		wg.Go(func() { tag, _ = localGit(ctx, dir, "describe", "--exact-match", "--tags", "HEAD") })
	}
	wg.Wait()
	if g.SHA != "" && !cached {
		g.CommitCount, _ = strconv.Atoi(count)
		saveCommitCount(g)
	}
	g.Tag = tag
	if g.Repo == "" && g.Top != "" {
		g.Repo = filepath.Base(g.Top)
	}
	return g
}

// The commit count of HEAD costs a git process (and, in a big repository,
// a walk of its whole history) on every run, yet it never changes for a
// commit unless the history is shallow or grafted. So it is kept per
// checkout in the user's cache directory, as one line "SHA COUNT" in
// forge/commit-count/<hash of the .git directory>; a developer running
// forge exec again on the same commit skips git entirely.

// commitCountFile is where the count of g's repository is cached, or "".
func commitCountFile(g *Local) string {
	if g.common == "" {
		return ""
	}
	for _, f := range []string{"shallow", filepath.Join("info", "grafts")} {
		if _, err := os.Stat(filepath.Join(g.common, f)); err == nil {
			return "" // the count of a commit may change
		}
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	sum := sha256.Sum256([]byte(g.common))
	return filepath.Join(dir, "forge", "commit-count", hex.EncodeToString(sum[:8]))
}

// cachedCommitCount returns the cached count of g.SHA, if there is one.
func cachedCommitCount(g *Local) (int, bool) {
	p := commitCountFile(g)
	if p == "" {
		return 0, false
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, false
	}
	sha, n, ok := strings.Cut(strings.TrimSpace(string(b)), " ")
	count, err := strconv.Atoi(n)
	if !ok || sha != g.SHA || err != nil || count < 1 {
		return 0, false
	}
	return count, true
}

// saveCommitCount caches g.CommitCount for g.SHA; failures only cost the next
// run a git process.
func saveCommitCount(g *Local) {
	p := commitCountFile(g)
	if p == "" || g.CommitCount < 1 {
		return
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".count-")
	if err != nil {
		return
	}
	_, werr := fmt.Fprintf(tmp, "%s %d\n", g.SHA, g.CommitCount)
	if cerr := tmp.Close(); werr != nil || cerr != nil || os.Rename(tmp.Name(), p) != nil {
		os.Remove(tmp.Name())
	}
}

// readGitCommands asks git for what readGitFiles reads.
func readGitCommands(ctx context.Context, dir string) *Local {
	g := &Local{}
	var wg sync.WaitGroup
	var revParse, origin string
	var revErr error
	wg.Go(func() {
		revParse, revErr = localGit(ctx, dir, "rev-parse", "--show-toplevel", "HEAD", "--symbolic-full-name", "HEAD")
	})
	wg.Go(func() { origin, _ = localGit(ctx, dir, "config", "--get", "remote.origin.url") })
	wg.Wait()
	lines := strings.Split(revParse, "\n")
	if revErr != nil || len(lines) != 3 {
		g.err = revErr
		// No commit yet, or not a checkout: the top may still be known.
		if top, err := localGit(ctx, dir, "rev-parse", "--show-toplevel"); err == nil {
			g.Top = top
		}
	} else {
		g.Top, g.SHA = lines[0], lines[1]
		g.setRef(lines[2])
	}
	g.Owner, g.Repo = ownerRepo(origin)
	return g
}

// setRef records HEAD's symbolic name ("HEAD" when detached).
func (g *Local) setRef(ref string) {
	g.Ref = ref
	if ref == "HEAD" || ref == "" {
		g.Ref = g.SHA
	}
	if b, ok := strings.CutPrefix(g.Ref, "refs/heads/"); ok {
		g.Branch = b
	}
}

// readGitFiles reads the checkout containing dir from its .git files. It
// returns nil when git must be asked instead.
func readGitFiles(dir string) *Local {
	if os.Getenv("GIT_DIR") != "" || os.Getenv("GIT_WORK_TREE") != "" || os.Getenv("GIT_COMMON_DIR") != "" {
		return nil
	}
	top, gitDir := "", ""
	for d := dir; ; {
		p := filepath.Join(d, ".git")
		if fi, err := os.Stat(p); err == nil {
			top, gitDir = d, p
			if !fi.IsDir() { // a worktree or submodule: "gitdir: PATH"
				b, err := os.ReadFile(p)
				rest, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "gitdir: ")
				if err != nil || !ok {
					return nil
				}
				if !filepath.IsAbs(rest) {
					rest = filepath.Join(d, rest)
				}
				gitDir = rest
			}
			break
		}
		parent := filepath.Dir(d)
		if parent == d {
			return &Local{err: errors.New("not a git checkout")}
		}
		d = parent
	}
	common := gitDir
	if b, err := os.ReadFile(filepath.Join(gitDir, "commondir")); err == nil {
		c := strings.TrimSpace(string(b))
		if !filepath.IsAbs(c) {
			c = filepath.Join(gitDir, c)
		}
		common = c
	}
	config, err := os.ReadFile(filepath.Join(common, "config"))
	if err != nil {
		return nil
	}
	origin, plain := gitConfigOrigin(string(config))
	if !plain {
		return nil
	}
	head, err := os.ReadFile(filepath.Join(gitDir, "HEAD"))
	if err != nil {
		return nil
	}
	g := &Local{Top: top, common: common}
	h := strings.TrimSpace(string(head))
	if ref, ok := strings.CutPrefix(h, "ref: "); ok {
		sha, found := resolveRef(gitDir, common, ref)
		if !found {
			if _, err := os.Stat(filepath.Join(common, "reftable")); err == nil {
				return nil
			}
			g.err = fmt.Errorf("no commit yet on %s", ref)
		}
		g.SHA = sha
		g.setRef(ref)
	} else if forge.IsSHA(h) {
		g.SHA = h
		g.setRef("HEAD")
	} else {
		return nil
	}
	g.Owner, g.Repo = ownerRepo(origin)
	return g
}

// resolveRef finds the commit ref names, in the loose refs of the worktree
// and of the repository, then in packed-refs.
func resolveRef(gitDir, common, ref string) (string, bool) {
	for _, d := range []string{gitDir, common} {
		if b, err := os.ReadFile(filepath.Join(d, filepath.FromSlash(ref))); err == nil {
			if sha := strings.TrimSpace(string(b)); forge.IsSHA(sha) {
				return sha, true
			}
		}
	}
	b, err := os.ReadFile(filepath.Join(common, "packed-refs"))
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if sha, name, ok := strings.Cut(strings.TrimSpace(line), " "); ok && name == ref && forge.IsSHA(sha) {
			return sha, true
		}
	}
	return "", false
}

// gitConfigOrigin finds remote.origin.url in a git config file. plain is
// false when the file uses what this small reader does not follow
// (includes, core.worktree, bare or reftable repositories, urls with
// insteadOf rewrites): then git must be asked.
func gitConfigOrigin(config string) (url string, plain bool) {
	section := ""
	for _, line := range strings.Split(config, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			section = strings.ToLower(strings.TrimSpace(strings.Trim(line, "[]")))
			if strings.HasPrefix(section, "include") || strings.HasPrefix(section, "url ") {
				return "", false
			}
			continue
		}
		key, value, _ := strings.Cut(line, "=")
		key = strings.ToLower(strings.TrimSpace(key))
		value = strings.TrimSpace(value)
		switch {
		case section == "core" && (key == "worktree" || key == "bare" && value == "true" || key == "repositoryformatversion" && value != "0" && value != "1"):
			return "", false
		case section == "extensions" && key == "refstorage":
			return "", false
		case section == `remote "origin"` && key == "url":
			url = strings.Trim(value, `"`)
		}
	}
	return url, true
}

// Problem says why there is no commit (SHA is empty).
func (g *Local) Problem() string {
	if g.err == nil {
		return "no commit"
	}
	return g.err.Error()
}

// localGit runs git in dir with the user's own environment and
// configuration (unlike Git.run: this is the user's checkout) and returns
// its trimmed output.
func localGit(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", &Error{Args: args, Stderr: tail(strings.TrimSpace(errb.String()), maxStderr), Err: err}
	}
	return strings.TrimSpace(out.String()), nil
}

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
