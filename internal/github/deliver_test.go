package github_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forgeci/forge/internal/prometheus"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/github"
	"github.com/forgeci/forge/internal/github/githubtest"
)

const sha = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"

// memStore is a forge.OutboxStore in memory with the documented rules.
type memStore struct {
	mu    sync.Mutex
	items map[string]*forge.OutboxItem
	owner map[string]string
	lease map[string]time.Time
	order []string
}

func newMemStore() *memStore {
	return &memStore{items: map[string]*forge.OutboxItem{}, owner: map[string]string{}, lease: map[string]time.Time{}}
}

func (m *memStore) Enqueue(_ context.Context, owner string, until time.Time, items []*forge.OutboxItem) ([]*forge.OutboxItem, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*forge.OutboxItem
	for _, it := range items {
		cur := m.items[it.Key]
		switch {
		case cur == nil:
			n := *it
			n.Version, n.Delivered, n.Created = 1, 0, time.Now()
			m.items[it.Key] = &n
			m.order = append(m.order, it.Key)
		case it.Rank > cur.Rank || it.Rank == cur.Rank && !it.Weak && !bytes.Equal(it.Payload, cur.Payload):
			cur.Payload, cur.Rank, cur.Weak, cur.Kind = it.Payload, it.Rank, it.Weak, it.Kind
			cur.Version++
			cur.Attempts, cur.Progress, cur.NextAt, cur.Error = 0, 0, time.Time{}, ""
		default:
			continue
		}
		m.owner[it.Key], m.lease[it.Key] = owner, until
		c := *m.items[it.Key]
		out = append(out, &c)
	}
	return out, nil
}

func (m *memStore) Claim(_ context.Context, owner string, now, until time.Time, limit int, reclaim bool) ([]*forge.OutboxItem, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*forge.OutboxItem
	for _, k := range m.order {
		it := m.items[k]
		free := m.owner[k] == "" || !m.lease[k].After(now) || reclaim && m.owner[k] == owner
		if it.Pending() && (it.NextAt.IsZero() || !it.NextAt.After(now)) && free && len(out) < limit {
			m.owner[k], m.lease[k] = owner, until
			c := *it
			out = append(out, &c)
		}
	}
	return out, nil
}

func (m *memStore) Settle(_ context.Context, results []forge.OutboxResult) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range results {
		it := m.items[r.Key]
		if it == nil {
			continue
		}
		it.Ref, it.Progress = r.Ref, r.Progress
		if it.Version != r.Version {
			continue
		}
		if r.Failed == "" || r.NextAt.IsZero() {
			it.Delivered, it.Error = it.Version, r.Failed
		} else {
			it.Attempts++
			it.NextAt, it.Error = r.NextAt, r.Failed
		}
		m.owner[r.Key] = ""
	}
	return nil
}

func (m *memStore) PurgeOutbox(context.Context, time.Time) (int, error) { return 0, nil }

// harness runs a Reporter and an Outbox against a fake GitHub.
type harness struct {
	fake   *githubtest.Fake
	client *github.Client
	outbox *github.Outbox
	rep    *github.Reporter
	store  *memStore
	reg    *prometheus.Registry
	stop   func()
}

func newHarness(t *testing.T, app bool, configure func(*githubtest.Fake)) *harness {
	t.Helper()
	fake := githubtest.New(t)
	if configure != nil {
		configure(fake)
	}
	auth := github.Auth{APIURL: fake.URL, Timeout: 2 * time.Second}
	if app {
		auth.AppID, auth.AppKey = fake.AppID, fake.KeyPEM()
	} else {
		auth.Token = fake.Token
	}
	client, err := github.NewClient(auth)
	if err != nil {
		t.Fatal(err)
	}
	store := newMemStore()
	reg := prometheus.NewRegistry()
	ob, err := github.NewOutbox(github.OutboxOptions{Store: store, Owner: "test", Deliver: client.Deliver, Backoff: 20 * time.Millisecond, Poll: 50 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	rep := github.NewReporter(github.ReporterOptions{Outbox: ob, Repos: repos{}, Jobs: jobs{}, PublicURL: "https://ci.example.com", Checks: app})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); ob.Run(ctx) }()
	go func() { defer wg.Done(); rep.Run(ctx) }()
	h := &harness{fake: fake, client: client, outbox: ob, rep: rep, store: store, reg: reg, stop: func() { cancel(); wg.Wait() }}
	t.Cleanup(h.stop)
	return h
}

type repos struct{}

func (repos) Repo(context.Context, int64) (*forge.Repo, error) {
	return &forge.Repo{ID: 1, Owner: "Codertocat", Name: "Hello-World"}, nil
}

type jobs struct{}

func (jobs) Jobs(context.Context, int64) ([]*forge.BuildJob, error) { return nil, nil }

func build(id int64, st forge.Status) forge.Build {
	return forge.Build{ID: id, RepoID: 1, Number: id, Action: "execute", Status: st,
		Hook: forge.Hook{Event: "pull_request", SHA: sha, PullRequest: 2, Installation: 777,
			Repo: forge.Repo{Owner: "Codertocat", Name: "Hello-World"}}}
}

func job(st forge.Status) *forge.BuildJob {
	now := time.Now().UTC()
	j := &forge.BuildJob{ID: 7, BuildID: 1, Name: "test", Status: st, Attempt: 1}
	if st != forge.StatusQueued {
		j.Started = now.Add(-time.Minute)
	}
	if st.Done() {
		j.Finished = now
	}
	return j
}

// TestCheckRunAnnotationsInBatches: 120 failing tests become 120
// annotations in batches of at most 50 (the fake fails a request with
// more); the summary counts them all; a failure half-way does not send
// a batch twice.
func TestCheckRunAnnotationsInBatches(t *testing.T) {
	var calls atomic.Int64
	h := newHarness(t, true, func(f *githubtest.Fake) {
		f.SetFault(func(r *http.Request) githubtest.Fault {
			// The third check run request (the second batch) fails once.
			if strings.Contains(r.URL.Path, "/check-runs") && calls.Add(1) == 3 {
				return githubtest.ServerError
			}
			return githubtest.NoFault
		})
	})
	tests := &forge.TestSummary{Total: 300, Failed: 120}
	for i := range 120 {
		tests.Failures = append(tests.Failures, forge.TestFailure{Name: fmt.Sprintf("test_%d", i), File: "pkg/x_test.go", Line: i + 1, Message: "boom", Report: "report.xml"})
	}
	h.rep.Observe(&forge.Change{Build: build(1, forge.StatusRunning), Job: job(forge.StatusFailure), Tests: tests})
	h.fake.Wait(t, 30*time.Second, "the check run with every annotation", func() bool {
		runs := h.fake.CheckRunsLocked(sha)
		return len(runs) == 1 && len(runs[0].Annotations) == 120
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h.outbox.Idle(ctx)
	run := h.fake.CheckRuns(sha)[0]
	if fmt.Sprint(run.Batches) != "[50 50 20]" || run.Conclusion != "failure" {
		t.Errorf("batches %v conclusion %s, want [50 50 20] failure", run.Batches, run.Conclusion)
	}
	for i, a := range run.Annotations {
		if a.StartLine != i+1 || a.Path != "pkg/x_test.go" {
			t.Fatalf("annotation %d at %s:%d, want pkg/x_test.go:%d (in order, none twice)", i, a.Path, a.StartLine, i+1)
		}
	}
	if !strings.Contains(run.Summary, "Tests: 300, failed 120") || run.Title != "120 of 300 tests failed" {
		t.Errorf("title %q summary %q", run.Title, run.Summary)
	}
	// One check run delivery failed and was retried; it and the status
	// were delivered.
	want := `
# HELP forge_github_reports_total Deliveries of reports to GitHub, by kind (github_status, github_check_run, ...) and outcome (delivered, retry, given_up).
# TYPE forge_github_reports_total counter
forge_github_reports_total{kind="github_check_run",outcome="delivered"} 1
forge_github_reports_total{kind="github_check_run",outcome="retry"} 1
forge_github_reports_total{kind="github_status",outcome="delivered"} 1
`
	families, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got strings.Builder
	for _, f := range families {
		if f.Name == "forge_github_reports_total" {
			prometheus.WriteText(&got, []*prometheus.MetricFamily{f})
		}
	}
	if got.String() != strings.TrimPrefix(want, "\n") {
		t.Errorf("metrics:\n%s\nwant:\n%s", got.String(), want)
	}
}

// TestAppTokenRefreshed: an installation token that expires (the fake
// answers 401 for it) is replaced at once, and a JWT the fake verifies
// with the App's public key gets the new one; a token that is about to
// expire is replaced before it is used.
func TestAppTokenRefreshed(t *testing.T) {
	h := newHarness(t, true, nil)
	b := build(1, forge.StatusRunning)
	h.rep.Observe(&forge.Change{Build: b, Job: job(forge.StatusRunning)})
	h.fake.Wait(t, 20*time.Second, "the running status", func() bool { return len(h.fake.StatusesLocked(sha)) == 1 })
	if n := h.fake.TokensIssued(); n != 1 {
		t.Fatalf("%d tokens issued, want 1", n)
	}
	// The token expires mid-build.
	h.fake.ExpireTokens()
	h.rep.Observe(&forge.Change{Build: b, Job: job(forge.StatusSuccess)})
	h.fake.Wait(t, 20*time.Second, "the final status", func() bool {
		return h.fake.LatestLocked(sha)["forge/test"].State == "success"
	})
	if n := h.fake.TokensIssued(); n != 2 {
		t.Errorf("%d tokens issued, want 2 (one refresh after the 401)", n)
	}
}

// TestAppTokenNearExpiry: a token within a minute of its expiry is not
// used: a new one is fetched first.
func TestAppTokenNearExpiry(t *testing.T) {
	h := newHarness(t, true, func(f *githubtest.Fake) { f.TokenTTL = 30 * time.Second })
	b := build(1, forge.StatusRunning)
	h.rep.Observe(&forge.Change{Build: b, Job: job(forge.StatusRunning)})
	h.fake.Wait(t, 20*time.Second, "the running status", func() bool { return len(h.fake.StatusesLocked(sha)) == 1 })
	h.rep.Observe(&forge.Change{Build: b, Job: job(forge.StatusSuccess)})
	h.fake.Wait(t, 20*time.Second, "the final status", func() bool { return len(h.fake.StatusesLocked(sha)) == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h.rep.Idle(ctx)
	h.outbox.Idle(ctx) // the check runs' requests too
	total, _ := h.fake.Requests()
	if n := h.fake.TokensIssued(); n < 2 || n != total-n {
		t.Errorf("%d tokens issued for %d API requests, want one each: a token this close to its expiry is not used again", n, total-n)
	}
}

// TestTokenAuthStatusesOnly: with a personal token forge reports commit
// statuses and no check runs (GitHub refuses them from tokens; the fake
// fails the test if one comes).
func TestTokenAuthStatusesOnly(t *testing.T) {
	h := newHarness(t, false, nil)
	b := build(1, forge.StatusQueued)
	h.rep.Observe(&forge.Change{Build: b, Jobs: []*forge.BuildJob{job(forge.StatusQueued)}})
	h.rep.Observe(&forge.Change{Build: b, Job: job(forge.StatusSkipped)})
	h.fake.Wait(t, 20*time.Second, "the skipped job's status", func() bool {
		s := h.fake.LatestLocked(sha)["forge/test"]
		return s.State == "success" && strings.HasPrefix(s.Description, "skipped")
	})
	if n := len(h.fake.CheckRuns("")); n != 0 {
		t.Errorf("%d check runs with a token, want none", n)
	}
}

// TestOutdatedDropped: a "running" that arrives after "success" is not
// sent, and a queued burst collapses to the newest state.
func TestOutdatedDropped(t *testing.T) {
	h := newHarness(t, false, nil)
	b := build(1, forge.StatusRunning)
	h.rep.Observe(&forge.Change{Build: b, Job: job(forge.StatusSuccess)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h.fake.Wait(t, 10*time.Second, "success", func() bool { return len(h.fake.StatusesLocked(sha)) == 1 })
	h.rep.Observe(&forge.Change{Build: b, Job: job(forge.StatusRunning)})
	h.rep.Idle(ctx)
	h.outbox.Idle(ctx)
	got := h.fake.Statuses(sha)
	if len(got) != 1 || got[0].State != "success" {
		t.Errorf("statuses %+v, want only success", got)
	}
}

// TestStatusShape checks descriptions and contexts: matrix variants keep
// their values, other actions their name, timeouts and cancellations say
// what happened.
func TestStatusShape(t *testing.T) {
	if got := github.Context("execute", "test (go=1.22, os=linux)"); got != "forge/test (go=1.22, os=linux)" {
		t.Errorf("matrix context %q", got)
	}
	if got := github.Context("deploy", "deploy"); got != "forge/deploy" {
		t.Errorf("deploy context %q", got)
	}
	if got := github.Context("nightly", "bench"); got != "forge/nightly/bench" {
		t.Errorf("nightly context %q", got)
	}
	h := newHarness(t, false, nil)
	timeout := job(forge.StatusFailure)
	timeout.Error = "timed out after 10m"
	superseded := build(2, forge.StatusCanceled)
	superseded.Error = "superseded by build #3 (abc1234)"
	canceled := job(forge.StatusCanceled)
	canceled.Name = "lint"
	h.rep.Observe(&forge.Change{Build: build(2, forge.StatusRunning), Job: timeout})
	h.rep.Observe(&forge.Change{Build: superseded, Job: canceled})
	h.fake.Wait(t, 10*time.Second, "two statuses", func() bool { return len(h.fake.LatestLocked(sha)) == 2 })
	l := h.fake.Latest(sha)
	if s := l["forge/test"]; s.State != "failure" || s.Description != "timed out after 10m" {
		t.Errorf("timed out job: %s %q", s.State, s.Description)
	}
	if s := l["forge/lint"]; s.State != "error" || s.Description != "canceled: superseded by build #3 (abc1234)" {
		t.Errorf("superseded job: %s %q", s.State, s.Description)
	}
	if !strings.HasPrefix(l["forge/test"].TargetURL, "https://ci.example.com/Codertocat/Hello-World/builds/2/jobs/7") {
		t.Errorf("target_url %q", l["forge/test"].TargetURL)
	}
}

type discard struct{}

func (discard) Add(...*forge.OutboxItem) {}

// BenchmarkReporterObserve is what reporting costs the build: the
// runner's call to Observe for each change (the work happens elsewhere).
//
//	go test -run '^$' -bench BenchmarkReporterObserve ./internal/github/
func BenchmarkReporterObserve(b *testing.B) {
	rep := github.NewReporter(github.ReporterOptions{Outbox: discard{}, Repos: repos{}, Jobs: jobs{}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); rep.Run(ctx) }()
	c := &forge.Change{Build: build(1, forge.StatusRunning), Job: job(forge.StatusSuccess)}
	b.ResetTimer()
	for b.Loop() {
		rep.Observe(c)
	}
	b.StopTimer()
	cancel()
	<-done
}

// TestRateLimitsHonoured: after a secondary rate limit (Retry-After: 1)
// or a used-up primary limit (X-RateLimit-Reset), the report is sent
// again no sooner than GitHub said, not after the short backoff.
func TestRateLimitsHonoured(t *testing.T) {
	for _, fault := range []githubtest.Fault{githubtest.SecondaryRateLimit, githubtest.PrimaryRateLimit} {
		var mu sync.Mutex
		var faultedAt time.Time
		h := newHarness(t, false, func(f *githubtest.Fake) {
			f.SetFault(func(*http.Request) githubtest.Fault {
				mu.Lock()
				defer mu.Unlock()
				if faultedAt.IsZero() {
					faultedAt = time.Now()
					return fault
				}
				return githubtest.NoFault
			})
		})
		h.rep.Observe(&forge.Change{Build: build(1, forge.StatusRunning), Job: job(forge.StatusSuccess)})
		h.fake.Wait(t, 20*time.Second, "the status after the rate limit", func() bool { return len(h.fake.StatusesLocked(sha)) == 1 })
		mu.Lock()
		waited := h.fake.Statuses(sha)[0].At.Sub(faultedAt)
		mu.Unlock()
		if waited < 900*time.Millisecond {
			t.Errorf("fault %d: sent again %v after the rate limit, want at least the second GitHub asked for", fault, waited)
		}
		h.stop()
	}
}
