// Package http serves forge over HTTP: the REST API under /api/v1 (with its
// OpenAPI description), health and readiness probes, Prometheus metrics,
// and the mount points of the GitHub webhook and the lease handlers.
//
// Error codes become HTTP statuses through forge.HTTPStatus, the mapping
// every HTTP transport shares: every error response is a JSON body
// {"code": ..., "message": ...}.
//
// Authentication: requests carry an API token as "Authorization: Bearer
// TOKEN" (forge token create). Every request that changes something needs a
// valid token; lease-pool edits, force-releases and other admin routes need
// an admin token. Reads (GET) are public unless Options.PrivateReads is
// set; a request that presents a token always has it checked, so a wrong
// token is a 401 even on a public route.
package http

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/prometheus"
)

// Builds controls builds: implemented by internal/runner.
//
// Cancel stops build id (queued or running) and records reason; ECONFLICT
// when it has already finished. Restart queues a new build like the
// finished build id; ECONFLICT while it still runs. Both return ENOTFOUND
// for an unknown build and are safe for concurrent use.
type Builds interface {
	Cancel(ctx context.Context, id int64, reason string) (*forge.Build, error)
	Restart(ctx context.Context, id int64) (*forge.Build, error)
}

// Trigger creates builds on request: implemented by internal/trigger.
//
// Manual resolves ref (a branch, a tag, a full ref or a commit SHA) in
// repo, reads the spec at that commit and queues a build of action (""
// means "execute"). EINVALID for an unknown ref or action.
type Trigger interface {
	Manual(ctx context.Context, repo *forge.Repo, ref, action string) (*forge.Build, error)
}

// Options are what the server serves. Repos, Builds, Jobs (the build
// store), Logs and Tokens are required; a nil handler or service leaves its
// routes answering 501 not_implemented.
type Options struct {
	Repos  forge.RepoStore
	Store  forge.BuildStore
	Logs   forge.LogStore
	Tokens forge.TokenStore
	// Control cancels and restarts builds (the runner).
	Control Builds
	// Trigger queues manual builds.
	Trigger Trigger
	// Hooks serves POST /hooks/github.
	Hooks http.Handler
	// Live, when set, carries log lines live to ?follow=true readers.
	Live LiveLogs
	// LogIndex sizes and searches logs; without it the JSON log form and
	// the log searches answer 501.
	LogIndex LogIndex
	// Reports gives jobs' test and coverage summaries to the badges;
	// without it those badges say "unknown".
	Reports JobReports
	// Leases serves /api/v1/leases/... and /api/v1/pools...
	Leases http.Handler
	// UI, when set, serves every path outside /api/ that no route takes:
	// the web pages (internal/web).
	UI http.Handler
	// Ready reports whether the server can do its work (the database is
	// reachable and its schema current); /readyz answers 503 when it
	// fails or after SetDraining.
	Ready func(ctx context.Context) error
	// Gatherer is what /metrics serves; nil serves no metrics.
	Gatherer prometheus.Gatherer
	// PrivateReads requires a token for reads too.
	PrivateReads bool
	// InternalToken, when set, is accepted as a (non-admin) token without
	// a database lookup: the server's own clients (the engine's lease
	// client) use it. It lives only in the server's memory.
	InternalToken string
	// Caller, when set, names a caller that a transport in front of this
	// handler has authenticated already (the SSH endpoint, which calls
	// the handler in-process): it reads r's context, never a header, so
	// no HTTP client can claim to be one. ok is false for other requests.
	Caller func(r *http.Request) (c Caller, ok bool)
	Logger *slog.Logger
}

// Caller is a caller authenticated by another transport: Name for logs,
// and what it may do, as a token would allow (ReadOnly: reads only).
type Caller struct {
	Name     string
	Admin    bool
	ReadOnly bool
}

// Server is forge's HTTP handler. Create it with New.
type Server struct {
	opts     Options
	log      *slog.Logger
	mux      *http.ServeMux
	routes   []Route
	draining atomic.Bool
}

// Access says who may call a route.
type Access int

// The access levels of routes.
const (
	Public Access = iota // anyone (probes, the webhook, which checks its own signature)
	Read                 // anyone unless Options.PrivateReads, else any token
	Write                // any valid token
	Admin                // an admin token
	// Delegated routes are whole subtrees served by another handler (the
	// lease server): GET follows Read, other methods need Admin.
	Delegated
)

// Route is one route of the server, as registered on its mux.
type Route struct {
	Method  string // "" for a delegated subtree (every method)
	Pattern string // net/http ServeMux pattern without the method
	Access  Access
}

// New returns a Server serving opts.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, log: opts.Logger.With("component", "http"), mux: http.NewServeMux()}
	s.routesInit()
	return s
}

// Handler returns the server's handler: the routes, with panics turned into
// 500 responses and unknown paths into JSON 404s.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", v)
				writeError(w, forge.Errorf(forge.EINTERNAL, "internal error"))
			}
		}()
		s.mux.ServeHTTP(w, r)
	})
}

// Routes returns every route the server registers.
func (s *Server) Routes() []Route { return append([]Route(nil), s.routes...) }

// SetDraining makes /readyz fail, so load balancers stop sending work while
// the server shuts down.
func (s *Server) SetDraining() { s.draining.Store(true) }

// handle registers h for method and pattern behind access.
func (s *Server) handle(method, pattern string, access Access, h http.Handler) {
	s.routes = append(s.routes, Route{Method: method, Pattern: pattern, Access: access})
	full := pattern
	if method != "" {
		full = method + " " + pattern
	}
	s.mux.Handle(full, s.guard(access, h))
}

// guard checks the caller's token against access before h runs.
func (s *Server) guard(access Access, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		need := access
		if need == Delegated {
			need = Admin
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				need = Read
			}
		}
		base := need // before PrivateReads: a caller of another transport is known
		if need == Read && s.opts.PrivateReads {
			need = Write
		}
		if need == Public {
			h.ServeHTTP(w, r)
			return
		}
		if s.opts.Caller != nil {
			if c, ok := s.opts.Caller(r); ok {
				switch {
				case base != Read && c.ReadOnly:
					writeError(w, forge.Errorf(forge.EFORBIDDEN, "%s may only read: this request changes something", c.Name))
				case base == Admin && !c.Admin:
					writeError(w, forge.Errorf(forge.EFORBIDDEN, "this request needs an admin role; %s has none", c.Name))
				default:
					h.ServeHTTP(w, r)
				}
				return
			}
		}
		tok, err := s.authenticate(r)
		switch {
		case err != nil:
			w.Header().Set("WWW-Authenticate", `Bearer realm="forge"`)
			writeError(w, err)
			return
		case tok == nil && need != Read:
			w.Header().Set("WWW-Authenticate", `Bearer realm="forge"`)
			writeError(w, forge.Errorf(forge.EUNAUTHORIZED, "this request needs an API token: send Authorization: Bearer TOKEN (create one with forge token create)"))
			return
		case need == Admin && !tok.Admin:
			writeError(w, forge.Errorf(forge.EFORBIDDEN, "this request needs an admin token"))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// SessionCookie is the web pages' session cookie (internal/web sets it at
// sign-in): it holds an API token, HttpOnly and SameSite=Strict.
const SessionCookie = "forge_session"

// authenticate returns the token the request presents, nil when it
// presents none, and EUNAUTHORIZED for a malformed or unknown one.
//
// The web pages' session cookie counts for reads only (GET, HEAD): the
// pages' own fetches need it with private reads, while everything that
// changes something is a form posted to the pages, which check a CSRF
// token. So a cross-site request can never change anything with it.
func (s *Server) authenticate(r *http.Request) (*forge.Token, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		if c, err := r.Cookie(SessionCookie); err == nil && c.Value != "" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			tok, err := s.Authenticate(r.Context(), c.Value)
			if err != nil {
				return nil, forge.Errorf(forge.EUNAUTHORIZED, "the session has expired or its token was revoked: sign in again")
			}
			return tok, nil
		}
		return nil, nil
	}
	scheme, secret, ok := strings.Cut(h, " ")
	secret = strings.TrimSpace(secret)
	if !ok || !strings.EqualFold(scheme, "Bearer") || secret == "" {
		return nil, forge.Errorf(forge.EUNAUTHORIZED, "malformed Authorization header: want Bearer TOKEN")
	}
	return s.Authenticate(r.Context(), secret)
}

// Authenticate returns the token whose secret is given: EUNAUTHORIZED for
// an unknown one. The web pages check sign-ins with it.
func (s *Server) Authenticate(ctx context.Context, secret string) (*forge.Token, error) {
	if s.opts.InternalToken != "" && subtle.ConstantTimeCompare([]byte(secret), []byte(s.opts.InternalToken)) == 1 {
		return &forge.Token{Name: "forge-internal"}, nil
	}
	if s.opts.Tokens == nil {
		return nil, forge.Errorf(forge.EUNAUTHORIZED, "this server has no token store")
	}
	tok, err := s.opts.Tokens.TokenByHash(ctx, HashToken(secret))
	if forge.ErrorCode(err) == forge.ENOTFOUND {
		return nil, forge.Errorf(forge.EUNAUTHORIZED, "unknown API token")
	}
	if err != nil {
		return nil, err
	}
	return tok, nil
}

// HashToken is how a token's secret is stored: hex SHA-256.
func HashToken(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// StatusCode returns the HTTP status for err's forge error code: the
// domain's one mapping (forge.HTTPStatus), which the lease server uses too.
func StatusCode(err error) int { return forge.HTTPStatus(err) }

// errorBody is the JSON of every error response.
type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeError answers with err's status and {code, message}. Internal
// errors show a generic message; their detail is for the logs only.
func writeError(w http.ResponseWriter, err error) {
	code := forge.ErrorCode(err)
	msg := forge.ErrorMessage(err)
	if code == forge.EINTERNAL {
		msg = "internal error"
	}
	writeJSON(w, StatusCode(err), errorBody{Code: code, Message: msg})
}

// WriteError answers r with err as every API endpoint does: the status
// mapped from err's code and a {code, message} body. Handlers served beside
// the API (the lease server's REST endpoints) are given it so that one
// mapping holds for all of /api/v1.
func WriteError(w http.ResponseWriter, r *http.Request, err error) { writeError(w, err) }

// fail logs internal errors with the request and answers with err.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	if StatusCode(err) >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeError(w, err)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

// notImplemented answers 501 for a service this server was built without.
func notImplemented(what string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, forge.Errorf(forge.ENOTIMPL, "%s is not enabled on this server", what))
	}
}

// healthz answers 200 while the process serves requests.
func healthz() http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, health{Status: "ok"})
	}
}

type health struct {
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
}

// readyz answers 200 when ready reports no problem and the server is not
// shutting down, else 503 with the reason.
func readyz(ready func(context.Context) error, draining *atomic.Bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			writeJSON(w, http.StatusServiceUnavailable, health{Status: "unavailable", Error: "shutting down"})
			return
		}
		if ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			defer cancel()
			if err := ready(ctx); err != nil {
				writeJSON(w, http.StatusServiceUnavailable, health{Status: "unavailable", Error: forge.ErrorMessage(err)})
				return
			}
		}
		writeJSON(w, http.StatusOK, health{Status: "ok"})
	}
}

// metrics serves g in the Prometheus text format.
func metrics(g prometheus.Gatherer) http.Handler {
	if g == nil {
		return notImplemented("metrics")
	}
	return prometheus.Handler(g)
}

// notFound answers requests no route took: 405 with Allow when the path
// is served for other methods, else a JSON 404.
func (s *Server) notFound() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var allow []string
		for _, rt := range s.routes {
			if rt.Method == "" || rt.Method == r.Method || slices.Contains(allow, rt.Method) {
				continue
			}
			probe := r.Clone(r.Context())
			probe.Method = rt.Method
			if _, pattern := s.mux.Handler(probe); pattern == rt.Method+" "+rt.Pattern {
				allow = append(allow, rt.Method)
			}
		}
		if len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeJSON(w, http.StatusMethodNotAllowed, errorBody{Code: forge.EINVALID, Message: fmt.Sprintf("%s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allow, ", "))})
			return
		}
		writeError(w, forge.Errorf(forge.ENOTFOUND, "no such endpoint: %s %s", r.Method, r.URL.Path))
	}
}
