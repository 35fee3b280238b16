package main

import (
	"bytes"

	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/lease"
)

// serverConfig is forge server's configuration: the YAML file given with
// --config, then FORGE_* environment variables, then flags (flags win).
//
//	addr: ":8080"                 # FORGE_ADDR, --addr
//	data: /var/lib/forge          # FORGE_DATA, --data
//	database_url: postgres://...  # FORGE_DATABASE_URL (default: SQLite in data)
//	public_url: https://ci.example.com   # FORGE_PUBLIC_URL, --public-url
//	grace: 30s                    # FORGE_GRACE, --grace
//	log: {level: info}            # FORGE_LOG_LEVEL: debug, info, warn, error
//	api: {private_reads: false}   # FORGE_API_PRIVATE_READS=true
//	github:
//	  webhook_secret: ...         # FORGE_GITHUB_WEBHOOK_SECRET
//	  max_body: 26214400
//	  token: ...                  # FORGE_GITHUB_TOKEN (clone private repositories)
//	builds:
//	  concurrency: 4              # FORGE_BUILDS_CONCURRENCY
//	  per_repo: 2                 # FORGE_BUILDS_PER_REPO
//	  parallel: 2                 # jobs of one build at once
//	  cancel_superseded: true
//	  clone_depth: 50
//	  build_drafts: false
//	  production_branch: production
//	  kill_grace: 5s
//	  heartbeat: 10s              # how often running builds are stamped alive
//	  stale: 30s                  # a running build unstamped this long was left by a dead server
//	backend: local                # FORGE_BACKEND: local, docker or swarm
//	docker: {...}                 # the docker backend (see dockerConfig), FORGE_DOCKER_*
//	swarm: {...}                  # the swarm backend (see swarmConfig), FORGE_SWARM_*
//	secrets:                      # per repository ("*" for all); never for forks
//	  acme/app: {DEPLOY_KEY: ...}
//	pools: {...}                  # lease pools (docs/leases.md)
//	lease: {keepalive: 10s}
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
	GitHub struct {
		WebhookSecret string `yaml:"webhook_secret"`
		MaxBody       int64  `yaml:"max_body"`
		Token         string `yaml:"token"`
	} `yaml:"github"`
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
	} `yaml:"builds"`
	// Backend runs the jobs: local (default), docker or swarm.
	Backend string                       `yaml:"backend"`
	Docker  dockerConfig                 `yaml:"docker"`
	Swarm   swarmConfig                  `yaml:"swarm"`
	Secrets map[string]map[string]string `yaml:"secrets"`
	Pools   map[string]lease.PoolConfig  `yaml:"pools"`
	Lease   struct {
		Keepalive     Duration `yaml:"keepalive"`
		FillMaxPasses int      `yaml:"fill_max_passes"`
		FillMaxWait   Duration `yaml:"fill_max_wait"`
	} `yaml:"lease"`
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

// defaultServerConfig is the configuration before the file, env and flags.
func defaultServerConfig() serverConfig {
	var c serverConfig
	c.Addr = ":8080"
	c.Grace = Duration(30 * time.Second)
	c.Log.Level = "info"
	c.Builds.ProductionBranch = "production"
	return c
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
		"FORGE_PRODUCTION_BRANCH":     &c.Builds.ProductionBranch,
		"FORGE_BACKEND":               &c.Backend,
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
	if err := c.Docker.applyEnv(getenv); err != nil {
		return err
	}
	if err := c.Swarm.applyEnv(getenv); err != nil {
		return err
	}
	if v := getenv("FORGE_API_PRIVATE_READS"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return forge.Errorf(forge.EINVALID, "FORGE_API_PRIVATE_READS=%q: want true or false", v)
		}
		c.API.PrivateReads = b
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
	if c.GitHub.MaxBody < 0 {
		errs = append(errs, "github.max_body must not be negative")
	}
	if c.PublicURL != "" && !strings.HasPrefix(c.PublicURL, "http://") && !strings.HasPrefix(c.PublicURL, "https://") {
		errs = append(errs, fmt.Sprintf("public_url %q: want an http:// or https:// URL", c.PublicURL))
	}
	if c.Backend == "" {
		c.Backend = backendLocal
	}
	if err := checkBackend(c.Backend); err != nil {
		errs = append(errs, "backend: "+forge.ErrorMessage(err))
	}
	errs = append(errs, c.Docker.check()...)
	errs = append(errs, c.Swarm.check()...)
	for name := range c.Secrets {
		if name != "*" && strings.Count(name, "/") != 1 {
			errs = append(errs, fmt.Sprintf("secrets: %q is not owner/repo or *", name))
		}
	}
	if lc := c.leaseConfig(); len(lc.Pools) > 0 || lc.Keepalive != 0 {
		if err := lc.Validate(); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return forge.Errorf(forge.EINVALID, "config: %s", strings.Join(errs, "; "))
	}
	return nil
}

// leaseConfig is the lease server's part of c.
func (c *serverConfig) leaseConfig() *lease.Config {
	return &lease.Config{
		Pools:         c.Pools,
		Keepalive:     time.Duration(c.Lease.Keepalive),
		FillMaxPasses: c.Lease.FillMaxPasses,
		FillMaxWait:   time.Duration(c.Lease.FillMaxWait),
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
