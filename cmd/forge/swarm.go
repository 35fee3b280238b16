package main

import (
	"strconv"
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
type swarmConfig struct {
	ScheduleTimeout Duration `yaml:"schedule_timeout"`
	RoutingMesh     bool     `yaml:"routing_mesh"`
	KeepSuperseded  bool     `yaml:"keep_superseded"`
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
	if s.ScheduleTimeout < 0 {
		return []string{"swarm.schedule_timeout must not be negative"}
	}
	return nil
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
	})
}
