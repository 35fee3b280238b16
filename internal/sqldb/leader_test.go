package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// Two servers on one PostgreSQL database: one leads at a time, each new
// leader has a newer epoch, and the deposed one's fenced writes fail.
func TestLeaseLeaderElection(t *testing.T) {
	requirePostgres(t)
	t.Parallel()
	ctx := context.Background()
	cfg := testConfig(t, "postgres")
	a := openTest(t, cfg)
	if _, err := a.Migrate(ctx, "up"); err != nil {
		t.Fatal(err)
	}
	b := openTest(t, cfg)
	if l, err := a.LeaseLeader(ctx); err != nil || l.Epoch != 0 {
		t.Fatalf("before any leader: %+v, %v", l, err)
	}
	ea := &LeaseElection{DB: a, URL: "http://a", Token: "ta", Instance: "a", Poll: 10 * time.Millisecond, Check: 50 * time.Millisecond}
	eb := &LeaseElection{DB: b, URL: "http://b", Token: "tb", Instance: "b", Poll: 10 * time.Millisecond, Check: 50 * time.Millisecond}
	ta, err := ea.Campaign(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := a.LeaseLeader(ctx); l.Epoch != ta.Epoch() || l.URL != "" || l.Instance != "a" {
		t.Fatalf("elected, not yet published: %+v (epoch %d)", l, ta.Epoch())
	}
	if err := ta.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if l, _ := b.LeaseLeader(ctx); l.URL != "http://a" || l.Token != "ta" {
		t.Fatalf("published: %+v", l)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = eb.Campaign(short)
	cancel()
	wantCode(t, err, forge.ETIMEOUT)
	if err := fenced(ctx, a, ta); err != nil {
		t.Fatalf("the leader's fenced write: %v", err)
	}

	// A leader whose lock connection dies loses its term.
	var pid int
	if err := a.w.QueryRowContext(ctx, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = ($1::bigint & 4294967295)::oid AND granted", a.leaderLock()).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := b.w.ExecContext(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ta.Lost():
	case <-time.After(30 * time.Second):
		t.Fatal("the leader did not notice its lock connection ended")
	}
	tb, err := eb.Campaign(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tb.Epoch() != ta.Epoch()+1 {
		t.Fatalf("new epoch %d after %d", tb.Epoch(), ta.Epoch())
	}
	err = fenced(ctx, a, ta)
	if !errors.Is(err, ErrDeposed) {
		t.Fatalf("deposed leader's write: %v, want ErrDeposed", err)
	}
	wantCode(t, err, forge.ECONFLICT)
	if err := tb.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	tb.Resign()
	ta2, err := ea.Campaign(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ta2.Resign()
	if ta2.Epoch() != tb.Epoch()+1 {
		t.Fatalf("epoch %d after %d", ta2.Epoch(), tb.Epoch())
	}
	if err := tb.Publish(ctx); !errors.Is(err, ErrDeposed) {
		t.Fatalf("a deposed leader published: %v", err)
	}
}

func fenced(ctx context.Context, db *DB, t *LeaseTerm) error {
	return db.write(ctx, func(tx *sql.Tx) error { return t.Fence(ctx, tx) })
}

func TestLeaseLeaderNeedsPostgres(t *testing.T) {
	db := newTestDB(t, "sqlite")
	_, err := (&LeaseElection{DB: db}).Campaign(context.Background())
	wantCode(t, err, forge.EINVALID)
	if l, err := db.LeaseLeader(context.Background()); err != nil || l.Epoch != 0 {
		t.Fatalf("%+v %v", l, err)
	}
}
