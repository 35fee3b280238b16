package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/stdlib"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// The upgrade tests are written over the list of migrations and the
// database's own description of its tables, so that each new migration is
// covered without a change here: TestUpgrade checks every earlier version
// against the newest, on both dialects.

// column is a column as the database describes it.
type column struct {
	Name    string
	Type    string // as declared (SQLite) or information_schema's data_type
	NotNull bool
	Default bool // has a default (or is an identity column)
	PK      bool
}

// table is a table as the database describes it.
type table struct {
	Name    string
	Columns []column
	// FKs maps a column to the table and column it references.
	FKs map[string][2]string
}

func (t *table) column(name string) (column, bool) {
	for _, c := range t.Columns {
		if c.Name == name {
			return c, true
		}
	}
	return column{}, false
}

// bookkeeping tables are not the stores' schema.
var bookkeeping = map[string]bool{versionTable: true, compatTable: true, "sqlite_sequence": true}

// describe returns the tables of db's schema, by name.
func describe(t *testing.T, db *DB) map[string]*table {
	t.Helper()
	ctx := context.Background()
	var names []string
	var err error
	if db.dialect == dialectPostgres {
		names, err = strings1(db.w.QueryContext(ctx, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"))
	} else {
		// Full-text (virtual) tables and their shadow tables are the
		// FTS5 module's to fill: their rows come from the indexer only.
		names, err = strings1(db.w.QueryContext(ctx, `SELECT name FROM sqlite_master m WHERE type = 'table'
AND sql NOT LIKE 'CREATE VIRTUAL TABLE%'
AND NOT EXISTS (SELECT 1 FROM sqlite_master v WHERE v.sql LIKE 'CREATE VIRTUAL TABLE%' AND m.name LIKE v.name || '\_%' ESCAPE '\')`))
	}
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	out := map[string]*table{}
	for _, name := range names {
		if bookkeeping[name] {
			continue
		}
		tb := &table{Name: name, FKs: map[string][2]string{}}
		if db.dialect == dialectPostgres {
			describePostgres(t, db, tb)
		} else {
			describeSQLite(t, db, tb)
		}
		out[name] = tb
	}
	return out
}

func describeSQLite(t *testing.T, db *DB, tb *table) {
	rows, err := db.w.Query("SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info(?)", tb.Name)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var c column
		var pk int
		if err := rows.Scan(&c.Name, &c.Type, &c.NotNull, &c.Default, &pk); err != nil {
			t.Fatal(err)
		}
		c.PK = pk > 0
		tb.Columns = append(tb.Columns, c)
	}
	rows.Close()
	rows, err = db.w.Query(`SELECT "from", "table", "to" FROM pragma_foreign_key_list(?)`, tb.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var from, to string
		var ref [2]string
		if err := rows.Scan(&from, &ref[0], &to); err != nil {
			t.Fatal(err)
		}
		ref[1] = to
		tb.FKs[from] = ref
	}
}

func describePostgres(t *testing.T, db *DB, tb *table) {
	rows, err := db.w.Query(`SELECT c.column_name, c.data_type, c.is_nullable = 'NO',
		c.column_default IS NOT NULL OR c.is_identity = 'YES',
		EXISTS (SELECT 1 FROM information_schema.table_constraints tc
			JOIN information_schema.key_column_usage k ON k.constraint_name = tc.constraint_name AND k.table_schema = tc.table_schema
			WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = c.table_schema AND tc.table_name = c.table_name AND k.column_name = c.column_name)
		FROM information_schema.columns c
		WHERE c.table_schema = current_schema() AND c.table_name = $1 ORDER BY c.ordinal_position`, tb.Name)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var c column
		if err := rows.Scan(&c.Name, &c.Type, &c.NotNull, &c.Default, &c.PK); err != nil {
			t.Fatal(err)
		}
		tb.Columns = append(tb.Columns, c)
	}
	rows.Close()
	rows, err = db.w.Query(`SELECT k.column_name, u.table_name, u.column_name
		FROM information_schema.table_constraints tc
		JOIN information_schema.key_column_usage k ON k.constraint_name = tc.constraint_name AND k.table_schema = tc.table_schema
		JOIN information_schema.constraint_column_usage u ON u.constraint_name = tc.constraint_name AND u.table_schema = tc.table_schema
		WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_schema = current_schema() AND tc.table_name = $1`, tb.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var from string
		var ref [2]string
		if err := rows.Scan(&from, &ref[0], &ref[1]); err != nil {
			t.Fatal(err)
		}
		tb.FKs[from] = ref
	}
}

// strings1 reads a one-column result of strings.
func strings1(rows *sql.Rows, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// insertOrder sorts tables so that each comes after those it references.
func insertOrder(t *testing.T, tables map[string]*table) []*table {
	var order []*table
	done := map[string]bool{}
	var visit func(name string, path []string)
	visit = func(name string, path []string) {
		if done[name] {
			return
		}
		for _, p := range path {
			if p == name {
				t.Fatalf("foreign keys form a cycle: %v", append(path, name))
			}
		}
		tb := tables[name]
		refs := make([]string, 0, len(tb.FKs))
		for _, ref := range tb.FKs {
			if ref[0] != name {
				refs = append(refs, ref[0])
			}
		}
		sort.Strings(refs)
		for _, r := range refs {
			visit(r, append(path, name))
		}
		done[name] = true
		order = append(order, tb)
	}
	names := make([]string, 0, len(tables))
	for n := range tables {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		visit(n, nil)
	}
	return order
}

// rowsPerTable is how many rows seed writes into each table.
const rowsPerTable = 2

// seed writes rowsPerTable rows into every table of the schema, with a
// distinct value in every column (primary keys 1, 2, ...; foreign keys
// pointing at the row of the same index of the referenced table), and
// returns the tables in insert order.
func seed(t *testing.T, db *DB, tables map[string]*table) []*table {
	t.Helper()
	order := insertOrder(t, tables)
	values := map[string][]map[string]any{}
	for _, tb := range order {
		for i := range rowsPerTable {
			row := map[string]any{}
			var cols, marks []string
			var args []any
			for k, c := range tb.Columns {
				var v any
				if ref, ok := tb.FKs[c.Name]; ok {
					v = values[ref[0]][i][ref[1]]
				} else {
					v = sampleValue(t, db, tb.Name, c, i, k)
				}
				row[c.Name] = v
				cols = append(cols, c.Name)
				marks = append(marks, "?")
				args = append(args, v)
			}
			values[tb.Name] = append(values[tb.Name], row)
			q := fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", tb.Name, strings.Join(cols, ", "), strings.Join(marks, ", "))
			if _, err := db.w.Exec(db.q(q), args...); err != nil {
				t.Fatalf("seed %s: %v", q, err)
			}
		}
	}
	return order
}

// sampleValue is the value of column c in row i of table tbl: distinct
// per row and column, of the column's type.
func sampleValue(t *testing.T, db *DB, tbl string, c column, i, k int) any {
	ty := strings.ToLower(c.Type)
	switch {
	case c.PK && strings.Contains(ty, "int"):
		return int64(i + 1)
	case strings.Contains(ty, "int") || ty == "numeric":
		return int64(1000*(i+1) + k)
	case ty == "boolean":
		return i%2 == 0
	case ty == "real" || ty == "double precision":
		return float64(i) + 0.5
	case ty == "tsvector":
		return fmt.Sprintf("%s %s %d", tbl, c.Name, i)
	case strings.Contains(ty, "text") || strings.Contains(ty, "char"):
		return fmt.Sprintf("%s.%s.%d", tbl, c.Name, i)
	case ty == "blob" || ty == "bytea":
		return []byte(fmt.Sprintf("%s.%s.%d", tbl, c.Name, i))
	}
	t.Fatalf("%s.%s has type %q: teach sampleValue (upgrade_test.go) a value for it", tbl, c.Name, c.Type)
	return nil
}

// readRows reads columns cols of every row of tbl, ordered by them.
func readRows(t *testing.T, db *DB, tbl string, cols []string) [][]any {
	t.Helper()
	rows, err := db.w.Query(fmt.Sprintf("SELECT %s FROM %s ORDER BY %s", strings.Join(cols, ", "), tbl, strings.Join(cols, ", ")))
	if err != nil {
		t.Fatalf("read %s: %v", tbl, err)
	}
	defer rows.Close()
	var out [][]any
	for rows.Next() {
		row := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range row {
			ptrs[i] = &row[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// migrateTo migrates db up to version exactly, as the forge of that
// version did (without this forge's bookkeeping).
func migrateTo(t *testing.T, db *DB, version int64) {
	t.Helper()
	p, err := db.provider()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(context.Background(), version); err != nil {
		t.Fatalf("migrate up to %d: %v", version, err)
	}
}

// TestUpgrade: for every earlier schema version, a database at that
// version with rows in every table migrates up to the newest and reads
// back the same rows, and the newest schema keeps every table and column
// of the earlier one, with the same type, no stricter, and adds only
// columns that are nullable or have a default (so the earlier version's
// INSERTs still work). Across a migration marked breaking only the rows
// of the columns that remain are compared. TestPreviousQueries runs the
// earlier versions' queries on the newest schema.
func TestUpgrade(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		db := openTest(t, testConfig(t, kind))
		known, err := db.knownMigrations()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range known[:len(known)-1] {
			t.Run(fmt.Sprintf("from%05d", m.Version), func(t *testing.T) {
				upgradeFrom(t, kind, m.Version, known)
			})
		}
	})
}

func upgradeFrom(t *testing.T, kind string, from int64, known []Migration) {
	ctx := context.Background()
	db := openTest(t, testConfig(t, kind))
	migrateTo(t, db, from)
	before := describe(t, db)
	if len(before) == 0 {
		t.Fatalf("schema version %d has no tables", from)
	}
	order := seed(t, db, before)
	rows := map[string][][]any{}
	for _, tb := range order {
		rows[tb.Name] = readRows(t, db, tb.Name, columnNames(tb))
		if len(rows[tb.Name]) != rowsPerTable {
			t.Fatalf("%s: seeded %d rows, read %d", tb.Name, rowsPerTable, len(rows[tb.Name]))
		}
	}

	applied, err := db.Migrate(ctx, "up")
	if err != nil {
		t.Fatalf("migrate up from %d: %v", from, err)
	}
	var want []int64
	for _, m := range known {
		if m.Version > from {
			want = append(want, m.Version)
		}
	}
	breaking := breakingAfter(known, from)
	if !reflect.DeepEqual(applied, want) {
		t.Fatalf("migrate up from %d applied %v, want %v", from, applied, want)
	}
	after := describe(t, db)
	for _, old := range order {
		now, ok := after[old.Name]
		switch {
		case !ok && breaking != "":
			t.Logf("table %s is gone after the breaking migration %s", old.Name, breaking)
			continue
		case !ok:
			t.Errorf("table %s of version %d is gone after the upgrade", old.Name, from)
			continue
		}
		var kept []string
		for _, oc := range old.Columns {
			nc, ok := now.column(oc.Name)
			if ok {
				kept = append(kept, oc.Name)
			}
			switch {
			case breaking != "":
			case !ok:
				t.Errorf("column %s.%s of version %d is gone after the upgrade", old.Name, oc.Name, from)
			case !strings.EqualFold(nc.Type, oc.Type):
				t.Errorf("column %s.%s changed type from %s to %s", old.Name, oc.Name, oc.Type, nc.Type)
			case nc.NotNull && !oc.NotNull:
				t.Errorf("column %s.%s became NOT NULL: version %d's writes may fail", old.Name, oc.Name, from)
			}
		}
		for _, nc := range now.Columns {
			if _, ok := old.column(nc.Name); !ok && nc.NotNull && !nc.Default {
				t.Errorf("column %s.%s, added after version %d, is NOT NULL without a default: version %d's INSERTs into %s fail", now.Name, nc.Name, from, from, now.Name)
			}
		}
		want := project(old, kept, rows[old.Name])
		if got := project(old, kept, readRows(t, db, old.Name, kept)); !reflect.DeepEqual(got, want) {
			t.Errorf("%s after the upgrade from %d:\ngot  %v\nwant %v", old.Name, from, got, want)
		}
	}
	if err := db.CheckSchema(ctx); err != nil {
		t.Fatalf("CheckSchema after the upgrade: %v", err)
	}
}

// project keeps the columns kept of rows, which hold the columns of tb
// or exactly kept, and sorts them, so rows compare whatever columns an
// upgrade removed.
func project(tb *table, kept []string, rows [][]any) [][]any {
	idx := map[string]int{}
	if len(rows) > 0 && len(rows[0]) == len(tb.Columns) {
		for i, c := range tb.Columns {
			idx[c.Name] = i
		}
	} else {
		for i, c := range kept {
			idx[c] = i
		}
	}
	out := make([][]any, len(rows))
	for r, row := range rows {
		for _, c := range kept {
			out[r] = append(out[r], row[idx[c]])
		}
	}
	sort.Slice(out, func(a, b int) bool { return fmt.Sprint(out[a]) < fmt.Sprint(out[b]) })
	return out
}

func columnNames(tb *table) []string {
	out := make([]string, len(tb.Columns))
	for i, c := range tb.Columns {
		out[i] = c.Name
	}
	return out
}

// TestPreviousQueries runs the queries of every earlier schema version
// (testdata/queries, see queries_test.go) on a database at the newest
// schema with rows in every table: each must run, or fail only on a
// foreign key or uniqueness conflict with the rows there (the arguments
// are made up). A missing table or column, a NOT NULL column the old
// INSERT does not fill, or a type the old arguments no longer fit fails
// the test. A version before a migration marked breaking is skipped: that
// release is expected to refuse the schema.
func TestPreviousQueries(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		db := newTestDB(t, kind)
		seed(t, db, describe(t, db))
		known, err := db.knownMigrations()
		if err != nil {
			t.Fatal(err)
		}
		latest := known[len(known)-1].Version
		files, err := filepath.Glob(filepath.Join(queriesDir, kind, "*.sql"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no frozen queries in %s/%s (%v): run go test ./internal/sqldb -update-queries", queriesDir, kind, err)
		}
		for _, file := range files {
			v, err := strconv.ParseInt(strings.TrimSuffix(filepath.Base(file), ".sql"), 10, 64)
			if err != nil {
				t.Fatalf("%s: want NNNNN.sql, named after a schema version", file)
			}
			if v > latest {
				t.Errorf("%s is of version %d, newer than the newest migration %d", file, v, latest)
				continue
			}
			if b := breakingAfter(known, v); b != "" {
				t.Logf("%s: skipped, migration %s after it is marked breaking", file, b)
				continue
			}
			queries, err := readQueries(file)
			if err != nil {
				t.Fatal(err)
			}
			for q := range queries {
				if err := runPrevious(db, q); err != nil {
					t.Errorf("%s: the query of schema version %d fails on version %d: %v\n  %s", file, v, latest, err, q)
				}
			}
		}
	})
}

// breakingAfter names the first migration after version marked breaking.
func breakingAfter(known []Migration, version int64) string {
	for _, m := range known {
		if m.Version > version && m.Breaking {
			return m.Name
		}
	}
	return ""
}

// runPrevious runs query (with ? placeholders) on db with made-up
// arguments, in a transaction it rolls back. Conflicts with the rows
// there (foreign key, uniqueness) are not failures of the schema.
func runPrevious(db *DB, query string) error {
	ctx := context.Background()
	if db.dialect == dialectPostgres {
		return runPreviousPostgres(ctx, db, numberPlaceholders(query))
	}
	args := make([]any, placeholders(query))
	for i := range args {
		args[i] = int64(1)
	}
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, query, args...)
	if err == nil {
		for rows.Next() {
		}
		rows.Close()
		err = rows.Err()
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return nil
		}
	}
	return err
}

// placeholders counts the ? of query outside quotes.
func placeholders(query string) int {
	n, quoted := 0, false
	for _, c := range query {
		switch {
		case c == '\'':
			quoted = !quoted
		case c == '?' && !quoted:
			n++
		}
	}
	return n
}

// runPreviousPostgres prepares query to learn its parameters' types, and
// runs it with a value of each type.
func runPreviousPostgres(ctx context.Context, db *DB, query string) error {
	conn, err := db.w.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		pc := dc.(*stdlib.Conn).Conn()
		tx, err := pc.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		sd, err := tx.Prepare(ctx, "", query)
		if err != nil {
			return err
		}
		args := make([]any, len(sd.ParamOIDs))
		for i, oid := range sd.ParamOIDs {
			if args[i], err = pgSample(oid); err != nil {
				return err
			}
		}
		rows, err := tx.Query(ctx, query, args...)
		if err == nil {
			for rows.Next() {
			}
			rows.Close()
			err = rows.Err()
		}
		var pe *pgconn.PgError
		if errors.As(err, &pe) && (pe.Code == "23503" || pe.Code == "23505") {
			return nil
		}
		return err
	})
}

// pgSample is an argument of the PostgreSQL type oid.
func pgSample(oid uint32) (any, error) {
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.NumericOID:
		return int64(1), nil
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.UnknownOID:
		return "1", nil
	case pgtype.ByteaOID:
		return []byte("1"), nil
	case pgtype.BoolOID:
		return true, nil
	case pgtype.JSONOID, pgtype.JSONBOID:
		return "{}", nil
	}
	return nil, fmt.Errorf("a parameter of type OID %d: teach pgSample (upgrade_test.go) a value for it", oid)
}
