package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge/client/lease"
)

// leaseSpec is a pipeline with one job that needs a device and one that
// does not.
const leaseSpec = `jobs:
  hw:
    resources: [{pool: dut}]
    steps:
      - echo "hw has $FORGE_LEASE_DUT"
      - test "$FORGE_LEASE_DUT" = dut1
      - printf %s "$FORGE_LEASE_JSON" | grep -q '"lease"'
  plain:
    steps:
      - test -z "$FORGE_LEASE_DUT"
`

func writeLeaseExecSpec(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "forge.yml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestExecLeaseServer: forge exec --lease-server acquires a job's
// resources: before it starts, after waiting its turn, and passes them in
// FORGE_LEASE_*.
func TestExecLeaseServer(t *testing.T) {
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := lease.Dial(ctx, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	other, err := c.Acquire(ctx, "other", []lease.Request{{Pool: "dut"}}, nil)
	if err != nil {
		t.Fatal(err)
	}

	spec := writeLeaseExecSpec(t, leaseSpec)
	p := startLeaseForge(t, []string{"NO_COLOR=1"}, "exec", "-f", spec, "--lease-server", srv.URL)
	leaseWaitFor(t, 10*time.Second, "the hw job to queue for dut", func() bool { return srv.queueLen(t, "dut") == 1 })
	if err := other.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("forge exec exited %d\nstdout: %s\nstderr: %s", code, p.stdout.String(), p.stderr.String())
	}
	out := p.stdout.String() + p.stderr.String()
	for _, want := range []string{"hw has dut1", "position 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if got := srv.leases(t, "dut"); len(got) != 0 {
		t.Errorf("leases left after the run: %v", got)
	}
}

// TestExecLeaseLost: a job whose lease is lost while it runs is stopped and
// fails, and the run says why.
func TestExecLeaseLost(t *testing.T) {
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	spec := writeLeaseExecSpec(t, `jobs:
  hw:
    resources: [dut]
    steps:
      - echo started; sleep 30
`)
	p := startLeaseForge(t, []string{"NO_COLOR=1"}, "exec", "-f", spec, "--lease-server", srv.URL)
	leaseWaitFor(t, 10*time.Second, "the step to start", func() bool { return strings.Contains(p.stdout.String()+p.stderr.String(), "started") })
	lost := time.Now()
	if err := srv.m.Revoke(context.Background(), srv.leases(t, "dut")["dut1"], "maintenance"); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 20*time.Second); code != exitFailed {
		t.Errorf("forge exec exited %d, want %d", code, exitFailed)
	}
	if d := time.Since(lost); d > 15*time.Second {
		t.Errorf("the job ran on %v after losing its lease", d)
	}
	if out := p.stdout.String() + p.stderr.String(); !strings.Contains(out, "lease lost") {
		t.Errorf("output does not say the lease was lost:\n%s", out)
	}
}

func TestExecLeaseServerFlagErrors(t *testing.T) {
	spec := writeLeaseExecSpec(t, leaseSpec)
	tests := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--lease-server", "ftp://x"}, exitUsage, `scheme "ftp"`},
		{[]string{"--lease-server", "http://127.0.0.1:1"}, exitFailed, "cannot reach the lease server at http://127.0.0.1:1"},
	}
	for _, tt := range tests {
		p := startLeaseForge(t, []string{"NO_COLOR=1"}, append([]string{"exec", "-f", spec}, tt.args...)...)
		code := p.wait(t, 20*time.Second)
		out := p.stdout.String() + p.stderr.String()
		if code != tt.code || !strings.Contains(out, tt.msg) {
			t.Errorf("forge exec %v: exit %d, want %d with %q; output:\n%s", tt.args, code, tt.code, tt.msg, out)
		}
	}
}
