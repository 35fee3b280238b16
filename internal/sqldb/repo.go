package sqldb

import (
	"context"
	"database/sql"
	"errors"

	"github.com/forgeci/forge"
)

var (
	_ forge.RepoStore     = (*DB)(nil)
	_ forge.DeliveryStore = (*DB)(nil)
	_ forge.TokenStore    = (*DB)(nil)
)

const repoColumns = "id, owner, name, clone_url, default_branch, private, created, updated"

func scanRepo(row interface{ Scan(...any) error }) (*forge.Repo, error) {
	r := new(forge.Repo)
	err := row.Scan(&r.ID, &r.Owner, &r.Name, &r.CloneURL, &r.DefaultBranch, &r.Private,
		timeCol{&r.Created}, timeCol{&r.Updated})
	return r, err
}

// UpsertRepo creates the repository r.Owner/r.Name or updates its clone
// URL, default branch and privacy, and sets r.ID, r.Created and r.Updated.
// Owner and name match exactly (case-sensitively).
func (db *DB) UpsertRepo(ctx context.Context, r *forge.Repo) error {
	if r.Owner == "" || r.Name == "" {
		return forge.Errorf(forge.EINVALID, "repository needs an owner and a name, got %q", r.FullName())
	}
	t := now()
	return db.write(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, db.q(`INSERT INTO repos (owner, name, clone_url, default_branch, private, created, updated)
			VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (owner, name) DO UPDATE SET clone_url = excluded.clone_url,
				default_branch = excluded.default_branch, private = excluded.private, updated = excluded.updated
			RETURNING id, created, updated`),
			r.Owner, r.Name, r.CloneURL, r.DefaultBranch, r.Private, t.UnixMicro(), t.UnixMicro(),
		).Scan(&r.ID, timeCol{&r.Created}, timeCol{&r.Updated})
		if err != nil {
			return db.fail(ctx, err, "save repository "+r.FullName())
		}
		return nil
	})
}

// Repo returns the repository with id; ENOTFOUND if there is none.
func (db *DB) Repo(ctx context.Context, id int64) (*forge.Repo, error) {
	r, err := scanRepo(db.r.QueryRowContext(ctx, db.q("SELECT "+repoColumns+" FROM repos WHERE id = ?"), id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("repository %d not found", id)
	}
	if err != nil {
		return nil, db.fail(ctx, err, "read repository")
	}
	return r, nil
}

// RepoByName returns the repository owner/name; ENOTFOUND if there is none.
func (db *DB) RepoByName(ctx context.Context, owner, name string) (*forge.Repo, error) {
	r, err := scanRepo(db.r.QueryRowContext(ctx, db.q("SELECT "+repoColumns+" FROM repos WHERE owner = ? AND name = ?"), owner, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("repository %s/%s not found", owner, name)
	}
	if err != nil {
		return nil, db.fail(ctx, err, "read repository")
	}
	return r, nil
}

// ListRepos returns every repository, by owner and name.
func (db *DB) ListRepos(ctx context.Context) ([]*forge.Repo, error) {
	rows, err := db.r.QueryContext(ctx, db.q("SELECT "+repoColumns+" FROM repos ORDER BY owner, name"))
	if err != nil {
		return nil, db.fail(ctx, err, "list repositories")
	}
	defer rows.Close()
	var out []*forge.Repo
	for rows.Next() {
		r, err := scanRepo(rows)
		if err != nil {
			return nil, db.fail(ctx, err, "list repositories")
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, db.fail(ctx, err, "list repositories")
	}
	return out, nil
}

// CreateDelivery stores d, setting d.Received to now when it is zero;
// ECONFLICT when d.ID was stored before (a redelivery).
func (db *DB) CreateDelivery(ctx context.Context, d *forge.Delivery) error {
	if d.ID == "" || d.Event == "" {
		return forge.Errorf(forge.EINVALID, "delivery needs an id and an event")
	}
	if d.Received.IsZero() {
		d.Received = now()
	}
	d.Received = stamp(d.Received)
	payload := d.Payload
	if payload == nil {
		payload = []byte{}
	}
	return db.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, db.q(`INSERT INTO deliveries (id, event, action, payload, received, processed, result)
			VALUES (?, ?, ?, ?, ?, ?, ?)`),
			d.ID, d.Event, d.Action, payload, d.Received.UnixMicro(), micros(d.Processed), d.Result)
		if isUnique(err) {
			return forge.WrapError(forge.ECONFLICT, err, "delivery "+d.ID+" was received before")
		}
		if err != nil {
			return db.fail(ctx, err, "save delivery "+d.ID)
		}
		return nil
	})
}

// CreateDeliveries stores ds in one transaction, so a burst of webhooks
// costs one disk flush instead of one per delivery (the webhook handler's
// group commit finds it by type assertion). It returns one error per
// delivery: nil when stored, ECONFLICT when its id was stored before (also
// earlier in ds), EINVALID when it lacks an id or event, and the
// transaction's error for every stored one when the transaction fails.
func (db *DB) CreateDeliveries(ctx context.Context, ds []*forge.Delivery) []error {
	errs := make([]error, len(ds))
	err := db.write(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, db.q(`INSERT INTO deliveries (id, event, action, payload, received, processed, result)
			VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`))
		if err != nil {
			return db.fail(ctx, err, "prepare delivery insert")
		}
		defer stmt.Close()
		for i, d := range ds {
			if d.ID == "" || d.Event == "" {
				errs[i] = forge.Errorf(forge.EINVALID, "delivery needs an id and an event")
				continue
			}
			if d.Received.IsZero() {
				d.Received = now()
			}
			d.Received = stamp(d.Received)
			payload := d.Payload
			if payload == nil {
				payload = []byte{}
			}
			res, err := stmt.ExecContext(ctx, d.ID, d.Event, d.Action, payload, d.Received.UnixMicro(), micros(d.Processed), d.Result)
			if err != nil {
				return db.fail(ctx, err, "save delivery "+d.ID)
			}
			// ON CONFLICT DO NOTHING keeps the transaction alive on both
			// databases; no row written means the id was there already.
			if n, err := res.RowsAffected(); err != nil {
				return db.fail(ctx, err, "save delivery "+d.ID)
			} else if n == 0 {
				errs[i] = forge.Errorf(forge.ECONFLICT, "delivery %s was received before", d.ID)
				continue
			}
		}
		return nil
	})
	if err != nil {
		// The whole batch was rolled back, conflicts found in it included.
		for i := range errs {
			if forge.ErrorCode(errs[i]) != forge.EINVALID {
				errs[i] = err
			}
		}
	}
	return errs
}

// PendingDeliveries returns up to limit unprocessed deliveries, oldest
// first; limit <= 0 means 100.
func (db *DB) PendingDeliveries(ctx context.Context, limit int) ([]*forge.Delivery, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := db.r.QueryContext(ctx, db.q(`SELECT id, event, action, payload, received, processed, result
		FROM deliveries WHERE processed IS NULL ORDER BY received, id LIMIT ?`), limit)
	if err != nil {
		return nil, db.fail(ctx, err, "list pending deliveries")
	}
	defer rows.Close()
	var out []*forge.Delivery
	for rows.Next() {
		d := new(forge.Delivery)
		if err := rows.Scan(&d.ID, &d.Event, &d.Action, &d.Payload, timeCol{&d.Received}, timeCol{&d.Processed}, &d.Result); err != nil {
			return nil, db.fail(ctx, err, "list pending deliveries")
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, db.fail(ctx, err, "list pending deliveries")
	}
	return out, nil
}

// Delivery returns the delivery with id; ENOTFOUND if there is none.
func (db *DB) Delivery(ctx context.Context, id string) (*forge.Delivery, error) {
	d := new(forge.Delivery)
	err := db.r.QueryRowContext(ctx, db.q(`SELECT id, event, action, payload, received, processed, result
		FROM deliveries WHERE id = ?`), id).
		Scan(&d.ID, &d.Event, &d.Action, &d.Payload, timeCol{&d.Received}, timeCol{&d.Processed}, &d.Result)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("delivery %s not found", id)
	}
	if err != nil {
		return nil, db.fail(ctx, err, "read delivery")
	}
	return d, nil
}

// FinishDelivery marks delivery id processed now, with its result;
// ENOTFOUND if there is no such delivery. Finishing a delivery again
// replaces its result.
func (db *DB) FinishDelivery(ctx context.Context, id, result string) error {
	return db.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, db.q("UPDATE deliveries SET processed = ?, result = ? WHERE id = ?"), now().UnixMicro(), cleanText(result), id)
		if err != nil {
			return db.fail(ctx, err, "finish delivery "+id)
		}
		if n, err := res.RowsAffected(); err != nil {
			return db.fail(ctx, err, "finish delivery "+id)
		} else if n == 0 {
			return notFound("delivery %s not found", id)
		}
		return nil
	})
}

// CreateToken stores t and sets t.ID (and t.Created when zero); ECONFLICT
// when a token with the same hash exists.
func (db *DB) CreateToken(ctx context.Context, t *forge.Token) error {
	if t.Name == "" || t.Hash == "" {
		return forge.Errorf(forge.EINVALID, "token needs a name and a hash")
	}
	if t.Created.IsZero() {
		t.Created = now()
	}
	t.Created = stamp(t.Created)
	return db.write(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, db.q("INSERT INTO tokens (name, hash, admin, created) VALUES (?, ?, ?, ?) RETURNING id"),
			t.Name, t.Hash, t.Admin, t.Created.UnixMicro()).Scan(&t.ID)
		if isUnique(err) {
			return forge.WrapError(forge.ECONFLICT, err, "a token with this secret exists")
		}
		if err != nil {
			return db.fail(ctx, err, "save token "+t.Name)
		}
		return nil
	})
}

// TokenByHash finds a token by the hash of its secret; ENOTFOUND if none.
func (db *DB) TokenByHash(ctx context.Context, hash string) (*forge.Token, error) {
	t := new(forge.Token)
	err := db.r.QueryRowContext(ctx, db.q("SELECT id, name, hash, admin, created FROM tokens WHERE hash = ?"), hash).
		Scan(&t.ID, &t.Name, &t.Hash, &t.Admin, timeCol{&t.Created})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("token not found")
	}
	if err != nil {
		return nil, db.fail(ctx, err, "read token")
	}
	return t, nil
}

// ListTokens returns every token (without secrets, which are never
// stored), oldest first.
func (db *DB) ListTokens(ctx context.Context) ([]*forge.Token, error) {
	rows, err := db.r.QueryContext(ctx, db.q("SELECT id, name, hash, admin, created FROM tokens ORDER BY id"))
	if err != nil {
		return nil, db.fail(ctx, err, "list tokens")
	}
	defer rows.Close()
	var out []*forge.Token
	for rows.Next() {
		t := new(forge.Token)
		if err := rows.Scan(&t.ID, &t.Name, &t.Hash, &t.Admin, timeCol{&t.Created}); err != nil {
			return nil, db.fail(ctx, err, "list tokens")
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, db.fail(ctx, err, "list tokens")
	}
	return out, nil
}

// DeleteToken removes the token with id; ENOTFOUND if there is none.
func (db *DB) DeleteToken(ctx context.Context, id int64) error {
	return db.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, db.q("DELETE FROM tokens WHERE id = ?"), id)
		if err != nil {
			return db.fail(ctx, err, "delete token")
		}
		if n, err := res.RowsAffected(); err != nil {
			return db.fail(ctx, err, "delete token")
		} else if n == 0 {
			return notFound("token %d not found", id)
		}
		return nil
	})
}
