package sqldb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/forgeci/forge"
)

// migrationFiles holds the schema migrations, one folder per dialect (see
// migrations/README.md: they are additive unless marked breaking).
//
//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrationFiles embed.FS

// versionTable is goose's table of applied migrations.
const versionTable = goose.DefaultTablename

// compatTable records, for each applied migration, whether a forge that
// does not know it may run on the schema it leaves. Migrate writes it, so
// that an older forge, which cannot read a newer forge's migration files,
// can still tell an additive newer schema (it runs on it) from a breaking
// one (it refuses). It is forge's own bookkeeping, like goose's table, not
// part of the schema the stores use.
const compatTable = "forge_migrations"

// BreakingMarker, at the start of a line of a migration file, marks the
// migration as one the previous forge release cannot run on (see
// migrations/README.md). Migrations without it are additive: they only add
// tables, nullable or defaulted columns, and indexes.
const BreakingMarker = "-- forge:breaking"

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
	// Breaking reports that forges older than this migration cannot run
	// on the schema it leaves: from the file's BreakingMarker when this
	// forge knows the migration, else from what the forge that applied it
	// recorded.
	Breaking bool
	// Recorded is false for an applied migration this forge does not
	// know whose forge did not record whether it is breaking (a forge
	// from before that record existed). Always true for known migrations.
	Recorded bool
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
	// Compatible reports that this forge can run on the schema as it is:
	// nothing is pending, and every unknown (newer) migration was recorded
	// by the forge that applied it as additive.
	Compatible bool
}

// migrationsFS returns the migrations of the database's dialect.
func (db *DB) migrationsFS() fs.FS {
	sub, err := fs.Sub(migrationFiles, "migrations/"+db.dialect.String())
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	return sub
}

// provider returns a goose provider for the database. It takes no lock of
// its own: Migrate holds lockMigrations around everything it does.
func (db *DB) provider() (*goose.Provider, error) {
	gd := goose.DialectSQLite3
	if db.dialect == dialectPostgres {
		gd = goose.DialectPostgres
	}
	return goose.NewProvider(gd, db.w, db.migrationsFS(), goose.WithDisableGlobalRegistry(true))
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
		name := path.Base(s.Path)
		body, err := fs.ReadFile(db.migrationsFS(), name)
		if err != nil {
			return nil, forge.WrapError(forge.EINTERNAL, err, "read embedded migration "+name)
		}
		out = append(out, Migration{Version: s.Version, Name: name, Breaking: isBreaking(body), Recorded: true})
	}
	return out, nil
}

// isBreaking reports whether a migration file carries BreakingMarker.
func isBreaking(body []byte) bool {
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), BreakingMarker) {
			return true
		}
	}
	return false
}

// tableExists reports whether the table name exists (in the search path
// on PostgreSQL).
func (db *DB) tableExists(ctx context.Context, name string) (bool, error) {
	var exists bool
	var err error
	if db.dialect == dialectPostgres {
		err = db.r.QueryRowContext(ctx, "SELECT to_regclass($1) IS NOT NULL", name).Scan(&exists)
	} else {
		var n int
		err = db.r.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", name).Scan(&n)
		exists = n > 0
	}
	if err != nil {
		return false, db.fail(ctx, err, "read schema version")
	}
	return exists, nil
}

// appliedMigrations reads goose's table: applied version -> when. It does
// not create the table: a database nobody migrated has nothing applied.
func (db *DB) appliedMigrations(ctx context.Context) (map[int64]time.Time, error) {
	applied := map[int64]time.Time{}
	if exists, err := db.tableExists(ctx, versionTable); err != nil || !exists {
		return applied, err
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

// recordedMigrations reads compatTable: version -> breaking. A database
// without the table has nothing recorded.
func (db *DB) recordedMigrations(ctx context.Context) (map[int64]bool, error) {
	out := map[int64]bool{}
	if exists, err := db.tableExists(ctx, compatTable); err != nil || !exists {
		return out, err
	}
	rows, err := db.r.QueryContext(ctx, "SELECT version, breaking FROM "+compatTable)
	if err != nil {
		return nil, db.fail(ctx, err, "read "+compatTable)
	}
	defer rows.Close()
	for rows.Next() {
		var v, breaking int64
		if err := rows.Scan(&v, &breaking); err != nil {
			return nil, db.fail(ctx, err, "read "+compatTable)
		}
		out[v] = breaking != 0
	}
	if err := rows.Err(); err != nil {
		return nil, db.fail(ctx, err, "read "+compatTable)
	}
	return out, nil
}

// recordMigrations brings compatTable in line with goose's table for the
// migrations this forge knows: a row for each applied one, none for the
// others. Rows of migrations it does not know are left alone. Migrate
// calls it under the migration lock, after up and down, so a database
// migrated by a forge from before compatTable gets its rows at the next
// forge migrate up.
func (db *DB) recordMigrations(ctx context.Context) error {
	known, err := db.knownMigrations()
	if err != nil {
		return err
	}
	applied, err := db.appliedMigrations(ctx)
	if err != nil {
		return err
	}
	return db.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+compatTable+
			" (version BIGINT PRIMARY KEY, name TEXT NOT NULL, breaking INTEGER NOT NULL)")
		if err != nil {
			return db.fail(ctx, err, "create "+compatTable)
		}
		for _, m := range known {
			if _, ok := applied[m.Version]; !ok {
				if _, err := tx.ExecContext(ctx, db.q("DELETE FROM "+compatTable+" WHERE version = ?"), m.Version); err != nil {
					return db.fail(ctx, err, "update "+compatTable)
				}
				continue
			}
			breaking := 0
			if m.Breaking {
				breaking = 1
			}
			_, err := tx.ExecContext(ctx, db.q("INSERT INTO "+compatTable+" (version, name, breaking) VALUES (?, ?, ?)"+
				" ON CONFLICT (version) DO UPDATE SET name = excluded.name, breaking = excluded.breaking"), m.Version, m.Name, breaking)
			if err != nil {
				return db.fail(ctx, err, "update "+compatTable)
			}
		}
		return nil
	})
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

// SchemaStatus reports which migrations are applied, pending and unknown,
// and whether this forge can run on the schema. It changes nothing and
// takes no lock.
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
	st.Compatible = len(st.Pending) == 0
	var recorded map[int64]bool
	for v, at := range applied {
		st.Current = max(st.Current, v)
		if seen[v] {
			continue
		}
		if recorded == nil {
			if recorded, err = db.recordedMigrations(ctx); err != nil {
				return Status{}, err
			}
		}
		breaking, ok := recorded[v]
		st.Unknown = append(st.Unknown, v)
		st.Migrations = append(st.Migrations, Migration{Version: v, Applied: true, AppliedAt: at, Breaking: breaking, Recorded: ok})
		if breaking || !ok {
			st.Compatible = false
		}
	}
	sort.Slice(st.Migrations, func(i, k int) bool { return st.Migrations[i].Version < st.Migrations[k].Version })
	sort.Slice(st.Unknown, func(i, k int) bool { return st.Unknown[i] < st.Unknown[k] })
	return st, nil
}

// CheckSchema returns nil when this forge can run on the database's
// schema (Status.Compatible): every migration it knows is applied, and
// any newer one, applied by a newer forge, is additive. Otherwise it
// returns an ECONFLICT error whose message says what is wrong (the caller
// adds what to run); its cause is ErrSchemaPending (migrations to apply)
// or ErrSchemaNewer (a newer forge applied a breaking migration, or did
// not record whether its migrations are additive). forge server calls it
// before serving and from /readyz.
func (db *DB) CheckSchema(ctx context.Context) error {
	st, err := db.SchemaStatus(ctx)
	if err != nil {
		return err
	}
	return db.schemaError(st)
}

// schemaError is CheckSchema's verdict on st.
func (db *DB) schemaError(st Status) error {
	if st.Compatible {
		return nil
	}
	if len(st.Unknown) > 0 {
		return forge.WrapError(forge.ECONFLICT, ErrSchemaNewer, fmt.Sprintf(
			"the %s has schema version %d, newer than this forge knows (%d), and %s",
			db.where, st.Current, st.Latest, whyIncompatible(st)))
	}
	return forge.WrapError(forge.ECONFLICT, ErrSchemaPending, fmt.Sprintf(
		"the %s needs %d migration(s) (%s)", db.where, len(st.Pending), versionList(st.Pending)))
}

// whyIncompatible says why this forge cannot run on a newer schema.
func whyIncompatible(st Status) string {
	var breaking, unrecorded []int64
	for _, m := range st.Migrations {
		switch {
		case m.Name != "":
		case !m.Recorded:
			unrecorded = append(unrecorded, m.Version)
		case m.Breaking:
			breaking = append(breaking, m.Version)
		}
	}
	switch {
	case len(breaking) > 0:
		return fmt.Sprintf("migration %s is marked breaking: older forges cannot run on it", versionList(breaking))
	case len(unrecorded) > 0:
		return fmt.Sprintf("the forge that applied migration %s did not record whether it is additive", versionList(unrecorded))
	}
	return fmt.Sprintf("this forge's migration %s is not applied", versionList(st.Pending))
}

// Prepared says what PrepareSchema did and found.
type Prepared struct {
	// Created is true when the database had no migration applied (a new
	// database): PrepareSchema created the schema.
	Created bool
	// Applied lists the versions PrepareSchema migrated up.
	Applied []int64
	// Newer lists applied versions newer than this forge knows, all
	// additive: this forge runs on them.
	Newer []int64
}

// PrepareSchema is what forge server runs at start. On a database with no
// migration applied nothing can be lost, so it creates the schema; with
// auto it migrates up whatever the database holds. Both migrate under the
// migration lock (Migrate). Then it checks the schema as CheckSchema does:
// pending migrations of a database that has a schema are not applied
// without auto.
func (db *DB) PrepareSchema(ctx context.Context, auto bool) (Prepared, error) {
	var p Prepared
	st, err := db.SchemaStatus(ctx)
	if err != nil {
		return p, err
	}
	if st.Current == 0 || auto {
		p.Created = st.Current == 0
		if p.Applied, err = db.Migrate(ctx, "up"); err != nil {
			return p, err
		}
		if st, err = db.SchemaStatus(ctx); err != nil {
			return p, err
		}
	}
	p.Newer = st.Unknown
	return p, db.schemaError(st)
}

// Migrate changes the schema: "up" applies every pending migration, "down"
// rolls back the latest applied one. It returns the versions it applied or
// rolled back, in order (none when there was nothing to do).
//
// Migrations hold a lock so that two processes never migrate at once: a
// PostgreSQL session advisory lock keyed by database and schema, or on
// SQLite an exclusive lock on the file forge.db.migrate-lock beside the
// database. A second Migrate waits for the first (while ctx allows), then
// finds nothing left to do.
//
// On a schema newer than this forge knows, "up" does nothing when this
// forge can run on it (Status.Compatible) and otherwise refuses with
// ECONFLICT, cause ErrSchemaNewer; "down" always refuses: only a forge
// that knows the newest migration may roll it back.
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
		if direction == "up" {
			return nil, db.schemaError(st)
		}
		return nil, forge.WrapError(forge.ECONFLICT, ErrSchemaNewer, fmt.Sprintf(
			"the %s has schema version %d, newer than this forge knows (%d): only a forge that knows it may roll it back",
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
	if err == nil {
		err = db.recordMigrations(ctx)
	} else {
		_ = db.recordMigrations(ctx) // what was applied before the failure
	}
	if err != nil {
		if ctx.Err() != nil {
			return versions, db.fail(ctx, err, "migrate "+direction)
		}
		return versions, forge.WrapError(forge.EINTERNAL, err, "migrate "+direction+" "+db.where)
	}
	return versions, nil
}

// lockPoll is how often a waiting Migrate tries the lock again.
const lockPoll = 50 * time.Millisecond

// lockMigrations takes the migration lock, waiting for it while ctx
// allows, and returns the function that releases it. On SQLite it is an
// exclusive flock on forge.db.migrate-lock; on PostgreSQL a session
// advisory lock (keyed by lockID) held by one connection. The kernel, or
// PostgreSQL when the session ends, releases it if the process dies.
func (db *DB) lockMigrations(ctx context.Context) (func(), error) {
	if db.dialect == dialectPostgres {
		return db.lockPostgres(ctx)
	}
	f, err := os.OpenFile(db.lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, forge.WrapError(forge.EINTERNAL, err, "open migration lock")
	}
	tick := time.NewTicker(lockPoll)
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

// lockPostgres takes the PostgreSQL migration lock (see lockMigrations).
func (db *DB) lockPostgres(ctx context.Context) (func(), error) {
	conn, err := db.w.Conn(ctx)
	if err != nil {
		return nil, db.fail(ctx, err, "take the migration lock")
	}
	tick := time.NewTicker(lockPoll)
	defer tick.Stop()
	for {
		var ok bool
		if err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock($1)", db.lockID).Scan(&ok); err != nil {
			conn.Close()
			return nil, db.fail(ctx, err, "take the migration lock")
		}
		if ok {
			return func() {
				// Closing a connection that still holds the lock would
				// return it to the pool locked: unlock first, and drop
				// the connection if that fails.
				_, err := conn.ExecContext(context.Background(), "SELECT pg_advisory_unlock($1)", db.lockID)
				if err != nil {
					_ = conn.Raw(func(any) error { return driver.ErrBadConn })
				}
				conn.Close()
			}, nil
		}
		select {
		case <-ctx.Done():
			conn.Close()
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
