package sqldb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/forgeci/forge"
)

// The lease leader of servers sharing one PostgreSQL database (issue 12
// item 3). One server at a time holds a session-level advisory lock on a
// connection of its own and serves the lease state; the others forward
// lease connections and calls to it. The table lease_leader (one row)
// says who it is (url, token) and counts the leaders (epoch), so that
// every lease state write of a leader can check, in its own transaction,
// that no newer leader exists (LeaseTerm.Fence).

// LeaseLeader is the row of lease_leader: the current (or last) leader.
type LeaseLeader struct {
	Epoch    int64
	URL      string // where the others forward to; "" while it loads its state
	Token    string // what forwarding replicas present to it
	Instance string // a name for people (logs)
	Elected  time.Time
}

// ErrDeposed is the error of a fenced write (LeaseTerm.Fence) by a server
// that is no longer the lease leader: another took the lock and a newer
// epoch. Check it with errors.Is.
var ErrDeposed = errors.New("this server is no longer the lease leader")

// LeaseElection campaigns for the lease leadership on a PostgreSQL
// database. Its zero durations take the defaults.
type LeaseElection struct {
	DB       *DB
	URL      string // this server's internal URL, for the others to forward to
	Token    string // what the others present when they forward
	Instance string
	// Poll is how often a candidate tries the lock (default 200 ms): a
	// dead leader's replacement takes over within it.
	Poll time.Duration
	// Check is how often the leader checks its lock connection (default
	// 1 s); a check that gets no answer within CheckTimeout (default 2 s)
	// ends the term: the leader steps down well before PostgreSQL, whose
	// keepalive on that connection gives up after about 11 s
	// (leaderKeepalive), releases the lock to another.
	Check        time.Duration
	CheckTimeout time.Duration
}

// leaderKeepalive is what the lock connection asks of PostgreSQL's TCP
// keepalive: idle seconds before the first probe, seconds between probes,
// probes lost before the connection (and with it the lock) is dropped.
// A leader cut from the database loses its lock after about 5 + 2×3 =
// 11 s, and stops serving after at most Check + CheckTimeout (3 s).
const leaderKeepaliveIdle, leaderKeepaliveInterval, leaderKeepaliveCount = 5, 2, 3

// leaderUserTimeout bounds how long PostgreSQL keeps the lock connection
// while what it sent there goes unacknowledged (a cut while it answered a
// check): as long as the keepalive's bound, so a cut leader, which stops
// within 3 s, always stops well before another can lead.
const leaderUserTimeout = 11 * time.Second

// leaderLock is the advisory lock key of the lease leader: the
// migration lock's key (per database and schema) with other bits.
func (db *DB) leaderLock() int64 { return db.lockID ^ 0x1ea5e1eade4 }

// LeaseLeaderLock is the key of the lease leader's advisory lock, as
// pg_locks shows it (classid the high 32 bits, objid the low ones): an
// operator finds the leader's database session with it.
func (db *DB) LeaseLeaderLock() int64 { return db.leaderLock() }

// LeaseLeader returns the row of lease_leader; a zero LeaseLeader when no
// server ever led.
func (db *DB) LeaseLeader(ctx context.Context) (*LeaseLeader, error) {
	var l LeaseLeader
	var elected int64
	err := db.w.QueryRowContext(ctx, db.q("SELECT epoch, url, token, instance, elected FROM lease_leader WHERE id = 1")).
		Scan(&l.Epoch, &l.URL, &l.Token, &l.Instance, &elected)
	if errors.Is(err, sql.ErrNoRows) {
		return &LeaseLeader{}, nil
	}
	if err != nil {
		return nil, db.fail(ctx, err, "read the lease leader")
	}
	if elected != 0 {
		l.Elected = time.UnixMicro(elected).UTC()
	}
	return &l, nil
}

// Campaign waits until this server holds the lease leader's lock, then
// starts a new epoch (with an empty URL: call Publish once the lease
// state is loaded) and returns the term. It fails when ctx ends, and on
// SQLite, which serves one server only.
func (e *LeaseElection) Campaign(ctx context.Context) (*LeaseTerm, error) {
	db := e.DB
	if db.dialect != dialectPostgres {
		return nil, forge.Errorf(forge.EINVALID, "lease replicas need PostgreSQL: %s serves one server", db.where)
	}
	poll := cmpOr(e.Poll, 200*time.Millisecond)
	var conn *sql.Conn // kept between attempts: one connection campaigns
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for {
		if conn == nil {
			c, err := e.lockConn(ctx)
			if err != nil {
				return nil, err
			}
			conn = c
		}
		t, err := e.try(ctx, conn)
		if t != nil {
			conn = nil // the term's now
			return t, nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			// The connection failed: try again on another.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
			conn.Close()
			conn = nil
		}
		select {
		case <-ctx.Done():
			return nil, db.fail(ctx, ctx.Err(), "wait for the lease leadership")
		case <-time.After(poll):
		}
	}
}

// lockConn takes a connection for the lock, with short keepalives: a
// leader cut from the database loses the lock in seconds, not after the
// kernel's two hours.
func (e *LeaseElection) lockConn(ctx context.Context) (*sql.Conn, error) {
	db := e.DB
	conn, err := db.w.Conn(ctx)
	if err != nil {
		return nil, db.fail(ctx, err, "take the lease leader lock")
	}
	for _, set := range []string{
		fmt.Sprintf("SET tcp_keepalives_idle = %d", leaderKeepaliveIdle),
		fmt.Sprintf("SET tcp_keepalives_interval = %d", leaderKeepaliveInterval),
		fmt.Sprintf("SET tcp_keepalives_count = %d", leaderKeepaliveCount),
	} {
		if _, err := conn.ExecContext(ctx, set); err != nil {
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
			conn.Close()
			return nil, db.fail(ctx, err, "set the lease leader lock's keepalive")
		}
	}
	// Data the database sent into a cut network is retried for many
	// minutes, keepalive or not: bound that too (PostgreSQL 12 and
	// later; older ones fall back to the keepalive alone).
	if _, err := conn.ExecContext(ctx, fmt.Sprintf("SET tcp_user_timeout = %d", leaderUserTimeout.Milliseconds())); err != nil && ctx.Err() != nil {
		conn.Close()
		return nil, db.fail(ctx, err, "set the lease leader lock's timeout")
	}
	return conn, nil
}

// try makes one attempt at the lock on conn: a term, or nil when another
// holds it.
func (e *LeaseElection) try(ctx context.Context, conn *sql.Conn) (*LeaseTerm, error) {
	db := e.DB
	var ok bool
	if err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock($1)", db.leaderLock()).Scan(&ok); err != nil {
		return nil, db.fail(ctx, err, "take the lease leader lock")
	}
	if !ok {
		return nil, nil
	}
	t0 := micros(now())
	var epoch int64
	err := conn.QueryRowContext(ctx, db.q("INSERT INTO lease_leader (id, epoch, url, token, instance, elected, renewed) VALUES (1, 1, '', ?, ?, ?, ?) "+
		"ON CONFLICT (id) DO UPDATE SET epoch = lease_leader.epoch + 1, url = '', token = excluded.token, "+
		"instance = excluded.instance, elected = excluded.elected, renewed = excluded.renewed RETURNING epoch"),
		e.Token, e.Instance, t0, t0).Scan(&epoch)
	if err != nil {
		// The caller drops the connection, and the lock with its session.
		return nil, db.fail(ctx, err, "start a lease leader epoch")
	}
	t := &LeaseTerm{db: db, e: e, epoch: epoch, conn: conn, lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go t.watch()
	return t, nil
}

// LeaseTerm is one server's time as the lease leader: from Campaign until
// Resign, or until it loses the lock (Lost).
type LeaseTerm struct {
	db    *DB
	e     *LeaseElection
	epoch int64
	conn  *sql.Conn // the lock's; only watch uses it

	lostOnce sync.Once
	lost     chan struct{}
	why      error
	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// Epoch is the term's epoch.
func (t *LeaseTerm) Epoch() int64 { return t.epoch }

// Lost is closed when the term ended without Resign: the lock connection
// failed or did not answer in time, or a fenced write found a newer
// epoch. The server must stop serving leases at once.
func (t *LeaseTerm) Lost() <-chan struct{} { return t.lost }

// Err says why the term was lost (nil while it is not).
func (t *LeaseTerm) Err() error {
	select {
	case <-t.lost:
		return t.why
	default:
		return nil
	}
}

func (t *LeaseTerm) lose(err error) {
	t.lostOnce.Do(func() {
		t.why = err
		close(t.lost)
	})
}

// watch checks the lock connection until the term ends; on Resign it
// releases the lock.
func (t *LeaseTerm) watch() {
	defer close(t.done)
	tick := time.NewTicker(cmpOr(t.e.Check, time.Second))
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := t.conn.ExecContext(ctx, "SELECT pg_advisory_unlock($1)", t.db.leaderLock())
			cancel()
			if err != nil {
				_ = t.conn.Raw(func(any) error { return driver.ErrBadConn })
			}
			t.conn.Close()
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), cmpOr(t.e.CheckTimeout, 2*time.Second))
		err := t.conn.PingContext(ctx)
		cancel()
		if err != nil {
			t.lose(forge.WrapError(forge.EUNAVAILABLE, err, fmt.Sprintf("the lease leader's lock connection failed (epoch %d): %v", t.epoch, err)))
			_ = t.conn.Raw(func(any) error { return driver.ErrBadConn })
			t.conn.Close()
			return
		}
	}
}

// Fence checks, inside tx, that the term's epoch is still the newest, and
// records the write's time: ErrDeposed (code ECONFLICT) when another
// leader has begun, which also ends the term. Run it in every transaction
// that writes lease state: a deposed leader's late write then changes
// nothing, whatever it believes.
func (t *LeaseTerm) Fence(ctx context.Context, tx *sql.Tx) error {
	res, err := tx.ExecContext(ctx, t.db.q("UPDATE lease_leader SET renewed = ? WHERE id = 1 AND epoch = ?"), micros(now()), t.epoch)
	if err != nil {
		return t.db.fail(ctx, err, "check the lease leader's epoch")
	}
	if n, err := res.RowsAffected(); err != nil {
		return t.db.fail(ctx, err, "check the lease leader's epoch")
	} else if n != 1 {
		err := forge.WrapError(forge.ECONFLICT, ErrDeposed, fmt.Sprintf("this server is no longer the lease leader: epoch %d was superseded", t.epoch))
		t.lose(err)
		return err
	}
	return nil
}

// Publish announces the term's URL and token to the other servers, once
// the leader is ready to serve: fenced, so a deposed leader cannot
// overwrite its successor's.
func (t *LeaseTerm) Publish(ctx context.Context) error {
	return t.db.write(ctx, func(tx *sql.Tx) error {
		if err := t.Fence(ctx, tx); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, t.db.q("UPDATE lease_leader SET url = ?, token = ? WHERE id = 1 AND epoch = ?"), t.e.URL, t.e.Token, t.epoch); err != nil {
			return t.db.fail(ctx, err, "publish the lease leader")
		}
		return nil
	})
}

// Resign ends the term and releases the lock (a successor takes it within
// its Poll). It waits for the lock connection to be let go.
func (t *LeaseTerm) Resign() {
	t.lose(forge.Errorf(forge.ECANCELED, "resigned the lease leadership (epoch %d)", t.epoch))
	t.stopOnce.Do(func() { close(t.stop) })
	<-t.done
}

// cmpOr returns d, or def when d is not positive.
func cmpOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
