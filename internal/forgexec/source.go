package forgexec

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/forgeci/forge"
)

// Source is where forgexec fetches a job's workspace from, for engines
// where nothing can be put in a container before it starts on another
// machine (a Swarm service on a worker node): a tar stream that a GET of
// URL answers, over HTTPS with a certificate the job pins. The URL is
// secret (it names one job's workspace), and the job that carries it is
// (a Swarm secret): the server gives the workspace to whoever presents it.
type Source struct {
	URL string `json:"url"`
	// CertSHA256 is CertPin of the server's certificate: a server's own,
	// self-signed certificate is trusted by this pin alone, so no
	// authority is needed and no other server can pose as it.
	CertSHA256 string `json:"cert_sha256"`
}

// CertPin is the pin of a certificate (DER) for Source.CertSHA256: its
// SHA-256 in hex.
func CertPin(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// sourceRetry bounds how long FetchSource retries a server that does not
// answer (a forge server restarting).
const sourceRetry = 30 * time.Second

// FetchSource fetches the workspace src names and extracts it into dir
// (made if missing). A server that cannot be reached is tried again for a
// while; one that answers with an error is not.
func FetchSource(ctx context.Context, src *Source, dir string) error {
	u, err := url.Parse(src.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return forge.Errorf(forge.EINVALID, "the workspace's address is not an https URL")
	}
	if len(src.CertSHA256) != 64 {
		return forge.Errorf(forge.EINVALID, "the workspace's server has no certificate pin")
	}
	pin := []byte(src.CertSHA256)
	cfg := &tls.Config{
		// The chain is not checked against authorities: the pin is the
		// trust (see Source).
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || subtle.ConstantTimeCompare([]byte(CertPin(raw[0])), pin) != 1 {
				return errors.New("the server's certificate is not the pinned one")
			}
			return nil
		},
		MinVersion: tls.VersionTLS12,
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     cfg,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		Proxy:               nil, // the server is forge's own, never behind the job's proxy
	}}
	defer client.CloseIdleConnections()
	where := u.Host
	deadline := time.Now().Add(sourceRetry)
	for wait := 100 * time.Millisecond; ; wait = min(wait*2, 2*time.Second) {
		err := fetchOnce(ctx, client, src.URL, dir)
		var unreachable *net.OpError
		if err == nil || !errors.As(err, &unreachable) || time.Now().After(deadline) || ctx.Err() != nil {
			if err != nil {
				return forge.WrapError(forge.EUNAVAILABLE, err, fmt.Sprintf("cannot fetch the workspace from %s: %v", where, err))
			}
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

func fetchOnce(ctx context.Context, client *http.Client, u, dir string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("the server answered %s: %s", resp.Status, msg)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("making the workspace: %w", err)
	}
	if err := Extract(tar.NewReader(resp.Body), dir); err != nil {
		return fmt.Errorf("unpacking the workspace: %w", err)
	}
	return nil
}
