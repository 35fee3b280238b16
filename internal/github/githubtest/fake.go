// Package githubtest is a fake GitHub REST API for forge's tests. It
// checks every request against the shape GitHub documents for its
// endpoint (method, path, required fields, allowed values, the
// authentication header, at most 50 annotations per check run request)
// and fails the test on anything else. It authenticates a GitHub App the
// way GitHub does (a JWT signed with the App's private key, verified with
// its public key, exchanged for installation tokens that expire) or a
// personal token, records what forge reported, and can fail on purpose:
// 5xx answers, primary and secondary rate limits, requests that hang.
//
// It is test code: it lives in a package of its own only so that the
// tests of several packages (internal/github, cmd/forge) share it.
package githubtest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Status is a commit status as received.
type Status struct {
	SHA         string    `json:"sha"`
	State       string    `json:"state"`
	Context     string    `json:"context"`
	Description string    `json:"description"`
	TargetURL   string    `json:"target_url"`
	At          time.Time `json:"-"`
}

// Annotation is a check run annotation as received.
type Annotation struct {
	Path      string `json:"path"`
	StartLine int    `json:"start_line"`
	EndLine   int    `json:"end_line"`
	Level     string `json:"annotation_level"`
	Message   string `json:"message"`
	Title     string `json:"title"`
}

// CheckRun is a check run with every state it was given.
type CheckRun struct {
	ID          int64
	SHA         string
	Name        string
	ExternalID  string
	DetailsURL  string
	Status      string
	Conclusion  string
	Title       string
	Summary     string
	Text        string
	History     []string // "queued", "in_progress", "completed/failure", in order
	Annotations []Annotation
	// Batches are the sizes of the annotation batches received.
	Batches []int
}

// Pull is a pull request forge opened.
type Pull struct {
	Number int
	Title  string
	Head   string
	Base   string
	Body   string
	State  string
	Edits  int
}

// Deployment is a deployment with its statuses.
type Deployment struct {
	ID          int64
	Ref         string
	Environment string
	States      []string
}

// Comment is a comment forge made on an issue or pull request.
type Comment struct {
	Number int
	Body   string
}

// Fault is what the fake does to a request instead of answering it.
type Fault int

// The faults.
const (
	NoFault            Fault = iota
	ServerError              // 502 Bad Gateway
	SecondaryRateLimit       // 403 with Retry-After: 1 and GitHub's secondary rate limit message
	PrimaryRateLimit         // 403 with X-RateLimit-Remaining: 0 and a reset a second away
	Hang                     // no answer until the client gives up
)

// Fake is a fake GitHub API server.
type Fake struct {
	URL          string
	AppID        int64
	Installation int64
	// Token is the personal token the fake accepts.
	Token string
	// TokenTTL is how long installation tokens live (default an hour).
	TokenTTL time.Duration

	t   testing.TB
	srv *httptest.Server
	key *rsa.PrivateKey

	mu          sync.Mutex
	changed     *sync.Cond
	statuses    []Status
	checkRuns   []*CheckRun
	comments    []Comment
	pulls       []*Pull
	deployments []*Deployment
	tokens      map[string]time.Time // installation token → expiry
	issued      int
	protection  map[string][]string // branch → required contexts
	contents    map[string]string   // path@ref → file
	perms       map[string]string   // user → permission
	defBranch   string
	fault       func(r *http.Request) Fault
	done        chan struct{} // closed by Close
	requests    int
	faults      int
	closed      bool
}

// New starts a fake GitHub for t, closed when t ends. Its App has a new
// RSA key (KeyPEM).
func New(t testing.TB) *Fake {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	f := &Fake{
		AppID: 4242, Installation: 777, Token: "ghp_faketoken0123456789", TokenTTL: time.Hour,
		t: t, key: key, tokens: map[string]time.Time{}, protection: map[string][]string{},
		contents: map[string]string{}, perms: map[string]string{}, defBranch: "master",
		done: make(chan struct{}),
	}
	f.changed = sync.NewCond(&f.mu)
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	f.URL = f.srv.URL + "/"
	t.Cleanup(f.Close)
	return f
}

// Close stops the server; requests hanging on purpose return.
func (f *Fake) Close() {
	f.mu.Lock()
	if !f.closed {
		close(f.done)
	}
	f.closed = true
	f.changed.Broadcast()
	f.mu.Unlock()
	f.srv.CloseClientConnections()
	f.srv.Close()
}

// KeyPEM is the App's private key, as GitHub gives it for download.
func (f *Fake) KeyPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(f.key)})
}

// SetFault makes fn decide, for each request, whether it fails; nil
// stops failing.
func (f *Fake) SetFault(fn func(r *http.Request) Fault) {
	f.mu.Lock()
	f.fault = fn
	f.mu.Unlock()
}

// FailHalf fails every other request with fault (the first one fails).
func FailHalf(fault Fault) func(*http.Request) Fault {
	var mu sync.Mutex
	n := 0
	return func(*http.Request) Fault {
		mu.Lock()
		defer mu.Unlock()
		n++
		if n%2 == 1 {
			return fault
		}
		return NoFault
	}
}

// SetFile serves content as path at ref (GET contents).
func (f *Fake) SetFile(path, ref, content string) {
	f.mu.Lock()
	f.contents[path+"@"+ref] = content
	f.mu.Unlock()
}

// SetPermission sets user's permission on every repository (admin,
// write, read, none).
func (f *Fake) SetPermission(user, perm string) {
	f.mu.Lock()
	f.perms[user] = perm
	f.mu.Unlock()
}

// SetDefaultBranch sets the repositories' default branch.
func (f *Fake) SetDefaultBranch(b string) {
	f.mu.Lock()
	f.defBranch = b
	f.mu.Unlock()
}

// ExpireTokens makes every installation token issued so far expire now:
// the next request with one gets 401.
func (f *Fake) ExpireTokens() {
	f.mu.Lock()
	for tok := range f.tokens {
		f.tokens[tok] = time.Now().Add(-time.Second)
	}
	f.mu.Unlock()
}

// Wait waits until cond holds (checked with the fake's state locked,
// after every request) or within passes, and fails the test then.
func (f *Fake) Wait(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	timer := time.AfterFunc(within, func() { f.mu.Lock(); f.changed.Broadcast(); f.mu.Unlock() })
	defer timer.Stop()
	f.mu.Lock()
	for !cond() {
		if time.Now().After(deadline) || f.closed {
			dump := f.Dump()
			f.mu.Unlock()
			t.Fatalf("fake GitHub: %s: not within %v\n%s", what, within, dump)
			return
		}
		f.changed.Wait()
	}
	f.mu.Unlock()
}

// Statuses returns the statuses received for sha, in order ("" for all).
// Call it with the fake unlocked, or inside a Wait condition.
func (f *Fake) statusesLocked(sha string) []Status {
	var out []Status
	for _, s := range f.statuses {
		if sha == "" || s.SHA == sha {
			out = append(out, s)
		}
	}
	return out
}

// Statuses returns the statuses received for sha ("" for all), in order.
func (f *Fake) Statuses(sha string) []Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.statusesLocked(sha)
}

// StatusesLocked is Statuses for use inside a Wait condition.
func (f *Fake) StatusesLocked(sha string) []Status { return f.statusesLocked(sha) }

// StatusCountLocked is how many statuses arrived, for use inside a Wait
// condition (it costs nothing, unlike StatusesLocked).
func (f *Fake) StatusCountLocked() int { return len(f.statuses) }

// Latest returns the last status of each context for sha.
func (f *Fake) Latest(sha string) map[string]Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.LatestLocked(sha)
}

// LatestLocked is Latest for use inside a Wait condition.
func (f *Fake) LatestLocked(sha string) map[string]Status {
	out := map[string]Status{}
	for _, s := range f.statusesLocked(sha) {
		out[s.Context] = s
	}
	return out
}

// CheckRuns returns copies of the check runs of sha ("" for all).
func (f *Fake) CheckRuns(sha string) []CheckRun {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.CheckRunsLocked(sha)
}

// CheckRunsLocked is CheckRuns for use inside a Wait condition.
func (f *Fake) CheckRunsLocked(sha string) []CheckRun {
	var out []CheckRun
	for _, c := range f.checkRuns {
		if sha == "" || c.SHA == sha {
			cc := *c
			cc.History = slices.Clone(c.History)
			cc.Annotations = slices.Clone(c.Annotations)
			out = append(out, cc)
		}
	}
	return out
}

// Pulls returns copies of the pull requests forge opened.
func (f *Fake) Pulls() []Pull {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.PullsLocked()
}

// PullsLocked is Pulls for use inside a Wait condition.
func (f *Fake) PullsLocked() []Pull {
	var out []Pull
	for _, p := range f.pulls {
		out = append(out, *p)
	}
	return out
}

// Deployments returns copies of the deployments.
func (f *Fake) Deployments() []Deployment {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.DeploymentsLocked()
}

// DeploymentsLocked is Deployments for use inside a Wait condition.
func (f *Fake) DeploymentsLocked() []Deployment {
	var out []Deployment
	for _, d := range f.deployments {
		dd := *d
		dd.States = slices.Clone(d.States)
		out = append(out, dd)
	}
	return out
}

// Comments returns the comments forge made.
func (f *Fake) Comments() []Comment {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.comments)
}

// CommentsLocked is Comments for use inside a Wait condition.
func (f *Fake) CommentsLocked() []Comment { return slices.Clone(f.comments) }

// Protection returns the required status contexts of branch, and
// whether it is protected.
func (f *Fake) Protection(branch string) ([]string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.protection[branch]
	return slices.Clone(c), ok
}

// TokensIssued counts the installation tokens handed out.
func (f *Fake) TokensIssued() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.issued
}

// Requests counts the requests received, and those failed on purpose.
func (f *Fake) Requests() (total, faulted int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests, f.faults
}

// Dump describes what the fake recorded, for failure messages. The
// caller holds the lock or calls it when nothing else runs.
func (f *Fake) Dump() string {
	var b strings.Builder
	fmt.Fprintf(&b, "statuses (%d):\n", len(f.statuses))
	for _, s := range f.statuses {
		fmt.Fprintf(&b, "  %.7s %-28s %-8s %q %s\n", s.SHA, s.Context, s.State, s.Description, s.TargetURL)
	}
	fmt.Fprintf(&b, "check runs (%d):\n", len(f.checkRuns))
	for _, c := range f.checkRuns {
		fmt.Fprintf(&b, "  %d %.7s %-28s %v %q annotations %d in batches %v\n", c.ID, c.SHA, c.Name, c.History, c.Title, len(c.Annotations), c.Batches)
	}
	for _, p := range f.pulls {
		fmt.Fprintf(&b, "pull #%d %s → %s %s %q\n", p.Number, p.Head, p.Base, p.State, p.Body)
	}
	for _, d := range f.deployments {
		fmt.Fprintf(&b, "deployment %d %s %s %v\n", d.ID, d.Ref, d.Environment, d.States)
	}
	for _, c := range f.comments {
		fmt.Fprintf(&b, "comment on #%d: %q\n", c.Number, c.Body)
	}
	return b.String()
}

// violation fails the test and answers 422 like GitHub's validation.
func (f *Fake) violation(w http.ResponseWriter, r *http.Request, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	f.t.Errorf("fake GitHub: %s %s: %s", r.Method, r.URL.Path, msg)
	writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"message": "Validation Failed: " + msg, "documentation_url": "https://docs.github.com/rest"})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

var (
	reStatus      = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)/statuses/([^/]+)$`)
	reCheckRuns   = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)/check-runs$`)
	reCheckRun    = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)/check-runs/(\d+)$`)
	reComments    = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)/issues/(\d+)/comments$`)
	rePulls       = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)/pulls$`)
	rePull        = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)/pulls/(\d+)$`)
	reDeployments = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)/deployments$`)
	reDepStatuses = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)/deployments/(\d+)/statuses$`)
	reInstall     = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)/installation$`)
	reTokens      = regexp.MustCompile(`^/app/installations/(\d+)/access_tokens$`)
	rePermission  = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)/collaborators/([^/]+)/permission$`)
	reContents    = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)/contents/(.+)$`)
	reProtection  = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)/branches/([^/]+)/protection$`)
	reRequired    = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)/branches/([^/]+)/protection/required_status_checks$`)
	reRepo        = regexp.MustCompile(`^/repos/([^/]+)/([^/]+)$`)
	reSHA         = regexp.MustCompile(`^[0-9a-f]{40}$`)
)

func (f *Fake) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests++
	fault := NoFault
	if f.fault != nil && !strings.HasPrefix(r.URL.Path, "/app/") {
		fault = f.fault(r)
	}
	if fault != NoFault {
		f.faults++
	}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.changed.Broadcast()
		f.mu.Unlock()
	}()
	switch fault {
	case ServerError:
		writeJSON(w, http.StatusBadGateway, map[string]any{"message": "Server Error"})
		return
	case SecondaryRateLimit:
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusForbidden, map[string]any{"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.", "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"})
		return
	case PrimaryRateLimit:
		w.Header().Set("X-RateLimit-Limit", "5000")
		w.Header().Set("X-RateLimit-Remaining", "0")
		w.Header().Set("X-RateLimit-Reset", strconv.FormatInt(time.Now().Add(time.Second).Unix()+1, 10))
		writeJSON(w, http.StatusForbidden, map[string]any{"message": "API rate limit exceeded for installation.", "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"})
		return
	case Hang:
		// With the body read, the server notices the client hanging up.
		io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-f.done:
		case <-time.After(time.Minute):
		}
		return
	}
	w.Header().Set("X-RateLimit-Limit", "5000")
	w.Header().Set("X-RateLimit-Remaining", "4999")
	w.Header().Set("X-RateLimit-Reset", strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10))
	p := r.URL.Path
	var body map[string]any
	if r.Method == "POST" || r.Method == "PATCH" || r.Method == "PUT" {
		data, err := io.ReadAll(r.Body)
		if t := strings.TrimSpace(string(data)); err == nil && (t == "" || t == "null" && reTokens.MatchString(p)) {
			// No body: every field left out. ghinstallation sends null
			// for a token without options, which GitHub takes.
			data = []byte("{}")
		}
		if err != nil || json.Unmarshal(data, &body) != nil || body == nil {
			f.violation(w, r, "the body is not a JSON object: %q", data)
			return
		}
	}
	switch {
	case reTokens.MatchString(p):
		f.accessToken(w, r, reTokens.FindStringSubmatch(p))
	case reInstall.MatchString(p):
		if r.Method != "GET" || !f.appAuth(w, r) {
			if r.Method != "GET" {
				f.violation(w, r, "method %s, want GET", r.Method)
			}
			return
		}
		writeJSON(w, 200, map[string]any{"id": f.Installation, "app_id": f.AppID})
	case reStatus.MatchString(p):
		f.status(w, r, reStatus.FindStringSubmatch(p), body)
	case reCheckRuns.MatchString(p):
		f.createCheckRun(w, r, body)
	case reCheckRun.MatchString(p):
		f.updateCheckRun(w, r, reCheckRun.FindStringSubmatch(p), body)
	case reComments.MatchString(p):
		f.comment(w, r, reComments.FindStringSubmatch(p), body)
	case rePulls.MatchString(p):
		f.pullsEndpoint(w, r, body)
	case rePull.MatchString(p):
		f.editPull(w, r, rePull.FindStringSubmatch(p), body)
	case reDeployments.MatchString(p):
		f.createDeployment(w, r, body)
	case reDepStatuses.MatchString(p):
		f.deploymentStatus(w, r, reDepStatuses.FindStringSubmatch(p), body)
	case rePermission.MatchString(p):
		f.permission(w, r, rePermission.FindStringSubmatch(p))
	case reContents.MatchString(p):
		f.content(w, r, reContents.FindStringSubmatch(p))
	case reRequired.MatchString(p):
		f.requiredChecks(w, r, reRequired.FindStringSubmatch(p), body)
	case reProtection.MatchString(p):
		f.protectionEndpoint(w, r, reProtection.FindStringSubmatch(p), body)
	case reRepo.MatchString(p):
		if r.Method != "GET" || !f.repoAuth(w, r, false) {
			if r.Method != "GET" {
				f.violation(w, r, "method %s, want GET", r.Method)
			}
			return
		}
		m := reRepo.FindStringSubmatch(p)
		f.mu.Lock()
		def := f.defBranch
		f.mu.Unlock()
		writeJSON(w, 200, map[string]any{"id": 1, "name": m[2], "full_name": m[1] + "/" + m[2], "default_branch": def, "owner": map[string]any{"login": m[1]}})
	default:
		f.t.Errorf("fake GitHub: unexpected request %s %s", r.Method, r.URL)
		writeJSON(w, 404, map[string]any{"message": "Not Found"})
	}
}

// appAuth checks a JWT signed by the App (RS256, iss the App's ID, iat
// in the past, exp in the future and at most 10 minutes after iat).
func (f *Fake) appAuth(w http.ResponseWriter, r *http.Request) bool {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		f.t.Errorf("fake GitHub: %s %s: Authorization %q, want Bearer JWT", r.Method, r.URL.Path, h)
		writeJSON(w, 401, map[string]any{"message": "A JSON web token could not be decoded"})
		return false
	}
	if err := f.verifyJWT(tok); err != nil {
		f.t.Errorf("fake GitHub: %s %s: JWT: %v", r.Method, r.URL.Path, err)
		writeJSON(w, 401, map[string]any{"message": "A JSON web token could not be decoded"})
		return false
	}
	return true
}

func (f *Fake) verifyJWT(tok string) error {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return fmt.Errorf("not three parts")
	}
	var header struct{ Alg, Typ string }
	if err := decodePart(parts[0], &header); err != nil {
		return fmt.Errorf("header: %v", err)
	}
	if header.Alg != "RS256" {
		return fmt.Errorf("alg %q, want RS256", header.Alg)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return fmt.Errorf("signature: %v", err)
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(&f.key.PublicKey, crypto.SHA256, sum[:], sig); err != nil {
		return fmt.Errorf("signature does not verify with the App's public key: %v", err)
	}
	var claims struct {
		Iss any   `json:"iss"`
		Iat int64 `json:"iat"`
		Exp int64 `json:"exp"`
	}
	if err := decodePart(parts[1], &claims); err != nil {
		return fmt.Errorf("claims: %v", err)
	}
	if fmt.Sprint(claims.Iss) != strconv.FormatInt(f.AppID, 10) {
		return fmt.Errorf("iss %v, want the App ID %d", claims.Iss, f.AppID)
	}
	now := time.Now().Unix()
	switch {
	case claims.Iat == 0 || claims.Iat > now+60:
		return fmt.Errorf("iat %d is not in the past", claims.Iat)
	case claims.Exp <= now:
		return fmt.Errorf("exp %d has passed", claims.Exp)
	case claims.Exp-claims.Iat > 600:
		return fmt.Errorf("exp is %ds after iat, GitHub allows 10 minutes", claims.Exp-claims.Iat)
	}
	return nil
}

func decodePart(s string, v any) error {
	data, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

func (f *Fake) accessToken(w http.ResponseWriter, r *http.Request, m []string) {
	if r.Method != "POST" {
		f.violation(w, r, "method %s, want POST", r.Method)
		return
	}
	if !f.appAuth(w, r) {
		return
	}
	if m[1] != strconv.FormatInt(f.Installation, 10) {
		writeJSON(w, 404, map[string]any{"message": "Not Found"})
		return
	}
	b := make([]byte, 12)
	rand.Read(b)
	tok := "ghs_" + hex.EncodeToString(b)
	exp := time.Now().Add(f.TokenTTL)
	f.mu.Lock()
	f.tokens[tok] = exp
	f.issued++
	f.mu.Unlock()
	writeJSON(w, 201, map[string]any{"token": tok, "expires_at": exp.UTC().Format(time.RFC3339), "permissions": map[string]string{"statuses": "write", "checks": "write"}})
}

// repoAuth checks an installation token (or, unless app is required, the
// personal token) in Authorization: "token X" or "Bearer X".
func (f *Fake) repoAuth(w http.ResponseWriter, r *http.Request, appOnly bool) bool {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "token ")
	if !ok {
		tok, ok = strings.CutPrefix(h, "Bearer ")
	}
	if !ok || tok == "" {
		f.t.Errorf("fake GitHub: %s %s: Authorization %q, want a token", r.Method, r.URL.Path, h)
		writeJSON(w, 401, map[string]any{"message": "Requires authentication"})
		return false
	}
	f.mu.Lock()
	exp, isInstall := f.tokens[tok]
	f.mu.Unlock()
	switch {
	case isInstall && time.Now().After(exp):
		// Not a test failure: forge must fetch a new token.
		writeJSON(w, 401, map[string]any{"message": "Bad credentials"})
		return false
	case isInstall:
		return true
	case tok == f.Token && appOnly:
		f.t.Errorf("fake GitHub: %s %s with a personal token: GitHub only lets Apps write check runs", r.Method, r.URL.Path)
		writeJSON(w, 403, map[string]any{"message": "Resource not accessible by personal access token"})
		return false
	case tok == f.Token:
		return true
	}
	f.t.Errorf("fake GitHub: %s %s: unknown token", r.Method, r.URL.Path)
	writeJSON(w, 401, map[string]any{"message": "Bad credentials"})
	return false
}

// check helpers: each reports a violation and returns false.

func str(body map[string]any, k string) (string, bool) {
	v, ok := body[k]
	if !ok || v == nil {
		return "", false
	}
	s, isStr := v.(string)
	return s, isStr
}

func (f *Fake) required(w http.ResponseWriter, r *http.Request, body map[string]any, keys ...string) bool {
	for _, k := range keys {
		if s, ok := str(body, k); !ok || s == "" {
			f.violation(w, r, "%q is required (a non-empty string), got %v", k, body[k])
			return false
		}
	}
	return true
}

func (f *Fake) oneOf(w http.ResponseWriter, r *http.Request, body map[string]any, k string, allowed ...string) bool {
	v, present := body[k]
	if !present || v == nil {
		return true
	}
	s, ok := v.(string)
	if !ok || !slices.Contains(allowed, s) {
		f.violation(w, r, "%q is %v, want one of %v", k, v, allowed)
		return false
	}
	return true
}

func (f *Fake) onlyKeys(w http.ResponseWriter, r *http.Request, body map[string]any, keys ...string) bool {
	for k := range body {
		if !slices.Contains(keys, k) {
			f.violation(w, r, "unknown field %q", k)
			return false
		}
	}
	return true
}

func (f *Fake) method(w http.ResponseWriter, r *http.Request, want ...string) bool {
	if !slices.Contains(want, r.Method) {
		f.violation(w, r, "method %s, want %v", r.Method, want)
		return false
	}
	return true
}

func (f *Fake) status(w http.ResponseWriter, r *http.Request, m []string, body map[string]any) {
	if !f.method(w, r, "POST") || !f.repoAuth(w, r, false) {
		return
	}
	if !reSHA.MatchString(m[3]) {
		f.violation(w, r, "sha %q is not a commit id", m[3])
		return
	}
	if !f.onlyKeys(w, r, body, "state", "target_url", "description", "context") || !f.required(w, r, body, "state") ||
		!f.oneOf(w, r, body, "state", "error", "failure", "pending", "success") {
		return
	}
	s := Status{SHA: m[3], At: time.Now()}
	s.State, _ = str(body, "state")
	s.Context, _ = str(body, "context")
	s.Description, _ = str(body, "description")
	s.TargetURL, _ = str(body, "target_url")
	if n := len([]rune(s.Description)); n > 140 {
		f.violation(w, r, "description is %d characters, GitHub takes 140", n)
		return
	}
	if s.TargetURL != "" {
		if u, err := url.Parse(s.TargetURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") {
			f.violation(w, r, "target_url %q is not an http(s) URL", s.TargetURL)
			return
		}
	}
	if s.Context == "" {
		s.Context = "default"
	}
	f.mu.Lock()
	f.statuses = append(f.statuses, s)
	id := len(f.statuses)
	f.mu.Unlock()
	writeJSON(w, 201, map[string]any{"id": id, "state": s.State, "context": s.Context, "description": s.Description, "target_url": s.TargetURL})
}

var conclusions = []string{"action_required", "cancelled", "failure", "neutral", "success", "skipped", "stale", "timed_out"}

// checkOutput validates a check run's output and returns its annotations.
func (f *Fake) checkOutput(w http.ResponseWriter, r *http.Request, body map[string]any) ([]Annotation, bool) {
	out, present := body["output"]
	if !present || out == nil {
		return nil, true
	}
	o, ok := out.(map[string]any)
	if !ok {
		f.violation(w, r, "output is not an object")
		return nil, false
	}
	if !f.required(w, r, o, "title", "summary") || !f.onlyKeys(w, r, o, "title", "summary", "text", "annotations", "images") {
		return nil, false
	}
	raw, _ := o["annotations"].([]any)
	if len(raw) > 50 {
		f.violation(w, r, "%d annotations in one request; GitHub takes at most 50", len(raw))
		return nil, false
	}
	var anns []Annotation
	for i, a := range raw {
		am, ok := a.(map[string]any)
		if !ok || !f.required(w, r, am, "path", "annotation_level", "message") || !f.oneOf(w, r, am, "annotation_level", "notice", "warning", "failure") {
			if !ok {
				f.violation(w, r, "annotation %d is not an object", i)
			}
			return nil, false
		}
		sl, ok1 := am["start_line"].(float64)
		el, ok2 := am["end_line"].(float64)
		if !ok1 || !ok2 || sl < 1 || el < sl {
			f.violation(w, r, "annotation %d: start_line %v and end_line %v must be lines, start ≤ end", i, am["start_line"], am["end_line"])
			return nil, false
		}
		var an Annotation
		an.Path, _ = str(am, "path")
		an.Level, _ = str(am, "annotation_level")
		an.Message, _ = str(am, "message")
		an.Title, _ = str(am, "title")
		an.StartLine, an.EndLine = int(sl), int(el)
		anns = append(anns, an)
	}
	return anns, true
}

func (f *Fake) checkRunFields(w http.ResponseWriter, r *http.Request, body map[string]any) bool {
	if !f.onlyKeys(w, r, body, "name", "head_sha", "details_url", "external_id", "status", "conclusion", "started_at", "completed_at", "output", "actions") ||
		!f.oneOf(w, r, body, "status", "queued", "in_progress", "completed") || !f.oneOf(w, r, body, "conclusion", conclusions...) {
		return false
	}
	status, _ := str(body, "status")
	_, hasConclusion := str(body, "conclusion")
	if (status == "completed" || body["completed_at"] != nil) && !hasConclusion {
		f.violation(w, r, "a completed check run needs a conclusion")
		return false
	}
	if hasConclusion && status != "" && status != "completed" {
		f.violation(w, r, "a conclusion with status %q", status)
		return false
	}
	for _, k := range []string{"started_at", "completed_at"} {
		if s, ok := str(body, k); ok {
			if _, err := time.Parse(time.RFC3339, s); err != nil {
				f.violation(w, r, "%s %q is not an ISO 8601 time", k, s)
				return false
			}
		}
	}
	return true
}

func (f *Fake) createCheckRun(w http.ResponseWriter, r *http.Request, body map[string]any) {
	if !f.method(w, r, "POST") || !f.repoAuth(w, r, true) || !f.required(w, r, body, "name", "head_sha") || !f.checkRunFields(w, r, body) {
		return
	}
	anns, ok := f.checkOutput(w, r, body)
	if !ok {
		return
	}
	c := &CheckRun{}
	c.Name, _ = str(body, "name")
	c.SHA, _ = str(body, "head_sha")
	c.ExternalID, _ = str(body, "external_id")
	c.DetailsURL, _ = str(body, "details_url")
	if !reSHA.MatchString(c.SHA) {
		f.violation(w, r, "head_sha %q is not a commit id", c.SHA)
		return
	}
	f.mu.Lock()
	c.ID = int64(1000 + len(f.checkRuns))
	f.checkRuns = append(f.checkRuns, c)
	f.applyCheck(c, body, anns)
	f.mu.Unlock()
	writeJSON(w, 201, map[string]any{"id": c.ID, "name": c.Name, "head_sha": c.SHA, "status": c.Status})
}

// applyCheck records body's changes to c; the caller holds mu.
func (f *Fake) applyCheck(c *CheckRun, body map[string]any, anns []Annotation) {
	status, _ := str(body, "status")
	if status == "" && c.Status == "" {
		status = "queued"
	}
	if status != "" {
		c.Status = status
	}
	if s, ok := str(body, "conclusion"); ok {
		c.Conclusion = s
		c.Status = "completed"
	}
	h := c.Status
	if c.Status == "completed" {
		h += "/" + c.Conclusion
	}
	if len(c.History) == 0 || c.History[len(c.History)-1] != h {
		c.History = append(c.History, h)
	}
	if o, ok := body["output"].(map[string]any); ok {
		c.Title, _ = str(o, "title")
		c.Summary, _ = str(o, "summary")
		if t, ok := str(o, "text"); ok {
			c.Text = t
		}
	}
	if len(anns) > 0 {
		c.Annotations = append(c.Annotations, anns...)
		c.Batches = append(c.Batches, len(anns))
	}
}

func (f *Fake) updateCheckRun(w http.ResponseWriter, r *http.Request, m []string, body map[string]any) {
	if !f.method(w, r, "PATCH") || !f.repoAuth(w, r, true) || !f.checkRunFields(w, r, body) {
		return
	}
	anns, ok := f.checkOutput(w, r, body)
	if !ok {
		return
	}
	id, _ := strconv.ParseInt(m[3], 10, 64)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.checkRuns {
		if c.ID == id {
			if c.Status == "completed" {
				if s, _ := str(body, "status"); s != "" && s != "completed" {
					f.t.Errorf("fake GitHub: check run %d (%s) went from completed back to %s", id, c.Name, s)
				}
			}
			f.applyCheck(c, body, anns)
			writeJSON(w, 200, map[string]any{"id": c.ID, "name": c.Name, "status": c.Status})
			return
		}
	}
	f.mu.Unlock()
	f.violation(w, r, "no check run %d", id)
	f.mu.Lock()
}

func (f *Fake) comment(w http.ResponseWriter, r *http.Request, m []string, body map[string]any) {
	if !f.method(w, r, "POST") || !f.repoAuth(w, r, false) || !f.onlyKeys(w, r, body, "body") || !f.required(w, r, body, "body") {
		return
	}
	n, _ := strconv.Atoi(m[3])
	text, _ := str(body, "body")
	f.mu.Lock()
	f.comments = append(f.comments, Comment{Number: n, Body: text})
	id := len(f.comments)
	f.mu.Unlock()
	writeJSON(w, 201, map[string]any{"id": id, "body": text})
}

func pullJSON(p *Pull, owner string) map[string]any {
	return map[string]any{"number": p.Number, "title": p.Title, "body": p.Body, "state": p.State,
		"head": map[string]any{"ref": p.Head, "label": owner + ":" + p.Head}, "base": map[string]any{"ref": p.Base}}
}

func (f *Fake) pullsEndpoint(w http.ResponseWriter, r *http.Request, body map[string]any) {
	if !f.method(w, r, "GET", "POST") || !f.repoAuth(w, r, false) {
		return
	}
	owner := rePulls.FindStringSubmatch(r.URL.Path)[1]
	if r.Method == "GET" {
		q := r.URL.Query()
		state := q.Get("state")
		if state != "" && state != "open" && state != "closed" && state != "all" {
			f.violation(w, r, "state %q, want open, closed or all", state)
			return
		}
		head := q.Get("head")
		if head != "" && !strings.Contains(head, ":") {
			f.violation(w, r, "head %q, want user:ref-name", head)
			return
		}
		f.mu.Lock()
		var out []map[string]any
		for _, p := range f.pulls {
			if (state == "" || state == "open") && p.State != "open" || state == "closed" && p.State != "closed" {
				continue
			}
			if head != "" && head != owner+":"+p.Head || q.Get("base") != "" && q.Get("base") != p.Base {
				continue
			}
			out = append(out, pullJSON(p, owner))
		}
		f.mu.Unlock()
		if out == nil {
			out = []map[string]any{}
		}
		writeJSON(w, 200, out)
		return
	}
	if !f.onlyKeys(w, r, body, "title", "head", "head_repo", "base", "body", "maintainer_can_modify", "draft", "issue") ||
		!f.required(w, r, body, "head", "base", "title") {
		return
	}
	p := &Pull{State: "open"}
	p.Title, _ = str(body, "title")
	p.Head, _ = str(body, "head")
	p.Base, _ = str(body, "base")
	p.Body, _ = str(body, "body")
	f.mu.Lock()
	for _, o := range f.pulls {
		if o.State == "open" && o.Head == p.Head && o.Base == p.Base {
			f.mu.Unlock()
			f.violation(w, r, "a pull request already exists for %s:%s", owner, p.Head)
			return
		}
	}
	p.Number = 100 + len(f.pulls)
	f.pulls = append(f.pulls, p)
	f.mu.Unlock()
	writeJSON(w, 201, pullJSON(p, owner))
}

func (f *Fake) editPull(w http.ResponseWriter, r *http.Request, m []string, body map[string]any) {
	if !f.method(w, r, "PATCH") || !f.repoAuth(w, r, false) || !f.onlyKeys(w, r, body, "title", "body", "state", "base", "maintainer_can_modify") ||
		!f.oneOf(w, r, body, "state", "open", "closed") {
		return
	}
	n, _ := strconv.Atoi(m[3])
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.pulls {
		if p.Number == n {
			if s, ok := str(body, "body"); ok {
				p.Body = s
			}
			if s, ok := str(body, "title"); ok {
				p.Title = s
			}
			if s, ok := str(body, "state"); ok {
				p.State = s
			}
			p.Edits++
			writeJSON(w, 200, pullJSON(p, m[1]))
			return
		}
	}
	f.mu.Unlock()
	f.violation(w, r, "no pull request #%d", n)
	f.mu.Lock()
}

// MergePull marks pull request n merged (closed), as a test does after
// forge opened it.
func (f *Fake) MergePull(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.pulls {
		if p.Number == n {
			p.State = "closed"
		}
	}
}

func (f *Fake) createDeployment(w http.ResponseWriter, r *http.Request, body map[string]any) {
	if !f.method(w, r, "POST") || !f.repoAuth(w, r, false) ||
		!f.onlyKeys(w, r, body, "ref", "task", "auto_merge", "required_contexts", "payload", "environment", "description", "transient_environment", "production_environment") ||
		!f.required(w, r, body, "ref") {
		return
	}
	if rc, ok := body["required_contexts"]; ok {
		if _, isList := rc.([]any); !isList {
			f.violation(w, r, "required_contexts is %v, want a list", rc)
			return
		}
	}
	d := &Deployment{}
	d.Ref, _ = str(body, "ref")
	d.Environment, _ = str(body, "environment")
	if d.Environment == "" {
		d.Environment = "production"
	}
	f.mu.Lock()
	d.ID = int64(500 + len(f.deployments))
	f.deployments = append(f.deployments, d)
	f.mu.Unlock()
	writeJSON(w, 201, map[string]any{"id": d.ID, "ref": d.Ref, "environment": d.Environment})
}

func (f *Fake) deploymentStatus(w http.ResponseWriter, r *http.Request, m []string, body map[string]any) {
	if !f.method(w, r, "POST") || !f.repoAuth(w, r, false) ||
		!f.onlyKeys(w, r, body, "state", "target_url", "log_url", "description", "environment", "environment_url", "auto_inactive") ||
		!f.required(w, r, body, "state") ||
		!f.oneOf(w, r, body, "state", "error", "failure", "inactive", "in_progress", "queued", "pending", "success") {
		return
	}
	if d, _ := str(body, "description"); len([]rune(d)) > 140 {
		f.violation(w, r, "description longer than 140 characters")
		return
	}
	id, _ := strconv.ParseInt(m[3], 10, 64)
	state, _ := str(body, "state")
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range f.deployments {
		if d.ID == id {
			d.States = append(d.States, state)
			writeJSON(w, 201, map[string]any{"id": len(d.States), "state": state})
			return
		}
	}
	f.mu.Unlock()
	f.violation(w, r, "no deployment %d", id)
	f.mu.Lock()
}

func (f *Fake) permission(w http.ResponseWriter, r *http.Request, m []string) {
	if !f.method(w, r, "GET") || !f.repoAuth(w, r, false) {
		return
	}
	f.mu.Lock()
	perm := f.perms[m[3]]
	f.mu.Unlock()
	if perm == "" {
		perm = "read"
	}
	writeJSON(w, 200, map[string]any{"permission": perm, "user": map[string]any{"login": m[3]}})
}

func (f *Fake) content(w http.ResponseWriter, r *http.Request, m []string) {
	if !f.method(w, r, "GET") || !f.repoAuth(w, r, false) {
		return
	}
	ref := r.URL.Query().Get("ref")
	f.mu.Lock()
	c, ok := f.contents[m[3]+"@"+ref]
	f.mu.Unlock()
	if !ok {
		writeJSON(w, 404, map[string]any{"message": "Not Found"})
		return
	}
	writeJSON(w, 200, map[string]any{"type": "file", "encoding": "base64", "name": m[3], "path": m[3],
		"content": base64.StdEncoding.EncodeToString([]byte(c)), "size": len(c)})
}

func contexts(v any) ([]string, bool) {
	list, ok := v.([]any)
	if !ok {
		return nil, false
	}
	out := []string{}
	for _, x := range list {
		s, ok := x.(string)
		if !ok {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

func (f *Fake) protectionEndpoint(w http.ResponseWriter, r *http.Request, m []string, body map[string]any) {
	if !f.method(w, r, "GET", "PUT") || !f.repoAuth(w, r, false) {
		return
	}
	branch := m[3]
	if r.Method == "GET" {
		f.mu.Lock()
		c, ok := f.protection[branch]
		f.mu.Unlock()
		if !ok {
			writeJSON(w, 404, map[string]any{"message": "Branch not protected"})
			return
		}
		writeJSON(w, 200, map[string]any{"required_status_checks": map[string]any{"strict": true, "contexts": c}})
		return
	}
	for _, k := range []string{"required_status_checks", "enforce_admins", "required_pull_request_reviews", "restrictions"} {
		if _, ok := body[k]; !ok {
			f.violation(w, r, "%q is required (it may be null)", k)
			return
		}
	}
	var cs []string
	if rsc, ok := body["required_status_checks"].(map[string]any); ok {
		if _, ok := rsc["strict"].(bool); !ok {
			f.violation(w, r, "required_status_checks.strict is required (a boolean)")
			return
		}
		if cs, ok = contexts(rsc["contexts"]); !ok {
			f.violation(w, r, "required_status_checks.contexts is required (a list of strings)")
			return
		}
	}
	f.mu.Lock()
	f.protection[branch] = cs
	f.mu.Unlock()
	writeJSON(w, 200, map[string]any{"url": r.URL.String()})
}

func (f *Fake) requiredChecks(w http.ResponseWriter, r *http.Request, m []string, body map[string]any) {
	if !f.method(w, r, "PATCH") || !f.repoAuth(w, r, false) || !f.onlyKeys(w, r, body, "strict", "contexts", "checks") {
		return
	}
	f.mu.Lock()
	_, ok := f.protection[m[3]]
	f.mu.Unlock()
	if !ok {
		writeJSON(w, 404, map[string]any{"message": "Branch not protected"})
		return
	}
	cs, ok := contexts(body["contexts"])
	if !ok {
		f.violation(w, r, "contexts must be a list of strings")
		return
	}
	f.mu.Lock()
	f.protection[m[3]] = cs
	f.mu.Unlock()
	writeJSON(w, 200, map[string]any{"strict": body["strict"], "contexts": cs})
}

// Protect marks branch protected with contexts (a test's setup).
func (f *Fake) Protect(branch string, contexts ...string) {
	f.mu.Lock()
	f.protection[branch] = contexts
	f.mu.Unlock()
}
