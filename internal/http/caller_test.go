package http_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	httpapi "github.com/forgeci/forge/internal/http"
)

type callerKey struct{}

// TestCallerHook: a caller another transport authenticated (named in the
// request context) gets exactly its role's access, and the hook plays no
// part for HTTP clients, whatever headers they send.
func TestCallerHook(t *testing.T) {
	f := newFixture(t, func(o *httpapi.Options) {
		o.PrivateReads = true
		o.Caller = func(r *http.Request) (httpapi.Caller, bool) {
			c, ok := r.Context().Value(callerKey{}).(httpapi.Caller)
			return c, ok
		}
	})
	h := f.api.Handler()
	reader := httpapi.Caller{Name: "ssh user carol", ReadOnly: true}
	writer := httpapi.Caller{Name: "ssh user bot"}
	admin := httpapi.Caller{Name: "ssh user ops", Admin: true}
	build := fmt.Sprintf("/api/v1/repos/%s/builds/%d", f.repo.FullName(), f.queued.Number)
	tests := []struct {
		caller       *httpapi.Caller
		method, path string
		want         int
	}{
		{&reader, "GET", "/api/v1/repos", 200}, // private reads: the caller is known
		{&reader, "POST", build + "/cancel", 403},
		{&reader, "PUT", "/api/v1/pools/p", 403},
		{&writer, "PUT", "/api/v1/pools/p", 403},
		{&writer, "POST", build + "/cancel", 200},
		{&admin, "PUT", "/api/v1/pools/p", 200},
		{nil, "GET", "/api/v1/repos", 401}, // no caller, no token
	}
	for _, tt := range tests {
		ctx := context.Background()
		if tt.caller != nil {
			ctx = context.WithValue(ctx, callerKey{}, *tt.caller)
		}
		r := httptest.NewRequestWithContext(ctx, tt.method, tt.path, strings.NewReader("{}"))
		r.Header.Set("X-Forge-Caller", "ops") // headers name nobody
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tt.want {
			name := "no caller"
			if tt.caller != nil {
				name = tt.caller.Name
			}
			t.Errorf("%s %s as %s: %d %s, want %d", tt.method, tt.path, name, w.Code, w.Body, tt.want)
		}
	}
}
