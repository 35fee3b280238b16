package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/forgeci/forge"
	httpapi "github.com/forgeci/forge/internal/http"
	sshapi "github.com/forgeci/forge/internal/ssh"
)

// sshConfig is the admin API over SSH (docs/api.md, "Over SSH"): off
// unless addr is set.
type sshConfig struct {
	// Addr is where the SSH endpoint listens, HOST:PORT; empty: off.
	Addr string `yaml:"addr"`
	// AuthorizedKeys is the OpenSSH authorized_keys file of the keys that
	// may log in; empty: ssh/authorized_keys in the data directory.
	AuthorizedKeys string `yaml:"authorized_keys"`
	// Roles maps a user (a key's comment) to read, write or admin; keys
	// not listed read only.
	Roles            map[string]string `yaml:"roles"`
	MaxConnsPerKey   int               `yaml:"max_conns_per_key"`
	IdleTimeout      Duration          `yaml:"idle_timeout"`
	HandshakeTimeout Duration          `yaml:"handshake_timeout"`
}

func defaultSSHConfig() sshConfig {
	return sshConfig{
		MaxConnsPerKey:   sshapi.DefaultMaxConnsPerKey,
		IdleTimeout:      Duration(sshapi.DefaultIdleTimeout),
		HandshakeTimeout: Duration(sshapi.DefaultHandshakeTimeout),
	}
}

// applyEnv reads the FORGE_SSH_* variables that are set.
func (s *sshConfig) applyEnv(getenv func(string) string) error {
	if v := getenv("FORGE_SSH_ADDR"); v != "" {
		s.Addr = v
	}
	if v := getenv("FORGE_SSH_AUTHORIZED_KEYS"); v != "" {
		s.AuthorizedKeys = v
	}
	if v := getenv("FORGE_SSH_MAX_CONNS_PER_KEY"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return forge.Errorf(forge.EINVALID, "FORGE_SSH_MAX_CONNS_PER_KEY=%q: want an integer", v)
		}
		s.MaxConnsPerKey = n
	}
	return nil
}

// check returns what is wrong with s.
func (s *sshConfig) check() []string {
	var errs []string
	for user, role := range s.Roles {
		if _, err := sshapi.ParseRole(role); err != nil {
			errs = append(errs, fmt.Sprintf("ssh.roles: %s: %v", user, err))
		}
	}
	if s.MaxConnsPerKey < 0 {
		errs = append(errs, "ssh.max_conns_per_key must not be negative")
	}
	if s.IdleTimeout < 0 || s.HandshakeTimeout < 0 {
		errs = append(errs, "ssh.idle_timeout and ssh.handshake_timeout must not be negative")
	}
	return errs
}

// sshCaller lets the HTTP API's guard know callers the SSH endpoint
// authenticated (from the request context the ssh package alone sets).
func sshCaller(r *http.Request) (httpapi.Caller, bool) {
	c, ok := sshapi.CallerFrom(r.Context())
	if !ok {
		return httpapi.Caller{}, false
	}
	return httpapi.Caller{
		Name:     "ssh user " + c.User,
		Admin:    c.Role == sshapi.RoleAdmin,
		ReadOnly: c.Role == sshapi.RoleRead,
	}, true
}

// startSSH opens the SSH endpoint when ssh.addr is set: the listener is
// open when it returns (so a bad address fails the start), and serve runs
// it until its context ends. Nil serve: SSH is off.
func startSSH(c *sshConfig, data string, api http.Handler, log *slog.Logger) (serve func(context.Context) error, addr net.Addr, err error) {
	if c.Addr == "" {
		return nil, nil, nil
	}
	roles := map[string]sshapi.Role{}
	users := make([]string, 0, len(c.Roles))
	for user, r := range c.Roles {
		role, err := sshapi.ParseRole(r)
		if err != nil {
			return nil, nil, forge.Errorf(forge.EINVALID, "config: ssh.roles: %s: %v", user, err)
		}
		roles[user] = role
		users = append(users, user)
	}
	sort.Strings(users)
	keys := c.AuthorizedKeys
	if keys == "" {
		keys = filepath.Join(data, "ssh", "authorized_keys")
	}
	srv, err := sshapi.New(sshapi.Options{
		HostKeyFile:        filepath.Join(data, "ssh", "host_ed25519_key"),
		AuthorizedKeysFile: keys,
		Roles:              roles,
		Handler:            api,
		MaxConnsPerKey:     c.MaxConnsPerKey,
		IdleTimeout:        time.Duration(c.IdleTimeout),
		HandshakeTimeout:   time.Duration(c.HandshakeTimeout),
		Logger:             log,
	})
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return nil, nil, forge.Errorf(forge.EUNAVAILABLE, "ssh: listen on %s: %v", c.Addr, err)
	}
	log.Info("ssh listening", "ssh_addr", ln.Addr().String(), "authorized_keys", keys, "host_key", forgeFingerprint(srv), "roles", users)
	return func(ctx context.Context) error { return srv.Serve(ctx, ln) }, ln.Addr(), nil
}

// forgeFingerprint is the host key's SHA256 fingerprint, for the log.
func forgeFingerprint(s *sshapi.Server) string { return sshapi.Fingerprint(s.HostKey()) }
