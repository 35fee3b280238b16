package main

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/git"
	httpapi "github.com/forgeci/forge/internal/http"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/shell"
)

// serverConfig is the configuration of forge server (and of forge migrate
// and forge token, which find the database as it does): the YAML file given
// with --config, then FORGE_* environment variables, then flags (flags
// win). docs/configuration.md has the table of every setting, its
// variable, flag, default and meaning; settings_test.go keeps the table
// and this code in step.
type serverConfig struct {
	Addr        string   `yaml:"addr"`
	Data        string   `yaml:"data"`
	DatabaseURL string   `yaml:"database_url"`
	PublicURL   string   `yaml:"public_url"`
	Grace       Duration `yaml:"grace"`
	Log         struct {
		Level string `yaml:"level"`
	} `yaml:"log"`
	API struct {
		PrivateReads bool `yaml:"private_reads"`
	} `yaml:"api"`
	// Logs: retention of job logs (0: keep forever); see logretention.go.
	Logs struct {
		KeepBuilds int `yaml:"keep_builds"`
		KeepDays   int `yaml:"keep_days"`
	} `yaml:"logs"`
	GitHub struct {
		WebhookSecret string `yaml:"webhook_secret"`
		MaxBody       int64  `yaml:"max_body"`
		Token         string `yaml:"token"`
		// APIURL is GitHub's API (GitHub Enterprise: https://HOST/api/v3);
		// clone URLs must be on its host, and only it gets the token.
		APIURL string `yaml:"api_url"`
		// GitHub reporting: see cmd/forge/github.go.
		AppID        int64    `yaml:"app_id"`
		AppKey       string   `yaml:"app_key"`
		Timeout      Duration `yaml:"timeout"`
		RetryBackoff Duration `yaml:"retry_backoff"`
		Promote      *bool    `yaml:"promote"`
		MainBranch   string   `yaml:"main_branch"`
	} `yaml:"github"`
	Git struct {
		// AllowFile lets repositories be cloned from local paths and
		// file:// URLs (local mirrors, tests).
		AllowFile bool `yaml:"allow_file"`
	} `yaml:"git"`
	Builds struct {
		Concurrency      int      `yaml:"concurrency"`
		PerRepo          int      `yaml:"per_repo"`
		Parallel         int      `yaml:"parallel"`
		CancelSuperseded *bool    `yaml:"cancel_superseded"`
		CloneDepth       int      `yaml:"clone_depth"`
		BuildDrafts      bool     `yaml:"build_drafts"`
		ProductionBranch string   `yaml:"production_branch"`
		KillGrace        Duration `yaml:"kill_grace"`
		// Heartbeat and Stale: see runner.Options (defaults 10s, 30s).
		Heartbeat Duration `yaml:"heartbeat"`
		Stale     Duration `yaml:"stale"`
		// NoRecover is accepted for old configuration files: it turns
		// recovery off (runner.Options.NoRecover), which replicas no
		// longer need, since recovery only ends builds of dead servers.
		NoRecover bool `yaml:"no_recover"`
		// ForkApproval: always (default), first-time or never.
		ForkApproval string `yaml:"fork_approval"`
	} `yaml:"builds"`
	// Backend runs the jobs: local (default), docker or swarm.
	Backend string                       `yaml:"backend"`
	Docker  dockerConfig                 `yaml:"docker"`
	Swarm   swarmConfig                  `yaml:"swarm"`
	Secrets map[string]map[string]string `yaml:"secrets"`
	Pools   map[string]lease.PoolConfig  `yaml:"pools"`
	Lease   struct {
		Keepalive      Duration `yaml:"keepalive"`
		FillMaxPasses  int      `yaml:"fill_max_passes"`
		FillMaxWait    Duration `yaml:"fill_max_wait"`
		Grace          Duration `yaml:"grace"`
		MaxGrace       Duration `yaml:"max_grace"`
		PoolPrecedence string   `yaml:"pool_precedence"`
		// ReplicaURL is where the other lease replicas reach this
		// server (PostgreSQL only): replicas.go.
		ReplicaURL string `yaml:"replica_url"`
	} `yaml:"lease"`
	// SSH is the admin API over SSH: see ssh.go.
	SSH sshConfig `yaml:"ssh"`
	// Migrate is FORGE_MIGRATE: "auto" migrates the database up at start.
	// Only the environment sets it: whether to change a shared schema is
	// decided per start, not kept in a file.
	Migrate string `yaml:"-"`
}

// Duration is a time.Duration written as "30s" or "1m30s" in YAML.
type Duration time.Duration

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(b []byte) error {
	s := strings.Trim(strings.TrimSpace(string(b)), `"'`)
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration like 30s or 1m30s", s)
	}
	*d = Duration(v)
	return nil
}

// defaultDataDir is the data directory when nothing sets one: relative to
// the working directory (.gitignore lists it, for forge run in a checkout).
const defaultDataDir = "forge-data"

// defaultServerConfig is the configuration before the file, env and flags.
// Defaults that a package owns are taken from it; settings left zero here
// get theirs from the package that uses them (builds.concurrency: the
// number of CPUs), as docs/configuration.md says.
func defaultServerConfig() serverConfig {
	var c serverConfig
	c.Addr = ":8080"
	c.Data = defaultDataDir
	c.Grace = Duration(30 * time.Second)
	c.Log.Level = "info"
	c.GitHub.MaxBody = httpapi.DefaultMaxHookBody
	cancel := true
	c.Builds.CancelSuperseded = &cancel
	c.Builds.CloneDepth = git.DefaultDepth
	c.Builds.ProductionBranch = "production"
	c.Builds.KillGrace = Duration(shell.DefaultKillGrace)
	c.Backend = backendLocal
	c.Lease.Keepalive = Duration(lease.DefaultKeepalive)
	c.Lease.FillMaxPasses = lease.DefaultFillMaxPasses
	c.Lease.FillMaxWait = Duration(lease.DefaultFillMaxWait)
	c.Lease.Grace = Duration(lease.DefaultGrace)
	c.Lease.MaxGrace = Duration(lease.DefaultMaxGrace)
	c.Lease.PoolPrecedence = lease.PrecedenceStore
	c.SSH = defaultSSHConfig()
	return c
}

// loadServerConfig returns the configuration from the defaults, the YAML
// file at path (none when empty) and the environment; the caller applies
// its flags, then validates.
func loadServerConfig(path string, getenv func(string) string) (serverConfig, error) {
	c := defaultServerConfig()
	if path != "" {
		if err := loadConfigFile(path, &c); err != nil {
			return c, err
		}
	}
	if err := applyEnv(&c, getenv); err != nil {
		return c, err
	}
	return c, nil
}

// loadConfigFile reads the YAML file at path into c. Unknown keys are
// errors, so a typo does not silently leave a default in place.
func loadConfigFile(path string, c *serverConfig) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return forge.Errorf(forge.EINVALID, "config: %v", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	if err := yaml.UnmarshalWithOptions(data, c, yaml.DisallowUnknownField(), yaml.Strict()); err != nil {
		return forge.Errorf(forge.EINVALID, "config %s: %s", path, yaml.FormatError(err, false, true))
	}
	return nil
}

// applyEnv overrides c with the FORGE_* variables that are set.
func applyEnv(c *serverConfig, getenv func(string) string) error {
	str := map[string]*string{
		"FORGE_ADDR":                  &c.Addr,
		"FORGE_DATA":                  &c.Data,
		"FORGE_DATABASE_URL":          &c.DatabaseURL,
		"FORGE_PUBLIC_URL":            &c.PublicURL,
		"FORGE_LOG_LEVEL":             &c.Log.Level,
		"FORGE_GITHUB_WEBHOOK_SECRET": &c.GitHub.WebhookSecret,
		"FORGE_GITHUB_TOKEN":          &c.GitHub.Token,
		"FORGE_GITHUB_API_URL":        &c.GitHub.APIURL,
		"FORGE_PRODUCTION_BRANCH":     &c.Builds.ProductionBranch,
		"FORGE_MIGRATE":               &c.Migrate,
		"FORGE_BACKEND":               &c.Backend,
		"FORGE_GITHUB_APP_KEY":        &c.GitHub.AppKey,
		"FORGE_FORK_APPROVAL":         &c.Builds.ForkApproval,
		"FORGE_LEASE_REPLICA_URL":     &c.Lease.ReplicaURL,
	}
	for k, p := range str {
		if v := getenv(k); v != "" {
			*p = v
		}
	}
	ints := map[string]*int{
		"FORGE_BUILDS_CONCURRENCY": &c.Builds.Concurrency,
		"FORGE_BUILDS_PER_REPO":    &c.Builds.PerRepo,
		"FORGE_BUILDS_PARALLEL":    &c.Builds.Parallel,
		"FORGE_CLONE_DEPTH":        &c.Builds.CloneDepth,
		"FORGE_LOGS_KEEP_BUILDS":   &c.Logs.KeepBuilds,
		"FORGE_LOGS_KEEP_DAYS":     &c.Logs.KeepDays,
	}
	for k, p := range ints {
		if v := getenv(k); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return forge.Errorf(forge.EINVALID, "%s=%q: want an integer", k, v)
			}
			*p = n
		}
	}
	if v := getenv("FORGE_GRACE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return forge.Errorf(forge.EINVALID, "FORGE_GRACE=%q: want a duration like 30s", v)
		}
		c.Grace = Duration(d)
	}
	if err := applyGitHubEnv(c, getenv); err != nil {
		return err
	}
	if err := c.Docker.applyEnv(getenv); err != nil {
		return err
	}
	if err := c.SSH.applyEnv(getenv); err != nil {
		return err
	}
	if err := c.Swarm.applyEnv(getenv); err != nil {
		return err
	}
	bools := map[string]*bool{
		"FORGE_API_PRIVATE_READS": &c.API.PrivateReads,
		"FORGE_GIT_ALLOW_FILE":    &c.Git.AllowFile,
	}
	for k, p := range bools {
		if v := getenv(k); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return forge.Errorf(forge.EINVALID, "%s=%q: want true or false", k, v)
			}
			*p = b
		}
	}
	return nil
}

// validate checks c once file, env and flags are applied.
func (c *serverConfig) validate() error {
	var errs []string
	if c.Addr == "" {
		errs = append(errs, "addr is empty")
	}
	if c.Data == "" {
		errs = append(errs, "data (the data directory) is empty")
	}
	if c.Migrate != "" && c.Migrate != "auto" {
		errs = append(errs, fmt.Sprintf("FORGE_MIGRATE=%q: the only value is auto", c.Migrate))
	}
	if c.Grace < 0 {
		errs = append(errs, "grace is negative")
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Sprintf("log.level %q: want debug, info, warn or error", c.Log.Level))
	}
	if c.Builds.Concurrency < 0 || c.Builds.PerRepo < 0 || c.Builds.Parallel < 0 {
		errs = append(errs, "builds.concurrency, per_repo and parallel must not be negative")
	}
	if c.Logs.KeepBuilds < 0 || c.Logs.KeepDays < 0 {
		errs = append(errs, "logs.keep_builds and logs.keep_days must not be negative")
	}
	if c.GitHub.MaxBody < 0 {
		errs = append(errs, "github.max_body must not be negative")
	}
	if u := strings.TrimSpace(c.DatabaseURL); u != "" {
		scheme, _, _ := strings.Cut(u, "://")
		if scheme != "postgres" && scheme != "postgresql" {
			// Never echo the URL: it may hold a password.
			errs = append(errs, fmt.Sprintf("database_url (FORGE_DATABASE_URL, --database-url): scheme %q is not supported: want postgres://USER:PASSWORD@HOST/DB, or no URL for SQLite in the data directory", scheme))
		}
	}
	if c.PublicURL != "" && !strings.HasPrefix(c.PublicURL, "http://") && !strings.HasPrefix(c.PublicURL, "https://") {
		errs = append(errs, fmt.Sprintf("public_url %q: want an http:// or https:// URL", c.PublicURL))
	}
	if _, err := c.gitOrigin(); err != nil {
		errs = append(errs, err.Error())
	}
	if err := checkBackend(c.Backend); err != nil {
		errs = append(errs, "backend: "+forge.ErrorMessage(err))
	}
	errs = append(errs, c.Docker.check()...)
	errs = append(errs, c.SSH.check()...)
	errs = append(errs, c.Swarm.check()...)
	for name := range c.Secrets {
		if name != "*" && strings.Count(name, "/") != 1 {
			errs = append(errs, fmt.Sprintf("secrets: %q is not owner/repo or *", name))
		}
	}
	if err := c.leaseConfig().Validate(); err != nil {
		errs = append(errs, err.Error())
	}
	if err := checkReplicaURL(c.Lease.ReplicaURL); err != nil {
		errs = append(errs, forge.ErrorMessage(err))
	}
	errs = append(errs, c.validateGitHub()...)
	if len(errs) > 0 {
		return forge.Errorf(forge.EINVALID, "config: %s", strings.Join(errs, "; "))
	}
	return nil
}

// gitOrigin is where repositories are cloned from and the token may go:
// github.com for the public API (the default), else the scheme, host and
// port of github.api_url (GitHub Enterprise serves git and its API from
// one host).
func (c *serverConfig) gitOrigin() (string, error) {
	raw := strings.TrimSpace(c.GitHub.APIURL)
	if raw == "" {
		return "https://github.com", nil
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("github.api_url %q: want an http:// or https:// URL such as https://ghe.example.com/api/v3", raw)
	}
	if strings.EqualFold(u.Hostname(), "api.github.com") {
		return "https://github.com", nil
	}
	return u.Scheme + "://" + u.Host, nil
}

// leaseConfig is the lease server's part of c.
func (c *serverConfig) leaseConfig() *lease.Config {
	return &lease.Config{
		Pools:          c.Pools,
		Keepalive:      time.Duration(c.Lease.Keepalive),
		FillMaxPasses:  c.Lease.FillMaxPasses,
		FillMaxWait:    time.Duration(c.Lease.FillMaxWait),
		Grace:          time.Duration(c.Lease.Grace),
		MaxGrace:       time.Duration(c.Lease.MaxGrace),
		PoolPrecedence: c.Lease.PoolPrecedence,
	}
}

// secretsFor returns the secrets of repository fullName: those of "*"
// overridden by the repository's own.
func (c *serverConfig) secretsFor(fullName string) map[string]string {
	out := map[string]string{}
	for k, v := range c.Secrets["*"] {
		out[k] = v
	}
	for k, v := range c.Secrets[fullName] {
		out[k] = v
	}
	return out
}
