package git

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestOwnerRepo(t *testing.T) {
	tests := []struct{ url, owner, repo string }{
		{"https://github.com/forgeci/forge.git", "forgeci", "forge"},
		{"https://github.com/forgeci/forge", "forgeci", "forge"},
		{"https://user:tok@github.example.com:8443/team/app/", "team", "app"},
		{"git@github.com:forgeci/forge.git", "forgeci", "forge"},
		{"ssh://git@host:2222/group/sub/proj.git", "sub", "proj"},
		{"/srv/git/team/app.git", "team", "app"},
		{"app", "", "app"},
		{"", "", ""},
	}
	for _, tt := range tests {
		if o, r := ownerRepo(tt.url); o != tt.owner || r != tt.repo {
			t.Errorf("ownerRepo(%q) = %q, %q; want %q, %q", tt.url, o, r, tt.owner, tt.repo)
		}
	}
}

// TestReadGitFiles checks the .git reader against git itself on the
// layouts a checkout may have.
func TestReadGitFiles(t *testing.T) {
	gitIn := func(t *testing.T, dir string, args ...string) string {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-c", "user.name=t", "-c", "user.email=t@example.com"}, args...)...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	base := t.TempDir()
	repo := filepath.Join(base, "repo")
	os.MkdirAll(filepath.Join(repo, "sub", "dir"), 0o755)
	gitIn(t, repo, "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(repo, "f"), []byte("1"), 0o644)
	gitIn(t, repo, "add", "f")
	gitIn(t, repo, "commit", "-q", "-m", "one")
	gitIn(t, repo, "commit", "-q", "--allow-empty", "-m", "two")
	gitIn(t, repo, "remote", "add", "origin", "https://github.com/acme/widgets.git")
	wt := filepath.Join(base, "wt")
	gitIn(t, repo, "worktree", "add", "-q", "-b", "feature/y", wt)

	tests := []struct {
		name  string
		dir   string
		setup func()
	}{
		{"top", repo, nil},
		{"subdirectory", filepath.Join(repo, "sub", "dir"), nil},
		{"packed refs", repo, func() { gitIn(t, repo, "pack-refs", "--all") }},
		{"detached", repo, func() { gitIn(t, repo, "checkout", "-q", "--detach", "HEAD~1") }},
		{"worktree", wt, nil},
		{"new branch, no commit", repo, func() { gitIn(t, repo, "checkout", "-q", "--orphan", "empty") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			got := readGitFiles(tc.dir)
			if got == nil {
				t.Fatal("readGitFiles gave up on a plain layout")
			}
			want := readGitCommands(context.Background(), tc.dir)
			if want.SHA == "" {
				// git names no ref without a commit; the files still know the branch.
				want.Ref, want.Branch = "refs/heads/empty", "empty"
			}
			gotTop, _ := filepath.EvalSymlinks(got.Top)
			wantTop, _ := filepath.EvalSymlinks(want.Top)
			if gotTop != wantTop || got.SHA != want.SHA || got.Ref != want.Ref || got.Branch != want.Branch ||
				got.Owner != want.Owner || got.Repo != want.Repo || (got.err == nil) != (want.err == nil) {
				t.Errorf("files: top %q sha %q ref %q branch %q %s/%s err %v\ngit:   top %q sha %q ref %q branch %q %s/%s err %v",
					got.Top, got.SHA, got.Ref, got.Branch, got.Owner, got.Repo, got.err,
					want.Top, want.SHA, want.Ref, want.Branch, want.Owner, want.Repo, want.err)
			}
		})
	}
	if g := readGitFiles(t.TempDir()); g == nil || g.SHA != "" || g.err == nil {
		t.Errorf("outside a checkout: got %+v, want no commit and an error", g)
	}
}

func TestGitConfigOrigin(t *testing.T) {
	tests := []struct {
		config, url string
		plain       bool
	}{
		{"[core]\n\tbare = false\n[remote \"origin\"]\n\turl = git@github.com:a/b.git\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n", "git@github.com:a/b.git", true},
		{"[remote \"upstream\"]\n\turl = https://x/y/z\n", "", true},
		{"[include]\n\tpath = other\n", "", false},
		{"[core]\n\tworktree = /elsewhere\n", "", false},
		{"[extensions]\n\trefStorage = reftable\n", "", false},
		{"[url \"git@github.com:\"]\n\tinsteadOf = https://github.com/\n", "", false},
	}
	for _, tt := range tests {
		url, plain := gitConfigOrigin(tt.config)
		if url != tt.url || plain != tt.plain {
			t.Errorf("gitConfigOrigin(%q) = %q, %v; want %q, %v", tt.config, url, plain, tt.url, tt.plain)
		}
	}
}

// TestCommitCountCache: the count comes from git once per commit, then
// from the cache; a new commit or a shallow repository asks git again.
func TestCommitCountCache(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	repo := t.TempDir()
	gitIn := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-c", "user.name=t", "-c", "user.email=t@example.com"}, args...)...)
		cmd.Dir = repo
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	gitIn("init", "-q")
	gitIn("commit", "-q", "--allow-empty", "-m", "1")
	gitIn("commit", "-q", "--allow-empty", "-m", "2")
	ctx := context.Background()

	g := ReadLocal(ctx, repo, false)
	if g.CommitCount != 2 {
		t.Fatalf("count: got %d, want 2", g.CommitCount)
	}
	file := commitCountFile(g)
	data, err := os.ReadFile(file)
	if err != nil || string(data) != g.SHA+" 2\n" {
		t.Fatalf("cache %s: got %q (%v), want %q", file, data, err, g.SHA+" 2\n")
	}
	// A cached count is used as is: prove it by planting another one.
	os.WriteFile(file, []byte(g.SHA+" 41\n"), 0o644)
	if got := ReadLocal(ctx, repo, false).CommitCount; got != 41 {
		t.Errorf("count with a cache entry: got %d, want the cached 41", got)
	}
	for _, bad := range []string{"", "garbage", g.SHA + " x", g.SHA + " 0", "0000 5"} {
		os.WriteFile(file, []byte(bad), 0o644)
		if got := ReadLocal(ctx, repo, false).CommitCount; got != 2 {
			t.Errorf("count with cache %q: got %d, want 2 from git", bad, got)
		}
	}
	gitIn("commit", "-q", "--allow-empty", "-m", "3")
	if got := ReadLocal(ctx, repo, false).CommitCount; got != 3 {
		t.Errorf("count after a new commit: got %d, want 3", got)
	}
	os.WriteFile(filepath.Join(repo, ".git", "shallow"), nil, 0o644)
	if f := commitCountFile(readGitFiles(repo)); f != "" {
		t.Errorf("a shallow repository is cached in %s", f)
	}
}
