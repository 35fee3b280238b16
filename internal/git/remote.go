package git

import (
	"context"
	"encoding/base64"
	"net"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/forgeci/forge"
)

// DefaultOrigin is the GitHub forge builds from unless Options.Origin
// names another (GitHub Enterprise).
const DefaultOrigin = "https://github.com"

// origin is the parsed Options.Origin: where clone URLs may point and
// where the token may go.
type origin struct {
	scheme string // https or http
	host   string // lower-case host name, without port
	port   string // explicit or the scheme's default
}

func (o origin) String() string {
	if o.port == defaultPort(o.scheme) {
		return o.scheme + "://" + o.host
	}
	return o.scheme + "://" + net.JoinHostPort(o.host, o.port)
}

func defaultPort(scheme string) string {
	if scheme == "http" {
		return "80"
	}
	return "443"
}

// parseOrigin reads Options.Origin: an http(s) URL whose path is ignored.
func parseOrigin(raw string) (origin, error) {
	if raw == "" {
		raw = DefaultOrigin
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Hostname() == "" {
		return origin{}, forge.Errorf(forge.EINVALID, "git: origin %q is not an http(s)://HOST[:PORT] URL", raw)
	}
	o := origin{scheme: u.Scheme, host: strings.ToLower(u.Hostname()), port: u.Port()}
	if o.port == "" {
		o.port = defaultPort(o.scheme)
	}
	return o, nil
}

// remote is a clone URL that passed the policy: what git fetches from,
// and whether the token goes with it.
type remote struct {
	url  string
	auth bool
}

// hasTransportPrefix reports whether s uses git's <transport>::<address> syntax (ext::,
// fd::, a remote helper's name), which runs programs.
func hasTransportPrefix(s string) bool {
	i := strings.Index(s, "::")
	if i <= 0 {
		return false
	}
	for j := 0; j < i; j++ {
		c := s[j]
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (j == 0 || !(c >= '0' && c <= '9' || c == '+' || c == '.' || c == '-')) {
			return false
		}
	}
	return true
}

// CheckCloneURL returns nil when forge may fetch from the clone URL raw,
// else an EINVALID error that says why. Allowed: https URLs on the
// origin's host and port (http only when the origin itself is http),
// where the token goes too; ssh URLs and scp-like user@host:path addresses
// on the origin's host (no token: ssh authenticates with keys); local
// paths and file:// URLs only with Options.AllowFile. Everything else —
// another host, git://, ext:: and other transports — is refused.
func (g *Git) CheckCloneURL(raw string) error {
	_, err := g.remote(raw)
	return err
}

// remote applies the clone URL policy of CheckCloneURL to raw.
func (g *Git) remote(raw string) (remote, error) {
	o := g.origin
	switch {
	case raw == "":
		return remote{}, forge.Errorf(forge.EINVALID, "git: the repository has no clone URL")
	case strings.HasPrefix(raw, "-") || strings.ContainsAny(raw, "\n\r\x00"):
		return remote{}, forge.Errorf(forge.EINVALID, "git: clone URL %q is not valid", redact(raw))
	case hasTransportPrefix(raw):
		return remote{}, forge.Errorf(forge.EINVALID, "git: clone URL %q uses the git transport %q, which forge refuses: use https or ssh", redact(raw), strings.SplitN(raw, "::", 2)[0])
	case filepath.IsAbs(raw):
		if !g.opts.AllowFile {
			return remote{}, g.fileRefused(raw)
		}
		return remote{url: raw}, nil
	}
	if !strings.Contains(raw, "://") {
		// scp-like ssh: [user@]host:path.
		i := strings.Index(raw, ":")
		if i <= 0 || strings.Contains(raw[:i], "/") {
			return remote{}, forge.Errorf(forge.EINVALID, "git: clone URL %q is not a URL", redact(raw))
		}
		host := raw[:i]
		if at := strings.LastIndex(host, "@"); at >= 0 {
			host = host[at+1:]
		}
		host = strings.ToLower(strings.Trim(host, "[]"))
		if host != o.host {
			return remote{}, g.hostRefused(raw, host)
		}
		return remote{url: raw}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return remote{}, forge.Errorf(forge.EINVALID, "git: clone URL %q is not a URL", redact(raw))
	}
	host := strings.ToLower(u.Hostname())
	switch u.Scheme {
	case "file":
		if !g.opts.AllowFile {
			return remote{}, g.fileRefused(raw)
		}
		return remote{url: raw}, nil
	case "ssh":
		if host != o.host {
			return remote{}, g.hostRefused(raw, host)
		}
		return remote{url: raw}, nil
	case "https", "http":
		port := u.Port()
		if port == "" {
			port = defaultPort(u.Scheme)
		}
		if host == o.host && u.Scheme != o.scheme {
			return remote{}, forge.Errorf(forge.EINVALID, "git: clone URL %q uses %s, but the configured GitHub is %s: refused", redact(raw), u.Scheme, o)
		}
		if host != o.host || port != o.port {
			return remote{}, g.hostRefused(raw, u.Host)
		}
		return remote{url: raw, auth: true}, nil
	}
	return remote{}, forge.Errorf(forge.EINVALID, "git: clone URL %q uses %s://, which forge refuses: use https or ssh", redact(raw), u.Scheme)
}

func (g *Git) hostRefused(raw, host string) error {
	return forge.Errorf(forge.EINVALID, "git: clone URL %q is on host %s, not on the configured GitHub (%s): refused (for GitHub Enterprise set github.api_url, FORGE_GITHUB_API_URL)", redact(raw), host, g.origin)
}

func (g *Git) fileRefused(raw string) error {
	return forge.Errorf(forge.EINVALID, "git: clone URL %q is a local repository, which forge fetches only with git.allow_file (FORGE_GIT_ALLOW_FILE=true)", redact(raw))
}

// allowProtocol is GIT_ALLOW_PROTOCOL for every git forge runs: git
// itself refuses any other transport, whatever a URL, a submodule or a
// redirect asks for.
func (g *Git) allowProtocol() string {
	p := []string{"https", "ssh"}
	if g.origin.scheme == "http" {
		p = append(p, "http")
	}
	if g.opts.AllowFile {
		p = append(p, "file")
	}
	return "GIT_ALLOW_PROTOCOL=" + strings.Join(p, ":")
}

// credentials returns the environment that authenticates a fetch from r,
// or nil: only a remote on the origin gets the token. Passing the header
// through GIT_CONFIG_* keeps it off the command line (visible in ps) and
// out of every file.
func (g *Git) credentials(ctx context.Context, repo *forge.Repo, r remote) []string {
	if !r.auth {
		return nil
	}
	token := g.opts.Token
	if g.opts.TokenFor != nil && repo != nil {
		if t, err := g.opts.TokenFor(ctx, repo); err == nil && t != "" {
			token = t
		}
	}
	if token == "" {
		return nil
	}
	basic := base64.StdEncoding.EncodeToString([]byte("x-access-token:" + token))
	return []string{
		"GIT_CONFIG_COUNT=1",
		"GIT_CONFIG_KEY_0=http.extraHeader",
		"GIT_CONFIG_VALUE_0=Authorization: Basic " + basic,
	}
}
