// Package pgtest gives tests a PostgreSQL database of their own on the
// server FORGE_TEST_POSTGRES_URL names. Without that variable a test
// skips, or fails when CI=true: CI must run the PostgreSQL tests.
package pgtest

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

// Env names the variable with the URL of the PostgreSQL server the tests
// use, e.g. postgres://forge:forge@127.0.0.1:5432/forge?sslmode=disable.
const Env = "FORGE_TEST_POSTGRES_URL"

// URL returns the server's URL; it skips t when Env is unset, or fails it
// then when CI=true.
func URL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(Env)
	if u == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set, and CI=true: the PostgreSQL tests must run in CI (.ci/run starts PostgreSQL)", Env)
		}
		t.Skipf("%s is not set: skipping the PostgreSQL run", Env)
	}
	return u
}

// Database creates an empty database named prefix_RANDOM on the server,
// drops it (closing what is still connected) when the test ends, and
// returns its URL.
func Database(t testing.TB, prefix string) string {
	t.Helper()
	base := URL(t)
	name := prefix + "_" + random()
	exec(t, base, "CREATE DATABASE "+name)
	t.Cleanup(func() { exec(t, base, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s: %v", Env, err)
	}
	u.Path = "/" + name
	return u.String()
}

// Schema creates an empty schema named prefix_RANDOM in the server's
// database, drops it with all it holds when the test ends, and returns a
// URL whose search_path is it.
func Schema(t testing.TB, prefix string) string {
	t.Helper()
	base := URL(t)
	name := prefix + "_" + random()
	exec(t, base, "CREATE SCHEMA "+name)
	t.Cleanup(func() { exec(t, base, "DROP SCHEMA IF EXISTS "+name+" CASCADE") })
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s: %v", Env, err)
	}
	q := u.Query()
	q.Set("search_path", name)
	u.RawQuery = q.Encode()
	return u.String()
}

func exec(t testing.TB, base, stmt string) {
	t.Helper()
	db, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("%s: %v", Env, err)
	}
	defer db.Close()
	if _, err := db.Exec(stmt); err != nil {
		t.Errorf("%s: %v", stmt, err)
	}
}

// random is 12 hex digits: names unique across tests and test processes.
func random() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}
