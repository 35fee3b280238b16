package leasehttp

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge"
	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/testwait"
)

func metricNumber(t *testing.T, e *testEnv, name string, labels map[string]string) float64 {
	t.Helper()
	m := metricValue(t, e, name, labels)
	return m.GetGauge().GetValue() + m.GetCounter().GetValue()
}

func (e *testEnv) resource(pool, id string) *lease.ResourceState {
	e.t.Helper()
	var p lease.PoolState
	if code := e.rest("GET", "/api/v1/pools/"+pool, "", &p); code != http.StatusOK {
		e.t.Fatalf("GET pool %s: %d", pool, code)
	}
	for _, r := range p.Resources {
		if r.ID == id {
			return r
		}
	}
	e.t.Fatalf("pool %s has no resource %s", pool, id)
	return nil
}

// TestBrokenRelease: a release with "broken" takes the resource out of
// service (both protocol versions), which the REST API and the metrics
// show, until an operator enables it; the next waiter gets it then.
func TestBrokenRelease(t *testing.T) {
	for _, version := range []string{"", "?version=2"} {
		t.Run("version"+strings.TrimPrefix(version, "?version="), func(t *testing.T) {
			e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
			a := dialURL(t, e.wsURL+version)
			b := dialURL(t, e.wsURL+version)
			a.acquire("a", req("one", 1))
			g := a.expect(wire.TypeGranted)
			b.acquire("b", req("one", 1))
			b.expect(wire.TypeQueued)

			a.send(map[string]any{"type": "release", "lease": g.Lease, "broken": strings.Repeat("x", wire.MaxBrokenLength+1)})
			if m := a.expect(wire.TypeError); m.Code != forge.EINVALID || m.Lease != g.Lease {
				t.Fatalf("oversized broken: got %+v, want invalid naming the lease", m)
			}
			a.send(map[string]any{"type": "release", "lease": g.Lease, "broken": "boot loop after flashing"})
			if m := a.expect(wire.TypeReleased); m.Lease != g.Lease {
				t.Fatalf("released %q, want %q", m.Lease, g.Lease)
			}
			r := e.resource("one", "only")
			if r.State != lease.StateDisabled || r.DisabledBy != forge.FaultHolder || r.Fault == nil ||
				r.Fault.Reason != "boot loop after flashing" || r.Fault.Since.IsZero() {
				t.Fatalf("after a broken release: got %+v (fault %+v), want disabled by the holder with its reason", r, r.Fault)
			}
			one := map[string]string{"pool": "one"}
			if got := metricNumber(t, e, "forge_lease_pool_disabled_by", map[string]string{"pool": "one", "by": "holder"}); got != 1 {
				t.Errorf("forge_lease_pool_disabled_by{by=holder}: got %v, want 1", got)
			}
			if got := metricNumber(t, e, "forge_lease_pool_disabled", one); got != 1 {
				t.Errorf("forge_lease_pool_disabled: got %v, want 1", got)
			}
			if got := metricNumber(t, e, "forge_lease_releases_total", map[string]string{"pool": "one", "reason": lease.ReasonBroken}); got != 1 {
				t.Errorf("releases{reason=broken}: got %v, want 1", got)
			}
			b.quiet(50 * time.Millisecond)

			var enabled lease.ResourceState
			if code := e.rest("POST", "/api/v1/pools/one/resources/only/enable", "", &enabled); code != http.StatusOK {
				t.Fatalf("enable: %d", code)
			}
			if enabled.Fault != nil || enabled.DisabledBy != "" {
				t.Fatalf("enabled: got %+v, want no fault", enabled)
			}
			b.expect(wire.TypeGranted)
		})
	}
}

// TestCheckOverREST: a pool PUT with a check shows it; a Checker (with a
// scripted check) takes a resource out when its check fails, which the
// REST JSON and the metrics show, and puts it back when it passes.
func TestCheckOverREST(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	var p lease.PoolState
	body := `{"check": {"command": "probe", "interval": "1h", "retry": "1s"}, "resources": [{"id": "d1", "host": "10.1.1.1"}]}`
	if code := e.rest("PUT", "/api/v1/pools/lab", body, &p); code != http.StatusCreated {
		t.Fatalf("PUT: %d", code)
	}
	if p.Check == nil || p.Check.Command != "probe" || p.Check.Interval != "1h0m0s" || p.Check.Timeout != "30s" {
		t.Fatalf("pool's check: got %+v", p.Check)
	}
	var bad struct{ Code, Message string }
	if code := e.rest("PUT", "/api/v1/pools/lab", `{"check": {"command": "probe", "interval": "often"}}`, &bad); code != http.StatusBadRequest ||
		!strings.Contains(bad.Message, `check: interval "often"`) {
		t.Fatalf("bad check: %d %+v, want 400 naming the interval", code, bad)
	}

	verdicts := make(chan *lease.CheckResult)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	checker := &lease.Checker{Health: e.m, Run: func(ctx context.Context, job *lease.CheckJob) *lease.CheckResult {
		select {
		case v := <-verdicts:
			return v
		case <-ctx.Done():
			return &lease.CheckResult{}
		}
	}}
	go func() { done <- checker.Serve(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	verdicts <- &lease.CheckResult{OK: false, Output: "no route to host\n", Problem: "the check exited with status 1"}
	testwait.For(t, "d1 to be disabled by its check", func() bool { return e.resource("lab", "d1").State == lease.StateDisabled })
	var lab struct {
		Resources []map[string]any `json:"resources"`
	}
	e.rest("GET", "/api/v1/pools/lab", "", &lab)
	raw := lab.Resources[0]
	fault, _ := raw["fault"].(map[string]any)
	check, _ := raw["check"].(map[string]any)
	if raw["disabled_by"] != "check" || fault["source"] != "check" || fault["reason"] != "no route to host (the check exited with status 1)" ||
		fault["since"] == nil || check["ok"] != false || check["output"] != "no route to host" || check["failures"] != 1.0 || check["next"] == nil {
		js, _ := json.Marshal(raw)
		t.Fatalf("REST JSON of a resource whose check failed: %s", js)
	}
	lab1 := map[string]string{"pool": "lab"}
	if got := metricNumber(t, e, "forge_lease_pool_disabled_by", map[string]string{"pool": "lab", "by": "check"}); got != 1 {
		t.Errorf("forge_lease_pool_disabled_by{by=check}: got %v, want 1", got)
	}
	if got := metricNumber(t, e, "forge_lease_checks_total", map[string]string{"pool": "lab", "result": "failed"}); got != 1 {
		t.Errorf("forge_lease_checks_total{result=failed}: got %v, want 1", got)
	}
	verdicts <- &lease.CheckResult{OK: true} // the retry, a second later
	testwait.For(t, "d1 to be back in service", func() bool { return e.resource("lab", "d1").State == lease.StateFree })
	if got := metricNumber(t, e, "forge_lease_pool_disabled", lab1); got != 0 {
		t.Errorf("forge_lease_pool_disabled after the check passed: got %v, want 0", got)
	}
	if got := metricNumber(t, e, "forge_lease_checks_total", map[string]string{"pool": "lab", "result": "passed"}); got != 1 {
		t.Errorf("forge_lease_checks_total{result=passed}: got %v, want 1", got)
	}
}

// TestDisableWithReason: an operator's disable may say why; the REST JSON
// shows who, why and since when, and enabling clears it.
func TestDisableWithReason(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	var r lease.ResourceState
	if code := e.rest("POST", "/api/v1/pools/dut/resources/dut1/disable", `{"reason": " new firmware\n"}`, &r); code != http.StatusOK {
		t.Fatalf("disable: %d", code)
	}
	if r.State != lease.StateDisabled || r.DisabledBy != lease.DisabledOperator || r.DisabledReason != "new firmware" || r.DisabledSince == nil || r.Fault != nil {
		t.Fatalf("disabled with a reason: got %+v", r)
	}
	var bad struct{ Code, Message string }
	if code := e.rest("POST", "/api/v1/pools/dut/resources/dut1/disable", `{"reason": 3}`, &bad); code != http.StatusBadRequest || !strings.Contains(bad.Message, `{"reason":"..."}`) {
		t.Fatalf("a bad body: %d %+v, want 400 saying the body's shape", code, bad)
	}
	r = lease.ResourceState{}
	if code := e.rest("POST", "/api/v1/pools/dut/resources/dut1/enable", "", &r); code != http.StatusOK {
		t.Fatalf("enable: %d", code)
	}
	if r.State != lease.StateFree || r.DisabledBy != "" || r.DisabledReason != "" || r.DisabledSince != nil {
		t.Fatalf("enabled: got %+v", r)
	}
}
