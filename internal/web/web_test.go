package web

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/sqldb"
)

// fixture is the pages over a real SQLite store with one repository
// (acme/app) and builds builds, build 1 failed with two jobs.
type fixture struct {
	db      *sqldb.DB
	srv     *httptest.Server
	repo    *forge.Repo
	jobs    []*forge.BuildJob
	control *fakeControl
}

const userSecret = "user-secret"

type fakeControl struct {
	mu       sync.Mutex
	canceled []int64
}

func (c *fakeControl) Cancel(_ context.Context, id int64, reason string) (*forge.Build, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.canceled = append(c.canceled, id)
	return &forge.Build{ID: id}, nil
}

func (c *fakeControl) Restart(_ context.Context, id int64) (*forge.Build, error) {
	return &forge.Build{ID: id + 1000, Number: 99}, nil
}

func newFixture(t testing.TB, builds int, private bool) *fixture {
	t.Helper()
	ctx := context.Background()
	db, err := sqldb.Open(ctx, sqldb.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Migrate(ctx, "up"); err != nil {
		t.Fatal(err)
	}
	f := &fixture{db: db, control: &fakeControl{}}
	f.repo = &forge.Repo{Owner: "acme", Name: "app", CloneURL: "https://github.com/acme/app.git", DefaultBranch: "main"}
	if err := db.UpsertRepo(ctx, f.repo); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().UTC().Add(-time.Hour)
	for i := 1; i <= builds; i++ {
		st := forge.StatusSuccess
		if i == 1 {
			st = forge.StatusFailure
		}
		b := &forge.Build{RepoID: f.repo.ID, Action: "execute", Status: st, Created: t0, Started: t0, Finished: t0.Add(time.Minute),
			Hook: forge.Hook{Event: "push", Ref: "refs/heads/main", Branch: "main", SHA: strings.Repeat("a", 40),
				Message: fmt.Sprintf("change %d <script>alert(1)</script>", i), Author: "octo<b>cat"}}
		jobs := []*forge.BuildJob{{Name: "build", Status: forge.StatusSuccess}, {Name: "test", Status: st, Needs: []string{"build"}}}
		if err := db.CreateBuild(ctx, b, jobs); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			f.jobs = jobs
		}
	}
	ui, err := New(Options{Repos: db, Builds: db, Logs: db, Control: f.control, PrivateReads: private, PublicURL: "https://ci.example.com",
		Authenticate: func(_ context.Context, secret string) (*forge.Token, error) {
			if secret == userSecret {
				return &forge.Token{Name: "user"}, nil
			}
			return nil, forge.Errorf(forge.EUNAUTHORIZED, "unknown API token")
		}})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(ui.Handler())
	t.Cleanup(f.srv.Close)
	return f
}

// client is a browser-like client: cookies, no redirects followed.
func (f *fixture) client() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func get(t testing.TB, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// post sends a form as a same-origin page of the server would.
func post(t testing.TB, c *http.Client, u string, form url.Values, site string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", site)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// signIn signs c in through the form and returns the CSRF token of its
// session, read from a page.
func (f *fixture) signIn(t testing.TB, c *http.Client) string {
	t.Helper()
	_, page := get(t, c, f.srv.URL+"/-/login?next=/acme/app")
	csrf := between(page, `name="csrf" value="`, `"`)
	resp, _ := post(t, c, f.srv.URL+"/-/login", url.Values{"csrf": {csrf}, "token": {userSecret}, "next": {"/acme/app"}}, "same-origin")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/acme/app" {
		t.Fatalf("sign-in: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	_, page = get(t, c, f.srv.URL+"/acme/app/builds/2")
	return between(page, `name="csrf" value="`, `"`)
}

func between(s, a, b string) string {
	_, s, _ = strings.Cut(s, a)
	s, _, _ = strings.Cut(s, b)
	return s
}

func TestPagesRenderEscapedWithCSP(t *testing.T) {
	f := newFixture(t, 3, false)
	c := f.client()
	for _, path := range []string{"/", "/acme/app", "/acme/app?status=failure", "/acme/app/builds/1",
		fmt.Sprintf("/acme/app/builds/1/jobs/%d", f.jobs[1].ID), "/-/pools", "/-/login"} {
		resp, body := get(t, c, f.srv.URL+path)
		if resp.StatusCode != 200 {
			t.Errorf("GET %s: %d\n%s", path, resp.StatusCode, body)
			continue
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
			t.Errorf("GET %s: Content-Security-Policy %q", path, csp)
		}
		if strings.Contains(body, "<script>alert") || strings.Contains(body, "octo<b>") {
			t.Errorf("GET %s: stored text reached the page unescaped", path)
		}
		if strings.Contains(body, "<script>") && !strings.Contains(body, `<script src="/-/static/`) {
			t.Errorf("GET %s: an inline script", path)
		}
	}
	_, body := get(t, c, f.srv.URL+"/acme/app?status=failure")
	if !strings.Contains(body, ">#1<") || strings.Contains(body, ">#2<") {
		t.Errorf("status filter: want build 1 only")
	}
	if !strings.Contains(body, "[![forge](https://ci.example.com/badges/acme/app/status.svg)](https://ci.example.com/acme/app)") {
		t.Errorf("the repository page lacks the badge Markdown")
	}
	for path, want := range map[string]int{"/acme/nope": 404, "/acme/app/builds/77": 404, "/acme/app/builds/x": 400,
		"/acme/app/builds/2/jobs/" + fmt.Sprint(f.jobs[0].ID): 404, "/-/static/nope.js": 404, "/a/b/c/d/e/f": 404} {
		if resp, _ := get(t, c, f.srv.URL+path); resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	resp, _ := get(t, c, f.srv.URL+"/-/static/log.js")
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), "javascript") {
		t.Errorf("log.js: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

func TestBuildsPaging(t *testing.T) {
	f := newFixture(t, buildsPerPage+5, false)
	c := f.client()
	_, body := get(t, c, f.srv.URL+"/acme/app")
	next := between(body, `<a href="?`, `"`)
	if !strings.Contains(next, "before=") {
		t.Fatalf("no link to older builds")
	}
	_, body = get(t, c, f.srv.URL+"/acme/app?"+strings.ReplaceAll(next, "&amp;", "&"))
	if n := strings.Count(body, "<tr data-build="); n != 5 {
		t.Errorf("second page: %d builds, want 5", n)
	}
}

// TestListPart: a page's script asks for just its list (X-Forge-Part:
// list), answered by the page's own query: a new build is in it on the
// first page when it matches the filter, never on an older page.
func TestListPart(t *testing.T) {
	f := newFixture(t, buildsPerPage+5, false)
	c := f.client()
	part := func(path string) string {
		t.Helper()
		req, _ := http.NewRequest("GET", f.srv.URL+path, nil)
		req.Header.Set("X-Forge-Part", "list")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || strings.Contains(string(b), "<html") || !strings.Contains(resp.Header.Get("Vary"), "X-Forge-Part") {
			t.Fatalf("GET %s as a list: %d, Vary %q\n%s", path, resp.StatusCode, resp.Header.Get("Vary"), b)
		}
		return string(b)
	}
	_, page := get(t, c, f.srv.URL+"/acme/app")
	older := "/acme/app?" + strings.ReplaceAll(between(page, `<a href="?`, `"`), "&amp;", "&")
	b := &forge.Build{RepoID: f.repo.ID, Action: "execute", Status: forge.StatusRunning, Hook: forge.Hook{Event: "push", Branch: "feature"}}
	if err := f.db.CreateBuild(context.Background(), b, []*forge.BuildJob{{Name: "build"}}); err != nil {
		t.Fatal(err)
	}
	key := fmt.Sprintf(`data-key="b%d"`, b.ID)
	for path, want := range map[string]bool{"/acme/app": true, "/acme/app?status=running": true, "/acme/app?branch=feature": true,
		"/acme/app?status=failure": false, "/acme/app?branch=main": false, older: false} {
		body := part(path)
		if strings.Contains(body, key) != want {
			t.Errorf("list of %s: has the new build %v, want %v", path, !want, want)
		}
		if !strings.Contains(body, `id="build-rows"`) || !strings.Contains(body, `id="older"`) {
			t.Errorf("list of %s lacks its rows or paging:\n%s", path, body)
		}
	}
	if n := strings.Count(part("/acme/app"), "<tr data-build="); n != buildsPerPage {
		t.Errorf("first page's list: %d builds, want %d", n, buildsPerPage)
	}
	// A new repository is on the repositories page's list.
	if err := f.db.UpsertRepo(context.Background(), &forge.Repo{Owner: "acme", Name: "newer", CloneURL: "x", DefaultBranch: "main"}); err != nil {
		t.Fatal(err)
	}
	if body := part("/"); !strings.Contains(body, `href="/acme/newer"`) || !strings.Contains(body, `id="repos"`) {
		t.Errorf("repositories' list lacks the new repository:\n%s", body)
	}
	// Pages without a list, and errors, answer whole.
	req, _ := http.NewRequest("GET", f.srv.URL+"/acme/nope", nil)
	req.Header.Set("X-Forge-Part", "list")
	if resp, err := c.Do(req); err != nil || resp.StatusCode != 404 {
		t.Errorf("list of a missing repository: %v %v, want 404", resp, err)
	} else {
		resp.Body.Close()
	}
}

func TestSignInAndCSRF(t *testing.T) {
	f := newFixture(t, 2, true)
	c := f.client()
	// Private reads: anonymous visitors are sent to sign in, and back.
	resp, _ := get(t, c, f.srv.URL+"/acme/app/builds/1")
	if loc := resp.Header.Get("Location"); resp.StatusCode != 303 || loc != "/-/login?next=%2Facme%2Fapp%2Fbuilds%2F1" {
		t.Fatalf("anonymous: %d to %q", resp.StatusCode, loc)
	}
	// A sign-in without the form's CSRF token is refused.
	get(t, c, f.srv.URL+"/-/login")
	if resp, _ := post(t, c, f.srv.URL+"/-/login", url.Values{"csrf": {"guess"}, "token": {userSecret}}, "same-origin"); resp.StatusCode != 403 {
		t.Errorf("sign-in with a wrong CSRF token: %d, want 403", resp.StatusCode)
	}
	// An unknown token goes back to the form.
	_, page := get(t, c, f.srv.URL+"/-/login")
	csrf := between(page, `name="csrf" value="`, `"`)
	resp, _ = post(t, c, f.srv.URL+"/-/login", url.Values{"csrf": {csrf}, "token": {"wrong"}, "next": {"//evil.example"}}, "same-origin")
	if loc := resp.Header.Get("Location"); !strings.HasPrefix(loc, "/-/login?error=") || !strings.HasSuffix(loc, "next=%2F") {
		t.Errorf("unknown token: to %q, want the form again with next=/", loc)
	}
	sessionCSRF := f.signIn(t, c)
	u, _ := url.Parse(f.srv.URL)
	var session *http.Cookie
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == "forge_session" {
			session = ck
		}
	}
	if session == nil {
		t.Fatal("no session cookie after sign-in")
	}
	// The jar hides the attributes: read them from a fresh sign-in.
	c2 := f.client()
	_, page = get(t, c2, f.srv.URL+"/-/login")
	resp, _ = post(t, c2, f.srv.URL+"/-/login", url.Values{"csrf": {between(page, `name="csrf" value="`, `"`)}, "token": {userSecret}}, "same-origin")
	if sc := strings.Join(resp.Header.Values("Set-Cookie"), "\n"); !strings.Contains(sc, "forge_session=") || !strings.Contains(sc, "HttpOnly") || !strings.Contains(sc, "SameSite=Strict") {
		t.Errorf("session cookie: %s", sc)
	}
	if resp, body := get(t, c, f.srv.URL+"/acme/app/builds/2"); resp.StatusCode != 200 || !strings.Contains(body, "signed in as user") {
		t.Errorf("signed in: %d", resp.StatusCode)
	}
	// Form posts: the right CSRF token and same origin, or nothing.
	cancel := f.srv.URL + "/acme/app/builds/2/cancel"
	for _, c := range []struct {
		csrf, site string
		want       int
	}{{"", "same-origin", 403}, {"guess", "same-origin", 403}, {sessionCSRF, "cross-site", 403}, {sessionCSRF, "same-site", 403}} {
		if resp, _ := post(t, c2, cancel, url.Values{"csrf": {c.csrf}}, c.site); resp.StatusCode != c.want {
			t.Errorf("cancel with csrf %q from %s: %d, want %d", c.csrf, c.site, resp.StatusCode, c.want)
		}
	}
	if len(f.control.canceled) != 0 {
		t.Fatalf("refused posts cancelled builds %v", f.control.canceled)
	}
	if resp, _ := post(t, c, cancel, url.Values{"csrf": {sessionCSRF}}, "same-origin"); resp.StatusCode != 303 || len(f.control.canceled) != 1 {
		t.Errorf("cancel: %d, cancelled %v", resp.StatusCode, f.control.canceled)
	}
	if resp, _ := post(t, c, f.srv.URL+"/acme/app/builds/1/restart", url.Values{"csrf": {sessionCSRF}}, "same-origin"); resp.Header.Get("Location") != "/acme/app/builds/99" {
		t.Errorf("restart: to %q, want the new build", resp.Header.Get("Location"))
	}
	// Anonymous posts are refused even with a guessed token.
	if resp, _ := post(t, f.client(), cancel, url.Values{"csrf": {sessionCSRF}}, "same-origin"); resp.StatusCode != 401 {
		t.Errorf("anonymous cancel: %d, want 401", resp.StatusCode)
	}
	// Sign out ends the session.
	if resp, _ := post(t, c, f.srv.URL+"/-/logout", url.Values{"csrf": {sessionCSRF}}, "same-origin"); resp.StatusCode != 303 {
		t.Errorf("sign out: %d", resp.StatusCode)
	}
	if resp, _ := get(t, c, f.srv.URL+"/acme/app"); resp.StatusCode != 303 {
		t.Errorf("after sign-out: %d, want a redirect to sign in", resp.StatusCode)
	}
}

func TestLastLineAndSteps(t *testing.T) {
	f := newFixture(t, 1, false)
	ctx := context.Background()
	for i, n := range []int{0, 1, 2, 1000, 1025} {
		job := f.jobs[0].ID
		if i > 0 {
			b := &forge.Build{RepoID: f.repo.ID, Action: "execute", Status: forge.StatusSuccess}
			jobs := []*forge.BuildJob{{Name: "x"}}
			if err := f.db.CreateBuild(ctx, b, jobs); err != nil {
				t.Fatal(err)
			}
			job = jobs[0].ID
		}
		var ll []forge.LogLine
		for k := 1; k <= n; k++ {
			ll = append(ll, forge.LogLine{Number: k, Time: time.Unix(int64(k), 0), Stream: forge.Stdout, Text: "x"})
		}
		if n > 0 {
			if err := f.db.Append(ctx, job, ll); err != nil {
				t.Fatal(err)
			}
		}
		got, err := lastLine(ctx, f.db, job)
		if err != nil || got != n {
			t.Errorf("lastLine of %d lines = %d, %v", n, got, err)
		}
		if n != 1025 {
			continue
		}
		j := &forge.BuildJob{ID: job, Status: forge.StatusFailure, Steps: []*forge.BuildStep{
			{Index: 0, Name: "a", Status: forge.StatusSuccess, Started: time.Unix(10, 0), Finished: time.Unix(500, 0)},
			{Index: 1, Name: "b", Status: forge.StatusFailure, Started: time.Unix(600, 0), Finished: time.Unix(1100, 0)},
			{Index: 2, Name: "c", Status: forge.StatusSkipped},
		}}
		steps, err := stepRanges(ctx, f.db, j, n)
		if err != nil {
			t.Fatal(err)
		}
		want := "set up 1-9 false|a 10-599 false|b 600-1025 true|"
		var got2 string
		for _, s := range steps {
			got2 += fmt.Sprintf("%s %d-%d %v|", s.Name, s.From, s.To, s.Open)
		}
		if got2 != want {
			t.Errorf("steps = %s, want %s", got2, want)
		}
		// Recorded line numbers win over the timestamps: a running step
		// reaches the end of the log, a finished one knows its last line,
		// and a stale step of an earlier attempt starts no earlier than
		// the one before it.
		j.Status = forge.StatusRunning
		j.Steps = []*forge.BuildStep{
			{Index: 0, Name: "a", Status: forge.StatusSuccess, Started: time.Unix(10, 0), Finished: time.Unix(500, 0), FirstLine: 3, LastLine: 40},
			{Index: 1, Name: "b", Status: forge.StatusFailure, Started: time.Unix(600, 0), Finished: time.Unix(700, 0), FirstLine: 2, LastLine: 2},
			{Index: 2, Name: "c", Status: forge.StatusSuccess, Started: time.Unix(800, 0), Finished: time.Unix(800, 0), FirstLine: 42, LastLine: 41},
			{Index: 3, Name: "d", Status: forge.StatusRunning, Started: time.Unix(900, 0), FirstLine: 50},
		}
		if steps, err = stepRanges(ctx, f.db, j, n); err != nil {
			t.Fatal(err)
		}
		want, got2 = "set up 1-2 last 0|a 3-2 last 0|b 3-41 last 0|c 42-49 last 41|d 50-1025 last 0|", ""
		for _, s := range steps {
			got2 += fmt.Sprintf("%s %d-%d last %d|", s.Name, s.From, s.To, s.Last)
		}
		if got2 != want {
			t.Errorf("steps by recorded lines = %s, want %s", got2, want)
		}
	}
}

func TestGraphLayout(t *testing.T) {
	jobs := []*forge.BuildJob{{ID: 1, Name: "build"}, {ID: 2, Name: "lint"}, {ID: 3, Name: "test", Needs: []string{"build"}},
		{ID: 4, Name: "deploy", Needs: []string{"test", "lint"}}, {ID: 5, Name: "loop", Needs: []string{"loop"}}}
	g := layoutGraph(jobs, "/j/")
	col := map[string]int{}
	for _, n := range g.Nodes {
		col[n.Job.Name] = (n.X - pad) / (nodeW + gapX)
	}
	if col["build"] != 0 || col["lint"] != 0 || col["test"] != 1 || col["deploy"] != 2 {
		t.Errorf("columns = %v", col)
	}
	if len(g.Edges) != 4 || g.Width <= 0 || g.Height <= 0 || g.Nodes[3].Href != "/j/4" {
		t.Errorf("graph = %+v", g)
	}
}

// BenchmarkPages serves each page with 10,000 builds stored; the target is
// under 100 ms server time each.
func BenchmarkPages(b *testing.B) {
	f := newFixture(b, 10000, false)
	ctx := context.Background()
	var ll []forge.LogLine
	for k := 1; k <= 10000; k++ {
		ll = append(ll, forge.LogLine{Number: k, Time: time.Unix(int64(k), 0), Stream: forge.Stdout, Text: "a line of output"})
	}
	if err := f.db.Append(ctx, f.jobs[1].ID, ll); err != nil {
		b.Fatal(err)
	}
	c := f.client()
	for _, path := range []string{"/", "/acme/app", "/acme/app?status=failure", "/acme/app/builds/1",
		fmt.Sprintf("/acme/app/builds/1/jobs/%d", f.jobs[1].ID), "/-/pools"} {
		b.Run(strings.NewReplacer("/", "_", "?", "_").Replace(path), func(b *testing.B) {
			for b.Loop() {
				resp, _ := get(b, c, f.srv.URL+path)
				if resp.StatusCode != 200 {
					b.Fatalf("%s: %d", path, resp.StatusCode)
				}
			}
		})
	}
}
