package github

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/bradleyfalzon/ghinstallation/v2"
	gh "github.com/google/go-github/v76/github"

	"github.com/forgeci/forge"
)

// DefaultAPIURL is GitHub's API; GitHub Enterprise Server's is
// https://HOST/api/v3/.
const DefaultAPIURL = "https://api.github.com/"

// Auth says how forge authenticates to GitHub's API: as a GitHub App
// (AppID and the App's private key, PEM) or with a token (a personal or
// fine-grained access token). An App wins when both are given.
type Auth struct {
	// APIURL is the API's base URL; "" means DefaultAPIURL.
	APIURL string
	AppID  int64
	AppKey []byte
	Token  string
	// Timeout bounds one API request (default 30s).
	Timeout time.Duration
	// Transport carries the requests (default http.DefaultTransport).
	Transport http.RoundTripper
}

// Client gives go-github clients authenticated for a repository. With an
// App, each installation's token is fetched with a JWT signed by the App's
// key (ghinstallation), cached until shortly before it expires, and
// fetched again at once when GitHub answers 401 (a token revoked or
// expired early). It is safe for concurrent use.
type Client struct {
	auth Auth
	base *url.URL
	apps *ghinstallation.AppsTransport

	mu       sync.Mutex
	installs map[int64]*ghinstallation.Transport
	byRepo   map[string]int64 // owner/name → installation
}

// NewClient checks auth and returns a Client. EINVALID names what is wrong
// (a key that is not an RSA private key in PEM, a bad URL).
func NewClient(auth Auth) (*Client, error) {
	if auth.APIURL == "" {
		auth.APIURL = DefaultAPIURL
	}
	if !strings.HasSuffix(auth.APIURL, "/") {
		auth.APIURL += "/"
	}
	base, err := url.Parse(auth.APIURL)
	if err != nil || (base.Scheme != "https" && base.Scheme != "http") || base.Host == "" {
		return nil, forge.Errorf(forge.EINVALID, "github: API URL %q is not an http(s) URL", auth.APIURL)
	}
	if auth.Timeout <= 0 {
		auth.Timeout = 30 * time.Second
	}
	if auth.Transport == nil {
		// The outbox's workers talk to one host at once: keep a
		// connection for each (the default keeps two).
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 64
		auth.Transport = t
	}
	c := &Client{auth: auth, base: base, installs: map[int64]*ghinstallation.Transport{}, byRepo: map[string]int64{}}
	if auth.AppID != 0 || len(auth.AppKey) > 0 {
		if auth.AppID <= 0 || len(auth.AppKey) == 0 {
			return nil, forge.Errorf(forge.EINVALID, "github: an App needs both its ID (FORGE_GITHUB_APP_ID) and its private key file (FORGE_GITHUB_APP_KEY)")
		}
		apps, err := ghinstallation.NewAppsTransport(auth.Transport, auth.AppID, auth.AppKey)
		if err != nil {
			return nil, forge.Errorf(forge.EINVALID, "github: the App's private key: %v (want the PEM file GitHub gave for the App)", err)
		}
		apps.BaseURL = strings.TrimSuffix(auth.APIURL, "/")
		c.apps = apps
	}
	return c, nil
}

// Mode says how the client authenticates: "app", "token", or "" (it
// cannot: nothing is reported).
func (c *Client) Mode() string {
	switch {
	case c == nil:
		return ""
	case c.apps != nil:
		return "app"
	case c.auth.Token != "":
		return "token"
	}
	return ""
}

// newGitHub returns a go-github client on rt at the API URL.
func (c *Client) newGitHub(rt http.RoundTripper) *gh.Client {
	g := gh.NewClient(&http.Client{Transport: rt, Timeout: c.auth.Timeout})
	g.BaseURL = c.base
	g.UploadURL = c.base
	return g
}

// App returns a client authenticated as the App itself (a JWT), for the
// /app endpoints. EINVALID without an App.
func (c *Client) App() (*gh.Client, error) {
	if c.apps == nil {
		return nil, forge.Errorf(forge.EINVALID, "github: no GitHub App configured")
	}
	return c.newGitHub(c.apps), nil
}

// For returns a client for repository owner/name: the installation's
// (installation, when not 0, is the one a webhook named; otherwise it is
// looked up once and remembered), or the token's.
func (c *Client) For(ctx context.Context, owner, name string, installation int64) (*gh.Client, error) {
	switch c.Mode() {
	case "token":
		return c.newGitHub(c.auth.Transport).WithAuthToken(c.auth.Token), nil
	case "":
		return nil, forge.Errorf(forge.EINVALID, "github: no App or token configured")
	}
	id, err := c.installation(ctx, owner, name, installation)
	if err != nil {
		return nil, err
	}
	return c.newGitHub(&refreshing{c: c, id: id}), nil
}

// Token returns a token that reads repository owner/name (to fetch its
// code): an installation token, or the configured token. "" without
// either.
func (c *Client) Token(ctx context.Context, owner, name string) (string, error) {
	switch c.Mode() {
	case "token":
		return c.auth.Token, nil
	case "":
		return "", nil
	}
	id, err := c.installation(ctx, owner, name, 0)
	if err != nil {
		return "", err
	}
	return c.transport(id).Token(ctx)
}

// installation returns the installation ID for owner/name.
func (c *Client) installation(ctx context.Context, owner, name string, known int64) (int64, error) {
	key := strings.ToLower(owner + "/" + name)
	c.mu.Lock()
	if known != 0 {
		c.byRepo[key] = known
	}
	id, ok := c.byRepo[key]
	c.mu.Unlock()
	if ok {
		return id, nil
	}
	app, _ := c.App()
	inst, _, err := app.Apps.FindRepositoryInstallation(ctx, owner, name)
	if err != nil {
		return 0, classify(err, fmt.Sprintf("find the App's installation on %s/%s (is the App installed there?)", owner, name))
	}
	c.mu.Lock()
	c.byRepo[key] = inst.GetID()
	c.mu.Unlock()
	return inst.GetID(), nil
}

// transport returns installation id's token transport, made on first use.
func (c *Client) transport(id int64) *ghinstallation.Transport {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.installs[id]
	if t == nil {
		t = ghinstallation.NewFromAppsTransport(c.apps, id)
		t.BaseURL = c.apps.BaseURL
		c.installs[id] = t
	}
	return t
}

// forget drops installation id's cached token, unless it was replaced
// already (t is the transport that got the 401).
func (c *Client) forget(id int64, t *ghinstallation.Transport) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.installs[id] == t {
		delete(c.installs, id)
	}
}

// refreshing authenticates as installation id, and on a 401 drops the
// cached token and tries once more with a new one.
type refreshing struct {
	c  *Client
	id int64
}

func (r *refreshing) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		body = b
	}
	send := func() (*http.Response, *ghinstallation.Transport, error) {
		t := r.c.transport(r.id)
		cl := req.Clone(req.Context())
		if body != nil {
			cl.Body = io.NopCloser(bytes.NewReader(body))
			cl.ContentLength = int64(len(body))
		}
		resp, err := t.RoundTrip(cl)
		return resp, t, err
	}
	resp, t, err := send()
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	r.c.forget(r.id, t)
	resp, _, err = send()
	return resp, err
}

// CanWrite reports whether user may write to repository owner/name
// (permission admin, maintain or write).
func (c *Client) CanWrite(ctx context.Context, owner, name string, installation int64, user string) (bool, error) {
	g, err := c.For(ctx, owner, name, installation)
	if err != nil {
		return false, err
	}
	lvl, _, err := g.Repositories.GetPermissionLevel(ctx, owner, name, user)
	if err != nil {
		return false, classify(err, fmt.Sprintf("permission of %s on %s/%s", user, owner, name))
	}
	switch lvl.GetPermission() {
	case "admin", "maintain", "write":
		return true, nil
	}
	return false, nil
}
