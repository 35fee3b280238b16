package sqldb

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/forgeci/forge"
)

// migrationFiles holds the schema migrations, one folder per dialect (see
// migrations/README.md: they are additive only).
//
//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrationFiles embed.FS

// versionTable is goose's table of applied migrations.
const versionTable = goose.DefaultTablename

// EnvMigrate names the variable that, set to "auto", makes forge server
// migrate the database up before it starts.
const EnvMigrate = "FORGE_MIGRATE"

// The causes of CheckSchema's errors, for errors.Is.
var (
	ErrSchemaPending = errors.New("database schema out of date")
	ErrSchemaNewer   = errors.New("database schema newer than this forge")
)

// Migration is one schema migration, known to this forge, applied to the
// database, or both.
type Migration struct {
	Version int64
	// Name is the migration's file name; empty when the database has it
	// applied but this forge does not know it (a newer forge applied it).
	Name      string
	Applied   bool
	AppliedAt time.Time // when known
}

// Status is the state of the database's schema.
type Status struct {
	// Current is the highest applied version (0: nothing applied).
	Current int64
	// Latest is the highest version this forge knows.
	Latest int64
	// Migrations lists every known or applied migration by version.
	Migrations []Migration
	// Pending lists known versions not applied, in order.
	Pending []int64
	// Unknown lists applied versions this forge does not know.
	Unknown []int64
}

// MigrateAutoFromEnv reports whether FORGE_MIGRATE asks forge server to
// migrate first. Unset or empty means no; "auto" means yes; anything else
// is an EINVALID error.
func MigrateAutoFromEnv() (bool, error) {
	switch v := os.Getenv(EnvMigrate); v {
	case "":
		return false, nil
	case "auto":
		return true, nil
	default:
		return false, forge.Errorf(forge.EINVALID, "%s=%q: the only value is auto", EnvMigrate, v)
	}
}

// migrationsFS returns the migrations of the database's dialect.
func (db *DB) migrationsFS() fs.FS {
	sub, err := fs.Sub(migrationFiles, "migrations/"+db.dialect.String())
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	return sub
}

// provider returns a goose provider for the database. On PostgreSQL it holds
// a session advisory lock (keyed by database and schema) around up and
// down; SQLite is locked by lockMigrations instead.
func (db *DB) provider() (*goose.Provider, error) {
	opts := []goose.ProviderOption{goose.WithDisableGlobalRegistry(true)}
	gd := goose.DialectSQLite3
	if db.dialect == dialectPostgres {
		gd = goose.DialectPostgres
		// Poll the lock every second for up to 15 minutes: a long
		// migration elsewhere is waited for, not failed.
		l, err := lock.NewPostgresSessionLocker(lock.WithLockID(db.lockID), lock.WithLockTimeout(1, 900))
		if err != nil {
			return nil, err
		}
		opts = append(opts, goose.WithSessionLocker(l))
	}
	return goose.NewProvider(gd, db.w, db.migrationsFS(), opts...)
}

// knownMigrations returns this forge's migrations of the database's
// dialect, by version.
func (db *DB) knownMigrations() ([]Migration, error) {
	p, err := db.provider()
	if err != nil {
		return nil, forge.WrapError(forge.EINTERNAL, err, "read embedded migrations")
	}
	var out []Migration
	for _, s := range p.ListSources() {
		name := s.Path
		if i := strings.LastIndexByte(name, '/'); i >= 0 {
			name = name[i+1:]
		}
		out = append(out, Migration{Version: s.Version, Name: name})
	}
	return out, nil
}

// appliedMigrations reads goose's table: applied version -> when. It does
// not create the table: a database nobody migrated has nothing applied.
func (db *DB) appliedMigrations(ctx context.Context) (map[int64]time.Time, error) {
	var exists bool
	var err error
	if db.dialect == dialectPostgres {
		err = db.r.QueryRowContext(ctx, "SELECT to_regclass('"+versionTable+"') IS NOT NULL").Scan(&exists)
	} else {
		var n int
		err = db.r.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '"+versionTable+"'").Scan(&n)
		exists = n > 0
	}
	if err != nil {
		return nil, db.fail(ctx, err, "read schema version")
	}
	applied := map[int64]time.Time{}
	if !exists {
		return applied, nil
	}
	rows, err := db.r.QueryContext(ctx, "SELECT version_id, is_applied, tstamp FROM "+versionTable+" ORDER BY id")
	if err != nil {
		return nil, db.fail(ctx, err, "read schema version")
	}
	defer rows.Close()
	for rows.Next() {
		var v int64
		var ok bool
		var ts any
		if err := rows.Scan(&v, &ok, &ts); err != nil {
			return nil, db.fail(ctx, err, "read schema version")
		}
		if v == 0 {
			continue
		}
		if ok {
			applied[v] = parseStamp(ts)
		} else {
			delete(applied, v)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, db.fail(ctx, err, "read schema version")
	}
	return applied, nil
}

// parseStamp reads goose's tstamp column: a time from PostgreSQL, text or
// a time from SQLite. An unreadable value is left zero.
func parseStamp(v any) time.Time {
	switch t := v.(type) {
	case time.Time:
		return t.UTC()
	case string:
		for _, layout := range []string{"2006-01-02 15:04:05", time.RFC3339Nano, "2006-01-02 15:04:05.999999999-07:00"} {
			if p, err := time.Parse(layout, t); err == nil {
				return p.UTC()
			}
		}
	case []byte:
		return parseStamp(string(t))
	}
	return time.Time{}
}

// SchemaStatus reports which migrations are applied, pending and unknown.
// It changes nothing and takes no lock.
func (db *DB) SchemaStatus(ctx context.Context) (Status, error) {
	known, err := db.knownMigrations()
	if err != nil {
		return Status{}, err
	}
	applied, err := db.appliedMigrations(ctx)
	if err != nil {
		return Status{}, err
	}
	var st Status
	seen := map[int64]bool{}
	for _, m := range known {
		seen[m.Version] = true
		st.Latest = max(st.Latest, m.Version)
		if at, ok := applied[m.Version]; ok {
			m.Applied, m.AppliedAt = true, at
		} else {
			st.Pending = append(st.Pending, m.Version)
		}
		st.Migrations = append(st.Migrations, m)
	}
	for v, at := range applied {
		st.Current = max(st.Current, v)
		if !seen[v] {
			st.Unknown = append(st.Unknown, v)
			st.Migrations = append(st.Migrations, Migration{Version: v, Applied: true, AppliedAt: at})
		}
	}
	sort.Slice(st.Migrations, func(i, k int) bool { return st.Migrations[i].Version < st.Migrations[k].Version })
	sort.Slice(st.Unknown, func(i, k int) bool { return st.Unknown[i] < st.Unknown[k] })
	return st, nil
}

// CheckSchema returns nil when the database's schema is exactly the one
// this forge knows. Otherwise it returns an ECONFLICT error whose message
// says what to run; its cause is ErrSchemaPending (migrations to apply) or
// ErrSchemaNewer (a newer forge migrated the database). forge server calls
// it before serving.
func (db *DB) CheckSchema(ctx context.Context) error {
	st, err := db.SchemaStatus(ctx)
	if err != nil {
		return err
	}
	if len(st.Unknown) > 0 {
		return forge.WrapError(forge.ECONFLICT, ErrSchemaNewer, fmt.Sprintf(
			"the %s has schema version %d, but this forge knows versions up to %d: run a newer forge, or roll the schema back with the newer forge's `forge migrate down`",
			db.where, st.Current, st.Latest))
	}
	if len(st.Pending) > 0 {
		return forge.WrapError(forge.ECONFLICT, ErrSchemaPending, fmt.Sprintf(
			"the %s needs %d migration(s) (%s): run `forge migrate up` first, or set %s=auto to migrate at start",
			db.where, len(st.Pending), versionList(st.Pending), EnvMigrate))
	}
	return nil
}

// PrepareSchema is what forge server runs at start: with auto (see
// MigrateAutoFromEnv) it migrates up first, under the migration lock, then
// it checks the schema with CheckSchema. It returns the versions applied.
func (db *DB) PrepareSchema(ctx context.Context, auto bool) ([]int64, error) {
	var applied []int64
	if auto {
		var err error
		if applied, err = db.Migrate(ctx, "up"); err != nil {
			return applied, err
		}
	}
	return applied, db.CheckSchema(ctx)
}

// Migrate changes the schema: "up" applies every pending migration, "down"
// rolls back the latest applied one. It returns the versions it applied or
// rolled back, in order (none when there was nothing to do).
//
// Migrations hold a lock so that two processes never migrate at once: a
// PostgreSQL session advisory lock (goose's session locker), or on SQLite
// an exclusive lock on the file forge.db.migrate-lock beside the database.
// A second Migrate waits for the first, then finds nothing left to do.
// Migrate refuses (ECONFLICT, cause ErrSchemaNewer) to touch a schema newer
// than this forge knows.
func (db *DB) Migrate(ctx context.Context, direction string) ([]int64, error) {
	if direction != "up" && direction != "down" {
		return nil, forge.Errorf(forge.EINVALID, "migrate %q: the directions are up and down", direction)
	}
	unlock, err := db.lockMigrations(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := db.SchemaStatus(ctx)
	if err != nil {
		return nil, err
	}
	if len(st.Unknown) > 0 {
		return nil, forge.WrapError(forge.ECONFLICT, ErrSchemaNewer, fmt.Sprintf(
			"the %s has schema version %d, but this forge knows versions up to %d: migrate it with the newer forge",
			db.where, st.Current, st.Latest))
	}
	p, err := db.provider()
	if err != nil {
		return nil, forge.WrapError(forge.EINTERNAL, err, "read embedded migrations")
	}
	var results []*goose.MigrationResult
	if direction == "up" {
		results, err = p.Up(ctx)
	} else {
		var r *goose.MigrationResult
		r, err = p.Down(ctx)
		if errors.Is(err, goose.ErrNoNextVersion) {
			err = nil
		}
		if r != nil {
			results = append(results, r)
		}
	}
	var partial *goose.PartialError
	if errors.As(err, &partial) {
		results = partial.Applied
	}
	var versions []int64
	for _, r := range results {
		if r.Error == nil && r.Source != nil {
			versions = append(versions, r.Source.Version)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return versions, db.fail(ctx, err, "migrate "+direction)
		}
		return versions, forge.WrapError(forge.EINTERNAL, err, "migrate "+direction+" "+db.where)
	}
	return versions, nil
}

// lockMigrations takes the SQLite migration lock: an exclusive flock on
// forge.db.migrate-lock, waited for while ctx allows, released when the
// returned function is called. On PostgreSQL goose's advisory lock does the
// work and this returns at once.
func (db *DB) lockMigrations(ctx context.Context) (func(), error) {
	if db.dialect != dialectSQLite {
		return func() {}, nil
	}
	f, err := os.OpenFile(db.lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, forge.WrapError(forge.EINTERNAL, err, "open migration lock")
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, forge.WrapError(forge.EINTERNAL, err, "lock "+db.lockPath)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, db.fail(ctx, ctx.Err(), "wait for another forge migrate to finish")
		case <-tick.C:
		}
	}
}

// versionList formats versions as "1, 2, 3".
func versionList(vs []int64) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = fmt.Sprint(v)
	}
	return strings.Join(s, ", ")
}
