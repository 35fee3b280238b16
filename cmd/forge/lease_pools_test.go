package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// leaseREST does one authenticated REST call and returns its status.
func leaseREST(t *testing.T, method, url, token, body string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// leasePoolStates returns pool name → resource id → state, from the REST
// API.
func leasePoolStates(t *testing.T, url string) map[string]map[string]string {
	t.Helper()
	resp, err := http.Get(url + "/api/v1/pools")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Pools []struct {
			Name      string `json:"name"`
			Resources []struct {
				ID    string `json:"id"`
				State string `json:"state"`
			} `json:"resources"`
		} `json:"pools"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]string{}
	for _, p := range body.Pools {
		out[p.Name] = map[string]string{}
		for _, r := range p.Resources {
			out[p.Name][r.ID] = r.State
		}
	}
	return out
}

// TestLeasePoolsSurviveServerRestart: pools created, disabled and deleted
// through the REST API of a real forge server are there after it
// restarts; lease.pool_precedence: config resets the file's pools.
func TestLeasePoolsSurviveServerRestart(t *testing.T) {
	data := t.TempDir()
	token := e2eAdminToken(t, data)
	const config = "pools:\n  dut:\n    resources: [{id: d1}, {id: d2}]\n  ports:\n    range: 1-2\n"
	p := e2eStartServerWith(t, data, config)
	if st := leaseREST(t, "PUT", p.url+"/api/v1/pools/acct", token, `{"order": "fill", "resources": [{"id": "a1"}]}`); st != 201 {
		t.Fatalf("PUT acct: HTTP %d", st)
	}
	if st := leaseREST(t, "POST", p.url+"/api/v1/pools/dut/resources/d2/disable", token, ""); st != 200 {
		t.Fatalf("disable d2: HTTP %d", st)
	}
	if st := leaseREST(t, "DELETE", p.url+"/api/v1/pools/ports", token, ""); st != 204 {
		t.Fatalf("DELETE ports: HTTP %d", st)
	}
	p.stop(t)

	p = e2eStartServerWith(t, data, config)
	got := leasePoolStates(t, p.url)
	if len(got) != 2 || got["acct"]["a1"] != "free" || got["dut"]["d2"] != "disabled" || got["dut"]["d1"] != "free" {
		t.Fatalf("pools after restart: got %v, want acct, and dut with d2 disabled; ports deleted", got)
	}
	p.stop(t)

	p = e2eStartServerWith(t, data, config+"lease:\n  pool_precedence: config\n")
	got = leasePoolStates(t, p.url)
	if len(got) != 3 || got["dut"]["d2"] != "free" || got["ports"]["1"] != "free" || got["acct"]["a1"] != "free" {
		t.Fatalf("pools after a restart where the file wins: got %v, want the file's dut and ports, and acct", got)
	}
	p.stop(t)
}

// startLeaseForgeServerAt starts forge server on addr with data, and waits
// for it to answer.
func startLeaseForgeServerAt(t testing.TB, addr, data, cfg string, env ...string) *leaseProc {
	t.Helper()
	p := startLeaseForge(t, append([]string{"FORGE_MIGRATE=auto"}, env...), "server", "--config", cfg, "--addr", addr, "--data", data)
	leaseWaitFor(t, 20*time.Second, "forge server to answer", func() bool {
		select {
		case <-p.done:
			t.Fatalf("forge server exited %d: %s", p.code, p.stderr.String())
		default:
		}
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// TestLeaseSurvivesGracefulRestart: a forge lease started before a SIGTERM
// of the server keeps its device across the restart (no one else gets it
// meanwhile), its CMD runs on, and it exits 0.
func TestLeaseSurvivesGracefulRestart(t *testing.T) {
	leaseHolderSurvivesRestart(t, func(t *testing.T, srv *leaseProc) {
		srv.cmd.Process.Signal(syscall.SIGTERM)
		if code := srv.wait(t, 20*time.Second); code != 0 {
			t.Fatalf("forge server exited %d on SIGTERM: %s", code, srv.stderr.String())
		}
	})
}
