package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/forgeci/forge"
	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/lease/leasehttp"
	"github.com/forgeci/forge/internal/pgtest"
	"github.com/forgeci/forge/internal/sqldb"
)

// sessionClientsEnv makes the test binary the client process of
// BenchmarkLeaseDurableGrants: "URL CLIENTS PER".
const sessionClientsEnv = "FORGE_LEASE_SESSION_CLIENTS"

// BenchmarkLeaseDurableGrants measures grants per second of a lease
// server whose sessions are journaled to the store (issue 12: at least
// 15,000 with 1,000 clients on a pool of 100), side by side, in one run,
// with the same server keeping its state in memory only:
//
//	go test -run '^$' -bench LeaseDurableGrants -benchtime 1x ./cmd/forge
//
// The server (leasehttp over a Memory, journaled or not) runs in this
// process; the 1,000 clients run in another (this test binary
// re-executed), each a plain coder/websocket connection with a resumable
// session (protocol version 2) looping acquire → granted → release →
// released. Modes alternate for FORGE_LEASE_BENCH_ROUNDS rounds (default
// 3): memory, sqlite (the journal on SQLite, as forge server has it by
// default) and, with FORGE_TEST_POSTGRES_URL, postgres; the figures are
// the medians. FORGE_LEASE_BENCH_PER_CLIENT sets the grants per client
// and round (default 20).
func BenchmarkLeaseDurableGrants(b *testing.B) {
	const clients = 1000
	rounds := benchEnvInt("FORGE_LEASE_BENCH_ROUNDS", 3)
	per := benchEnvInt("FORGE_LEASE_BENCH_PER_CLIENT", 20)
	leaseRaiseFileLimit(b, 3*clients+256)
	modes := []string{"memory", "sqlite"}
	if os.Getenv("FORGE_TEST_POSTGRES_URL") != "" {
		modes = append(modes, "postgres")
	}
	rates, cpus := map[string][]float64{}, map[string][]float64{}
	b.ResetTimer()
	for r := range rounds {
		for _, mode := range modes {
			rate, cpu, batches := durableGrantRound(b, mode, clients, per)
			rates[mode] = append(rates[mode], rate)
			cpus[mode] = append(cpus[mode], cpu)
			b.Logf("round %d: %-8s %6.0f grants/s, server %5.1f µs CPU/grant%s", r+1, mode, rate, cpu, batches)
		}
	}
	b.StopTimer()
	for _, mode := range modes {
		b.ReportMetric(benchMedian(rates[mode]), mode+"-grants/s")
		b.ReportMetric(benchMedian(cpus[mode]), mode+"-cpu-µs/grant")
	}
	b.ReportMetric(benchMedian(rates["sqlite"])/benchMedian(rates["memory"]), "sqlite/memory")
	b.ReportMetric(0, "ns/op")
}

// countingStore counts the journal's transactions and the sessions they
// wrote.
type countingStore struct {
	lease.SessionStore
	mu            sync.Mutex
	writes, saved int
}

func (s *countingStore) WriteLeaseSessions(ctx context.Context, changes map[string][]byte) error {
	s.mu.Lock()
	s.writes++
	s.saved += len(changes)
	s.mu.Unlock()
	return s.SessionStore.WriteLeaseSessions(ctx, changes)
}

// durableGrantRound serves a new pool of 100 in mode and runs the client
// process against it; it returns the grants per second.
func durableGrantRound(b *testing.B, mode string, clients, per int) (rate, cpuPerGrant float64, batches string) {
	ctx := context.Background()
	pools := []*forge.Pool{{Name: "bench", Order: lease.OrderFIFO}}
	for i := range 100 {
		pools[0].Resources = append(pools[0].Resources, &forge.Resource{ID: strconv.Itoa(i + 1)})
	}
	m, err := lease.NewMemory(pools, lease.MemoryOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	var store *countingStore
	if mode != "memory" {
		cfg := sqldb.Config{DataDir: b.TempDir()}
		if mode == "postgres" {
			cfg = sqldb.Config{URL: pgtest.Schema(b, "forge_lease_bench")}
		}
		db, err := sqldb.Open(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		if _, err := db.Migrate(ctx, "up"); err != nil {
			b.Fatal(err)
		}
		store = &countingStore{SessionStore: &sqldb.LeaseSessionStore{DB: db}}
		if _, _, err := m.Journal(ctx, store, lease.JournalOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	srv := leasehttp.NewServer(m, leasehttp.Options{Durable: store != nil, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{Handler: srv.Handler()}
	go hs.Serve(ln)
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		hs.Shutdown(sctx)
	}()

	url := "ws://" + ln.Addr().String() + "/api/v1/leases/ws?version=2"
	cmd := exec.Command(os.Args[0], "-test.run=^TestLeaseSessionClientProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d", sessionClientsEnv, url, clients, per))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	lines := bufio.NewScanner(stdout)
	await := func(word string) string {
		for lines.Scan() {
			if rest, ok := strings.CutPrefix(lines.Text(), word); ok {
				return strings.TrimSpace(rest)
			}
		}
		b.Fatalf("client process ended before %q", word)
		return ""
	}
	await("ready")
	var w0, s0 int
	if store != nil {
		store.mu.Lock()
		w0, s0 = store.writes, store.saved
		store.mu.Unlock()
	}
	cpu0 := selfCPU(b)
	io.WriteString(stdin, "go\n")
	ns, err := strconv.ParseInt(await("done"), 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	cpuPerGrant = float64((selfCPU(b) - cpu0).Microseconds()) / float64(clients*per)
	if store != nil {
		store.mu.Lock()
		w, s := store.writes-w0, store.saved-s0
		store.mu.Unlock()
		batches = fmt.Sprintf(" (%d transactions, %.1f sessions each, %.2f grants each)", w, float64(s)/float64(max(w, 1)), float64(clients*per)/float64(max(w, 1)))
	}
	return float64(clients*per) / (float64(ns) / 1e9), cpuPerGrant, batches
}

// selfCPU is the CPU time this process (the server) has used.
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestLeaseSessionClientProcess is BenchmarkLeaseDurableGrants's client
// process; it does nothing in a normal run. It dials every client and
// opens its session, says "ready", waits for "go", runs, and says "done"
// with the nanoseconds the run took.
func TestLeaseSessionClientProcess(t *testing.T) {
	spec := os.Getenv(sessionClientsEnv)
	if spec == "" {
		t.Skip("only runs as the client process of BenchmarkLeaseDurableGrants")
	}
	var url string
	var clients, per int
	if _, err := fmt.Sscanf(spec, "%s %d %d", &url, &clients, &per); err != nil {
		t.Fatalf("%s=%q: %v", sessionClientsEnv, spec, err)
	}
	leaseRaiseFileLimit(t, uint64(clients)+256)
	ctx := context.Background()
	conns := make([]*websocket.Conn, clients)
	for i := range conns {
		c, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		if _, err := benchExpect(ctx, c, wire.TypeHello); err != nil {
			t.Fatal(err)
		}
		c.Write(ctx, websocket.MessageText, []byte(`{"type":"session"}`))
		if _, err := benchExpect(ctx, c, wire.TypeSession); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "go" {
		t.Fatal("no go")
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			acquire := []byte(fmt.Sprintf(`{"type":"acquire","id":"r%d","requests":[{"pool":"bench"}]}`, i))
			for range per {
				c.Write(ctx, websocket.MessageText, acquire)
				g, err := benchExpect(ctx, c, wire.TypeGranted)
				if err != nil {
					errs <- err
					return
				}
				c.Write(ctx, websocket.MessageText, []byte(`{"type":"release","lease":"`+g.Lease+`"}`))
				if _, err := benchExpect(ctx, c, wire.TypeReleased); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	fmt.Println("done", time.Since(start).Nanoseconds())
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, c := range conns {
		c.Close(websocket.StatusNormalClosure, "")
	}
}

// benchExpect reads until a message of type typ (queued ones are
// skipped); anything else is an error.
func benchExpect(ctx context.Context, c *websocket.Conn, typ string) (*wire.Message, error) {
	for {
		_, data, err := c.Read(ctx)
		if err != nil {
			return nil, err
		}
		var m wire.Message
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, err
		}
		if m.Type == typ {
			return &m, nil
		}
		if m.Type != wire.TypeQueued {
			return nil, fmt.Errorf("want %s, got %s", typ, data)
		}
	}
}

func leaseRaiseFileLimit(t testing.TB, n uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	lim.Cur = min(lim.Max, n)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < n {
		t.Skipf("open file limit %d (hard %d) is below the %d this needs: %v", lim.Cur, lim.Max, n, err)
	}
}

func benchEnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func benchMedian(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
