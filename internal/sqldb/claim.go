package sqldb

import (
	"context"
	"database/sql"
	"slices"
	"strings"
	"time"

	"github.com/forgeci/forge"
)

// Delivery claims: with several servers on one database, the one holding
// a repository's claim is the only one processing that repository's
// deliveries (see migration 00004). A claim has an owner (a server's ID)
// and an expiry the owner keeps pushing forward while it works; a claim
// whose expiry has passed was left by a server that died and is taken
// over by the next one that asks.

// ClaimDeliveries claims for owner, until the time until, each of keys (a
// repository's full name, "" for deliveries that name none) that no other
// server holds at now: a key without a claim, with owner's own claim, with
// one that expired before now, or with one whose owner starts with home
// (when not empty: an earlier process of the same server, gone since).
// It returns the keys owner holds afterwards, in the order given. One
// transaction; keys are claimed in sorted order, so servers claiming at
// once never deadlock.
func (db *DB) ClaimDeliveries(ctx context.Context, owner, home string, keys []string, now, until time.Time) ([]string, error) {
	if owner == "" || until.IsZero() || !strings.HasPrefix(owner, home) {
		return nil, forge.Errorf(forge.EINVALID, "claim deliveries: an owner, its home (a prefix of it, or empty) and an expiry are required")
	}
	sorted := slices.Clone(keys)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	held := make(map[string]bool, len(sorted))
	err := db.write(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, db.q(`INSERT INTO delivery_claims (repo, owner, expires) VALUES (?, ?, ?)
			ON CONFLICT (repo) DO UPDATE SET owner = excluded.owner, expires = excluded.expires
			WHERE delivery_claims.owner = excluded.owner OR delivery_claims.expires < ?
				OR (? <> '' AND substr(delivery_claims.owner, 1, length(?)) = ?)
			RETURNING repo`))
		if err != nil {
			return db.fail(ctx, err, "claim deliveries")
		}
		defer stmt.Close()
		for _, k := range sorted {
			var got string
			err := stmt.QueryRowContext(ctx, k, owner, until.UnixMicro(), now.UnixMicro(), home, home, home).Scan(&got)
			switch {
			case err == nil:
				held[k] = true
			case err != sql.ErrNoRows:
				return db.fail(ctx, err, "claim deliveries of "+k)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range keys {
		if held[k] && !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out, nil
}

// TouchDeliveryClaims moves the expiry of owner's claims on keys to
// until; keys owner does not hold (any more) are skipped. It returns how
// many claims it extended.
func (db *DB) TouchDeliveryClaims(ctx context.Context, owner string, keys []string, until time.Time) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	var n int64
	err := db.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, db.q(`UPDATE delivery_claims SET expires = ? WHERE owner = ? AND repo IN (`+marks(len(keys))+`)`),
			append([]any{until.UnixMicro(), owner}, anys(keys)...)...)
		if err != nil {
			return db.fail(ctx, err, "extend delivery claims")
		}
		n, err = res.RowsAffected()
		return err
	})
	return int(n), err
}

// ReleaseDeliveryClaims gives up owner's claims on keys, so another server
// may take those repositories' deliveries at once.
func (db *DB) ReleaseDeliveryClaims(ctx context.Context, owner string, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	return db.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, db.q(`DELETE FROM delivery_claims WHERE owner = ? AND repo IN (`+marks(len(keys))+`)`),
			append([]any{owner}, anys(keys)...)...)
		if err != nil {
			return db.fail(ctx, err, "release delivery claims")
		}
		return nil
	})
}

// DeliveryBacklog returns how many deliveries wait to be processed and
// when the oldest of them was received (zero when none waits).
func (db *DB) DeliveryBacklog(ctx context.Context) (int, time.Time, error) {
	var n int
	var oldest time.Time
	err := db.r.QueryRowContext(ctx, `SELECT count(*), min(received) FROM deliveries WHERE processed IS NULL`).Scan(&n, timeCol{&oldest})
	if err != nil {
		return 0, time.Time{}, db.fail(ctx, err, "count pending deliveries")
	}
	return n, oldest, nil
}

// FinishDeliveries is FinishDelivery for many deliveries (ID and Result
// of each) in one transaction: one durable commit for a burst. Deliveries
// that do not exist are skipped.
func (db *DB) FinishDeliveries(ctx context.Context, ds []*forge.Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	t := now()
	return db.write(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, db.q("UPDATE deliveries SET processed = ?, result = ? WHERE id = ?"))
		if err != nil {
			return db.fail(ctx, err, "finish deliveries")
		}
		defer stmt.Close()
		for _, d := range ds {
			if _, err := stmt.ExecContext(ctx, t.UnixMicro(), cleanText(d.Result), d.ID); err != nil {
				return db.fail(ctx, err, "finish delivery "+d.ID)
			}
			d.Processed = t
		}
		return nil
	})
}

// marks is n comma-separated placeholders.
func marks(n int) string { return strings.TrimSuffix(strings.Repeat("?, ", n), ", ") }

func anys(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}
