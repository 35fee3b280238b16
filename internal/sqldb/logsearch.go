package sqldb

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/forgeci/forge"
)

// doneStatuses is the SQL list of the statuses of finished jobs and builds.
const doneStatuses = "('success', 'failure', 'error', 'skipped', 'canceled')"

// SearchLog finds the lines of job jobID numbered from on whose text
// contains q, ignoring case (ASCII letters on SQLite, every letter on
// PostgreSQL). It returns the numbers of the first limit of them in order
// (limit <= 0: all) and how many lines match in all. The search is one scan
// of the job's part of the log table, in the database. ENOTFOUND when the
// job does not exist; EINVALID for an empty q.
func (db *DB) SearchLog(ctx context.Context, jobID int64, q string, from, limit int) ([]int, int, error) {
	if q == "" {
		return nil, 0, forge.Errorf(forge.EINVALID, "empty search text")
	}
	op := "LIKE"
	if db.dialect == dialectPostgres {
		op = "ILIKE"
	}
	query := "SELECT number FROM logs WHERE job_id = ? AND number >= ? AND text " + op + " ? ESCAPE '\\' ORDER BY number"
	pattern := "%" + likeEscaper.Replace(q) + "%"
	var (
		matches []int
		total   int
	)
	err := db.read(ctx, func(tx *sql.Tx) error {
		if err := db.exists(ctx, tx, "SELECT 1 FROM jobs WHERE id = ?", jobID, "job %d not found"); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, db.q(query), jobID, max(from, 1), pattern)
		if err != nil {
			return db.fail(ctx, err, "search log")
		}
		defer rows.Close()
		for rows.Next() {
			var n int
			if err := rows.Scan(&n); err != nil {
				return db.fail(ctx, err, "search log")
			}
			total++
			if limit <= 0 || len(matches) < limit {
				matches = append(matches, n)
			}
		}
		if err := rows.Err(); err != nil {
			return db.fail(ctx, err, "search log")
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return matches, total, nil
}

// likeEscaper escapes LIKE's wildcards with the ESCAPE character '\'.
var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)

// SearchLogs finds lines containing q in the indexed logs (IndexLogs) of
// repository repoID's builds, newest first: the latest job first and, in a
// job, the last line first; at most limit of them (1 to 1,000). On SQLite q
// matches any substring, ignoring case (FTS5 trigrams); on PostgreSQL its
// words (runs of letters and digits) must appear in that order, whole,
// ignoring case (a 'simple' text search phrase). EINVALID
// when q is shorter than forge.MinLogQuery characters.
func (db *DB) SearchLogs(ctx context.Context, repoID int64, q string, limit int) ([]forge.LogMatch, error) {
	q = strings.TrimSpace(q)
	if len([]rune(q)) < forge.MinLogQuery {
		return nil, forge.Errorf(forge.EINVALID, "search text %q is too short: give at least %d characters", q, forge.MinLogQuery)
	}
	limit = min(max(limit, 1), 1000)
	var query string
	var arg any
	if db.dialect == dialectPostgres {
		query = `SELECT b.number, j.id, j.name, l.number, l.text
FROM log_search s
JOIN jobs j ON j.id = s.job_id
JOIN builds b ON b.id = j.build_id
JOIN logs l ON l.job_id = s.job_id AND l.number = s.number
WHERE s.words @@ phraseto_tsquery('simple', ` + pgWords("?") + `) AND b.repo_id = ?
ORDER BY s.job_id DESC, s.number DESC LIMIT ?`
		arg = q
	} else {
		// One FTS5 string: the trigram tokenizer matches it as a substring.
		query = `SELECT b.number, j.id, j.name, l.number, l.text
FROM log_search s
JOIN jobs j ON j.id = (s.rowid >> 32)
JOIN builds b ON b.id = j.build_id
JOIN logs l ON l.job_id = j.id AND l.number = (s.rowid & 4294967295)
WHERE log_search MATCH ? AND b.repo_id = ?
ORDER BY s.rowid DESC LIMIT ?`
		arg = `"` + strings.ReplaceAll(q, `"`, `""`) + `"`
	}
	var out []forge.LogMatch
	err := db.read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, db.q(query), arg, repoID, limit)
		if err != nil {
			return db.fail(ctx, err, "search logs")
		}
		defer rows.Close()
		for rows.Next() {
			var m forge.LogMatch
			if err := rows.Scan(&m.Build, &m.Job, &m.JobName, &m.Line, &m.Text); err != nil {
				return db.fail(ctx, err, "search logs")
			}
			out = append(out, m)
		}
		if err := rows.Err(); err != nil {
			return db.fail(ctx, err, "search logs")
		}
		return nil
	})
	return out, err
}

// pgWords is the SQL of expr's text with everything but letters and
// digits turned to spaces, before PostgreSQL's text search parser sees it:
// it would take "pkg/foo.go:12" or "host:5432" as one token (a path, a
// host), which a search for "foo" could not find. The index and the query
// go through the same.
func pgWords(expr string) string {
	return "regexp_replace(" + expr + ", '[^[:alnum:]]+', ' ', 'g')"
}

// indexChunk is how many lines one IndexLogs transaction indexes: small
// enough that the write lock (on SQLite, the database's) is held briefly,
// so the indexer never holds up the logs of running builds for long.
const indexChunk = 5000

// IndexLogs adds the lines of finished jobs to the search index
// (SearchLogs), newest job first, at most lines lines in chunks of its own
// transactions; it returns how many lines it indexed: 0 when every
// finished job is indexed. It resumes where a previous call (or server)
// stopped. Jobs that finished before the index existed are indexed too.
// Several servers may run it at once: a chunk indexed twice is a
// uniqueness conflict, rolled back and skipped.
func (db *DB) IndexLogs(ctx context.Context, lines int) (int, error) {
	total := 0
	for total < lines {
		n, more, err := db.indexChunk(ctx, min(indexChunk, lines-total))
		total += n
		if err != nil || !more {
			return total, err
		}
	}
	return total, nil
}

// indexChunk indexes up to max lines of the newest finished job not fully
// indexed; more is false when there was no such job.
func (db *DB) indexChunk(ctx context.Context, limit int) (n int, more bool, err error) {
	var insert string
	if db.dialect == dialectPostgres {
		insert = "INSERT INTO log_search (job_id, number, words) SELECT job_id, number, to_tsvector('simple', " + pgWords("text") + ") FROM logs WHERE job_id = ? AND number > ? AND number <= ?"
	} else {
		insert = "INSERT INTO log_search (rowid, text) SELECT job_id * 4294967296 + number, text FROM logs WHERE job_id = ? AND number > ? AND number <= ?"
	}
	err = db.write(ctx, func(tx *sql.Tx) error {
		var (
			jobID int64
			done  int64
		)
		err := tx.QueryRowContext(ctx, db.q(`SELECT j.id, COALESCE(x.lines, 0) FROM jobs j
LEFT JOIN log_indexed x ON x.job_id = j.id
WHERE j.status IN `+doneStatuses+` AND (x.job_id IS NULL OR x.indexed = 0)
ORDER BY j.id DESC LIMIT 1`)).Scan(&jobID, &done)
		if err == sql.ErrNoRows {
			return nil
		}
		if err != nil {
			return db.fail(ctx, err, "find a log to index")
		}
		more = true
		// The chunk is the lines after done up to the limit-th of them.
		var upTo int64
		err = tx.QueryRowContext(ctx, db.q("SELECT number FROM logs WHERE job_id = ? AND number > ? ORDER BY number LIMIT 1 OFFSET ?"), jobID, done, limit-1).Scan(&upTo)
		last := err == sql.ErrNoRows
		if last {
			err = tx.QueryRowContext(ctx, db.q("SELECT COALESCE(max(number), 0) FROM logs WHERE job_id = ?"), jobID).Scan(&upTo)
		}
		if err != nil {
			return db.fail(ctx, err, "find a log to index")
		}
		upTo = max(upTo, done)
		res, err := tx.ExecContext(ctx, db.q(insert), jobID, done, upTo)
		if err != nil {
			return db.fail(ctx, err, "index log")
		}
		rows, _ := res.RowsAffected()
		n = int(rows)
		var indexed int64
		if last {
			indexed = now().UnixMicro()
		}
		_, err = tx.ExecContext(ctx, db.q(`INSERT INTO log_indexed (job_id, lines, indexed) VALUES (?, ?, ?)
ON CONFLICT (job_id) DO UPDATE SET lines = excluded.lines, indexed = excluded.indexed`), jobID, upTo, indexed)
		if err != nil {
			return db.fail(ctx, err, "index log")
		}
		return nil
	})
	if forge.ErrorCode(err) == forge.ECONFLICT {
		// Another server indexed the same chunk first.
		return 0, true, nil
	}
	return n, more, err
}

// Retention says which builds' logs PruneLogs keeps: the last Builds
// builds of each repository and those that finished in the last Days days.
// Zero means no limit of that kind; with both set a log goes when either
// says so.
type Retention struct {
	Builds int
	Days   int
}

// pruneBatch is how many lines one PruneLogs transaction deletes.
const pruneBatch = 20000

// PruneLogs deletes the log lines (and their search index) of finished
// builds that r does not keep, in short transactions, and returns how many
// jobs' logs it deleted. Build and job rows stay. It is idempotent and safe
// to run while the server works.
func (db *DB) PruneLogs(ctx context.Context, r Retention) (int, error) {
	if r.Builds < 0 || r.Days < 0 {
		return 0, forge.Errorf(forge.EINVALID, "log retention must not be negative (keep_builds %d, keep_days %d)", r.Builds, r.Days)
	}
	var jobs []int64
	err := db.read(ctx, func(tx *sql.Tx) error {
		var conds []string
		var args []any
		if r.Days > 0 {
			conds = append(conds, "b.finished < ?")
			args = append(args, now().Add(-time.Duration(r.Days)*24*time.Hour).UnixMicro())
		}
		if r.Builds > 0 {
			// The number of each repository's keepBuilds-th newest build.
			conds = append(conds, `b.number < (SELECT c.number FROM builds c WHERE c.repo_id = b.repo_id ORDER BY c.number DESC LIMIT 1 OFFSET ?)`)
			args = append(args, r.Builds-1)
		}
		if len(conds) == 0 {
			return nil
		}
		rows, err := tx.QueryContext(ctx, db.q(`SELECT j.id FROM builds b JOIN jobs j ON j.build_id = b.id
WHERE b.status IN `+doneStatuses+` AND (`+strings.Join(conds, " OR ")+`)
AND EXISTS (SELECT 1 FROM logs l WHERE l.job_id = j.id)`), args...)
		if err != nil {
			return db.fail(ctx, err, "find logs to prune")
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return db.fail(ctx, err, "find logs to prune")
			}
			jobs = append(jobs, id)
		}
		return rows.Err()
	})
	if err != nil {
		return 0, err
	}
	for i, id := range jobs {
		if err := db.deleteLog(ctx, id); err != nil {
			return i, err
		}
	}
	return len(jobs), nil
}

// deleteLog deletes job id's log lines and their index entries, a batch a
// transaction, and marks the job indexed so the indexer leaves it be.
func (db *DB) deleteLog(ctx context.Context, id int64) error {
	for {
		var rows int64
		err := db.write(ctx, func(tx *sql.Tx) error {
			var upTo sql.NullInt64
			err := tx.QueryRowContext(ctx, db.q("SELECT number FROM logs WHERE job_id = ? ORDER BY number LIMIT 1 OFFSET ?"), id, pruneBatch-1).Scan(&upTo)
			if err != nil && err != sql.ErrNoRows {
				return db.fail(ctx, err, "prune log")
			}
			limit := int64(1) << 62
			if upTo.Valid {
				limit = upTo.Int64
			}
			res, err := tx.ExecContext(ctx, db.q("DELETE FROM logs WHERE job_id = ? AND number <= ?"), id, limit)
			if err != nil {
				return db.fail(ctx, err, "prune log")
			}
			rows, _ = res.RowsAffected()
			if db.dialect == dialectPostgres {
				_, err = tx.ExecContext(ctx, db.q("DELETE FROM log_search WHERE job_id = ? AND number <= ?"), id, limit)
			} else {
				_, err = tx.ExecContext(ctx, db.q("DELETE FROM log_search WHERE rowid >= ? AND rowid <= ?"), id<<32, id<<32+min(limit, 1<<32-1))
			}
			if err != nil {
				return db.fail(ctx, err, "prune log index")
			}
			if upTo.Valid {
				return nil
			}
			_, err = tx.ExecContext(ctx, db.q(`INSERT INTO log_indexed (job_id, lines, indexed) VALUES (?, 0, ?)
ON CONFLICT (job_id) DO UPDATE SET lines = 0, indexed = excluded.indexed`), id, now().UnixMicro())
			if err != nil {
				return db.fail(ctx, err, "prune log")
			}
			rows = 0
			return nil
		})
		if err != nil {
			return fmt.Errorf("prune the log of job %d: %w", id, err)
		}
		if rows == 0 {
			return nil
		}
	}
}
