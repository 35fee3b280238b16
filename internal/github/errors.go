package github

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	gh "github.com/google/go-github/v76/github"

	"github.com/forgeci/forge"
)

// callError is a failed API call, classified: whether trying again may
// help, and when (After, from Retry-After or X-RateLimit-Reset; zero
// means "after the usual backoff").
type callError struct {
	what   string
	status int
	retry  bool
	after  time.Duration
	err    error
}

func (e *callError) Error() string {
	if e.status != 0 {
		return fmt.Sprintf("github: %s: %d: %v", e.what, e.status, e.err)
	}
	return fmt.Sprintf("github: %s: %v", e.what, e.err)
}

func (e *callError) Unwrap() error { return e.err }

// classify wraps err, the error of a go-github call doing what: 5xx, 429,
// network errors, timeouts, and primary and secondary rate limits may
// pass; other answers (404, 422, 403 without a rate limit) will not.
func classify(err error, what string) error {
	if err == nil {
		return nil
	}
	ce := &callError{what: what, err: err}
	var (
		rl    *gh.RateLimitError
		abuse *gh.AbuseRateLimitError
		resp  *gh.ErrorResponse
		acc   *gh.AcceptedError
	)
	switch {
	case errors.As(err, &acc):
		ce.retry = true
	case errors.As(err, &rl):
		ce.retry = true
		ce.after = time.Until(rl.Rate.Reset.Time)
		if rl.Response != nil {
			ce.status = rl.Response.StatusCode
		}
	case errors.As(err, &abuse):
		ce.retry = true
		ce.after = time.Minute // GitHub: wait at least a minute without Retry-After
		if abuse.RetryAfter != nil {
			ce.after = *abuse.RetryAfter
		}
		if abuse.Response != nil {
			ce.status = abuse.Response.StatusCode
		}
	case errors.As(err, &resp):
		if resp.Response != nil {
			ce.status = resp.Response.StatusCode
			ce.after = retryAfter(resp.Response.Header)
		}
		ce.retry = ce.status >= 500 || ce.status == http.StatusTooManyRequests || ce.status == http.StatusUnauthorized ||
			ce.status == http.StatusRequestTimeout
		if ce.status == http.StatusForbidden && strings.Contains(strings.ToLower(resp.Message), "rate limit") {
			ce.retry = true
			if ce.after == 0 {
				ce.after = time.Minute
			}
		}
	default:
		// The network, a timeout, a token that could not be fetched.
		ce.retry = !errors.Is(err, context.Canceled)
	}
	if ce.after < 0 {
		ce.after = 0
	}
	return ce
}

// retryAfter reads Retry-After (seconds) or, when the primary rate limit
// is used up, X-RateLimit-Reset (Unix seconds).
func retryAfter(h http.Header) time.Duration {
	if s := h.Get("Retry-After"); s != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n >= 0 {
			return time.Duration(n) * time.Second
		}
		if t, err := http.ParseTime(s); err == nil {
			return time.Until(t)
		}
	}
	if h.Get("X-RateLimit-Remaining") == "0" {
		if n, err := strconv.ParseInt(h.Get("X-RateLimit-Reset"), 10, 64); err == nil {
			return time.Until(time.Unix(n, 0))
		}
	}
	return 0
}

// retryable reports whether err may pass, and after how long at least.
func retryable(err error) (bool, time.Duration) {
	var ce *callError
	if errors.As(err, &ce) {
		return ce.retry, ce.after
	}
	var fe *forge.Error
	if errors.As(err, &fe) {
		return fe.Code == forge.EUNAVAILABLE || fe.Code == forge.ETIMEOUT, 0
	}
	return true, 0
}

// notFound reports whether err is a 404 answer.
func notFound(err error) bool {
	var ce *callError
	if errors.As(err, &ce) {
		return ce.status == http.StatusNotFound
	}
	var resp *gh.ErrorResponse
	return errors.As(err, &resp) && resp.Response != nil && resp.Response.StatusCode == http.StatusNotFound
}
