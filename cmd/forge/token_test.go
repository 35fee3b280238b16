package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/forgeci/forge"
	httpapi "github.com/forgeci/forge/internal/http"
	"github.com/forgeci/forge/internal/sqldb"
)

func TestTokenCreateListDelete(t *testing.T) {
	t.Setenv("FORGE_DATABASE_URL", "")
	t.Setenv("FORGE_DATA", "")
	data := t.TempDir()
	if code, _, stderr := forgeRun(t, "token", "create", "--data", data); code != exitFailed || !strings.Contains(stderr, "forge migrate up") {
		t.Errorf("token create before migrating: exit %d, %q; want 1 and a message naming forge migrate up", code, stderr)
	}
	if code, _, stderr := forgeRun(t, "migrate", "up", "--data", data); code != 0 {
		t.Fatalf("migrate: %d %s", code, stderr)
	}
	code, secret, stderr := forgeRun(t, "token", "create", "--admin", "--name", "alice", "--data", data)
	secret = strings.TrimSpace(secret)
	if code != 0 || !strings.HasPrefix(secret, "forge_") || len(secret) < 40 {
		t.Fatalf("token create: exit %d, token %q, stderr %q", code, secret, stderr)
	}
	db, err := sqldb.Open(context.Background(), sqldb.Config{DataDir: data})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := db.TokenByHash(context.Background(), httpapi.HashToken(secret))
	db.Close()
	if err != nil || tok.Name != "alice" || !tok.Admin {
		t.Fatalf("stored token = %+v, %v; want admin alice found by the secret's hash", tok, err)
	}
	raw, err := os.ReadFile(filepath.Join(data, sqldb.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(secret)) {
		t.Error("the database file contains the token itself")
	}
	if code, out, _ := forgeRun(t, "token", "list", "--data", data); code != 0 || !strings.Contains(out, "alice") || strings.Contains(out, secret) {
		t.Errorf("token list: exit %d\n%s", code, out)
	}
	if code, _, stderr := forgeRun(t, "token", "delete", "x", "--data", data); code != exitUsage {
		t.Errorf("token delete x: exit %d %q, want %d", code, stderr, exitUsage)
	}
	if code, _, stderr := forgeRun(t, "token", "delete", "1", "--data", data); code != 0 {
		t.Fatalf("token delete: %d %s", code, stderr)
	}
	db, _ = sqldb.Open(context.Background(), sqldb.Config{DataDir: data})
	defer db.Close()
	if _, err := db.TokenByHash(context.Background(), httpapi.HashToken(secret)); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Errorf("deleted token still found: %v", err)
	}
}
