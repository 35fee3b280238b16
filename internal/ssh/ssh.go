// Package ssh serves forge's API over SSH, for operators at a terminal and
// programs that keep a connection open: the same requests, handlers and
// authorization as the HTTP API, reached with a stock ssh client.
//
// Authentication is by public key only, against an OpenSSH authorized_keys
// file (re-read for every connection, so edits apply without a restart);
// from= and no-pty are honoured, and the key's comment names the user. Each
// user has a Role from the configuration (read, write or admin); a key
// nobody gave a role reads only. There is no shell, no port, agent or X11
// forwarding, no password or keyboard-interactive authentication.
//
// A session runs one of:
//
//   - an exec request "VERB RESOURCE [BODY]" (ssh forge@host GET /repos):
//     one call, answered with {"code", "body"} on standard output; the
//     exit status is ExitStatus(code). The body is the rest of the command
//     line or, for STORE and UPDATE without one, standard input.
//   - "logs [OWNER/REPO/]BUILD/JOB [--follow]": a job's log, followed until
//     the job ends; colours are kept when the client asked for a terminal
//     (ssh -t), sanitized otherwise.
//   - "leases": the lease pools, their holders and queues as a table.
//   - "help".
//   - no command, without a terminal (ssh -T, or a program): the
//     newline-delimited protocol, one JSON request per line in
//     ({"id", "verb", "resource", "body"}), one JSON response per line out
//     ({"request_id", "code", "body"}), requests answered concurrently and
//     so in any order. With a terminal, a session without a command is an
//     interactive shell, which forge refuses.
//
// Requests reach the API as in-process HTTP requests to Options.Handler.
// Their context carries the Caller (CallerFrom), set only here: the HTTP
// API's guard takes it for the caller's identity and role, and no HTTP
// client can forge it.
package ssh

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/forgeci/forge"
)

// Defaults of Options.
const (
	DefaultMaxConnsPerKey   = 16
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultIdleTimeout      = 10 * time.Minute
	// DefaultMaxInFlight bounds the requests one newline-delimited
	// session runs at once; further lines wait to be read.
	DefaultMaxInFlight = 64
)

// Options configure a Server.
type Options struct {
	// HostKeyFile holds the server's Ed25519 host key (OpenSSH PEM). It
	// is created, mode 0600, when missing.
	HostKeyFile string
	// AuthorizedKeysFile lists the keys that may log in.
	AuthorizedKeysFile string
	// Roles maps a user (a key's comment) to its role; others read only.
	Roles map[string]Role
	// Handler is the API every request goes to: the HTTP server's own.
	Handler http.Handler
	// MaxConnsPerKey caps the open connections of one key.
	MaxConnsPerKey int
	// HandshakeTimeout bounds the time from TCP connect to authenticated.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection with nothing in flight and no input
	// for this long.
	IdleTimeout time.Duration
	// MaxInFlight bounds one newline-delimited session's concurrent requests.
	MaxInFlight int
	Logger      *slog.Logger
}

// Caller is who sent a request over SSH: the user its key's comment
// names, the key's SHA256 fingerprint and its role.
type Caller struct {
	User string
	Key  string
	Role Role
}

type callerKey struct{}

// CallerFrom returns the Caller the SSH endpoint put in a request's
// context. Only this package sets it, and only on requests it makes
// in-process, so the HTTP API may trust it.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// Server is the SSH endpoint. Create it with New, run it with Serve.
type Server struct {
	opts    Options
	log     *slog.Logger
	hostKey gossh.Signer
	cfg     *gossh.ServerConfig

	mu     sync.Mutex
	perKey map[string]int
}

// New returns a Server for opts, loading the host key or creating it.
func New(opts Options) (*Server, error) {
	if opts.Handler == nil {
		return nil, forge.Errorf(forge.EINVALID, "ssh: no API handler")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxConnsPerKey <= 0 {
		opts.MaxConnsPerKey = DefaultMaxConnsPerKey
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	signer, err := loadHostKey(opts.HostKeyFile)
	if err != nil {
		return nil, err
	}
	// Parse the keys now so that a broken file fails the start, not the
	// first login.
	if _, err := loadAuthorizedKeys(opts.AuthorizedKeysFile); err != nil {
		return nil, err
	}
	if _, err := os.Stat(opts.AuthorizedKeysFile); errors.Is(err, os.ErrNotExist) {
		opts.Logger.Warn("ssh: the authorized keys file does not exist: every login is refused until it does", "file", opts.AuthorizedKeysFile)
	}
	s := &Server{opts: opts, log: opts.Logger.With("component", "ssh"), hostKey: signer, perKey: map[string]int{}}
	s.cfg = s.config()
	return s, nil
}

// HostKey is the server's public host key (for known_hosts).
func (s *Server) HostKey() gossh.PublicKey { return s.hostKey.PublicKey() }

// loadHostKey reads the Ed25519 key at file, creating it when missing.
func loadHostKey(file string) (gossh.Signer, error) {
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		block, err := gossh.MarshalPrivateKey(priv, "forge ssh host key")
		if err != nil {
			return nil, err
		}
		data = pem.EncodeToMemory(block)
		if err := os.MkdirAll(filepath.Dir(file), 0o750); err != nil {
			return nil, forge.Errorf(forge.EINVALID, "ssh host key: %v", err)
		}
		// O_EXCL: two servers sharing a data directory keep one key.
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			return loadHostKey(file)
		}
		if err != nil {
			return nil, forge.Errorf(forge.EINVALID, "ssh host key: %v", err)
		}
		_, werr := f.Write(data)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return nil, forge.Errorf(forge.EINVALID, "ssh host key %s: %v", file, werr)
		}
	} else if err != nil {
		return nil, forge.Errorf(forge.EINVALID, "ssh host key: %v", err)
	}
	signer, err := gossh.ParsePrivateKey(data)
	if err != nil {
		return nil, forge.Errorf(forge.EINVALID, "ssh host key %s: %v", file, err)
	}
	return signer, nil
}

// config is the server configuration, shared by every connection
// (NewServerConn copies it); authorize reads the authorized keys anew.
func (s *Server) config() *gossh.ServerConfig {
	cfg := &gossh.ServerConfig{
		PublicKeyCallback: func(meta gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
			return s.authorize(meta, key)
		},
		ServerVersion: "SSH-2.0-forge",
		MaxAuthTries:  6,
	}
	cfg.AddHostKey(s.hostKey)
	return cfg
}

// authorize finds key in the authorized keys and checks its from=.
func (s *Server) authorize(meta gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
	keys, err := loadAuthorizedKeys(s.opts.AuthorizedKeysFile)
	if err != nil {
		s.log.Error("ssh: reading the authorized keys", "err", err)
		return nil, errors.New("authorized keys unreadable")
	}
	fp := gossh.FingerprintSHA256(key)
	var ip net.IP
	if tcp, ok := meta.RemoteAddr().(*net.TCPAddr); ok {
		ip = tcp.IP
	}
	want := key.Marshal()
	for _, k := range keys {
		if string(k.key.Marshal()) != string(want) {
			continue
		}
		if ip == nil || !fromAllows(k.from, ip) {
			s.log.Warn("ssh: key used from an address its from= does not allow", "user", k.user, "key", fp, "remote", meta.RemoteAddr().String())
			return nil, fmt.Errorf("key %s not allowed from %s", fp, meta.RemoteAddr())
		}
		role := s.opts.Roles[k.user]
		perm := &gossh.Permissions{Extensions: map[string]string{
			"forge-user": k.user, "forge-key": fp, "forge-role": role.String(),
		}}
		if k.noPTY {
			perm.Extensions["forge-no-pty"] = "1"
		}
		return perm, nil
	}
	return nil, fmt.Errorf("unknown key %s", fp)
}

// Serve accepts connections on ln until ctx ends, then closes ln and every
// connection and returns once their goroutines are done.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		wg.Wait()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("ssh: accept: %w", err)
			}
			// Out of file descriptors and the like: wait and go on, as
			// net/http does, rather than end the endpoint.
			s.log.Warn("ssh: accept failed; retrying", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, nc)
		}()
	}
}

// serveConn runs one connection: handshake, then its channels.
func (s *Server) serveConn(ctx context.Context, nc net.Conn) {
	defer nc.Close()
	// Closing nc ends the handshake or the connection when Serve stops.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	act := newActivity(nc, s.opts.IdleTimeout)
	_ = nc.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	conn, chans, reqs, err := gossh.NewServerConn(act, s.cfg)
	if err != nil {
		s.log.Debug("ssh: handshake failed", "remote", nc.RemoteAddr().String(), "err", err)
		return
	}
	defer conn.Close()
	_ = nc.SetDeadline(time.Time{})
	ext := conn.Permissions.Extensions
	role, _ := ParseRole(ext["forge-role"])
	caller := Caller{User: ext["forge-user"], Key: ext["forge-key"], Role: role}
	if !s.acquire(caller.Key) {
		s.log.Warn("ssh: connection refused: too many connections for this key", "user", caller.User, "key", caller.Key, "max", s.opts.MaxConnsPerKey)
		return
	}
	defer s.release(caller.Key)
	log := s.log.With("user", caller.User, "remote", nc.RemoteAddr().String())
	log.Debug("ssh: connected", "role", role.String())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopIdle := act.watch(ctx, func() {
		log.Debug("ssh: closing an idle connection", "idle", s.opts.IdleTimeout.String())
		conn.Close()
	})
	defer stopIdle()

	// Global requests: tcpip-forward and the like are refused.
	go gossh.DiscardRequests(reqs)
	var wg sync.WaitGroup
	defer wg.Wait()
	for nch := range chans {
		if nch.ChannelType() != "session" {
			_ = nch.Reject(gossh.Prohibited, "forge's SSH endpoint serves its API only: no port forwarding, no "+nch.ChannelType()+" channels")
			continue
		}
		ch, chReqs, err := nch.Accept()
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sess := &session{srv: s, caller: caller, ch: ch, reqs: chReqs, act: act, log: log,
				remote: nc.RemoteAddr().String(), noPTY: ext["forge-no-pty"] != ""}
			sess.run(ctx)
		}()
	}
}

// acquire counts a connection of key, false when the key has its maximum.
func (s *Server) acquire(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perKey[key] >= s.opts.MaxConnsPerKey {
		return false
	}
	s.perKey[key]++
	return true
}

func (s *Server) release(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perKey[key]--; s.perKey[key] <= 0 {
		delete(s.perKey, key)
	}
}

// activity tracks a connection's use for the idle timeout: input read,
// and work in flight (a request, a followed log), which keeps it open.
type activity struct {
	net.Conn
	idle time.Duration

	mu   sync.Mutex
	last time.Time
	busy int
}

func newActivity(c net.Conn, idle time.Duration) *activity {
	return &activity{Conn: c, idle: idle, last: time.Now()}
}

func (a *activity) Read(p []byte) (int, error) {
	n, err := a.Conn.Read(p)
	if n > 0 {
		a.touch()
	}
	return n, err
}

func (a *activity) touch() {
	a.mu.Lock()
	a.last = time.Now()
	a.mu.Unlock()
}

// begin marks work in flight until the returned func is called.
func (a *activity) begin() func() {
	a.mu.Lock()
	a.busy++
	a.mu.Unlock()
	return func() {
		a.mu.Lock()
		a.busy--
		a.last = time.Now()
		a.mu.Unlock()
	}
}

// watch calls expire once the connection has been idle for a.idle; the
// returned func stops watching.
func (a *activity) watch(ctx context.Context, expire func()) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTimer(a.idle)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			a.mu.Lock()
			left := a.idle - time.Since(a.last)
			busy := a.busy > 0
			a.mu.Unlock()
			switch {
			case busy:
				t.Reset(a.idle)
			case left <= 0:
				expire()
				return
			default:
				t.Reset(left)
			}
		}
	}()
	return func() { cancel(); <-done }
}
