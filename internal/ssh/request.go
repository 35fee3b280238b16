package ssh

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/forgeci/forge"
)

// MaxRequest bounds one request: a line of the newline-delimited protocol,
// or an exec call's body on standard input.
const MaxRequest = 1 << 20

// Request is one call of the API over SSH: in newline-delimited mode a
// JSON line {"id", "verb", "resource", "body"}; an exec request is the same
// call written as a command line (VERB RESOURCE [BODY]).
type Request struct {
	// ID is the caller's, echoed as request_id (any JSON value; absent
	// means null).
	ID json.RawMessage `json:"id,omitempty"`
	// Verb is GET, STORE, UPDATE or DELETE, or the HTTP method they
	// stand for (GET, POST, PUT, DELETE; PATCH is UPDATE too).
	Verb string `json:"verb"`
	// Resource is a path of the REST API: /api/v1/... as over HTTP, or
	// the short form without /api/v1 (see APIPath).
	Resource string `json:"resource"`
	// Body is the JSON body, if any.
	Body json.RawMessage `json:"body,omitempty"`
}

// Response answers a Request: Code is the HTTP status the API answered,
// Body its JSON body (a string when it was not JSON).
type Response struct {
	RequestID json.RawMessage `json:"request_id,omitempty"`
	Code      int             `json:"code"`
	Body      json.RawMessage `json:"body,omitempty"`
}

// DecodeRequest reads one newline-delimited request. The request is
// checked (verb, resource, body) so that what reaches the API handler is
// a well-formed HTTP request; errors are EINVALID and say what was wrong.
func DecodeRequest(line []byte) (*Request, error) {
	if len(line) > MaxRequest {
		return nil, forge.Errorf(forge.ETOOLARGE, "request over %d bytes", MaxRequest)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	var r Request
	if err := dec.Decode(&r); err != nil {
		return nil, forge.Errorf(forge.EINVALID, "request is not a JSON object {\"id\", \"verb\", \"resource\", \"body\"}: %v", err)
	}
	if dec.More() {
		return nil, forge.Errorf(forge.EINVALID, "one JSON object per line")
	}
	if _, _, err := r.Target(); err != nil {
		return nil, err
	}
	return &r, nil
}

// method maps a verb to its HTTP method.
func method(verb string) (string, bool) {
	switch strings.ToUpper(verb) {
	case "GET":
		return http.MethodGet, true
	case "STORE", "POST":
		return http.MethodPost, true
	case "UPDATE", "PUT":
		return http.MethodPut, true
	case "PATCH":
		return http.MethodPatch, true
	case "DELETE":
		return http.MethodDelete, true
	}
	return "", false
}

// Target returns the HTTP method and the API path (with its query) r
// stands for; EINVALID for an unknown verb, a malformed resource or a body
// that is not JSON.
func (r *Request) Target() (string, string, error) {
	m, ok := method(r.Verb)
	if !ok {
		return "", "", forge.Errorf(forge.EINVALID, "verb %q: want GET, STORE, UPDATE or DELETE (or POST, PUT, PATCH)", clip(r.Verb))
	}
	p, err := APIPath(r.Resource)
	if err != nil {
		return "", "", err
	}
	if len(r.Body) > 0 && !json.Valid(r.Body) {
		return "", "", forge.Errorf(forge.EINVALID, "body is not JSON")
	}
	return m, p, nil
}

// APIPath maps a resource onto the REST API's path. Full paths
// (/api/v1/...) pass unchanged; a short path is the API path without
// /api/v1 (/repos/owner/repo/builds), and the seed's forms with the
// repository as a parameter are accepted too:
//
//	/builds?repo=owner/repo             /api/v1/repos/owner/repo/builds
//	/builds/7?repo=owner/repo           /api/v1/repos/owner/repo/builds/7
//	/builds/7/jobs/3/log?repo=o/r       /api/v1/repos/o/r/builds/7/jobs/3/log
//	/repos, /pools, /leases             /api/v1/repos, /api/v1/pools, ...
func APIPath(resource string) (string, error) {
	if resource == "" {
		return "", forge.Errorf(forge.EINVALID, "resource is empty: want a path like /repos or /builds?repo=owner/repo")
	}
	if !utf8.ValidString(resource) || strings.ContainsAny(resource, " \t\r\n\x00#") {
		return "", forge.Errorf(forge.EINVALID, "resource %q: want a path without spaces, control characters or #", clip(resource))
	}
	if !strings.HasPrefix(resource, "/") {
		resource = "/" + resource
	}
	u, err := url.Parse(resource)
	if err != nil || u.Scheme != "" || u.Host != "" || u.Opaque != "" {
		return "", forge.Errorf(forge.EINVALID, "resource %q is not a path", clip(resource))
	}
	p := u.EscapedPath()
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return "", forge.Errorf(forge.EINVALID, "resource %q: no . or .. segments", clip(resource))
		}
	}
	if p == "/api" || strings.HasPrefix(p, "/api/") {
		return resource, nil
	}
	q := u.Query()
	if repo := q.Get("repo"); repo != "" && (p == "/builds" || strings.HasPrefix(p, "/builds/")) {
		owner, name, ok := strings.Cut(repo, "/")
		if !ok || owner == "" || name == "" || strings.Contains(name, "/") {
			return "", forge.Errorf(forge.EINVALID, "repo=%q: want owner/repo", clip(repo))
		}
		q.Del("repo")
		p = "/repos/" + url.PathEscape(owner) + "/" + url.PathEscape(name) + p
		u.RawQuery = q.Encode()
	} else if p == "/builds" || strings.HasPrefix(p, "/builds/") {
		return "", forge.Errorf(forge.EINVALID, "resource %q: builds belong to a repository: add ?repo=owner/repo or write /repos/owner/repo%s", clip(resource), p)
	}
	out := "/api/v1" + strings.TrimSuffix(p, "/")
	if p == "/" {
		out = "/api/v1"
	}
	if u.RawQuery != "" {
		out += "?" + u.RawQuery
	}
	return out, nil
}

// ExitStatus is the exit status of an exec request answered with the HTTP
// status code: 0 for 2xx, so scripts can branch on it; otherwise a status
// per kind of failure (ssh itself exits 255 when it cannot connect):
//
//	2  the request was wrong (400, 405, 413, 415, 422)
//	3  refused: no right to do it (401, 403)
//	4  not found (404)
//	5  conflict with the current state (409, 412)
//	6  unavailable or timed out (503, 504, 408, 429)
//	1  anything else (500, 501, ...)
func ExitStatus(code int) int {
	switch {
	case code >= 200 && code < 300:
		return 0
	case code == 401 || code == 403:
		return 3
	case code == 404:
		return 4
	case code == 409 || code == 412:
		return 5
	case code == 408 || code == 429 || code == 503 || code == 504:
		return 6
	case code >= 400 && code < 500:
		return 2
	}
	return 1
}

// ParseCommand reads an exec request's command line, VERB RESOURCE
// [BODY]: the body is the rest of the line as it is (ssh joins the
// client's arguments with spaces, after the client's shell removed one
// level of quotes), or, wrapped whole in single quotes, what they enclose.
func ParseCommand(line string) (*Request, error) {
	line = strings.TrimSpace(line)
	verb, rest, _ := strings.Cut(line, " ")
	rest = strings.TrimSpace(rest)
	resource, body, _ := strings.Cut(rest, " ")
	body = strings.TrimSpace(body)
	if resource == "" {
		return nil, forge.Errorf(forge.EINVALID, "%s needs a resource, e.g. %s /repos", clip(verb), clip(verb))
	}
	if len(body) >= 2 && body[0] == '\'' && body[len(body)-1] == '\'' {
		body = body[1 : len(body)-1]
	}
	r := &Request{Verb: verb, Resource: resource}
	if body != "" {
		r.Body = json.RawMessage(body)
	}
	if _, _, err := r.Target(); err != nil {
		return nil, err
	}
	return r, nil
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// splitCommand splits an exec request's command line into words: blanks
// separate them, and single or double quotes group (ssh joins the client's
// arguments with spaces, so a body with spaces needs quoting twice or
// standard input).
func splitCommand(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	in, quote := false, rune(0)
	for _, c := range s {
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else {
				cur.WriteRune(c)
			}
		case c == '\'' || c == '"':
			quote, in = c, true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(c)
			in = true
		}
	}
	if quote != 0 {
		return nil, forge.Errorf(forge.EINVALID, "unterminated %c quote in the command", quote)
	}
	if in {
		words = append(words, cur.String())
	}
	return words, nil
}
