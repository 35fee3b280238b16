package leasehttp_test

import (
	"context"
	"net/http"
	"time"

	"github.com/forgeci/forge/internal/prometheus"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/lease/leasehttp"
)

// A server serves the lease state over HTTP: the WebSocket and the REST
// API, under /api/v1/.
func Example() {
	m, _ := lease.NewMemory([]*forge.Pool{{Name: "dut", Resources: []*forge.Resource{{ID: "dut1"}}}}, lease.MemoryOptions{})
	defer m.Close()
	s := leasehttp.NewServer(m, leasehttp.Options{Keepalive: 10 * time.Second, Registry: prometheus.NewRegistry()})
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	}()
	mux := http.NewServeMux()
	// The REST mutations must sit behind the server's authentication.
	mux.Handle("/api/v1/", s.Handler())
	_ = &http.Server{Addr: "127.0.0.1:8080", Handler: mux}
}
