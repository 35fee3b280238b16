package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"golang.org/x/term"

	"github.com/forgeci/forge"
	leaseclient "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/git"
	"github.com/forgeci/forge/internal/github"
	"github.com/forgeci/forge/internal/guard"
	httpapi "github.com/forgeci/forge/internal/http"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/lease/leasehttp"
	"github.com/forgeci/forge/internal/livelog"
	"github.com/forgeci/forge/internal/prometheus"
	"github.com/forgeci/forge/internal/runner"
	"github.com/forgeci/forge/internal/sqldb"
	"github.com/forgeci/forge/internal/web"
)

func newServerCmd() *cobra.Command {
	var f serverFlags
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Serve GitHub webhooks, run builds, and serve the REST API and resource leases",
		Long: `forge server receives GitHub webhooks at POST /hooks/github, runs the builds
they trigger (on this machine with the local backend, in containers with
backend: docker / FORGE_BACKEND=docker, as Swarm services with backend: swarm),
serves the REST API under /api/v1
(OpenAPI description at /api/v1/openapi.json), resource leases over WebSockets
(/api/v1/leases/ws), /healthz, /readyz and Prometheus /metrics.

Configuration comes from the YAML file given with --config, then FORGE_*
environment variables (FORGE_ADDR, FORGE_DATA, FORGE_DATABASE_URL,
FORGE_PUBLIC_URL, FORGE_GITHUB_WEBHOOK_SECRET, FORGE_GITHUB_TOKEN,
FORGE_BUILDS_CONCURRENCY, FORGE_GRACE, FORGE_LOG_LEVEL, ...), then flags:
flags win; docs/configuration.md lists every setting. Every setting has a
default: "forge server" alone serves on :8080 with SQLite in ./forge-data.
The database is SQLite in the data directory unless FORGE_DATABASE_URL is a
postgres:// URL. Webhooks need the secret shared with GitHub
(FORGE_GITHUB_WEBHOOK_SECRET): without it they are answered 503.

On a new database (no migration applied) the server creates the schema.
On one with pending migrations it refuses to start: run "forge migrate up"
first, or set FORGE_MIGRATE=auto to migrate at start. On a schema a newer
forge migrated it runs when the newer migrations are additive (rolling
upgrades) and refuses when one is breaking.

With a GitHub App (FORGE_GITHUB_APP_ID and FORGE_GITHUB_APP_KEY) or a token
(FORGE_GITHUB_TOKEN), every job is reported to GitHub as a commit status
(forge/JOB) and, as an App, a check run; reports wait in the database until
GitHub has them, across restarts and outages.

With --ssh-addr (FORGE_SSH_ADDR) it also serves the API over SSH to the
keys of an authorized_keys file (docs/api.md, "Over SSH").

On SIGTERM or SIGINT it stops taking new builds (/readyz answers 503), lets
running builds finish for up to --grace while still serving the API and
leases, cancels what is left, stops serving HTTP and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m := &serverMain{Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr()}
			if err := m.ParseFlags(cmd, &f, os.Getenv); err != nil {
				return err
			}
			defer m.Close()
			return m.Run(cmd.Context())
		},
	}
	addServerFlags(cmd, &f)
	return cmd
}

// addServerFlags defines forge server's flags on cmd, bound to f.
func addServerFlags(cmd *cobra.Command, f *serverFlags) {
	fl := cmd.Flags()
	fl.StringVar(&f.addr, "addr", "", `address to listen on, HOST:PORT (default ":8080")`)
	fl.StringVar(&f.data, "data", "", "data directory: database, git mirrors, workspaces (default $FORGE_DATA or ./forge-data)")
	fl.StringVar(&f.config, "config", "", "YAML configuration file (docs/configuration.md lists every setting)")
	fl.StringVar(&f.publicURL, "public-url", "", "the server's URL as users reach it, for links in builds (default http://ADDR)")
	fl.DurationVar(&f.grace, "grace", 0, "how long running builds may finish after SIGTERM before they are cancelled (default 30s)")
	fl.StringVar(&f.sshAddr, "ssh-addr", "", "serve the API over SSH on HOST:PORT (default off; docs/api.md)")
	fl.StringVar(&f.sshKeys, "ssh-authorized-keys", "", "the authorized_keys file of the SSH endpoint (default DATA/ssh/authorized_keys)")
}

type serverFlags struct {
	addr, data, config, publicURL string
	grace                         time.Duration
	sshAddr, sshKeys              string
}

// serverMain is forge server: ParseFlags builds the configuration, Run
// wires every part and serves until its context ends, Close releases what
// Run opened.
type serverMain struct {
	Config serverConfig
	Stdout io.Writer
	Stderr io.Writer
	Logger *slog.Logger

	// Listening, when set, receives the bound address once the server
	// accepts connections (tests).
	Listening func(addr net.Addr)

	db *sqldb.DB
}

// ParseFlags resolves the configuration: defaults, then the --config file,
// then the environment, then the flags that were set.
func (m *serverMain) ParseFlags(cmd *cobra.Command, f *serverFlags, getenv func(string) string) error {
	c, err := loadServerConfig(f.config, getenv)
	if err != nil {
		return err
	}
	changed := cmd.Flags().Changed
	if changed("addr") {
		c.Addr = f.addr
	}
	if changed("data") {
		c.Data = f.data
	}
	if changed("public-url") {
		c.PublicURL = f.publicURL
	}
	if changed("grace") {
		c.Grace = Duration(f.grace)
	}
	if changed("ssh-addr") {
		c.SSH.Addr = f.sshAddr
	}
	if changed("ssh-authorized-keys") {
		c.SSH.AuthorizedKeys = f.sshKeys
	}
	if err := c.validate(); err != nil {
		return err
	}
	m.Config = c
	return nil
}

// newLogger logs to w: JSON unless w is a terminal.
func newLogger(w io.Writer, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// Run opens the database, wires the webhook intake, the trigger, the
// runner, the lease server and the HTTP API, and serves until ctx ends.
func (m *serverMain) Run(ctx context.Context) error {
	c := &m.Config
	if m.Logger == nil {
		m.Logger = newLogger(m.Stderr, c.Log.Level)
	}
	log := m.Logger
	data, err := filepath.Abs(c.Data)
	if err != nil {
		return forge.Errorf(forge.EINVALID, "data directory %q: %v", c.Data, err)
	}
	if err := os.MkdirAll(data, 0o750); err != nil {
		return forge.Errorf(forge.EINVALID, "data directory: %v", err)
	}

	// The database: a new one gets its schema; one with pending
	// migrations is refused unless FORGE_MIGRATE=auto.
	db, err := sqldb.Open(ctx, sqldb.Config{DataDir: data, URL: c.DatabaseURL})
	if err != nil {
		return err
	}
	m.db = db
	prep, err := db.PrepareSchema(ctx, c.Migrate == "auto")
	switch {
	case prep.Created && len(prep.Applied) > 0:
		log.Info("created the database schema: the database was new", "database", db.String(), "versions", prep.Applied)
	case len(prep.Applied) > 0:
		log.Info("migrated the database (FORGE_MIGRATE=auto)", "database", db.String(), "versions", prep.Applied)
	}
	if err != nil {
		return schemaAdvice(err)
	}
	if len(prep.Newer) > 0 {
		log.Info("the database schema is newer than this forge; its newer migrations are additive, so this forge runs on it", "newer_versions", prep.Newer)
	}
	if c.GitHub.WebhookSecret == "" {
		log.Warn("no webhook secret is set: POST /hooks/github answers 503 until github.webhook_secret or FORGE_GITHUB_WEBHOOK_SECRET is set to the secret of the GitHub webhook")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector())

	// Leases: pools from the configuration and the store (pools as
	// data), served in-process; pool edits are kept in the store.
	lc := c.leaseConfig()
	pools, err := lc.BuildPools()
	if err != nil {
		return forge.Errorf(forge.EINVALID, "config: %v", err)
	}
	if pools, err = lease.SeedPools(ctx, db, pools, lc.PoolPrecedence); err != nil {
		return err
	}
	leases, err := lease.NewMemory(pools, lc.ManagerOptions())
	if err != nil {
		return err
	}
	// Every change of a resumable session is kept in the store as it
	// happens (the journal, table lease_sessions), so the sessions of the
	// last run — however it ended, kill -9 included — come back here,
	// resumable by their clients within their grace, from now.
	sessions, held, err := leases.Journal(ctx, &sqldb.LeaseSessionStore{DB: db}, lease.JournalOptions{
		OnError: func(err error) {
			log.Error("lease state not kept in the store yet (retrying; grants wait for it)", "err", err)
		},
	})
	if err != nil {
		return err
	}
	// A graceful stop of a forge from before the journal left a snapshot.
	if state, err := db.TakeLeaseState(ctx); err != nil {
		return err
	} else if state != nil {
		s, h, err := leases.Restore(ctx, state)
		if err != nil {
			log.Warn("lease sessions of the last run not restored", "err", err)
		}
		sessions, held = sessions+s, held+h
	}
	if sessions > 0 {
		log.Info("lease sessions of the last run restored, waiting for their clients", "sessions", sessions, "leases", held)
	}
	defer leases.Close()
	leaseState := lease.NewStoredPools(leases, db)
	leaseSrv := leasehttp.NewServer(leaseState, leasehttp.Options{
		Durable:    true, // sessions are kept in the store as they change
		Keepalive:  lc.KeepaliveOrDefault(),
		Registry:   reg,
		Logger:     log.With("component", "lease"),
		WriteError: httpapi.WriteError,
	})

	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return forge.Errorf(forge.EUNAVAILABLE, "listen on %s: %v", c.Addr, err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	publicURL := c.PublicURL
	if publicURL == "" {
		publicURL = "http://" + loopbackIfAny(addr)
	}

	gh, err := newReporting(c, db, data, publicURL, reg, log)
	if err != nil {
		return err
	}
	origin, err := c.gitOrigin()
	if err != nil {
		return forge.Errorf(forge.EINVALID, "config: %v", err)
	}
	gitc, err := git.New(git.Options{Dir: filepath.Join(data, "git"), Depth: c.Builds.CloneDepth, Token: c.GitHub.Token,
		TokenFor: gh.tokenFor(), Origin: origin, AllowFile: c.Git.AllowFile})
	if err != nil {
		return err
	}
	if n, err := gitc.RemoveStaleLocks(); err != nil {
		return err
	} else if n > 0 {
		log.Warn("removed git lock files left by a server that died mid-fetch", "files", n)
	}
	tmp := filepath.Join(data, "tmp")
	if err := os.MkdirAll(tmp, 0o750); err != nil {
		return forge.Errorf(forge.EINVALID, "data directory: %v", err)
	}
	// The engine leases pipeline resources from this server's own lease
	// endpoint, with a token that lives only in this process.
	internal, err := newTokenSecret()
	if err != nil {
		return err
	}
	leaser, err := leaseclient.NewLeaser("http://"+loopbackIfAny(addr), &leaseclient.Options{
		Header: http.Header{"Authorization": {"Bearer " + internal}},
	})
	if err != nil {
		return err
	}
	if c.Builds.NoRecover {
		log.Warn("builds.no_recover is set: builds left running by a server that died stay running until a server without it ends them; replicas no longer need it")
	}
	// The jobs' processes die with this server, however it dies; the clean
	// workspaces of a server that died are removed now.
	jobGuard := guard.New()
	defer jobGuard.Close()
	backend, err := newBackend(c.Backend, backendConfig{
		TempDir: tmp, KillGrace: time.Duration(c.Builds.KillGrace), Docker: c.Docker, Logger: log, Guard: jobGuard,
		Swarm: c.Swarm,
		Warn:  func(msg string) { log.Warn("local backend: " + msg) },
	})
	if err != nil {
		return err
	}
	defer closeBackend(backend)
	if n, err := removeLeftovers(ctx, backend); err != nil {
		log.Warn("removing workspaces left by a server that died", "err", err)
	} else if n > 0 {
		log.Warn("removed workspaces left by a server that died", "dirs", n)
	}
	if p, ok := backend.(interface{ Ping(context.Context) error }); ok {
		if err := p.Ping(ctx); err != nil {
			return fmt.Errorf("backend %s: %w", c.Backend, err)
		}
	}
	live := livelog.New()
	// Build and job changes: GitHub reporting follows them.
	changes := &forge.Hub{}
	keeper := newReportKeeper(db, log)
	changes.Subscribe(keeper)
	if gh != nil {
		changes.Subscribe(gh.reporter)
	}
	run, err := runner.New(runner.Options{
		Builds: db, Repos: db, Logs: db,
		Git:     gitc,
		Planner: runner.SpecPlanner(),
		Executor: runner.Engine{
			Backend:  backend,
			Leaser:   leaser,
			Parallel: c.Builds.Parallel,
		},
		Backend:  c.Backend,
		Reattach: canReattach(backend),
		Janitor:  janitorOf(backend),
		Live:     live,
		Observer: changes,
		Secrets: func(_ context.Context, repo *forge.Repo) (map[string]string, error) {
			return c.secretsFor(repo.FullName()), nil
		},
		WorkDir:     filepath.Join(data, "work"),
		PublicURL:   publicURL,
		Concurrency: c.Builds.Concurrency,
		PerRepo:     c.Builds.PerRepo,
		Grace:       time.Duration(c.Grace),
		Heartbeat:   time.Duration(c.Builds.Heartbeat),
		Stale:       time.Duration(c.Builds.Stale),
		NoRecover:   c.Builds.NoRecover,
		Logger:      log,
		Registerer:  reg,
	})
	if err != nil {
		return err
	}
	proc, err := newProcessor(c, db, gitc, run, changes, gh, log, reg)
	if err != nil {
		return err
	}

	// The web pages check sign-ins with the API's own token check.
	var api *httpapi.Server
	ui, err := web.New(web.Options{
		Repos: db, Builds: db, Logs: db, Control: run,
		Authenticate: func(ctx context.Context, secret string) (*forge.Token, error) { return api.Authenticate(ctx, secret) },
		Cookie:       httpapi.SessionCookie,
		PrivateReads: c.API.PrivateReads,
		PublicURL:    publicURL,
		Logger:       log,
	})
	if err != nil {
		return err
	}
	api = httpapi.New(httpapi.Options{
		Repos: db, Store: db, Logs: db, Tokens: db, LogIndex: db, Reports: db,
		UI:      ui.Handler(),
		Control: run,
		Trigger: proc,
		Hooks: httpapi.GitHubHook(db, httpapi.HookOptions{
			Secret:   c.GitHub.WebhookSecret,
			MaxBody:  c.GitHub.MaxBody,
			Validate: github.Validate,
			Notify:   proc.Notify,
			Logger:   log.With("component", "webhook"),
			Metrics:  reg,
		}),
		Live:   liveLogs{live},
		Leases: leaseSrv.Handler(),
		Ready: func(ctx context.Context) error {
			if err := db.Ping(ctx); err != nil {
				return forge.WrapError(forge.EUNAVAILABLE, err, "database unreachable")
			}
			return schemaAdvice(db.CheckSchema(ctx))
		},
		Gatherer:      reg,
		PrivateReads:  c.API.PrivateReads,
		InternalToken: internal,
		Caller:        sshCaller,
		Logger:        log,
	})
	sshServe, _, err := startSSH(&c.SSH, data, api.Handler(), log)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           api.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}

	log.Info("listening", "addr", addr, "public_url", publicURL, "data", data, "database", db.String(), "version", version)
	if m.Listening != nil {
		m.Listening(ln.Addr())
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	// On SIGTERM: /readyz fails, no new builds start, and the API and the
	// lease endpoint stay up while running builds finish (their jobs may
	// still lease resources and report); then HTTP and the lease
	// connections close.
	runDone := make(chan struct{})
	g.Go(func() error {
		defer close(runDone)
		return run.Run(gctx)
	})
	// Reporting outlives the runner: builds ended at shutdown are reported.
	if gh != nil {
		rctx, stopReporting := context.WithCancel(context.WithoutCancel(ctx))
		go func() { <-runDone; stopReporting() }()
		g.Go(func() error { return gh.run(rctx) })
	}
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down: no new builds; running builds get the grace period", "grace", time.Duration(c.Grace).String())
		api.SetDraining()
		<-runDone
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := srv.Shutdown(sctx)
		_ = leaseSrv.Shutdown(sctx)
		// Session clients were told to reconnect: their sessions are in
		// the store for the next run once the journal has written the
		// last changes.
		if serr := leases.Flush(sctx); serr != nil {
			log.Error("the last lease session changes were not kept for the next run", "err", serr)
		}
		return err
	})
	g.Go(func() error { return proc.Run(gctx) })
	if sshServe != nil {
		// Like HTTP, SSH serves until the running builds are done.
		sctx, stopSSH := context.WithCancel(context.WithoutCancel(ctx))
		go func() { <-runDone; stopSSH() }()
		g.Go(func() error { return sshServe(sctx) })
	}
	// Health checks of the lease pools run while the lease endpoint
	// serves (through the drain of running builds). One server owns the
	// lease state, so it runs them; a replica that does not own it must
	// not start a Checker.
	cctx, stopChecks := context.WithCancel(context.WithoutCancel(ctx))
	go func() { <-runDone; stopChecks() }()
	g.Go(func() error {
		checker := &lease.Checker{Health: leaseState, Logger: log.With("component", "lease")}
		return checker.Serve(cctx)
	})
	g.Go(func() error { return keeper.run(gctx) })
	g.Go(func() error {
		return runLogUpkeep(gctx, db, sqldb.Retention{Builds: c.Logs.KeepBuilds, Days: c.Logs.KeepDays}, log)
	})
	err = g.Wait()
	log.Info("stopped", "err", err)
	if err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// schemaAdvice adds to a schema error of sqldb what to run about it.
func schemaAdvice(err error) error {
	switch {
	case errors.Is(err, sqldb.ErrSchemaPending):
		return forge.WrapError(forge.ECONFLICT, sqldb.ErrSchemaPending, forge.ErrorMessage(err)+
			": run `forge migrate up` first, or set FORGE_MIGRATE=auto to migrate at start")
	case errors.Is(err, sqldb.ErrSchemaNewer):
		return forge.WrapError(forge.ECONFLICT, sqldb.ErrSchemaNewer, forge.ErrorMessage(err)+
			": run the newer forge, or roll the schema back with the newer forge's `forge migrate down`")
	}
	return err
}

// Close closes what Run opened.
func (m *serverMain) Close() error {
	if m.db != nil {
		return m.db.Close()
	}
	return nil
}

// liveLogs gives the HTTP API's log followers the runner's live lines.
type liveLogs struct{ hub *livelog.Hub }

// Follow subscribes to jobID's live lines (see httpapi.LiveLogs).
func (l liveLogs) Follow(jobID int64) (<-chan forge.LogLine, func() bool, func()) {
	s := l.hub.Subscribe(jobID, 4096)
	return s.C(), s.Dropped, s.Close
}

// loopbackIfAny turns a wildcard listen address into one this host can dial.
func loopbackIfAny(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		if ip != nil && ip.To4() == nil {
			return net.JoinHostPort("::1", port)
		}
		return net.JoinHostPort("127.0.0.1", port)
	}
	return strings.TrimSpace(addr)
}
