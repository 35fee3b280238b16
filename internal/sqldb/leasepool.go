package sqldb

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"

	"github.com/forgeci/forge"
)

// LeasePools returns the lease pools kept in the store, by name, and the
// names of pools deleted through the API (tombstones).
func (db *DB) LeasePools(ctx context.Context) (pools []*forge.Pool, deleted []string, err error) {
	err = db.read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, db.q("SELECT name, pool, deleted FROM lease_pools ORDER BY name"))
		if err != nil {
			return db.fail(ctx, err, "read lease pools")
		}
		defer rows.Close()
		for rows.Next() {
			var name, def string
			var del int
			if err := rows.Scan(&name, &def, &del); err != nil {
				return db.fail(ctx, err, "read lease pools")
			}
			if del != 0 {
				deleted = append(deleted, name)
				continue
			}
			p := new(forge.Pool)
			if err := json.Unmarshal([]byte(def), p); err != nil {
				return forge.Errorf(forge.EINTERNAL, "stored lease pool %q is not valid JSON: %v", name, err)
			}
			p.Name = name
			pools = append(pools, p)
		}
		if err := rows.Err(); err != nil {
			return db.fail(ctx, err, "read lease pools")
		}
		return nil
	})
	return pools, deleted, err
}

// SaveLeasePool keeps p's definition, replacing what was kept of it (a
// tombstone too).
func (db *DB) SaveLeasePool(ctx context.Context, p *forge.Pool) error {
	if p == nil || p.Name == "" {
		return forge.Errorf(forge.EINVALID, "lease pool without a name")
	}
	def, err := json.Marshal(p)
	if err != nil {
		return forge.Errorf(forge.EINTERNAL, "encode lease pool %q: %v", p.Name, err)
	}
	return db.putLeasePool(ctx, p.Name, string(def), false)
}

// DeleteLeasePool records that pool name was deleted (a tombstone).
func (db *DB) DeleteLeasePool(ctx context.Context, name string) error {
	return db.putLeasePool(ctx, name, "", true)
}

func (db *DB) putLeasePool(ctx context.Context, name, def string, deleted bool) error {
	return db.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, db.q(`INSERT INTO lease_pools (name, pool, deleted, updated) VALUES (?, ?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET pool = excluded.pool, deleted = excluded.deleted, updated = excluded.updated`),
			name, def, boolInt(deleted), micros(now()))
		if err != nil {
			return db.fail(ctx, err, "save lease pool "+name)
		}
		return nil
	})
}

// SaveLeaseState keeps the lease sessions' state a stopping server leaves
// for the next one (replacing any kept before).
func (db *DB) SaveLeaseState(ctx context.Context, state []byte) error {
	return db.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, db.q(`INSERT INTO lease_state (id, state, saved) VALUES (1, ?, ?)
			ON CONFLICT (id) DO UPDATE SET state = excluded.state, saved = excluded.saved`), string(state), micros(now()))
		if err != nil {
			return db.fail(ctx, err, "save lease state")
		}
		return nil
	})
}

// TakeLeaseState returns the kept lease state and removes it, so that it
// is resumed once (nil when there is none).
func (db *DB) TakeLeaseState(ctx context.Context) ([]byte, error) {
	var out []byte
	err := db.write(ctx, func(tx *sql.Tx) error {
		var state string
		err := tx.QueryRowContext(ctx, db.q("SELECT state FROM lease_state WHERE id = 1")).Scan(&state)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return db.fail(ctx, err, "read lease state")
		}
		if _, err := tx.ExecContext(ctx, db.q("DELETE FROM lease_state WHERE id = 1")); err != nil {
			return db.fail(ctx, err, "take lease state")
		}
		out = []byte(state)
		return nil
	})
	return out, err
}
