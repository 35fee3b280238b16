package lease_test

import (
	"context"
	"fmt"

	"github.com/goccy/go-yaml"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/lease"
)

// The lease state from a configuration file, used directly: a connection
// (or a pipeline job) is an owner; its end is a Disconnect.
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
