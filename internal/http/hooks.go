package http

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/prometheus"
)

// DefaultMaxHookBody is the largest webhook body accepted unless
// HookOptions.MaxBody says otherwise: GitHub's own cap on payloads.
const DefaultMaxHookBody = 25 << 20

// hookStoreTimeout bounds storing a delivery. GitHub gives up on a
// delivery after 10 s; answering 503 before that lets the sender retry.
const hookStoreTimeout = 8 * time.Second

// HookOptions configures GitHubHook.
type HookOptions struct {
	// Secret is the webhook secret shared with GitHub. When it is empty
	// every delivery is refused with 503 unavailable and a message naming
	// the setting: forge never accepts unsigned webhooks, and the server
	// is up but not configured for them (GitHub shows the message in the
	// delivery's log).
	Secret string
	// MaxBody caps the request body in bytes; 0 means DefaultMaxHookBody.
	MaxBody int64
	// Validate, when set, checks a payload against what its event
	// promises (cmd/forge passes github.Validate); a non-nil error is
	// answered 400 with its message. Without it only "is a JSON object"
	// is checked.
	Validate func(event string, payload []byte) error
	// Notify is called, without blocking, after a delivery is stored, to
	// wake the processor (e.g. a send on a buffered channel of size 1
	// with a default case). May be nil.
	Notify func()
	// Logger receives one line per delivery; nil discards.
	Logger *slog.Logger
	// Metrics, when set, gets the counter forge_webhooks_total{event,result}.
	Metrics prometheus.Registerer
}

// Results counted in forge_webhooks_total and logged.
const (
	hookAccepted     = "accepted"
	hookDuplicate    = "duplicate"
	hookPing         = "ping"
	hookUnauthorized = "unauthorized"
	hookTooLarge     = "too_large"
	hookBadRequest   = "bad_request"
	hookBadMedia     = "unsupported_media_type"
	hookNoSecret     = "no_secret"
	hookError        = "error"
)

// knownHookEvents bounds the event label: the header is chosen by whoever
// sends the request.
var knownHookEvents = map[string]bool{
	"ping": true, "pull_request": true, "push": true, "create": true, "delete": true,
	"check_suite": true, "issue_comment": true, "installation": true,
}

// GitHubHook returns the handler of POST /hooks/github.
//
// In order: it refuses requests when no secret is configured (503); reads
// at most MaxBody bytes (413 beyond); checks X-Hub-Signature-256, an
// HMAC-SHA256 of the raw body, in constant time, before looking at the
// body (401 when missing or wrong); requires X-GitHub-Event and
// X-GitHub-Delivery (400); takes the JSON payload from an application/json
// body or the payload field of an application/x-www-form-urlencoded one
// (415 for other types, 400 when it is not a JSON object or Validate
// refuses it). A ping is answered 200 and not stored. Every other event,
// known or not, is stored with deliveries.CreateDelivery (or grouped with
// others arriving at the same time, when the store is a DeliveryBatcher)
// and answered 202;
// a delivery id stored before (a redelivery) is answered 202 "duplicate
// delivery, ignored" and nothing else happens. After storing, Notify
// wakes the processor, which does the slow work.
func GitHubHook(deliveries forge.DeliveryStore, opts HookOptions) http.HandlerFunc {
	maxBody := opts.MaxBody
	if maxBody <= 0 {
		maxBody = DefaultMaxHookBody
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	count := hookCounter(opts.Metrics)
	secret := []byte(opts.Secret)
	create := deliveries.CreateDelivery
	if b, ok := deliveries.(DeliveryBatcher); ok {
		create = (&groupCommit{store: b}).create
	}
	return func(w http.ResponseWriter, r *http.Request) {
		event := r.Header.Get("X-GitHub-Event")
		id := r.Header.Get("X-GitHub-Delivery")
		label := event
		if !knownHookEvents[label] {
			label = "other"
		}
		answer := func(status int, result, message string) {
			count(label, result)
			lvl := slog.LevelInfo
			if status >= 500 {
				lvl = slog.LevelError
			} else if status >= 400 {
				lvl = slog.LevelWarn
			}
			log.Log(r.Context(), lvl, "webhook", "event", event, "delivery", id, "status", status, "result", result, "message", message, "remote", r.RemoteAddr)
			writeHookJSON(w, status, message, id)
		}
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			answer(http.StatusMethodNotAllowed, hookBadRequest, "webhooks are POSTed")
			return
		}
		if len(secret) == 0 {
			answer(http.StatusServiceUnavailable, hookNoSecret, "no webhook secret is configured: set github.webhook_secret in the configuration file, or FORGE_GITHUB_WEBHOOK_SECRET, to the secret of the GitHub webhook (forge refuses unsigned webhooks)")
			return
		}
		if r.ContentLength > maxBody {
			answer(http.StatusRequestEntityTooLarge, hookTooLarge, fmt.Sprintf("body of %d bytes is over the limit of %d bytes", r.ContentLength, maxBody))
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				answer(http.StatusRequestEntityTooLarge, hookTooLarge, fmt.Sprintf("body is over the limit of %d bytes", maxBody))
				return
			}
			answer(http.StatusBadRequest, hookBadRequest, "could not read the body: "+err.Error())
			return
		}
		if msg := checkHookSignature(secret, r.Header.Get("X-Hub-Signature-256"), body); msg != "" {
			answer(http.StatusUnauthorized, hookUnauthorized, msg)
			return
		}
		if event == "" || id == "" {
			answer(http.StatusBadRequest, hookBadRequest, "headers X-GitHub-Event and X-GitHub-Delivery are required")
			return
		}
		if len(id) > 200 || strings.ContainsFunc(id, func(c rune) bool { return c < 0x21 || c > 0x7e }) {
			answer(http.StatusBadRequest, hookBadRequest, "X-GitHub-Delivery must be at most 200 printable ASCII characters")
			return
		}
		payload, status, msg := decodeHookBody(r.Header.Get("Content-Type"), body)
		if status != 0 {
			result := hookBadRequest
			if status == http.StatusUnsupportedMediaType {
				result = hookBadMedia
			}
			answer(status, result, msg)
			return
		}
		if opts.Validate != nil {
			if err := opts.Validate(event, payload); err != nil {
				answer(http.StatusBadRequest, hookBadRequest, forge.ErrorMessage(err))
				return
			}
		}
		if event == "ping" {
			answer(http.StatusOK, hookPing, "pong")
			return
		}
		d := &forge.Delivery{ID: id, Event: event, Action: hookAction(payload), Payload: payload, Received: time.Now().UTC()}
		// The store call must not be torn by a client that hangs up: a
		// half-stored delivery is worse than a late answer.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), hookStoreTimeout)
		err = create(ctx, d)
		cancel()
		switch {
		case forge.ErrorCode(err) == forge.ECONFLICT:
			answer(http.StatusAccepted, hookDuplicate, "duplicate delivery, ignored")
			return
		case err != nil:
			log.Error("webhook: store delivery", "delivery", id, "err", err)
			answer(http.StatusServiceUnavailable, hookError, "could not store the delivery; redeliver it later")
			return
		}
		answer(http.StatusAccepted, hookAccepted, "accepted")
		if opts.Notify != nil {
			opts.Notify()
		}
	}
}

// DeliveryBatcher is an optional ability of the forge.DeliveryStore given
// to GitHubHook, found by type assertion. CreateDeliveries stores ds in one
// transaction and returns one error per delivery: nil when it was stored,
// ECONFLICT when its id was stored before (also earlier in ds), and the
// transaction's error for every delivery when it failed as a whole.
//
// With it, deliveries that arrive while a commit is in flight are stored
// together by the next one (group commit): under a burst the store flushes
// to disk once per batch instead of once per delivery, which bounds the
// time to acknowledge a delivery by about two commits.
type DeliveryBatcher interface {
	CreateDeliveries(ctx context.Context, ds []*forge.Delivery) []error
}

// maxHookBatch bounds one group commit.
const maxHookBatch = 128

// groupCommit stores deliveries through a DeliveryBatcher, one batch at a
// time, without a goroutine of its own: the first caller to find no
// commit in flight leads one, storing every delivery waiting at that
// moment; when it is done it hands the lead to the first delivery that
// arrived meanwhile.
type groupCommit struct {
	store DeliveryBatcher
	mu    sync.Mutex
	queue []*hookWaiter
	busy  bool // a leader is committing
}

type hookWaiter struct {
	d    *forge.Delivery
	done chan error    // the delivery's outcome
	lead chan struct{} // this waiter leads the next batch
}

func (g *groupCommit) create(ctx context.Context, d *forge.Delivery) error {
	w := &hookWaiter{d: d, done: make(chan error, 1), lead: make(chan struct{}, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, w)
	if !g.busy {
		g.busy = true
		w.lead <- struct{}{}
	}
	g.mu.Unlock()
	for {
		select {
		case err := <-w.done:
			return err
		case <-w.lead:
			g.commit(ctx)
		}
	}
}

// commit stores the waiting deliveries (the leader's first among them),
// then passes the lead on or, with nobody waiting, ends the busy spell.
func (g *groupCommit) commit(ctx context.Context) {
	g.mu.Lock()
	n := min(len(g.queue), maxHookBatch)
	batch := slices.Clone(g.queue[:n])
	g.queue = slices.Delete(g.queue, 0, n)
	g.mu.Unlock()

	ds := make([]*forge.Delivery, len(batch))
	for i, w := range batch {
		ds[i] = w.d
	}
	errs := g.store.CreateDeliveries(ctx, ds)
	for i, w := range batch {
		if len(errs) != len(batch) {
			w.done <- forge.Errorf(forge.EINTERNAL, "store answered %d results for %d deliveries", len(errs), len(batch))
			continue
		}
		w.done <- errs[i]
	}

	g.mu.Lock()
	if len(g.queue) > 0 {
		g.queue[0].lead <- struct{}{}
	} else {
		g.busy = false
	}
	g.mu.Unlock()
}

// checkHookSignature returns "" when header is "sha256=<hex>" of the
// HMAC-SHA256 of body under secret, and otherwise what is wrong.
func checkHookSignature(secret []byte, header string, body []byte) string {
	if header == "" {
		return "missing X-Hub-Signature-256 header: the webhook must be signed with its secret"
	}
	hexSum, ok := strings.CutPrefix(header, "sha256=")
	if !ok {
		return "X-Hub-Signature-256 must be sha256=<hex digest>"
	}
	got, err := hex.DecodeString(hexSum)
	if err != nil || len(got) != sha256.Size {
		return "X-Hub-Signature-256 must be sha256=<hex digest>"
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	if !hmac.Equal(got, mac.Sum(nil)) {
		return "signature does not match: check the webhook secret"
	}
	return ""
}

// decodeHookBody returns the JSON payload of a webhook body, or an HTTP
// status and a message saying what is wrong with it.
func decodeHookBody(contentType string, body []byte) (payload []byte, status int, msg string) {
	media := ""
	if contentType != "" {
		m, _, err := mime.ParseMediaType(contentType)
		if err != nil {
			return nil, http.StatusUnsupportedMediaType, fmt.Sprintf("content type %q cannot be parsed", contentType)
		}
		media = m
	}
	switch media {
	case "application/json":
		payload = body
	case "application/x-www-form-urlencoded":
		form, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, http.StatusBadRequest, "form body cannot be parsed: " + err.Error()
		}
		p, ok := form["payload"]
		if !ok || len(p) != 1 {
			return nil, http.StatusBadRequest, "form body must have exactly one payload field"
		}
		payload = []byte(p[0])
	default:
		return nil, http.StatusUnsupportedMediaType, fmt.Sprintf("content type %q is not supported: configure the webhook with application/json or application/x-www-form-urlencoded", contentType)
	}
	trimmed := strings.TrimLeft(string(payload), " \t\r\n")
	if !strings.HasPrefix(trimmed, "{") || !json.Valid(payload) {
		return nil, http.StatusBadRequest, "payload is not a JSON object"
	}
	return payload, 0, ""
}

// hookAction reads the payload's top-level "action", if any.
func hookAction(payload []byte) string {
	var p struct {
		Action json.RawMessage `json:"action"`
	}
	if json.Unmarshal(payload, &p) != nil {
		return ""
	}
	var s string
	if json.Unmarshal(p.Action, &s) != nil || len(s) > 100 {
		return ""
	}
	return s
}

func writeHookJSON(w http.ResponseWriter, status int, message, id string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	body := map[string]string{"message": message}
	if status >= 400 {
		body["code"] = hookCode(status)
	}
	if id != "" && status < 300 {
		body["delivery"] = id
	}
	_ = json.NewEncoder(w).Encode(body)
}

// hookCode names a failure status as forge's error codes do, so webhook
// errors look like the API's {code, message}.
func hookCode(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return forge.EUNAUTHORIZED
	case http.StatusRequestEntityTooLarge:
		return forge.ETOOLARGE
	case http.StatusServiceUnavailable:
		return forge.EUNAVAILABLE
	case http.StatusInternalServerError:
		return forge.EINTERNAL
	}
	return forge.EINVALID
}

// hookCounter registers forge_webhooks_total on reg (reusing one already
// there, so two handlers may share a registry) and returns its increment.
func hookCounter(reg prometheus.Registerer) func(event, result string) {
	if reg == nil {
		return func(string, string) {}
	}
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "forge_webhooks_total",
		Help: "GitHub webhook deliveries received, by event and result.",
	}, []string{"event", "result"})
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				c = existing
			}
		}
	}
	return func(event, result string) { c.WithLabelValues(event, result).Inc() }
}
