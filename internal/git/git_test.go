package git_test

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/git"
)

// upstream is a local repository standing in for GitHub.
type upstream struct {
	t   testing.TB
	dir string
}

func newUpstream(t testing.TB) *upstream {
	t.Helper()
	u := &upstream{t: t, dir: t.TempDir()}
	u.git("init", "--quiet", "--initial-branch=main")
	u.git("config", "user.email", "dev@example.com")
	u.git("config", "user.name", "Dev")
	u.git("config", "commit.gpgsign", "false")
	return u
}

func (u *upstream) git(args ...string) string {
	u.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = u.dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+u.dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		u.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// commit writes files and commits them, returning the new SHA.
func (u *upstream) commit(msg string, files map[string]string) string {
	u.t.Helper()
	for name, content := range files {
		p := filepath.Join(u.dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			u.t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			u.t.Fatal(err)
		}
	}
	u.git("add", "-A")
	u.git("commit", "--quiet", "--allow-empty", "-m", msg)
	return u.git("rev-parse", "HEAD")
}

func (u *upstream) repo() *forge.Repo {
	return &forge.Repo{Owner: "acme", Name: "app", CloneURL: "file://" + u.dir}
}

// newGit returns a Git for tests: local repositories allowed (upstreams
// are local), mirrors in a temporary directory.
func newGit(t testing.TB, opts git.Options) *git.Git {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	opts.AllowFile = true
	g, err := git.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestFetchReadCheckout(t *testing.T) {
	u := newUpstream(t)
	first := u.commit("first", map[string]string{".forge.yml": "execute:\n  - echo one\n", "src/a.txt": "a1"})
	second := u.commit("second [skip ci]\n\nbody line", map[string]string{"src/a.txt": "a2"})
	g := newGit(t, git.Options{})
	ctx := context.Background()
	repo := u.repo()

	got, err := g.Fetch(ctx, repo, "", first)
	if err != nil || got != first {
		t.Fatalf("Fetch(first) = %q, %v; want %q", got, err, first)
	}
	data, err := g.ReadFile(ctx, repo, first, ".forge.yml")
	if err != nil || string(data) != "execute:\n  - echo one\n" {
		t.Fatalf("ReadFile = %q, %v", data, err)
	}
	if _, err := g.ReadFile(ctx, repo, first, "missing.yml"); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Errorf("ReadFile(missing) error code = %q (%v), want not_found", forge.ErrorCode(err), err)
	}
	if _, err := g.ReadFile(ctx, repo, first, "src"); forge.ErrorCode(err) != forge.EINVALID {
		t.Errorf("ReadFile(dir) error code = %q (%v), want invalid", forge.ErrorCode(err), err)
	}
	if _, err := g.ReadFile(ctx, repo, second, ".forge.yml"); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Errorf("ReadFile(unfetched commit) code = %q (%v), want not_found", forge.ErrorCode(err), err)
	}

	// A branch name resolves to its tip.
	got, err = g.Fetch(ctx, repo, "main", "")
	if err != nil || got != second {
		t.Fatalf("Fetch(main) = %q, %v; want %q", got, err, second)
	}
	msg, err := g.Message(ctx, repo, second)
	if err != nil || msg != "second [skip ci]\n\nbody line" {
		t.Errorf("Message = %q, %v", msg, err)
	}

	ws := filepath.Join(t.TempDir(), "ws")
	if err := g.Checkout(ctx, repo, first, ws); err != nil {
		t.Fatalf("Checkout: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(ws, "src", "a.txt"))
	if err != nil || string(b) != "a1" {
		t.Errorf("workspace src/a.txt = %q, %v; want a1", b, err)
	}
	head := runIn(t, ws, "rev-parse", "HEAD")
	if head != first {
		t.Errorf("workspace HEAD = %s, want %s", head, first)
	}
	if st := runIn(t, ws, "status", "--porcelain"); st != "" {
		t.Errorf("workspace is not clean: %q", st)
	}
	if origin := runIn(t, ws, "remote", "get-url", "origin"); origin != repo.CloneURL {
		t.Errorf("origin = %q, want %q", origin, repo.CloneURL)
	}
	// The workspace is its own repository: a commit there does not reach
	// the mirror.
	runIn(t, ws, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "--quiet", "--allow-empty", "-m", "local")
	mirror, _ := g.MirrorDir(repo)
	if out := runIn(t, mirror, "for-each-ref", "--format=%(refname)"); strings.Contains(out, "heads") {
		t.Errorf("mirror refs changed by the workspace: %s", out)
	}

	if err := g.Checkout(ctx, repo, first, ws); forge.ErrorCode(err) != forge.ECONFLICT {
		t.Errorf("Checkout into an existing dir: code %q (%v), want conflict", forge.ErrorCode(err), err)
	}
}

func runIn(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v in %s: %v\n%s", args, dir, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestShallow: the default fetch is shallow, and a workspace of a shallow
// mirror still has a working history.
func TestShallow(t *testing.T) {
	u := newUpstream(t)
	var shas []string
	for i := range 5 {
		shas = append(shas, u.commit("c"+string(rune('0'+i)), map[string]string{"f": string(rune('0' + i))}))
	}
	g := newGit(t, git.Options{Depth: 2})
	ctx := context.Background()
	if _, err := g.Fetch(ctx, u.repo(), "", shas[4]); err != nil {
		t.Fatal(err)
	}
	ws := filepath.Join(t.TempDir(), "ws")
	if err := g.Checkout(ctx, u.repo(), shas[4], ws); err != nil {
		t.Fatal(err)
	}
	if n := runIn(t, ws, "rev-list", "--count", "HEAD"); n != "2" {
		t.Errorf("history in workspace = %s commits, want 2 (depth)", n)
	}
	if _, err := g.ReadFile(ctx, u.repo(), shas[1], "f"); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Errorf("a commit beyond the depth was fetched: %v", err)
	}

	full := newGit(t, git.Options{Depth: -1})
	if _, err := full.Fetch(ctx, u.repo(), "main", ""); err != nil {
		t.Fatal(err)
	}
	ws2 := filepath.Join(t.TempDir(), "ws")
	if err := full.Checkout(ctx, u.repo(), shas[4], ws2); err != nil {
		t.Fatal(err)
	}
	if n := runIn(t, ws2, "rev-list", "--count", "HEAD"); n != "5" {
		t.Errorf("full history = %s commits, want 5", n)
	}
}

func TestFetchByRef(t *testing.T) {
	u := newUpstream(t)
	base := u.commit("base", nil)
	u.git("checkout", "--quiet", "-b", "feature")
	pr := u.commit("feature work", map[string]string{"x": "1"})
	u.git("update-ref", "refs/pull/7/head", pr)
	u.git("tag", "v1.0", base)
	u.git("checkout", "--quiet", "main")
	g := newGit(t, git.Options{})
	ctx := context.Background()
	for _, tt := range []struct{ ref, want string }{
		{"refs/pull/7/head", pr}, {"feature", pr}, {"v1.0", base}, {"refs/tags/v1.0", base}, {"refs/heads/main", base}, {pr, pr},
	} {
		got, err := g.Fetch(ctx, u.repo(), tt.ref, "")
		if err != nil || got != tt.want {
			t.Errorf("Fetch(%q) = %q, %v; want %q", tt.ref, got, err, tt.want)
		}
	}
	// A SHA with the ref that carries it.
	got, err := g.Fetch(ctx, u.repo(), "refs/pull/7/head", pr)
	if err != nil || got != pr {
		t.Errorf("Fetch(ref, sha) = %q, %v", got, err)
	}
}

func TestFetchErrors(t *testing.T) {
	u := newUpstream(t)
	u.commit("base", nil)
	g := newGit(t, git.Options{})
	ctx := context.Background()
	missing := strings.Repeat("ab", 20)
	tests := []struct {
		name      string
		repo      *forge.Repo
		ref, sha  string
		code, msg string
	}{
		{"unknown branch", u.repo(), "nope", "", forge.ENOTFOUND, "ref nope not found"},
		{"unknown commit", u.repo(), "", missing, forge.ENOTFOUND, "commit " + missing + " not found in acme/app"},
		{"short sha", u.repo(), "", "abc123", forge.EINVALID, `git: "abc123" is not a full commit id`},
		{"option as ref", u.repo(), "--upload-pack=touch /tmp/x", "", forge.EINVALID, `git: "--upload-pack=touch /tmp/x" is not a valid ref`},
		{"traversal in name", &forge.Repo{Owner: "..", Name: "x", CloneURL: "file:///x"}, "main", "", forge.EINVALID, `git: "../x" is not a valid owner/name for a mirror`},
		{"ext transport", &forge.Repo{Owner: "a", Name: "b", CloneURL: "ext::sh -c touch% /tmp/pwned"}, "main", "", forge.EINVALID, `git: clone URL "ext::sh -c touch% /tmp/pwned" uses the git transport "ext", which forge refuses: use https or ssh`},
		{"no clone url", &forge.Repo{Owner: "a", Name: "b"}, "main", "", forge.EINVALID, "git: the repository has no clone URL"},
		{"no such repository", &forge.Repo{Owner: "a", Name: "b", CloneURL: "file:///nonexistent/repo"}, "main", "", forge.ENOTFOUND, "ref main not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := g.Fetch(ctx, tt.repo, tt.ref, tt.sha)
			if forge.ErrorCode(err) != tt.code || forge.ErrorMessage(err) != tt.msg {
				t.Errorf("Fetch error = %q %q (%v)\nwant          %q %q", forge.ErrorCode(err), forge.ErrorMessage(err), err, tt.code, tt.msg)
			}
		})
	}
	ws := filepath.Join(t.TempDir(), "ws")
	if err := g.Checkout(ctx, u.repo(), missing, ws); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Errorf("Checkout of a missing commit: %v", err)
	}
	if _, err := os.Stat(ws); !os.IsNotExist(err) {
		t.Errorf("failed Checkout left %s behind", ws)
	}
}

// TestCredentials: the token reaches the server as a Basic Authorization
// header and appears nowhere in errors.
func TestCredentials(t *testing.T) {
	const token = "ghs_supersecret123"
	srv, sent := authRecorder(t)
	g := newGit(t, git.Options{Token: token, Origin: srv.URL})
	repo := &forge.Repo{Owner: "acme", Name: "private", CloneURL: srv.URL + "/acme/private.git"}
	_, err := g.Fetch(context.Background(), repo, "main", "")
	if err == nil {
		t.Fatal("Fetch from a failing server succeeded")
	}
	if code := forge.ErrorCode(err); code != forge.EUNAVAILABLE {
		t.Errorf("code = %q, want unavailable (%v)", code, err)
	}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+token))
	if auth := sent(); len(auth) == 0 || auth[0] != want {
		t.Errorf("Authorization sent = %q, want %q", auth, want)
	}
	if strings.Contains(err.Error(), token) || strings.Contains(err.Error(), want[6:]) {
		t.Errorf("error leaks the token: %v", err)
	}
	// Credentials in the URL itself are redacted from errors.
	repo.CloneURL = strings.Replace(srv.URL, "http://", "http://user:"+token+"@", 1) + "/x.git"
	_, err = g.Fetch(context.Background(), repo, "main", "")
	if err == nil || strings.Contains(err.Error(), token) {
		t.Errorf("error = %v; want an error without the password", err)
	}
}

// TestConcurrent: parallel fetches and checkouts of one repository are
// serialised and all succeed.
func TestConcurrent(t *testing.T) {
	u := newUpstream(t)
	var shas []string
	for i := range 4 {
		shas = append(shas, u.commit("c", map[string]string{"f": string(rune('a' + i))}))
	}
	g := newGit(t, git.Options{Depth: 1})
	root := t.TempDir()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Go(func() {
			sha := shas[i%len(shas)]
			dir := filepath.Join(root, "ws", string(rune('a'+i)))
			if err := g.Checkout(context.Background(), u.repo(), sha, dir); err != nil {
				errs <- err
				return
			}
			b, err := os.ReadFile(filepath.Join(dir, "f"))
			if err != nil || string(b) != string(rune('a'+i%len(shas))) {
				errs <- &os.PathError{Op: "content " + string(b), Path: dir, Err: err}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestCancel(t *testing.T) {
	// A server that never answers: the fetch must end with the context.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	defer srv.Close()
	g := newGit(t, git.Options{Origin: srv.URL})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := g.Fetch(ctx, &forge.Repo{Owner: "a", Name: "b", CloneURL: srv.URL + "/a/b.git"}, "main", "")
	if forge.ErrorCode(err) != forge.ECANCELED {
		t.Errorf("code = %q (%v), want canceled", forge.ErrorCode(err), err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %v", d)
	}
}

// BenchmarkCheckout measures making a workspace from a warm mirror, the
// part of webhook-to-first-command that git adds per build.
func BenchmarkCheckout(b *testing.B) {
	u := newUpstream(b)
	files := map[string]string{}
	for i := range 200 {
		files[filepath.Join("pkg", string(rune('a'+i%26)), "f"+string(rune('a'+i/26))+".go")] = strings.Repeat("x", 2000)
	}
	sha := u.commit("many files", files)
	g := newGit(b, git.Options{})
	if _, err := g.Fetch(context.Background(), u.repo(), "", sha); err != nil {
		b.Fatal(err)
	}
	root := b.TempDir()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		dir := filepath.Join(root, "ws", string(rune('a'+i%26))+string(rune('a'+(i/26)%26))+string(rune('a'+i/676)))
		if err := g.Checkout(context.Background(), u.repo(), sha, dir); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}

func TestChangedPaths(t *testing.T) {
	u := newUpstream(t)
	u.commit("base", map[string]string{"README": "r", "docs/a.md": "a", "old.txt": "o"})
	u.git("checkout", "--quiet", "-b", "feature")
	u.commit("feature 1", map[string]string{"src/x.go": "x"})
	u.git("mv", "old.txt", "new.txt")
	head := u.commit("feature 2", map[string]string{"docs/a.md": "a2"})
	u.git("checkout", "--quiet", "main")
	base := u.commit("main moves on", map[string]string{"README": "r2", "other": "o"})
	g := newGit(t, git.Options{})
	ctx := context.Background()
	for _, sha := range []string{base, head} {
		if _, err := g.Fetch(ctx, u.repo(), "", sha); err != nil {
			t.Fatal(err)
		}
	}
	got, err := g.ChangedPaths(ctx, u.repo(), base, head)
	want := []string{"docs/a.md", "new.txt", "old.txt", "src/x.go"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("ChangedPaths = %q, %v; want %q (not main's README or other)", got, err, want)
	}

	// Too shallow to find the merge base.
	shallow := newGit(t, git.Options{Depth: 1})
	for _, sha := range []string{base, head} {
		if _, err := shallow.Fetch(ctx, u.repo(), "", sha); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := shallow.ChangedPaths(ctx, u.repo(), base, head); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Errorf("shallow ChangedPaths error = %v, want not_found", err)
	}
}

func TestReadFileTooLarge(t *testing.T) {
	u := newUpstream(t)
	g := newGit(t, git.Options{})
	ctx := context.Background()
	big, err := g.Fetch(ctx, u.repo(), "", u.commit("big", map[string]string{"big.yml": strings.Repeat("x", git.MaxReadFile+1), "ok.yml": "x"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.ReadFile(ctx, u.repo(), big, "big.yml"); forge.ErrorCode(err) != forge.ETOOLARGE {
		t.Errorf("ReadFile(big) error code = %q (%v), want too_large", forge.ErrorCode(err), err)
	}
	if b, err := g.ReadFile(ctx, u.repo(), big, "ok.yml"); err != nil || string(b) != "x" {
		t.Errorf("ReadFile(ok) = %q, %v", b, err)
	}
}

// TestCredentialsPerRepository: TokenFor's token (a GitHub App
// installation's) is sent for its repository instead of Token.
func TestCredentialsPerRepository(t *testing.T) {
	srv, sent := authRecorder(t)
	var asked []string
	g := newGit(t, git.Options{Token: "ghp_static", Origin: srv.URL, TokenFor: func(_ context.Context, r *forge.Repo) (string, error) {
		asked = append(asked, r.FullName())
		return "ghs_installation", nil
	}})
	repo := &forge.Repo{Owner: "acme", Name: "private", CloneURL: srv.URL + "/acme/private.git"}
	if _, err := g.Fetch(context.Background(), repo, "main", ""); err == nil {
		t.Fatal("Fetch from a failing server succeeded")
	}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:ghs_installation"))
	if auth := sent(); len(auth) == 0 || auth[0] != want || len(asked) == 0 || asked[0] != "acme/private" {
		t.Errorf("Authorization sent = %q (TokenFor asked for %v), want %q", auth, asked, want)
	}
}

// authRecorder is a git server that fails every request and remembers
// the Authorization headers it got.
func authRecorder(t *testing.T) (*httptest.Server, func() []string) {
	var mu sync.Mutex
	var auth []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = append(auth, r.Header.Get("Authorization"))
		mu.Unlock()
		http.Error(w, "nope", http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(auth)
	}
}
