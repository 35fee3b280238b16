package git_test

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/git"
)

// TestCloneURLPolicy: clone URLs must be on the configured GitHub's host,
// over https or ssh; local repositories only when allowed; every other
// transport is refused, with a message that says why.
func TestCloneURLPolicy(t *testing.T) {
	gh, err := git.New(git.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ghe, err := git.New(git.Options{Dir: t.TempDir(), Origin: "https://ghe.example.com:8443/api/v3", AllowFile: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		g    *git.Git
		url  string
		want string // "" for allowed, else part of the error
	}{
		{gh, "https://github.com/acme/app.git", ""},
		{gh, "https://GitHub.com:443/acme/app.git", ""},
		{gh, "ssh://git@github.com/acme/app.git", ""},
		{gh, "git@github.com:acme/app.git", ""},
		{gh, "http://github.com/acme/app.git", "uses http, but the configured GitHub is https://github.com"},
		{gh, "https://github.com:8443/acme/app.git", "is on host github.com:8443, not on the configured GitHub (https://github.com)"},
		{gh, "http://127.0.0.1:9/evil/repo.git", "is on host 127.0.0.1:9, not on the configured GitHub (https://github.com)"},
		{gh, "https://evil.example/acme/app.git", "is on host evil.example"},
		{gh, "git@evil.example:acme/app.git", "is on host evil.example"},
		{gh, "ssh://git@evil.example/acme/app.git", "is on host evil.example"},
		{gh, "git://github.com/acme/app.git", "uses git://, which forge refuses"},
		{gh, "ext::sh -c touch% /tmp/pwned", `uses the git transport "ext"`},
		{gh, "fd::3", `uses the git transport "fd"`},
		{gh, "file:///srv/git/app.git", "only with git.allow_file (FORGE_GIT_ALLOW_FILE=true)"},
		{gh, "/srv/git/app.git", "only with git.allow_file (FORGE_GIT_ALLOW_FILE=true)"},
		{gh, "relative/path", "is not a URL"},
		{gh, "", "has no clone URL"},
		{gh, "-oProxyCommand=x", "is not valid"},
		{ghe, "https://ghe.example.com:8443/acme/app.git", ""},
		{ghe, "https://github.com/acme/app.git", "is on host github.com, not on the configured GitHub (https://ghe.example.com:8443)"},
		{ghe, "https://ghe.example.com/acme/app.git", "is on host ghe.example.com"},
		{ghe, "git@ghe.example.com:acme/app.git", ""},
		{ghe, "file:///srv/git/app.git", ""},
		{ghe, "/srv/git/app.git", ""},
	} {
		err := tt.g.CheckCloneURL(tt.url)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("CheckCloneURL(%q) = %v, want allowed", tt.url, err)
		case tt.want != "" && (forge.ErrorCode(err) != forge.EINVALID || !strings.Contains(forge.ErrorMessage(err), tt.want)):
			t.Errorf("CheckCloneURL(%q) = %v, want invalid: …%s…", tt.url, err, tt.want)
		}
	}
	if _, err := git.New(git.Options{Dir: t.TempDir(), Origin: "ftp://x"}); forge.ErrorCode(err) != forge.EINVALID {
		t.Errorf("New with an ftp origin: %v, want invalid", err)
	}
}

// TestTokenGoesOnlyToOrigin (issue 7.2): with a token configured, a clone
// URL on another host than the configured GitHub is refused before any
// request is made, so the token never leaves for it; the configured host
// gets it.
func TestTokenGoesOnlyToOrigin(t *testing.T) {
	const token = "ghs_supersecret123"
	type hit struct{ host, auth string }
	var mu sync.Mutex
	var hits []hit
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits = append(hits, hit{r.Host, r.Header.Get("Authorization")})
		mu.Unlock()
		http.Error(w, "nope", http.StatusInternalServerError)
	})
	github := httptest.NewServer(handler)
	defer github.Close()
	evil := httptest.NewServer(handler)
	defer evil.Close()
	g := newGit(t, git.Options{Token: token, Origin: github.URL + "/api/v3"})
	ctx := context.Background()

	_, err := g.Fetch(ctx, &forge.Repo{Owner: "evil", Name: "repo", CloneURL: evil.URL + "/evil/repo.git"}, "main", "")
	if forge.ErrorCode(err) != forge.EINVALID || !strings.Contains(err.Error(), "not on the configured GitHub") {
		t.Errorf("Fetch from another host: %v, want invalid: not on the configured GitHub", err)
	}
	mu.Lock()
	if len(hits) != 0 {
		t.Errorf("requests made for a refused clone URL: %v", hits)
	}
	mu.Unlock()

	if _, err := g.Fetch(ctx, &forge.Repo{Owner: "acme", Name: "app", CloneURL: github.URL + "/acme/app.git"}, "main", ""); forge.ErrorCode(err) != forge.EUNAVAILABLE {
		t.Errorf("Fetch from the configured GitHub: %v, want unavailable (it answers 500)", err)
	}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+token))
	mu.Lock()
	defer mu.Unlock()
	if len(hits) == 0 {
		t.Fatal("the configured GitHub was not asked")
	}
	for _, h := range hits {
		if h.host != strings.TrimPrefix(github.URL, "http://") || h.auth != want {
			t.Errorf("request to %s with Authorization %q; want only %s, with the token", h.host, h.auth, github.URL)
		}
	}
}

// TestLocalRepositoriesNeedAllowFile: without AllowFile a local path is
// refused before git runs; git itself is told which transports it may use.
func TestLocalRepositoriesNeedAllowFile(t *testing.T) {
	u := newUpstream(t)
	sha := u.commit("c", map[string]string{"f": "x"})
	g, err := git.New(git.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, url := range []string{u.dir, "file://" + u.dir} {
		_, err := g.Fetch(context.Background(), &forge.Repo{Owner: "a", Name: "b", CloneURL: url}, "", sha)
		if forge.ErrorCode(err) != forge.EINVALID || !strings.Contains(err.Error(), "FORGE_GIT_ALLOW_FILE=true") {
			t.Errorf("Fetch(%s) without AllowFile: %v, want invalid naming FORGE_GIT_ALLOW_FILE", url, err)
		}
	}
	if got, err := newGit(t, git.Options{}).Fetch(context.Background(), &forge.Repo{Owner: "a", Name: "b", CloneURL: u.dir}, "", sha); err != nil || got != sha {
		t.Errorf("Fetch with AllowFile = %q, %v", got, err)
	}
}
