package main

import (
	"context"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/forgeci/forge/client/lease"
)

// killHandoffTrials is how many holders one benchmark op kills; the issue
// asks for the p99 over 100.
const killHandoffTrials = 100

// BenchmarkLeaseKillHandoff measures issue 3's "a holder killed with
// SIGKILL: the next waiter is granted within 50 ms (p99 over 100 trials)".
// Each trial starts a real `forge lease dut -- sleep 60` holding the only
// device, queues a waiter on a persistent connection, SIGKILLs the holder
// and times from the kill to the waiter's grant. Run it with
//
//	go test -run='^$' -bench=LeaseKillHandoff -benchtime=1x ./cmd/forge
func BenchmarkLeaseKillHandoff(b *testing.B) {
	bin := leaseForgeBinary(b)
	srv := newLeaseServer(b, leasePool("dut", "dut1"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := lease.Dial(ctx, srv.URL, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()

	var samples []time.Duration
	b.ResetTimer()
	for range b.N {
		for range killHandoffTrials {
			samples = append(samples, killHandoffTrial(b, ctx, bin, srv, c))
		}
	}
	b.StopTimer()
	slices.Sort(samples)
	pct := func(p float64) time.Duration { return samples[max(0, int(float64(len(samples))*p+0.999999)-1)] }
	p50, p99, worst := pct(0.50), pct(0.99), samples[len(samples)-1]
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(worst.Microseconds())/1000, "max-ms")
	b.Logf("SIGKILL → next waiter granted over %d trials: p50 %v, p99 %v, max %v", len(samples), p50, p99, worst)
	if p99 >= 50*time.Millisecond {
		b.Errorf("p99 %v, want under 50ms", p99)
	}
}

func killHandoffTrial(b *testing.B, ctx context.Context, bin string, srv *leaseServer, c *lease.Client) time.Duration {
	holder := exec.Command(bin, "lease", "-q", "--server", srv.URL, "dut", "--", "sleep", "60")
	if err := holder.Start(); err != nil {
		b.Fatal(err)
	}
	defer holder.Wait()
	defer holder.Process.Kill()
	leaseWaitFor(b, 10*time.Second, "the holder's grant", func() bool { return len(srv.leases(b, "dut")) == 1 })

	queued := make(chan struct{}, 1)
	type result struct {
		l   *lease.Lease
		err error
		at  time.Time
	}
	granted := make(chan result, 1)
	go func() {
		l, err := c.Acquire(ctx, "waiter", []lease.Request{{Pool: "dut"}}, &lease.AcquireOptions{Queued: func(int) {
			select {
			case queued <- struct{}{}:
			default:
			}
		}})
		granted <- result{l, err, time.Now()}
	}()
	select {
	case <-queued:
	case r := <-granted:
		b.Fatalf("waiter granted while the holder runs: %v", r.err)
	case <-time.After(10 * time.Second):
		b.Fatal("waiter never queued")
	}

	killed := time.Now()
	holder.Process.Signal(syscall.SIGKILL)
	var r result
	select {
	case r = <-granted:
	case <-time.After(10 * time.Second):
		b.Fatal("waiter not granted within 10s of the SIGKILL")
	}
	if r.err != nil {
		b.Fatal(r.err)
	}
	if err := r.l.Release(ctx); err != nil {
		b.Fatal(err)
	}
	return r.at.Sub(killed)
}
