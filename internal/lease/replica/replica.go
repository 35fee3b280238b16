// Package replica lets several forge servers sharing one database serve
// one set of lease pools (issue 12 item 3; docs/leases.md, "Replicas").
// One of them, the leader, elected through the database, holds the lease
// state and serves it; the others forward lease WebSocket connections
// (relaying their messages both ways) and lease REST calls to it. When the
// leader dies or loses the database, another is elected, loads the state
// from the store and serves; clients resume their sessions through any
// replica.
//
// The package knows neither the database nor the lease state: an Elector
// (internal/sqldb's election, wired by cmd/forge) elects, and Lead starts
// the lease service of a term (a Memory with its journal behind a
// leasehttp.Server).
package replica

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"github.com/forgeci/forge"
)

// ForwardedHeader marks a request a replica forwards to the leader; its
// value is the leader's token (Leader.Token), so that no client can claim
// to be a replica. The leader then knows that the connection's end without
// a close frame is the forwarding replica's death, not its client's
// choice (see leasehttp.Options.Forwarded).
const ForwardedHeader = "Forge-Lease-Forwarded"

// WSPath is the lease WebSocket's path, which replicas relay message by
// message; every other lease path is proxied as HTTP.
const WSPath = "/api/v1/leases/ws"

// Leader is who leads, as the database says.
type Leader struct {
	Epoch int64
	URL   string // "" while no leader is ready
	Token string
}

// Term is one time as the leader (internal/sqldb's LeaseTerm).
type Term interface {
	Epoch() int64
	// Lost is closed when the term ends without Resign: leases must stop
	// being served at once.
	Lost() <-chan struct{}
	Err() error
	// Publish tells the other replicas to forward here.
	Publish(ctx context.Context) error
	Resign()
}

// Elector elects the leader among the replicas.
type Elector interface {
	// Campaign waits until this replica leads, or ctx ends.
	Campaign(ctx context.Context) (Term, error)
	// Leader reads who leads now.
	Leader(ctx context.Context) (Leader, error)
}

// Service is the lease service of one term.
type Service interface {
	Handler() http.Handler
	// Stop ends the service: session clients are told to reconnect
	// (they resume on the next leader) and nothing is served after it
	// returns. When the term was lost, nothing may be granted from the
	// moment Stop is called (another server may lead soon) and the
	// connections must be closed quickly; otherwise the state is kept
	// for the next leader first.
	Stop(ctx context.Context, lost bool)
}

// Options configure a Replica.
type Options struct {
	Elector Elector
	// Lead starts the lease service of term t: it loads the lease state
	// from the store (after t began, so that it sees every write of the
	// leaders before) and fences its writes with t.
	Lead func(ctx context.Context, t Term) (Service, error)
	// Token is this replica's own token: forwarded requests carrying it
	// as their bearer token (the server's internal clients) present the
	// leader's instead, and the leader recognises forwarded requests by
	// it (IsForwarded).
	Token string
	// WriteError answers failed requests (default: JSON {code, message}).
	WriteError func(w http.ResponseWriter, r *http.Request, err error)
	Logger     *slog.Logger
	// LeaderTTL is how long the leader read from the Elector is trusted
	// before it is read again (default 1 s); a failed forward reads it
	// again at once.
	LeaderTTL time.Duration
}

// Replica serves the lease endpoints of one server among several: as the
// leader when elected, otherwise by forwarding to the leader.
type Replica struct {
	opts Options
	log  *slog.Logger
	http *http.Transport

	mu      sync.Mutex
	serving Service // this replica's, while it leads
	epoch   int64
	leader  Leader
	read    time.Time // when leader was read
	proxies map[string]*httputil.ReverseProxy
	relays  map[*relay]struct{}
	closing bool
}

// New returns a Replica; Run makes it campaign.
func New(opts Options) *Replica {
	if opts.LeaderTTL <= 0 {
		opts.LeaderTTL = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.WriteError == nil {
		opts.WriteError = writeError
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	return &Replica{opts: opts, log: opts.Logger, http: tr, proxies: map[string]*httputil.ReverseProxy{}, relays: map[*relay]struct{}{}}
}

// IsForwarded reports whether r was forwarded by a replica to the leader
// whose token is token.
func IsForwarded(r *http.Request, token string) bool {
	v := r.Header.Get(ForwardedHeader)
	return token != "" && v != "" && subtle.ConstantTimeCompare([]byte(v), []byte(token)) == 1
}

// Leading reports whether this replica leads now, and its epoch.
func (r *Replica) Leading() (bool, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.serving != nil, r.epoch
}

// Run campaigns, leads when elected, steps down when the term is lost and
// campaigns again, until ctx ends: then it stops the service (session
// clients are told to reconnect, and another replica takes over), resigns
// and closes the relayed connections.
func (r *Replica) Run(ctx context.Context) error {
	defer r.closeRelays()
	for ctx.Err() == nil {
		t, err := r.opts.Elector.Campaign(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			r.log.Error("lease leader election failed; trying again", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		r.lead(ctx, t)
	}
	return nil
}

// lead serves term t until it is lost or ctx ends.
func (r *Replica) lead(ctx context.Context, t Term) {
	log := r.log.With("epoch", t.Epoch())
	s, err := r.opts.Lead(ctx, t)
	if err == nil {
		if err = t.Publish(ctx); err != nil {
			s.Stop(context.Background(), true)
		}
	}
	if err != nil {
		log.Error("elected lease leader, but could not start serving: resigning", "err", err)
		t.Resign()
		sleep(ctx, time.Second)
		return
	}
	r.mu.Lock()
	r.serving, r.epoch = s, t.Epoch()
	r.mu.Unlock()
	log.Info("leading the lease replicas: serving the lease state here")
	lost := false
	select {
	case <-t.Lost():
		lost = true
		log.Warn("lost the lease leadership: stepping down, clients are told to reconnect", "err", t.Err())
	case <-ctx.Done():
		log.Info("stopping: handing the lease leadership over")
	}
	r.mu.Lock()
	r.serving = nil
	r.read = time.Time{}
	r.mu.Unlock()
	// A lost term has little time: PostgreSQL gives the lock to another
	// about 11 s after the cut, and this leader noticed within 3 s.
	wait := 10 * time.Second
	if lost {
		wait = 2 * time.Second
	}
	sctx, cancel := context.WithTimeout(context.Background(), wait)
	s.Stop(sctx, lost)
	cancel()
	t.Resign()
	if lost {
		// Whatever ended the term (a cut, a slow database) may still be
		// here: the others get the first chance to lead.
		sleep(ctx, time.Second)
	}
}

// Handler serves the lease endpoints: this replica's service while it
// leads, else forwarded to the leader.
func (r *Replica) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		s := r.serving
		r.mu.Unlock()
		if s != nil {
			s.Handler().ServeHTTP(w, req)
			return
		}
		r.forward(w, req)
	})
}

// current returns the leader to forward to, read again when older than
// LeaderTTL.
func (r *Replica) current(ctx context.Context) (Leader, error) {
	r.mu.Lock()
	l, at := r.leader, r.read
	r.mu.Unlock()
	if !at.IsZero() && time.Since(at) < r.opts.LeaderTTL {
		return l, nil
	}
	l, err := r.opts.Elector.Leader(ctx)
	if err != nil {
		return Leader{}, err
	}
	r.mu.Lock()
	r.leader, r.read = l, time.Now()
	r.mu.Unlock()
	return l, nil
}

// forget makes the next forward read the leader again.
func (r *Replica) forget() {
	r.mu.Lock()
	r.read = time.Time{}
	r.mu.Unlock()
}

func (r *Replica) forward(w http.ResponseWriter, req *http.Request) {
	if req.Header.Get(ForwardedHeader) != "" {
		// Forwarded to a replica that no longer leads: never forward
		// twice (two replicas could send a request back and forth).
		r.opts.WriteError(w, req, forge.Errorf(forge.EUNAVAILABLE, "this server is not the lease leader (any more): retry"))
		return
	}
	l, err := r.current(req.Context())
	if err != nil {
		r.opts.WriteError(w, req, forge.WrapError(forge.EUNAVAILABLE, err, "no lease leader known: the database does not answer ("+forge.ErrorMessage(err)+"): retry"))
		return
	}
	if l.URL == "" {
		r.forget()
		r.opts.WriteError(w, req, forge.Errorf(forge.EUNAVAILABLE, "no lease leader right now (one is being elected or is loading the lease state): retry"))
		return
	}
	if req.URL.Path == WSPath {
		r.relay(w, req, l)
		return
	}
	r.proxy(l).ServeHTTP(w, req)
}

// outHeader sets what a forwarded request carries: the replica mark and,
// for this server's own clients, the leader's token for its own.
func (r *Replica) outHeader(h http.Header, l Leader) {
	h.Set(ForwardedHeader, l.Token)
	if r.opts.Token != "" && h.Get("Authorization") == "Bearer "+r.opts.Token {
		h.Set("Authorization", "Bearer "+l.Token)
	}
}

// proxy returns the reverse proxy of REST calls to l.
func (r *Replica) proxy(l Leader) *httputil.ReverseProxy {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := l.URL + "\x00" + l.Token
	if p := r.proxies[key]; p != nil {
		return p
	}
	target, err := url.Parse(l.URL)
	if err != nil {
		target = &url.URL{Scheme: "http", Host: "invalid.invalid"}
	}
	p := &httputil.ReverseProxy{
		Transport: r.http,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
			r.outHeader(pr.Out.Header, l)
		},
		ErrorHandler: func(w http.ResponseWriter, req *http.Request, err error) {
			r.forget()
			r.opts.WriteError(w, req, forge.WrapError(forge.EUNAVAILABLE, err, fmt.Sprintf("the lease leader at %s does not answer (%v): retry", l.URL, err)))
		},
	}
	if len(r.proxies) > 8 {
		clear(r.proxies)
	}
	r.proxies[key] = p
	return p
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// writeError answers err as the API's JSON error body.
func writeError(w http.ResponseWriter, _ *http.Request, err error) {
	b, _ := json.Marshal(map[string]string{"code": forge.ErrorCode(err), "message": forge.ErrorMessage(err)})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(forge.HTTPStatus(err))
	_, _ = w.Write(append(b, '\n'))
}
