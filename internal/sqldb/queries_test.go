package sqldb

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The queries of each schema version, kept so that the upgrade tests can
// run the previous versions' queries on the newest schema (TestUpgrade).
// testdata/queries/DIALECT/NNNNN.sql holds the queries the stores ran
// while NNNNN was the newest migration. The package's tests record the
// queries the stores run (DB.trace); after a full run, TestMain checks
// that the file of the newest version holds all of them, so that it is
// complete when the next migration makes it "the previous version".
// -update-queries adds what is missing.

var updateQueries = flag.Bool("update-queries", false, "add the queries the stores ran to testdata/queries/DIALECT/LATEST.sql")

// queriesDir holds the frozen queries, one folder per dialect.
const queriesDir = "testdata/queries"

// recorded is every query the stores ran in this test process, by dialect.
var recorded = &queryLog{seen: map[string]map[string]bool{}}

// queryLog collects normalized queries by dialect.
type queryLog struct {
	mu   sync.Mutex
	seen map[string]map[string]bool
}

// hook returns the DB.trace function of a database of dialect kind: it
// records the queries the package's own code passes to q, not those of
// tests, and not the migration bookkeeping.
func (l *queryLog) hook(kind string) func(string) {
	return func(query string) {
		// Frame 0 is this function, 1 is DB.q, 2 its caller.
		if _, file, _, ok := runtime.Caller(2); !ok || strings.HasSuffix(file, "_test.go") {
			return
		}
		if strings.Contains(query, versionTable) || strings.Contains(query, compatTable) {
			return
		}
		n := normalizeQuery(query)
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.seen[kind] == nil {
			l.seen[kind] = map[string]bool{}
		}
		l.seen[kind][n] = true
	}
}

var (
	spaces = regexp.MustCompile(`\s+`)
	inList = regexp.MustCompile(`IN \(\?(, \?)+\)`)
)

// normalizeQuery puts a query on one line and folds the parts whose length
// depends on the data: "IN (?, ?, ?)" becomes "IN (?)", and a VALUES list
// of several identical rows becomes one row.
func normalizeQuery(q string) string {
	q = strings.TrimSpace(spaces.ReplaceAllString(q, " "))
	q = inList.ReplaceAllString(q, "IN (?)")
	const values = "VALUES ("
	i := strings.Index(q, values)
	if i < 0 {
		return q
	}
	start := i + len(values) - 1
	end := strings.IndexByte(q[start:], ')')
	if end < 0 {
		return q
	}
	row := q[start : start+end+1]
	rest := q[start+end+1:]
	for strings.HasPrefix(rest, ", "+row) {
		rest = rest[len(", "+row):]
	}
	return q[:start] + row + rest
}

// latestVersion is the newest migration of dialect kind.
func latestVersion(kind string) (int64, error) {
	files, err := fs.Glob(migrationFiles, "migrations/"+kind+"/*.sql")
	if err != nil || len(files) == 0 {
		return 0, fmt.Errorf("no %s migrations: %v", kind, err)
	}
	var latest int64
	for _, f := range files {
		v, err := strconv.ParseInt(strings.SplitN(path.Base(f), "_", 2)[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("migration %s: its name does not start with a number", f)
		}
		latest = max(latest, v)
	}
	return latest, nil
}

// queryFile is the file of the frozen queries of kind at version.
func queryFile(kind string, version int64) string {
	return filepath.Join(queriesDir, kind, fmt.Sprintf("%05d.sql", version))
}

// readQueries reads a file of frozen queries: one per line, "--" lines
// are comments. A missing file has none.
func readQueries(file string) (map[string]bool, error) {
	out := map[string]bool{}
	b, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line != "" && !strings.HasPrefix(line, "--") {
			out[line] = true
		}
	}
	return out, sc.Err()
}

// writeQueries writes queries, sorted, with the header of the file of
// kind at version.
func writeQueries(file, kind string, version int64, queries map[string]bool) error {
	var list []string
	for q := range queries {
		list = append(list, q)
	}
	sort.Strings(list)
	var b strings.Builder
	fmt.Fprintf(&b, "-- The queries forge's stores ran on %s while %05d was the newest migration.\n", kind, version)
	fmt.Fprintf(&b, "-- TestUpgrade runs them on the newest schema once a later migration lands.\n")
	fmt.Fprintf(&b, "-- Added to by: go test ./internal/sqldb -update-queries (see README.md here).\n")
	for _, q := range list {
		b.WriteString(q + "\n")
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	return os.WriteFile(file, []byte(b.String()), 0o644)
}

// checkRecordedQueries is run by TestMain after the tests (status code):
// after a full, passing run, every query the stores ran must be in the
// newest version's file; with -update-queries it adds the missing ones.
// It returns the exit status.
func checkRecordedQueries(code int) int {
	run := flag.Lookup("test.run")
	partial := run != nil && run.Value.String() != "" || testing.Short()
	if code != 0 || partial && !*updateQueries {
		return code
	}
	recorded.mu.Lock()
	defer recorded.mu.Unlock()
	kinds := make([]string, 0, len(recorded.seen))
	for kind := range recorded.seen {
		kinds = append(kinds, kind)
	}
	sort.Strings(kinds)
	for _, kind := range kinds {
		latest, err := latestVersion(kind)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		file := queryFile(kind, latest)
		frozen, err := readQueries(file)
		if err != nil {
			fmt.Fprintf(os.Stderr, "read %s: %v\n", file, err)
			return 1
		}
		var missing []string
		for q := range recorded.seen[kind] {
			if !frozen[q] {
				missing = append(missing, q)
				frozen[q] = true
			}
		}
		sort.Strings(missing)
		switch {
		case len(missing) == 0:
		case *updateQueries:
			if err := writeQueries(file, kind, latest, frozen); err != nil {
				fmt.Fprintf(os.Stderr, "write %s: %v\n", file, err)
				return 1
			}
			fmt.Fprintf(os.Stderr, "added %d queries to %s\n", len(missing), file)
		default:
			fmt.Fprintf(os.Stderr, "FAIL: the stores ran %d queries on %s that internal/sqldb/%s lacks:\n  %s\n"+
				"Add them with: go test ./internal/sqldb -update-queries (with FORGE_TEST_POSTGRES_URL set, for both dialects), and commit the file.\n"+
				"They are kept so that the next migration's upgrade test runs them on its schema.\n",
				len(missing), kind, file, strings.Join(missing, "\n  "))
			code = 1
		}
	}
	return code
}

func TestNormalizeQuery(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"SELECT a\n\t FROM b  WHERE id = ?", "SELECT a FROM b WHERE id = ?"},
		{"SELECT a FROM b WHERE id IN (?, ?, ?) ORDER BY a", "SELECT a FROM b WHERE id IN (?) ORDER BY a"},
		{"SELECT a FROM b WHERE id IN (?)", "SELECT a FROM b WHERE id IN (?)"},
		{"INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?) RETURNING id", "INSERT INTO t (a, b) VALUES (?, ?) RETURNING id"},
		{"INSERT INTO t (a, b, v) VALUES (?, ?, 1) ON CONFLICT (a) DO NOTHING", "INSERT INTO t (a, b, v) VALUES (?, ?, 1) ON CONFLICT (a) DO NOTHING"},
	} {
		if got := normalizeQuery(tt.in); got != tt.want {
			t.Errorf("normalizeQuery(%q):\ngot  %q\nwant %q", tt.in, got, tt.want)
		}
	}
}
