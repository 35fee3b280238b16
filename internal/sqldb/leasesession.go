package sqldb

import (
	"context"
	"database/sql"
	"sort"
	"strings"

	"github.com/forgeci/forge"
)

// LeaseSessionStore keeps the lease manager's resumable sessions as they
// change (table lease_sessions: one row per session, its state as the
// manager's JSON), so that a server killed with kill -9 restarts with them.
// It implements internal/lease's SessionStore; the manager's journal writes
// to it in group-commit transactions.
//
// Fence, when set, runs inside every write transaction, before any row is
// written: an error from it rolls the transaction back and is returned as
// is. Servers sharing one database use it to check, in the very
// transaction that writes, that the writer is still the leader (an epoch
// check), so that a deposed leader's late batch changes nothing.
type LeaseSessionStore struct {
	DB    *DB
	Fence func(ctx context.Context, tx *sql.Tx) error
}

// LeaseSessions returns the kept sessions' states, by session id.
func (s *LeaseSessionStore) LeaseSessions(ctx context.Context) (map[string][]byte, error) {
	db := s.DB
	out := map[string][]byte{}
	err := db.read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, db.q("SELECT id, state FROM lease_sessions"))
		if err != nil {
			return db.fail(ctx, err, "read lease sessions")
		}
		defer rows.Close()
		for rows.Next() {
			var id, state string
			if err := rows.Scan(&id, &state); err != nil {
				return db.fail(ctx, err, "read lease sessions")
			}
			out[id] = []byte(state)
		}
		if err := rows.Err(); err != nil {
			return db.fail(ctx, err, "read lease sessions")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// leaseSessionChunk bounds the rows of one statement (3 placeholders a
// row: far below either database's limit).
const leaseSessionChunk = 200

// WriteLeaseSessions applies changes in one transaction: a session id
// with a state is upserted, one with a nil state deleted (deleting a row
// that is not there is no error).
func (s *LeaseSessionStore) WriteLeaseSessions(ctx context.Context, changes map[string][]byte) error {
	db := s.DB
	var put, del []string
	for id, st := range changes {
		if id == "" {
			return forge.Errorf(forge.EINVALID, "lease session without an id")
		}
		if st == nil {
			del = append(del, id)
		} else {
			put = append(put, id)
		}
	}
	// One order for every writer: concurrent transactions on PostgreSQL
	// then lock rows in the same order and cannot deadlock.
	sort.Strings(put)
	sort.Strings(del)
	t := micros(now())
	return db.write(ctx, func(tx *sql.Tx) error {
		if s.Fence != nil {
			if err := s.Fence(ctx, tx); err != nil {
				return err
			}
		}
		for len(put) > 0 {
			n := min(len(put), leaseSessionChunk)
			args := make([]any, 0, 3*n)
			for _, id := range put[:n] {
				args = append(args, id, string(changes[id]), t)
			}
			q := "INSERT INTO lease_sessions (id, state, updated) VALUES " +
				strings.TrimSuffix(strings.Repeat("(?, ?, ?), ", n), ", ") +
				" ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated = excluded.updated"
			if _, err := tx.ExecContext(ctx, db.q(q), args...); err != nil {
				return db.fail(ctx, err, "save lease sessions")
			}
			put = put[n:]
		}
		for len(del) > 0 {
			n := min(len(del), leaseSessionChunk)
			if _, err := tx.ExecContext(ctx, db.q("DELETE FROM lease_sessions WHERE id IN ("+marks(n)+")"), anys(del[:n])...); err != nil {
				return db.fail(ctx, err, "delete lease sessions")
			}
			del = del[n:]
		}
		return nil
	})
}
