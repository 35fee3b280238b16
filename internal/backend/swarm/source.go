package swarm

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/forgexec"
)

// sourceServer serves jobs' workspaces to their tasks, wherever they run:
// forgexec fetches its job's workspace (forgexec.FetchSource) over HTTPS
// with a certificate made at start and pinned in the job, from a URL that
// holds a random token and is valid while the job runs.
type sourceServer struct {
	base string // the URL tasks reach the server at, without a path
	pin  string
	log  *slog.Logger
	srv  *http.Server
	done chan struct{}

	mu   sync.Mutex
	jobs map[string]forge.Workspace // by token
}

// newSourceServer listens on addr; tasks reach it at base (https://host:port),
// or at the address it listens on when base is "".
func newSourceServer(addr, base string, log *slog.Logger) (*sourceServer, error) {
	cert, err := selfSigned()
	if err != nil {
		return nil, forge.WrapError(forge.EINTERNAL, err, "swarm backend: cannot make the workspace server's certificate")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, forge.WrapError(forge.EINVALID, err, "swarm backend: cannot serve workspaces on "+addr)
	}
	if base == "" {
		base = "https://" + ln.Addr().String()
	}
	s := &sourceServer{
		base: strings.TrimSuffix(base, "/"), pin: forgexec.CertPin(cert.Certificate[0]), log: log,
		done: make(chan struct{}), jobs: map[string]forge.Workspace{},
	}
	s.srv = &http.Server{
		Handler:           s,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("swarm: the workspace server stopped", "err", err)
		}
	}()
	return s, nil
}

// add makes ws fetchable and returns where from; remove(token) ends that.
func (s *sourceServer) add(ws forge.Workspace) (*forgexec.Source, string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, "", err
	}
	token := hex.EncodeToString(b[:])
	s.mu.Lock()
	s.jobs[token] = ws
	s.mu.Unlock()
	return &forgexec.Source{URL: s.base + "/source/" + token, CertSHA256: s.pin}, token, nil
}

func (s *sourceServer) remove(token string) {
	s.mu.Lock()
	delete(s.jobs, token)
	s.mu.Unlock()
}

// ServeHTTP answers GET /source/TOKEN with the workspace as a tar stream.
func (s *sourceServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token, ok := strings.CutPrefix(r.URL.Path, "/source/")
	s.mu.Lock()
	ws, known := s.jobs[token]
	s.mu.Unlock()
	switch {
	case r.Method != http.MethodGet:
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	case !ok || !known:
		http.Error(w, "no such workspace (its job ended, or its server restarted)", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/x-tar")
	if err := packSource(r.Context(), ws.Dir, ws.Clean, w); err != nil && r.Context().Err() == nil {
		// The status is gone: cutting the stream makes the tar invalid,
		// which forgexec reports.
		s.log.Warn("swarm: serving a workspace", "dir", ws.Dir, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// Close stops the server and waits for it.
func (s *sourceServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	<-s.done
	return err
}

// selfSigned makes a key and a certificate of its own for the server:
// tasks trust it by its pin, not by a name or an authority.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "forge workspace server"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
