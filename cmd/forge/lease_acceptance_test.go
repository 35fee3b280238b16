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
)

// leaseAcceptanceServer is a real `forge server --config` with lease pools.
type leaseAcceptanceServer struct {
	URL  string
	proc *leaseProc
}

func startLeaseForgeServer(t *testing.T, config string) *leaseAcceptanceServer {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "forge.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := startLeaseForge(t, []string{"FORGE_MIGRATE=auto"}, "server", "--config", cfg, "--addr", addr, "--data", filepath.Join(dir, "data"))
	s := &leaseAcceptanceServer{URL: "http://" + addr, proc: p}
	leaseWaitFor(t, 20*time.Second, "forge server to answer", func() bool {
		select {
		case <-p.done:
			t.Fatalf("forge server exited %d: %s", p.code, p.stderr.String())
		default:
		}
		resp, err := http.Get(s.URL + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return s
}

// pool reads a pool's state over the REST API: resource id → lease id,
// and the queue length.
func (s *leaseAcceptanceServer) pool(t *testing.T, name string) (leases map[string]string, queued int) {
	t.Helper()
	resp, err := http.Get(s.URL + "/api/v1/pools/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p struct {
		Resources []struct {
			ID    string `json:"id"`
			Lease string `json:"lease"`
		} `json:"resources"`
		Queue []json.RawMessage `json:"queue"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
		t.Fatalf("GET /api/v1/pools/%s: HTTP %d: %v", name, resp.StatusCode, err)
	}
	leases = map[string]string{}
	for _, r := range p.Resources {
		if r.Lease != "" {
			leases[r.ID] = r.Lease
		}
	}
	return leases, len(p.Queue)
}

const leaseAcceptanceConfig = `pools:
  dut:
    resources:
      - {id: dut1, host: 10.0.0.5, labels: {arch: arm64}}
  ports:
    range: 20000-20009
`

// TestLeaseAcceptanceWithForgeServer is issue 3's acceptance, end to end:
// two shells each running `forge lease dut -- ...` against a one-device
// pool of a real `forge server --config`. The second waits, shows its
// queue position and starts when the first finishes; killing a holder with
// SIGKILL starts the next at once; a server that dies under a running CMD
// stops it with status 75.
func TestLeaseAcceptanceWithForgeServer(t *testing.T) {
	srv := startLeaseForgeServer(t, leaseAcceptanceConfig)
	dir := t.TempDir()
	env := []string{"FORGE_SERVER=" + srv.URL, "DIR=" + dir}
	exists := func(name string) func() bool {
		return func() bool { _, err := os.Stat(filepath.Join(dir, name)); return err == nil }
	}

	// Two shells, the second waiting for the first.
	first := startLeaseForge(t, env, "lease", "dut", "--", "sh", "-c", `touch "$DIR/first-started"; sleep 0.5; touch "$DIR/first-done"`)
	leaseWaitFor(t, 10*time.Second, "the first to start", exists("first-started"))
	second := startLeaseForge(t, env, "lease", "dut", "ports:2", "--", "sh", "-c",
		`test -f "$DIR/first-done" && echo "$FORGE_LEASE_DUT $FORGE_LEASE_PORTS"`)
	if code := first.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("first exited %d: %s", code, first.stderr.String())
	}
	if code := second.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("second exited %d: %s %s", code, second.stdout.String(), second.stderr.String())
	}
	if got, want := second.stdout.String(), "dut1 20000,20001\n"; got != want {
		t.Errorf("second printed %q, want %q", got, want)
	}
	if got := second.stderr.String(); !strings.Contains(got, "waiting for dut, ports: position 1") {
		t.Errorf("second did not show its queue position: %q", got)
	}

	// SIGKILL of the holder starts the waiter at once.
	holder := startLeaseForge(t, env, "lease", "dut", "--", "sh", "-c", `touch "$DIR/holder-started"; exec sleep 60`)
	leaseWaitFor(t, 10*time.Second, "the holder to start", exists("holder-started"))
	waiter := startLeaseForge(t, env, "lease", "dut", "--", "touch", filepath.Join(dir, "waiter-started"))
	leaseWaitFor(t, 10*time.Second, "the waiter to queue", func() bool { _, q := srv.pool(t, "dut"); return q == 1 })
	killed := time.Now()
	holder.cmd.Process.Signal(syscall.SIGKILL)
	leaseWaitFor(t, 5*time.Second, "the waiter to start", exists("waiter-started"))
	t.Logf("waiter's CMD ran %v after SIGKILL of the holder (includes starting touch)", time.Since(killed))
	if d := time.Since(killed); d > time.Second {
		t.Errorf("waiter started %v after the SIGKILL; want at once", d)
	}
	if code := waiter.wait(t, 10*time.Second); code != 0 {
		t.Errorf("waiter exited %d: %s", code, waiter.stderr.String())
	}
	leaseWaitFor(t, 5*time.Second, "every lease to end", func() bool { l, _ := srv.pool(t, "dut"); return len(l) == 0 })

	// The server dies under a running CMD: CMD is stopped, status 75, once
	// the session's grace (2s here) passed without the server coming back.
	running := startLeaseForge(t, env, "lease", "dut", "--kill-grace", "2s", "--resume-grace", "2s", "--", "sh", "-c",
		`trap 'echo stopped; exit 0' TERM; touch "$DIR/running"; while :; do sleep 0.02; done`)
	leaseWaitFor(t, 10*time.Second, "CMD to run", exists("running"))
	srv.proc.cmd.Process.Signal(syscall.SIGKILL)
	if code := running.wait(t, 15*time.Second); code != exitLeaseLost {
		t.Errorf("forge lease exited %d after the server died, want %d", code, exitLeaseLost)
	}
	if got := running.stdout.String(); got != "stopped\n" {
		t.Errorf("CMD printed %q, want it stopped by SIGTERM", got)
	}
	if got := running.stderr.String(); !strings.Contains(got, "may already belong to someone else") {
		t.Errorf("stderr %q lacks the warning", got)
	}
}

// TestLeaseTokenWithPrivateReads: against a forge server whose reads are
// private (api.private_reads), forge lease needs an API token, from
// --token or FORGE_TOKEN; without one, or with a wrong one, it exits 77
// and says what to do.
func TestLeaseTokenWithPrivateReads(t *testing.T) {
	data := t.TempDir()
	token := e2eAdminToken(t, data)
	p := e2eStartServerWith(t, data, "api:\n  private_reads: true\npools:\n  dut:\n    resources: [{id: dut1}]\n")
	show := []string{"sh", "-c", `echo "$FORGE_LEASE_DUT"`}
	tests := []struct {
		name string
		env  []string
		args []string
		code int
		out  string // stdout when it works, else a part of stderr
	}{
		{"no token", nil, nil, exitLeaseDenied, "set --token or FORGE_TOKEN"},
		{"wrong token", nil, []string{"--token", "not-a-token"}, exitLeaseDenied, "unknown API token"},
		{"--token", nil, []string{"--token", token}, 0, "dut1\n"},
		{"FORGE_TOKEN", []string{"FORGE_TOKEN=" + token}, nil, 0, "dut1\n"},
		{"--token over FORGE_TOKEN", []string{"FORGE_TOKEN=not-a-token"}, []string{"--token", token}, 0, "dut1\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append(append([]string{"lease", "--server", p.url}, tt.args...), "dut", "--")
			lp := startLeaseForge(t, append([]string{"FORGE_TOKEN="}, tt.env...), append(args, show...)...)
			code := lp.wait(t, 20*time.Second)
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stderr %q", code, tt.code, lp.stderr.String())
			}
			if code == 0 && lp.stdout.String() != tt.out {
				t.Errorf("CMD printed %q, want %q", lp.stdout.String(), tt.out)
			}
			if code != 0 && !strings.Contains(lp.stderr.String(), tt.out) {
				t.Errorf("stderr %q lacks %q", lp.stderr.String(), tt.out)
			}
		})
	}
	p.stop(t)
}
