package lease

import (
	"context"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/forgeci/forge"
)

// Health check bounds and defaults (a pool's check: key).
const (
	DefaultCheckInterval = 10 * time.Minute
	DefaultCheckTimeout  = 30 * time.Second
	DefaultCheckRetry    = 30 * time.Second
	// MinCheckPeriod is the shortest interval, timeout or retry accepted.
	MinCheckPeriod = time.Second
	// MaxFaultReason bounds the reason a holder or a check output gives
	// (the end of a longer output is kept).
	MaxFaultReason  = 4096
	maxCheckCommand = 16 << 10
	// MaxCheckedResources bounds the resources of a pool with a check:
	// checks are for devices, and finding the due ones walks the pool.
	MaxCheckedResources = 10000

	// DisabledOperator is ResourceState.DisabledBy for a resource an
	// operator (or the configuration file) disabled.
	DisabledOperator = "operator"
	// Check results, in PoolStats.Checks.
	CheckPassed = "passed"
	CheckFailed = "failed"
)

// CheckConfig is a pool's check: key as written in the configuration file
// and in the REST API, durations as strings ("10m"):
//
//	check: {command: "ping -c1 -W2 $FORGE_RESOURCE_HOST", interval: 10m, timeout: 30s, retry: 30s}
type CheckConfig struct {
	Command  string `yaml:"command" json:"command"`
	Interval string `yaml:"interval" json:"interval,omitempty"`
	Timeout  string `yaml:"timeout" json:"timeout,omitempty"`
	Retry    string `yaml:"retry" json:"retry,omitempty"`
}

// poolCheck validates c and fills in its defaults. The error names the
// pool and the problem.
func (c *CheckConfig) poolCheck(pool string) (*forge.PoolCheck, error) {
	if c == nil {
		return nil, nil
	}
	pc := &forge.PoolCheck{Command: c.Command, Interval: DefaultCheckInterval, Timeout: DefaultCheckTimeout, Retry: DefaultCheckRetry}
	for _, f := range []struct {
		name string
		s    string
		d    *time.Duration
	}{{"interval", c.Interval, &pc.Interval}, {"timeout", c.Timeout, &pc.Timeout}, {"retry", c.Retry, &pc.Retry}} {
		if f.s == "" {
			continue
		}
		d, err := time.ParseDuration(strings.TrimSpace(f.s))
		if err != nil {
			return nil, forge.Errorf(forge.EINVALID, "pool %q: check: %s %q: want a duration like 30s or 10m", pool, f.name, f.s)
		}
		*f.d = d
	}
	if err := checkPoolCheck(pool, pc); err != nil {
		return nil, err
	}
	return pc, nil
}

// checkPoolCheck validates a pool's check (nil is no check).
func checkPoolCheck(pool string, pc *forge.PoolCheck) error {
	if pc == nil {
		return nil
	}
	switch {
	case strings.TrimSpace(pc.Command) == "":
		return forge.Errorf(forge.EINVALID, "pool %q: check: command is empty (give a shell command, e.g. {command: \"ping -c1 $FORGE_RESOURCE_HOST\"})", pool)
	case len(pc.Command) > maxCheckCommand:
		return forge.Errorf(forge.EINVALID, "pool %q: check: command is longer than %d bytes", pool, maxCheckCommand)
	}
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"interval", pc.Interval}, {"timeout", pc.Timeout}, {"retry", pc.Retry}} {
		if f.d < MinCheckPeriod {
			return forge.Errorf(forge.EINVALID, "pool %q: check: %s %s is below the minimum of %s", pool, f.name, f.d, MinCheckPeriod)
		}
	}
	if pc.Timeout > pc.Interval {
		return forge.Errorf(forge.EINVALID, "pool %q: check: timeout %s is longer than its interval %s", pool, pc.Timeout, pc.Interval)
	}
	return nil
}

// checkConfigOf is the declared form of pc, for PoolState.
func checkConfigOf(pc *forge.PoolCheck) *CheckConfig {
	if pc == nil {
		return nil
	}
	return &CheckConfig{Command: pc.Command, Interval: pc.Interval.String(), Timeout: pc.Timeout.String(), Retry: pc.Retry.String()}
}

// Health takes broken resources out of service and brings them back: a
// holder reports a resource broken when it releases it (ReleaseBroken);
// a Checker runs the pools' check commands, which take a resource out
// when they fail and bring it back when they pass.
//
// A resource of a pool with a check is checked, while checks are
// started, after each release (it stays out of service — neither free
// nor leased — until the check passed), when it enters service (start,
// added to the pool, enabled by an operator), every Interval while idle,
// and, while its check fails, after Retry doubling up to Interval. A
// resource an operator disabled is never checked, and a passing check
// never enables it.
//
// Contract: checks run on one process at a time (StartChecks is called by
// the one Checker that runs them: with several replicas, the leader's);
// TakeChecks and FinishCheck take the Checker's clock, so that tests can
// drive it.
type Health interface {
	// ReleaseBroken is Release (EventReleased, ENOTFOUND when owner holds
	// no such lease), and takes every resource of the lease out of
	// service with reason (source forge.FaultHolder): with a check, the
	// check decides when it comes back; without, an operator enables it.
	ReleaseBroken(ctx context.Context, owner, leaseID, reason string) error
	// StartChecks turns checks on. The channel gets a value (coalesced)
	// whenever a check became due that TakeChecks did not return yet.
	StartChecks(ctx context.Context) (<-chan struct{}, error)
	// StopChecks turns checks off: resources waiting for a check, or
	// whose check runs, are back in service as they were; a FinishCheck
	// of a check taken before is ignored.
	StopChecks(ctx context.Context)
	// TakeChecks returns up to limit checks due at now, their resources
	// out of service until FinishCheck, and when the next check is due
	// (zero when none is).
	TakeChecks(ctx context.Context, now time.Time, limit int) (jobs []*CheckJob, next time.Time, err error)
	// FinishCheck records the result of job: a pass puts its resource
	// back in service (and clears its fault), a failure takes it out
	// (source forge.FaultCheck, the output as reason). changed reports
	// whether the resource's fault changed, which a store keeps.
	FinishCheck(ctx context.Context, job *CheckJob, result *CheckResult) (changed bool, err error)
}

// CheckJob is one check to run.
type CheckJob struct {
	Pool     string
	Resource forge.Resource
	Check    forge.PoolCheck
	gen      uint64
}

// Env returns the variables a check sees besides the server's own:
// FORGE_RESOURCE_<ATTRIBUTE> for every attribute (the name upper-cased,
// every character other than a letter or digit as "_"), then
// FORGE_RESOURCE_ID and FORGE_RESOURCE_POOL, which win over attributes
// of those names.
func (j *CheckJob) Env() []string {
	env := make([]string, 0, len(j.Resource.Attributes)+2)
	for _, k := range sortedKeys(j.Resource.Attributes) {
		name := forge.EnvName("FORGE_RESOURCE_", k)
		if name == "FORGE_RESOURCE_ID" || name == "FORGE_RESOURCE_POOL" {
			continue
		}
		env = append(env, name+"="+j.Resource.Attributes[k])
	}
	return append(env, "FORGE_RESOURCE_ID="+j.Resource.ID, "FORGE_RESOURCE_POOL="+j.Pool)
}

// CheckResult is the outcome of one check.
type CheckResult struct {
	OK bool
	// Output is the end of what the command wrote (stdout and stderr).
	Output string
	// Problem says why it failed when Output cannot (a timeout, an exit
	// status, a command that could not start).
	Problem  string
	Duration time.Duration
	// Finished is when it ended, on the Checker's clock: the next check
	// is due an interval (or a retry) later. Zero is now.
	Finished time.Time
}

// reason is the fault reason of a failed check: its output, trimmed,
// with the problem when there is no output.
func (r *CheckResult) reason() string {
	out := strings.TrimSpace(r.Output)
	switch {
	case out == "" && r.Problem == "":
		return "the check failed without output"
	case out == "":
		return r.Problem
	case r.Problem == "":
		return out
	}
	return out + " (" + r.Problem + ")"
}

// CheckStatus is a resource's last health check, for operators.
type CheckStatus struct {
	Time       time.Time  `json:"time"`
	OK         bool       `json:"ok"`
	Output     string     `json:"output,omitempty"`
	DurationMS float64    `json:"duration_ms"`
	Failures   int        `json:"failures,omitempty"` // in a row
	Running    bool       `json:"running,omitempty"`
	Next       *time.Time `json:"next,omitempty"`
}

// resCheck is a resource's health check state (only resources of pools
// with a check, or with a check in their past, have one).
type resCheck struct {
	pending  bool // released into a check: out of service until it runs
	running  bool // taken by TakeChecks: out of service until FinishCheck
	gen      uint64
	due      time.Time // the next check; zero: as soon as possible
	failures int       // in a row
	last     *CheckStatus
}

// out reports whether res is out of service (not leased and not
// grantable): disabled by an operator, faulted, or being checked.
func (res *memRes) out() bool {
	return res.r.Disabled || res.r.Fault != nil || res.chk != nil && (res.chk.pending || res.chk.running)
}

// available reports whether res may be granted now.
func (res *memRes) available() bool {
	return res.lease == nil && !res.removed && !res.out()
}

// change applies fn to res and keeps its pool's free count right.
func (m *Memory) change(res *memRes, fn func()) {
	before := res.available()
	fn()
	if after := res.available(); after != before {
		if after {
			res.pool.free++
		} else {
			res.pool.free--
		}
	}
}

// setFault gives res a new value with fault (nil clears it): grants
// share the old one.
func setFault(res *memRes, fault *forge.ResourceFault) {
	r := res.r
	r.Fault = fault
	res.r = r
}

// released is called for each resource of a lease that ended (not
// removed): in a pool with a check, while checks run, it waits for one.
func (m *Memory) released(res *memRes) {
	if !m.checksOn || res.pool.check == nil || res.r.Disabled {
		return
	}
	if res.chk == nil {
		res.chk = &resCheck{}
	}
	res.chk.due = time.Time{}
	if res.r.Fault == nil {
		res.chk.pending = true
	}
	m.wakeChecks()
}

func (m *Memory) wakeChecks() {
	select {
	case m.checkWake <- struct{}{}:
	default:
	}
}

// truncateReason keeps the end of s within MaxFaultReason bytes, on a
// character boundary.
func truncateReason(s string) string {
	s = strings.TrimSpace(s)
	if len(s) <= MaxFaultReason {
		return s
	}
	s = s[len(s)-MaxFaultReason:]
	for len(s) > 0 && !utf8.RuneStart(s[0]) {
		s = s[1:]
	}
	return "…" + s
}

// ReleaseBroken implements Health.
func (m *Memory) ReleaseBroken(ctx context.Context, owner, leaseID, reason string) error {
	reason = truncateReason(reason)
	if reason == "" {
		reason = "reported broken by its holder"
	}
	fault := &forge.ResourceFault{Source: forge.FaultHolder, Reason: reason, Since: time.Now().UTC()}
	return m.releaseOwned(owner, leaseID, ReasonBroken, func(l *memLease) {
		l.broken = reason
		for _, res := range l.res {
			if !res.removed {
				setFault(res, fault) // leased: the free count is not affected
				if res.chk != nil {
					res.chk.failures = 0
				}
			}
		}
	})
}

// StartChecks implements Health.
func (m *Memory) StartChecks(ctx context.Context) (<-chan struct{}, error) {
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	m.checksOn = true
	for _, p := range m.pools {
		m.checkPoolChanged(p)
	}
	m.wakeChecks()
	return m.checkWake, nil
}

// StopChecks implements Health.
func (m *Memory) StopChecks(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.checksOn = false
	for _, p := range m.pools {
		for _, res := range p.res {
			if res.chk != nil {
				m.change(res, func() {
					res.chk.pending, res.chk.running = false, false
					res.chk.gen = 0
				})
			}
		}
	}
	if !m.closed {
		m.schedule()
	}
}

// checkPoolChanged brings p's resources in line with its check (or the
// lack of one): with a check, every resource gets a check state, its
// first check due at once; without, nothing waits for a check.
func (m *Memory) checkPoolChanged(p *memPool) {
	if p.check != nil && m.checksOn {
		m.wakeChecks() // new resources, or a new check: due at once
	}
	for _, res := range p.res {
		switch {
		case p.check != nil && m.checksOn && res.chk == nil:
			res.chk = &resCheck{}
		case p.check == nil && res.chk != nil && (res.chk.pending || res.chk.running):
			m.change(res, func() { res.chk.pending, res.chk.running, res.chk.gen = false, false, 0 })
		}
	}
}

// TakeChecks implements Health.
func (m *Memory) TakeChecks(ctx context.Context, now time.Time, limit int) ([]*CheckJob, time.Time, error) {
	if err := m.lock(); err != nil {
		return nil, time.Time{}, err
	}
	defer m.mu.Unlock()
	var jobs []*CheckJob
	var next time.Time
	if !m.checksOn {
		return nil, next, nil
	}
	take := func(res *memRes) {
		m.change(res, func() {
			res.chk.pending, res.chk.running = false, true
			m.checkGen++
			res.chk.gen = m.checkGen
		})
		jobs = append(jobs, &CheckJob{Pool: res.pool.name, Resource: res.r, Check: *res.pool.check, gen: res.chk.gen})
	}
	// Released resources first (someone may be waiting for them), then
	// the rest in pool order.
	for _, name := range sortedKeys(m.pools) {
		p := m.pools[name]
		if p.check == nil {
			continue
		}
		for _, res := range p.res {
			switch {
			case res.chk == nil || !res.chk.pending || res.removed:
			case res.r.Disabled: // an operator's: never checked
				m.change(res, func() { res.chk.pending = false })
			case len(jobs) < limit:
				take(res)
			}
		}
	}
	for _, name := range sortedKeys(m.pools) {
		p := m.pools[name]
		if p.check == nil {
			continue
		}
		for _, res := range p.res {
			if res.removed || res.lease != nil || res.r.Disabled {
				continue
			}
			if res.chk == nil {
				res.chk = &resCheck{}
			}
			c := res.chk
			if c.running || c.pending {
				continue // pending ones past the limit: due now
			}
			if !now.Before(c.due) && len(jobs) < limit {
				take(res)
				continue
			}
			if next.IsZero() || c.due.Before(next) {
				next = c.due
			}
		}
	}
	if next.IsZero() && m.pendingChecks() {
		next = now
	}
	return jobs, next, nil
}

func (m *Memory) pendingChecks() bool {
	for _, p := range m.pools {
		if p.check == nil {
			continue
		}
		for _, res := range p.res {
			if res.chk != nil && res.chk.pending && !res.removed {
				return true
			}
		}
	}
	return false
}

// backoff is how long after its failures-th failure in a row a check is
// tried again: Retry, doubling, at most Interval.
func backoff(pc *forge.PoolCheck, failures int) time.Duration {
	d := pc.Retry
	for i := 1; i < failures && d < pc.Interval; i++ {
		d *= 2
	}
	return min(d, pc.Interval)
}

// FinishCheck implements Health.
func (m *Memory) FinishCheck(ctx context.Context, job *CheckJob, result *CheckResult) (bool, error) {
	if err := m.lock(); err != nil {
		return false, err
	}
	defer m.mu.Unlock()
	p := m.pools[job.Pool]
	if p == nil || p.check == nil {
		return false, nil
	}
	res := p.byID[job.Resource.ID]
	if res == nil || res.chk == nil || !res.chk.running || res.chk.gen != job.gen {
		return false, nil // checks were stopped, or the resource was replaced
	}
	now := result.Finished
	if now.IsZero() {
		now = time.Now()
	}
	c := res.chk
	c.last = &CheckStatus{Time: now.UTC(), OK: result.OK, Output: truncateReason(result.Output),
		DurationMS: float64(result.Duration.Microseconds()) / 1000}
	changed := false
	if result.OK {
		p.checks[CheckPassed]++
		m.change(res, func() {
			c.running, c.failures = false, 0
			if res.r.Fault != nil {
				setFault(res, nil)
				changed = true
			}
		})
		c.due = now.Add(p.check.Interval)
		m.schedule()
	} else {
		p.checks[CheckFailed]++
		c.failures++
		reason := truncateReason(result.reason())
		since := now.UTC()
		if f := res.r.Fault; f != nil && f.Source == forge.FaultCheck {
			since = f.Since
		}
		if f := res.r.Fault; f == nil || f.Source != forge.FaultCheck || f.Reason != reason {
			changed = true
		}
		m.change(res, func() {
			c.running = false
			setFault(res, &forge.ResourceFault{Source: forge.FaultCheck, Reason: reason, Since: since})
		})
		c.due = now.Add(backoff(p.check, c.failures))
	}
	c.last.Failures = c.failures
	return changed, nil
}

// checkStatus is res's check state for operators.
func checkStatus(res *memRes) *CheckStatus {
	c := res.chk
	if c == nil || (c.last == nil && !c.running) {
		return nil
	}
	st := &CheckStatus{Running: c.running}
	if c.last != nil {
		*st = *c.last
		st.Running = c.running
	}
	if !c.running && !c.pending && res.lease == nil && !res.r.Disabled && !c.due.IsZero() {
		next := c.due
		st.Next = &next
	}
	return st
}

// disabledBy is who took r out of service: DisabledOperator, the source
// of its fault, or "" when it is in service.
func disabledBy(r *forge.Resource) string {
	switch {
	case r.Disabled:
		return DisabledOperator
	case r.Fault != nil:
		return r.Fault.Source
	}
	return ""
}

// disabledWhy is why and since when r is out of service: the operator's
// reason, else its fault's.
func disabledWhy(r *forge.Resource) (string, *time.Time) {
	var reason string
	var since time.Time
	switch {
	case r.Disabled:
		reason, since = r.DisabledReason, r.DisabledSince
	case r.Fault != nil:
		reason, since = r.Fault.Reason, r.Fault.Since
	}
	if since.IsZero() {
		return reason, nil
	}
	return reason, &since
}

func sameCheck(a, b *forge.PoolCheck) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

// recheckPool makes every resource of p due for a check at once (its
// check changed).
func (m *Memory) recheckPool(p *memPool) {
	for _, res := range p.res {
		if res.chk != nil {
			res.chk.due, res.chk.failures = time.Time{}, 0
		}
	}
}

func copyCheck(pc *forge.PoolCheck) *forge.PoolCheck {
	if pc == nil {
		return nil
	}
	c := *pc
	return &c
}
