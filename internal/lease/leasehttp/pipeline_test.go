package leasehttp

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
)

// A client that pipelines (sends without waiting for answers, as
// docs/leases.md allows) at more than the documented rate, for longer
// than two keepalive periods, is read at the documented rate and keeps
// its lease: the messages it sends prove it alive even while its pongs
// wait behind them.
func TestPipeliningClientKeepsItsLease(t *testing.T) {
	const keepalive = 2 * time.Second
	e := newEnv(t, dutConfig, Options{Keepalive: keepalive}, lease.MemoryOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, e.wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()

	// The reader counts pongs and answers the server's pings (the library
	// does while Read runs), as a healthy client does.
	type event struct {
		m   wire.Message
		at  time.Time
		err error
	}
	events := make(chan event, 64)
	pongs := make(chan time.Time, 1)
	go func() {
		n := 0
		for {
			_, data, err := ws.Read(ctx)
			if err != nil {
				events <- event{err: err}
				return
			}
			var m wire.Message
			if err := json.Unmarshal(data, &m); err != nil {
				events <- event{err: fmt.Errorf("server sent %q: %v", data, err)}
				return
			}
			if m.Type != wire.TypePong {
				events <- event{m: m, at: time.Now()}
				continue
			}
			n++
			if n == 1 || n == total {
				pongs <- time.Now()
			}
		}
	}()
	next := func() wire.Message {
		t.Helper()
		select {
		case ev := <-events:
			if ev.err != nil {
				t.Fatalf("connection ended: %v", ev.err)
			}
			return ev.m
		case <-ctx.Done():
			t.Fatal("no message")
		}
		return wire.Message{}
	}
	if m := next(); m.Type != wire.TypeHello {
		t.Fatalf("first message %+v, want hello", m)
	}
	write := func(s string) {
		t.Helper()
		if err := ws.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	write(`{"type":"acquire","id":"a","holder":"pipeliner","requests":[{"pool":"one"}]}`)
	if m := next(); m.Type != wire.TypeGranted {
		t.Fatalf("got %+v, want granted", m)
	}

	// Back to back, as fast as the connection takes them.
	start := time.Now()
	for i := range total {
		write(fmt.Sprintf(`{"type":"ping","id":"p%d"}`, i))
	}
	written := time.Since(start)
	var first, last time.Time
	for _, at := range []*time.Time{&first, &last} {
		select {
		case *at = <-pongs:
		case ev := <-events:
			t.Fatalf("while pipelining %d messages: %+v", total, ev)
		case <-ctx.Done():
			t.Fatalf("not every pong arrived")
		}
	}
	took := last.Sub(start)
	if took < 2*keepalive {
		t.Fatalf("%d messages answered in %s: the test must pipeline for longer than two keepalive periods (%s)", total, took, 2*keepalive)
	}
	// Past the burst, the server reads at its documented rate: a limiter
	// that loses time to coarse timers would take several times longer.
	rate := float64(total-defaultBurst) / last.Sub(start).Seconds()
	t.Logf("%d pipelined messages written in %s, answered in %s: %.0f messages/s after the burst", total, written, took, rate)
	if rate > 1.1*defaultRate {
		t.Errorf("read at %.0f messages/s, above the documented %d/s", rate, defaultRate)
	}
	if !raceEnabled && rate < 0.8*defaultRate {
		t.Errorf("read at %.0f messages/s, want the documented %d/s", rate, defaultRate)
	}
	var ls leasesResponse
	e.rest("GET", "/api/v1/leases", "", &ls)
	if len(ls.Leases) != 1 || ls.Leases[0].Holder != "pipeliner" {
		t.Fatalf("leases after pipelining: %+v, want the pipeliner's", ls.Leases)
	}
	if got := metricValue(t, e, "forge_lease_slow_connections_dropped_total", nil).GetCounter().GetValue(); got != 0 {
		t.Fatalf("dropped connections: %v, want 0", got)
	}
}

// total is how many messages the pipelining client sends: five seconds'
// worth at the documented rate, past the burst.
const total = defaultBurst + 5*defaultRate

// The documented per-connection limits (docs/leases.md).
const (
	defaultRate  = 5000
	defaultBurst = 1000
)

// Many busy connections: 30 clients, each holding a lease, send pings
// without waiting, twice as fast as the server reads each connection (a
// rate limit of 300 messages/s here, so the machine is not what limits
// it), for three keepalive periods. Every pong waits behind more and more
// messages, seconds' worth by the end; none of these healthy clients may
// be dropped, and every drop would be logged.
func TestBusyConnectionsKeepTheirLeases(t *testing.T) {
	const (
		clients = 30
		// 8s, not 2s: on a loaded 2-core machine with the race detector
		// this process (clients and server alike) can get no CPU for
		// seconds, which a 2s keepalive (1s for the pong) cannot tell
		// from a dead client; with 4s (2s for the pong), make
		// test-loaded still saw healthy clients dropped.
		keepalive = 8 * time.Second
		rate      = 300
	)
	logs := &logRecorder{}
	e := newEnv(t, "pools: {p: {range: 1-30}}", Options{Keepalive: keepalive, MessageRate: rate, MessageBurst: rate / 10, Logger: slog.New(logs)}, lease.MemoryOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	ended := make(chan error, clients)
	granted := make(chan struct{}, clients)
	flood := make(chan struct{})
	for i := range clients {
		ws, _, err := websocket.Dial(ctx, e.wsURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.CloseNow()
		wg.Add(2)
		go func() { // the reader: answers pings, notes the grant
			defer wg.Done()
			for {
				_, data, err := ws.Read(ctx)
				if err != nil {
					if ctx.Err() == nil {
						ended <- fmt.Errorf("client %d: %v", i, err)
					}
					return
				}
				if strings.Contains(string(data), `"granted"`) {
					granted <- struct{}{}
				}
			}
		}()
		go func() { // the writer: acquires, then pings at twice the rate read
			defer wg.Done()
			acquire := fmt.Sprintf(`{"type":"acquire","id":"a","holder":"busy %d","requests":[{"pool":"p"}]}`, i)
			if ws.Write(ctx, websocket.MessageText, []byte(acquire)) != nil {
				return
			}
			select {
			case <-flood:
			case <-ctx.Done():
				return
			}
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for n := 0; ; n++ {
				if err := ws.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"type":"ping","id":"%d"}`, n)); err != nil {
					return
				}
				if n%(2*rate/20) == 2*rate/20-1 { // 2×rate a second, in 20 batches
					select {
					case <-tick.C:
					case <-ctx.Done():
						return
					}
				}
			}
		}()
	}
	for range clients {
		select {
		case <-granted:
		case err := <-ended:
			t.Fatalf("before every grant: %v; drops logged: %v", err, logs.drops())
		case <-time.After(30 * time.Second):
			t.Fatal("not every client was granted")
		}
	}
	close(flood)
	select {
	case err := <-ended:
		t.Fatalf("a busy client lost its connection: %v; drops logged: %v", err, logs.drops())
	case <-time.After(3 * keepalive):
	}
	var ls leasesResponse
	e.rest("GET", "/api/v1/leases", "", &ls)
	if len(ls.Leases) != clients {
		t.Errorf("%d leases after %s of pipelining, want %d", len(ls.Leases), 3*keepalive, clients)
	}
	if d := logs.drops(); len(d) != 0 {
		t.Errorf("busy healthy connections dropped: %v", d)
	}
	cancel()
	wg.Wait()
}
