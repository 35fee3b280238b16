package main

import (
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/backend/swarm"
)

// swarmConfig is the swarm: section of the server's configuration: what
// only the swarm backend has. The manager it talks to and the jobs'
// defaults are the docker: section's (host, cert_path, allow_plain_tcp,
// scope, cpus, memory, user, forgexec, registries, pull_timeout; forge
// exec reads them from FORGE_DOCKER_* variables, and these from
// FORGE_SWARM_* ones).
//
//	swarm:
//	  schedule_timeout: 5m     # FORGE_SWARM_SCHEDULE_TIMEOUT: a job no node can take fails after it
//	  routing_mesh: false      # FORGE_SWARM_ROUTING_MESH: ports: on every node, not only the job's
//	  keep_superseded: false   # FORGE_SWARM_KEEP_SUPERSEDED: leave older builds of a pull request running
//	  # Jobs on any node (else all on the node of the engine forge talks to):
//	  node_forgexec: /usr/local/bin/forge  # FORGE_SWARM_NODE_FORGEXEC: static forge, same path on every node
//	  source_addr: ":7901"                 # FORGE_SWARM_SOURCE_ADDR: serve workspaces to the tasks here
//	  source_url: https://forge:7901       # FORGE_SWARM_SOURCE_URL: how tasks reach it (default: source_addr)
//	  networks: [forge_jobs]               # FORGE_SWARM_NETWORKS (comma-separated): networks every job joins
type swarmConfig struct {
	ScheduleTimeout Duration `yaml:"schedule_timeout"`
	RoutingMesh     bool     `yaml:"routing_mesh"`
	KeepSuperseded  bool     `yaml:"keep_superseded"`
	NodeForgexec    string   `yaml:"node_forgexec"`
	SourceAddr      string   `yaml:"source_addr"`
	SourceURL       string   `yaml:"source_url"`
	Networks        []string `yaml:"networks"`
}

// applyEnv overrides s with the FORGE_SWARM_* variables that are set.
func (s *swarmConfig) applyEnv(getenv func(string) string) error {
	if v := getenv("FORGE_SWARM_SCHEDULE_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return forge.Errorf(forge.EINVALID, "FORGE_SWARM_SCHEDULE_TIMEOUT=%q: want a duration like 5m", v)
		}
		s.ScheduleTimeout = Duration(d)
	}
	for name, p := range map[string]*string{
		"FORGE_SWARM_NODE_FORGEXEC": &s.NodeForgexec, "FORGE_SWARM_SOURCE_ADDR": &s.SourceAddr, "FORGE_SWARM_SOURCE_URL": &s.SourceURL,
	} {
		if v := getenv(name); v != "" {
			*p = v
		}
	}
	if v := getenv("FORGE_SWARM_NETWORKS"); v != "" {
		s.Networks = nil
		for _, n := range strings.Split(v, ",") {
			if n = strings.TrimSpace(n); n != "" {
				s.Networks = append(s.Networks, n)
			}
		}
	}
	for name, p := range map[string]*bool{
		"FORGE_SWARM_ROUTING_MESH": &s.RoutingMesh, "FORGE_SWARM_KEEP_SUPERSEDED": &s.KeepSuperseded,
	} {
		if v := getenv(name); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return forge.Errorf(forge.EINVALID, "%s=%q: want true or false", name, v)
			}
			*p = b
		}
	}
	return nil
}

// check reports what is wrong with s.
func (s *swarmConfig) check() []string {
	var errs []string
	if s.ScheduleTimeout < 0 {
		errs = append(errs, "swarm.schedule_timeout must not be negative")
	}
	if s.NodeForgexec != "" && !strings.HasPrefix(s.NodeForgexec, "/") {
		errs = append(errs, "swarm.node_forgexec must be an absolute path")
	}
	if s.SourceURL != "" && !strings.HasPrefix(s.SourceURL, "https://") {
		errs = append(errs, "swarm.source_url must be an https:// URL: tasks fetch workspaces over TLS")
	}
	if s.SourceURL != "" && s.SourceAddr == "" {
		errs = append(errs, "swarm.source_url needs swarm.source_addr, where forge serves the workspaces")
	}
	return errs
}

// newSwarmBackend makes the swarm backend of c.
func newSwarmBackend(c backendConfig) (forge.Backend, error) {
	mem, err := parseSize(c.Docker.Memory)
	if err != nil {
		return nil, forge.Errorf(forge.EINVALID, "docker memory: %v", err)
	}
	regs := make(map[string]swarm.RegistryAuth, len(c.Docker.Registries))
	for host, a := range c.Docker.Registries {
		regs[host] = swarm.RegistryAuth{Username: a.Username, Password: a.Password}
	}
	return swarm.New(swarm.Options{
		Host: c.Docker.Host, CertPath: c.Docker.CertPath, AllowPlainTCP: c.Docker.AllowPlainTCP,
		Scope: c.Docker.Scope, Forgexec: c.Docker.Forgexec, KillGrace: c.KillGrace,
		CPUs: c.Docker.CPUs, Memory: mem, User: c.Docker.User, Registries: regs,
		PullTimeout: time.Duration(c.Docker.PullTimeout), ScheduleTimeout: time.Duration(c.Swarm.ScheduleTimeout),
		RoutingMesh: c.Swarm.RoutingMesh, KeepSuperseded: c.Swarm.KeepSuperseded, Logger: c.Logger,
		NodeForgexec: c.Swarm.NodeForgexec, SourceAddr: c.Swarm.SourceAddr, SourceURL: c.Swarm.SourceURL,
		Networks: c.Swarm.Networks,
	})
}

// closeBackend releases what a backend holds (the swarm backend's
// workspace server), once no job runs any more.
func closeBackend(b forge.Backend) {
	if c, ok := b.(io.Closer); ok {
		_ = c.Close()
	}
}
