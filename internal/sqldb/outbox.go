package sqldb

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/forgeci/forge"
)

var _ forge.OutboxStore = (*DB)(nil)

const outboxColumns = "item_key, kind, rank, weak, payload, ref, progress, version, delivered, attempts, next_at, error, created, updated"

func scanOutbox(row interface{ Scan(...any) error }) (*forge.OutboxItem, error) {
	o := new(forge.OutboxItem)
	var weak int
	var payload string
	err := row.Scan(&o.Key, &o.Kind, &o.Rank, &weak, &payload, &o.Ref, &o.Progress, &o.Version, &o.Delivered,
		&o.Attempts, timeCol{&o.NextAt}, &o.Error, timeCol{&o.Created}, timeCol{&o.Updated})
	if err != nil {
		return nil, err
	}
	o.Weak = weak != 0
	o.Payload = []byte(payload)
	return o, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Enqueue stores outbox items, replacing or dropping by Key and Rank, as
// forge.OutboxStore documents, in one transaction.
func (db *DB) Enqueue(ctx context.Context, owner string, leaseUntil time.Time, items []*forge.OutboxItem) ([]*forge.OutboxItem, error) {
	for _, it := range items {
		if it.Key == "" || it.Kind == "" {
			return nil, forge.Errorf(forge.EINVALID, "outbox item needs a key and a kind")
		}
	}
	var out []*forge.OutboxItem
	t := now()
	err := db.write(ctx, func(tx *sql.Tx) error {
		out = out[:0]
		stored := map[string]*forge.OutboxItem{} // this batch's, by key
		// A batch can be hundreds of items: each statement is parsed once.
		sel, err := tx.PrepareContext(ctx, db.q("SELECT "+outboxColumns+" FROM outbox WHERE item_key = ?"))
		if err != nil {
			return db.fail(ctx, err, "read outbox item")
		}
		defer sel.Close()
		ins, err := tx.PrepareContext(ctx, db.q(`INSERT INTO outbox (item_key, kind, rank, weak, payload, version, delivered, created, updated, owner, lease_until)
					VALUES (?, ?, ?, ?, ?, 1, 0, ?, ?, ?, ?)`))
		if err != nil {
			return db.fail(ctx, err, "save outbox item")
		}
		defer ins.Close()
		upd, err := tx.PrepareContext(ctx, db.q(`UPDATE outbox SET kind = ?, rank = ?, weak = ?, payload = ?, version = ?,
					attempts = 0, next_at = NULL, error = '', progress = 0, updated = ?, owner = ?, lease_until = ? WHERE item_key = ?`))
		if err != nil {
			return db.fail(ctx, err, "replace outbox item")
		}
		defer upd.Close()
		for _, it := range items {
			cur := stored[it.Key]
			if cur == nil {
				var err error
				cur, err = scanOutbox(sel.QueryRowContext(ctx, it.Key))
				if err != nil && !errors.Is(err, sql.ErrNoRows) {
					return db.fail(ctx, err, "read outbox item")
				}
			}
			if cur == nil {
				n := *it
				n.Version, n.Delivered, n.Attempts, n.Ref, n.Progress, n.Error = 1, 0, 0, "", 0, ""
				n.NextAt, n.Created, n.Updated = time.Time{}, t, t
				_, err := ins.ExecContext(ctx,
					n.Key, n.Kind, n.Rank, boolInt(n.Weak), string(n.Payload), t.UnixMicro(), t.UnixMicro(), owner, micros(leaseUntil))
				if err != nil {
					return db.fail(ctx, err, "save outbox item")
				}
				stored[n.Key] = &n
				continue
			}
			newer := it.Rank > cur.Rank || it.Rank == cur.Rank && !it.Weak && !bytes.Equal(it.Payload, cur.Payload)
			if !newer {
				continue
			}
			n := *cur
			n.Kind, n.Rank, n.Weak, n.Payload = it.Kind, it.Rank, it.Weak, it.Payload
			n.Version++
			n.Attempts, n.NextAt, n.Error, n.Updated, n.Progress = 0, time.Time{}, "", t, 0
			_, err := upd.ExecContext(ctx,
				n.Kind, n.Rank, boolInt(n.Weak), string(n.Payload), n.Version, t.UnixMicro(), owner, micros(leaseUntil), n.Key)
			if err != nil {
				return db.fail(ctx, err, "replace outbox item")
			}
			stored[n.Key] = &n
		}
		// In the order given, once per key: the last stored version.
		seen := map[string]bool{}
		for i := len(items) - 1; i >= 0; i-- {
			k := items[i].Key
			if seen[k] {
				continue
			}
			seen[k] = true
			if s := stored[k]; s != nil {
				out = append(out, s)
			}
		}
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Claim claims due pending items for owner, as forge.OutboxStore
// documents.
func (db *DB) Claim(ctx context.Context, owner string, at, leaseUntil time.Time, limit int, reclaim bool) ([]*forge.OutboxItem, error) {
	if limit <= 0 {
		limit = 100
	}
	var out []*forge.OutboxItem
	nowMicros := at.UnixMicro()
	// Replicas on PostgreSQL skip the rows another is claiming.
	lock := ""
	if db.dialect == dialectPostgres {
		lock = " FOR UPDATE SKIP LOCKED"
	}
	err := db.write(ctx, func(tx *sql.Tx) error {
		out = out[:0]
		rows, err := tx.QueryContext(ctx, db.q("SELECT "+outboxColumns+` FROM outbox
			WHERE version > delivered AND (next_at IS NULL OR next_at <= ?)
			  AND (lease_until IS NULL OR lease_until <= ? OR owner = '' OR (? = 1 AND owner = ?))
			ORDER BY created, item_key LIMIT ?`+lock), nowMicros, nowMicros, boolInt(reclaim), owner, limit)
		if err != nil {
			return db.fail(ctx, err, "list due outbox items")
		}
		for rows.Next() {
			o, err := scanOutbox(rows)
			if err != nil {
				rows.Close()
				return db.fail(ctx, err, "read outbox item")
			}
			out = append(out, o)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return db.fail(ctx, err, "list due outbox items")
		}
		for _, o := range out {
			_, err := tx.ExecContext(ctx, db.q("UPDATE outbox SET owner = ?, lease_until = ? WHERE item_key = ?"), owner, leaseUntil.UnixMicro(), o.Key)
			if err != nil {
				return db.fail(ctx, err, "claim outbox item")
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Settle records delivery outcomes, as forge.OutboxStore documents.
func (db *DB) Settle(ctx context.Context, results []forge.OutboxResult) error {
	if len(results) == 0 {
		return nil
	}
	t := now().UnixMicro()
	return db.write(ctx, func(tx *sql.Tx) error {
		done, err := tx.PrepareContext(ctx, db.q(`UPDATE outbox SET ref = ?, progress = ?,
						delivered = CASE WHEN version = ? THEN version ELSE delivered END,
						error = CASE WHEN version = ? THEN ? ELSE error END,
						owner = CASE WHEN version = ? THEN '' ELSE owner END,
						lease_until = CASE WHEN version = ? THEN NULL ELSE lease_until END,
						updated = ? WHERE item_key = ?`))
		if err != nil {
			return db.fail(ctx, err, "settle outbox item")
		}
		defer done.Close()
		for _, r := range results {
			var err error
			switch {
			case r.Failed == "" || r.NextAt.IsZero():
				// Delivered, or given up: either way this version is done.
				_, err = done.ExecContext(ctx,
					r.Ref, r.Progress, r.Version, r.Version, cleanText(r.Failed), r.Version, r.Version, t, r.Key)
			default:
				_, err = tx.ExecContext(ctx, db.q(`UPDATE outbox SET ref = ?, progress = ?,
						attempts = CASE WHEN version = ? THEN attempts + 1 ELSE attempts END,
						next_at = CASE WHEN version = ? THEN ? ELSE next_at END,
						error = CASE WHEN version = ? THEN ? ELSE error END,
						owner = CASE WHEN version = ? THEN '' ELSE owner END,
						lease_until = CASE WHEN version = ? THEN NULL ELSE lease_until END,
						updated = ? WHERE item_key = ?`),
					r.Ref, r.Progress, r.Version, r.Version, r.NextAt.UnixMicro(), r.Version, cleanText(r.Failed),
					r.Version, r.Version, t, r.Key)
			}
			if err != nil {
				return db.fail(ctx, err, "settle outbox item")
			}
		}
		return nil
	})
}

// PurgeOutbox removes delivered items not updated since before.
func (db *DB) PurgeOutbox(ctx context.Context, before time.Time) (int, error) {
	var n int64
	err := db.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, db.q("DELETE FROM outbox WHERE version = delivered AND updated < ?"), before.UnixMicro())
		if err != nil {
			return db.fail(ctx, err, "purge outbox")
		}
		n, _ = res.RowsAffected()
		return nil
	})
	return int(n), err
}
