package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// leaseResourceJSON is a resource as GET /api/v1/pools/{pool} shows it.
type leaseResourceJSON struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	DisabledBy string `json:"disabled_by"`
	Fault      *struct {
		Source, Reason string
	} `json:"fault"`
	Check *struct {
		OK     bool   `json:"ok"`
		Output string `json:"output"`
	} `json:"check"`
}

func leaseResource(t *testing.T, url, pool, id string) *leaseResourceJSON {
	t.Helper()
	resp, err := http.Get(url + "/api/v1/pools/" + pool)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p struct {
		Resources []*leaseResourceJSON `json:"resources"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
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

// TestLeaseHealthCheck runs a real forge server whose pool has a real
// check command (it fails while a file the test creates exists): a check
// that fails after a release takes the device out, with the check's
// output as the reason, so that another forge lease does not get it; it
// comes back when the check passes. A holder's broken report (forge
// lease's FORGE_LEASE_BROKEN file) disables a device of a pool without a
// check, across a restart, until an operator enables it.
func TestLeaseHealthCheck(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	token := e2eAdminToken(t, data)
	check := fmt.Sprintf(`if [ -e %s/$FORGE_RESOURCE_ID.broken ]; then echo "$FORGE_RESOURCE_ID does not answer at $FORGE_RESOURCE_HOST"; exit 1; fi`, dir)
	config := fmt.Sprintf(`pools:
  dut:
    check: {command: '%s', interval: 1h, retry: 1s, timeout: 20s}
    resources: [{id: d1, host: 10.0.0.5}]
  bench:
    resources: [{id: b1}]
`, check)
	p := e2eStartServerWith(t, data, config)
	defer func() { p.stop(t) }()
	env := []string{"FORGE_SERVER=" + p.url}
	leaseWaitFor(t, 20*time.Second, "d1's first check to pass", func() bool {
		r := leaseResource(t, p.url, "dut", "d1")
		return r.State == "free" && r.Check != nil && r.Check.OK
	})

	// The device breaks while held: its check fails after the release.
	broken := filepath.Join(dir, "d1.broken")
	holder := startLeaseForge(t, env, "lease", "dut", "--", "touch", broken)
	if code := holder.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("forge lease exited %d: %s", code, holder.stderr.String())
	}
	leaseWaitFor(t, 20*time.Second, "d1 to be disabled by its check", func() bool {
		return leaseResource(t, p.url, "dut", "d1").State == "disabled"
	})
	r := leaseResource(t, p.url, "dut", "d1")
	if r.DisabledBy != "check" || r.Fault == nil || r.Fault.Reason != "d1 does not answer at 10.0.0.5 (the check exited with status 1)" {
		t.Fatalf("d1 after a failed check: got %+v (fault %+v), want disabled by its check with its output", r, r.Fault)
	}
	other := startLeaseForge(t, env, "lease", "dut", "--wait", "1s", "--", "true")
	if code := other.wait(t, 20*time.Second); code != exitLeaseWait {
		t.Fatalf("forge lease of a broken device exited %d, want %d (not granted): %s", code, exitLeaseWait, other.stderr.String())
	}

	// Repaired: the retry passes and the device is granted again.
	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	leaseWaitFor(t, 20*time.Second, "d1 back in service", func() bool {
		return leaseResource(t, p.url, "dut", "d1").State == "free"
	})
	again := startLeaseForge(t, env, "lease", "dut", "--wait", "20s", "--", "sh", "-c", `echo "$FORGE_LEASE_DUT"`)
	if code := again.wait(t, 30*time.Second); code != 0 || again.stdout.String() != "d1\n" {
		t.Fatalf("forge lease after the repair exited %d, printed %q: %s", code, again.stdout.String(), again.stderr.String())
	}

	// A holder reports the bench broken: out until an operator enables it,
	// across a restart.
	reporter := startLeaseForge(t, env, "lease", "bench", "--", "sh", "-c", `echo "fan stuck" >"$FORGE_LEASE_BROKEN"`)
	if code := reporter.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("forge lease exited %d: %s", code, reporter.stderr.String())
	}
	if !strings.Contains(reporter.stderr.String(), "as broken: fan stuck") {
		t.Errorf("forge lease stderr: %q, want it to say it reported the bench broken", reporter.stderr.String())
	}
	r = leaseResource(t, p.url, "bench", "b1")
	if r.State != "disabled" || r.DisabledBy != "holder" || r.Fault == nil || r.Fault.Reason != "fan stuck" {
		t.Fatalf("b1 after a broken release: got %+v (fault %+v), want disabled by its holder", r, r.Fault)
	}
	p.stop(t)
	p = e2eStartServerWith(t, data, config)
	if r := leaseResource(t, p.url, "bench", "b1"); r.DisabledBy != "holder" || r.Fault == nil || r.Fault.Reason != "fan stuck" {
		t.Fatalf("b1 after a restart: got %+v, want still disabled by its holder", r)
	}
	if st := leaseREST(t, "POST", p.url+"/api/v1/pools/bench/resources/b1/enable", token, ""); st != 200 {
		t.Fatalf("enable b1: HTTP %d", st)
	}
	if r := leaseResource(t, p.url, "bench", "b1"); r.State != "free" || r.Fault != nil {
		t.Fatalf("b1 enabled: got %+v, want free", r)
	}
}
