package leasehttp

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/forgeci/forge"
	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/prometheus"
)

func metricValue(t *testing.T, e *testEnv, name string, labels map[string]string) *prometheus.Sample {
	t.Helper()
	families, err := e.reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.Metric {
			for _, lp := range m.Label {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue next
				}
			}
			return m
		}
	}
	t.Fatalf("no metric %s%v", name, labels)
	return nil
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	a, b := e.dial(), e.dial()
	a.acquire("a", req("one", 1))
	ga := a.expect(wire.TypeGranted)
	b.acquire("b", req("one", 1))
	b.expect(wire.TypeQueued)
	one := map[string]string{"pool": "one"}
	for _, tc := range []struct {
		name string
		want float64
	}{
		{"forge_lease_pool_resources", 1},
		{"forge_lease_pool_in_use", 1},
		{"forge_lease_pool_waiters", 1},
		{"forge_lease_grants_total", 1},
	} {
		m := metricValue(t, e, tc.name, one)
		got := m.GetGauge().GetValue() + m.GetCounter().GetValue()
		if got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	if got := metricValue(t, e, "forge_lease_pool_resources", map[string]string{"pool": "ports"}).GetGauge().GetValue(); got != 10 {
		t.Errorf("ports size: got %v, want 10", got)
	}
	if got := metricValue(t, e, "forge_lease_connections", nil).GetGauge().GetValue(); got != 2 {
		t.Errorf("connections: got %v, want 2", got)
	}
	a.release(ga.Lease)
	b.expect(wire.TypeGranted)
	b.ws.CloseNow()
	<-b.done
	// The disconnect is seen by the server shortly after.
	for i := 0; i < 200; i++ {
		if metricValue(t, e, "forge_lease_releases_total", map[string]string{"pool": "one", "reason": lease.ReasonDisconnected}).GetCounter().GetValue() == 1 {
			break
		}
		waitABit()
	}
	for _, tc := range []struct {
		reason string
		want   float64
	}{{lease.ReasonReleased, 1}, {lease.ReasonDisconnected, 1}, {lease.ReasonRevoked, 0}} {
		got := metricValue(t, e, "forge_lease_releases_total", map[string]string{"pool": "one", "reason": tc.reason}).GetCounter().GetValue()
		if got != tc.want {
			t.Errorf("releases %s: got %v, want %v", tc.reason, got, tc.want)
		}
	}
	h := metricValue(t, e, "forge_lease_wait_seconds", one).GetHistogram()
	if h.GetSampleCount() != 2 || h.GetSampleSum() <= 0 {
		t.Errorf("wait histogram: got count %d sum %v, want 2 grants with some wait", h.GetSampleCount(), h.GetSampleSum())
	}
}

func TestLeasesAndHistory(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{HistorySize: 3})
	c := e.dial()
	var leases []string
	for i := 0; i < 3; i++ {
		c.acquire(string(rune('a'+i)), req("ports", 1))
		leases = append(leases, c.expect(wire.TypeGranted).Lease)
	}
	var ls leasesResponse
	if code := e.rest("GET", "/api/v1/leases", "", &ls); code != http.StatusOK || len(ls.Leases) != 3 {
		t.Fatalf("leases: got %d %+v, want 3", code, ls)
	}
	for i, l := range ls.Leases {
		if l.ID != leases[i] || l.Connection != c.conn || l.Resources["ports"][0] == "" {
			t.Errorf("lease %d: got %+v, want %s of %s, oldest first", i, l, leases[i], c.conn)
		}
	}
	c.release(leases[0])
	var h historyResponse
	e.rest("GET", "/api/v1/leases/history", "", &h)
	// A ring of 3: the newest three of four events, newest first.
	if len(h.History) != 3 || h.History[0].Event != "released" || h.History[0].Lease != leases[0] || h.History[0].Reason != lease.ReasonReleased ||
		h.History[1].Lease != leases[2] || h.History[2].Lease != leases[1] {
		t.Fatalf("history: got %+v", h.History)
	}
	e.rest("GET", "/api/v1/leases/history?limit=1", "", &h)
	if len(h.History) != 1 {
		t.Fatalf("limit=1: got %d entries", len(h.History))
	}
	var apiErr apiError
	if code := e.rest("GET", "/api/v1/leases/history?limit=x", "", &apiErr); code != http.StatusBadRequest || apiErr.Code != "invalid" {
		t.Fatalf("bad limit: got %d %+v", code, apiErr)
	}
}

func TestUnknownRoutesAnswerJSON(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/api/v1/pools/dut/nothing", http.StatusNotFound, "not_found"},
		{"POST", "/api/v1/pools", http.StatusMethodNotAllowed, "invalid"},
		{"PATCH", "/api/v1/leases/L1", http.StatusMethodNotAllowed, "invalid"},
	} {
		var apiErr apiError
		if got := e.rest(tc.method, tc.path, "", &apiErr); got != tc.status || apiErr.Code != tc.code || apiErr.Message == "" {
			t.Errorf("%s %s: got %d %+v, want %d with code %s", tc.method, tc.path, got, apiErr, tc.status, tc.code)
		}
	}
}

// TestWriteErrorOption: a server embedding the handler answers its REST
// errors with its own writer, so /api/v1 maps codes in one place.
func TestWriteErrorOption(t *testing.T) {
	m, err := lease.NewMemory(nil, lease.MemoryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var got error
	s := NewServer(m, Options{WriteError: func(w http.ResponseWriter, _ *http.Request, err error) {
		got = err
		w.WriteHeader(http.StatusTeapot)
	}})
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/pools/nope", nil))
	if rec.Code != http.StatusTeapot || forge.ErrorCode(got) != forge.ENOTFOUND {
		t.Fatalf("got status %d and error %v, want the injected writer called with a not_found error", rec.Code, got)
	}
}

// TestRESTPoolMaxGrace: a pool's max_grace goes in through PUT and comes
// back in GET, in the same form; a bad one is refused naming it.
func TestRESTPoolMaxGrace(t *testing.T) {
	e := newEnv(t, dutConfig, Options{}, lease.MemoryOptions{})
	var p lease.PoolState
	if code := e.rest("PUT", "/api/v1/pools/lab", `{"range":"1-2","max_grace":"90s"}`, &p); code != http.StatusCreated || p.MaxGrace != "1m30s" {
		t.Fatalf("PUT: got %d %+v, want 201 with max_grace 1m30s", code, p)
	}
	if code := e.rest("GET", "/api/v1/pools/lab", "", &p); code != http.StatusOK || p.MaxGrace != "1m30s" {
		t.Fatalf("GET: got %d %+v, want max_grace 1m30s", code, p)
	}
	var apiErr struct{ Code, Message string }
	if code := e.rest("PUT", "/api/v1/pools/lab", `{"range":"1-2","max_grace":"later"}`, &apiErr); code != http.StatusBadRequest || !strings.Contains(apiErr.Message, "max_grace") {
		t.Fatalf("PUT with a bad max_grace: got %d %+v, want 400 naming max_grace", code, apiErr)
	}
}
