package http_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/github"
	"github.com/forgeci/forge/internal/github/githubtest"
	forgehttp "github.com/forgeci/forge/internal/http"
	"github.com/forgeci/forge/internal/prometheus"
	"github.com/forgeci/forge/internal/sqldb"
)

const secret = "It's a Secret to Everybody"

// memDeliveries is an in-memory forge.DeliveryStore with the documented
// ECONFLICT on a stored id; err, when set, fails every call.
type memDeliveries struct {
	mu    sync.Mutex
	byID  map[string]*forge.Delivery
	order []string
	calls int
	err   error
}

func newMemDeliveries() *memDeliveries { return &memDeliveries{byID: map[string]*forge.Delivery{}} }

func (m *memDeliveries) CreateDelivery(_ context.Context, d *forge.Delivery) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls++
	if m.err != nil {
		return m.err
	}
	if _, ok := m.byID[d.ID]; ok {
		return forge.Errorf(forge.ECONFLICT, "delivery %s exists", d.ID)
	}
	c := *d
	m.byID[d.ID] = &c
	m.order = append(m.order, d.ID)
	return nil
}

func (m *memDeliveries) PendingDeliveries(_ context.Context, limit int) ([]*forge.Delivery, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*forge.Delivery
	for _, id := range m.order {
		if d := m.byID[id]; d.Processed.IsZero() && len(out) < limit {
			out = append(out, d)
		}
	}
	return out, nil
}

func (m *memDeliveries) FinishDelivery(_ context.Context, id, result string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.byID[id]
	if !ok {
		return forge.Errorf(forge.ENOTFOUND, "no delivery %s", id)
	}
	d.Result = result
	return nil
}

func (m *memDeliveries) get(id string) *forge.Delivery {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.byID[id]
}

func (m *memDeliveries) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.byID)
}

func sign(key string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(key))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// hookRequest builds a signed delivery as GitHub sends it.
func hookRequest(event, id, contentType string, body []byte) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/hooks/github", bytes.NewReader(body))
	r.Header.Set("Content-Type", contentType)
	r.Header.Set("X-GitHub-Event", event)
	r.Header.Set("X-GitHub-Delivery", id)
	r.Header.Set("X-Hub-Signature-256", sign(secret, body))
	r.Header.Set("User-Agent", "GitHub-Hookshot/test")
	return r
}

type hookEnv struct {
	store    *memDeliveries
	handler  http.HandlerFunc
	notified int
	reg      *prometheus.Registry
}

func newHookEnv(t *testing.T, change func(o *forgehttp.HookOptions)) *hookEnv {
	t.Helper()
	e := &hookEnv{store: newMemDeliveries(), reg: prometheus.NewRegistry()}
	opts := forgehttp.HookOptions{
		Secret:   secret,
		Validate: github.Validate,
		Notify:   func() { e.notified++ },
		Metrics:  e.reg,
	}
	if change != nil {
		change(&opts)
	}
	e.handler = forgehttp.GitHubHook(e.store, opts)
	return e
}

// serve runs one request and returns the status and decoded JSON answer.
func (e *hookEnv) serve(t *testing.T, r *http.Request) (int, map[string]string) {
	t.Helper()
	w := httptest.NewRecorder()
	e.handler(w, r)
	var body map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("answer %d is not JSON: %q", w.Code, w.Body.String())
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	return w.Code, body
}

func (e *hookEnv) metric(event, result string) float64 {
	mfs, _ := e.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "forge_webhooks_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["event"] == event && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestHookFixtures sends every shared fixture through the handler, as JSON
// and as a form, and checks what was stored and how it was answered; then
// parses the stored payload, as the processor will.
func TestHookFixtures(t *testing.T) {
	wantAction := map[string]string{
		"check_suite.rerequested": "rerequested", "installation.created": "created", "issue_comment.created": "created",
		"pull_request.closed": "closed", "pull_request.labeled": "labeled", "pull_request.opened": "opened",
		"pull_request.reopened": "reopened", "pull_request.synchronize": "synchronize",
	}
	for _, file := range githubtest.Names() {
		body := githubtest.Payload(t, file)
		name := strings.TrimSuffix(file, ".payload.json")
		event := githubtest.Event(file)
		for _, form := range []bool{false, true} {
			t.Run(name+map[bool]string{false: "/json", true: "/form"}[form], func(t *testing.T) {
				e := newHookEnv(t, nil)
				ct, raw := "application/json", body
				if form {
					ct, raw = "application/x-www-form-urlencoded", []byte(url.Values{"payload": {string(body)}}.Encode())
				}
				code, answer := e.serve(t, hookRequest(event, "id-"+name, ct, raw))
				if event == "ping" {
					if code != http.StatusOK || answer["message"] != "pong" {
						t.Fatalf("ping answered %d %v, want 200 pong", code, answer)
					}
					if e.store.count() != 0 || e.notified != 0 {
						t.Errorf("ping stored %d deliveries and notified %d times, want none", e.store.count(), e.notified)
					}
					return
				}
				if code != http.StatusAccepted || answer["message"] != "accepted" || answer["delivery"] != "id-"+name {
					t.Fatalf("answered %d %v, want 202 accepted", code, answer)
				}
				d := e.store.get("id-" + name)
				if d == nil {
					t.Fatal("delivery not stored")
				}
				if d.Event != event || d.Action != wantAction[name] || !bytes.Equal(d.Payload, body) || d.Received.IsZero() {
					t.Errorf("stored %q %q received %v payload equal %v; want %q %q, the fixture's bytes",
						d.Event, d.Action, d.Received, bytes.Equal(d.Payload, body), event, wantAction[name])
				}
				if e.notified != 1 {
					t.Errorf("notified %d times, want 1", e.notified)
				}
				if got := e.metric(event, "accepted"); got != 1 {
					t.Errorf("forge_webhooks_total{event=%q,result=accepted} = %v, want 1", event, got)
				}
				// What the processor will do with the stored delivery.
				hook, ignored, err := github.ParseHook(d.Event, d.Payload)
				if err != nil || (hook == nil) == (ignored == "") {
					t.Errorf("ParseHook of stored payload = %v, %q, %v", hook, ignored, err)
				}
			})
		}
	}
}

func TestHookRefusals(t *testing.T) {
	opened := githubtest.Payload(t, "pull_request.opened.payload.json")
	truncated := opened[:len(opened)/2]
	tests := []struct {
		name    string
		opts    func(o *forgehttp.HookOptions)
		request func() *http.Request
		code    int
		result  string
		message string
	}{
		{"no secret configured", func(o *forgehttp.HookOptions) { o.Secret = "" },
			func() *http.Request { return hookRequest("push", "d1", "application/json", opened) },
			503, "no_secret", "no webhook secret is configured: set github.webhook_secret in the configuration file, or FORGE_GITHUB_WEBHOOK_SECRET, to the secret of the GitHub webhook (forge refuses unsigned webhooks)"},
		{"missing signature", nil, func() *http.Request {
			r := hookRequest("pull_request", "d1", "application/json", opened)
			r.Header.Del("X-Hub-Signature-256")
			return r
		}, 401, "unauthorized", "missing X-Hub-Signature-256 header: the webhook must be signed with its secret"},
		{"wrong secret", nil, func() *http.Request {
			r := hookRequest("pull_request", "d1", "application/json", opened)
			r.Header.Set("X-Hub-Signature-256", sign("another secret", opened))
			return r
		}, 401, "unauthorized", "signature does not match: check the webhook secret"},
		{"body changed after signing", nil, func() *http.Request {
			r := hookRequest("pull_request", "d1", "application/json", opened)
			r.Body = io.NopCloser(bytes.NewReader(append([]byte(" "), opened...)))
			r.ContentLength++
			return r
		}, 401, "unauthorized", "signature does not match: check the webhook secret"},
		{"sha1 signature only", nil, func() *http.Request {
			r := hookRequest("pull_request", "d1", "application/json", opened)
			r.Header.Set("X-Hub-Signature-256", "sha1=0123")
			return r
		}, 401, "unauthorized", "X-Hub-Signature-256 must be sha256=<hex digest>"},
		{"signature not hex", nil, func() *http.Request {
			r := hookRequest("pull_request", "d1", "application/json", opened)
			r.Header.Set("X-Hub-Signature-256", "sha256=zz")
			return r
		}, 401, "unauthorized", "X-Hub-Signature-256 must be sha256=<hex digest>"},
		{"declared too large", func(o *forgehttp.HookOptions) { o.MaxBody = 1000 },
			func() *http.Request { return hookRequest("pull_request", "d1", "application/json", opened) },
			413, "too_large", "body of 28011 bytes is over the limit of 1000 bytes"},
		{"streamed too large", func(o *forgehttp.HookOptions) { o.MaxBody = 1000 },
			func() *http.Request {
				r := hookRequest("pull_request", "d1", "application/json", opened)
				r.ContentLength = -1 // chunked: the size is found while reading
				return r
			}, 413, "too_large", "body is over the limit of 1000 bytes"},
		{"no event header", nil, func() *http.Request {
			r := hookRequest("pull_request", "d1", "application/json", opened)
			r.Header.Del("X-GitHub-Event")
			return r
		}, 400, "bad_request", "headers X-GitHub-Event and X-GitHub-Delivery are required"},
		{"no delivery header", nil, func() *http.Request {
			r := hookRequest("pull_request", "d1", "application/json", opened)
			r.Header.Del("X-GitHub-Delivery")
			return r
		}, 400, "bad_request", "headers X-GitHub-Event and X-GitHub-Delivery are required"},
		{"delivery id with spaces", nil, func() *http.Request { return hookRequest("pull_request", "a b", "application/json", opened) },
			400, "bad_request", "X-GitHub-Delivery must be at most 200 printable ASCII characters"},
		{"text/plain", nil, func() *http.Request { return hookRequest("pull_request", "d1", "text/plain", opened) },
			415, "unsupported_media_type", `content type "text/plain" is not supported: configure the webhook with application/json or application/x-www-form-urlencoded`},
		{"no content type", nil, func() *http.Request { return hookRequest("pull_request", "d1", "", opened) },
			415, "unsupported_media_type", `content type "" is not supported: configure the webhook with application/json or application/x-www-form-urlencoded`},
		{"truncated JSON", nil, func() *http.Request { return hookRequest("pull_request", "d1", "application/json", truncated) },
			400, "bad_request", "payload is not a JSON object"},
		{"JSON array", nil, func() *http.Request {
			return hookRequest("push", "d1", "application/json; charset=utf-8", []byte(`[{}]`))
		},
			400, "bad_request", "payload is not a JSON object"},
		{"form without payload", nil, func() *http.Request {
			return hookRequest("pull_request", "d1", "application/x-www-form-urlencoded", []byte("data=%7B%7D"))
		}, 400, "bad_request", "form body must have exactly one payload field"},
		{"form with truncated payload", nil, func() *http.Request {
			return hookRequest("pull_request", "d1", "application/x-www-form-urlencoded", []byte(url.Values{"payload": {string(truncated)}}.Encode()))
		}, 400, "bad_request", "payload is not a JSON object"},
		{"not what the event promises", nil, func() *http.Request {
			return hookRequest("pull_request", "d1", "application/json", []byte(`{"action":"opened"}`))
		}, 400, "bad_request", "pull_request payload has no repository"},
		{"GET", nil, func() *http.Request {
			r := hookRequest("pull_request", "d1", "application/json", opened)
			r.Method = http.MethodGet
			return r
		}, 405, "bad_request", "webhooks are POSTed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newHookEnv(t, tt.opts)
			r := tt.request()
			code, answer := e.serve(t, r)
			if code != tt.code || answer["message"] != tt.message {
				t.Errorf("answered %d %q\nwant     %d %q", code, answer["message"], tt.code, tt.message)
			}
			if answer["code"] == "" {
				t.Errorf("answer %v has no code", answer)
			}
			if e.store.calls != 0 || e.notified != 0 {
				t.Errorf("store called %d times, notified %d times; want neither", e.store.calls, e.notified)
			}
			label := r.Header.Get("X-GitHub-Event")
			if label == "" {
				label = "other"
			}
			if got := e.metric(label, tt.result); got != 1 {
				t.Errorf("forge_webhooks_total{event=%q,result=%q} = %v, want 1", label, tt.result, got)
			}
		})
	}
}

func TestHookRedelivery(t *testing.T) {
	e := newHookEnv(t, nil)
	body := []byte(`{"action":"starred","repository":{"full_name":"a/b"}}`)
	for i, want := range []string{"accepted", "duplicate delivery, ignored", "duplicate delivery, ignored"} {
		code, answer := e.serve(t, hookRequest("star", "same-id", "application/json", body))
		if code != http.StatusAccepted || answer["message"] != want {
			t.Errorf("delivery %d answered %d %q, want 202 %q", i+1, code, answer["message"], want)
		}
	}
	if e.store.count() != 1 || e.notified != 1 {
		t.Errorf("stored %d, notified %d; want 1 and 1", e.store.count(), e.notified)
	}
	if d := e.store.get("same-id"); d == nil || d.Event != "star" || d.Action != "starred" {
		t.Errorf("unknown event stored as %+v, want event star action starred", d)
	}
	if a, b := e.metric("other", "accepted"), e.metric("other", "duplicate"); a != 1 || b != 2 {
		t.Errorf("metrics accepted %v duplicate %v, want 1 and 2", a, b)
	}
}

func TestHookStoreDown(t *testing.T) {
	e := newHookEnv(t, nil)
	e.store.err = forge.Errorf(forge.EUNAVAILABLE, "database is down")
	body := githubtest.Payload(t, "push.with-new-branch.payload.json")
	code, answer := e.serve(t, hookRequest("push", "d1", "application/json", body))
	if code != http.StatusServiceUnavailable || answer["code"] != forge.EUNAVAILABLE {
		t.Errorf("answered %d %v, want 503 unavailable", code, answer)
	}
	if e.notified != 0 {
		t.Errorf("notified %d times, want 0", e.notified)
	}
}

// TestHookSharedRegistry: a second handler on the same registry counts
// into the same series instead of failing to register.
func TestHookSharedRegistry(t *testing.T) {
	e := &hookEnv{reg: prometheus.NewRegistry()}
	for range 2 {
		h := forgehttp.GitHubHook(newMemDeliveries(), forgehttp.HookOptions{Secret: secret, Metrics: e.reg})
		h(httptest.NewRecorder(), hookRequest("star", "x", "application/json", []byte(`{}`)))
	}
	if got := e.metric("other", "accepted"); got != 2 {
		t.Errorf("forge_webhooks_total{event=other,result=accepted} = %v, want 2", got)
	}
}

// FuzzHookBody sends signed bodies of any content type: the handler must
// never fail with 5xx, and whatever it stores is a JSON object.
func FuzzHookBody(f *testing.F) {
	opened := githubtest.Payload(f, "pull_request.opened.payload.json")
	f.Add("application/json", "pull_request", opened)
	f.Add("application/x-www-form-urlencoded", "push", []byte(url.Values{"payload": {`{"ref":"x"}`}}.Encode()))
	f.Add("application/x-www-form-urlencoded; charset=utf-8", "star", []byte("payload=%7B%7D&payload=%7B%7D"))
	f.Add("application/json; charset=", "ping", []byte(` {"zen":1}`))
	f.Add("multipart/form-data; boundary=x", "push", []byte("--x--"))
	f.Add("application/x-www-form-urlencoded", "push", []byte("payload=%zz"))
	f.Fuzz(func(t *testing.T, contentType, event string, body []byte) {
		store := newMemDeliveries()
		h := forgehttp.GitHubHook(store, forgehttp.HookOptions{Secret: secret, Validate: github.Validate, MaxBody: 1 << 20})
		r := hookRequest("push", "fuzz", "application/json", body)
		r.Header.Set("Content-Type", contentType)
		r.Header.Set("X-GitHub-Event", event)
		w := httptest.NewRecorder()
		h(w, r)
		switch w.Code {
		case 200, 202, 400, 413, 415:
		default:
			t.Fatalf("status %d: %s", w.Code, w.Body.String())
		}
		if d := store.get("fuzz"); d != nil {
			if w.Code != 202 {
				t.Fatalf("stored a delivery but answered %d", w.Code)
			}
			var v map[string]any
			if err := json.Unmarshal(d.Payload, &v); err != nil {
				t.Fatalf("stored payload is not a JSON object: %v", err)
			}
		} else if w.Code == 202 && event != "" {
			t.Fatalf("answered 202 without storing")
		}
	})
}

// BenchmarkHookAck measures webhook acknowledgement while signed
// deliveries arrive at 200 per second (open loop: each is sent at its
// time whatever the answers before it), over loopback HTTP to the handler
// with a real SQLite store, and a stand-in processor marking deliveries
// done as they come (its writes compete with the handler's, as in the
// server). It reports the median and 99th percentile answer times.
//
//	go test -run='^$' -bench=HookAck -benchtime=2000x ./internal/http
//
// The memory variant runs the same load on an in-memory store: the
// difference between the two is the database's share.
func BenchmarkHookAck(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) {
		db, err := sqldb.Open(context.Background(), sqldb.Config{DataDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		if _, err := db.Migrate(context.Background(), "up"); err != nil {
			b.Fatal(err)
		}
		benchHookAck(b, db)
	})
	b.Run("memory", func(b *testing.B) { benchHookAck(b, newMemDeliveries()) })
}

func benchHookAck(b *testing.B, db forge.DeliveryStore) {
	const rate = 200 // deliveries per second
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wake := make(chan struct{}, 1)
	var processor sync.WaitGroup
	processor.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-wake:
			}
			pending, err := db.PendingDeliveries(ctx, 100)
			if err != nil {
				continue
			}
			for _, d := range pending {
				_ = db.FinishDelivery(ctx, d.ID, "ignored: benchmark")
			}
		}
	})
	defer processor.Wait()
	defer cancel()
	store := &timedStore{DeliveryStore: db}
	h := forgehttp.GitHubHook(store, forgehttp.HookOptions{
		Secret:   secret,
		Validate: github.Validate,
		Notify: func() {
			select {
			case wake <- struct{}{}:
			default:
			}
		},
		Metrics: prometheus.NewRegistry(),
	})
	srv := httptest.NewServer(h)
	defer srv.Close()
	body := githubtest.Payload(b, "pull_request.opened.payload.json")
	signature := sign(secret, body)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()

	lat := make([]time.Duration, b.N)
	var wg sync.WaitGroup
	var failed atomic.Int64
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / rate)))
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-GitHub-Event", "pull_request")
			req.Header.Set("X-GitHub-Delivery", fmt.Sprintf("bench-%d", i))
			req.Header.Set("X-Hub-Signature-256", signature)
			t0 := time.Now()
			resp, err := client.Do(req)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			lat[i] = time.Since(t0)
			if err != nil || resp.StatusCode != http.StatusAccepted {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d deliveries not answered 202", n, b.N)
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(float64(len(lat))*p))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	// How much of the answer time is the store's (one SQLite transaction
	// with synchronous=FULL per delivery).
	slices.Sort(store.lat)
	b.ReportMetric(float64(store.lat[len(store.lat)*99/100].Microseconds())/1000, "store-p99-ms")
	b.ReportMetric(0, "ns/op") // the time per op is the arrival rate, not a result
}

// timedStore measures CreateDelivery.
type timedStore struct {
	forge.DeliveryStore
	mu  sync.Mutex
	lat []time.Duration
}

func (s *timedStore) CreateDelivery(ctx context.Context, d *forge.Delivery) error {
	t0 := time.Now()
	err := s.DeliveryStore.CreateDelivery(ctx, d)
	s.mu.Lock()
	s.lat = append(s.lat, time.Since(t0))
	s.mu.Unlock()
	return err
}

// batchDeliveries adds CreateDeliveries to memDeliveries; each batch
// takes delay, as a disk flush would.
type batchDeliveries struct {
	*memDeliveries
	delay   time.Duration
	batches atomic.Int32
	largest atomic.Int32
}

func (b *batchDeliveries) CreateDeliveries(ctx context.Context, ds []*forge.Delivery) []error {
	b.batches.Add(1)
	if n := int32(len(ds)); n > b.largest.Load() {
		b.largest.Store(n)
	}
	time.Sleep(b.delay)
	errs := make([]error, len(ds))
	for i, d := range ds {
		errs[i] = b.memDeliveries.CreateDelivery(ctx, d)
	}
	return errs
}

// TestHookGroupCommit: deliveries arriving while a commit is in flight are
// stored together, every one is answered with its own outcome, and a
// redelivery inside a batch is still a duplicate.
func TestHookGroupCommit(t *testing.T) {
	store := &batchDeliveries{memDeliveries: newMemDeliveries(), delay: 20 * time.Millisecond}
	var notified atomic.Int32
	h := forgehttp.GitHubHook(store, forgehttp.HookOptions{Secret: secret, Notify: func() { notified.Add(1) }})
	body := []byte(`{"action":"x"}`)
	const n = 60
	codes := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprint("d", i%50) // d0..d9 arrive twice
			w := httptest.NewRecorder()
			h(w, hookRequest("star", id, "application/json", body))
			var answer map[string]string
			_ = json.Unmarshal(w.Body.Bytes(), &answer)
			codes[i] = fmt.Sprint(w.Code, " ", answer["message"])
		})
	}
	wg.Wait()
	counts := map[string]int{}
	for _, c := range codes {
		counts[c]++
	}
	if counts["202 accepted"] != 50 || counts["202 duplicate delivery, ignored"] != 10 {
		t.Errorf("answers = %v, want 50 accepted and 10 duplicates", counts)
	}
	if store.count() != 50 || notified.Load() != 50 {
		t.Errorf("stored %d, notified %d; want 50 and 50", store.count(), notified.Load())
	}
	if b := store.batches.Load(); b >= n/2 || store.largest.Load() < 2 {
		t.Errorf("%d batches, largest %d, for %d concurrent deliveries: not grouped", b, store.largest.Load(), n)
	}

	// A failing batch fails each of its deliveries with 503.
	store.err = forge.Errorf(forge.EUNAVAILABLE, "disk full")
	w := httptest.NewRecorder()
	h(w, hookRequest("star", "late", "application/json", body))
	if w.Code != http.StatusServiceUnavailable {
		t.Errorf("failing batch answered %d, want 503", w.Code)
	}
}

// TestHookSQLite runs the handler on the real store: a delivery is stored
// byte for byte, and its redelivery is acknowledged and ignored.
func TestHookSQLite(t *testing.T) {
	ctx := context.Background()
	db, err := sqldb.Open(ctx, sqldb.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Migrate(ctx, "up"); err != nil {
		t.Fatal(err)
	}
	var notified atomic.Int32
	h := forgehttp.GitHubHook(db, forgehttp.HookOptions{Secret: secret, Validate: github.Validate, Notify: func() { notified.Add(1) }})
	srv := httptest.NewServer(h)
	defer srv.Close()
	body := githubtest.Payload(t, "pull_request.synchronize.payload.json")
	for i, want := range []string{"accepted", "duplicate delivery, ignored"} {
		r := hookRequest("pull_request", "72d3162e-cc78-11e3-81ab-4c9367dc0958", "application/json", body)
		req, _ := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(body))
		req.Header = r.Header
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var answer map[string]string
		_ = json.NewDecoder(resp.Body).Decode(&answer)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted || answer["message"] != want {
			t.Errorf("delivery %d answered %d %q, want 202 %q", i+1, resp.StatusCode, answer["message"], want)
		}
	}
	pending, err := db.PendingDeliveries(ctx, 10)
	if err != nil || len(pending) != 1 {
		t.Fatalf("pending = %d, %v; want 1", len(pending), err)
	}
	d := pending[0]
	if d.ID != "72d3162e-cc78-11e3-81ab-4c9367dc0958" || d.Event != "pull_request" || d.Action != "synchronize" || !bytes.Equal(d.Payload, body) {
		t.Errorf("stored %q %q %q, payload equal %v", d.ID, d.Event, d.Action, bytes.Equal(d.Payload, body))
	}
	if n := notified.Load(); n != 1 {
		t.Errorf("notified %d times, want 1", n)
	}
}
