package sqldb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// helperEnv makes the test binary act as one `forge migrate up` process
// (see TestMain): the migration race runs across real processes.
const helperEnv = "FORGE_SQLDB_TEST_MIGRATE_HELPER"

// lockHelperEnv makes the test binary take the migration lock of the
// database described by its value, say "locked", and hold it until killed.
const lockHelperEnv = "FORGE_SQLDB_TEST_LOCK_HELPER"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(helperEnv); cfg != "" {
		os.Exit(migrateHelper(cfg))
	}
	if cfg := os.Getenv(lockHelperEnv); cfg != "" {
		os.Exit(lockHelper(cfg))
	}
	os.Exit(checkRecordedQueries(m.Run()))
}

// lockHelper holds the migration lock until the process dies.
func lockHelper(cfgJSON string) int {
	var cfg Config
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	db, err := Open(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if db.dialect == dialectSQLite {
		if _, err := db.lockMigrations(ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	} else {
		conn, err := db.w.Conn(ctx)
		if err == nil {
			_, err = conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", db.lockID)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	fmt.Println("locked")
	time.Sleep(time.Hour) // until the test kills it
	return 0
}

// migrateHelper opens the database described by cfgJSON, migrates it up
// and prints the versions it applied as JSON.
func migrateHelper(cfgJSON string) int {
	var cfg Config
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := Open(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer db.Close()
	applied, err := db.Migrate(ctx, "up")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if applied == nil {
		applied = []int64{}
	}
	json.NewEncoder(os.Stdout).Encode(applied)
	return 0
}

// latest returns the versions this forge knows.
func knownVersions(t *testing.T, db *DB) []int64 {
	t.Helper()
	known, err := db.knownMigrations()
	if err != nil {
		t.Fatal(err)
	}
	var vs []int64
	for _, m := range known {
		vs = append(vs, m.Version)
	}
	if len(vs) < 2 {
		t.Fatalf("known migrations: got %v, want at least two for these tests", vs)
	}
	return vs
}

// versionRows counts goose's rows per applied version.
func versionRows(t *testing.T, db *DB) map[int64]int {
	t.Helper()
	rows, err := db.sqlDB().Query("SELECT version_id FROM " + versionTable + " WHERE version_id > 0 AND is_applied")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]int{}
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		out[v]++
	}
	return out
}

func TestMigrateUpDownStatus(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := openTest(t, testConfig(t, kind))
		known := knownVersions(t, db)
		latest := known[len(known)-1]

		st, err := db.SchemaStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Current != 0 || st.Latest != latest || !reflect.DeepEqual(st.Pending, known) || len(st.Unknown) != 0 {
			t.Fatalf("status of a new database: got %+v, want current 0, latest %d, all pending", st, latest)
		}
		if st.Migrations[0].Name != "00001_init.sql" || st.Migrations[0].Applied {
			t.Fatalf("first migration: got %+v", st.Migrations[0])
		}
		err = db.CheckSchema(ctx)
		wantCode(t, err, forge.ECONFLICT)
		if !errors.Is(err, ErrSchemaPending) || !strings.Contains(err.Error(), fmt.Sprintf("needs %d migration(s)", len(known))) {
			t.Fatalf("CheckSchema of a new database: got %v, want ErrSchemaPending saying %d migrations are needed", err, len(known))
		}
		// Status changes nothing, not even goose's table.
		if _, err := db.ListRepos(ctx); err == nil {
			t.Fatal("ListRepos worked before migrating: status must not create the schema")
		}

		applied, err := db.Migrate(ctx, "up")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(applied, known) {
			t.Fatalf("up: applied %v, want %v", applied, known)
		}
		if err := db.CheckSchema(ctx); err != nil {
			t.Fatalf("CheckSchema after up: %v", err)
		}
		st, err = db.SchemaStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range st.Migrations {
			if !m.Applied || m.AppliedAt.IsZero() || time.Since(m.AppliedAt) > time.Hour {
				t.Fatalf("after up: migration %+v, want applied just now", m)
			}
		}
		if st.Current != latest || len(st.Pending) != 0 {
			t.Fatalf("status after up: got %+v", st)
		}
		again, err := db.Migrate(ctx, "up")
		if err != nil || len(again) != 0 {
			t.Fatalf("second up: got %v, %v; want nothing to do", again, err)
		}

		down, err := db.Migrate(ctx, "down")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(down, []int64{latest}) {
			t.Fatalf("down: rolled back %v, want [%d]", down, latest)
		}
		st, _ = db.SchemaStatus(ctx)
		if st.Current != known[len(known)-2] || !reflect.DeepEqual(st.Pending, []int64{latest}) {
			t.Fatalf("status after down: got %+v", st)
		}
		wantCode(t, db.CheckSchema(ctx), forge.ECONFLICT)
		for range len(known) - 1 {
			if _, err := db.Migrate(ctx, "down"); err != nil {
				t.Fatal(err)
			}
		}
		none, err := db.Migrate(ctx, "down")
		if err != nil || len(none) != 0 {
			t.Fatalf("down with nothing applied: got %v, %v; want nothing", none, err)
		}
		if _, err := db.ListRepos(ctx); err == nil {
			t.Fatal("ListRepos worked after rolling everything back")
		}
		applied, err = db.Migrate(ctx, "up")
		if err != nil || !reflect.DeepEqual(applied, known) {
			t.Fatalf("up after down: got %v, %v; want %v", applied, err, known)
		}
		mustRepo(t, db, "acme", "after")

		_, err = db.Migrate(ctx, "sideways")
		wantCode(t, err, forge.EINVALID)
	})
}

// newerSchema makes db look migrated by a newer forge: version 90001,
// unknown to this one, applied on top; recorded says what that forge wrote
// into forge_migrations: "" nothing, "additive" or "breaking".
func newerSchema(t *testing.T, db *DB, recorded string) {
	t.Helper()
	if _, err := db.sqlDB().Exec(db.q("INSERT INTO "+versionTable+" (version_id, is_applied) VALUES (?, ?)"), 90001, true); err != nil {
		t.Fatal(err)
	}
	if recorded == "" {
		return
	}
	breaking := 0
	if recorded == "breaking" {
		breaking = 1
	}
	if _, err := db.sqlDB().Exec(db.q("INSERT INTO "+compatTable+" (version, name, breaking) VALUES (?, ?, ?)"), 90001, "90001_future.sql", breaking); err != nil {
		t.Fatal(err)
	}
}

// TestSchemaNewerRefused: a schema newer than this forge knows, whose
// newer migration is breaking or not recorded either way, is refused by
// every entry point, with the reason.
func TestSchemaNewerRefused(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		for _, recorded := range []string{"", "breaking"} {
			ctx := context.Background()
			db := newTestDB(t, kind)
			newerSchema(t, db, recorded)
			st, err := db.SchemaStatus(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.Current != 90001 || !reflect.DeepEqual(st.Unknown, []int64{90001}) || st.Compatible {
				t.Fatalf("%q: status: got %+v, want current 90001 unknown, not compatible", recorded, st)
			}
			last := st.Migrations[len(st.Migrations)-1]
			if last.Version != 90001 || last.Name != "" || !last.Applied || last.Recorded != (recorded != "") || last.Breaking != (recorded == "breaking") {
				t.Fatalf("%q: unknown migration listed as %+v", recorded, last)
			}
			why := map[string]string{"": "did not record whether it is additive", "breaking": "marked breaking"}[recorded]
			err = db.CheckSchema(ctx)
			wantCode(t, err, forge.ECONFLICT)
			if !errors.Is(err, ErrSchemaNewer) || !strings.Contains(err.Error(), "90001") || !strings.Contains(err.Error(), why) {
				t.Fatalf("%q: CheckSchema: got %v, want ErrSchemaNewer naming version 90001 and saying %q", recorded, err, why)
			}
			for _, dir := range []string{"up", "down"} {
				_, err = db.Migrate(ctx, dir)
				if !errors.Is(err, ErrSchemaNewer) {
					t.Fatalf("%q: Migrate %s on a newer schema: got %v, want ErrSchemaNewer", recorded, dir, err)
				}
			}
			_, err = db.PrepareSchema(ctx, true)
			if !errors.Is(err, ErrSchemaNewer) {
				t.Fatalf("%q: PrepareSchema(auto) on a newer schema: got %v, want ErrSchemaNewer", recorded, err)
			}
		}
	})
}

// TestSchemaNewerCompatible: the rolling upgrade. A newer forge applied
// an additive migration and recorded it so; this forge runs on the
// schema: CheckSchema passes, migrate up has nothing to do, and
// PrepareSchema reports the newer version. Rolling back is left to the
// forge that knows the migration.
func TestSchemaNewerCompatible(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)
		newerSchema(t, db, "additive")
		st, err := db.SchemaStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Compatible || !reflect.DeepEqual(st.Unknown, []int64{90001}) {
			t.Fatalf("status: got %+v, want compatible with 90001 unknown", st)
		}
		if err := db.CheckSchema(ctx); err != nil {
			t.Fatalf("CheckSchema on an additive newer schema: %v", err)
		}
		for _, auto := range []bool{false, true} {
			p, err := db.PrepareSchema(ctx, auto)
			if err != nil || p.Created || len(p.Applied) != 0 || !reflect.DeepEqual(p.Newer, []int64{90001}) {
				t.Fatalf("PrepareSchema(%v): got %+v, %v; want nothing done, newer [90001]", auto, p, err)
			}
		}
		applied, err := db.Migrate(ctx, "up")
		if err != nil || len(applied) != 0 {
			t.Fatalf("Migrate up: got %v, %v; want nothing to do", applied, err)
		}
		if _, err := db.Migrate(ctx, "down"); !errors.Is(err, ErrSchemaNewer) {
			t.Fatalf("Migrate down: got %v, want ErrSchemaNewer", err)
		}
		mustRepo(t, db, "acme", "rolling")
	})
}

// TestMigrationsRecorded: Migrate keeps forge_migrations in line with the
// applied migrations, with each one's breaking mark, for older forges.
func TestMigrationsRecorded(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)
		known, err := db.knownMigrations()
		if err != nil {
			t.Fatal(err)
		}
		want := map[int64]bool{}
		for _, m := range known {
			want[m.Version] = m.Breaking
		}
		got, err := db.recordedMigrations(ctx)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("recorded after up: got %v, %v; want %v", got, err, want)
		}
		if _, err := db.Migrate(ctx, "down"); err != nil {
			t.Fatal(err)
		}
		delete(want, known[len(known)-1].Version)
		if got, err = db.recordedMigrations(ctx); err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("recorded after down: got %v, %v; want %v", got, err, want)
		}
		// A database migrated by a forge from before the record gets it
		// at the next migrate up.
		if _, err := db.sqlDB().Exec("DROP TABLE " + compatTable); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Migrate(ctx, "up"); err != nil {
			t.Fatal(err)
		}
		want[known[len(known)-1].Version] = known[len(known)-1].Breaking
		if got, err = db.recordedMigrations(ctx); err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("recorded after the table was lost: got %v, %v; want %v", got, err, want)
		}
	})
}

func TestPrepareSchema(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := openTest(t, testConfig(t, kind))
		known := knownVersions(t, db)
		latest := known[len(known)-1]
		// A new database: nothing to lose, the schema is created.
		p, err := db.PrepareSchema(ctx, false)
		if err != nil || !p.Created || !reflect.DeepEqual(p.Applied, known) {
			t.Fatalf("PrepareSchema of a new database: got %+v, %v; want created with %v", p, err, known)
		}
		if p, err = db.PrepareSchema(ctx, false); err != nil || p.Created || len(p.Applied) != 0 {
			t.Fatalf("PrepareSchema of a current schema: got %+v, %v; want nothing done", p, err)
		}
		// A database with a schema and a pending migration: refused
		// without auto.
		if _, err := db.Migrate(ctx, "down"); err != nil {
			t.Fatal(err)
		}
		if _, err := db.PrepareSchema(ctx, false); !errors.Is(err, ErrSchemaPending) {
			t.Fatalf("PrepareSchema with a pending migration, without auto: got %v, want ErrSchemaPending", err)
		}
		p, err = db.PrepareSchema(ctx, true)
		if err != nil || p.Created || !reflect.DeepEqual(p.Applied, []int64{latest}) {
			t.Fatalf("PrepareSchema(auto): got %+v, %v; want %d applied", p, err, latest)
		}
		p, err = db.PrepareSchema(ctx, true)
		if err != nil || len(p.Applied) != 0 {
			t.Fatalf("second PrepareSchema(auto): got %+v, %v; want nothing applied", p, err)
		}
	})
}

// TestMigrateRaceHandles starts Migrate up on several separate handles at
// once: every call succeeds, and each migration is applied exactly once.
// Without the lock the race fails most rounds; three rounds make a miss
// unlikely.
func TestMigrateRaceHandles(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		for round := range 3 {
			t.Run(fmt.Sprint("round", round), func(t *testing.T) { raceHandles(t, kind) })
		}
	})
}

func raceHandles(t *testing.T, kind string) {
	{
		ctx := context.Background()
		cfg := testConfig(t, kind)
		const n = 4
		dbs := make([]*DB, n)
		for i := range dbs {
			dbs[i] = openTest(t, cfg)
		}
		known := knownVersions(t, dbs[0])
		start := make(chan struct{})
		results := make([][]int64, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, db := range dbs {
			wg.Go(func() {
				<-start
				results[i], errs[i] = db.Migrate(ctx, "up")
			})
		}
		close(start)
		wg.Wait()
		checkRace(t, dbs[0], known, results, errs)
	}
}

// TestMigrateRaceProcesses is the same race between real processes, as two
// replicas running forge migrate up at once would be.
func TestMigrateRaceProcesses(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		for round := range 2 {
			t.Run(fmt.Sprint("round", round), func(t *testing.T) { raceProcesses(t, kind) })
		}
	})
}

func raceProcesses(t *testing.T, kind string) {
	{
		cfg := testConfig(t, kind)
		db := openTest(t, cfg)
		known := knownVersions(t, db)
		cfgJSON, _ := json.Marshal(cfg)
		const n = 3
		cmds := make([]*exec.Cmd, n)
		outs := make([]*strings.Builder, n)
		for i := range cmds {
			cmds[i] = exec.Command(os.Args[0])
			cmds[i].Env = append(os.Environ(), helperEnv+"="+string(cfgJSON))
			outs[i] = new(strings.Builder)
			cmds[i].Stdout = outs[i]
			cmds[i].Stderr = outs[i]
		}
		for _, c := range cmds {
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
		}
		results := make([][]int64, n)
		errs := make([]error, n)
		for i, c := range cmds {
			if err := c.Wait(); err != nil {
				errs[i] = fmt.Errorf("process %d: %v: %s", i, err, outs[i])
				continue
			}
			if err := json.Unmarshal([]byte(outs[i].String()), &results[i]); err != nil {
				errs[i] = fmt.Errorf("process %d output %q: %v", i, outs[i], err)
			}
		}
		checkRace(t, db, known, results, errs)
	}
}

// checkRace checks the outcome of concurrent migrations: no errors, every
// known version applied by exactly one of them, and recorded once.
func checkRace(t *testing.T, db *DB, known []int64, results [][]int64, errs []error) {
	t.Helper()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("concurrent migrate up: %v", err)
		}
	}
	var all []int64
	for _, r := range results {
		all = append(all, r...)
	}
	sort.Slice(all, func(i, k int) bool { return all[i] < all[k] })
	if !reflect.DeepEqual(all, known) {
		t.Fatalf("versions applied across the racers: got %v (per racer %v), want %v once each", all, results, known)
	}
	rows := versionRows(t, db)
	for _, v := range known {
		if rows[v] != 1 {
			t.Fatalf("goose's table: version %d recorded %d times, want once (%v)", v, rows[v], rows)
		}
	}
	if err := db.CheckSchema(context.Background()); err != nil {
		t.Fatalf("CheckSchema after the race: %v", err)
	}
}

// TestMigrateWaitsForLock: while another process holds the migration lock
// (the SQLite lock file, or the PostgreSQL advisory lock), Migrate waits,
// gives up when its context ends, and runs once the lock is released.
func TestMigrateWaitsForLock(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		cfg := testConfig(t, kind)
		holder := openTest(t, cfg)
		db := openTest(t, cfg)
		var unlock func()
		if kind == "sqlite" {
			var err error
			if unlock, err = holder.lockMigrations(context.Background()); err != nil {
				t.Fatal(err)
			}
		} else {
			conn, err := holder.sqlDB().Conn(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.ExecContext(context.Background(), "SELECT pg_advisory_lock($1)", holder.lockID); err != nil {
				t.Fatal(err)
			}
			unlock = func() {
				if _, err := conn.ExecContext(context.Background(), "SELECT pg_advisory_unlock($1)", holder.lockID); err != nil {
					t.Error(err)
				}
				conn.Close()
			}
		}
		wait := 300 * time.Millisecond
		if kind == "postgres" {
			wait = 800 * time.Millisecond // a PostgreSQL connection per try
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		began := time.Now()
		_, err := db.Migrate(ctx, "up")
		if code := forge.ErrorCode(err); code != forge.ETIMEOUT && code != forge.ECANCELED {
			t.Fatalf("Migrate while locked: got %v (%s), want a timeout", err, code)
		}
		if waited := time.Since(began); waited < wait*3/4 {
			t.Fatalf("Migrate gave up after %v, want it to wait for the lock until its deadline", waited)
		}
		if st, _ := db.SchemaStatus(context.Background()); st.Current != 0 {
			t.Fatalf("Migrate changed the schema without the lock: %+v", st)
		}
		done := make(chan error, 1)
		go func() {
			_, err := db.Migrate(context.Background(), "up")
			done <- err
		}()
		time.Sleep(200 * time.Millisecond)
		select {
		case err := <-done:
			t.Fatalf("Migrate finished (%v) while the lock was held", err)
		default:
		}
		unlock()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Migrate did not finish after the lock was released")
		}
		if err := db.CheckSchema(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	for _, tt := range []struct {
		name string
		cfg  Config
		code string
		says string
	}{
		{"nothing", Config{}, forge.EINVALID, "neither a data directory"},
		{"mysql", Config{URL: "mysql://u@h/db"}, forge.EINVALID, `scheme "mysql"`},
		{"not a url", Config{URL: "postgres://%zz"}, forge.EINVALID, "not a URL"},
		{"data dir is a file", Config{DataDir: file}, forge.EINVALID, "data directory"},
		{"postgres down", Config{URL: "postgres://u:secret@127.0.0.1:1/db?connect_timeout=2"}, forge.EUNAVAILABLE, "cannot reach"},
	} {
		db, err := Open(ctx, tt.cfg)
		if err == nil {
			db.Close()
		}
		if forge.ErrorCode(err) != tt.code || !strings.Contains(forge.ErrorMessage(err), tt.says) {
			t.Errorf("%s: got %v (%s), want %s saying %q", tt.name, err, forge.ErrorCode(err), tt.code, tt.says)
		}
		if strings.Contains(forge.ErrorMessage(err), "secret") {
			t.Errorf("%s: the message shows the password: %s", tt.name, forge.ErrorMessage(err))
		}
	}

	dir := filepath.Join(t.TempDir(), "new", "data")
	db := openTest(t, Config{DataDir: dir})
	if db.Dialect() != "sqlite" || !strings.Contains(db.String(), filepath.Join(dir, FileName)) {
		t.Fatalf("opened %s (%s), want SQLite at %s", db, db.Dialect(), filepath.Join(dir, FileName))
	}
	if err := db.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Migrate(ctx, "up"); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{FileName, FileName + "-wal", FileName + "-shm"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if mode := fi.Mode().Perm(); mode&0o077 != 0 {
			t.Errorf("%s has mode %v, want no access for group and others", f, mode)
		}
	}
	var mode string
	if err := db.sqlDB().QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal mode: got %q, %v; want wal", mode, err)
	}
	var fk int
	if err := db.r.QueryRow("PRAGMA foreign_keys").Scan(&fk); err != nil || fk != 1 {
		t.Fatalf("foreign keys on the read pool: got %d, %v; want 1", fk, err)
	}
}

func TestNumberPlaceholders(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"SELECT 1", "SELECT 1"},
		{"a = ? AND b = ?", "a = $1 AND b = $2"},
		{"x = '?' AND y = ?", "x = '?' AND y = $1"},
		{"IN (?, ?, ?)", "IN ($1, $2, $3)"},
	} {
		if got := numberPlaceholders(tt.in); got != tt.want {
			t.Errorf("numberPlaceholders(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestMigrationsAdditive guards the rule of migrations/README.md: both
// dialects have the same migrations, marked breaking alike, and no up
// migration that is not marked breaking drops, renames, retypes or
// tightens anything, so the previous release keeps working on the new
// schema. (TestUpgrade proves it by running the previous queries.)
func TestMigrationsAdditive(t *testing.T) {
	forbidden := regexp.MustCompile(`(?i)\b(DROP\s|RENAME\s|ALTER\s+COLUMN\s+\S+\s+(SET\s+DATA\s+)?TYPE\b|SET\s+NOT\s+NULL|TRUNCATE\s|DELETE\s+FROM)`)
	names := map[string][]string{}
	breaking := map[string][]string{}
	for _, d := range []string{"sqlite", "postgres"} {
		files, err := fs.Glob(migrationFiles, "migrations/"+d+"/*.sql")
		if err != nil || len(files) == 0 {
			t.Fatalf("%s migrations: %v, %v", d, files, err)
		}
		for _, f := range files {
			names[d] = append(names[d], path.Base(f))
			body, err := migrationFiles.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			text := string(body)
			if isBreaking(body) {
				breaking[d] = append(breaking[d], path.Base(f))
				continue
			}
			up := strings.Index(text, "-- +goose Up")
			down := strings.Index(text, "-- +goose Down")
			if up < 0 || down < up {
				t.Fatalf("%s: want a -- +goose Up section followed by a -- +goose Down section", f)
			}
			for i, line := range strings.Split(text[up:down], "\n") {
				code, _, _ := strings.Cut(line, "--")
				if m := forbidden.FindString(code); m != "" {
					t.Errorf("%s: up migration line %d uses %q: migrations are additive only (see migrations/README.md)", f, i+1, strings.TrimSpace(m))
				}
			}
		}
	}
	if !reflect.DeepEqual(names["sqlite"], names["postgres"]) {
		t.Fatalf("the dialects' migrations differ: sqlite %v, postgres %v", names["sqlite"], names["postgres"])
	}
	if !reflect.DeepEqual(breaking["sqlite"], breaking["postgres"]) {
		t.Fatalf("the dialects mark different migrations %q: sqlite %v, postgres %v", BreakingMarker, breaking["sqlite"], breaking["postgres"])
	}
}

// TestMigrateAfterLockHolderKilled: a forge migrate killed with SIGKILL
// while holding the lock does not block the next one (the kernel drops
// the file lock; PostgreSQL ends the session and its advisory lock).
func TestMigrateAfterLockHolderKilled(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		cfg := testConfig(t, kind)
		db := openTest(t, cfg)
		cfgJSON, _ := json.Marshal(cfg)
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), lockHelperEnv+"="+string(cfgJSON))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		buf := make([]byte, 6)
		if _, err := io.ReadFull(out, buf); err != nil || string(buf) != "locked" {
			t.Fatalf("lock holder said %q, %v", buf, err)
		}
		// Held: Migrate waits.
		ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
		_, err = db.Migrate(ctx, "up")
		cancel()
		if err == nil {
			t.Fatal("Migrate ran while another process held the lock")
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		applied, err := db.Migrate(ctx, "up")
		if err != nil || len(applied) == 0 {
			t.Fatalf("Migrate after the holder was killed: got %v, %v; want the migrations applied", applied, err)
		}
	})
}
