package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/forgeci/forge"
)

var _ forge.LogStore = (*DB)(nil)

// logBatch is how many lines one INSERT statement carries: 5 parameters a
// line keeps a statement far below SQLite's and PostgreSQL's parameter
// limits, and large enough that per-statement overhead stops mattering.
const logBatch = 200

// copyMin is the batch size from which PostgreSQL appends use COPY instead
// of INSERT.
const copyMin = 64

// Append adds lines to the end of job jobID's log, all or none, in one
// transaction. Line numbers must be at least 1; ECONFLICT when one of them
// is already stored, ENOTFOUND when the job does not exist. A zero Time is
// stored as now. Text that is not valid UTF-8, and NUL bytes, are stored
// with U+FFFD in their place (PostgreSQL text cannot hold them, and both
// databases must give back the same).
//
// SQLite inserts multi-row batches through one prepared statement;
// PostgreSQL uses COPY for batches of copyMin lines or more.
func (db *DB) Append(ctx context.Context, jobID int64, lines []forge.LogLine) error {
	if len(lines) == 0 {
		return nil
	}
	for _, l := range lines {
		if l.Number < 1 {
			return forge.Errorf(forge.EINVALID, "log line number %d: numbers start at 1", l.Number)
		}
	}
	// lines is the caller's (and may be read elsewhere at the same time,
	// by a live log): it is not modified.
	t := now().UnixMicro()
	row := func(l *forge.LogLine) []any {
		at := t
		if !l.Time.IsZero() {
			at = l.Time.UnixMicro()
		}
		return []any{jobID, int64(l.Number), at, string(l.Stream), cleanText(l.Text)}
	}
	var err error
	if db.dialect == dialectPostgres && len(lines) >= copyMin {
		err = db.copyLines(ctx, jobID, lines, row)
	} else {
		err = db.write(ctx, func(tx *sql.Tx) error {
			if db.dialect == dialectPostgres {
				// No foreign key on PostgreSQL (see the migration).
				err := db.exists(ctx, tx, "SELECT 1 FROM jobs WHERE id = ? FOR KEY SHARE", jobID, "job %d not found")
				if err != nil {
					return err
				}
			}
			return db.insertLines(ctx, tx, lines, row)
		})
	}
	var fe *forge.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &fe):
		return err
	case isForeignKey(err):
		return forge.WrapError(forge.ENOTFOUND, err, fmt.Sprintf("job %d not found", jobID))
	case isUnique(err):
		return forge.WrapError(forge.ECONFLICT, err, fmt.Sprintf("job %d: log lines %d to %d overlap lines already stored", jobID, lines[0].Number, lines[len(lines)-1].Number))
	}
	return db.fail(ctx, err, "append log")
}

// insertLines inserts lines with batched multi-row INSERTs.
func (db *DB) insertLines(ctx context.Context, tx *sql.Tx, lines []forge.LogLine, row func(*forge.LogLine) []any) error {
	var full *sql.Stmt
	args := make([]any, 0, 5*logBatch)
	for start := 0; start < len(lines); start += logBatch {
		batch := lines[start:min(start+logBatch, len(lines))]
		args = args[:0]
		for i := range batch {
			args = append(args, row(&batch[i])...)
		}
		var err error
		if len(batch) == logBatch {
			if full == nil {
				full, err = tx.PrepareContext(ctx, db.q(insertLinesQuery(logBatch)))
				if err != nil {
					return err
				}
				defer full.Close()
			}
			_, err = full.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, db.q(insertLinesQuery(len(batch))), args...)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func insertLinesQuery(n int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO logs (job_id, number, time, stream, text) VALUES ")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?, ?, ?)")
	}
	return b.String()
}

// copyLines appends lines with PostgreSQL's COPY, in a transaction that
// first checks and key-share locks the job (logs has no foreign key on
// PostgreSQL: see the migration).
func (db *DB) copyLines(ctx context.Context, jobID int64, lines []forge.LogLine, row func(*forge.LogLine) []any) error {
	conn, err := db.w.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(driverConn any) error {
		pc := driverConn.(*stdlib.Conn).Conn()
		tx, err := pc.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(context.WithoutCancel(ctx))
		var one int
		err = tx.QueryRow(ctx, "SELECT 1 FROM jobs WHERE id = $1 FOR KEY SHARE", jobID).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return notFound("job %d not found", jobID)
		}
		if err != nil {
			return err
		}
		_, err = tx.CopyFrom(ctx, pgx.Identifier{"logs"}, []string{"job_id", "number", "time", "stream", "text"},
			pgx.CopyFromSlice(len(lines), func(i int) ([]any, error) { return row(&lines[i]), nil }))
		if err != nil {
			return err
		}
		return tx.Commit(ctx)
	})
}

// Lines returns job jobID's lines numbered in [from, from+limit), in
// order; limit <= 0 means to the end.
// ENOTFOUND when the job does not exist.
func (db *DB) Lines(ctx context.Context, jobID int64, from, limit int) ([]forge.LogLine, error) {
	query := "SELECT number, time, stream, text FROM logs WHERE job_id = ? AND number >= ?"
	args := []any{jobID, max(from, 1)}
	if limit > 0 {
		query += " AND number < ?"
		args = append(args, int64(from)+int64(limit))
	}
	query += " ORDER BY number"
	var out []forge.LogLine
	err := db.read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, db.q(query), args...)
		if err != nil {
			return db.fail(ctx, err, "read log")
		}
		defer rows.Close()
		if limit > 0 {
			out = make([]forge.LogLine, 0, min(limit, 10000))
		}
		for rows.Next() {
			var l forge.LogLine
			if err := rows.Scan(&l.Number, timeCol{&l.Time}, &l.Stream, &l.Text); err != nil {
				return db.fail(ctx, err, "read log")
			}
			out = append(out, l)
		}
		if err := rows.Err(); err != nil {
			return db.fail(ctx, err, "read log")
		}
		if len(out) > 0 {
			return nil
		}
		return db.exists(ctx, tx, "SELECT 1 FROM jobs WHERE id = ?", jobID, "job %d not found")
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// LogLen returns the number of job jobID's last stored log line (0 when it
// has none): the length of the log, to size a viewer or resume appending.
// ENOTFOUND when the job does not exist.
func (db *DB) LogLen(ctx context.Context, jobID int64) (int, error) {
	var n sql.NullInt64
	err := db.read(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, db.q("SELECT max(number) FROM logs WHERE job_id = ?"), jobID).Scan(&n); err != nil {
			return db.fail(ctx, err, "read log length")
		}
		if n.Valid {
			return nil
		}
		return db.exists(ctx, tx, "SELECT 1 FROM jobs WHERE id = ?", jobID, "job %d not found")
	})
	return int(n.Int64), err
}

// cleanText returns s with invalid UTF-8 and NUL bytes replaced by U+FFFD.
func cleanText(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}
