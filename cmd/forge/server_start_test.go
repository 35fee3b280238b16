package main

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forgeci/forge/internal/github/githubtest"
)

// startServerIn runs the forge binary as `forge args...` in directory dir,
// with only the environment's non-FORGE_ variables plus env, and waits for
// it to log that it listens. The server stops with the test.
func startServerIn(t *testing.T, dir string, env []string, args ...string) *e2eServerProc {
	t.Helper()
	cmd := exec.Command(buildForge(t), args...)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FORGE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &e2eServerProc{cmd: cmd, done: make(chan error, 1)}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.logs.WriteString(line + "\n")
			p.mu.Unlock()
			var rec struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "listening" {
				addr <- rec.Addr
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("server log:\n%s", p.log())
		}
	})
	select {
	case a := <-addr:
		p.url = "http://" + a
	case err := <-p.done:
		t.Fatalf("forge server exited before listening: %v\n%s", err, p.log())
	case <-time.After(60 * time.Second):
		t.Fatalf("forge server did not listen within 60s\n%s", p.log())
	}
	return p
}

// logRecord returns the first JSON log line of p whose msg starts with
// prefix, or fails the test.
func logRecord(t *testing.T, p *e2eServerProc, prefix string) map[string]any {
	t.Helper()
	for _, line := range strings.Split(p.log(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && strings.HasPrefix(fmt.Sprint(rec["msg"]), prefix) {
			return rec
		}
	}
	t.Fatalf("the server did not log %q\n%s", prefix, p.log())
	return nil
}

// postHook sends payload as a GitHub delivery, signed with secret unless
// it is empty, and returns the status and the decoded answer.
func postHook(t *testing.T, base, secret, event, id string, payload []byte) (int, map[string]string) {
	t.Helper()
	req, err := http.NewRequest("POST", base+"/hooks/github", bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-GitHub-Event", event)
	req.Header.Set("X-GitHub-Delivery", id)
	if secret != "" {
		req.Header.Set("X-Hub-Signature-256", hookSignature(secret, payload))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var answer map[string]string
	if err := json.Unmarshal(body, &answer); err != nil {
		t.Fatalf("webhook answer %d is not JSON: %q", resp.StatusCode, body)
	}
	return resp.StatusCode, answer
}

// hookSignature is GitHub's X-Hub-Signature-256 of body under secret.
func hookSignature(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// TestServerFirstStart is the README's quick start on a fresh machine:
// `forge server` with no flags and no configuration file, in an empty
// directory, creates ./forge-data and its database schema, says so, and
// accepts a signed webhook. (FORGE_ADDR picks a free port; the secret is
// the one setting webhooks need.)
func TestServerFirstStart(t *testing.T) {
	dir := t.TempDir()
	p := startServerIn(t, dir, []string{"FORGE_ADDR=127.0.0.1:0", "FORGE_GITHUB_WEBHOOK_SECRET=" + e2eSecret}, "server")
	rec := logRecord(t, p, "created the database schema")
	if db := fmt.Sprint(rec["database"]); !strings.Contains(db, filepath.Join(dir, "forge-data", "forge.db")) {
		t.Errorf("created the schema of %s, want ./forge-data/forge.db in %s", db, dir)
	}
	if strings.Contains(p.log(), "no webhook secret") {
		t.Errorf("warned about the webhook secret, which is set")
	}
	if code, answer := postHook(t, p.url, e2eSecret, "ping", "first-ping", githubtest.Payload(t, "ping.payload.json")); code != http.StatusOK {
		t.Fatalf("signed ping: %d %v, want 200", code, answer)
	}
	code, answer := postHook(t, p.url, e2eSecret, "push", "first-push", githubtest.Payload(t, "push.payload.json"))
	if code != http.StatusAccepted || answer["delivery"] != "first-push" {
		t.Fatalf("signed push: %d %v, want 202 for delivery first-push", code, answer)
	}
	if code, _ := postHook(t, p.url, "not the secret", "push", "forged", githubtest.Payload(t, "push.payload.json")); code != http.StatusUnauthorized {
		t.Fatalf("push signed with another secret: %d, want 401", code)
	}
	p.stop(t)

	// The second start finds the schema in place and creates nothing.
	p = startServerIn(t, dir, []string{"FORGE_ADDR=127.0.0.1:0", "FORGE_GITHUB_WEBHOOK_SECRET=" + e2eSecret}, "server")
	if strings.Contains(p.log(), "created the database schema") || strings.Contains(p.log(), "migrated the database") {
		t.Errorf("second start changed the schema:\n%s", p.log())
	}
	p.stop(t)
}

// TestServerNoWebhookSecret: without a secret the server starts, warns
// that webhooks will be refused, and answers each one 503 with a message
// naming the setting.
func TestServerNoWebhookSecret(t *testing.T) {
	p := startServerIn(t, t.TempDir(), nil, "server", "--addr", "127.0.0.1:0", "--data", t.TempDir())
	rec := logRecord(t, p, "no webhook secret is set")
	if rec["level"] != "WARN" {
		t.Errorf("the missing secret is logged at %v, want WARN", rec["level"])
	}
	code, answer := postHook(t, p.url, "", "push", "unsigned", githubtest.Payload(t, "push.payload.json"))
	if code != http.StatusServiceUnavailable || answer["code"] != "unavailable" ||
		!strings.Contains(answer["message"], "FORGE_GITHUB_WEBHOOK_SECRET") || !strings.Contains(answer["message"], "github.webhook_secret") {
		t.Fatalf("webhook without a configured secret: %d %v, want 503 unavailable naming github.webhook_secret and FORGE_GITHUB_WEBHOOK_SECRET", code, answer)
	}
	p.stop(t)
}

// forgeExit runs the forge binary with args and env (and no other FORGE_
// variables) and returns its exit status and combined output.
func forgeExit(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(buildForge(t), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FORGE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return 0, string(out)
	}
	ee, ok := err.(*exec.ExitError)
	if !ok {
		t.Fatalf("forge %v: %v", args, err)
	}
	return ee.ExitCode(), string(out)
}

// TestServerRefusesPendingSchema: on a database that has a schema with a
// migration pending, the server does not start without FORGE_MIGRATE=auto,
// and says what to run; with it, it migrates and starts.
func TestServerRefusesPendingSchema(t *testing.T) {
	data := t.TempDir()
	if code, out := forgeExit(t, nil, "migrate", "up", "--data", data); code != 0 {
		t.Fatalf("migrate up: exit %d\n%s", code, out)
	}
	if code, out := forgeExit(t, nil, "migrate", "down", "--data", data); code != 0 {
		t.Fatalf("migrate down: exit %d\n%s", code, out)
	}
	code, out := forgeExit(t, nil, "server", "--addr", "127.0.0.1:0", "--data", data)
	if code != exitFailed {
		t.Fatalf("forge server with a pending migration: exit %d, want %d\n%s", code, exitFailed, out)
	}
	if !strings.Contains(out, "needs 1 migration(s)") || !strings.Contains(out, "forge migrate up") || !strings.Contains(out, "FORGE_MIGRATE=auto") {
		t.Errorf("message = %s, want it to say a migration is pending and name forge migrate up and FORGE_MIGRATE=auto", out)
	}
	if code, out := forgeExit(t, []string{"FORGE_MIGRATE=yes"}, "server", "--addr", "127.0.0.1:0", "--data", data); code != exitUsage || !strings.Contains(out, `FORGE_MIGRATE="yes"`) {
		t.Errorf("FORGE_MIGRATE=yes: exit %d, want %d naming the value\n%s", code, exitUsage, out)
	}
	p := startServerIn(t, t.TempDir(), []string{"FORGE_MIGRATE=auto"}, "server", "--addr", "127.0.0.1:0", "--data", data)
	rec := logRecord(t, p, "migrated the database")
	if fmt.Sprint(rec["versions"]) == "[]" {
		t.Errorf("migrated no version: %v", rec)
	}
	p.stop(t)
}

// TestServerOnNewerSchema is the rolling upgrade seen from the previous
// release: a newer forge applied a migration this one does not know. When
// that forge recorded it as additive, this server starts and stays ready;
// once a breaking migration appears, /readyz answers 503 naming it, and a
// server does not start on it.
func TestServerOnNewerSchema(t *testing.T) {
	data := t.TempDir()
	if code, out := forgeExit(t, nil, "migrate", "up", "--data", data); code != 0 {
		t.Fatalf("migrate up: exit %d\n%s", code, out)
	}
	db, err := sql.Open("sqlite", filepath.Join(data, "forge.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sqlExec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// What a newer forge's `forge migrate up` leaves: its migration in
	// goose's table, and its record of it.
	sqlExec("INSERT INTO goose_db_version (version_id, is_applied) VALUES (90001, 1)")
	sqlExec("INSERT INTO forge_migrations (version, name, breaking) VALUES (90001, '90001_future.sql', 0)")

	p := startServerIn(t, t.TempDir(), nil, "server", "--addr", "127.0.0.1:0", "--data", data)
	logRecord(t, p, "the database schema is newer than this forge")
	if st := e2eApiCall(t, "GET", p.url+"/readyz", "", nil); st != http.StatusOK {
		t.Fatalf("/readyz on an additive newer schema: %d, want 200", st)
	}
	if code, out := forgeExit(t, nil, "migrate", "status", "--data", data); code != 0 || !strings.Contains(out, "newer migrations are additive") {
		t.Errorf("migrate status: exit %d, want 0 saying the newer migrations are additive\n%s", code, out)
	}

	sqlExec("INSERT INTO goose_db_version (version_id, is_applied) VALUES (90002, 1)")
	sqlExec("INSERT INTO forge_migrations (version, name, breaking) VALUES (90002, '90002_drop.sql', 1)")
	resp, err := http.Get(p.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "90002") || !strings.Contains(string(body), "breaking") {
		t.Errorf("/readyz on a breaking newer schema: %d %s, want 503 naming migration 90002 as breaking", resp.StatusCode, body)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done

	code, out := forgeExit(t, nil, "server", "--addr", "127.0.0.1:0", "--data", data)
	if code != exitFailed || !strings.Contains(out, "90002 is marked breaking") || !strings.Contains(out, "newer forge") {
		t.Errorf("forge server on a breaking newer schema: exit %d, want %d naming migration 90002 and the newer forge\n%s", code, exitFailed, out)
	}
}
