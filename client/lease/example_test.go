package lease_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"time"

	"github.com/forgeci/forge/client/lease"
)

// Hold two ports and an arm64 device while a test binary runs, and stop it
// when the lease is lost.
func ExampleClient_Acquire() {
	ctx := context.Background()
	c, err := lease.Dial(ctx, "http://forge.example.com:8080", nil)
	if err != nil {
		log.Fatal(err) // forge.EUNAVAILABLE when the server is down
	}
	defer c.Close() // releases whatever is still held

	l, err := c.Acquire(ctx, "nightly hardware tests",
		[]lease.Request{
			{Pool: "dut", Labels: map[string]string{"arch": "arm64"}},
			{Pool: "ports", Count: 2},
		},
		&lease.AcquireOptions{
			MaxWait: 30 * time.Minute,
			Queued:  func(pos int) { fmt.Fprintf(os.Stderr, "waiting: position %d\n", pos) },
		})
	if err != nil {
		log.Fatal(err) // ENOTFOUND unknown pool, EINVALID impossible request, ETIMEOUT MaxWait passed
	}
	fmt.Println("device", l.IDs("dut")[0], "at", l.Resources()["dut"][0].Attributes["host"])

	// The test runs under the lease's context: it is killed if the lease is
	// lost, since the device may then belong to someone else.
	cmd := exec.CommandContext(l.Context(), "./hwtest")
	for k, v := range l.Env() {
		cmd.Env = append(cmd.Env, k+"="+v) // FORGE_LEASE_DUT, FORGE_LEASE_PORTS, FORGE_LEASE_JSON
	}
	runErr := cmd.Run()
	select {
	case <-l.Lost():
		log.Fatalf("lease lost: %v", l.Err())
	default:
	}
	if err := l.Release(ctx); err != nil {
		log.Print(err)
	}
	if runErr != nil {
		log.Fatal(runErr)
	}
}

// A pipeline engine gets a forge.Leaser; each Acquire holds its own
// connection until the grant is released.
func ExampleNewLeaser() {
	leaser, err := lease.NewLeaser("https://forge.example.com", nil)
	if err != nil {
		log.Fatal(err) // EINVALID: not an http(s)/ws(s) address
	}
	_ = leaser // engine.Options{Leaser: leaser}
}
