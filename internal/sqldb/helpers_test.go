package sqldb

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/pgtest"
)

// EnvTestPostgresURL names the variable with the PostgreSQL server the
// tests use; each test gets its own schema in it.
const envTestPostgresURL = pgtest.Env

// dialects lists the databases every store test runs against.
var dialects = []string{"sqlite", "postgres"}

// eachDialect runs fn as a subtest per database. PostgreSQL subtests skip
// when FORGE_TEST_POSTGRES_URL is unset, and fail then when CI=true. The
// test runs in parallel with the others: each has a database of its own.
func eachDialect(t *testing.T, fn func(t *testing.T, kind string)) {
	t.Helper()
	t.Parallel()
	for _, kind := range dialects {
		t.Run(kind, func(t *testing.T) {
			if kind == "postgres" {
				requirePostgres(t)
			}
			fn(t, kind)
		})
	}
}

func requirePostgres(t testing.TB) {
	t.Helper()
	pgtest.URL(t)
}

// testConfig returns a Config for a new empty database of kind: a fresh
// data directory for SQLite, a fresh schema (dropped after the test) for
// PostgreSQL. Several Opens of one Config share the database.
func testConfig(t testing.TB, kind string) Config {
	t.Helper()
	if kind == "sqlite" {
		return Config{DataDir: t.TempDir()}
	}
	return Config{URL: pgtest.Schema(t, "forge_test")}
}

// openTest opens cfg and closes it after the test.
func openTest(t testing.TB, cfg Config) *DB {
	t.Helper()
	db, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	db.trace = recorded.hook(db.Dialect())
	t.Cleanup(func() { db.Close() })
	return db
}

// newTestDB returns a new migrated database of kind.
func newTestDB(t testing.TB, kind string) *DB {
	t.Helper()
	db := openTest(t, testConfig(t, kind))
	if _, err := db.Migrate(context.Background(), "up"); err != nil {
		t.Fatalf("Migrate up: %v", err)
	}
	return db
}

// wantCode fails the test unless err carries the forge error code want.
func wantCode(t testing.TB, err error, want string) {
	t.Helper()
	if got := forge.ErrorCode(err); got != want {
		t.Fatalf("error code: got %q (%v), want %q", got, err, want)
	}
}

// mustRepo stores a repository owner/name.
func mustRepo(t testing.TB, db *DB, owner, name string) *forge.Repo {
	t.Helper()
	r := &forge.Repo{Owner: owner, Name: name, CloneURL: "https://example.com/" + owner + "/" + name + ".git", DefaultBranch: "main"}
	if err := db.UpsertRepo(context.Background(), r); err != nil {
		t.Fatalf("UpsertRepo: %v", err)
	}
	return r
}

// mustBuild creates a build of repo with jobs named names.
func mustBuild(t testing.TB, db *DB, repo *forge.Repo, hook forge.Hook, names ...string) (*forge.Build, []*forge.BuildJob) {
	t.Helper()
	hook.Repo = *repo
	b := &forge.Build{RepoID: repo.ID, Action: "execute", Hook: hook}
	var jobs []*forge.BuildJob
	for _, n := range names {
		jobs = append(jobs, &forge.BuildJob{Name: n})
	}
	if err := db.CreateBuild(context.Background(), b, jobs); err != nil {
		t.Fatalf("CreateBuild: %v", err)
	}
	return b, jobs
}

// at is a fixed time at microsecond precision, in UTC, as stored.
func at(sec int) time.Time { return time.Date(2026, 11, 26, 12, 0, sec, 123456000, time.UTC) }

// sqlDB returns db's writer pool, for statements the stores do not offer.
func (db *DB) sqlDB() *sql.DB { return db.w }
