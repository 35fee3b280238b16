package main

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forgeci/forge/internal/pgtest"
)

// leaseCrashSetup writes a configuration with one device and returns the
// directory, the config file, a free address and the data directory.
func leaseCrashSetup(t testing.TB) (dir, cfg, addr, data string) {
	t.Helper()
	dir = t.TempDir()
	cfg = filepath.Join(dir, "forge.yml")
	if err := os.WriteFile(cfg, []byte("pools:\n  dut:\n    resources: [{id: dut1}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = ln.Addr().String()
	ln.Close()
	return dir, cfg, addr, filepath.Join(dir, "data")
}

// killServer ends a forge server with SIGKILL: it writes nothing more.
func killServer(t *testing.T, srv *leaseProc) {
	t.Helper()
	srv.cmd.Process.Signal(syscall.SIGKILL)
	srv.wait(t, 20*time.Second)
}

// leasePoolState returns the REST view of pool name.
func leasePoolState(t *testing.T, addr, name string) (free int, queue int) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/api/v1/pools/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p struct {
		Free  int               `json:"free"`
		Queue []json.RawMessage `json:"queue"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
		t.Fatal(err)
	}
	return p.Free, len(p.Queue)
}

// TestLeaseSurvivesKill9: a forge lease holding a device while its server
// is killed with SIGKILL resumes on the restarted server (which had no
// chance to save anything at the end: the journal kept the grant when it
// happened), keeps the same device — nobody else gets it — and exits 0.
// On SQLite, and on PostgreSQL when FORGE_TEST_POSTGRES_URL is set (CI).
func TestLeaseSurvivesKill9(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { leaseHolderSurvivesRestart(t, killServer) })
	t.Run("postgres", func(t *testing.T) {
		leaseHolderSurvivesRestart(t, killServer, "FORGE_DATABASE_URL="+pgtest.Database(t, "forge_lease"))
	})
}

// leaseHolderSurvivesRestart: a forge lease holding the only device while
// stop ends its server resumes on the next server, keeps the device
// (another forge lease cannot get it), and exits 0.
func leaseHolderSurvivesRestart(t *testing.T, stop func(*testing.T, *leaseProc), dbEnv ...string) {
	dir, cfg, addr, data := leaseCrashSetup(t)
	srv := startLeaseForgeServerAt(t, addr, data, cfg, dbEnv...)
	env := []string{"FORGE_SERVER=http://" + addr, "DIR=" + dir}
	holder := startLeaseForge(t, env, "lease", "dut", "--resume-grace", "30s", "--", "sh", "-c",
		`touch "$DIR/running"; while [ ! -f "$DIR/finish" ]; do sleep 0.05; done; echo "held $FORGE_LEASE_DUT"`)
	leaseWaitFor(t, 10*time.Second, "CMD to run", func() bool { _, err := os.Stat(filepath.Join(dir, "running")); return err == nil })

	stop(t, srv)
	srv = startLeaseForgeServerAt(t, addr, data, cfg, dbEnv...)
	leaseWaitFor(t, 20*time.Second, "forge lease to resume", func() bool {
		return strings.Contains(holder.stderr.String(), "resumed: 1 leases kept")
	})
	other := startLeaseForge(t, env, "lease", "dut", "--wait", "1s", "--", "true")
	if code := other.wait(t, 20*time.Second); code != exitLeaseWait {
		t.Fatalf("another forge lease exited %d, want %d (the device is held): %s", code, exitLeaseWait, other.stderr.String())
	}
	os.WriteFile(filepath.Join(dir, "finish"), nil, 0o644)
	if code := holder.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("forge lease exited %d, want 0: %s", code, holder.stderr.String())
	}
	if got := holder.stdout.String(); got != "held dut1\n" {
		t.Errorf("CMD printed %q, want %q", got, "held dut1\n")
	}
	if free, _ := leasePoolState(t, addr, "dut"); free != 1 {
		t.Errorf("dut has %d free after the holder ended, want 1", free)
	}
	srv.cmd.Process.Signal(syscall.SIGTERM)
	srv.wait(t, 20*time.Second)
}

// TestLeaseKill9FreesAbsentHolderKeepsQueue: after a SIGKILL of the
// server, a holder that never comes back (it died too) keeps its device
// only for its grace; the two requests that were waiting resume in their
// places and are served in their order once the grace ends.
func TestLeaseKill9FreesAbsentHolderKeepsQueue(t *testing.T) {
	dir, cfg, addr, data := leaseCrashSetup(t)
	srv := startLeaseForgeServerAt(t, addr, data, cfg)
	env := []string{"FORGE_SERVER=http://" + addr, "DIR=" + dir}
	t.Cleanup(func() { os.WriteFile(filepath.Join(dir, "stop"), nil, 0o644) })
	gone := startLeaseForge(t, env, "lease", "dut", "--resume-grace", "3s", "--", "sh", "-c",
		`touch "$DIR/running"; while [ ! -f "$DIR/stop" ]; do sleep 0.05; done`)
	leaseWaitFor(t, 10*time.Second, "the first holder's CMD to run", func() bool {
		_, err := os.Stat(filepath.Join(dir, "running"))
		return err == nil
	})
	// The position lines come with the queued messages, which the server
	// sends only once the request is in the store.
	first := startLeaseForge(t, env, "lease", "dut", "--resume-grace", "60s", "--", "sh", "-c", `echo first >> "$DIR/order"`)
	leaseWaitFor(t, 10*time.Second, "the first waiter to queue", func() bool {
		return strings.Contains(first.stderr.String(), "position 1")
	})
	second := startLeaseForge(t, env, "lease", "dut", "--resume-grace", "60s", "--", "sh", "-c", `echo second >> "$DIR/order"`)
	leaseWaitFor(t, 10*time.Second, "the second waiter to queue", func() bool {
		return strings.Contains(second.stderr.String(), "position 2")
	})

	killServer(t, srv)
	gone.cmd.Process.Signal(syscall.SIGKILL) // it never comes back
	gone.wait(t, 20*time.Second)
	restarted := time.Now()
	srv = startLeaseForgeServerAt(t, addr, data, cfg)
	for _, w := range []*leaseProc{first, second} {
		if code := w.wait(t, 60*time.Second); code != 0 {
			t.Fatalf("waiter exited %d, want 0: %s", code, w.stderr.String())
		}
	}
	if waited := time.Since(restarted); waited < 3*time.Second {
		t.Errorf("the device went to a waiter %s after the restart, before the dead holder's grace of 3s ended", waited)
	}
	if !strings.Contains(first.stderr.String(), "resumed") || !strings.Contains(second.stderr.String(), "resumed") {
		t.Errorf("waiters did not resume their sessions:\nfirst: %s\nsecond: %s", first.stderr.String(), second.stderr.String())
	}
	got, _ := os.ReadFile(filepath.Join(dir, "order"))
	if string(got) != "first\nsecond\n" {
		t.Errorf("served in order %q, want first then second", got)
	}
	if free, queue := leasePoolState(t, addr, "dut"); free != 1 || queue != 0 {
		t.Errorf("dut: %d free, %d waiting at the end; want 1 and 0", free, queue)
	}
	srv.cmd.Process.Signal(syscall.SIGTERM)
	srv.wait(t, 20*time.Second)
}
