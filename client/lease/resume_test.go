package lease_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forgeci/forge"
	. "github.com/forgeci/forge/client/lease"
)

// logRecorder collects a Client's Logf lines and signals each.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
	ch    chan string
}

func newLogRecorder() *logRecorder { return &logRecorder{ch: make(chan string, 100)} }

func (r *logRecorder) logf(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.lines = append(r.lines, s)
	r.mu.Unlock()
	r.ch <- s
}

// wait returns the first line containing want, failing after 20s.
func (r *logRecorder) wait(t *testing.T, want string) string {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case s := <-r.ch:
			if strings.Contains(s, want) {
				return s
			}
		case <-timeout:
			t.Fatalf("no log line with %q within 20s; got %q", want, r.lines)
		}
	}
}

// TestClientResumesAfterCut: a resumable Client whose connection breaks
// on its side reconnects and resumes (taking the session over from the
// connection the server still has), keeps its lease (never lost, nobody
// else gets it), and an acquisition made meanwhile is granted after the
// resume; a version 1 Client cut at the same time loses its lease.
func TestClientResumesAfterCut(t *testing.T) {
	s := newTestServer(t, onePool("dut", "d1", "d2", "d3"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := newLogRecorder()
	a, err := Dial(ctx, s.URL, &Options{Resumable: true, Grace: 20 * time.Second, Logf: log.logf})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if id, grace := a.Session(); id == "" || grace != 20*time.Second {
		t.Fatalf("session: got %q %s, want one with grace 20s", id, grace)
	}
	l, err := a.Acquire(ctx, "a", []Request{{Pool: "dut"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	old, err := Dial(ctx, s.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if id, _ := old.Session(); id != "" {
		t.Fatalf("a Client that did not ask has session %q", id)
	}
	ol, err := old.Acquire(ctx, "old", []Request{{Pool: "dut"}}, nil)
	if err != nil {
		t.Fatal(err)
	}

	s.cutClients()
	log.wait(t, "resuming session")
	<-ol.Lost() // today's semantics for the version 1 client
	l2, err := a.Acquire(ctx, "a2", []Request{{Pool: "dut"}}, nil)
	if err != nil {
		t.Fatalf("acquire across the resume: %v", err)
	}
	log.wait(t, "resumed")
	select {
	case <-l.Lost():
		t.Fatalf("lease lost across a resume: %v", l.Err())
	default:
	}
	// The old client's lease stays held until the server's keepalive
	// notices its silent connection.
	if got := s.held(t); got != 3 {
		t.Fatalf("held after resume: got %d, want 3 (a's two leases, and old's until its keepalive)", got)
	}
	if l2.IDs("dut")[0] == l.IDs("dut")[0] {
		t.Fatalf("two leases on one resource %v", l.IDs("dut"))
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := s.held(t); got != 2 {
		t.Fatalf("held after release: got %d, want 2", got)
	}
	a.Close()
	if got := s.held(t); got != 1 {
		t.Fatalf("held after a clean close: got %d, want 1 (old's)", got)
	}
}

// TestClientSessionExpires: when the server cannot be reached within the
// grace the lease is lost, and the Client says so.
func TestClientSessionExpires(t *testing.T) {
	s := newTestServer(t, onePool("dut", "d1"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := newLogRecorder()
	a, err := Dial(ctx, s.URL, &Options{Resumable: true, Grace: 300 * time.Millisecond, Logf: log.logf})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	l, err := a.Acquire(ctx, "a", []Request{{Pool: "dut"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.ln.Close() // nothing gets through any more
	s.kill()
	<-l.Lost()
	var fe *forge.Error
	if !errors.As(l.Err(), &fe) || !strings.Contains(fe.Message, "leases are lost") {
		t.Fatalf("lost: got %v, want the grace to have passed", l.Err())
	}
	log.wait(t, "is gone")
}
