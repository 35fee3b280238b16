package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	wire "github.com/forgeci/forge/client/lease"
)

// BenchmarkLeaseRestartResume measures issue 12's "server restart to
// every resumed lease granted back: under 2 s for 1,000 sessions": a real
// forge server (SQLite) with 1,000 sessions each holding one device is
// killed with SIGKILL; the time runs from the start of the next forge
// server process until every client, retrying its resume every 10 ms,
// has its session resumed with its lease on the same device. Three
// kill-restart rounds; the figure is the median:
//
//	go test -run '^$' -bench LeaseRestartResume -benchtime 1x ./cmd/forge
func BenchmarkLeaseRestartResume(b *testing.B) {
	const sessions = 1000
	leaseRaiseFileLimit(b, 2*sessions+256)
	dir := b.TempDir()
	cfg := filepath.Join(dir, "forge.yml")
	if err := os.WriteFile(cfg, []byte("pools:\n  bench: {range: 1-1000}\nlease:\n  grace: 60s\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	_, _, addr, data := leaseCrashSetup(b)
	srv := startLeaseForgeServerAt(b, addr, data, cfg)
	url := "ws://" + addr + "/api/v1/leases/ws?version=2"
	ctx := context.Background()

	type holder struct {
		session, secret, lease, device string
		ws                             *websocket.Conn
	}
	hs := make([]*holder, sessions)
	for i := range hs {
		c, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			b.Fatal(err)
		}
		benchExpect(ctx, c, wire.TypeHello)
		c.Write(ctx, websocket.MessageText, []byte(`{"type":"session"}`))
		s, err := benchExpect(ctx, c, wire.TypeSession)
		if err != nil {
			b.Fatal(err)
		}
		c.Write(ctx, websocket.MessageText, []byte(fmt.Sprintf(`{"type":"acquire","id":"r%d","requests":[{"pool":"bench"}]}`, i)))
		g, err := benchExpect(ctx, c, wire.TypeGranted)
		if err != nil {
			b.Fatal(err)
		}
		hs[i] = &holder{session: s.Session, secret: s.Secret, lease: g.Lease, device: g.Resources["bench"][0].ID, ws: c}
	}
	resume := func(h *holder) error {
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			c, _, err := websocket.Dial(dctx, url, nil)
			cancel()
			if err != nil {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if _, err := benchExpect(ctx, c, wire.TypeHello); err != nil {
				c.CloseNow()
				continue
			}
			c.Write(ctx, websocket.MessageText, []byte(`{"type":"resume","session":"`+h.session+`","secret":"`+h.secret+`"}`))
			r, err := benchExpect(ctx, c, wire.TypeResumed)
			if err != nil {
				c.CloseNow()
				return fmt.Errorf("resume of %s: %w", h.session, err)
			}
			if len(r.Leases) != 1 || r.Leases[0].Lease != h.lease || r.Leases[0].Resources["bench"][0].ID != h.device {
				return fmt.Errorf("session %s resumed with %+v, want lease %s on %s", h.session, r.Leases, h.lease, h.device)
			}
			h.ws = c
			return nil
		}
		return fmt.Errorf("session %s not resumed within 60s", h.session)
	}
	var took []float64
	b.ResetTimer()
	for round := range 3 {
		srv.cmd.Process.Signal(syscall.SIGKILL)
		srv.wait(b, 20*time.Second)
		for _, h := range hs {
			h.ws.CloseNow()
		}
		start := time.Now()
		srv = startLeaseForge(b, []string{"FORGE_MIGRATE=auto"}, "server", "--config", cfg, "--addr", addr, "--data", data)
		var wg sync.WaitGroup
		errs := make(chan error, sessions)
		for _, h := range hs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := resume(h); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		d := time.Since(start)
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		took = append(took, float64(d.Milliseconds()))
		b.Logf("round %d: forge server start → %d sessions resumed with their leases: %v", round+1, sessions, d)
	}
	b.StopTimer()
	b.ReportMetric(benchMedian(took), "ms-to-all-resumed")
	b.ReportMetric(0, "ns/op")
	srv.cmd.Process.Signal(syscall.SIGTERM)
	srv.wait(b, 20*time.Second)
}
