package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/backend/docker"
	"github.com/forgeci/forge/internal/backend/local"
	"github.com/forgeci/forge/internal/guard"
)

// Backend names.
const (
	backendLocal  = "local"
	backendDocker = "docker"
	backendSwarm  = "swarm"
)

// knownBackends are the values of --backend, FORGE_BACKEND and backend:.
var knownBackends = []string{backendLocal, backendDocker, backendSwarm}

// backendConfig configures the backends: the server's backend: and
// docker: sections, or forge exec's flags and FORGE_DOCKER_* variables.
type backendConfig struct {
	// KillGrace is the time between SIGTERM and SIGKILL of a step.
	KillGrace time.Duration
	// TempDir holds the local backend's clean workspaces.
	TempDir string
	Docker  dockerConfig
	Swarm   swarmConfig
	// Warn receives the local backend's warnings about what it ignores.
	Warn func(msg string)
	// Logger receives the container backends' warnings.
	Logger *slog.Logger
	// Guard stops the local backend's step processes when forge dies.
	Guard *guard.Guard
}

// dockerConfig is the docker: section of the server's configuration;
// forge exec reads the same settings from FORGE_DOCKER_* variables.
//
//	docker:
//	  host: unix:///var/run/docker.sock   # FORGE_DOCKER_HOST (default: DOCKER_HOST, else the local socket)
//	  cert_path: /etc/forge/docker-tls     # FORGE_DOCKER_CERT_PATH: ca.pem, cert.pem, key.pem
//	  allow_plain_tcp: false               # FORGE_DOCKER_ALLOW_PLAIN_TCP
//	  scope: default                       # FORGE_DOCKER_SCOPE: label of everything this server makes
//	  cpus: 2                              # FORGE_DOCKER_CPUS: a job's default CPU limit
//	  memory: 4G                           # FORGE_DOCKER_MEMORY: a job's default memory limit
//	  user: "1000:1000"                    # FORGE_DOCKER_USER (default: the image's user)
//	  pull_timeout: 10m
//	  forgexec: /usr/local/bin/forge       # FORGE_DOCKER_FORGEXEC: static forge binary for containers
//	  registries: {ghcr.io: {username: u, password: p}}
type dockerConfig struct {
	Host          string                         `yaml:"host"`
	CertPath      string                         `yaml:"cert_path"`
	AllowPlainTCP bool                           `yaml:"allow_plain_tcp"`
	Scope         string                         `yaml:"scope"`
	CPUs          float64                        `yaml:"cpus"`
	Memory        string                         `yaml:"memory"`
	User          string                         `yaml:"user"`
	PullTimeout   Duration                       `yaml:"pull_timeout"`
	Forgexec      string                         `yaml:"forgexec"`
	Registries    map[string]docker.RegistryAuth `yaml:"registries"`
}

// applyEnv overrides d with the FORGE_DOCKER_* variables that are set.
func (d *dockerConfig) applyEnv(getenv func(string) string) error {
	for k, p := range map[string]*string{
		"FORGE_DOCKER_HOST": &d.Host, "FORGE_DOCKER_CERT_PATH": &d.CertPath, "FORGE_DOCKER_SCOPE": &d.Scope,
		"FORGE_DOCKER_MEMORY": &d.Memory, "FORGE_DOCKER_USER": &d.User, "FORGE_DOCKER_FORGEXEC": &d.Forgexec,
	} {
		if v := getenv(k); v != "" {
			*p = v
		}
	}
	if v := getenv("FORGE_DOCKER_CPUS"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 {
			return forge.Errorf(forge.EINVALID, "FORGE_DOCKER_CPUS=%q: want a number of CPUs like 1.5", v)
		}
		d.CPUs = f
	}
	if v := getenv("FORGE_DOCKER_ALLOW_PLAIN_TCP"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return forge.Errorf(forge.EINVALID, "FORGE_DOCKER_ALLOW_PLAIN_TCP=%q: want true or false", v)
		}
		d.AllowPlainTCP = b
	}
	return nil
}

// check reports what is wrong with d.
func (d *dockerConfig) check() []string {
	var errs []string
	if d.CPUs < 0 {
		errs = append(errs, "docker.cpus must not be negative")
	}
	if _, err := parseSize(d.Memory); err != nil {
		errs = append(errs, "docker.memory: "+err.Error())
	}
	if d.PullTimeout < 0 {
		errs = append(errs, "docker.pull_timeout must not be negative")
	}
	return errs
}

// parseSize reads a byte size: 512M, 4G, 1048576; "" is 0.
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	switch strings.ToUpper(s[len(s)-1:]) {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size like 512M or 4G", s)
	}
	return n * mult, nil
}

// checkBackend refuses an unknown backend name.
func checkBackend(name string) error {
	for _, k := range knownBackends {
		if name == k {
			return nil
		}
	}
	return forge.Errorf(forge.EINVALID, "unknown backend %q: want one of %s", name, strings.Join(knownBackends, ", "))
}

// newBackend makes the backend called name.
func newBackend(name string, c backendConfig) (forge.Backend, error) {
	switch name {
	case "", backendLocal:
		return local.New(local.Options{TempDir: c.TempDir, KillGrace: c.KillGrace, Warn: c.Warn, Guard: c.Guard}), nil
	case backendDocker:
		mem, err := parseSize(c.Docker.Memory)
		if err != nil {
			return nil, forge.Errorf(forge.EINVALID, "docker memory: %v", err)
		}
		return docker.New(docker.Options{
			Host: c.Docker.Host, CertPath: c.Docker.CertPath, AllowPlainTCP: c.Docker.AllowPlainTCP,
			Scope: c.Docker.Scope, Forgexec: c.Docker.Forgexec, KillGrace: c.KillGrace,
			CPUs: c.Docker.CPUs, Memory: mem, User: c.Docker.User, Registries: c.Docker.Registries,
			PullTimeout: time.Duration(c.Docker.PullTimeout), Logger: c.Logger,
		})
	case backendSwarm:
		return newSwarmBackend(c)
	}
	return nil, checkBackend(name)
}

// removeLeftovers removes what runs of b by a forge that died left behind
// (the local backend's clean workspaces), and says how many.
func removeLeftovers(ctx context.Context, b forge.Backend) (int, error) {
	if l, ok := b.(interface {
		RemoveLeftovers(ctx context.Context) (int, error)
	}); ok {
		return l.RemoveLeftovers(ctx)
	}
	return 0, nil
}

// usesContainers reports whether jobs of backend name run in their image.
func usesContainers(name string) bool { return name != "" && name != backendLocal }

// canReattach reports whether b's jobs outlive the server (forge.Attacher).
func canReattach(b forge.Backend) bool {
	_, ok := b.(forge.Attacher)
	return ok
}

// janitorOf returns b's Janitor, or nil.
func janitorOf(b forge.Backend) forge.Janitor {
	j, _ := b.(forge.Janitor)
	return j
}
