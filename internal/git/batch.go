package git

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/forgeci/forge"
)

// The batch operations below serve a caller with many commits of one
// repository at once (the trigger draining a burst of deliveries): a few
// git commands for the whole batch instead of a few per commit.

// maxKept bounds the commits remembered per mirror as fetched and kept;
// past it the memory starts again (a forgotten commit costs one cat-file).
const maxKept = 100_000

// kept reports whether sha was fetched into (or found in) dir's mirror and
// kept by a ref, so that it needs no git to be used.
func (g *Git) kept(dir, sha string) bool {
	g.mu.Lock()
	ok := g.known[dir][sha]
	g.mu.Unlock()
	if ok {
		// A mirror removed behind forge's back (to reclaim space, say)
		// takes what was remembered of it along.
		if _, err := os.Stat(filepath.Join(dir, "HEAD")); err != nil {
			g.mu.Lock()
			delete(g.known, dir)
			g.mu.Unlock()
			return false
		}
	}
	return ok
}

// remember records that sha is in dir's mirror and kept by a ref.
func (g *Git) remember(dir string, shas ...string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.known == nil {
		g.known = map[string]map[string]bool{}
	}
	set := g.known[dir]
	if set == nil || len(set)+len(shas) > maxKept {
		set = make(map[string]bool, len(shas))
		g.known[dir] = set
	}
	for _, s := range shas {
		set[s] = true
	}
}

// maxBatchArgs bounds the commit ids one git fetch is given.
const maxBatchArgs = 500

// Prefetch makes the commits shas of repo available in its mirror with as
// few git commands as it can: one to find which the mirror lacks, one
// fetch of all of those by id (per 500), one to keep them all. It returns
// the commits it could not make available and why: the remote is down
// (EUNAVAILABLE), or one of the batch does not exist or the server refuses
// to serve commits by id, which fails the whole fetch; Fetch then fetches,
// or reports, each commit alone. Invalid ids are left to Fetch to report.
func (g *Git) Prefetch(ctx context.Context, repo *forge.Repo, shas []string) (missing []string, err error) {
	dir, err := g.MirrorDir(repo)
	if err != nil {
		return shas, err
	}
	remote, err := g.remote(repo.CloneURL)
	if err != nil {
		return shas, err
	}
	var want []string
	for _, s := range shas {
		if forge.IsSHA(s) && !g.kept(dir, s) && !slices.Contains(want, s) {
			want = append(want, s)
		}
	}
	if len(want) == 0 {
		return nil, nil
	}
	defer g.lock(dir)()
	if err := g.ensureMirror(ctx, dir); err != nil {
		return want, err
	}
	types, err := g.objectTypes(ctx, dir, commitNames(want))
	if err != nil {
		return want, err
	}
	for i, s := range want {
		if types[i] != "commit" {
			missing = append(missing, s)
		}
	}
	var ferr error
	for start := 0; start < len(missing); start += maxBatchArgs {
		chunk := missing[start:min(start+maxBatchArgs, len(missing))]
		args := []string{"fetch", "--quiet", "--no-tags"}
		if g.opts.Depth > 0 {
			args = append(args, "--depth", strconv.Itoa(g.opts.Depth))
		} else if _, err := os.Stat(filepath.Join(dir, "shallow")); err == nil {
			args = append(args, "--unshallow")
		}
		args = append(append(args, "--end-of-options", remote.url), chunk...)
		if _, ferr = g.run(ctx, dir, g.credentials(ctx, repo, remote), args...); ferr != nil {
			missing = missing[start:]
			break
		}
	}
	if ferr == nil {
		missing = nil
	}
	// Keep what is there; Fetch deals with the rest one by one.
	have := slices.DeleteFunc(want, func(s string) bool { return slices.Contains(missing, s) })
	if err := g.keepAll(ctx, dir, have); err != nil {
		return append(missing, have...), err
	}
	return missing, ferr
}

// keepAll is keep for many commits, with one git.
func (g *Git) keepAll(ctx context.Context, dir string, shas []string) error {
	if len(shas) == 0 {
		return nil
	}
	var in bytes.Buffer
	for _, s := range shas {
		fmt.Fprintf(&in, "update refs/forge/%s %s\n", s, s)
	}
	if err := g.runWith(ctx, dir, nil, &in, io.Discard, "update-ref", "--stdin"); err != nil {
		return err
	}
	g.remember(dir, shas...)
	return nil
}

func commitNames(shas []string) []string {
	out := make([]string, len(shas))
	for i, s := range shas {
		out[i] = s + "^{commit}"
	}
	return out
}

// object is one answer of git cat-file --batch-check.
type object struct {
	oid, typ string
	size     int64
}

// objects asks git cat-file --batch-check about each of names; a name
// that does not exist has an empty typ.
func (g *Git) objects(ctx context.Context, dir string, names []string) ([]object, error) {
	var in, out bytes.Buffer
	for _, n := range names {
		in.WriteString(n + "\n")
	}
	if err := g.runWith(ctx, dir, nil, &in, &out, "cat-file", "--batch-check"); err != nil {
		return nil, err
	}
	objs := make([]object, 0, len(names))
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// "OID TYPE SIZE", or "NAME missing" where NAME is never an id.
		if len(f) == 3 && forge.IsSHA(f[0]) {
			size, _ := strconv.ParseInt(f[2], 10, 64)
			objs = append(objs, object{oid: f[0], typ: f[1], size: size})
			continue
		}
		objs = append(objs, object{}) // "NAME missing", "NAME ambiguous"
	}
	if len(objs) != len(names) {
		return nil, forge.Errorf(forge.EINTERNAL, "git cat-file answered %d of %d names", len(objs), len(names))
	}
	return objs, nil
}

// objectTypes is the type of each of names, "" for a missing one.
func (g *Git) objectTypes(ctx context.Context, dir string, names []string) ([]string, error) {
	objs, err := g.objects(ctx, dir, names)
	if err != nil {
		return nil, err
	}
	types := make([]string, len(objs))
	for i, o := range objs {
		types[i] = o.typ
	}
	return types, nil
}

// contents returns the content of each object id in oids (all known to
// exist), with one git cat-file --batch.
func (g *Git) contents(ctx context.Context, dir string, oids []string) (map[string][]byte, error) {
	out := make(map[string][]byte, len(oids))
	if len(oids) == 0 {
		return out, nil
	}
	var in, buf bytes.Buffer
	for _, o := range oids {
		in.WriteString(o + "\n")
	}
	if err := g.runWith(ctx, dir, nil, &in, &buf, "cat-file", "--batch"); err != nil {
		return nil, err
	}
	r := bufio.NewReader(&buf)
	for range oids {
		header, err := r.ReadString('\n')
		if err != nil {
			return nil, forge.Errorf(forge.EINTERNAL, "git cat-file --batch: short output")
		}
		f := strings.Fields(header)
		if len(f) != 3 {
			continue // missing meanwhile: left out
		}
		size, err := strconv.Atoi(f[2])
		if err != nil || size < 0 {
			return nil, forge.Errorf(forge.EINTERNAL, "git cat-file --batch: bad header %q", strings.TrimSpace(header))
		}
		data := make([]byte, size+1) // the content and a newline
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, forge.Errorf(forge.EINTERNAL, "git cat-file --batch: short object %s", f[0])
		}
		out[f[0]] = data[:size]
	}
	return out, nil
}

// ReadFiles is ReadFile for many commits of repo at once (all fetched
// before): it returns path's content at each of shas, or for each the
// error ReadFile would give (ENOTFOUND, EINVALID, ETOOLARGE), with two git
// commands for the whole batch. err is for a failure of git itself.
func (g *Git) ReadFiles(ctx context.Context, repo *forge.Repo, path string, shas []string) (files [][]byte, errs []error, err error) {
	dir, err := g.MirrorDir(repo)
	if err != nil {
		return nil, nil, err
	}
	path = strings.TrimPrefix(filepath.ToSlash(filepath.Clean(path)), "/")
	if path == "." || path == ".." || strings.HasPrefix(path, "../") {
		return nil, nil, forge.Errorf(forge.EINVALID, "git: %q is not a path in the repository", path)
	}
	files, errs = make([][]byte, len(shas)), make([]error, len(shas))
	var names []string
	for _, s := range shas {
		if !forge.IsSHA(s) {
			return nil, nil, forge.Errorf(forge.EINVALID, "git: %q is not a full commit id", s)
		}
		names = append(names, s+"^{commit}", s+":"+path)
	}
	if len(shas) == 0 {
		return files, errs, nil
	}
	// Objects are only read, which a concurrent fetch never disturbs.
	objs, err := g.objects(ctx, dir, names)
	if err != nil {
		return nil, nil, err
	}
	var read []string
	for i, s := range shas {
		commit, file := objs[2*i], objs[2*i+1]
		switch {
		case commit.typ != "commit":
			errs[i] = forge.Errorf(forge.ENOTFOUND, "commit %s of %s has not been fetched", s, repo.FullName())
		case file.typ == "":
			errs[i] = forge.Errorf(forge.ENOTFOUND, "%s does not exist at %s", path, forge.ShortSHA(s))
		case file.typ != "blob":
			errs[i] = forge.Errorf(forge.EINVALID, "%s at %s is a %s, not a file", path, forge.ShortSHA(s), file.typ)
		case file.size > MaxReadFile:
			// The file comes from whoever pushed the commit: its size is
			// checked before any of it is read.
			errs[i] = forge.Errorf(forge.ETOOLARGE, "%s at %s has %d bytes, more than the %d forge reads", path, forge.ShortSHA(s), file.size, MaxReadFile)
		default:
			if !slices.Contains(read, file.oid) {
				read = append(read, file.oid)
			}
		}
	}
	data, err := g.contents(ctx, dir, read)
	if err != nil {
		return nil, nil, err
	}
	for i, s := range shas {
		if errs[i] != nil {
			continue
		}
		b, ok := data[objs[2*i+1].oid]
		if !ok {
			errs[i] = forge.Errorf(forge.ENOTFOUND, "%s does not exist at %s", path, forge.ShortSHA(s))
			continue
		}
		files[i] = b
	}
	return files, errs, nil
}

// Messages returns the commit message of each of shas of repo (fetched
// before; the first 64 KiB of each), with one git command; ENOTFOUND when
// one of them is not in the mirror.
func (g *Git) Messages(ctx context.Context, repo *forge.Repo, shas []string) ([]string, error) {
	dir, err := g.MirrorDir(repo)
	if err != nil {
		return nil, err
	}
	for _, s := range shas {
		if !forge.IsSHA(s) {
			return nil, forge.Errorf(forge.EINVALID, "git: %q is not a full commit id", s)
		}
	}
	objs, err := g.objects(ctx, dir, commitNames(shas))
	if err != nil {
		return nil, err
	}
	var oids []string
	for i, o := range objs {
		if o.typ != "commit" {
			return nil, forge.Errorf(forge.ENOTFOUND, "commit %s of %s has not been fetched", shas[i], repo.FullName())
		}
		if !slices.Contains(oids, o.oid) {
			oids = append(oids, o.oid)
		}
	}
	data, err := g.contents(ctx, dir, oids)
	if err != nil {
		return nil, err
	}
	msgs := make([]string, len(shas))
	for i, o := range objs {
		raw, ok := data[o.oid]
		if !ok {
			return nil, forge.Errorf(forge.ENOTFOUND, "commit %s of %s has not been fetched", shas[i], repo.FullName())
		}
		// A commit object is its headers, an empty line, the message.
		_, msg, _ := bytes.Cut(raw, []byte("\n\n"))
		if len(msg) > maxMessage {
			msg = msg[:maxMessage]
		}
		msgs[i] = strings.TrimRight(string(msg), "\n")
	}
	return msgs, nil
}

// IsAncestor reports whether commit a is commit b or one of its ancestors
// in repo's mirror (both fetched before). It reports false when the
// fetched history is too shallow to hold a.
func (g *Git) IsAncestor(ctx context.Context, repo *forge.Repo, a, b string) (bool, error) {
	dir, err := g.MirrorDir(repo)
	if err != nil {
		return false, err
	}
	if !forge.IsSHA(a) || !forge.IsSHA(b) {
		return false, forge.Errorf(forge.EINVALID, "git: ancestry needs two full commit ids")
	}
	if a == b {
		return true, nil
	}
	_, err = g.run(ctx, dir, nil, "merge-base", "--is-ancestor", a, b)
	var exit *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &exit) && exit.ExitCode() == 1:
		return false, nil
	}
	return false, err
}
