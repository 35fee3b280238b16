package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/forgeci/forge/internal/pgtest"
)

// migrateRun runs `forge migrate args...` and returns its exit status and
// output.
func migrateRun(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), append([]string{"forge", "migrate"}, args...), strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestMigrateCommand(t *testing.T) {
	t.Setenv("FORGE_DATABASE_URL", "")
	t.Setenv("FORGE_DATA", "")
	data := filepath.Join(t.TempDir(), "data")
	db := filepath.Join(data, "forge.db")

	// The migrations this forge embeds, from the source tree: the test
	// holds for every migration added later.
	files, err := filepath.Glob("../../internal/sqldb/migrations/sqlite/*.sql")
	if err != nil || len(files) < 3 {
		t.Fatalf("migrations: %v %v", files, err)
	}
	var names []string
	var versions []int
	for _, f := range files {
		n := filepath.Base(f)
		var v int
		fmt.Sscanf(n, "%d_", &v)
		names, versions = append(names, n), append(versions, v)
	}
	latest, count := versions[len(versions)-1], len(versions)
	var pending, applied, listed []string
	for _, n := range names {
		pending = append(pending, n[:6], "pending")
		applied = append(applied, "applied "+n+"\n")
		listed = append(listed, n[:6], " UTC\n")
	}
	type step struct {
		name     string
		args     []string
		wantCode int
		stdout   []string // substrings, in order
		stderr   string
	}
	steps := []step{
		{"status of a new database", []string{"status", "--data", data}, 0,
			append(append([]string{"SQLite database " + db, "VERSION"}, pending...), fmt.Sprintf("version 0 of %d: %d pending; run forge migrate up", latest, count)), ""},
		{"up applies all", []string{"up", "--data", data}, 0,
			append(applied, fmt.Sprintf("the schema is at version %d of %d", latest, latest)), ""},
		{"up again does nothing", []string{"up", "--data", data}, 0,
			[]string{fmt.Sprintf("nothing to migrate: the schema is at version %d, the latest", latest)}, ""},
		{"status after up", []string{"status", "--data", data}, 0,
			append(listed, fmt.Sprintf("the schema is up to date (version %d)", latest)), ""},
	}
	for i := count - 1; i >= 1; i-- {
		steps = append(steps, step{"down rolls back " + names[i], []string{"down", "--data", data}, 0,
			[]string{"rolled back " + names[i] + "\n", fmt.Sprintf("the schema is at version %d of %d", versions[i-1], latest)}, ""})
	}
	steps = append(steps, []step{
		{"down to nothing", []string{"down", "--data", data}, 0, []string{"rolled back 00001_init.sql\n"}, ""},
		{"down with nothing applied", []string{"down", "--data", data}, 0, []string{"nothing to roll back"}, ""},
		{"no subcommand", nil, 2, nil, "migrate needs a subcommand"},
		{"unknown subcommand", []string{"sideways"}, 2, nil, `unknown command "sideways"`},
		{"extra argument", []string{"up", "now", "--data", data}, 2, nil, "unknown command"},
		{"unsupported URL", []string{"status", "--database-url", "mysql://u@h/db"}, 2, nil, `scheme "mysql" is not supported`},
	}...)
	for _, s := range steps {
		code, stdout, stderr := migrateRun(t, s.args...)
		if code != s.wantCode {
			t.Fatalf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", s.name, code, s.wantCode, stdout, stderr)
		}
		rest := stdout
		for _, want := range s.stdout {
			i := strings.Index(rest, want)
			if i < 0 {
				t.Fatalf("%s: stdout lacks %q (in order)\n%s", s.name, want, stdout)
			}
			rest = rest[i+len(want):]
		}
		if !strings.Contains(stderr, s.stderr) {
			t.Fatalf("%s: stderr %q, want it to contain %q", s.name, stderr, s.stderr)
		}
	}
}

// TestMigrateFindsDatabaseLikeServer: without --data, FORGE_DATA and then
// ./forge-data are used; the server's --config file is read, flags win;
// FORGE_DATABASE_URL wins over the data directory.
func TestMigrateFindsDatabaseLikeServer(t *testing.T) {
	t.Setenv("FORGE_DATABASE_URL", "")
	env := filepath.Join(t.TempDir(), "env-data")
	t.Setenv("FORGE_DATA", env)
	if code, out, errOut := migrateRun(t, "up"); code != 0 || !strings.Contains(out, filepath.Join(env, "forge.db")) {
		t.Fatalf("up with FORGE_DATA: exit %d, %s %s; want the database in %s", code, out, errOut, env)
	}

	t.Setenv("FORGE_DATA", "")
	wd := t.TempDir()
	t.Chdir(wd)
	if code, out, errOut := migrateRun(t, "status"); code != 0 || !strings.Contains(out, filepath.Join(wd, "forge-data", "forge.db")) {
		t.Fatalf("status with no --data: exit %d, %s %s; want ./forge-data/forge.db", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(wd, "forge-data", "forge.db")); err != nil {
		t.Fatal(err)
	}

	// The server's config file names the data directory; --data wins.
	fromFile := filepath.Join(t.TempDir(), "file-data")
	conf := filepath.Join(t.TempDir(), "forge.yml")
	if err := os.WriteFile(conf, []byte("data: "+fromFile+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := migrateRun(t, "up", "--config", conf); code != 0 || !strings.Contains(out, filepath.Join(fromFile, "forge.db")) {
		t.Fatalf("up --config: exit %d, %s %s; want the database in %s", code, out, errOut, fromFile)
	}
	flagDir := filepath.Join(t.TempDir(), "flag-data")
	if code, out, errOut := migrateRun(t, "status", "--config", conf, "--data", flagDir); code != 0 || !strings.Contains(out, filepath.Join(flagDir, "forge.db")) {
		t.Fatalf("status --config --data: exit %d, %s %s; want --data to win", code, out, errOut)
	}
	if code, _, errOut := migrateRun(t, "status", "--config", filepath.Join(wd, "missing.yml")); code != 2 || !strings.Contains(errOut, "missing.yml") {
		t.Fatalf("status with a missing config: exit %d, %s; want 2 naming the file", code, errOut)
	}

	t.Setenv("FORGE_DATABASE_URL", "sqlserver://x")
	if code, _, errOut := migrateRun(t, "status", "--data", wd); code != 2 || !strings.Contains(errOut, "FORGE_DATABASE_URL") {
		t.Fatalf("FORGE_DATABASE_URL must win over --data: exit %d, %s", code, errOut)
	}
}

// TestMigrateCommandPostgres runs up and status against PostgreSQL when a
// server is given.
func TestMigrateCommandPostgres(t *testing.T) {
	// The database's own schema may be shared with other tests; a
	// schema of this test's own keeps the run isolated.
	t.Setenv("FORGE_DATABASE_URL", pgtest.Schema(t, "forge_migrate"))
	code, out, errOut := migrateRun(t, "up")
	if code != 0 || !strings.Contains(out, "applied 00001_init.sql") || !strings.Contains(out, "PostgreSQL database") {
		t.Fatalf("up: exit %d\n%s%s", code, out, errOut)
	}
	if strings.Contains(out, ":forge@") {
		t.Fatalf("the password is shown: %s", out)
	}
	code, out, errOut = migrateRun(t, "status")
	if code != 0 || !strings.Contains(out, "the schema is up to date (version ") {
		t.Fatalf("status: exit %d\n%s%s", code, out, errOut)
	}
}
