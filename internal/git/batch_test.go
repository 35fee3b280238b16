package git_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/git"
)

// countingGit returns a git executable that counts its runs in a file,
// and a function reading the count.
func countingGit(t *testing.T) (string, func() int) {
	t.Helper()
	real, err := exec.LookPath("git")
	if err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	log := filepath.Join(dir, "runs")
	bin := filepath.Join(dir, "git")
	script := "#!/bin/sh\necho \"$1\" >> " + log + "\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, func() int {
		b, _ := os.ReadFile(log)
		return strings.Count(string(b), "\n")
	}
}

// TestBatch: many commits are fetched, kept and read with a handful of git
// commands whatever their number, and give the answers the one-commit
// methods give.
func TestBatch(t *testing.T) {
	u := newUpstream(t)
	var shas []string
	for i := range 30 {
		files := map[string]string{"f": strings.Repeat("x", i+1)}
		if i%10 == 0 {
			files[".forge.yml"] = "execute:\n  - echo " + strings.Repeat("y", i) + "\n"
		}
		shas = append(shas, u.commit("commit "+strings.Repeat("z", i)+"\n\nbody", files))
	}
	u.git("checkout", "--quiet", "-b", "side", shas[5])
	side := u.commit("side", map[string]string{".forge.yml": ""})
	u.git("checkout", "--quiet", "main")
	bin, runs := countingGit(t)
	g := newGit(t, git.Options{Binary: bin})
	ctx := context.Background()
	repo := u.repo()

	if missing, err := g.Prefetch(ctx, repo, append(slices.Clone(shas), side)); err != nil || missing != nil {
		t.Fatalf("Prefetch: missing %v, %v", missing, err)
	}
	// init, three configs: making the mirror; then check, fetch, keep.
	if n := runs(); n > 7 {
		t.Errorf("Prefetch of 31 commits ran git %d times, want at most 7", n)
	}
	before := runs()
	for _, s := range shas {
		if got, err := g.Fetch(ctx, repo, "", s); err != nil || got != s {
			t.Fatalf("Fetch(%s) after Prefetch = %q, %v", s, got, err)
		}
	}
	if n := runs() - before; n != 0 {
		t.Errorf("Fetch of prefetched commits ran git %d times, want 0", n)
	}

	before = runs()
	want := append(slices.Clone(shas), side)
	files, errs, err := g.ReadFiles(ctx, repo, ".forge.yml", want)
	if err != nil {
		t.Fatal(err)
	}
	if n := runs() - before; n != 2 {
		t.Errorf("ReadFiles of 31 commits ran git %d times, want 2", n)
	}
	for i, s := range want {
		one, oneErr := g.ReadFile(ctx, repo, s, ".forge.yml")
		if string(files[i]) != string(one) || forge.ErrorCode(errs[i]) != forge.ErrorCode(oneErr) || forge.ErrorMessage(errs[i]) != forge.ErrorMessage(oneErr) {
			t.Errorf("ReadFiles[%d] = %q, %v; ReadFile = %q, %v", i, files[i], errs[i], one, oneErr)
		}
	}
	if _, errs, _ := g.ReadFiles(ctx, repo, "f", []string{shas[3]}); errs[0] != nil {
		t.Errorf("ReadFiles(f): %v", errs[0])
	}
	if _, errs, _ := g.ReadFiles(ctx, repo, ".", []string{shas[3]}); errs != nil {
		t.Errorf("ReadFiles(.) gave per-commit errors, want one error")
	}
	unfetched := strings.Repeat("cd", 20)
	if _, errs, err := g.ReadFiles(ctx, repo, ".forge.yml", []string{unfetched}); err != nil || forge.ErrorCode(errs[0]) != forge.ENOTFOUND {
		t.Errorf("ReadFiles(unfetched) = %v, %v; want not_found", errs, err)
	}

	msgs, err := g.Messages(ctx, repo, []string{shas[2], shas[0], shas[2]})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range []string{shas[2], shas[0], shas[2]} {
		if one, _ := g.Message(ctx, repo, s); msgs[i] != one {
			t.Errorf("Messages[%d] = %q, Message = %q", i, msgs[i], one)
		}
	}
	if _, err := g.Messages(ctx, repo, []string{unfetched}); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Errorf("Messages(unfetched) = %v, want not_found", err)
	}

	for _, tt := range []struct {
		a, b string
		want bool
	}{{shas[0], shas[29], true}, {shas[29], shas[0], false}, {shas[5], side, true}, {side, shas[29], false}, {shas[7], shas[7], true}} {
		if got, err := g.IsAncestor(ctx, repo, tt.a, tt.b); err != nil || got != tt.want {
			t.Errorf("IsAncestor(%s, %s) = %v, %v; want %v", tt.a[:7], tt.b[:7], got, err, tt.want)
		}
	}

	// A batch with a commit the remote does not have fails as a whole;
	// the commits it could fetch are fetched one by one.
	u.git("checkout", "--quiet", "-b", "more", shas[29])
	more := u.commit("more", nil)
	if missing, err := g.Prefetch(ctx, repo, []string{more, shas[3], unfetched}); err == nil || !slices.Equal(missing, []string{more, unfetched}) {
		t.Errorf("Prefetch of a commit that does not exist: missing %v, %v; want both new commits, an error", missing, err)
	}
	if got, err := g.Fetch(ctx, repo, "", more); err != nil || got != more {
		t.Errorf("Fetch after a failed Prefetch = %q, %v", got, err)
	}
}

// TestChangedPathsWithoutMergeBase: two unrelated histories have no merge
// base: not found, not an internal error.
func TestChangedPathsWithoutMergeBase(t *testing.T) {
	u := newUpstream(t)
	a := u.commit("a", map[string]string{"a": "1"})
	u.git("checkout", "--quiet", "--orphan", "other")
	b := u.commit("b", map[string]string{"b": "1"})
	g := newGit(t, git.Options{})
	ctx := context.Background()
	if _, err := g.Prefetch(ctx, u.repo(), []string{a, b}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.ChangedPaths(ctx, u.repo(), a, b); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Errorf("ChangedPaths of unrelated commits = %v, want not_found", err)
	}
}

// TestRemovedMirror: a mirror removed while forge runs is made again; what
// was remembered of it is not trusted.
func TestRemovedMirror(t *testing.T) {
	u := newUpstream(t)
	sha := u.commit("c", map[string]string{"f": "x"})
	g := newGit(t, git.Options{})
	ctx := context.Background()
	if got, err := g.Fetch(ctx, u.repo(), "", sha); err != nil || got != sha {
		t.Fatalf("Fetch = %q, %v", got, err)
	}
	dir, _ := g.MirrorDir(u.repo())
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if got, err := g.Fetch(ctx, u.repo(), "", sha); err != nil || got != sha {
		t.Fatalf("Fetch after the mirror was removed = %q, %v", got, err)
	}
	if _, errs, err := g.ReadFiles(ctx, u.repo(), "f", []string{sha}); err != nil || errs[0] != nil {
		t.Errorf("ReadFiles after the mirror was made again: %v, %v", errs, err)
	}
}
