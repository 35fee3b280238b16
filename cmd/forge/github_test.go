package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forgeci/forge/internal/github/githubtest"
)

// The webhook payloads of these tests are octokit/webhooks fixtures
// (MIT, testdata/webhooks/LICENSE.octokit-webhooks) with their repository
// pointed at a local git repository.

// ghRepo is a git repository the tests commit to.
type ghRepo struct {
	t   testing.TB
	dir string
}

func newGHRepo(t testing.TB) *ghRepo {
	r := &ghRepo{t: t, dir: t.TempDir()}
	r.git("init", "-q", "-b", "master")
	return r
}

func (r *ghRepo) git(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = r.dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com")
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// commit writes files (path → content) and commits them; it returns the
// commit's SHA.
func (r *ghRepo) commit(msg string, files map[string]string) string {
	r.t.Helper()
	for p, c := range files {
		full := filepath.Join(r.dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			r.t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
	r.git("add", "-A")
	r.git("commit", "-q", "--allow-empty", "-m", msg)
	return r.git("rev-parse", "HEAD")
}

// ghPayload is the fixture name with its repository at repo, its
// installation the fake's, changed by edit.
func ghPayload(t testing.TB, name, repo string, installation int64, edit func(p map[string]any)) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "webhooks", name+".payload.json"))
	if err != nil {
		t.Fatal(err)
	}
	var p map[string]any
	if err := json.Unmarshal(data, &p); err != nil {
		t.Fatal(err)
	}
	p["repository"].(map[string]any)["clone_url"] = repo
	p["installation"] = map[string]any{"id": installation}
	if pr, ok := p["pull_request"].(map[string]any); ok {
		pr["draft"] = false
		for _, side := range []string{"head", "base"} {
			pr[side].(map[string]any)["repo"].(map[string]any)["clone_url"] = repo
		}
	}
	if edit != nil {
		edit(p)
	}
	out, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// prPayload is a pull_request delivery of action for pull request number
// with head sha.
func prPayload(t testing.TB, action, repo string, installation int64, number int, sha string, edit func(p, pr map[string]any)) []byte {
	name := "pull_request.opened"
	if action == "closed" {
		name = "pull_request.closed"
	}
	return ghPayload(t, name, repo, installation, func(p map[string]any) {
		p["action"] = action
		p["number"] = number
		pr := p["pull_request"].(map[string]any)
		pr["number"] = number
		pr["head"].(map[string]any)["sha"] = sha
		if edit != nil {
			edit(p, pr)
		}
	})
}

// ghStart starts forge server reporting to fake as its GitHub App.
func ghStart(t testing.TB, fake *githubtest.Fake, data string, env ...string) *e2eServerProc {
	t.Helper()
	key := filepath.Join(t.TempDir(), "app.pem")
	if err := os.WriteFile(key, fake.KeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{
		fmt.Sprintf("FORGE_GITHUB_APP_ID=%d", fake.AppID),
		"FORGE_GITHUB_APP_KEY=" + key,
		"FORGE_GITHUB_API_URL=" + fake.URL,
		"FORGE_GITHUB_RETRY_BACKOFF=50ms",
		"FORGE_GITHUB_TIMEOUT=3s",
		"FORGE_PUBLIC_URL=https://ci.example.com",
	}
	return e2eStartServer(t, data, append(base, env...)...)
}

func deliver(t testing.TB, p *e2eServerProc, event, id string, payload []byte) {
	t.Helper()
	st, err := e2eDeliver(http.DefaultClient, p.url, event, id, payload)
	if err != nil || st != http.StatusAccepted {
		t.Fatalf("delivery %s: %d %v, want 202", id, st, err)
	}
}

// stateRank orders a context's statuses: queued, running, final.
func stateRank(s githubtest.Status) int {
	switch {
	case s.State != "pending":
		return 3
	case strings.HasPrefix(s.Description, "running"):
		return 2
	}
	return 1
}

// checkOrder fails unless every context of statuses went forward only
// (queued → running → a final state), ended in a final state, and began
// with "queued" when first.
func checkOrder(t testing.TB, statuses []githubtest.Status) {
	t.Helper()
	last := map[string]githubtest.Status{}
	for _, s := range statuses {
		prev, seen := last[s.Context]
		if seen && stateRank(s) < stateRank(prev) {
			t.Errorf("status of %s went back from %s %q to %s %q", s.Context, prev.State, prev.Description, s.State, s.Description)
		}
		if seen && stateRank(prev) == 3 && (prev.State != s.State) {
			t.Errorf("status of %s changed after its final state: %s then %s", s.Context, prev.State, s.State)
		}
		last[s.Context] = s
	}
	for c, s := range last {
		if stateRank(s) != 3 {
			t.Errorf("status of %s ended %s %q, not in a final state", c, s.State, s.Description)
		}
	}
}

const ghPassSpec = `jobs:
  build:
    steps:
      - echo building
  test:
    needs: [build]
    reports:
      - junit: "reports/*.xml"
    steps:
      - mkdir -p reports && cp testdata/pass.xml reports/junit.xml
`

const ghFailSpec = `jobs:
  build:
    steps:
      - echo building
  test:
    needs: [build]
    reports:
      - junit: "reports/*.xml"
    steps:
      - mkdir -p reports && cp testdata/fail.xml reports/junit.xml
      - echo "2 tests failed" && exit 1
`

const ghPassXML = `<?xml version="1.0"?>
<testsuite name="calc" tests="2"><testcase classname="calc" name="test_add" file="src/calc_test.py" line="3"/><testcase classname="calc" name="test_sub" file="src/calc_test.py" line="7"/></testsuite>
`

const ghFailXML = `<?xml version="1.0"?>
<testsuites><testsuite name="calc" tests="3">
<testcase classname="calc" name="test_add" file="src/calc_test.py" line="3"/>
<testcase classname="calc" name="test_div" file="src/calc_test.py" line="12"><failure message="ZeroDivisionError: division by zero">Traceback: calc.py:40</failure></testcase>
<testcase classname="net" name="test_fetch"><error message="timeout talking to the server"/></testcase>
</testsuite></testsuites>
`

// TestGitHubReportsEndToEnd is issue 10's acceptance for reporting: a
// signed pull_request delivery to the real forge server, authenticated
// to the fake GitHub as an App, gives every job a commit status and a
// check run that move forward only, for a passing build and for a
// failing one whose JUnit report becomes annotations at the right file
// and line.
func TestGitHubReportsEndToEnd(t *testing.T) {
	fake := githubtest.New(t)
	repo := newGHRepo(t)
	pass := repo.commit("passing", map[string]string{".forge.yml": ghPassSpec, "testdata/pass.xml": ghPassXML, "testdata/fail.xml": ghFailXML})
	fail := repo.commit("failing", map[string]string{".forge.yml": ghFailSpec})
	p := ghStart(t, fake, t.TempDir())
	deliver(t, p, "pull_request", "pass-1", prPayload(t, "opened", repo.dir, fake.Installation, 2, pass, nil))
	deliver(t, p, "pull_request", "fail-1", prPayload(t, "opened", repo.dir, fake.Installation, 3, fail, nil))

	done := func(sha string, n int) func() bool {
		return func() bool {
			final := 0
			for _, s := range fake.LatestLocked(sha) {
				if s.State != "pending" {
					final++
				}
			}
			runs := 0
			for _, c := range fake.CheckRunsLocked(sha) {
				if c.Status == "completed" {
					runs++
				}
			}
			return final == n && runs == n
		}
	}
	fake.Wait(t, 60*time.Second, "final statuses and check runs of the passing build", done(pass, 2))
	fake.Wait(t, 60*time.Second, "final statuses and check runs of the failing build", done(fail, 2))

	if n, m := len(fake.CheckRuns(pass)), len(fake.CheckRuns(fail)); n != 2 || m != 2 {
		t.Errorf("%d and %d check runs, want one per job", n, m)
	}
	// The passing build.
	checkOrder(t, fake.Statuses(pass))
	latest := fake.Latest(pass)
	if s := latest["forge/build"]; s.State != "success" || !strings.HasPrefix(s.Description, "passed in ") {
		t.Errorf("forge/build = %s %q, want success \"passed in ...\"", s.State, s.Description)
	}
	if s := latest["forge/test"]; s.State != "success" || !strings.HasPrefix(s.Description, "2 tests passed in ") ||
		!strings.HasPrefix(s.TargetURL, "https://ci.example.com/Codertocat/Hello-World/builds/1/jobs/") {
		t.Errorf("forge/test = %+v, want success \"2 tests passed in ...\" linking to build 1's job", s)
	}
	if first := fake.Statuses(pass)[0]; first.State != "pending" || first.Description != "queued" {
		t.Errorf("first status = %s %q, want pending \"queued\"", first.State, first.Description)
	}
	for _, c := range fake.CheckRuns(pass) {
		if c.Conclusion != "success" || c.History[0] != "queued" || !strings.Contains(c.Summary, "| Step | Result | Duration |") {
			t.Errorf("check run %s: history %v, conclusion %s, summary %q; want queued … completed/success with a step table", c.Name, c.History, c.Conclusion, c.Summary)
		}
	}

	// The failing build.
	checkOrder(t, fake.Statuses(fail))
	latest = fake.Latest(fail)
	if s := latest["forge/test"]; s.State != "failure" || s.Description != "2 of 3 tests failed" {
		t.Errorf("forge/test of the failing build = %s %q, want failure \"2 of 3 tests failed\"", s.State, s.Description)
	}
	if s := latest["forge/build"]; s.State != "success" {
		t.Errorf("forge/build of the failing build = %s, want success", s.State)
	}
	var test *githubtest.CheckRun
	for _, c := range fake.CheckRuns(fail) {
		if c.Name == "forge/test" {
			test = &c
		}
	}
	if test == nil {
		t.Fatalf("no check run forge/test for the failing build\n%s", fake.Dump())
	}
	if test.Conclusion != "failure" || !strings.Contains(test.Summary, "Tests: 3, failed 2") || !strings.Contains(test.Text, "2 tests failed") {
		t.Errorf("check run forge/test: conclusion %s, summary %q, text %q; want failure, the test counts and the log's tail", test.Conclusion, test.Summary, test.Text)
	}
	want := []githubtest.Annotation{
		{Path: "src/calc_test.py", StartLine: 12, EndLine: 12, Level: "failure", Message: "ZeroDivisionError: division by zero", Title: "calc.test_div"},
		{Path: "reports/junit.xml", StartLine: 1, EndLine: 1, Level: "failure", Message: "timeout talking to the server", Title: "net.test_fetch"},
	}
	if fmt.Sprint(test.Annotations) != fmt.Sprint(want) {
		t.Errorf("annotations:\ngot  %+v\nwant %+v", test.Annotations, want)
	}
	t.Logf("what the fake GitHub recorded:\n%s", fake.Dump())
	p.stop(t)
}

// TestGitHubReportsSurviveFailures: while the fake GitHub fails every
// other request (502, a secondary rate limit with Retry-After, a request
// that hangs until forge's timeout), every status still arrives, in
// order, and ends final.
func TestGitHubReportsSurviveFailures(t *testing.T) {
	fake := githubtest.New(t)
	var n atomic.Int64
	faults := []githubtest.Fault{githubtest.ServerError, githubtest.SecondaryRateLimit, githubtest.ServerError, githubtest.Hang, githubtest.PrimaryRateLimit}
	fake.SetFault(func(*http.Request) githubtest.Fault {
		i := n.Add(1)
		if i%2 == 1 {
			return faults[(i/2)%int64(len(faults))]
		}
		return githubtest.NoFault
	})
	repo := newGHRepo(t)
	sha := repo.commit("passing", map[string]string{".forge.yml": ghPassSpec, "testdata/pass.xml": ghPassXML})
	p := ghStart(t, fake, t.TempDir(), "FORGE_GITHUB_TIMEOUT=1s")
	deliver(t, p, "pull_request", "flaky-1", prPayload(t, "opened", repo.dir, fake.Installation, 2, sha, nil))
	fake.Wait(t, 90*time.Second, "both jobs' final statuses and check runs", func() bool {
		final := 0
		for _, s := range fake.LatestLocked(sha) {
			if s.State == "success" {
				final++
			}
		}
		runs := 0
		for _, c := range fake.CheckRunsLocked(sha) {
			if c.Conclusion == "success" {
				runs++
			}
		}
		return final == 2 && runs == 2
	})
	checkOrder(t, fake.Statuses(sha))
	if total, faulted := fake.Requests(); faulted < total/3 {
		t.Errorf("the fake failed %d of %d requests; the test wants about half", faulted, total)
	}
	p.stop(t)
}

// TestGitHubReportSurvivesKill9: the server is killed with SIGKILL after a
// job ended and while its final status is on its way to GitHub; the
// restarted server delivers it.
func TestGitHubReportSurvivesKill9(t *testing.T) {
	fake := githubtest.New(t)
	hung := make(chan struct{}, 1)
	fake.SetFault(func(r *http.Request) githubtest.Fault {
		if !strings.Contains(r.URL.Path, "/statuses/") {
			return githubtest.NoFault
		}
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if strings.Contains(string(body), `"state":"success"`) {
			select {
			case hung <- struct{}{}:
			default:
			}
			return githubtest.Hang
		}
		return githubtest.NoFault
	})
	repo := newGHRepo(t)
	sha := repo.commit("one job", map[string]string{".forge.yml": "execute:\n  - echo done\n"})
	data := t.TempDir()
	p := ghStart(t, fake, data, "FORGE_GITHUB_TIMEOUT=30s")
	deliver(t, p, "pull_request", "kill-1", prPayload(t, "opened", repo.dir, fake.Installation, 2, sha, nil))
	select {
	case <-hung:
	case <-time.After(60 * time.Second):
		t.Fatalf("the final status never reached the fake\n%s", fake.Dump())
	}
	e2eWaitBuild(t, p, 1, 30*time.Second, e2eBuildDone)
	p.kill9(t)
	if s := fake.Latest(sha)["forge/execute"]; s.State != "pending" {
		t.Fatalf("before the restart forge/execute is %s, want pending (the final status was held back)", s.State)
	}
	fake.SetFault(nil)
	p = ghStart(t, fake, data)
	fake.Wait(t, 60*time.Second, "the final status after the restart", func() bool {
		return fake.LatestLocked(sha)["forge/execute"].State == "success"
	})
	checkOrder(t, fake.Statuses(sha))
	p.stop(t)
}

// commentPayload is an issue_comment on pull request number by user with
// association, saying body.
func commentPayload(t testing.TB, repo string, installation int64, number int, user, association, body string) []byte {
	return ghPayload(t, "issue_comment.created", repo, installation, func(p map[string]any) {
		issue := p["issue"].(map[string]any)
		issue["number"] = number
		issue["pull_request"] = map[string]any{"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/" + fmt.Sprint(number)}
		c := p["comment"].(map[string]any)
		c["body"] = body
		c["author_association"] = association
		c["user"].(map[string]any)["login"] = user
		p["sender"].(map[string]any)["login"] = user
	})
}

// mergedPayload is pull request number merged into base as commit sha.
func mergedPayload(t testing.TB, repo string, installation int64, number int, head, base, sha string) []byte {
	return prPayload(t, "closed", repo, installation, number, head, func(p, pr map[string]any) {
		pr["merged"] = true
		pr["merge_commit_sha"] = sha
		pr["base"].(map[string]any)["ref"] = base
	})
}

const ghFlowSpec = `execute:
  - echo "secret=${DEPLOY_KEY:-none}"
deploy:
  - test "$DEPLOY_KEY" = s3cret
  - echo deployed
`

// TestGitHubPullRequestFlow is issue 10's pull request workflow end to
// end: a fork's pull request waits for approval (and says so), a
// /retest from someone without write access gets a reply, /forge
// approve from a maintainer runs it without secrets; merging passed
// pull requests into the main branch opens, then updates, the promotion
// pull request; a merge into production deploys, reported as a GitHub
// deployment with its statuses.
func TestGitHubPullRequestFlow(t *testing.T) {
	fake := githubtest.New(t)
	fake.SetPermission("Codertocat", "admin")
	repo := newGHRepo(t)
	sha := repo.commit("spec", map[string]string{".forge.yml": ghFlowSpec})
	config := filepath.Join(t.TempDir(), "forge.yml")
	if err := os.WriteFile(config, []byte("secrets:\n  \"*\": {DEPLOY_KEY: s3cret}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(t.TempDir(), "app.pem")
	if err := os.WriteFile(key, fake.KeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	p := e2eStart(t, t.TempDir(), config,
		fmt.Sprintf("FORGE_GITHUB_APP_ID=%d", fake.AppID), "FORGE_GITHUB_APP_KEY="+key, "FORGE_GITHUB_API_URL="+fake.URL,
		"FORGE_GITHUB_RETRY_BACKOFF=50ms", "FORGE_PUBLIC_URL=https://ci.example.com")

	// A first-time contributor's fork: the build waits for approval.
	fork := prPayload(t, "opened", repo.dir, fake.Installation, 5, sha, func(p, pr map[string]any) {
		pr["author_association"] = "FIRST_TIME_CONTRIBUTOR"
		head := pr["head"].(map[string]any)
		head["repo"].(map[string]any)["id"] = 999
		head["repo"].(map[string]any)["full_name"] = "stranger/Hello-World"
	})
	deliver(t, p, "pull_request", "fork-1", fork)
	fake.Wait(t, 30*time.Second, "the fork's waiting-for-approval status", func() bool {
		s := fake.LatestLocked(sha)["forge/execute"]
		return s.State == "pending" && strings.HasPrefix(s.Description, "waiting for approval")
	})
	if b := e2eWaitBuild(t, p, 1, 10*time.Second, func(*e2eBuildView) bool { return true }); b.Status != "blocked" {
		t.Fatalf("the fork's build is %s, want blocked until approved", b.Status)
	}
	// Someone without write access asks for a rebuild: forge says why not.
	deliver(t, p, "issue_comment", "retest-1", commentPayload(t, repo.dir, fake.Installation, 5, "stranger", "NONE", "/retest"))
	fake.Wait(t, 30*time.Second, "the reply to /retest", func() bool {
		c := fake.CommentsLocked()
		return len(c) == 1 && c[0].Number == 5 && strings.Contains(c[0].Body, "needs write access")
	})
	// A maintainer approves: it runs, without the secret.
	deliver(t, p, "issue_comment", "approve-1", commentPayload(t, repo.dir, fake.Installation, 5, "Codertocat", "OWNER", "/forge approve"))
	b := e2eWaitBuild(t, p, 1, 60*time.Second, e2eBuildDone)
	if b.Status != "success" {
		t.Fatalf("the approved fork build is %s %q, want success", b.Status, b.Error)
	}
	if log := e2eJobLog(t, p, 1, b.Jobs[0]); !strings.Contains(log, "secret=none") {
		t.Errorf("the fork's job log %q, want \"secret=none\": forks never get secrets", log)
	}
	fake.Wait(t, 30*time.Second, "the fork's final status", func() bool {
		return fake.LatestLocked(sha)["forge/execute"].State == "success"
	})
	checkOrder(t, fake.Statuses(sha))

	// Pull request 6 passes and is merged into master: the promotion
	// pull request opens.
	deliver(t, p, "pull_request", "pr6", prPayload(t, "opened", repo.dir, fake.Installation, 6, sha, nil))
	e2eWaitBuild(t, p, 2, 60*time.Second, e2eBuildDone)
	m6 := repo.commit("Merge pull request #6 from Codertocat/six\n\nMake six", nil)
	deliver(t, p, "pull_request", "merge6", mergedPayload(t, repo.dir, fake.Installation, 6, sha, "master", m6))
	fake.Wait(t, 30*time.Second, "the promotion pull request", func() bool {
		pulls := fake.PullsLocked()
		return len(pulls) == 1 && strings.Contains(pulls[0].Body, "- #6 Make six")
	})
	// Pull request 7 too: the open promotion pull request lists both.
	deliver(t, p, "pull_request", "pr7", prPayload(t, "opened", repo.dir, fake.Installation, 7, sha, nil))
	e2eWaitBuild(t, p, 3, 60*time.Second, e2eBuildDone)
	m7 := repo.commit("Merge pull request #7 from Codertocat/seven\n\nMake seven", nil)
	deliver(t, p, "pull_request", "merge7", mergedPayload(t, repo.dir, fake.Installation, 7, sha, "master", m7))
	fake.Wait(t, 30*time.Second, "the promotion pull request updated", func() bool {
		pulls := fake.PullsLocked()
		return len(pulls) == 1 && strings.Contains(pulls[0].Body, "- #7 Make seven")
	})
	pr := fake.Pulls()[0]
	if pr.Head != "master" || pr.Base != "production" || pr.Edits != 1 || !strings.Contains(pr.Body, "- #6 Make six\n- #7 Make seven") {
		t.Errorf("promotion pull request %+v, want master → production listing #6 then #7, edited once", pr)
	}

	// The promotion is merged into production: deploy runs and is
	// reported as a deployment.
	fake.MergePull(pr.Number)
	repo.git("branch", "production", m7)
	deliver(t, p, "pull_request", "merge-prod", mergedPayload(t, repo.dir, fake.Installation, pr.Number, m7, "production", m7))
	d := e2eWaitBuild(t, p, 4, 60*time.Second, e2eBuildDone)
	if d.Action != "deploy" || d.Status != "success" {
		t.Fatalf("build 4 is %s %s %q, want a successful deploy", d.Action, d.Status, d.Error)
	}
	fake.Wait(t, 30*time.Second, "the deployment's success", func() bool {
		ds := fake.DeploymentsLocked()
		return len(ds) == 1 && len(ds[0].States) > 0 && ds[0].States[len(ds[0].States)-1] == "success"
	})
	for _, sha := range []string{sha, m7} {
		builds := map[string]int{}
		for _, c := range fake.CheckRuns(sha) {
			builds[c.ExternalID]++
		}
		for id, n := range builds {
			if n != 1 {
				t.Errorf("job %s has %d check runs, want one that changes state", id, n)
			}
		}
	}
	dep := fake.Deployments()[0]
	if dep.Ref != m7 || dep.Environment != "production" {
		t.Errorf("deployment %+v, want ref %s to production", dep, m7)
	}
	for i, s := range dep.States[:len(dep.States)-1] {
		if s != "queued" && s != "in_progress" {
			t.Errorf("deployment state %d is %s before the final success", i, s)
		}
	}
	t.Logf("what the fake GitHub recorded:\n%s", fake.Dump())
	p.stop(t)
}

// TestGitHubSuperseded: a new commit on a pull request cancels the
// running build of the old one, whose status says it was superseded
// (an error, so it is not taken for the new commit's result).
func TestGitHubSuperseded(t *testing.T) {
	fake := githubtest.New(t)
	repo := newGHRepo(t)
	slow := repo.commit("slow", map[string]string{".forge.yml": "execute:\n  - sleep 60\n"})
	quick := repo.commit("quick", map[string]string{".forge.yml": "execute:\n  - echo quick\n"})
	p := ghStart(t, fake, t.TempDir())
	deliver(t, p, "pull_request", "old", prPayload(t, "opened", repo.dir, fake.Installation, 2, slow, nil))
	fake.Wait(t, 30*time.Second, "the old commit running", func() bool {
		return fake.LatestLocked(slow)["forge/execute"].Description == "running"
	})
	deliver(t, p, "pull_request", "new", prPayload(t, "synchronize", repo.dir, fake.Installation, 2, quick, nil))
	fake.Wait(t, 60*time.Second, "both commits' final statuses", func() bool {
		return fake.LatestLocked(slow)["forge/execute"].State == "error" && fake.LatestLocked(quick)["forge/execute"].State == "success"
	})
	if s := fake.Latest(slow)["forge/execute"]; s.Description != "canceled: superseded by build #2" {
		t.Errorf("the superseded commit's status says %q, want \"canceled: superseded by build #2\"", s.Description)
	}
	for _, c := range fake.CheckRuns(slow) {
		if c.Conclusion != "cancelled" {
			t.Errorf("the superseded check run's conclusion is %q, want cancelled", c.Conclusion)
		}
	}
	checkOrder(t, fake.Statuses(slow))
	checkOrder(t, fake.Statuses(quick))
	p.stop(t)
}

// TestGitHubProtect: forge github protect prints the contexts the main
// and production branches should require, from the spec on GitHub, and
// with --apply sets them, keeping other required checks.
func TestGitHubProtect(t *testing.T) {
	fake := githubtest.New(t)
	fake.SetFile(".forge.yml", "master", ghPassSpec+"  lint:\n    matrix:\n      go: [\"1.22\", \"1.23\"]\n    steps: [go vet ./...]\n")
	fake.Protect("production", "ci/other", "forge/old-job")
	env := []string{"FORGE_GITHUB_TOKEN=" + fake.Token, "FORGE_GITHUB_API_URL=" + fake.URL}
	out := e2eForgeCmd(t, env, "github", "protect", "Codertocat/Hello-World")
	for _, want := range []string{
		"Codertocat/Hello-World branch master (not protected yet) would require:\n  + forge/build\n  + forge/lint (go=1.22)\n  + forge/lint (go=1.23)\n  + forge/test\n",
		"branch production (protected) would require:\n    ci/other\n  + forge/build\n",
		"  - forge/old-job\n",
		"Nothing was changed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, ok := fake.Protection("master"); ok {
		t.Fatal("master was protected without --apply")
	}
	e2eForgeCmd(t, env, "github", "protect", "Codertocat/Hello-World", "--apply")
	main, _ := fake.Protection("master")
	prod, _ := fake.Protection("production")
	if fmt.Sprint(main) != "[forge/build forge/lint (go=1.22) forge/lint (go=1.23) forge/test]" {
		t.Errorf("master requires %v", main)
	}
	if fmt.Sprint(prod) != "[ci/other forge/build forge/lint (go=1.22) forge/lint (go=1.23) forge/test]" {
		t.Errorf("production requires %v", prod)
	}
}

// TestGitHubAppTokenExpiresMidBuild: the installation token forge got
// when the build started expires while its job runs; the job's final
// status is still reported, with a new token (every App request carries
// a JWT the fake verifies with the App's public key).
func TestGitHubAppTokenExpiresMidBuild(t *testing.T) {
	fake := githubtest.New(t)
	gate := filepath.Join(t.TempDir(), "go")
	repo := newGHRepo(t)
	sha := repo.commit("waits", map[string]string{".forge.yml": fmt.Sprintf("execute:\n  - while [ ! -f %s ]; do sleep 0.05; done\n", gate)})
	p := ghStart(t, fake, t.TempDir())
	deliver(t, p, "pull_request", "expiry-1", prPayload(t, "opened", repo.dir, fake.Installation, 2, sha, nil))
	fake.Wait(t, 30*time.Second, "the job running", func() bool {
		return fake.LatestLocked(sha)["forge/execute"].Description == "running"
	})
	issued := fake.TokensIssued()
	fake.ExpireTokens()
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fake.Wait(t, 30*time.Second, "the final status", func() bool {
		return fake.LatestLocked(sha)["forge/execute"].State == "success"
	})
	if n := fake.TokensIssued(); n <= issued {
		t.Errorf("tokens issued: %d before the expiry, %d after; want a new one", issued, n)
	}
	checkOrder(t, fake.Statuses(sha))
	p.stop(t)
}
