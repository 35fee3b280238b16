package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/lease/leasehttp"
	"github.com/forgeci/forge/internal/lease/replica"
	"github.com/forgeci/forge/internal/prometheus"
	"github.com/forgeci/forge/internal/sqldb"
)

// Lease replicas (issue 12 item 3, docs/leases.md "Replicas"): servers on
// one PostgreSQL database elect a lease leader with an advisory lock
// (sqldb.LeaseElection); the leader serves the lease state from memory,
// journalled to the store in transactions fenced by its epoch, and the
// others forward to it (internal/lease/replica).

// leaseReplicas wires a server's lease endpoint as one replica among
// those sharing db.
type leaseReplicas struct {
	db       *sqldb.DB
	lc       *lease.Config
	reg      *prometheus.Registry
	log      *slog.Logger
	token    string // the server's internal token: forwarded requests carry the leader's
	writeErr func(http.ResponseWriter, *http.Request, error)

	registered bool // a term's metrics are on reg
}

// newLeaseReplica returns the replica of this server: self is the URL the
// others forward to.
func (lr *leaseReplicas) newReplica(self string) *replica.Replica {
	host, _ := os.Hostname()
	return replica.New(replica.Options{
		Elector: &leaseElector{e: &sqldb.LeaseElection{DB: lr.db, URL: self, Token: lr.token,
			Instance: host + " " + self}},
		Lead:       lr.lead,
		Token:      lr.token,
		WriteError: lr.writeErr,
		Logger:     lr.log,
	})
}

// lead starts the lease service of a term: the pools and sessions as the
// store has them now (the previous leader's writes all committed before
// the term's epoch began, or fail its fence), a journal fenced by the
// term, and the lease server over them.
func (lr *leaseReplicas) lead(ctx context.Context, t replica.Term) (replica.Service, error) {
	term := t.(*leaseTerm).t
	pools, err := lr.lc.BuildPools()
	if err != nil {
		return nil, forge.Errorf(forge.EINVALID, "config: %v", err)
	}
	if pools, err = lease.SeedPools(ctx, lr.db, pools, lr.lc.PoolPrecedence); err != nil {
		return nil, err
	}
	mem, err := lease.NewMemory(pools, lr.lc.ManagerOptions())
	if err != nil {
		return nil, err
	}
	store := &sqldb.LeaseSessionStore{DB: lr.db, Fence: term.Fence}
	sessions, held, err := mem.Journal(ctx, store, lease.JournalOptions{OnError: func(err error) {
		// A fenced write ends the term (Lost): the replica steps down.
		lr.log.Warn("keeping the lease state failed", "epoch", term.Epoch(), "err", err)
	}})
	if err != nil {
		mem.Close()
		return nil, err
	}
	// A graceful stop of a forge from before the journal left a snapshot.
	if state, err := lr.db.TakeLeaseState(ctx); err != nil {
		mem.Close()
		return nil, err
	} else if state != nil {
		s, h, err := mem.Restore(ctx, state)
		if err != nil {
			lr.log.Warn("lease sessions of a forge from before the journal not restored", "err", err)
		}
		sessions, held = sessions+s, held+h
	}
	lr.log.Info("lease leader: sessions loaded from the store, waiting for their clients", "epoch", term.Epoch(), "sessions", sessions, "leases", held)
	var reg *prometheus.Registry
	if !lr.registered {
		reg = lr.reg
	}
	state := lease.NewStoredPools(mem, lr.db)
	// The health checks of the pools run on the leader alone, for its
	// term.
	cctx, stopChecks := context.WithCancel(context.WithoutCancel(ctx))
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		checker := &lease.Checker{Health: state, Logger: lr.log}
		if err := checker.Serve(cctx); err != nil && cctx.Err() == nil {
			lr.log.Error("lease health checks stopped", "err", err)
		}
	}()
	srv := leasehttp.NewServer(state, leasehttp.Options{
		Durable:    true,
		Keepalive:  lr.lc.KeepaliveOrDefault(),
		Registry:   reg,
		Logger:     lr.log,
		WriteError: lr.writeErr,
		Forwarded:  func(r *http.Request) bool { return replica.IsForwarded(r, lr.token) },
	})
	lr.registered = reg != nil
	return &leaseService{lr: lr, mem: mem, srv: srv, h: srv.Handler(), stopChecks: func() { stopChecks(); <-checked }}, nil
}

// leaseService is the leader's lease service of one term.
type leaseService struct {
	lr  *leaseReplicas
	mem *lease.Memory
	srv *leasehttp.Server
	h   http.Handler
	// stopChecks ends the term's health checks and waits for them.
	stopChecks func()
}

func (s *leaseService) Handler() http.Handler { return s.h }

// Stop tells session clients to reconnect (to the next leader), keeps
// what the journal has not written yet (a deposed leader's write fails its
// fence and changes nothing), and closes. A lost term closes the Memory
// first: from then on it grants nothing, not even to connections without
// a session, whose grants are not journalled.
func (s *leaseService) Stop(ctx context.Context, lost bool) {
	if lost {
		s.mem.Close()
	}
	s.stopChecks()
	_ = s.srv.Shutdown(ctx)
	if !lost {
		if err := s.mem.Flush(ctx); err != nil {
			s.lr.log.Warn("lease state not all kept at the step-down", "err", err)
		}
		s.mem.Close()
	}
	s.srv.Unregister()
	s.lr.registered = false
}

// leaseElector adapts sqldb's election to replica.Elector.
type leaseElector struct{ e *sqldb.LeaseElection }

func (l *leaseElector) Campaign(ctx context.Context) (replica.Term, error) {
	t, err := l.e.Campaign(ctx)
	if err != nil {
		return nil, err
	}
	return &leaseTerm{t}, nil
}

func (l *leaseElector) Leader(ctx context.Context) (replica.Leader, error) {
	r, err := l.e.DB.LeaseLeader(ctx)
	if err != nil {
		return replica.Leader{}, err
	}
	return replica.Leader{Epoch: r.Epoch, URL: r.URL, Token: r.Token}, nil
}

type leaseTerm struct{ t *sqldb.LeaseTerm }

func (l *leaseTerm) Epoch() int64                      { return l.t.Epoch() }
func (l *leaseTerm) Lost() <-chan struct{}             { return l.t.Lost() }
func (l *leaseTerm) Err() error                        { return l.t.Err() }
func (l *leaseTerm) Publish(ctx context.Context) error { return l.t.Publish(ctx) }
func (l *leaseTerm) Resign()                           { l.t.Resign() }

// replicaURL is the URL the other replicas reach this server at: the
// setting lease.replica_url, else http:// and the listening address (a
// wildcard address with this host's name).
func replicaURL(setting, listen string) (string, error) {
	if setting != "" {
		return strings.TrimSuffix(setting, "/"), nil
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", forge.Errorf(forge.EINVALID, "listen address %q: %v", listen, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		if host, err = os.Hostname(); err != nil {
			return "", forge.Errorf(forge.EINVALID, "lease.replica_url is not set and this host has no name (%v): set it to the URL the other replicas reach this server at", err)
		}
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// checkReplicaURL validates the lease.replica_url setting.
func checkReplicaURL(s string) error {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return forge.Errorf(forge.EINVALID, "lease.replica_url %q: want the URL the other replicas reach this server at, e.g. http://10.0.0.7:8080 (no path)", s)
	}
	return nil
}
