package http_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/forgeci/forge"
	httpapi "github.com/forgeci/forge/internal/http"
	"github.com/forgeci/forge/internal/prometheus"
	"github.com/forgeci/forge/internal/sqldb"
)

// fixture is a server over a real SQLite store holding one repository
// (acme/app) with a finished build 1 (one job with steps and a log) and a
// queued build 2.
type fixture struct {
	db      *sqldb.DB
	srv     *httptest.Server
	api     *httpapi.Server
	repo    *forge.Repo
	done    *forge.Build
	queued  *forge.Build
	job     *forge.BuildJob
	admin   string
	user    string
	manuals []string
}

func newFixture(t *testing.T, tweak func(*httpapi.Options)) *fixture {
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
	f := &fixture{db: db, admin: "admin-secret", user: "user-secret"}
	f.repo = &forge.Repo{Owner: "acme", Name: "app", CloneURL: "https://github.com/acme/app.git", DefaultBranch: "main"}
	must(t, db.UpsertRepo(ctx, f.repo))
	hook := forge.Hook{Event: "push", Repo: *f.repo, Ref: "refs/heads/main", Branch: "main", Target: "main", SHA: strings.Repeat("a", 40)}
	f.done = &forge.Build{RepoID: f.repo.ID, Action: "execute", Status: forge.StatusQueued, Hook: hook}
	jobs := []*forge.BuildJob{{Name: "test"}}
	must(t, db.CreateBuild(ctx, f.done, jobs))
	f.done.Status, f.done.Started, f.done.Finished = forge.StatusSuccess, time.Now(), time.Now()
	must(t, db.UpdateBuild(ctx, f.done))
	f.job = jobs[0]
	f.job.Status, f.job.Attempt, f.job.Started, f.job.Finished = forge.StatusSuccess, 1, time.Now(), time.Now()
	must(t, db.UpdateJob(ctx, f.job))
	must(t, db.SaveStep(ctx, &forge.BuildStep{JobID: f.job.ID, Index: 0, Name: "go test", Status: forge.StatusSuccess, Started: time.Now(), Finished: time.Now()}))
	var lines []forge.LogLine
	for i := 1; i <= 5; i++ {
		lines = append(lines, forge.LogLine{Number: i, Time: time.Now(), Stream: forge.Stdout, Text: fmt.Sprintf("line %d <b>", i)})
	}
	must(t, db.Append(ctx, f.job.ID, lines))
	f.queued = &forge.Build{RepoID: f.repo.ID, Action: "execute", Status: forge.StatusQueued, Hook: hook}
	must(t, db.CreateBuild(ctx, f.queued, []*forge.BuildJob{{Name: "test"}}))
	must(t, db.CreateToken(ctx, &forge.Token{Name: "admin", Admin: true, Hash: httpapi.HashToken(f.admin)}))
	must(t, db.CreateToken(ctx, &forge.Token{Name: "user", Hash: httpapi.HashToken(f.user)}))

	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "forge_test_total", Help: "x"}))
	opts := httpapi.Options{
		Repos: db, Store: db, Logs: db, Tokens: db, LogIndex: db, Reports: db,
		Control: control{db: db},
		Trigger: triggerFunc(func(ctx context.Context, repo *forge.Repo, ref, action string) (*forge.Build, error) {
			if ref == "nope" {
				return nil, forge.Errorf(forge.EINVALID, "no ref %q in %s", ref, repo.FullName())
			}
			if ref == "gone" { // what the trigger says of a ref git cannot find
				return nil, forge.Errorf(forge.ENOTFOUND, "%s of %s is not a commit", ref, repo.FullName())
			}
			f.manuals = append(f.manuals, ref+" "+action)
			b := &forge.Build{RepoID: repo.ID, Action: "execute", Status: forge.StatusQueued, Hook: forge.Hook{Event: "manual", Repo: *repo, Ref: ref, SHA: strings.Repeat("b", 40)}}
			return b, db.CreateBuild(ctx, b, []*forge.BuildJob{{Name: "test"}})
		}),
		Hooks:    http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) }),
		Leases:   http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"pools":[]}`)) }),
		Ready:    db.CheckSchema,
		Gatherer: reg,
	}
	if tweak != nil {
		tweak(&opts)
	}
	f.api = httpapi.New(opts)
	f.srv = httptest.NewServer(f.api.Handler())
	t.Cleanup(f.srv.Close)
	return f
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// control implements httpapi.Builds on the store, as the runner does for
// builds it is not running.
type control struct{ db *sqldb.DB }

func (c control) Cancel(ctx context.Context, id int64, reason string) (*forge.Build, error) {
	b, err := c.db.Build(ctx, id)
	if err != nil {
		return nil, err
	}
	if b.Status.Done() {
		return nil, forge.Errorf(forge.ECONFLICT, "build %d has already finished", id)
	}
	b.Status, b.Error, b.Finished = forge.StatusCanceled, reason, time.Now()
	return b, c.db.UpdateBuild(ctx, b)
}

func (c control) Restart(ctx context.Context, id int64) (*forge.Build, error) {
	old, err := c.db.Build(ctx, id)
	if err != nil {
		return nil, err
	}
	if !old.Status.Done() {
		return nil, forge.Errorf(forge.ECONFLICT, "build %d is still %s", id, old.Status)
	}
	b := &forge.Build{RepoID: old.RepoID, Action: old.Action, Status: forge.StatusQueued, Hook: old.Hook}
	return b, c.db.CreateBuild(ctx, b, []*forge.BuildJob{{Name: "test"}})
}

type triggerFunc func(ctx context.Context, repo *forge.Repo, ref, action string) (*forge.Build, error)

// Approve approves nothing: the tests' builds do not wait for approval.
func (f triggerFunc) Approve(context.Context, *forge.Repo, int, string) (int, error) { return 0, nil }

func (f triggerFunc) Manual(ctx context.Context, repo *forge.Repo, ref, action string) (*forge.Build, error) {
	return f(ctx, repo, ref, action)
}

// do sends a request with an optional token and returns status and body.
func (f *fixture) do(t *testing.T, method, path, token, body string) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, data
}

// openAPIDoc is the parts of the OpenAPI document the tests read.
type openAPIDoc struct {
	Paths map[string]map[string]json.RawMessage `json:"paths"`
}

type operation struct {
	Responses map[string]struct {
		Content map[string]struct {
			Schema struct {
				Ref string `json:"$ref"`
			} `json:"schema"`
		} `json:"content"`
	} `json:"responses"`
}

var methods = map[string]string{"get": "GET", "post": "POST", "put": "PUT", "delete": "DELETE", "patch": "PATCH"}

func loadDoc(t *testing.T) (openAPIDoc, map[string]operation) {
	t.Helper()
	var doc openAPIDoc
	if err := json.Unmarshal(httpapi.OpenAPI(), &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	ops := map[string]operation{}
	for path, item := range doc.Paths {
		for key, raw := range item {
			m, ok := methods[key]
			if !ok {
				continue
			}
			var op operation
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s %s: %v", key, path, err)
			}
			ops[m+" "+path] = op
		}
	}
	return doc, ops
}

func TestOpenAPIDescribesExactlyTheServedRoutes(t *testing.T) {
	f := newFixture(t, nil)
	_, ops := loadDoc(t)
	served := map[string]bool{}
	for _, r := range f.api.Routes() {
		if r.Access == httpapi.Delegated {
			continue // the lease server's routes: docs/leases.md
		}
		key := r.Method + " " + r.Pattern
		served[key] = true
		if _, ok := ops[key]; !ok {
			t.Errorf("route %s is served but not described in openapi.json", key)
		}
	}
	for key := range ops {
		if !served[key] {
			t.Errorf("openapi.json describes %s, which the server does not serve", key)
		}
	}
	if len(served) < 10 {
		t.Errorf("only %d routes found; the walk is broken", len(served))
	}
}

// TestResponsesMatchTheirSchemas calls every described route on the real
// handlers and validates each JSON response against the schema the
// document gives for its status.
func TestResponsesMatchTheirSchemas(t *testing.T) {
	f := newFixture(t, nil)
	_, ops := loadDoc(t)
	comp := jsonschema.NewCompiler()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(httpapi.OpenAPI()))
	if err != nil {
		t.Fatal(err)
	}
	if err := comp.AddResource("file:///openapi.json", doc); err != nil {
		t.Fatal(err)
	}
	fill := strings.NewReplacer("{owner}", "acme", "{repo}", "app", "{job}", fmt.Sprint(f.job.ID))
	type call struct {
		key, path, token, body string
		want                   int
		query                  string
	}
	b1, b2 := fmt.Sprint(f.done.Number), fmt.Sprint(f.queued.Number)
	calls := []call{
		{"POST /api/v1/repos/{owner}/{repo}/builds/{number}/cancel", b2, f.user, "", 200, ""},
		{"POST /api/v1/repos/{owner}/{repo}/builds/{number}/cancel", b1, f.user, "", 409, ""},
		{"POST /api/v1/repos/{owner}/{repo}/builds/{number}/restart", b1, f.user, "", 201, ""},
		{"POST /api/v1/repos/{owner}/{repo}/builds/{number}/approve", b1, f.user, "", 409, ""},
		{"POST /api/v1/repos/{owner}/{repo}/builds", "", f.user, `{"ref": "main", "action": "execute"}`, 201, ""},
		{"POST /api/v1/repos/{owner}/{repo}/builds", "", f.user, `{"ref": "nope"}`, 400, ""},
		{"POST /api/v1/repos/{owner}/{repo}/builds", "", f.user, `{"ref": "gone"}`, 400, ""},
		{"POST /api/v1/repos/{owner}/{repo}/builds", "", f.user, `{"ref": "main", "colour": "red"}`, 400, ""},
		{"POST /api/v1/repos/{owner}/{repo}/builds", "", "", `{"ref": "main"}`, 401, ""},
		{"GET /api/v1/repos/{owner}/{repo}/builds/{number}", "99", "", "", 404, ""},
		{"GET /api/v1/repos/{owner}/{repo}/builds/{number}", "x", "", "", 400, ""},
		{"GET /api/v1/repos/{owner}/{repo}", "", "wrong-token", "", 401, ""},
		{key: "GET /api/v1/repos/{owner}/{repo}/builds/{number}/jobs/{job}/log/search", path: b1, want: 200, query: "?q=LINE+3"},
		{key: "GET /api/v1/repos/{owner}/{repo}/builds/{number}/jobs/{job}/log/search", path: b1, want: 400},
		{key: "GET /api/v1/repos/{owner}/{repo}/search", want: 200, query: "?q=line"},
		{key: "GET /api/v1/repos/{owner}/{repo}/search", want: 400, query: "?q=li"},
		{key: "GET /badges/{owner}/{repo}/status.json", want: 200, query: "?branch=nope"},
	}
	covered := map[string]bool{}
	for _, c := range calls {
		covered[c.key] = true
	}
	for key := range ops {
		if !covered[key] {
			want := 200
			if strings.HasPrefix(key, "POST /hooks") {
				want = 202
			}
			calls = append(calls, call{key: key, path: b1, want: want})
		}
	}
	for _, c := range calls {
		method, pattern, _ := strings.Cut(c.key, " ")
		path := strings.ReplaceAll(fill.Replace(pattern), "{number}", c.path) + c.query
		resp, body := f.do(t, method, path, c.token, c.body)
		name := fmt.Sprintf("%s %s", method, path)
		if resp.StatusCode != c.want {
			t.Errorf("%s: status %d, want %d; body %s", name, resp.StatusCode, c.want, body)
			continue
		}
		resp2, ok := ops[c.key].Responses[fmt.Sprint(resp.StatusCode)]
		if !ok {
			t.Errorf("%s: status %d is not described", name, resp.StatusCode)
			continue
		}
		ct := resp.Header.Get("Content-Type")
		media, _, _ := strings.Cut(ct, ";")
		content, described := resp2.Content[media]
		if len(resp2.Content) > 0 && !described {
			t.Errorf("%s: content type %q is not described", name, ct)
			continue
		}
		if media != "application/json" || content.Schema.Ref == "" {
			continue
		}
		sch, err := comp.Compile("file:///openapi.json" + content.Schema.Ref)
		if err != nil {
			t.Fatalf("compile %s: %v", content.Schema.Ref, err)
		}
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
		if err != nil {
			t.Errorf("%s: body is not JSON: %v", name, err)
			continue
		}
		if err := sch.Validate(v); err != nil {
			t.Errorf("%s: response does not match %s: %v\nbody: %s", name, content.Schema.Ref, err, body)
		}
	}
	if len(f.manuals) != 1 || f.manuals[0] != "main execute" {
		t.Errorf("manual triggers = %q, want one of main for execute", f.manuals)
	}
}

func TestAuth(t *testing.T) {
	tests := []struct {
		name         string
		privateReads bool
		method, path string
		token        string
		want         int
	}{
		{"public read without token", false, "GET", "/api/v1/repos", "", 200},
		{"private read without token", true, "GET", "/api/v1/repos", "", 401},
		{"private read with token", true, "GET", "/api/v1/repos", "user-secret", 200},
		{"bad token on a public read", false, "GET", "/api/v1/repos", "nope", 401},
		{"write without token", false, "POST", "/api/v1/repos/acme/app/builds/1/restart", "", 401},
		{"lease read is a read", false, "GET", "/api/v1/pools", "", 200},
		{"lease mutation needs admin", false, "PUT", "/api/v1/pools/dut", "user-secret", 403},
		{"lease mutation with admin", false, "PUT", "/api/v1/pools/dut", "admin-secret", 200},
		{"lease mutation without token", false, "DELETE", "/api/v1/leases/l1", "", 401},
		{"probes stay public", true, "GET", "/healthz", "", 200},
		{"internal token reads", true, "GET", "/api/v1/pools", "internal-secret", 200},
		{"internal token is no admin", true, "PUT", "/api/v1/pools/dut", "internal-secret", 403},
		{"webhook is public (signed)", true, "POST", "/hooks/github", "", 202},
		{"unknown path", false, "GET", "/api/v1/nothing", "", 404},
		{"wrong method", false, "DELETE", "/api/v1/repos/acme/app/builds", "", 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, func(o *httpapi.Options) { o.PrivateReads = tt.privateReads; o.InternalToken = "internal-secret" })
			resp, body := f.do(t, tt.method, tt.path, tt.token, "")
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d; body %s", resp.StatusCode, tt.want, body)
			}
			if resp.StatusCode >= 400 {
				var e struct{ Code, Message string }
				if err := json.Unmarshal(body, &e); err != nil || e.Code == "" || e.Message == "" {
					t.Errorf("error body %s: want {code, message}", body)
				}
				if resp.StatusCode == 401 && resp.Header.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
				if resp.StatusCode == 405 && resp.Header.Get("Allow") != "GET, POST" {
					t.Errorf("405 with Allow %q, want GET, POST", resp.Header.Get("Allow"))
				}
			}
		})
	}
}

func TestBuildListingFiltersAndPages(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		b := &forge.Build{RepoID: f.repo.ID, Action: "execute", Hook: forge.Hook{Event: "pull_request", Branch: "feat", PullRequest: 9, SHA: strings.Repeat("c", 40)}}
		must(t, f.db.CreateBuild(ctx, b, nil))
	}
	list := func(q string) (ids []int64, next int64) {
		resp, body := f.do(t, "GET", "/api/v1/repos/acme/app/builds"+q, "", "")
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", q, resp.StatusCode, body)
		}
		var bl struct {
			Builds []forge.Build `json:"builds"`
			Next   int64         `json:"next_before"`
		}
		must(t, json.Unmarshal(body, &bl))
		for _, b := range bl.Builds {
			ids = append(ids, b.Number)
		}
		return ids, bl.Next
	}
	tests := []struct {
		query string
		want  string
	}{
		{"", "[7 6 5 4 3 2 1]"},
		{"?pull_request=9", "[7 6 5 4 3]"},
		{"?branch=main", "[2 1]"},
		{"?status=success", "[1]"},
		{"?status=success,queued&limit=3", "[7 6 5]"},
	}
	for _, tt := range tests {
		if got, _ := list(tt.query); fmt.Sprint(got) != tt.want {
			t.Errorf("builds%s = %v, want %s", tt.query, got, tt.want)
		}
	}
	page1, next := list("?limit=4")
	page2, next2 := list(fmt.Sprintf("?limit=4&before=%d", next))
	if fmt.Sprint(page1, page2) != "[7 6 5 4] [3 2 1]" || next == 0 || next2 != 0 {
		t.Errorf("pages %v (next %d) %v (next %d), want [7 6 5 4] then [3 2 1] and no third", page1, next, page2, next2)
	}
	for _, q := range []string{"?status=bogus", "?limit=0", "?limit=5000", "?before=x", "?colour=red"} {
		if resp, body := f.do(t, "GET", "/api/v1/repos/acme/app/builds"+q, "", ""); resp.StatusCode != 400 || !strings.Contains(string(body), `"invalid"`) {
			t.Errorf("builds%s: %d %s, want 400 invalid", q, resp.StatusCode, body)
		}
	}
}

func TestRawLogPaging(t *testing.T) {
	f := newFixture(t, nil)
	base := fmt.Sprintf("/api/v1/repos/acme/app/builds/%d/jobs/%d/log", f.done.Number, f.job.ID)
	tests := []struct {
		query, want, next string
	}{
		{"", "line 1 <b>\nline 2 <b>\nline 3 <b>\nline 4 <b>\nline 5 <b>\n", "6"},
		{"?from=2&limit=2", "line 2 <b>\nline 3 <b>\n", "4"},
		{"?from=9", "", "9"},
	}
	for _, tt := range tests {
		resp, body := f.do(t, "GET", base+tt.query, "", "")
		if resp.StatusCode != 200 || string(body) != tt.want || resp.Header.Get("X-Log-Next") != tt.next {
			t.Errorf("log%s = %d %q next %s, want %q next %s", tt.query, resp.StatusCode, body, resp.Header.Get("X-Log-Next"), tt.want, tt.next)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			t.Errorf("content type %q, want text/plain", ct)
		}
	}
	// A job of another build is not found under this build.
	other := fmt.Sprintf("/api/v1/repos/acme/app/builds/%d/jobs/%d/log", f.queued.Number, f.job.ID)
	if resp, _ := f.do(t, "GET", other, "", ""); resp.StatusCode != 404 {
		t.Errorf("job of another build: %d, want 404", resp.StatusCode)
	}
	if resp, _ := f.do(t, "GET", base+"?from=0", "", ""); resp.StatusCode != 400 {
		t.Errorf("from=0: %d, want 400", resp.StatusCode)
	}
}

func TestReadyzAndMetrics(t *testing.T) {
	f := newFixture(t, nil)
	if resp, body := f.do(t, "GET", "/readyz", "", ""); resp.StatusCode != 200 {
		t.Errorf("readyz = %d %s, want 200", resp.StatusCode, body)
	}
	f.api.SetDraining()
	if resp, body := f.do(t, "GET", "/readyz", "", ""); resp.StatusCode != 503 || !strings.Contains(string(body), "shutting down") {
		t.Errorf("readyz while draining = %d %s, want 503 shutting down", resp.StatusCode, body)
	}
	if resp, body := f.do(t, "GET", "/healthz", "", ""); resp.StatusCode != 200 {
		t.Errorf("healthz while draining = %d %s, want 200", resp.StatusCode, body)
	}
	if resp, body := f.do(t, "GET", "/metrics", "", ""); resp.StatusCode != 200 || !strings.Contains(string(body), "forge_test_total 0") {
		t.Errorf("metrics = %d %s", resp.StatusCode, body)
	}
	notReady := newFixture(t, func(o *httpapi.Options) {
		o.Ready = func(context.Context) error { return forge.Errorf(forge.ECONFLICT, "run forge migrate up") }
	})
	if resp, body := notReady.do(t, "GET", "/readyz", "", ""); resp.StatusCode != 503 || !strings.Contains(string(body), "forge migrate up") {
		t.Errorf("readyz on a pending schema = %d %s, want 503 naming the fix", resp.StatusCode, body)
	}
}

func TestStatusCodeMapping(t *testing.T) {
	tests := []struct {
		code string
		want int
	}{
		{forge.ECONFLICT, 409}, {forge.EINVALID, 400}, {forge.ENOTFOUND, 404}, {forge.EUNAUTHORIZED, 401},
		{forge.EFORBIDDEN, 403}, {forge.ETOOLARGE, 413}, {forge.EUNAVAILABLE, 503}, {forge.ENOTIMPL, 501},
		{forge.ETIMEOUT, 504}, {forge.EINTERNAL, 500},
	}
	for _, tt := range tests {
		if got := httpapi.StatusCode(forge.Errorf(tt.code, "x")); got != tt.want {
			t.Errorf("StatusCode(%s) = %d, want %d", tt.code, got, tt.want)
		}
	}
	if got := httpapi.StatusCode(fmt.Errorf("plain")); got != 500 {
		t.Errorf("StatusCode(plain error) = %d, want 500", got)
	}
}
