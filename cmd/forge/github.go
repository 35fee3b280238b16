package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/forgeci/forge/internal/prometheus"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/github"
	"github.com/forgeci/forge/internal/sqldb"
)

// applyGitHubEnv reads the GitHub variables that are not plain strings.
func applyGitHubEnv(c *serverConfig, getenv func(string) string) error {
	if v := getenv("FORGE_GITHUB_APP_ID"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return forge.Errorf(forge.EINVALID, "FORGE_GITHUB_APP_ID=%q: want the App's numeric ID", v)
		}
		c.GitHub.AppID = n
	}
	if v := getenv("FORGE_GITHUB_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return forge.Errorf(forge.EINVALID, "FORGE_GITHUB_TIMEOUT=%q: want a duration like 30s", v)
		}
		c.GitHub.Timeout = Duration(d)
	}
	if v := getenv("FORGE_GITHUB_RETRY_BACKOFF"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return forge.Errorf(forge.EINVALID, "FORGE_GITHUB_RETRY_BACKOFF=%q: want a duration like 1s", v)
		}
		c.GitHub.RetryBackoff = Duration(d)
	}
	return nil
}

// validateGitHub checks the GitHub settings.
func (c *serverConfig) validateGitHub() []string {
	var errs []string
	g := &c.GitHub
	if (g.AppID != 0) != (g.AppKey != "") {
		errs = append(errs, "github: an App needs both app_id (FORGE_GITHUB_APP_ID) and app_key (FORGE_GITHUB_APP_KEY, the private key file)")
	}
	if g.Timeout < 0 || g.RetryBackoff < 0 {
		errs = append(errs, "github.timeout and github.retry_backoff must not be negative")
	}
	switch c.Builds.ForkApproval {
	case "", "always", "first-time", "never":
	default:
		errs = append(errs, fmt.Sprintf("builds.fork_approval %q: want always, first-time or never", c.Builds.ForkApproval))
	}
	return errs
}

// githubClient returns the API client the configuration describes, or
// nil when it names neither an App nor a token.
func (c *serverConfig) githubClient() (*github.Client, error) {
	g := &c.GitHub
	if g.AppID == 0 && g.Token == "" {
		return nil, nil
	}
	auth := github.Auth{APIURL: g.APIURL, AppID: g.AppID, Token: g.Token, Timeout: time.Duration(g.Timeout)}
	if g.AppID != 0 {
		key, err := os.ReadFile(g.AppKey)
		if err != nil {
			return nil, forge.Errorf(forge.EINVALID, "github: the App's private key (app_key, FORGE_GITHUB_APP_KEY): %v", err)
		}
		auth.AppKey = key
	}
	return github.NewClient(auth)
}

// reporting is GitHub reporting as forge server runs it: the reporter
// turning changes into outbox items and the outbox delivering them.
type reporting struct {
	client   *github.Client
	reporter *github.Reporter
	outbox   *github.Outbox
}

// newReporting wires GitHub reporting, or returns nil (and logs why)
// when no App or token is configured.
func newReporting(c *serverConfig, db *sqldb.DB, data, publicURL string, reg prometheus.Registerer, log *slog.Logger) (*reporting, error) {
	client, err := c.githubClient()
	if err != nil {
		return nil, err
	}
	if client == nil {
		log.Info("GitHub reporting is off: set FORGE_GITHUB_APP_ID and FORGE_GITHUB_APP_KEY, or FORGE_GITHUB_TOKEN, to report statuses")
		return nil, nil
	}
	ob, err := github.NewOutbox(github.OutboxOptions{
		Store:      db,
		Owner:      outboxOwner(data),
		Deliver:    client.Deliver,
		Backoff:    time.Duration(c.GitHub.RetryBackoff),
		Logger:     log.With("component", "github"),
		Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	rep := github.NewReporter(github.ReporterOptions{
		Outbox:    ob,
		Repos:     db,
		Jobs:      db,
		PublicURL: publicURL,
		Checks:    client.Mode() == "app",
		Logger:    log.With("component", "github"),
	})
	log.Info("GitHub reporting is on", "auth", client.Mode(), "checks", client.Mode() == "app")
	return &reporting{client: client, reporter: rep, outbox: ob}, nil
}

// outboxOwner names this server in outbox claims: the same after a
// restart (so it takes back at once what it had claimed), different for
// a replica on another host or with another data directory.
func outboxOwner(data string) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	if abs, err := filepath.Abs(data); err == nil {
		data = abs
	}
	sum := sha256.Sum256([]byte(data))
	return host + ":" + hex.EncodeToString(sum[:6])
}

// run reports until ctx ends; then the reporter hands what it still has
// to the outbox, which stores it and stops.
func (r *reporting) run(ctx context.Context) error {
	octx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.reporter.Run(ctx)
		stop()
	}()
	err := r.outbox.Run(octx)
	<-done
	return err
}

// publishCreated tells changes of a new build, with its jobs.
func publishCreated(db *sqldb.DB, changes forge.Observer, b *forge.Build, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	jobs, err := db.Jobs(ctx, b.ID)
	if err != nil {
		log.Warn("loading the jobs of a new build", "build", b.ID, "err", err)
		return
	}
	changes.Observe(&forge.Change{Time: b.Created, Build: *b, Jobs: jobs})
}

// reply is trigger.Options.Reply: a comment through the outbox.
func (r *reporting) reply() func(context.Context, *forge.Hook, string) error {
	if r == nil {
		return nil
	}
	return func(_ context.Context, h *forge.Hook, body string) error { return r.reporter.Comment(h, body) }
}

// promote is trigger.Options.Promote, unless github.promote is false.
func (r *reporting) promote(c *serverConfig) func(context.Context, *forge.Hook, string, string) error {
	if r == nil || (c.GitHub.Promote != nil && !*c.GitHub.Promote) {
		return nil
	}
	return func(_ context.Context, h *forge.Hook, main, production string) error {
		return r.reporter.Promote(h, main, production)
	}
}

// canWrite is trigger.Options.CanWrite: the user's permission on GitHub.
func (r *reporting) canWrite() func(context.Context, *forge.Repo, string) (bool, error) {
	if r == nil {
		return nil
	}
	return func(ctx context.Context, repo *forge.Repo, user string) (bool, error) {
		return r.client.CanWrite(ctx, repo.Owner, repo.Name, 0, user)
	}
}

// tokenFor is git.Options.TokenFor: with an App, fetches use the
// repository's installation token.
func (r *reporting) tokenFor() func(context.Context, *forge.Repo) (string, error) {
	if r == nil || r.client.Mode() != "app" {
		return nil
	}
	return func(ctx context.Context, repo *forge.Repo) (string, error) {
		return r.client.Token(ctx, repo.Owner, repo.Name)
	}
}
