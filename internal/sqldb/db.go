// Package sqldb keeps forge's state in SQL: SQLite (pure Go, one file in the
// data directory, the default) or PostgreSQL (for several server replicas).
// One *DB implements every store of the domain (forge.RepoStore,
// DeliveryStore, BuildStore, TokenStore and LogStore) on both databases with
// the same queries, and runs the embedded schema migrations.
//
// Opening a database never changes its schema: run Migrate (forge migrate
// up) first, and call CheckSchema (or PrepareSchema) before serving. The
// package reads no environment variables and no flags: its caller
// (cmd/forge) resolves the settings and passes a Config.
package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/forgeci/forge"
)

// FileName is the SQLite database's file name in the data directory.
const FileName = "forge.db"

// Config says which database to open.
type Config struct {
	// DataDir is forge's data directory; the SQLite database is
	// DataDir/forge.db. Required unless URL is set.
	DataDir string
	// URL, when set, is a postgres:// (or postgresql://) URL and the
	// database is PostgreSQL. Any other scheme is an error.
	URL string
}

// dialect is the SQL flavour of a database.
type dialect int

const (
	dialectSQLite dialect = iota
	dialectPostgres
)

func (d dialect) String() string {
	if d == dialectPostgres {
		return "postgres"
	}
	return "sqlite"
}

// DB is forge's database. It is safe for concurrent use.
//
// On SQLite every write goes through one connection (SQLite allows one
// writer at a time anyway), so writers in this process queue in Go and never
// see SQLITE_BUSY; other processes (forge migrate) are waited for with a busy
// timeout and BEGIN IMMEDIATE. Reads use a separate pool of read-only
// connections, which WAL lets run beside the writer.
//
// On PostgreSQL it uses pgx through database/sql: goose needs a *sql.DB, and
// one database/sql code path serves both databases; COPY is still reached
// through the pgx connection underneath (see Append).
type DB struct {
	dialect dialect
	w       *sql.DB // writes (and everything on PostgreSQL)
	r       *sql.DB // reads; the same as w on PostgreSQL
	// where describes the database for messages, without secrets.
	where string
	// lockPath is the SQLite migration lock file.
	lockPath string
	// lockID is the PostgreSQL advisory lock key of migrations, derived
	// from the database and schema so that only migrations of the same
	// schema exclude each other.
	lockID int64

	queries sync.Map // query text with ? -> the dialect's text
	// trace, when set (by tests), sees every query q is given: the
	// upgrade tests keep the queries of each schema version (testdata/
	// queries) and run the previous versions' on the newest schema.
	trace func(query string)
}

// busyTimeout bounds how long a SQLite writer waits for another process's
// write transaction before giving up.
const busyTimeout = 30 * time.Second

// Open opens the database cfg names. It creates the data directory and the
// SQLite file when they do not exist, and checks that the database answers;
// it does not migrate.
func Open(ctx context.Context, cfg Config) (*DB, error) {
	cfg.URL = strings.TrimSpace(cfg.URL)
	if cfg.URL != "" {
		u, err := url.Parse(cfg.URL)
		if err != nil {
			return nil, forge.Errorf(forge.EINVALID, "the database URL is not a URL: want postgres://USER:PASSWORD@HOST/DB, or none for SQLite in the data directory")
		}
		switch u.Scheme {
		case "postgres", "postgresql":
			return openPostgres(ctx, cfg.URL, u)
		}
		return nil, forge.Errorf(forge.EINVALID, "database URL scheme %q is not supported: use postgres://USER:PASSWORD@HOST/DB, or no URL for SQLite in the data directory", u.Scheme)
	}
	if cfg.DataDir == "" {
		return nil, forge.Errorf(forge.EINVALID, "neither a data directory (for SQLite) nor a PostgreSQL URL is configured")
	}
	return openSQLite(ctx, cfg.DataDir)
}

func openSQLite(ctx context.Context, dataDir string) (*DB, error) {
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, forge.WrapError(forge.EINVALID, err, fmt.Sprintf("data directory %q", dataDir))
	}
	if strings.ContainsAny(dir, "?#") {
		return nil, forge.Errorf(forge.EINVALID, "data directory %q: the path may not contain ? or #", dir)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, forge.WrapError(forge.EINVALID, err, fmt.Sprintf("cannot create data directory %s", dir))
	}
	path := filepath.Join(dir, FileName)
	// The database holds webhook payloads and token hashes: only forge's
	// user may read it. SQLite gives its -wal and -shm files the same mode.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, forge.WrapError(forge.EINVALID, err, fmt.Sprintf("cannot create SQLite database %s", path))
	}
	f.Close()
	ms := strconv.FormatInt(busyTimeout.Milliseconds(), 10)
	// synchronous=FULL: a committed transaction (an acknowledged webhook
	// delivery) survives a power loss, not only a crash.
	w, err := sql.Open("sqlite", path+"?_busy_timeout="+ms+"&_journal_mode=WAL&_foreign_keys=1&_synchronous=FULL&_txlock=immediate")
	if err != nil {
		return nil, forge.WrapError(forge.EINTERNAL, err, "open sqlite")
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	if err := w.PingContext(ctx); err != nil {
		w.Close()
		return nil, forge.WrapError(forge.EUNAVAILABLE, err, fmt.Sprintf("cannot open SQLite database %s", path))
	}
	r, err := sql.Open("sqlite", path+"?_busy_timeout="+ms+"&_foreign_keys=1&_query_only=1")
	if err != nil {
		w.Close()
		return nil, forge.WrapError(forge.EINTERNAL, err, "open sqlite")
	}
	r.SetMaxOpenConns(4)
	r.SetMaxIdleConns(4)
	if err := r.PingContext(ctx); err != nil {
		w.Close()
		r.Close()
		return nil, forge.WrapError(forge.EUNAVAILABLE, err, fmt.Sprintf("cannot open SQLite database %s", path))
	}
	return &DB{
		dialect:  dialectSQLite,
		w:        w,
		r:        r,
		where:    "SQLite database " + path,
		lockPath: path + ".migrate-lock",
	}, nil
}

func openPostgres(ctx context.Context, rawURL string, u *url.URL) (*DB, error) {
	where := "PostgreSQL database " + u.Redacted()
	db, err := sql.Open("pgx", rawURL)
	if err != nil {
		return nil, forge.WrapError(forge.EINVALID, err, fmt.Sprintf("bad database URL %s", u.Redacted()))
	}
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(8)
	db.SetConnMaxIdleTime(5 * time.Minute)
	var name, schema string
	err = db.QueryRowContext(ctx, "SELECT current_database(), coalesce(current_schema(), '')").Scan(&name, &schema)
	if err != nil {
		db.Close()
		return nil, forge.WrapError(forge.EUNAVAILABLE, err, "cannot reach "+where)
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "forge migrate %s.%s", name, schema)
	return &DB{
		dialect: dialectPostgres,
		w:       db,
		r:       db,
		where:   where,
		lockID:  int64(h.Sum64() >> 1),
	}, nil
}

// Close closes the database's connections.
func (db *DB) Close() error {
	err := db.w.Close()
	if db.r != db.w {
		err = errors.Join(err, db.r.Close())
	}
	return err
}

// Dialect returns "sqlite" or "postgres".
func (db *DB) Dialect() string { return db.dialect.String() }

// String describes the database for logs and messages, without passwords.
func (db *DB) String() string { return db.where }

// Ping checks that the database answers (for /readyz).
func (db *DB) Ping(ctx context.Context) error {
	if err := db.w.PingContext(ctx); err != nil {
		return forge.WrapError(forge.EUNAVAILABLE, err, "database unavailable")
	}
	return nil
}

// q returns query, written with ? placeholders, in the database's dialect.
func (db *DB) q(query string) string {
	if db.trace != nil {
		db.trace(query)
	}
	if db.dialect != dialectPostgres {
		return query
	}
	if s, ok := db.queries.Load(query); ok {
		return s.(string)
	}
	s := numberPlaceholders(query)
	db.queries.Store(query, s)
	return s
}

// numberPlaceholders turns each ? outside quotes into $1, $2, ...
func numberPlaceholders(query string) string {
	var b strings.Builder
	n := 0
	quoted := false
	for _, c := range query {
		switch {
		case c == '\'':
			quoted = !quoted
		case c == '?' && !quoted:
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}

// write runs fn in a write transaction and commits it when fn returns nil.
func (db *DB) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return db.fail(ctx, err, "begin transaction")
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return db.fail(ctx, err, "commit")
	}
	return nil
}

// read runs fn in a read-only transaction, so that its queries see one
// snapshot of the database.
func (db *DB) read(ctx context.Context, fn func(tx *sql.Tx) error) error {
	var opts *sql.TxOptions
	if db.dialect == dialectPostgres {
		opts = &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	tx, err := db.r.BeginTx(ctx, opts)
	if err != nil {
		return db.fail(ctx, err, "begin transaction")
	}
	defer tx.Rollback()
	return fn(tx)
}

// fail turns a database error into a forge error: ECANCELED or ETIMEOUT when
// ctx ended, ECONFLICT for a uniqueness violation, EINTERNAL otherwise.
// what says what was being done.
func (db *DB) fail(ctx context.Context, err error, what string) error {
	var fe *forge.Error
	switch {
	case errors.As(err, &fe):
		return err
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return forge.WrapError(forge.ETIMEOUT, err, what+": timed out")
	case errors.Is(err, context.Canceled) || ctx.Err() != nil:
		return forge.WrapError(forge.ECANCELED, err, what+": canceled")
	case isUnique(err):
		return forge.WrapError(forge.ECONFLICT, err, what+": already exists")
	}
	return forge.WrapError(forge.EINTERNAL, err, what)
}

// isUnique reports whether err is a uniqueness (or primary key) violation.
func isUnique(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// isForeignKey reports whether err is a foreign key violation.
func isForeignKey(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23503"
}

// notFound returns the ENOTFOUND error for a missing row.
func notFound(format string, args ...any) error {
	return forge.Errorf(forge.ENOTFOUND, format, args...)
}

// now is the current time as the database keeps it: UTC, microseconds.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// micros is t as stored: microseconds since the epoch, or NULL when t is
// zero.
func micros(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

// stamp returns t in the form the database gives back (UTC, microseconds),
// so a caller's struct matches what a later read returns.
func stamp(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC().Truncate(time.Microsecond)
}

// timeCol scans a nullable microsecond column into a time.Time.
type timeCol struct{ t *time.Time }

func (c timeCol) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*c.t = time.Time{}
	case int64:
		*c.t = time.UnixMicro(v).UTC()
	default:
		return fmt.Errorf("time column: unexpected %T", src)
	}
	return nil
}
