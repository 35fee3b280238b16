package ssh

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"strings"

	gossh "golang.org/x/crypto/ssh"

	"github.com/forgeci/forge"
)

// Role is what a key may do through the API, as an API token would.
type Role int

// The roles, weakest first.
const (
	// RoleRead reads only: every change is refused (403).
	RoleRead Role = iota
	// RoleWrite may do what a (non-admin) API token may: trigger, cancel,
	// restart and approve builds.
	RoleWrite
	// RoleAdmin may do what an admin token may, lease-pool edits and
	// force-releases too.
	RoleAdmin
)

// ParseRole reads "read", "write" or "admin".
func ParseRole(s string) (Role, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "read", "read-only", "readonly":
		return RoleRead, nil
	case "write":
		return RoleWrite, nil
	case "admin":
		return RoleAdmin, nil
	}
	return 0, fmt.Errorf("role %q: want read, write or admin", s)
}

func (r Role) String() string {
	switch r {
	case RoleWrite:
		return "write"
	case RoleAdmin:
		return "admin"
	}
	return "read"
}

// authorizedKey is one line of the authorized_keys file.
type authorizedKey struct {
	key   gossh.PublicKey
	user  string   // the comment
	from  []string // from= patterns; none: any address
	noPTY bool
	line  int
}

// parseAuthorizedKeys reads an OpenSSH authorized_keys file. A line that
// does not parse is an error naming it (a key silently dropped would be a
// lockout nobody can explain). Keys with no comment are named by their
// fingerprint.
func parseAuthorizedKeys(data []byte) ([]authorizedKey, error) {
	var keys []authorizedKey
	for n, line := range bytes.Split(data, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		pk, comment, opts, _, err := gossh.ParseAuthorizedKey(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", n+1, err)
		}
		k := authorizedKey{key: pk, user: strings.TrimSpace(comment), line: n + 1}
		if k.user == "" {
			k.user = gossh.FingerprintSHA256(pk)
		}
		for _, o := range opts {
			name, val, hasVal := strings.Cut(o, "=")
			switch strings.ToLower(name) {
			case "from":
				val = strings.Trim(val, `"`)
				if !hasVal || val == "" {
					return nil, fmt.Errorf("line %d: from= needs a pattern list", n+1)
				}
				k.from = strings.Split(val, ",")
			case "no-pty", "restrict":
				k.noPTY = true
			case "command", "principals", "tunnel", "permitopen", "permitlisten":
				// A forced command or a certificate principal list asks
				// for something this server cannot honour; refusing the
				// key is safer than ignoring it.
				return nil, fmt.Errorf("line %d: option %s is not supported by forge's SSH endpoint", n+1, name)
			}
			// Others (no-port-forwarding, no-agent-forwarding,
			// no-X11-forwarding, pty, ...) change nothing: forge never
			// forwards anything.
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// loadAuthorizedKeys reads the file at path; a missing file is no keys
// (every login is refused), logged by the caller.
func loadAuthorizedKeys(file string) ([]authorizedKey, error) {
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, forge.Errorf(forge.EINVALID, "authorized keys: %v", err)
	}
	keys, err := parseAuthorizedKeys(data)
	if err != nil {
		return nil, forge.Errorf(forge.EINVALID, "authorized keys %s: %v", file, err)
	}
	return keys, nil
}

// fromAllows reports whether the client address ip matches the from=
// pattern list as sshd matches it: a pattern is an address with * and ?
// wildcards or a CIDR block, a leading ! negates and a negated match
// refuses outright. Host names are not looked up (no reverse DNS): a
// pattern with letters matches nothing.
func fromAllows(patterns []string, ip net.IP) bool {
	if len(patterns) == 0 {
		return true
	}
	addr := ip.String()
	if v4 := ip.To4(); v4 != nil {
		addr = v4.String()
	}
	allowed := false
	for _, p := range patterns {
		p = strings.TrimSpace(p)
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		var match bool
		if _, block, err := net.ParseCIDR(p); err == nil {
			match = block.Contains(ip)
		} else {
			match, _ = path.Match(strings.ToLower(p), addr)
		}
		if match && neg {
			return false
		}
		allowed = allowed || match
	}
	return allowed
}

// Fingerprint is key's SHA256 fingerprint as ssh-keygen -l prints it.
func Fingerprint(key gossh.PublicKey) string { return gossh.FingerprintSHA256(key) }
