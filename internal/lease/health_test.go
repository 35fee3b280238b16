package lease

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/testwait"
)

const checkedPools = `
pools:
  dut:
    check: {command: "true", interval: 10m, timeout: 5s, retry: 30s}
    resources:
      - {id: dut1, host: 10.0.0.5}
      - {id: dut2, host: 10.0.0.6}
`

func resourceState(t *testing.T, m Manager, pool, id string) *ResourceState {
	t.Helper()
	p, err := m.Pool(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range p.Resources {
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("pool %s has no resource %s", pool, id)
	return nil
}

func takeChecks(t *testing.T, m Health, now time.Time) ([]*CheckJob, time.Time) {
	t.Helper()
	jobs, next, err := m.TakeChecks(context.Background(), now, 10)
	if err != nil {
		t.Fatal(err)
	}
	return jobs, next
}

func finish(t *testing.T, m Health, job *CheckJob, ok bool, output string, at time.Time) bool {
	t.Helper()
	changed, err := m.FinishCheck(context.Background(), job, &CheckResult{OK: ok, Output: output, Finished: at})
	if err != nil {
		t.Fatal(err)
	}
	return changed
}

func jobIDs(jobs []*CheckJob) string {
	var ids []string
	for _, j := range jobs {
		ids = append(ids, j.Resource.ID)
	}
	return strings.Join(ids, ",")
}

// checkedMemory is a Memory with checkedPools whose checks are started
// and whose first checks passed at t0.
func checkedMemory(t *testing.T) (*Memory, time.Time) {
	t.Helper()
	m := newTestMemory(t, checkedPools)
	if _, err := m.StartChecks(context.Background()); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	jobs, _ := takeChecks(t, m, t0)
	for _, j := range jobs {
		finish(t, m, j, true, "", t0)
	}
	return m, t0
}

// TestFailingCheckTakesResourceOutUntilItPasses: a released resource is
// checked before anyone gets it; a failing check disables it with its
// output as the reason, retried after 30s, then 60s; a passing check puts
// it back, and the waiter gets it.
func TestFailingCheckTakesResourceOutUntilItPasses(t *testing.T) {
	ctx := context.Background()
	m := newTestMemory(t, checkedPools)
	if _, err := m.StartChecks(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	jobs, _ := takeChecks(t, m, t0)
	if jobIDs(jobs) != "dut1,dut2" {
		t.Fatalf("first checks: got %q, want every resource checked as checks start", jobIDs(jobs))
	}
	if st := resourceState(t, m, "dut", "dut1").State; st != StateChecking {
		t.Fatalf("dut1 while its check runs: state %q, want checking", st)
	}
	for _, j := range jobs {
		finish(t, m, j, true, "", t0)
	}
	if jobs, next := takeChecks(t, m, t0.Add(time.Minute)); len(jobs) != 0 || !next.Equal(t0.Add(10*time.Minute)) {
		t.Fatalf("after passing checks: got jobs %q and next %v, want none until %v", jobIDs(jobs), next, t0.Add(10*time.Minute))
	}

	var a, b recorder
	if err := m.Acquire(ctx, &Request{Owner: "A", ID: "r", Wants: []forge.ResourceRequest{{Pool: "dut", Count: 1}}, Notify: a.notify}); err != nil {
		t.Fatal(err)
	}
	ga := a.last()
	if ga.Type != EventGranted {
		t.Fatalf("A: got %+v, want a grant", ga)
	}
	if err := m.Acquire(ctx, &Request{Owner: "B", ID: "r", Wants: []forge.ResourceRequest{{Pool: "dut", Count: 2}}, Notify: b.notify}); err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, "A", ga.Lease.ID); err != nil {
		t.Fatal(err)
	}
	if ev := b.last(); ev.Type != EventQueued {
		t.Fatalf("B after A's release: got %+v, want still queued while dut1 is checked", ev)
	}
	if st := resourceState(t, m, "dut", "dut1"); st.State != StateChecking {
		t.Fatalf("dut1 after its release: state %q, want checking", st.State)
	}

	t1 := t0.Add(2 * time.Minute)
	jobs, _ = takeChecks(t, m, t1)
	if jobIDs(jobs) != "dut1" {
		t.Fatalf("checks after the release: got %q, want dut1", jobIDs(jobs))
	}
	env := strings.Join(jobs[0].Env(), " ")
	if env != "FORGE_RESOURCE_HOST=10.0.0.5 FORGE_RESOURCE_ID=dut1 FORGE_RESOURCE_POOL=dut" {
		t.Fatalf("check environment: got %q", env)
	}
	if !finish(t, m, jobs[0], false, "\nno link on eth0\n", t1) {
		t.Fatal("a failing check: changed false, want true (the fault is new)")
	}
	st := resourceState(t, m, "dut", "dut1")
	if st.State != StateDisabled || st.DisabledBy != forge.FaultCheck || st.Fault == nil || st.Fault.Reason != "no link on eth0" {
		t.Fatalf("dut1 after a failed check: got %+v (fault %+v), want disabled by check with the output as reason", st, st.Fault)
	}
	if st.Check == nil || st.Check.OK || st.Check.Failures != 1 || st.Check.Next == nil || !st.Check.Next.Equal(t1.Add(30*time.Second)) {
		t.Fatalf("dut1's check status: got %+v, want a failure and a retry in 30s", st.Check)
	}
	if ev := b.last(); ev.Type != EventQueued {
		t.Fatalf("B: got %+v, want still queued", ev)
	}
	// Retried after 30s, then after 60s (doubling).
	if jobs, next := takeChecks(t, m, t1.Add(29*time.Second)); len(jobs) != 0 || !next.Equal(t1.Add(30*time.Second)) {
		t.Fatalf("before the retry: got %q, next %v", jobIDs(jobs), next)
	}
	t2 := t1.Add(30 * time.Second)
	jobs, _ = takeChecks(t, m, t2)
	if jobIDs(jobs) != "dut1" {
		t.Fatalf("retry: got %q, want dut1", jobIDs(jobs))
	}
	if finish(t, m, jobs[0], false, "no link on eth0", t2) {
		t.Fatal("the same failure again: changed true, want false (nothing new to keep)")
	}
	if st := resourceState(t, m, "dut", "dut1"); st.Fault.Since.After(t1) || !st.Check.Next.Equal(t2.Add(time.Minute)) {
		t.Fatalf("second failure: fault since %v (want the first failure's time), next %v (want 60s later)", st.Fault.Since, st.Check.Next)
	}
	t3 := t2.Add(time.Minute)
	jobs, _ = takeChecks(t, m, t3)
	if !finish(t, m, jobs[0], true, "", t3) {
		t.Fatal("a passing check after failures: changed false, want true")
	}
	st = resourceState(t, m, "dut", "dut1")
	if st.Fault != nil || st.DisabledBy != "" || st.State != StateLeased {
		t.Fatalf("dut1 after its check passed: got %+v, want back in service and granted to B", st)
	}
	if ev := b.last(); ev.Type != EventGranted {
		t.Fatalf("B: got %+v, want the grant once dut1 passed its check", ev)
	}
	stats, _ := m.Stats(ctx)
	if got := stats[0].Checks; got[CheckPassed] != 3 || got[CheckFailed] != 2 {
		t.Fatalf("check counters: got %v, want 3 passed and 2 failed", got)
	}
}

// TestBackoffDoublesUpToInterval: retries after 30s, 60s, 120s…, never
// more than the interval.
func TestBackoffDoublesUpToInterval(t *testing.T) {
	pc := &forge.PoolCheck{Interval: 5 * time.Minute, Retry: 30 * time.Second}
	want := []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 5 * time.Minute, 5 * time.Minute}
	for i, w := range want {
		if got := backoff(pc, i+1); got != w {
			t.Errorf("backoff after %d failures: got %s, want %s", i+1, got, w)
		}
	}
}

// TestReleaseBrokenDisablesUntilOperatorEnables: without a check, a
// holder's broken report keeps the resource out until an operator
// enables it.
func TestReleaseBrokenDisablesUntilOperatorEnables(t *testing.T) {
	ctx := context.Background()
	m := newTestMemory(t, "pools: {dut: {resources: [{id: dut1}]}}")
	var a, b recorder
	want := []forge.ResourceRequest{{Pool: "dut", Count: 1}}
	if err := m.Acquire(ctx, &Request{Owner: "A", ID: "r", Wants: want, Notify: a.notify}); err != nil {
		t.Fatal(err)
	}
	g := a.last()
	if err := m.Acquire(ctx, &Request{Owner: "B", ID: "r", Wants: want, Notify: b.notify}); err != nil {
		t.Fatal(err)
	}
	if err := m.ReleaseBroken(ctx, "B", g.Lease.ID, "not mine"); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Fatalf("ReleaseBroken by another owner: got %v, want ENOTFOUND", err)
	}
	if err := m.ReleaseBroken(ctx, "A", g.Lease.ID, "  screen cracked\n"); err != nil {
		t.Fatal(err)
	}
	if ev := a.last(); ev.Type != EventReleased {
		t.Fatalf("A: got %+v, want released", ev)
	}
	st := resourceState(t, m, "dut", "dut1")
	if st.State != StateDisabled || st.DisabledBy != forge.FaultHolder || st.Fault.Reason != "screen cracked" {
		t.Fatalf("dut1 after a broken release: got %+v, want disabled by the holder", st)
	}
	if ev := b.last(); ev.Type != EventQueued {
		t.Fatalf("B: got %+v, want queued (a broken resource is not granted, but may come back)", ev)
	}
	h, _ := m.History(ctx, 1)
	if h[0].Reason != ReasonBroken || h[0].Broken != "screen cracked" {
		t.Fatalf("history: got reason %q, broken %q; want %q with the holder's reason", h[0].Reason, h[0].Broken, ReasonBroken)
	}
	if err := m.SetDisabled(ctx, "dut", "dut1", false, ""); err != nil {
		t.Fatal(err)
	}
	if ev := b.last(); ev.Type != EventGranted {
		t.Fatalf("B after the operator enabled dut1: got %+v, want granted", ev)
	}
	if st := resourceState(t, m, "dut", "dut1"); st.Fault != nil {
		t.Fatalf("enabled: fault %+v is still there", st.Fault)
	}
}

// TestReleaseBrokenWithCheck: with a check, the holder's report takes the
// resource out and the check decides at once when it comes back.
func TestReleaseBrokenWithCheck(t *testing.T) {
	ctx := context.Background()
	m, t0 := checkedMemory(t)
	var a recorder
	if err := m.Acquire(ctx, &Request{Owner: "A", ID: "r", Wants: []forge.ResourceRequest{{Pool: "dut", Count: 2}}, Notify: a.notify}); err != nil {
		t.Fatal(err)
	}
	if err := m.ReleaseBroken(ctx, "A", a.last().Lease.ID, "flaky USB"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"dut1", "dut2"} {
		if st := resourceState(t, m, "dut", id); st.DisabledBy != forge.FaultHolder || st.Fault.Reason != "flaky USB" {
			t.Fatalf("%s after a broken release: got %+v, want disabled by the holder", id, st)
		}
	}
	jobs, _ := takeChecks(t, m, t0.Add(time.Second))
	if jobIDs(jobs) != "dut1,dut2" {
		t.Fatalf("checks after a broken release: got %q, want both at once", jobIDs(jobs))
	}
	finish(t, m, jobs[0], true, "", t0.Add(time.Second))
	finish(t, m, jobs[1], false, "still flaky", t0.Add(time.Second))
	if st := resourceState(t, m, "dut", "dut1"); st.State != StateFree || st.Fault != nil {
		t.Fatalf("dut1 passed its check: got %+v, want free", st)
	}
	if st := resourceState(t, m, "dut", "dut2"); st.DisabledBy != forge.FaultCheck || st.Fault.Reason != "still flaky" {
		t.Fatalf("dut2 failed its check: got %+v, want disabled by the check", st)
	}
}

// TestOperatorDisableWinsOverCheck: a resource an operator disabled is
// not checked, and a check that passes while it was disabled does not
// enable it.
func TestOperatorDisableWinsOverCheck(t *testing.T) {
	ctx := context.Background()
	m := newTestMemory(t, checkedPools)
	if _, err := m.StartChecks(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	jobs, _ := takeChecks(t, m, t0)
	if err := m.SetDisabled(ctx, "dut", "dut1", true, ""); err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs {
		finish(t, m, j, true, "", t0)
	}
	if st := resourceState(t, m, "dut", "dut1"); st.State != StateDisabled || st.DisabledBy != DisabledOperator {
		t.Fatalf("dut1: got %+v, want still disabled by the operator", st)
	}
	jobs, _ = takeChecks(t, m, t0.Add(time.Hour))
	if jobIDs(jobs) != "dut2" {
		t.Fatalf("idle checks an hour later: got %q, want dut2 only", jobIDs(jobs))
	}
	finish(t, m, jobs[0], true, "", t0.Add(time.Hour))

	// Released into a check, then disabled before it ran: not checked.
	var a recorder
	if err := m.Acquire(ctx, &Request{Owner: "A", ID: "r", Wants: []forge.ResourceRequest{{Pool: "dut", Count: 1}}, Notify: a.notify}); err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, "A", a.last().Lease.ID); err != nil {
		t.Fatal(err)
	}
	if err := m.SetDisabled(ctx, "dut", "dut2", true, ""); err != nil {
		t.Fatal(err)
	}
	if jobs, _ := takeChecks(t, m, t0.Add(time.Hour)); len(jobs) != 0 {
		t.Fatalf("checks of resources an operator disabled: got %q, want none", jobIDs(jobs))
	}
	if err := m.SetDisabled(ctx, "dut", "dut2", false, ""); err != nil {
		t.Fatal(err)
	}
	jobs, _ = takeChecks(t, m, t0.Add(time.Hour))
	if jobIDs(jobs) != "dut2" {
		t.Fatalf("checks once enabled: got %q, want dut2 (checked as it comes back)", jobIDs(jobs))
	}
	finish(t, m, jobs[0], true, "", t0.Add(time.Hour))

	// A new definition with a new check command (and dut1 no longer
	// disabled): every resource is checked with it at once.
	pools, _ := poolsFromYAML(t, strings.Replace(checkedPools, `command: "true"`, `command: "ping"`, 1))
	if _, err := m.PutPool(ctx, pools[0]); err != nil {
		t.Fatal(err)
	}
	jobs, _ = takeChecks(t, m, t0.Add(time.Hour))
	if jobIDs(jobs) != "dut1,dut2" || jobs[0].Check.Command != "ping" || jobs[1].Check.Command != "ping" {
		t.Fatalf("checks after the check changed: got %q, want both with the new command", jobIDs(jobs))
	}
}

// TestStopChecksPutsWaitingResourcesBack: once checks stop (the leader
// steps down, the server stops), nothing waits for a check that will not
// run, and a late result is ignored.
func TestStopChecksPutsWaitingResourcesBack(t *testing.T) {
	ctx := context.Background()
	m := newTestMemory(t, checkedPools)
	if _, err := m.StartChecks(ctx); err != nil {
		t.Fatal(err)
	}
	jobs, _ := takeChecks(t, m, time.Now())
	m.StopChecks(ctx)
	for _, j := range jobs {
		finish(t, m, j, false, "late", time.Now())
	}
	p, _ := m.Pool(ctx, "dut")
	if p.Free != 2 || p.Checking != 0 || p.Disabled != 0 {
		t.Fatalf("after StopChecks: free %d checking %d disabled %d, want 2 free", p.Free, p.Checking, p.Disabled)
	}
}

// TestFaultsAreKeptInTheStore: a failed check's and a holder's faults
// survive a restart (a new Memory on the same store), and so does the
// pool's check; a passing check's end of a fault is kept too.
func TestFaultsAreKeptInTheStore(t *testing.T) {
	ctx := context.Background()
	store := newMemStore()
	cfg, _ := poolsFromYAML(t, checkedPools)
	pools, err := SeedPools(ctx, store, cfg, "")
	if err != nil {
		t.Fatal(err)
	}
	mem, err := NewMemory(pools, MemoryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	m := NewStoredPools(mem, store)
	if _, err := m.StartChecks(ctx); err != nil {
		t.Fatal(err)
	}
	jobs, _ := takeChecks(t, m, time.Now())
	finish(t, m, jobs[0], false, "dut1 is down", time.Now())
	finish(t, m, jobs[1], true, "", time.Now())
	var a recorder
	if err := m.Acquire(ctx, &Request{Owner: "A", ID: "r", Wants: []forge.ResourceRequest{{Pool: "dut", Count: 1}}, Notify: a.notify}); err != nil {
		t.Fatal(err)
	}
	if err := m.ReleaseBroken(ctx, "A", a.last().Lease.ID, "dut2 smells of smoke"); err != nil {
		t.Fatal(err)
	}

	// Restart, with the file winning (its pools are reset to it): the
	// faults stay all the same.
	for _, precedence := range []string{PrecedenceStore, PrecedenceConfig} {
		pools, err := SeedPools(ctx, store, cfg, precedence)
		if err != nil {
			t.Fatal(err)
		}
		again, err := NewMemory(pools, MemoryOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p, _ := again.Pool(ctx, "dut")
		again.Close()
		if p.Check == nil || p.Check.Command != "true" || p.Check.Retry != "30s" {
			t.Fatalf("%s: restarted pool's check: got %+v", precedence, p.Check)
		}
		got := map[string]string{}
		for _, r := range p.Resources {
			if r.Fault != nil {
				got[r.ID] = r.DisabledBy + ": " + r.Fault.Reason
			}
		}
		if got["dut1"] != "check: dut1 is down" || got["dut2"] != "holder: dut2 smells of smoke" || p.Free != 0 {
			t.Fatalf("%s: faults after a restart: got %v (free %d)", precedence, got, p.Free)
		}
	}

	// A check that passes ends the fault, in the store too.
	later := time.Now().Add(time.Hour)
	jobs, _ = takeChecks(t, m, later)
	if jobIDs(jobs) != "dut1,dut2" {
		t.Fatalf("checks an hour later: got %q, want both", jobIDs(jobs))
	}
	for _, j := range jobs {
		finish(t, m, j, true, "", later)
	}
	var kept forge.Pool
	if err := json.Unmarshal(store.pools["dut"], &kept); err != nil {
		t.Fatal(err)
	}
	for _, r := range kept.Resources {
		if r.Fault != nil {
			t.Fatalf("stored %s: fault %+v after its check passed", r.ID, r.Fault)
		}
	}
}

// TestCheckConfigErrors: a bad check is refused with an error naming the
// pool and the problem, from the file and from the REST API's body.
func TestCheckConfigErrors(t *testing.T) {
	for _, tc := range []struct{ check, want string }{
		{`{command: ""}`, `pool "dut": check: command is empty`},
		{`{command: "true", interval: soon}`, `pool "dut": check: interval "soon": want a duration like 30s or 10m`},
		{`{command: "true", timeout: 10ms}`, `pool "dut": check: timeout 10ms is below the minimum of 1s`},
		{`{command: "true", interval: 1m, timeout: 2m}`, `pool "dut": check: timeout 2m0s is longer than its interval 1m0s`},
		{`{command: "true"}, range: 1-10001`, `pool "dut": 10002 resources, more than the 10000 a pool with a check may have`},
	} {
		var c Config
		src := "pools: {dut: {check: " + tc.check + ", resources: [{id: a}]}}"
		if err := yaml.Unmarshal([]byte(src), &c); err != nil {
			t.Fatal(err)
		}
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("check %s: got %v, want an error with %q", tc.check, err, tc.want)
		}
	}
	p, err := DecodePool("dut", strings.NewReader(`{"check": {"command": "ping -c1 $FORGE_RESOURCE_HOST", "interval": "5m"}, "resources": [{"id": "a"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := forge.PoolCheck{Command: "ping -c1 $FORGE_RESOURCE_HOST", Interval: 5 * time.Minute, Timeout: DefaultCheckTimeout, Retry: DefaultCheckRetry}
	if p.Check == nil || *p.Check != want {
		t.Fatalf("decoded check: got %+v, want %+v", p.Check, want)
	}
	if _, err := DecodePool("dut", strings.NewReader(`{"check": {"command": "x", "every": "5m"}}`)); err == nil || !strings.Contains(err.Error(), "every") {
		t.Fatalf("unknown check field: got %v, want an error naming it", err)
	}
}

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{c.now.Add(d), ch})
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	keep := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			keep = append(keep, w)
		}
	}
	c.waiters = keep
}

// TestCheckerRunsChecks drives a Checker with a fake clock and a fake
// check: a released resource is checked at once, a failure is retried
// after the retry period, a pass brings the resource back.
func TestCheckerRunsChecks(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	m := newTestMemory(t, checkedPools)
	clock := newFakeClock()
	type call struct {
		job    *CheckJob
		result chan *CheckResult
	}
	calls := make(chan call)
	c := &Checker{Health: m, Now: clock.Now, After: clock.After, Run: func(ctx context.Context, job *CheckJob) *CheckResult {
		cl := call{job, make(chan *CheckResult)}
		select {
		case calls <- cl:
		case <-ctx.Done():
			return &CheckResult{}
		}
		select {
		case r := <-cl.result:
			return r
		case <-ctx.Done():
			return &CheckResult{}
		}
	}}
	done := make(chan error)
	go func() { done <- c.Serve(ctx) }()
	next := func(want string) call {
		t.Helper()
		select {
		case cl := <-calls:
			if want != "" && cl.job.Resource.ID != want {
				t.Fatalf("check of %s, want %s", cl.job.Resource.ID, want)
			}
			return cl
		case <-time.After(time.Minute):
			t.Fatalf("no check of %s", want)
		}
		return call{}
	}
	// Both are checked as checks start (in parallel: in any order).
	a, b := next(""), next("")
	a.result <- &CheckResult{OK: true}
	b.result <- &CheckResult{OK: true}
	waitState(t, m, "dut1", StateFree)
	waitState(t, m, "dut2", StateFree)

	var rec recorder
	if err := m.Acquire(ctx, &Request{Owner: "A", ID: "r", Wants: []forge.ResourceRequest{{Pool: "dut", Count: 1}}, Notify: rec.notify}); err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, "A", rec.last().Lease.ID); err != nil {
		t.Fatal(err)
	}
	a = next("dut1") // at once, without the clock moving
	a.result <- &CheckResult{OK: false, Output: "dead"}
	waitState(t, m, "dut1", StateDisabled)
	clock.Advance(29 * time.Second)
	select {
	case cl := <-calls:
		t.Fatalf("check of %s before the retry period", cl.job.Resource.ID)
	default:
	}
	clock.Advance(time.Second)
	a = next("dut1")
	a.result <- &CheckResult{OK: true}
	waitState(t, m, "dut1", StateFree)

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func waitState(t *testing.T, m Manager, id, want string) {
	t.Helper()
	testwait.For(t, id+" to be "+want, func() bool { return resourceState(t, m, "dut", id).State == want })
}

// TestRunCheck runs real commands: the environment, the output kept,
// an exit status, and a timeout that kills the whole process group.
func TestRunCheck(t *testing.T) {
	job := &CheckJob{Pool: "dut", Resource: forge.Resource{ID: "dut1", Attributes: map[string]string{"host": "10.0.0.5", "serial-no": "42"}},
		Check: forge.PoolCheck{Timeout: 20 * time.Second}}
	job.Check.Command = `echo "$FORGE_RESOURCE_POOL/$FORGE_RESOURCE_ID $FORGE_RESOURCE_HOST $FORGE_RESOURCE_SERIAL_NO"`
	if r := RunCheck(context.Background(), job); !r.OK || strings.TrimSpace(r.Output) != "dut/dut1 10.0.0.5 42" {
		t.Fatalf("echo: got %+v", r)
	}
	job.Check.Command = `head -c 10000 /dev/zero | tr '\0' x; echo; echo "link down" >&2; exit 3`
	r := RunCheck(context.Background(), job)
	if r.OK || r.Problem != "the check exited with status 3" || !strings.HasSuffix(r.Output, "link down\n") || len(r.Output) > maxCheckOutput+len("…") {
		t.Fatalf("failing check: OK %v problem %q, output of %d bytes ending %q", r.OK, r.Problem, len(r.Output), r.Output[max(0, len(r.Output)-20):])
	}
	if got := r.reason(); !strings.HasSuffix(got, "link down (the check exited with status 3)") {
		t.Fatalf("reason: got …%q", got[max(0, len(got)-60):])
	}
	job.Check.Timeout = 300 * time.Millisecond
	job.Check.Command = `sleep 60 & echo started; wait`
	start := time.Now()
	r = RunCheck(context.Background(), job)
	if r.OK || !strings.Contains(r.Problem, "timed out after 300ms") || time.Since(start) > 30*time.Second {
		t.Fatalf("hanging check: got %+v after %s, want a timeout soon after 300ms", r, time.Since(start))
	}
}
