package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/testwait"
)

// leasePytestExample is the folder of the pytest plugin example.
const leasePytestExample = "../../examples/pytest"

// leasePython finds a python3 with pytest and websockets (Debian's
// python3-pytest and python3-websockets); it skips the test without one,
// and fails it in CI.
func leasePython(t *testing.T) string {
	t.Helper()
	for _, py := range []string{"python3", "/usr/bin/python3"} {
		if exec.Command(py, "-c", "import pytest, websockets").Run() == nil {
			return py
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no python3 with pytest and websockets: install python3-pytest and python3-websockets")
	}
	t.Skip("no python3 with pytest and websockets (apt-get install python3-pytest python3-websockets)")
	return ""
}

// startLeasePytest runs python -m pytest with args; the example folder is on
// PYTHONPATH so -p forge_lease works from anywhere.
func startLeasePytest(t *testing.T, py string, env []string, args ...string) *leaseProc {
	t.Helper()
	abs, err := filepath.Abs(leasePytestExample)
	if err != nil {
		t.Fatal(err)
	}
	p := &leaseProc{done: make(chan struct{})}
	p.cmd = exec.Command(py, append([]string{"-m", "pytest", "-p", "no:cacheprovider"}, args...)...)
	p.cmd.Env = append(os.Environ(), append([]string{"PYTHONDONTWRITEBYTECODE=1", "PYTHONPATH=" + abs}, env...)...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		p.code = leaseExitCode(p.cmd.ProcessState, nil)
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// TestPytestExampleLeasesForTheSession runs examples/pytest against a real
// lease server: the session waits its turn, gets the device, and gives it
// back at the end.
func TestPytestExampleLeasesForTheSession(t *testing.T) {
	py := leasePython(t)
	srv := newLeaseServer(t, leasePool("dut", "dut1"))

	// Someone else holds the only device when the session starts.
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

	record := filepath.Join(t.TempDir(), "granted")
	p := startLeasePytest(t, py, []string{"FORGE_EXAMPLE_RECORD=" + record}, leasePytestExample, "--forge-lease", "dut", "--forge-server", srv.URL)
	leaseWaitFor(t, 20*time.Second, "the pytest session to queue for dut", func() bool { return srv.queueLen(t, "dut") == 1 })
	if _, err := os.Stat(record); err == nil {
		t.Fatal("tests ran before the session had the device")
	}
	if err := other.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("pytest exited %d\nstdout: %s\nstderr: %s", code, p.stdout.String(), p.stderr.String())
	}
	out := p.stdout.String()
	for _, want := range []string{"forge lease: waiting for dut: position 1", "forge lease: granted dut=dut1", "3 passed"} {
		if !strings.Contains(out, want) {
			t.Errorf("pytest output lacks %q:\n%s", want, out)
		}
	}
	if got, _ := os.ReadFile(record); string(got) != "dut1" {
		t.Errorf("the tests saw %q, want dut1", got)
	}
	if got := srv.leases(t, "dut"); len(got) != 0 {
		t.Errorf("leases left after the session: %v", got)
	}
}

// TestPytestExampleUnderForgeLease: the same tests take the grant of an
// enclosing forge lease from FORGE_LEASE_JSON.
func TestPytestExampleUnderForgeLease(t *testing.T) {
	py := leasePython(t)
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	abs, _ := filepath.Abs(leasePytestExample)
	p := startLeaseForge(t, []string{"FORGE_SERVER=" + srv.URL, "PYTHONDONTWRITEBYTECODE=1"},
		"lease", "dut", "--", py, "-m", "pytest", "-p", "no:cacheprovider", abs)
	if code := p.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, p.stdout.String(), p.stderr.String())
	}
	if out := p.stdout.String(); !strings.Contains(out, "3 passed") {
		t.Errorf("pytest output lacks 3 passed:\n%s", out)
	}
}

// TestPytestExampleAbortsWhenLost: a lease lost in the middle of a test
// interrupts the session at once, with status 75 and a message.
func TestPytestExampleAbortsWhenLost(t *testing.T) {
	py := leasePython(t)
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "test_slow.py"), []byte(`
import time

def test_slow(forge_resources):
    print("started", flush=True)
    time.sleep(60)
`), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startLeasePytest(t, py, nil, "-p", "forge_lease", "-s", dir, "--forge-lease", "dut", "--forge-server", srv.URL)
	leaseWaitFor(t, 20*time.Second, "the test to start", func() bool { return strings.Contains(p.stdout.String(), "started") })
	lost := time.Now()
	if err := srv.m.Revoke(context.Background(), srv.leases(t, "dut")["dut1"], "maintenance"); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 10*time.Second); code != 75 {
		t.Errorf("pytest exited %d, want 75\nstdout: %s\nstderr: %s", code, p.stdout.String(), p.stderr.String())
	}
	// At once, not after the test's 60s sleep: under make test-loaded
	// python and forge took 9.7s to get the CPU they needed for it.
	if d := time.Since(lost); d > testwait.Scale(20*time.Second) {
		t.Errorf("session ended %v after the loss; want at once", d)
	}
	if got := p.stderr.String(); !strings.Contains(got, "lost the lease on dut (revoked by the server: maintenance)") {
		t.Errorf("stderr lacks the loss message:\n%s", got)
	}
}

func TestPytestExampleErrors(t *testing.T) {
	py := leasePython(t)
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"unknown pool", []string{"--forge-lease", "nope", "--forge-server", srv.URL}, 2, `unknown pool "nope"`},
		{"bad count", []string{"--forge-lease", "dut:x", "--forge-server", srv.URL}, 4, `bad count in 'dut:x'`},
		{"unreachable", []string{"--forge-lease", "dut", "--forge-server", "http://127.0.0.1:1"}, 69, "cannot reach the lease server"},
		{"no lease at all", nil, 0, "3 skipped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startLeasePytest(t, py, []string{"FORGE_LEASE_JSON=", "FORGE_LEASE_POOLS="}, append([]string{leasePytestExample}, tt.args...)...)
			code := p.wait(t, 60*time.Second)
			out := p.stdout.String() + p.stderr.String()
			if code != tt.code || !strings.Contains(out, tt.msg) {
				t.Errorf("exit %d, want %d with %q; output:\n%s", code, tt.code, tt.msg, out)
			}
		})
	}
}

// TestPytestExampleReportsBroken: a test that calls forge_report_broken
// gets its device released as broken, both when the plugin holds the lease
// and under an enclosing forge lease (through FORGE_LEASE_BROKEN).
func TestPytestExampleReportsBroken(t *testing.T) {
	py := leasePython(t)
	srv := newLeaseServer(t, leasePool("dut", "dut1", "dut2"))
	dir := t.TempDir()
	test := "def test_flash(forge_resources, forge_report_broken):\n    forge_report_broken(forge_resources['dut'][0]['id'] + ' does not boot')\n"
	if err := os.WriteFile(filepath.Join(dir, "test_flash.py"), []byte(test), 0o644); err != nil {
		t.Fatal(err)
	}
	fault := func(id string) string {
		t.Helper()
		p, err := srv.m.Pool(context.Background(), "dut")
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range p.Resources {
			if r.ID == id && r.Fault != nil {
				return r.DisabledBy + ": " + r.Fault.Reason
			}
		}
		return ""
	}

	p := startLeasePytest(t, py, nil, dir, "-p", "forge_lease", "--forge-lease", "dut", "--forge-server", srv.URL)
	if code := p.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("pytest exited %d\nstdout: %s\nstderr: %s", code, p.stdout.String(), p.stderr.String())
	}
	if got := fault("dut1"); got != "holder: dut1 does not boot" {
		t.Fatalf("dut1 after the session: fault %q, want reported broken by its holder", got)
	}

	abs, _ := filepath.Abs(leasePytestExample)
	f := startLeaseForge(t, []string{"FORGE_SERVER=" + srv.URL, "PYTHONDONTWRITEBYTECODE=1", "PYTHONPATH=" + abs},
		"lease", "dut", "--", py, "-m", "pytest", "-p", "no:cacheprovider", "-p", "forge_lease", dir)
	if code := f.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, f.stdout.String(), f.stderr.String())
	}
	if got := fault("dut2"); got != "holder: dut2 does not boot" {
		t.Fatalf("dut2 after the session under forge lease: fault %q, want reported broken by its holder", got)
	}
}
