package leasehttp

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	wire "github.com/forgeci/forge/client/lease"

	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/testwait"
)

// logRecorder keeps the records logged to it.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

// drops returns the attributes of every "dropped" warning logged.
func (l *logRecorder) drops() []map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]string
	for _, r := range l.recs {
		if r.Level != slog.LevelWarn || !strings.Contains(r.Message, "dropped") {
			continue
		}
		attrs := map[string]string{}
		r.Attrs(func(a slog.Attr) bool {
			attrs[a.Key] = a.Value.String()
			return true
		})
		out = append(out, attrs)
	}
	return out
}

// checkDropped checks that exactly one drop was logged, for reason, on
// connection conn, and that the metrics count it.
func checkDropped(t *testing.T, e *testEnv, logs *logRecorder, conn, reason string, slow bool) {
	t.Helper()
	// The client may see the end before the server logs the drop.
	drops := logs.drops()
	_ = testwait.Until(testwait.Scale(time.Minute), func() bool { drops = logs.drops(); return len(drops) > 0 })
	if len(drops) != 1 || drops[0]["reason"] != reason || drops[0]["detail"] == "" || conn != "" && drops[0]["connection"] != conn {
		t.Errorf("drops logged: %v, want one of connection %q for %q, with a detail", drops, conn, reason)
	}
	for _, r := range dropReasons {
		want := 0.0
		if r == reason {
			want = 1
		}
		if got := metricValue(t, e, "forge_lease_connections_dropped_total", map[string]string{"reason": r}).GetCounter().GetValue(); got != want {
			t.Errorf("forge_lease_connections_dropped_total{reason=%q} = %v, want %v", r, got, want)
		}
	}
	want := 0.0
	if slow {
		want = 1
	}
	if got := metricValue(t, e, "forge_lease_slow_connections_dropped_total", nil).GetCounter().GetValue(); got != want {
		t.Errorf("forge_lease_slow_connections_dropped_total = %v, want %v", got, want)
	}
}

// A silent client is dropped by the keepalive, and the drop is logged
// with its reason and counted.
func TestKeepaliveDropIsLoggedAndCounted(t *testing.T) {
	logs := &logRecorder{}
	e := newEnv(t, dutConfig, Options{Keepalive: time.Second, Logger: slog.New(logs)}, lease.MemoryOptions{})
	rawWS(t, e.wsURL, `{"type":"acquire","id":"r","holder":"silent","requests":[{"pool":"one"}]}`)
	e.waitForHolder("silent")
	w := e.dial()
	w.acquire("w", req("one", 1))
	w.expect(wire.TypeGranted) // the silent client's lease came back
	checkDropped(t, e, logs, "", DropKeepalive, true)
}

// Every way the server drops a connection is logged and counted under
// its reason.
func TestDropsAreLoggedAndCounted(t *testing.T) {
	t.Run("send queue full", func(t *testing.T) {
		logs := &logRecorder{}
		e := newEnv(t, dutConfig, Options{SendQueue: 4, Logger: slog.New(logs)}, lease.MemoryOptions{})
		c := e.dial()
		sc := e.conn(c.conn)
		sc.cork(true) // nothing is written: as if the client did not read
		for i := 0; i < 5; i++ {
			sc.send(&wire.Message{Type: wire.TypePong, ID: fmt.Sprint(i)})
		}
		<-c.done
		checkDropped(t, e, logs, c.conn, DropSendQueue, true)
	})
	t.Run("message too large", func(t *testing.T) {
		logs := &logRecorder{}
		e := newEnv(t, dutConfig, Options{MaxMessageBytes: 1024, Logger: slog.New(logs)}, lease.MemoryOptions{})
		c := e.dial()
		c.sendRaw(`{"type":"ping","id":"` + strings.Repeat("x", 20000) + `"}`)
		<-c.done
		checkDropped(t, e, logs, c.conn, DropTooLarge, false)
	})
	t.Run("shutdown deadline", func(t *testing.T) {
		logs := &logRecorder{}
		e := newEnv(t, dutConfig, Options{Logger: slog.New(logs)}, lease.MemoryOptions{})
		// A raw client that never reads does not complete the close
		// handshake, so only the deadline ends it.
		rawWS(t, e.wsURL, `{"type":"acquire","id":"r","holder":"deaf","requests":[{"pool":"one"}]}`)
		e.waitForHolder("deaf")
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if err := e.s.Shutdown(ctx); err == nil {
			t.Fatal("Shutdown returned nil: the deaf client closed in time")
		}
		checkDropped(t, e, logs, "", DropShutdown, false)
	})
	t.Run("a client that closes is not dropped", func(t *testing.T) {
		logs := &logRecorder{}
		e := newEnv(t, dutConfig, Options{Logger: slog.New(logs)}, lease.MemoryOptions{})
		c := e.dial()
		c.acquire("a", req("one", 1))
		c.expect(wire.TypeGranted)
		c.ws.CloseNow()
		w := e.dial()
		w.acquire("w", req("one", 1))
		w.expect(wire.TypeGranted)
		if d := logs.drops(); len(d) != 0 {
			t.Errorf("drops logged for a client that left: %v", d)
		}
	})
}

// slowManager takes its time over acquisitions, as a loaded machine or a
// database-backed Manager may.
type slowManager struct {
	lease.Manager
	delay time.Duration
}

func (m *slowManager) Acquire(ctx context.Context, r *lease.Request) error {
	time.Sleep(m.delay)
	return m.Manager.Acquire(ctx, r)
}

// The server's own slowness is not the client's silence: a client whose
// pong waits unread while the server handles its message, for longer
// than the keepalive gives a pong, keeps its connection and its lease.
func TestSlowServerDoesNotDropHealthyClients(t *testing.T) {
	logs := &logRecorder{}
	const keepalive = time.Second
	e := newEnv(t, dutConfig, Options{Keepalive: keepalive, Logger: slog.New(logs)}, lease.MemoryOptions{},
		func(m lease.Manager) lease.Manager { return &slowManager{Manager: m, delay: keepalive} }) // twice the time a pong is given
	c := e.dial()
	c.acquire("a", req("one", 1))
	g := c.expect(wire.TypeGranted)
	for i := 0; i < 3; i++ {
		c.acquire(fmt.Sprint("d", i), req("dut", 1))
		c.expect(wire.TypeGranted)
	}
	if d := logs.drops(); len(d) != 0 {
		t.Fatalf("a healthy client of a slow server was dropped: %v", d)
	}
	c.release(g.Lease)
}

// The limiter admits its rate however late its timers fire: waiting
// longer than asked is credited, not lost.
func TestLimiterKeepsItsRateWithLateTimers(t *testing.T) {
	for _, late := range []time.Duration{0, 100 * time.Microsecond, time.Millisecond, 4 * time.Millisecond, 15 * time.Millisecond} {
		var l limiter
		now := time.Unix(0, 0)
		l.reset(5000, 1000, now)
		admitted := 0
		end := now.Add(10 * time.Second)
		for now.Before(end) {
			if d := l.take(now); d > 0 {
				now = now.Add(d + late) // the timer fires late
				continue
			}
			admitted++
		}
		// The burst, then 5,000 a second.
		want := 1000 + 5000*10
		if admitted < want*98/100 || admitted > want+1 {
			t.Errorf("timers %s late: %d admitted in 10s, want about %d", late, admitted, want)
		}
	}
}
