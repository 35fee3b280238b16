package lease_test

import (
	"context"
	"slices"
	"testing"
	"time"

	. "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease/leasehttp"
)

// BenchmarkAcquireRelease measures one client's grant latency when the
// resource is free: Acquire (acquire → granted) and Release (release →
// released) on a persistent connection to the real server over loopback,
// reporting the p50/p99 of the grant alone (the server-side figures of
// issue 3 are internal/lease's). Run it with
//
//	go test -run='^$' -bench=AcquireRelease ./client/lease
func BenchmarkAcquireRelease(b *testing.B) {
	// One connection looping as fast as it can is a flood to the server's
	// per-connection rate limit (5000 messages/s by default); lift it so
	// the figure is the grant's latency, not the limiter's pacing.
	f := newTestServerOptions(b, leasehttp.Options{MessageRate: 1e7, MessageBurst: 1e6}, onePool("dut", "dut1"))
	ctx := context.Background()
	c, err := Dial(ctx, f.hs.URL, nil) // straight to the server, not through the test proxy
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	reqs := []Request{{Pool: "dut"}}
	grants := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		l, err := c.Acquire(ctx, "bench", reqs, nil)
		if err != nil {
			b.Fatal(err)
		}
		grants = append(grants, time.Since(start))
		if err := l.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	slices.Sort(grants)
	pct := func(p float64) time.Duration { return grants[max(0, int(float64(len(grants))*p+0.999999)-1)] }
	b.ReportMetric(float64(pct(0.50).Nanoseconds())/1e6, "grant-p50-ms")
	b.ReportMetric(float64(pct(0.99).Nanoseconds())/1e6, "grant-p99-ms")
}
