package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/pgtest"
	"github.com/forgeci/forge/internal/sqldb"
)

// leaseReplicaSet is forge servers sharing one PostgreSQL schema: lease
// replicas (docs/leases.md, "Replicas").
type leaseReplicaSet struct {
	t     testing.TB
	pg    string
	cfg   string
	dir   string
	addrs []string
	procs []*leaseProc
	db    *sqldb.DB
}

// startLeaseReplicas starts n servers on a new PostgreSQL schema with the
// configuration cfg, the first alone (it creates the schema), and waits
// for a leader.
func startLeaseReplicas(t testing.TB, n int, cfg string) *leaseReplicaSet {
	t.Helper()
	rs := &leaseReplicaSet{t: t, pg: pgtest.Schema(t, "forge_replicas"), dir: t.TempDir()}
	rs.cfg = filepath.Join(rs.dir, "forge.yml")
	if err := os.WriteFile(rs.cfg, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		rs.addrs = append(rs.addrs, ln.Addr().String())
		ln.Close()
	}
	rs.procs = make([]*leaseProc, n)
	for i := range rs.addrs {
		rs.start(i)
	}
	db, err := sqldb.Open(context.Background(), sqldb.Config{URL: rs.pg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	rs.db = db
	rs.leader(0)
	return rs
}

// start (re)starts server i and waits for it to answer.
func (rs *leaseReplicaSet) start(i int) {
	rs.t.Helper()
	data := filepath.Join(rs.dir, fmt.Sprintf("data%d", i))
	p := startLeaseForge(rs.t, []string{"FORGE_MIGRATE=auto", "FORGE_DATABASE_URL=" + rs.pg},
		"server", "--config", rs.cfg, "--addr", rs.addrs[i], "--data", data)
	leaseWaitFor(rs.t, 60*time.Second, "forge server to answer", func() bool {
		select {
		case <-p.done:
			rs.t.Fatalf("forge server %d exited %d: %s", i, p.code, p.stderr.String())
		default:
		}
		resp, err := http.Get("http://" + rs.addrs[i] + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	rs.procs[i] = p
	rs.t.Cleanup(func() {
		if rs.t.Failed() {
			rs.t.Logf("server %d (%s) log:\n%s", i, rs.addrs[i], tail(p.stderr.String(), 60))
		}
	})
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// alive reports whether server i runs.
func (rs *leaseReplicaSet) alive(i int) bool {
	select {
	case <-rs.procs[i].done:
		return false
	default:
		return true
	}
}

// leader waits for a running server to lead with an epoch after since,
// and returns its index and epoch.
func (rs *leaseReplicaSet) leader(since int64) (int, int64) {
	rs.t.Helper()
	idx, epoch := -1, int64(0)
	leaseWaitFor(rs.t, 60*time.Second, "a lease leader", func() bool {
		l, err := rs.db.LeaseLeader(context.Background())
		if err != nil || l.Epoch <= since || l.URL == "" {
			return false
		}
		for i, a := range rs.addrs {
			if l.URL == "http://"+a && rs.alive(i) {
				idx, epoch = i, l.Epoch
				return true
			}
		}
		return false
	})
	return idx, epoch
}

// kill9 kills server i with SIGKILL.
func (rs *leaseReplicaSet) kill9(i int) {
	rs.t.Helper()
	rs.procs[i].cmd.Process.Kill()
	select {
	case <-rs.procs[i].done:
	case <-time.After(20 * time.Second):
		rs.t.Fatalf("server %d lives on after SIGKILL", i)
	}
}

// leasesOn returns the leases in force as server i's REST API shows them:
// lease id → resource ids, and the ids of those detached.
func leasesOn(t testing.TB, addr string) (map[string][]string, map[string]bool, error) {
	resp, err := http.Get("http://" + addr + "/api/v1/leases")
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("GET /api/v1/leases on %s: %s", addr, resp.Status)
	}
	var body struct {
		Leases []struct {
			ID            string              `json:"id"`
			Resources     map[string][]string `json:"resources"`
			DetachedUntil string              `json:"detached_until"`
		} `json:"leases"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, nil, err
	}
	out, detached := map[string][]string{}, map[string]bool{}
	for _, l := range body.Leases {
		for _, ids := range l.Resources {
			out[l.ID] = append(out[l.ID], ids...)
		}
		if l.DetachedUntil != "" {
			detached[l.ID] = true
		}
	}
	return out, detached, nil
}

// logLines collects a lease client's reconnection messages.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logLines) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

// TestLeaseReplicasFailover: three servers on one PostgreSQL database
// serve one set of pools. A client of a follower gets its lease from the
// leader's pools (the others' REST APIs show it); kill -9 of the leader
// makes a follower lead, and the holder resumes its session, through the
// same follower, with the same resource, which nobody else gets.
func TestLeaseReplicasFailover(t *testing.T) {
	pgtest.URL(t)
	rs := startLeaseReplicas(t, 3, "pools:\n  dut:\n    resources: [{id: dut1}, {id: dut2}]\n")
	lead, epoch := rs.leader(0)
	f, other := (lead+1)%3, (lead+2)%3
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var log logLines
	c, err := lease.Dial(ctx, "http://"+rs.addrs[f], &lease.Options{Resumable: true, Grace: 30 * time.Second, Logf: log.logf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l, err := c.Acquire(ctx, "replica test", []lease.Request{{Pool: "dut"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	held := l.IDs("dut")
	for _, i := range []int{lead, f, other} {
		got, _, err := leasesOn(t, rs.addrs[i])
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || strings.Join(got[l.ID()], ",") != strings.Join(held, ",") {
			t.Fatalf("server %d (leader %d) shows leases %v, want %s on %v", i, lead, got, l.ID(), held)
		}
	}

	rs.kill9(lead)
	next, epoch2 := rs.leader(epoch)
	if next == lead {
		t.Fatalf("the killed server %d still leads", lead)
	}
	leaseWaitFor(t, 60*time.Second, "the holder to resume its session", func() bool { return log.has("resumed: 1 leases kept") })
	select {
	case <-l.Lost():
		t.Fatalf("lease lost across the failover: %v (client log %q)", l.Err(), log.lines)
	default:
	}
	var got map[string][]string
	var detached map[string]bool
	leaseWaitFor(t, 30*time.Second, "the survivor's REST API to answer", func() bool {
		got, detached, err = leasesOn(t, rs.addrs[other])
		return err == nil // a 503 while the survivor still knew the dead leader
	})
	if strings.Join(got[l.ID()], ",") != strings.Join(held, ",") || detached[l.ID()] || len(got) != 1 {
		t.Fatalf("after the failover (epoch %d → %d): leases %v (detached %v), want %s on %v, attached", epoch, epoch2, got, detached, l.ID(), held)
	}

	// The other device is all a client of the other survivor gets.
	c2, err := lease.Dial(ctx, "http://"+rs.addrs[other], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	l2, err := c2.Acquire(ctx, "second", []lease.Request{{Pool: "dut"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l2.IDs("dut")[0] == held[0] {
		t.Fatalf("%s granted twice: to %s and %s", held[0], l.ID(), l2.ID())
	}
	if _, err := c2.Acquire(ctx, "third", []lease.Request{{Pool: "dut"}}, &lease.AcquireOptions{MaxWait: 300 * time.Millisecond}); err == nil {
		t.Fatal("a third lease on a pool of two")
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("release after the failover: %v", err)
	}
}

// TestLeaseReplicasLeaderCutFromDatabase: the leader loses its database
// session (PostgreSQL ends its lock connection, as it does when a network
// cut outlasts the keepalive). It steps down — its session clients are
// told to reconnect, a connection without a session loses its lease — and
// another server leads; the session's holder resumes with the same
// device, which nobody else got meanwhile.
func TestLeaseReplicasLeaderCutFromDatabase(t *testing.T) {
	pgtest.URL(t)
	rs := startLeaseReplicas(t, 2, "pools:\n  dut:\n    resources: [{id: dut1}, {id: dut2}]\n")
	lead, epoch := rs.leader(0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var log logLines
	c, err := lease.Dial(ctx, "http://"+rs.addrs[lead], &lease.Options{Resumable: true, Grace: 30 * time.Second, Logf: log.logf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l, err := c.Acquire(ctx, "session holder", []lease.Request{{Pool: "dut"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	v1, err := lease.Dial(ctx, "http://"+rs.addrs[lead], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v1.Close()
	l1, err := v1.Acquire(ctx, "v1 holder", []lease.Request{{Pool: "dut"}}, nil)
	if err != nil {
		t.Fatal(err)
	}

	// PostgreSQL ends the leader's lock session.
	pg, err := sql.Open("pgx", rs.pg)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	res, err := pg.ExecContext(ctx, "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND objid = ($1::bigint & 4294967295)::oid", rs.db.LeaseLeaderLock())
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("terminated %d lock sessions, want 1", n)
	}
	select {
	case <-l1.Lost():
	case <-time.After(30 * time.Second):
		t.Fatal("the lease of a connection without a session outlived its leader's step-down")
	}
	next, _ := rs.leader(epoch)
	leaseWaitFor(t, 60*time.Second, "the session holder to resume", func() bool { return log.has("resumed: 1 leases kept") })
	select {
	case <-l.Lost():
		t.Fatalf("the session's lease was lost: %v (%q)", l.Err(), log.lines)
	default:
	}
	var got map[string][]string
	leaseWaitFor(t, 30*time.Second, "the REST API", func() bool {
		got, _, err = leasesOn(t, rs.addrs[next])
		return err == nil
	})
	if len(got) != 1 || strings.Join(got[l.ID()], ",") != strings.Join(l.IDs("dut"), ",") {
		t.Fatalf("after the step-down, leases %v; want only %s on %v", got, l.ID(), l.IDs("dut"))
	}
}
