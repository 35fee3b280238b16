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
// contains q, ignoring case (the same on SQLite and PostgreSQL: ASCII
// letters directly, others by their lower case). It returns the numbers of
// the first limit of them in order (limit <= 0: all) and how many lines
// match in all. The search reads the job's chunks from the one holding
// line from and matches in Go: one sequential read, whatever the
// database. ENOTFOUND when the job does not exist; EINVALID for an empty
// q.
func (db *DB) SearchLog(ctx context.Context, jobID int64, q string, from, limit int) ([]int, int, error) {
	if q == "" {
		return nil, 0, forge.Errorf(forge.EINVALID, "empty search text")
	}
	m := newFoldMatcher(q)
	lo := int64(max(from, 1))
	var (
		matches []int
		total   int
	)
	err := db.read(ctx, func(tx *sql.Tx) error {
		if err := db.exists(ctx, tx, "SELECT 1 FROM jobs WHERE id = ?", jobID, "job %d not found"); err != nil {
			return err
		}
		return db.eachChunk(ctx, tx, jobID, lo, 0, "search log", func(r *chunkReader) (bool, error) {
			m.each(r, lo, func(num int64) {
				total++
				if limit <= 0 || len(matches) < limit {
					matches = append(matches, int(num))
				}
			})
			return true, nil
		})
	})
	if err != nil {
		return nil, 0, err
	}
	return matches, total, nil
}

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
		query = `SELECT b.number, j.id, j.name, s.number
FROM log_search s
JOIN jobs j ON j.id = s.job_id
JOIN builds b ON b.id = j.build_id
WHERE s.words @@ phraseto_tsquery('simple', ` + pgWords("?") + `) AND b.repo_id = ?
ORDER BY s.job_id DESC, s.number DESC LIMIT ?`
		arg = q
	} else {
		// One FTS5 string: the trigram tokenizer matches it as a substring.
		query = `SELECT b.number, j.id, j.name, (s.rowid & 4294967295)
FROM log_search s
JOIN jobs j ON j.id = (s.rowid >> 32)
JOIN builds b ON b.id = j.build_id
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
			if err := rows.Scan(&m.Build, &m.Job, &m.JobName, &m.Line); err != nil {
				return db.fail(ctx, err, "search logs")
			}
			out = append(out, m)
		}
		if err := rows.Err(); err != nil {
			return db.fail(ctx, err, "search logs")
		}
		rows.Close()
		return db.matchTexts(ctx, tx, out)
	})
	if err != nil {
		return nil, err
	}
	// A line pruned after it was indexed has no text: it is left out.
	kept := out[:0]
	for _, m := range out {
		if m.Line > 0 {
			kept = append(kept, m)
		}
	}
	return kept, nil
}

// matchTexts fills in the Text of each of ms from the log chunks, reading
// each chunk that holds some of them once; a match whose line is not
// stored gets Line 0.
func (db *DB) matchTexts(ctx context.Context, tx *sql.Tx, ms []forge.LogMatch) error {
	type key struct {
		job  int64
		line int
	}
	want := make(map[key][]int, len(ms)) // -> indexes in ms
	for i, m := range ms {
		k := key{m.Job, m.Line}
		want[k] = append(want[k], i)
	}
	for len(want) > 0 {
		var k key
		for k = range want {
			break
		}
		var (
			first int64
			data  []byte
		)
		err := tx.QueryRowContext(ctx, db.q("SELECT first_line, data FROM log_chunks WHERE job_id = ? AND first_line <= ? ORDER BY first_line DESC LIMIT 1"), k.job, k.line).Scan(&first, &data)
		if err != nil && err != sql.ErrNoRows {
			return db.fail(ctx, err, "search logs")
		}
		if err == nil {
			r := &chunkReader{data: data}
			if err := r.start(); err != nil {
				return forge.WrapError(forge.EINTERNAL, err, fmt.Sprintf("search logs: job %d, the chunk at line %d", k.job, first))
			}
			for r.next() {
				lk := key{k.job, int(r.num)}
				for _, i := range want[lk] {
					ms[i].Text = string(r.text)
				}
				delete(want, lk)
			}
			if r.err != nil {
				return forge.WrapError(forge.EINTERNAL, r.err, fmt.Sprintf("search logs: job %d, the chunk at line %d", k.job, first))
			}
		}
		if is, ok := want[k]; ok { // not stored
			for _, i := range is {
				ms[i].Line = 0
			}
			delete(want, k)
		}
	}
	return nil
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

// indexChunk indexes up to limit lines of the newest finished job not
// fully indexed; more is false when there was no such job. It reads the
// lines from the job's log chunks.
func (db *DB) indexChunk(ctx context.Context, limit int) (n int, more bool, err error) {
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
		// The lines after done, up to limit of them; last when they are
		// the end of the log.
		var lines []forge.LogLine
		last := true
		err = db.eachChunk(ctx, tx, jobID, done+1, 0, "index log", func(r *chunkReader) (bool, error) {
			for r.next() {
				if r.num <= done {
					continue
				}
				if len(lines) == limit {
					last = false
					return false, nil
				}
				lines = append(lines, forge.LogLine{Number: int(r.num), Text: string(r.text)})
			}
			return true, nil
		})
		if err != nil {
			return err
		}
		upTo := done
		if len(lines) > 0 {
			upTo = int64(lines[len(lines)-1].Number)
		}
		if err := db.insertIndex(ctx, tx, jobID, lines); err != nil {
			return db.fail(ctx, err, "index log")
		}
		n = len(lines)
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

// indexBatch is how many lines one INSERT into the search index carries.
const indexBatch = 200

// insertIndex adds job jobID's lines to the search index: multi-row
// INSERTs of indexBatch lines, then one-row ones for the rest, so that
// there are only two statements, each prepared once.
func (db *DB) insertIndex(ctx context.Context, tx *sql.Tx, jobID int64, lines []forge.LogLine) error {
	row := "(?, ?)"
	head := "INSERT INTO log_search (rowid, text) VALUES "
	if db.dialect == dialectPostgres {
		row = "(?, ?, to_tsvector('simple', " + pgWords("?") + "))"
		head = "INSERT INTO log_search (job_id, number, words) VALUES "
	}
	stmts := map[int]*sql.Stmt{}
	defer func() {
		for _, st := range stmts {
			st.Close()
		}
	}()
	args := make([]any, 0, 3*indexBatch)
	for len(lines) > 0 {
		n := indexBatch
		if len(lines) < indexBatch {
			n = 1
		}
		st := stmts[n]
		if st == nil {
			query := head + strings.Repeat(row+", ", n-1) + row
			var err error
			if st, err = tx.PrepareContext(ctx, db.q(query)); err != nil {
				return err
			}
			stmts[n] = st
		}
		args = args[:0]
		for _, l := range lines[:n] {
			if db.dialect == dialectPostgres {
				args = append(args, jobID, int64(l.Number), l.Text)
			} else {
				args = append(args, jobID<<32+int64(l.Number), l.Text)
			}
		}
		if _, err := st.ExecContext(ctx, args...); err != nil {
			return err
		}
		lines = lines[n:]
	}
	return nil
}

// Retention says which builds' logs PruneLogs keeps: the last Builds
// builds of each repository and those that finished in the last Days days.
// Zero means no limit of that kind; with both set a log goes when either
// says so.
type Retention struct {
	Builds int
	Days   int
}

// pruneBatch is how many rows of the old logs table (from before migration
// 00008), and pruneChunks how many log chunks (about 20,000 lines), one
// PruneLogs transaction deletes.
const (
	pruneBatch  = 20000
	pruneChunks = 20
)

// PruneLogs deletes the logs (their chunks, and their search index) of
// finished builds that r does not keep, in short transactions, and returns
// how many jobs' logs it deleted. Build and job rows stay. It is
// idempotent and safe to run while the server works.
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
AND (EXISTS (SELECT 1 FROM log_chunks l WHERE l.job_id = j.id) OR EXISTS (SELECT 1 FROM logs l WHERE l.job_id = j.id))`), args...)
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
			return i, fmt.Errorf("prune the log of job %d: %w", id, err)
		}
	}
	return len(jobs), nil
}

// deleteLog deletes job id's log: the rows the old logs table may still
// hold, then its chunks and their index entries, a batch a transaction;
// it marks the job indexed so the indexer leaves it be.
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
			return nil
		})
		if err != nil {
			return err
		}
		if rows == 0 {
			break
		}
	}
	for {
		finished := false
		err := db.write(ctx, func(tx *sql.Tx) error {
			var first, last int64
			err := tx.QueryRowContext(ctx, db.q("SELECT first_line, last_line FROM log_chunks WHERE job_id = ? ORDER BY first_line LIMIT 1 OFFSET ?"), id, pruneChunks-1).Scan(&first, &last)
			if err != nil && err != sql.ErrNoRows {
				return db.fail(ctx, err, "prune log")
			}
			more := err == nil
			if !more {
				first, last = 1<<62, 1<<62
			}
			if _, err := tx.ExecContext(ctx, db.q("DELETE FROM log_chunks WHERE job_id = ? AND first_line <= ?"), id, first); err != nil {
				return db.fail(ctx, err, "prune log")
			}
			if db.dialect == dialectPostgres {
				_, err = tx.ExecContext(ctx, db.q("DELETE FROM log_search WHERE job_id = ? AND number <= ?"), id, last)
			} else {
				_, err = tx.ExecContext(ctx, db.q("DELETE FROM log_search WHERE rowid >= ? AND rowid <= ?"), id<<32, id<<32+min(last, 1<<32-1))
			}
			if err != nil {
				return db.fail(ctx, err, "prune log index")
			}
			if more {
				return nil
			}
			_, err = tx.ExecContext(ctx, db.q(`INSERT INTO log_indexed (job_id, lines, indexed) VALUES (?, 0, ?)
ON CONFLICT (job_id) DO UPDATE SET lines = 0, indexed = excluded.indexed`), id, now().UnixMicro())
			if err != nil {
				return db.fail(ctx, err, "prune log")
			}
			finished = true
			return nil
		})
		if err != nil {
			return err
		}
		if finished {
			return nil
		}
	}
}
