package http_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	httpapi "github.com/forgeci/forge/internal/http"
)

// TestSessionCookie: the web pages' session cookie reads the API with
// private reads, never changes anything (that needs a bearer token or a
// page's form with its CSRF token), and an unknown session is a 401.
func TestSessionCookie(t *testing.T) {
	f := newFixture(t, func(o *httpapi.Options) {
		o.PrivateReads = true
		o.UI = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "page "+r.URL.Path) })
	})
	call := func(method, path, cookie string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, f.srv.URL+path, nil)
		if cookie != "" {
			req.AddCookie(&http.Cookie{Name: httpapi.SessionCookie, Value: cookie})
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, c := range []struct {
		method, path, cookie string
		want                 int
	}{
		{"GET", "/api/v1/repos/acme/app/builds", "", 401},
		{"GET", "/api/v1/repos/acme/app/builds", f.user, 200},
		{"HEAD", "/api/v1/repos/acme/app", f.user, 200},
		{"GET", "/api/v1/repos/acme/app/builds", "not-a-token", 401},
		{"POST", "/api/v1/repos/acme/app/builds/2/cancel", f.admin, 401},
		{"GET", "/api/v1/pools", f.user, 200},
	} {
		if got, body := call(c.method, c.path, c.cookie); got != c.want {
			t.Errorf("%s %s with cookie %q: %d %s, want %d", c.method, c.path, c.cookie, got, body, c.want)
		}
	}
	// Paths outside /api/ go to the pages; unknown API paths stay JSON 404s.
	if st, body := call("GET", "/acme/app/builds/1", ""); st != 200 || body != "page /acme/app/builds/1" {
		t.Errorf("page path: %d %q", st, body)
	}
	if st, body := call("GET", "/api/v1/nothing", ""); st != 404 || !strings.Contains(body, `"code"`) {
		t.Errorf("unknown API path: %d %q, want a JSON 404", st, body)
	}
	if st, _ := call("GET", "/healthz", ""); st != 200 {
		t.Errorf("/healthz: %d", st)
	}
}
