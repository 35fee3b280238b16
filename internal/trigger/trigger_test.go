package trigger_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/git"
	"github.com/forgeci/forge/internal/github"
	"github.com/forgeci/forge/internal/github/githubtest"
	"github.com/forgeci/forge/internal/sqldb"
	"github.com/forgeci/forge/internal/testwait"
	"github.com/forgeci/forge/internal/trigger"
)

// upstream is a local repository standing in for GitHub.
type upstream struct {
	t   testing.TB
	dir string
}

func newUpstream(t testing.TB) *upstream {
	t.Helper()
	u := &upstream{t: t, dir: t.TempDir()}
	u.git("init", "--quiet", "--initial-branch=master")
	u.git("config", "user.email", "dev@example.com")
	u.git("config", "user.name", "Dev")
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

func (u *upstream) commit(msg string, files map[string]string) string {
	u.t.Helper()
	for name, content := range files {
		p := filepath.Join(u.dir, name)
		if content == "" {
			os.Remove(p)
			continue
		}
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

// env is a processor over a real SQLite store and real git mirrors.
type env struct {
	t       *testing.T
	db      *sqldb.DB
	up      *upstream
	proc    *trigger.Processor
	created []*forge.Build
	mu      sync.Mutex
	seq     int
}

func newEnv(t *testing.T, change func(o *trigger.Options)) *env {
	t.Helper()
	return newEnvWith(t, git.Options{}, change)
}

// newEnvWith is newEnv with git options (mirrors in a temporary directory
// and local repositories allowed, whatever they say).
func newEnvWith(t *testing.T, gopts git.Options, change func(o *trigger.Options)) *env {
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
	gopts.Dir, gopts.AllowFile = t.TempDir(), true
	g, err := git.New(gopts)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, db: db, up: newUpstream(t)}
	opts := trigger.Options{
		Deliveries: db, Repos: db, Builds: db, Logs: db, Git: g,
		ParseHook: github.ParseHook,
		Created: func(b *forge.Build) {
			e.mu.Lock()
			e.created = append(e.created, b)
			e.mu.Unlock()
		},
	}
	if change != nil {
		change(&opts)
	}
	e.proc, err = trigger.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// payload loads a fixture pointed at the local upstream and lets change
// edit it further.
func (e *env) payload(name string, change func(p map[string]any)) []byte {
	e.t.Helper()
	var p map[string]any
	if err := json.Unmarshal(githubtest.Payload(e.t, name), &p); err != nil {
		e.t.Fatal(err)
	}
	if r, ok := p["repository"].(map[string]any); ok {
		r["clone_url"] = e.up.dir
	}
	if change != nil {
		change(p)
	}
	out, err := json.Marshal(p)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func obj(p map[string]any, path ...string) map[string]any {
	for _, k := range path {
		p = p[k].(map[string]any)
	}
	return p
}

// pr is a pull_request payload of action for head commit sha into base.
func (e *env) pr(action, sha, base string, change func(p map[string]any)) []byte {
	return e.payload("pull_request.opened.payload.json", func(p map[string]any) {
		p["action"] = action
		obj(p, "pull_request", "head")["sha"] = sha
		obj(p, "pull_request", "base")["ref"] = base
		if change != nil {
			change(p)
		}
	})
}

func (e *env) push(branch, sha, message string) []byte {
	return e.payload("push.with-new-branch.payload.json", func(p map[string]any) {
		p["ref"] = "refs/heads/" + branch
		p["after"] = sha
		obj(p, "head_commit")["message"] = message
	})
}

// deliver stores a delivery and processes everything pending; it returns
// the delivery's result.
func (e *env) deliver(event string, payload []byte) string {
	e.t.Helper()
	ctx := context.Background()
	e.seq++
	id := fmt.Sprintf("delivery-%d", e.seq)
	if err := e.db.CreateDelivery(ctx, &forge.Delivery{ID: id, Event: event, Payload: payload, Received: time.Now()}); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.proc.Drain(ctx); err != nil {
		e.t.Fatalf("Drain: %v", err)
	}
	d, err := e.db.Delivery(ctx, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return d.Result
}

func (e *env) builds() []*forge.Build {
	e.t.Helper()
	bs, err := e.db.ListBuilds(context.Background(), forge.BuildFilter{Ascending: true})
	if err != nil {
		e.t.Fatal(err)
	}
	return bs
}

func (e *env) jobs(b *forge.Build) []*forge.BuildJob {
	e.t.Helper()
	js, err := e.db.Jobs(context.Background(), b.ID)
	if err != nil {
		e.t.Fatal(err)
	}
	return js
}

const dagSpec = `execute:
  - echo single
`

const jobsSpec = `jobs:
  build:
    steps:
      - echo build
  test:
    needs: [build]
    steps:
      - echo test
deploy:
  - echo deploying
`

func TestPullRequestBuilds(t *testing.T) {
	e := newEnv(t, nil)
	sha := e.up.commit("add pipeline", map[string]string{".forge.yml": jobsSpec})
	got := e.deliver("pull_request", e.pr("opened", sha, "master", nil))
	if got != "builds created: execute #1" {
		t.Fatalf("result = %q, want builds created: execute #1", got)
	}
	bs := e.builds()
	if len(bs) != 1 {
		t.Fatalf("%d builds, want 1", len(bs))
	}
	b := bs[0]
	if b.Status != forge.StatusQueued || b.Action != "execute" || b.Hook.SHA != sha || b.Hook.PullRequest != 2 ||
		b.Hook.Message != "add pipeline" || b.DeliveryID != "delivery-1" || b.Hook.Repo.ID == 0 {
		t.Errorf("build = %+v", b)
	}
	var names []string
	for _, j := range e.jobs(b) {
		names = append(names, j.Name+"<"+strings.Join(j.Needs, ",")+">:"+string(j.Status))
	}
	if want := []string{"build<>:pending", "test<build>:pending"}; !slices.Equal(names, want) {
		t.Errorf("jobs = %v, want %v", names, want)
	}
	repo, err := e.db.RepoByName(context.Background(), "Codertocat", "Hello-World")
	if err != nil || repo.CloneURL != e.up.dir || repo.DefaultBranch != "master" {
		t.Errorf("repo = %+v, %v", repo, err)
	}
	if len(e.created) != 1 || e.created[0].ID != b.ID {
		t.Errorf("Created called with %v, want build %d", e.created, b.ID)
	}
}

func TestDecisions(t *testing.T) {
	tests := []struct {
		name   string
		opts   func(o *trigger.Options)
		files  map[string]string
		msg    string
		event  string
		make   func(e *env, sha string) []byte
		result string
		action string // of the one build expected, "" for none
		status forge.Status
	}{
		{name: "push to default branch", files: map[string]string{".forge.yml": dagSpec}, event: "push",
			make: func(e *env, sha string) []byte { return e.push("master", sha, "work") }, result: "builds created: execute #1", action: "execute", status: forge.StatusQueued},
		{name: "push to another branch", files: map[string]string{".forge.yml": dagSpec}, event: "push",
			make:   func(e *env, sha string) []byte { return e.push("feature", sha, "work") },
			result: "ignored: no action runs for push to feature by default (add an on: section to .forge.yml)"},
		{name: "skip ci", files: map[string]string{".forge.yml": dagSpec}, event: "push",
			make:   func(e *env, sha string) []byte { return e.push("master", sha, "docs [skip ci]") },
			result: "ignored: [skip ci] in the commit message"},
		{name: "skip ci in a pull request's head commit", files: map[string]string{".forge.yml": dagSpec}, msg: "wip [CI SKIP]", event: "pull_request",
			make:   func(e *env, sha string) []byte { return e.pr("synchronize", sha, "master", nil) },
			result: "ignored: [skip ci] in the commit message"},
		{name: "draft", files: map[string]string{".forge.yml": dagSpec}, event: "pull_request",
			make: func(e *env, sha string) []byte {
				return e.pr("opened", sha, "master", func(p map[string]any) { obj(p, "pull_request")["draft"] = true })
			},
			result: "ignored: pull request #2 is a draft (built when ready for review)"},
		{name: "draft built when configured", opts: func(o *trigger.Options) { o.BuildDrafts = true }, files: map[string]string{".forge.yml": dagSpec}, event: "pull_request",
			make: func(e *env, sha string) []byte {
				return e.pr("opened", sha, "master", func(p map[string]any) { obj(p, "pull_request")["draft"] = true })
			},
			result: "builds created: execute #1", action: "execute", status: forge.StatusQueued},
		{name: "merged into production deploys", files: map[string]string{".forge.yml": jobsSpec}, event: "pull_request",
			make: func(e *env, sha string) []byte {
				return e.pr("closed", sha, "production", func(p map[string]any) {
					obj(p, "pull_request")["merged"] = true
					obj(p, "pull_request")["merge_commit_sha"] = sha
				})
			},
			result: "builds created: deploy #1", action: "deploy", status: forge.StatusQueued},
		{name: "merged elsewhere", files: map[string]string{".forge.yml": jobsSpec}, event: "pull_request",
			make: func(e *env, sha string) []byte {
				return e.pr("closed", sha, "master", func(p map[string]any) {
					obj(p, "pull_request")["merged"] = true
					obj(p, "pull_request")["merge_commit_sha"] = sha
				})
			},
			result: "ignored: no action runs for pull request #2 merged into master by default (add an on: section to .forge.yml)"},
		{name: "merged into another production branch", opts: func(o *trigger.Options) { o.ProductionBranch = "live" }, files: map[string]string{".forge.yml": jobsSpec}, event: "pull_request",
			make: func(e *env, sha string) []byte {
				return e.pr("closed", sha, "live", func(p map[string]any) {
					obj(p, "pull_request")["merged"] = true
					obj(p, "pull_request")["merge_commit_sha"] = sha
				})
			},
			result: "builds created: deploy #1", action: "deploy", status: forge.StatusQueued},
		{name: "on: section decides", files: map[string]string{".forge.yml": "on:\n  push:\n    branches: [\"feature/*\"]\n    run: [lint]\nlint:\n  - echo lint\n"}, event: "push",
			make: func(e *env, sha string) []byte { return e.push("feature/x", sha, "work") }, result: "builds created: lint #1", action: "lint", status: forge.StatusQueued},
		{name: "on: section runs nothing", files: map[string]string{".forge.yml": "on:\n  push:\n    branches: [main]\nexecute:\n  - echo x\n"}, event: "pull_request",
			make:   func(e *env, sha string) []byte { return e.pr("opened", sha, "master", nil) },
			result: "ignored: the on: section of .forge.yml runs nothing for pull request #2 opened into master"},
		{name: "missing spec fails the build", files: map[string]string{"README": "hi"}, event: "pull_request",
			make: func(e *env, sha string) []byte { return e.pr("opened", sha, "master", nil) }, action: "execute", status: forge.StatusError},
		{name: "invalid spec fails the build", files: map[string]string{".forge.yml": "execute:\n  - echo x\nenviroment:\n  A: b\n"}, event: "pull_request",
			make: func(e *env, sha string) []byte { return e.pr("opened", sha, "master", nil) }, action: "execute", status: forge.StatusError},
		{name: "invalid payload", files: map[string]string{".forge.yml": dagSpec}, event: "pull_request",
			make:   func(e *env, sha string) []byte { return []byte(`{"action":"opened"}`) },
			result: "invalid: pull_request payload has no repository"},
		{name: "ignored event", files: map[string]string{".forge.yml": dagSpec}, event: "pull_request",
			make:   func(e *env, sha string) []byte { return e.pr("labeled", sha, "master", nil) },
			result: `ignored: pull_request action "labeled" is not built`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.opts)
			msg := tt.msg
			if msg == "" {
				msg = "commit"
			}
			sha := e.up.commit(msg, tt.files)
			got := e.deliver(tt.event, tt.make(e, sha))
			bs := e.builds()
			if tt.action == "" {
				if got != tt.result || len(bs) != 0 {
					t.Errorf("result %q with %d builds; want %q and none", got, len(bs), tt.result)
				}
				return
			}
			if len(bs) != 1 || bs[0].Action != tt.action || bs[0].Status != tt.status {
				t.Fatalf("builds %v, want one %s build %s (result %q)", bs, tt.action, tt.status, got)
			}
			if tt.result != "" && got != tt.result {
				t.Errorf("result = %q, want %q", got, tt.result)
			}
		})
	}
}

// TestBadSpecBuild: the lint messages are the failed build's error and
// its spec job's log.
func TestBadSpecBuild(t *testing.T) {
	e := newEnv(t, nil)
	sha := e.up.commit("typo", map[string]string{".forge.yml": "execute:\n  - echo x\nenviroment:\n  A: b\n"})
	got := e.deliver("pull_request", e.pr("opened", sha, "master", nil))
	if !strings.HasPrefix(got, "builds created: execute #1 (failed: .forge.yml:3:1: ") {
		t.Errorf("result = %q", got)
	}
	b := e.builds()[0]
	if !strings.Contains(b.Error, ".forge.yml:3:1:") || !strings.Contains(b.Error, "environment") || b.Finished.IsZero() {
		t.Errorf("build error = %q finished %v; want the lint message with a suggestion", b.Error, b.Finished)
	}
	js := e.jobs(b)
	if len(js) != 1 || js[0].Name != "spec" || js[0].Status != forge.StatusError {
		t.Fatalf("jobs = %+v, want one failed spec job", js)
	}
	lines, err := e.db.Lines(context.Background(), js[0].ID, 1, 0)
	if err != nil || len(lines) == 0 || !strings.HasPrefix(lines[0].Text, ".forge.yml:3:1:") || lines[0].Stream != forge.System {
		t.Errorf("log = %+v, %v; want the lint messages", lines, err)
	}

	e2 := newEnv(t, nil)
	sha = e2.up.commit("no spec", map[string]string{"README": "x"})
	e2.deliver("pull_request", e2.pr("opened", sha, "master", nil))
	if b := e2.builds()[0]; b.Error != ".forge.yml: no such file at commit "+sha[:12]+": add one to build this repository" {
		t.Errorf("missing spec error = %q", b.Error)
	}
}

// TestDeliveryBuildsOnce: a processor that dies after creating a build
// and before finishing the delivery creates no second build when the
// delivery is processed again; nor do two processors racing.
func TestDeliveryBuildsOnce(t *testing.T) {
	e := newEnv(t, nil)
	sha := e.up.commit("x", map[string]string{".forge.yml": jobsSpec})
	ctx := context.Background()
	d := &forge.Delivery{ID: "crash", Event: "pull_request", Payload: e.pr("opened", sha, "master", nil), Received: time.Now()}
	if err := e.db.CreateDelivery(ctx, d); err != nil {
		t.Fatal(err)
	}
	// First life: builds, then "crashes" before FinishDelivery.
	crashy := &failFinish{DB: e.db}
	p1, err := trigger.New(trigger.Options{Deliveries: crashy, Repos: e.db, Builds: e.db, Git: mustGit(t), ParseHook: github.ParseHook})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p1.Process(ctx, d); err == nil {
		t.Fatal("Process with a failing FinishDelivery succeeded")
	}
	// Second life.
	if n, err := e.proc.Drain(ctx); err != nil || n != 1 {
		t.Fatalf("Drain = %d, %v; want 1", n, err)
	}
	if bs := e.builds(); len(bs) != 1 {
		t.Fatalf("%d builds after a crash and a retry, want 1", len(bs))
	}
	got, _ := e.db.Delivery(ctx, "crash")
	if got.Result != "builds created: execute #1" || got.Processed.IsZero() {
		t.Errorf("delivery = %q processed %v", got.Result, got.Processed)
	}

	// Two processors draining the same 12 deliveries at once.
	for i := range 12 {
		sha := e.up.commit(fmt.Sprint("c", i), nil)
		d := &forge.Delivery{ID: fmt.Sprint("race-", i), Event: "push", Payload: e.push("master", sha, "c"), Received: time.Now()}
		if err := e.db.CreateDelivery(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	p2, err := trigger.New(trigger.Options{Deliveries: e.db, Repos: e.db, Builds: e.db, Git: mustGit(t), ParseHook: github.ParseHook})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, p := range []*trigger.Processor{e.proc, p2} {
		wg.Go(func() {
			if _, err := p.Drain(ctx); err != nil {
				t.Errorf("Drain: %v", err)
			}
		})
	}
	wg.Wait()
	per := map[string]int{}
	for _, b := range e.builds() {
		per[b.DeliveryID]++
	}
	for i := range 12 {
		if n := per[fmt.Sprint("race-", i)]; n != 1 {
			t.Errorf("delivery race-%d made %d builds, want 1", i, n)
		}
	}
	if pending, _ := e.db.PendingDeliveries(ctx, 100); len(pending) != 0 {
		t.Errorf("%d deliveries still pending", len(pending))
	}
}

func mustGit(t *testing.T) *git.Git {
	g, err := git.New(git.Options{Dir: t.TempDir(), AllowFile: true})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

type failFinish struct{ *sqldb.DB }

func (f *failFinish) FinishDelivery(context.Context, string, string) error {
	return forge.Errorf(forge.EUNAVAILABLE, "killed")
}

func TestSupersede(t *testing.T) {
	var canceled []string
	e := newEnv(t, func(o *trigger.Options) {
		o.Cancel = func(ctx context.Context, id int64, reason string) error {
			canceled = append(canceled, fmt.Sprint(id, ": ", reason))
			return nil
		}
	})
	first := e.up.commit("one", map[string]string{".forge.yml": dagSpec})
	e.deliver("pull_request", e.pr("opened", first, "master", nil))
	second := e.up.commit("two", nil)
	e.deliver("pull_request", e.pr("synchronize", second, "master", nil))
	if want := []string{"1: superseded by build #2"}; !slices.Equal(canceled, want) {
		t.Errorf("Cancel calls = %q, want %q", canceled, want)
	}

	// Without a runner, queued builds are cancelled in the store.
	e2 := newEnv(t, nil)
	first = e2.up.commit("one", map[string]string{".forge.yml": dagSpec})
	e2.deliver("pull_request", e2.pr("opened", first, "master", nil))
	// Another pull request's build is not touched.
	e2.deliver("pull_request", e2.pr("opened", first, "master", func(p map[string]any) {
		p["number"] = 3.0
		obj(p, "pull_request")["number"] = 3.0
	}))
	second = e2.up.commit("two", nil)
	e2.deliver("pull_request", e2.pr("synchronize", second, "master", nil))
	bs := e2.builds()
	var got []string
	for _, b := range bs {
		got = append(got, fmt.Sprintf("#%d pr%d %s %s", b.Number, b.Hook.PullRequest, b.Status, b.Error))
	}
	want := []string{"#1 pr2 canceled superseded by build #3", "#2 pr3 queued ", "#3 pr2 queued "}
	if !slices.Equal(got, want) {
		t.Errorf("builds:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// Kept when configured.
	e3 := newEnv(t, func(o *trigger.Options) { o.KeepSuperseded = true })
	first = e3.up.commit("one", map[string]string{".forge.yml": dagSpec})
	e3.deliver("pull_request", e3.pr("opened", first, "master", nil))
	e3.deliver("pull_request", e3.pr("synchronize", e3.up.commit("two", nil), "master", nil))
	for _, b := range e3.builds() {
		if b.Status != forge.StatusQueued {
			t.Errorf("build #%d is %s with KeepSuperseded", b.Number, b.Status)
		}
	}
}

func TestRetest(t *testing.T) {
	e := newEnv(t, nil)
	sha := e.up.commit("one", map[string]string{".forge.yml": dagSpec})
	e.up.git("update-ref", "refs/pull/1/head", sha)
	retest := e.payload("issue_comment.created.payload.json", func(p map[string]any) {
		obj(p, "issue")["pull_request"] = map[string]any{"url": "x"}
		obj(p, "comment")["body"] = "/retest"
	})
	// Without an earlier build: the default branch, treated as a fork.
	if got := e.deliver("issue_comment", retest); got != "builds created: execute #1" {
		t.Fatalf("result = %q", got)
	}
	b := e.builds()[0]
	if b.Hook.SHA != sha || b.Hook.Target != "master" || !b.Hook.Fork || b.Hook.PullRequest != 1 {
		t.Errorf("hook = %+v", b.Hook)
	}
	// With one: what that build knew, at the pull request's new head.
	e.deliver("pull_request", e.pr("opened", sha, "release", func(p map[string]any) {
		p["number"] = 1.0
		obj(p, "pull_request")["number"] = 1.0
	}))
	newer := e.up.commit("two [skip ci]", nil)
	e.up.git("update-ref", "refs/pull/1/head", newer)
	if got := e.deliver("issue_comment", retest); got != "builds created: execute #3" {
		t.Fatalf("result = %q (a /retest builds even with [skip ci])", got)
	}
	bs := e.builds()
	b = bs[len(bs)-1]
	if b.Hook.SHA != newer || b.Hook.Target != "release" || b.Hook.Fork || b.Hook.Branch != "changes" {
		t.Errorf("hook = %+v", b.Hook)
	}
}

func TestFetchFailures(t *testing.T) {
	// A commit that does not exist fails at once.
	e := newEnv(t, nil)
	e.up.commit("x", map[string]string{".forge.yml": dagSpec})
	missing := strings.Repeat("ab", 20)
	got := e.deliver("pull_request", e.pr("opened", missing, "master", nil))
	if got != "builds created: execute #1 (failed: could not fetch the commit: commit "+missing+" not found in Codertocat/Hello-World, nor refs/pull/2/head)" {
		t.Errorf("result = %q", got)
	}

	// A remote that is down is tried Attempts times, then fails.
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "down", http.StatusBadGateway)
	}))
	defer srv.Close()
	e = newEnvWith(t, git.Options{Origin: srv.URL}, func(o *trigger.Options) { o.Attempts, o.Backoff = 3, time.Millisecond })
	sha := e.up.commit("x", map[string]string{".forge.yml": dagSpec})
	payload := e.pr("opened", sha, "master", func(p map[string]any) { obj(p, "repository")["clone_url"] = srv.URL + "/a/b.git" })
	ctx := context.Background()
	if err := e.db.CreateDelivery(ctx, &forge.Delivery{ID: "down", Event: "pull_request", Payload: payload, Received: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		n, err := e.proc.Drain(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{true: 1, false: 0}[i == 2]; n != want {
			t.Errorf("attempt %d finished %d deliveries, want %d", i+1, n, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	d, _ := e.db.Delivery(ctx, "down")
	if !strings.HasPrefix(d.Result, "builds created: execute #1 (failed: could not fetch the commit after 3 attempts: could not fetch from the repository") {
		t.Errorf("result = %q", d.Result)
	}
	if hits.Load() < 3 {
		t.Errorf("remote asked %d times, want at least 3", hits.Load())
	}
}

func TestManual(t *testing.T) {
	e := newEnv(t, nil)
	sha := e.up.commit("x", map[string]string{".forge.yml": jobsSpec})
	e.up.git("tag", "v1", sha)
	ctx := context.Background()
	repo := &forge.Repo{Owner: "acme", Name: "app", CloneURL: e.up.dir, DefaultBranch: "master"}
	if err := e.db.UpsertRepo(ctx, repo); err != nil {
		t.Fatal(err)
	}
	b, err := e.proc.Manual(ctx, repo, "master", "deploy")
	if err != nil {
		t.Fatal(err)
	}
	if b.Status != forge.StatusQueued || b.Action != "deploy" || b.Hook.Event != "manual" || b.Hook.SHA != sha ||
		b.Hook.Branch != "master" || b.Hook.Ref != "refs/heads/master" || b.Number != 1 || b.DeliveryID != "" {
		t.Errorf("build = %+v", b)
	}
	b, err = e.proc.Manual(ctx, repo, "refs/tags/v1", "")
	if err != nil || b.Action != "execute" || b.Hook.Tag != "v1" || b.Number != 2 {
		t.Errorf("Manual(tag) = %+v, %v", b, err)
	}
	for _, tt := range []struct{ ref, action, code, msg string }{
		{"master", "release", forge.EINVALID, `.forge.yml at ` + sha[:12] + ` has no action "release" (it has deploy, execute)`},
		{"nope", "", forge.ENOTFOUND, `no branch or tag named "nope" in acme/app`},
		{"", "", forge.EINVALID, "manual build: a ref (branch, tag or commit) is required"},
	} {
		_, err := e.proc.Manual(ctx, repo, tt.ref, tt.action)
		if forge.ErrorCode(err) != tt.code || forge.ErrorMessage(err) != tt.msg {
			t.Errorf("Manual(%q, %q) = %q %q, want %q %q", tt.ref, tt.action, forge.ErrorCode(err), forge.ErrorMessage(err), tt.code, tt.msg)
		}
	}
}

// TestRun: Notify wakes the loop at once, and it stops with its context.
func TestRun(t *testing.T) {
	e := newEnv(t, func(o *trigger.Options) { o.Interval = time.Hour })
	sha := e.up.commit("x", map[string]string{".forge.yml": dagSpec})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.proc.Run(ctx) }()
	if err := e.db.CreateDelivery(ctx, &forge.Delivery{ID: "run", Event: "push", Payload: e.push("master", sha, "x"), Received: time.Now()}); err != nil {
		t.Fatal(err)
	}
	e.proc.Notify()
	testwait.For(t, "the delivery to be processed after Notify", func() bool {
		d, err := e.db.Delivery(ctx, "run")
		return err == nil && !d.Processed.IsZero()
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop with its context")
	}
}

func TestNewRequires(t *testing.T) {
	_, err := trigger.New(trigger.Options{})
	if forge.ErrorCode(err) != forge.EINVALID || forge.ErrorMessage(err) != "trigger: options Builds, Deliveries, Git, ParseHook, Repos are required" {
		t.Errorf("New({}) = %v", err)
	}
}

// TestSlowRepositoryDoesNotBlockOthers: while one repository's remote
// takes its time, another repository's delivery is built.
func TestSlowRepositoryDoesNotBlockOthers(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		http.Error(w, "slow and down", http.StatusBadGateway)
	}))
	defer srv.Close()
	defer close(release)
	var fastBuilt atomic.Int64
	e := newEnvWith(t, git.Options{Origin: srv.URL}, func(o *trigger.Options) {
		o.Attempts = 1
		o.Created = func(b *forge.Build) {
			if b.Status == forge.StatusQueued {
				fastBuilt.Store(time.Now().UnixNano())
			}
		}
	})
	sha := e.up.commit("x", map[string]string{".forge.yml": dagSpec})
	ctx := context.Background()
	slow := e.pr("opened", sha, "master", func(p map[string]any) {
		r := obj(p, "repository")
		r["clone_url"], r["name"], r["full_name"] = srv.URL+"/slow/repo.git", "slow", "Codertocat/slow"
	})
	for _, d := range []*forge.Delivery{
		{ID: "slow", Event: "pull_request", Payload: slow, Received: time.Now()},
		{ID: "fast", Event: "pull_request", Payload: e.pr("opened", sha, "master", nil), Received: time.Now().Add(time.Millisecond)},
	} {
		if err := e.db.CreateDelivery(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := e.proc.Drain(ctx); err != nil {
			t.Errorf("Drain: %v", err)
		}
	}()
	deadline := time.After(8 * time.Second)
	for fastBuilt.Load() == 0 {
		select {
		case <-deadline:
			t.Fatal("the fast repository's build waited for the slow one")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if d := time.Unix(0, fastBuilt.Load()).Sub(start); d > 5*time.Second {
		t.Errorf("fast build after %v", d)
	}
	release <- struct{}{}
	<-done
}

// TestPullRequestPaths: a pull request's changed files come from git (its
// payload has none), for when: paths; the target branch's own changes
// are not among them.
func TestPullRequestPaths(t *testing.T) {
	e := newEnv(t, nil)
	e.up.commit("base", map[string]string{".forge.yml": dagSpec, "README": "r"})
	e.up.git("checkout", "--quiet", "-b", "changes")
	head := e.up.commit("feature", map[string]string{"src/x.go": "x", "docs/y.md": "y"})
	e.up.git("checkout", "--quiet", "master")
	base := e.up.commit("master moves", map[string]string{"README": "r2"})
	e.deliver("pull_request", e.pr("opened", head, "master", func(p map[string]any) {
		obj(p, "pull_request", "base")["sha"] = base
	}))
	b := e.builds()[0]
	if want := []string{"docs/y.md", "src/x.go"}; !slices.Equal(b.Hook.Paths, want) || b.Hook.Base != base {
		t.Errorf("paths = %q base %s, want %q base %s", b.Hook.Paths, b.Hook.Base, want, base)
	}

	// A base the remote does not have: paths stay unknown, the build is made.
	e2 := newEnv(t, nil)
	head = e2.up.commit("x", map[string]string{".forge.yml": dagSpec})
	got := e2.deliver("pull_request", e2.pr("opened", head, "master", func(p map[string]any) {
		obj(p, "pull_request", "base")["sha"] = strings.Repeat("cd", 20)
	}))
	if got != "builds created: execute #1" || e2.builds()[0].Hook.Paths != nil {
		t.Errorf("result %q paths %q; want a build with unknown paths", got, e2.builds()[0].Hook.Paths)
	}
}
