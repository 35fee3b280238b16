package pgtest

import (
	"database/sql"
	"strings"
	"testing"
)

// TestDatabaseAndSchemaAreTheTestsOwn: each call gives an empty place of
// its own, usable at once, gone after the test.
func TestDatabaseAndSchemaAreTheTestsOwn(t *testing.T) {
	var urls []string
	t.Run("use", func(t *testing.T) {
		for _, u := range []string{Database(t, "forge_pgtest"), Database(t, "forge_pgtest"), Schema(t, "forge_pgtest")} {
			db, err := sql.Open("pgx", u)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec("CREATE TABLE t (x int)"); err != nil {
				t.Errorf("%s: %v: want an empty place of the test's own", u, err)
			}
			db.Close()
			urls = append(urls, u)
		}
		if urls[0] == urls[1] {
			t.Errorf("two databases share the URL %s", urls[0])
		}
	})
	admin, err := sql.Open("pgx", URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, u := range urls[:2] {
		name := u[strings.LastIndex(u, "/")+1:]
		name, _, _ = strings.Cut(name, "?")
		var n int
		if err := admin.QueryRow("SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil || n != 0 {
			t.Errorf("database %s: %d left after its test, %v", name, n, err)
		}
	}
}
