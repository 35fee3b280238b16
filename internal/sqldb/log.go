package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/forgeci/forge"
)

var _ forge.LogStore = (*DB)(nil)

// Append adds lines to the end of job jobID's log, all or none, in one
// transaction. Line numbers must be at least 1 and increase; ECONFLICT when
// one of them is not above the last line already stored (or the one
// before it in lines), ENOTFOUND when the job does not exist. A zero Time
// is stored as now. Text that is not valid UTF-8, and NUL bytes, are
// stored with U+FFFD in their place (PostgreSQL text cannot hold them, and
// both databases must give back the same).
//
// The lines go into the job's chunks (see logchunk.go): the last chunk is
// extended while it is small, then new ones are written, so a batch of
// thousands of lines is a few row writes.
func (db *DB) Append(ctx context.Context, jobID int64, lines []forge.LogLine) error {
	if len(lines) == 0 {
		return nil
	}
	for i, l := range lines {
		if l.Number < 1 {
			return forge.Errorf(forge.EINVALID, "log line number %d: numbers start at 1", l.Number)
		}
		if i > 0 && l.Number <= lines[i-1].Number {
			return forge.Errorf(forge.ECONFLICT, "job %d: log line %d follows line %d: line numbers must increase", jobID, l.Number, lines[i-1].Number)
		}
	}
	// lines is the caller's (and may be read elsewhere at the same time,
	// by a live log): it is not modified.
	t := now().UnixMicro()
	err := db.write(ctx, func(tx *sql.Tx) error {
		if db.dialect == dialectPostgres {
			// No foreign key on PostgreSQL (see the migrations); the
			// lock also makes appends to one job take turns, as each
			// reads and rewrites the job's last chunk.
			err := db.exists(ctx, tx, "SELECT 1 FROM jobs WHERE id = ? FOR NO KEY UPDATE", jobID, "job %d not found")
			if err != nil {
				return err
			}
		}
		var (
			first, last int64
			count       int
			data        []byte
		)
		err := tx.QueryRowContext(ctx, db.q("SELECT first_line, last_line, line_count, data FROM log_chunks WHERE job_id = ? ORDER BY first_line DESC LIMIT 1"), jobID).Scan(&first, &last, &count, &data)
		have := err == nil
		if err != nil && err != sql.ErrNoRows {
			return db.fail(ctx, err, "append log")
		}
		if have && int64(lines[0].Number) <= last {
			return forge.Errorf(forge.ECONFLICT, "job %d: log lines %d to %d overlap lines already stored (up to %d)", jobID, lines[0].Number, lines[len(lines)-1].Number, last)
		}
		enc := &chunkEncoder{}
		update := false // enc continues the stored chunk at first
		if have && count < chunkLines && len(data) < chunkGrow {
			if err := enc.resume(data, first, count); err != nil {
				return forge.WrapError(forge.EINTERNAL, err, fmt.Sprintf("job %d: the log chunk at line %d", jobID, first))
			}
			update = true
		} else {
			enc.reset()
		}
		save := func() error {
			if enc.n == 0 {
				return nil
			}
			var err error
			if update {
				_, err = tx.ExecContext(ctx, db.q("UPDATE log_chunks SET last_line = ?, line_count = ?, data = ? WHERE job_id = ? AND first_line = ?"),
					enc.prevNum, enc.n, enc.buf, jobID, enc.first)
				update = false
			} else {
				_, err = tx.ExecContext(ctx, db.q("INSERT INTO log_chunks (job_id, first_line, last_line, line_count, data) VALUES (?, ?, ?, ?, ?)"),
					jobID, enc.first, enc.prevNum, enc.n, enc.buf)
			}
			enc.reset()
			return err
		}
		for i := range lines {
			if enc.full() {
				if err := save(); err != nil {
					return err
				}
			}
			l := &lines[i]
			at := t
			if !l.Time.IsZero() {
				at = l.Time.UnixMicro()
			}
			enc.add(int64(l.Number), at, l.Stream, cleanText(l.Text))
		}
		return save()
	})
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

// chunksFrom is the query of job ? 's chunks holding lines numbered from ?
// on: the chunk holding line from (the last one starting at or before it:
// an index seek) and those after it.
const chunksFrom = `SELECT first_line, data FROM log_chunks WHERE job_id = ? AND first_line >= COALESCE(
(SELECT max(first_line) FROM log_chunks WHERE job_id = ? AND first_line <= ?), 0)`

// eachChunk calls fn with a reader of each of job jobID's chunks holding
// lines numbered in [from, to) (to <= 0: to the end), in order, until fn
// returns false or an error. The reader's data is the driver's memory,
// valid only during fn: fn copies what it keeps.
func (db *DB) eachChunk(ctx context.Context, tx *sql.Tx, jobID int64, from, to int64, what string, fn func(r *chunkReader) (bool, error)) error {
	query := chunksFrom
	args := []any{jobID, jobID, from}
	if to > 0 {
		query += " AND first_line < ?"
		args = append(args, to)
	}
	query += " ORDER BY first_line"
	rows, err := tx.QueryContext(ctx, db.q(query), args...)
	if err != nil {
		return db.fail(ctx, err, what)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			first int64
			data  sql.RawBytes // valid until the next row: fn keeps nothing of it
		)
		if err := rows.Scan(&first, &data); err != nil {
			return db.fail(ctx, err, what)
		}
		r := &chunkReader{data: data}
		if err := r.start(); err != nil {
			return forge.WrapError(forge.EINTERNAL, err, fmt.Sprintf("%s: job %d, the chunk at line %d", what, jobID, first))
		}
		more, err := fn(r)
		if r.err != nil {
			return forge.WrapError(forge.EINTERNAL, r.err, fmt.Sprintf("%s: job %d, the chunk at line %d", what, jobID, first))
		}
		if err != nil || !more {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return db.fail(ctx, err, what)
	}
	return nil
}

// Lines returns job jobID's lines numbered in [from, from+limit), in
// order; limit <= 0 means to the end. It reads the chunks holding them
// only, so a range costs the same anywhere in a log of any length.
// ENOTFOUND when the job does not exist.
func (db *DB) Lines(ctx context.Context, jobID int64, from, limit int) ([]forge.LogLine, error) {
	lo := int64(max(from, 1))
	var hi int64 // exclusive; 0: no end
	if limit > 0 {
		hi = int64(from) + int64(limit)
		if hi <= lo {
			hi = lo // an empty range, but still check the job
		}
	}
	var out []forge.LogLine
	err := db.read(ctx, func(tx *sql.Tx) error {
		if limit > 0 {
			out = make([]forge.LogLine, 0, min(limit, 10000))
		}
		if hi == 0 || hi > lo {
			err := db.eachChunk(ctx, tx, jobID, lo, hi, "read log", func(r *chunkReader) (bool, error) {
				for r.next() {
					if r.num < lo {
						continue
					}
					if hi > 0 && r.num >= hi {
						return false, nil
					}
					out = append(out, r.line())
				}
				return true, nil
			})
			if err != nil {
				return err
			}
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
	var n int64
	err := db.read(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, db.q("SELECT last_line FROM log_chunks WHERE job_id = ? ORDER BY first_line DESC LIMIT 1"), jobID).Scan(&n)
		if err == nil {
			return nil
		}
		if err != sql.ErrNoRows {
			return db.fail(ctx, err, "read log length")
		}
		return db.exists(ctx, tx, "SELECT 1 FROM jobs WHERE id = ?", jobID, "job %d not found")
	})
	return int(n), err
}

// cleanText returns s with invalid UTF-8 and NUL bytes replaced by U+FFFD.
func cleanText(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}
