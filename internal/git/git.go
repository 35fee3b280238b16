// Package git fetches the code forge builds with the git command line: a
// bare mirror per repository under DATA/git/<owner>/<repo>.git, commits
// fetched into it by SHA (shallow by default), files read from it, and
// workspaces made from it in milliseconds.
//
// A workspace is a fresh repository whose objects come from the mirror
// through git's alternates mechanism (objects/info/alternates), with the
// mirror's shallow list copied in: nothing is copied or packed, so making
// one costs a few git invocations whatever the repository's size, and the
// workspace has its own config and hooks (what a build does to its
// workspace never reaches the mirror). Jobs that run in containers need
// the mirror's objects directory mounted at the same path (read-only is
// enough).
//
// Credentials (Options.Token) go to git in the environment of the one
// command that needs them, as an HTTP Authorization header; they are never
// on a command line, in a config file, in a URL or in an error message.
package git

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/forgeci/forge"
)

// DefaultDepth is how many commits Fetch asks for unless Options.Depth
// says otherwise: enough for `git describe` and short histories, small
// enough to stay fast on large repositories.
const DefaultDepth = 50

// Options configures a Git.
type Options struct {
	// Dir holds the mirrors: Dir/<owner>/<repo>.git. Required.
	Dir string
	// Depth is how many commits of history to fetch: 0 means
	// DefaultDepth, a negative value the whole history.
	Depth int
	// Token, when set, authenticates fetches over HTTPS (a GitHub token
	// or an installation token), sent as user x-access-token, and only to
	// Origin.
	Token string
	// Origin is scheme://host[:port] of the GitHub forge builds from (""
	// means DefaultOrigin, https://github.com): the token goes only there,
	// and clone URLs must be on its host (see CheckCloneURL).
	Origin string
	// AllowFile lets clone URLs be local paths or file:// URLs (local
	// mirrors, tests); without it they are refused.
	AllowFile bool
	// TokenFor, when set, gives the token for a repository's fetches (a
	// GitHub App installation's, which expires); "" or an error falls
	// back to Token.
	TokenFor func(ctx context.Context, repo *forge.Repo) (string, error)
	// Binary is the git executable; "" means "git" from PATH.
	Binary string
}

// Git runs git for forge. It is safe for concurrent use: fetches and
// reads of one repository are serialised (one mutex per mirror), different
// repositories proceed in parallel, and a checkout of a commit already in
// the mirror takes no lock, so a fetch never delays a build's start.
type Git struct {
	opts   Options
	origin origin
	mu     sync.Mutex
	locks  map[string]*sync.Mutex
	// known holds, per mirror, commits fetched and kept (see kept).
	known map[string]map[string]bool
}

// New returns a Git keeping mirrors under opts.Dir.
func New(opts Options) (*Git, error) {
	if opts.Dir == "" {
		return nil, forge.Errorf(forge.EINVALID, "git: a directory for mirrors is required")
	}
	abs, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, forge.Errorf(forge.EINVALID, "git: mirror directory %q: %w", opts.Dir, err)
	}
	opts.Dir = abs
	if opts.Binary == "" {
		opts.Binary = "git"
	}
	if _, err := exec.LookPath(opts.Binary); err != nil {
		return nil, forge.Errorf(forge.EUNAVAILABLE, "git: %s is not installed: %w", opts.Binary, err)
	}
	if opts.Depth == 0 {
		opts.Depth = DefaultDepth
	}
	o, err := parseOrigin(opts.Origin)
	if err != nil {
		return nil, err
	}
	return &Git{opts: opts, origin: o, locks: map[string]*sync.Mutex{}}, nil
}

// MirrorDir returns the directory of repo's mirror (it may not exist yet).
func (g *Git) MirrorDir(repo *forge.Repo) (string, error) {
	if !validName(repo.Owner) || !validName(repo.Name) {
		return "", forge.Errorf(forge.EINVALID, "git: %q is not a valid owner/name for a mirror", repo.Owner+"/"+repo.Name)
	}
	return filepath.Join(g.opts.Dir, repo.Owner, repo.Name+".git"), nil
}

// validName accepts what GitHub allows in owner and repository names, and
// nothing that could leave the mirror directory.
func validName(s string) bool {
	if s == "" || s == "." || s == ".." || len(s) > 100 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// lock serialises the operations on one mirror and returns its unlock.
func (g *Git) lock(dir string) func() {
	g.mu.Lock()
	l, ok := g.locks[dir]
	if !ok {
		l = &sync.Mutex{}
		g.locks[dir] = l
	}
	g.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// Fetch makes a commit of repo available in its mirror and returns its
// SHA. With sha set, that commit is fetched (by id; when the server will
// not serve an id, ref is fetched instead and must bring it); with sha
// empty, ref (a branch, tag, full ref such as refs/pull/7/head, or a
// commit id) is fetched and the commit it names returned. A commit already
// in the mirror is not fetched again.
//
// Errors: EINVALID for a bad ref or clone URL, ENOTFOUND when the commit
// or ref does not exist, EUNAVAILABLE when the remote cannot be reached
// or refuses (a retry may work), ECANCELED when ctx ends.
func (g *Git) Fetch(ctx context.Context, repo *forge.Repo, ref, sha string) (string, error) {
	dir, err := g.MirrorDir(repo)
	if err != nil {
		return "", err
	}
	if sha != "" && !forge.IsSHA(sha) {
		return "", forge.Errorf(forge.EINVALID, "git: %q is not a full commit id", sha)
	}
	if sha == "" && ref == "" {
		return "", forge.Errorf(forge.EINVALID, "git: fetch needs a ref or a commit")
	}
	if ref != "" && !forge.ValidRefName(ref) {
		return "", forge.Errorf(forge.EINVALID, "git: %q is not a valid ref", ref)
	}
	remote, err := g.remote(repo.CloneURL)
	if err != nil {
		return "", err
	}
	// A commit fetched and kept before needs no git at all.
	if sha != "" && g.kept(dir, sha) {
		return sha, nil
	}
	defer g.lock(dir)()
	if err := g.ensureMirror(ctx, dir); err != nil {
		return "", err
	}
	if sha != "" && g.hasCommit(ctx, dir, sha) {
		return sha, g.keep(ctx, dir, sha)
	}
	if sha == "" && forge.IsSHA(ref) {
		if g.hasCommit(ctx, dir, ref) {
			return ref, g.keep(ctx, dir, ref)
		}
		sha, ref = ref, ""
	}
	if sha != "" {
		ferr := g.fetch(ctx, repo, dir, remote, sha)
		if ferr == nil && g.hasCommit(ctx, dir, sha) {
			return sha, g.keep(ctx, dir, sha)
		}
		if ref == "" || ctx.Err() != nil {
			return "", orNotFound(ferr, fmt.Sprintf("commit %s not found in %s", sha, repo.FullName()))
		}
		// The server would not serve the id: fetch the ref, which must
		// bring the commit.
		if err := g.fetchRef(ctx, repo, dir, remote, ref); err != nil {
			if forge.ErrorCode(err) == forge.ENOTFOUND {
				return "", forge.WrapError(forge.ENOTFOUND, err, fmt.Sprintf("commit %s not found in %s, nor %s", sha, repo.FullName(), ref))
			}
			return "", err
		}
		if !g.hasCommit(ctx, dir, sha) {
			return "", forge.Errorf(forge.ENOTFOUND, "commit %s is not on %s of %s (force-pushed away?)", sha, ref, repo.FullName())
		}
		return sha, g.keep(ctx, dir, sha)
	}
	if err := g.fetchRef(ctx, repo, dir, remote, ref); err != nil {
		return "", err
	}
	out, err := g.run(ctx, dir, nil, "rev-parse", "--verify", "--end-of-options", "FETCH_HEAD^{commit}")
	if err != nil {
		return "", forge.Errorf(forge.ENOTFOUND, "%s of %s is not a commit", ref, repo.FullName())
	}
	sha = strings.TrimSpace(out)
	return sha, g.keep(ctx, dir, sha)
}

// fetchRef fetches ref, trying it as written, then as a branch, then as a
// tag when it is a short name.
func (g *Git) fetchRef(ctx context.Context, repo *forge.Repo, dir string, remote remote, ref string) error {
	candidates := []string{ref}
	if !strings.HasPrefix(ref, "refs/") {
		candidates = append(candidates, "refs/heads/"+ref, "refs/tags/"+ref)
	}
	var err error
	for _, c := range candidates {
		if err = g.fetch(ctx, repo, dir, remote, c); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return orNotFound(err, fmt.Sprintf("ref %s not found", ref))
}

// orNotFound turns git's "not found" failures into ENOTFOUND with msg.
func orNotFound(err error, msg string) error {
	if err == nil {
		return forge.Errorf(forge.ENOTFOUND, "%s", msg)
	}
	var ge *Error
	if errors.As(err, &ge) && ge.notFound() {
		return forge.WrapError(forge.ENOTFOUND, err, msg)
	}
	return err
}

// fetch runs one git fetch of what (a ref or an id) into dir's mirror.
func (g *Git) fetch(ctx context.Context, repo *forge.Repo, dir string, remote remote, what string) error {
	args := []string{"fetch", "--quiet", "--no-tags"}
	if g.opts.Depth > 0 {
		args = append(args, "--depth", fmt.Sprint(g.opts.Depth))
	} else if _, err := os.Stat(filepath.Join(dir, "shallow")); err == nil {
		args = append(args, "--unshallow")
	}
	args = append(args, "--end-of-options", remote.url, what)
	_, err := g.run(ctx, dir, g.credentials(ctx, repo, remote), args...)
	if err != nil && ctx.Err() != nil {
		return forge.WrapError(forge.ECANCELED, ctx.Err(), "git fetch cancelled")
	}
	return err
}

// keep makes a fetched commit reachable from a ref of the mirror, so git's
// automatic garbage collection never drops what a workspace still uses.
func (g *Git) keep(ctx context.Context, dir, sha string) error {
	_, err := g.run(ctx, dir, nil, "update-ref", "refs/forge/"+sha, sha)
	if err == nil {
		g.remember(dir, sha)
	}
	return err
}

func (g *Git) hasCommit(ctx context.Context, dir, sha string) bool {
	if g.kept(dir, sha) {
		return true
	}
	_, err := g.run(ctx, dir, nil, "cat-file", "-e", sha+"^{commit}")
	return err == nil
}

// ensureMirror creates dir as a bare repository if it is not one yet.
func (g *Git) ensureMirror(ctx context.Context, dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "HEAD")); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return forge.Errorf(forge.EINTERNAL, "git: make mirror directory: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".init-*")
	if err != nil {
		return forge.Errorf(forge.EINTERNAL, "git: make mirror: %w", err)
	}
	defer os.RemoveAll(tmp)
	if _, err := g.run(ctx, "", nil, "init", "--quiet", "--bare", tmp); err != nil {
		return err
	}
	// Keep fetched objects forever (they are referenced by refs/forge/*
	// anyway) and never ask for anything interactively.
	for _, kv := range [][2]string{{"gc.pruneExpire", "never"}, {"core.askPass", ""}, {"fetch.writeCommitGraph", "false"}} {
		if _, err := g.run(ctx, tmp, nil, "config", kv[0], kv[1]); err != nil {
			return err
		}
	}
	// The rename makes a half-made mirror impossible to see.
	if err := os.Rename(tmp, dir); err != nil {
		return forge.Errorf(forge.EINTERNAL, "git: make mirror: %w", err)
	}
	return nil
}

// MaxReadFile is the largest file ReadFile returns (1 MiB: a build spec
// is far smaller).
const MaxReadFile = 1 << 20

// ReadFile returns the content of path at commit sha of repo's mirror;
// ENOTFOUND when the commit (fetch it first) or the file does not exist,
// ETOOLARGE when the file has more than MaxReadFile bytes.
func (g *Git) ReadFile(ctx context.Context, repo *forge.Repo, sha, path string) ([]byte, error) {
	dir, err := g.MirrorDir(repo)
	if err != nil {
		return nil, err
	}
	if !forge.IsSHA(sha) {
		return nil, forge.Errorf(forge.EINVALID, "git: %q is not a full commit id", sha)
	}
	path = strings.TrimPrefix(filepath.ToSlash(filepath.Clean(path)), "/")
	if path == "." || path == ".." || strings.HasPrefix(path, "../") {
		return nil, forge.Errorf(forge.EINVALID, "git: %q is not a path in the repository", path)
	}
	defer g.lock(dir)()
	if !g.hasCommit(ctx, dir, sha) {
		return nil, forge.Errorf(forge.ENOTFOUND, "commit %s of %s has not been fetched", sha, repo.FullName())
	}
	typ, err := g.run(ctx, dir, nil, "cat-file", "-t", sha+":"+path)
	if err != nil {
		return nil, forge.Errorf(forge.ENOTFOUND, "%s does not exist at %s", path, forge.ShortSHA(sha))
	}
	if t := strings.TrimSpace(typ); t != "blob" {
		return nil, forge.Errorf(forge.EINVALID, "%s at %s is a %s, not a file", path, forge.ShortSHA(sha), t)
	}
	// The file comes from whoever pushed the commit: its size is checked
	// before any of it is read into memory.
	size, err := g.run(ctx, dir, nil, "cat-file", "-s", sha+":"+path)
	if err != nil {
		return nil, err
	}
	if n, err := strconv.ParseInt(strings.TrimSpace(size), 10, 64); err != nil || n > MaxReadFile {
		return nil, forge.Errorf(forge.ETOOLARGE, "%s at %s has %s bytes, more than the %d forge reads", path, forge.ShortSHA(sha), strings.TrimSpace(size), MaxReadFile)
	}
	var out bytes.Buffer
	if err := g.runTo(ctx, dir, nil, &out, "cat-file", "blob", sha+":"+path); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// Message returns the commit message of sha in repo's mirror (its first
// 64 KiB).
func (g *Git) Message(ctx context.Context, repo *forge.Repo, sha string) (string, error) {
	dir, err := g.MirrorDir(repo)
	if err != nil {
		return "", err
	}
	if !forge.IsSHA(sha) {
		return "", forge.Errorf(forge.EINVALID, "git: %q is not a full commit id", sha)
	}
	defer g.lock(dir)()
	if !g.hasCommit(ctx, dir, sha) {
		return "", forge.Errorf(forge.ENOTFOUND, "commit %s of %s has not been fetched", sha, repo.FullName())
	}
	// A message is whatever the author wrote: keep a bounded start of it.
	var out bytes.Buffer
	err = g.runTo(ctx, dir, nil, &limited{w: &out, n: maxMessage}, "log", "-1", "--format=%B", sha)
	return strings.TrimRight(out.String(), "\n"), err
}

// maxMessage bounds the commit message Message returns.
const maxMessage = 64 << 10

// ChangedPaths lists the files a pull request changes: those that differ
// between head and its merge base with base (what GitHub's "Files
// changed" shows), renames as both paths, sorted. Both commits must have
// been fetched. ENOTFOUND when the fetched history is too shallow to hold
// a merge base.
func (g *Git) ChangedPaths(ctx context.Context, repo *forge.Repo, base, head string) ([]string, error) {
	dir, err := g.MirrorDir(repo)
	if err != nil {
		return nil, err
	}
	if !forge.IsSHA(base) || !forge.IsSHA(head) {
		return nil, forge.Errorf(forge.EINVALID, "git: changed paths need two full commit ids")
	}
	for _, c := range []string{base, head} {
		if !g.hasCommit(ctx, dir, c) {
			return nil, forge.Errorf(forge.ENOTFOUND, "commit %s of %s has not been fetched", c, repo.FullName())
		}
	}
	// base...head diffs head against the merge base, in one git. Objects
	// are only read, which a concurrent fetch never disturbs: no lock.
	out, err := g.run(ctx, dir, nil, "diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", "--no-textconv", base+"..."+head, "--")
	if err != nil {
		var ge *Error
		if errors.As(err, &ge) && strings.Contains(ge.Stderr, "no merge base") {
			return nil, forge.WrapError(forge.ENOTFOUND, err, fmt.Sprintf("no merge base of %s and %s in the fetched history", forge.ShortSHA(base), forge.ShortSHA(head)))
		}
		return nil, err
	}
	paths := []string{}
	for _, p := range strings.Split(out, "\x00") {
		if p != "" {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	return paths, nil
}

// Checkout makes dir, which must not exist, a working tree of repo at
// commit sha, fetching the commit into the mirror first when it is
// missing. HEAD is detached at sha and the remote origin is the clone URL
// (without credentials). On failure nothing is left at dir.
func (g *Git) Checkout(ctx context.Context, repo *forge.Repo, sha, dir string) (err error) {
	if !forge.IsSHA(sha) {
		return forge.Errorf(forge.EINVALID, "git: %q is not a full commit id", sha)
	}
	if _, err := os.Lstat(dir); err == nil {
		return forge.Errorf(forge.ECONFLICT, "git: workspace %s already exists", dir)
	}
	mirror, err := g.MirrorDir(repo)
	if err != nil {
		return err
	}
	// A commit already in the mirror needs no lock: git writes objects
	// and the shallow list by atomic renames, so reading them while
	// another build's fetch runs is safe, and that fetch must not delay
	// this build's start.
	if !g.hasCommit(ctx, mirror, sha) {
		if _, err := g.Fetch(ctx, repo, "", sha); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return forge.Errorf(forge.EINTERNAL, "git: make workspace: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	if _, err := g.run(ctx, dir, nil, "init", "--quiet"); err != nil {
		return err
	}
	gitDir := filepath.Join(dir, ".git")
	if err := os.WriteFile(filepath.Join(gitDir, "objects", "info", "alternates"), []byte(filepath.Join(mirror, "objects")+"\n"), 0o644); err != nil {
		return forge.Errorf(forge.EINTERNAL, "git: link workspace objects: %w", err)
	}
	// A fetch replaces the shallow list by renaming a new one into place:
	// this reads one whole version or the other.
	shallow, rerr := os.ReadFile(filepath.Join(mirror, "shallow"))
	if rerr == nil {
		if err := os.WriteFile(filepath.Join(gitDir, "shallow"), shallow, 0o644); err != nil {
			return forge.Errorf(forge.EINTERNAL, "git: copy shallow list: %w", err)
		}
	}
	if remote, err := g.remote(repo.CloneURL); err == nil {
		if _, err := g.run(ctx, dir, nil, "remote", "add", "origin", remote.url); err != nil {
			return err
		}
	}
	if _, err := g.run(ctx, dir, nil, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", sha, "--"); err != nil {
		return err
	}
	return nil
}
