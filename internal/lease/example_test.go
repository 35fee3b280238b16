package lease_test

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/prometheus"
)

// A server wires the lease service from its configuration file.
func Example() {
	var cfg lease.Config
	if err := yaml.Unmarshal([]byte(`
pools:
  dut:
    resources:
      - {id: dut1, host: 10.0.0.5, labels: {arch: arm64}}
`), &cfg); err != nil {
		panic(err)
	}
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	pools, _ := cfg.BuildPools()
	m, _ := lease.NewMemory(pools, cfg.ManagerOptions())
	defer m.Close()
	s := lease.NewServer(m, lease.Options{Keepalive: cfg.KeepaliveOrDefault(), Registry: prometheus.NewRegistry()})
	mux := http.NewServeMux()
	// The REST mutations must sit behind the server's authentication.
	mux.Handle("/api/v1/", s.Handler())
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	}()

	// The Manager can also be used directly.
	done := make(chan lease.Event, 1)
	m.Acquire(context.Background(), &lease.Request{
		Owner: "job-42", ID: "r1", Holder: "pipeline job 42",
		Wants:  []forge.ResourceRequest{{Pool: "dut", Count: 1, Labels: map[string]string{"arch": "arm64"}}},
		Notify: func(ev lease.Event) { done <- ev },
	})
	ev := <-done
	fmt.Println(ev.Lease.Holder, ev.Lease.ResourceIDs()["dut"], ev.Lease.Pools[0].Resources[0].Attributes["host"])
	m.Disconnect(context.Background(), "job-42") // releases everything job-42 holds
	// Output: pipeline job 42 [dut1] 10.0.0.5
}
