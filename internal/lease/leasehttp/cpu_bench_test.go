package leasehttp

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
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/forgeci/forge/internal/lease"
)

// BenchmarkLeaseCPU measures the lease server's CPU per grant against the
// CPU of one request-reply round trip of a bare coder/websocket echo
// server, both served from this (the benchmark) process and driven by
// clients in a separate process (this test binary re-executed: plain
// coder/websocket clients written from docs/leases.md, one connection per
// client), in one run:
//
//	go test -run '^$' -bench LeaseCPU -benchtime 1x ./internal/lease/leasehttp
//
// The server's CPU is this process's (getrusage RUSAGE_SELF) while the
// clients run; dialling is left out. The echo and lease phases alternate
// (FORGE_LEASE_CPU_ROUNDS pairs, default 3) so that both see the same
// machine, and the figures are the medians. 1,000 clients: for the echo
// each sends a message and waits for it to come back; for the lease
// server, on a pool of 100, each loops acquire → granted → release →
// released. FORGE_LEASE_CPU_PIPELINE=1 has the clients send the next
// acquire right after each release, without waiting for released (one
// write less per grant for the server); FORGE_LEASE_CPU_POSITIONS=1h
// spaces the queue position updates (250ms apart by default) an hour
// apart, to show what they cost; FORGE_LEASE_CPU_PROFILE=FILE writes a
// CPU profile of the lease phases.
func BenchmarkLeaseCPU(b *testing.B) {
	const clients = 1000
	rounds := envInt("FORGE_LEASE_CPU_ROUNDS", 3)
	per := max(b.N/clients, envInt("FORGE_LEASE_CPU_PER_CLIENT", 20))
	pipeline := os.Getenv("FORGE_LEASE_CPU_PIPELINE") == "1"

	echoURL := serveBench(b, http.HandlerFunc(echoHandler))
	pools, _ := poolsFromYAML(b, "pools: {bench: {range: 1-100}}")
	var err error
	var mopts lease.MemoryOptions
	if d := os.Getenv("FORGE_LEASE_CPU_POSITIONS"); d != "" {
		if mopts.PositionInterval, err = time.ParseDuration(d); err != nil {
			b.Fatalf("FORGE_LEASE_CPU_POSITIONS=%q: %v", d, err)
		}
	}
	m, err := lease.NewMemory(pools, mopts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(m.Close)
	s := NewServer(m, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	leaseURL := serveBench(b, s.Handler())
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})

	var prof *os.File
	if f := os.Getenv("FORGE_LEASE_CPU_PROFILE"); f != "" {
		if prof, err = os.Create(f); err != nil {
			b.Fatal(err)
		}
		defer prof.Close()
	}
	mode := "lease"
	if pipeline {
		mode = "lease-pipelined"
	}
	var echoUS, grantUS, ratios, grantRates, echoRates, clientUS []float64
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		e := runClients(b, "echo", echoURL, clients, per, nil)
		g := runClients(b, mode, leaseURL, clients, per, prof)
		echoUS = append(echoUS, e.cpuPerOp())
		grantUS = append(grantUS, g.cpuPerOp())
		ratios = append(ratios, g.cpuPerOp()/e.cpuPerOp())
		echoRates = append(echoRates, e.rate())
		grantRates = append(grantRates, g.rate())
		clientUS = append(clientUS, g.clientPerOp())
		b.Logf("round %d: echo %.1f µs CPU/round trip (%.0f/s, %.2f reads + %.2f writes); lease %.1f µs CPU/grant (%.0f grants/s, %.2f reads + %.2f writes, %.2f queued; clients %.1f µs/grant); ratio %.2f",
			r+1, e.cpuPerOp(), e.rate(), e.perOp(e.reads), e.perOp(e.writes),
			g.cpuPerOp(), g.rate(), g.perOp(g.reads), g.perOp(g.writes), g.perOp(g.queued), g.clientPerOp(), g.cpuPerOp()/e.cpuPerOp())
	}
	b.StopTimer()
	b.ReportMetric(median(grantUS), "server-cpu-µs/grant")
	b.ReportMetric(median(echoUS), "echo-cpu-µs/roundtrip")
	b.ReportMetric(median(ratios), "ratio")
	b.ReportMetric(median(grantRates), "grants/s")
	b.ReportMetric(median(echoRates), "echo-roundtrips/s")
	b.ReportMetric(median(clientUS), "client-cpu-µs/grant")
	b.ReportMetric(0, "ns/op")
}

// echoHandler is a bare coder/websocket echo server: every message goes
// back as it came.
func echoHandler(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	ctx := context.Background()
	for {
		typ, data, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, data); err != nil {
			return
		}
	}
}

// serveBench serves h on loopback until the benchmark ends and returns
// the lease WebSocket's URL on it.
func serveBench(b *testing.B, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{Handler: h}
	go hs.Serve(ln)
	b.Cleanup(func() { hs.Close() })
	return "ws://" + ln.Addr().String() + "/api/v1/leases/ws"
}

// phase is one run of the client process: ops done in elapsed, costing
// this process cpu and the clients' process clientCPU.
type phase struct {
	ops                     int
	elapsed, cpu, clientCPU time.Duration
	reads, writes           int64 // this process's system calls
	queued                  int64 // queue positions the clients got
}

func (p phase) perOp(n int64) float64 { return float64(n) / float64(p.ops) }

func (p phase) cpuPerOp() float64 { return float64(p.cpu.Nanoseconds()) / 1e3 / float64(p.ops) }
func (p phase) clientPerOp() float64 {
	return float64(p.clientCPU.Nanoseconds()) / 1e3 / float64(p.ops)
}
func (p phase) rate() float64 { return float64(p.ops) / p.elapsed.Seconds() }

// runClients starts the client process in mode against url, lets it dial
// its connections, then measures this process's CPU while it runs.
func runClients(b *testing.B, mode, url string, clients, per int, prof *os.File) phase {
	b.Helper()
	cp := startClientProc(b, mode, url, clients, per)
	defer cp.stop()
	cp.await(b, "READY")
	if prof != nil {
		pprof.StartCPUProfile(prof)
	}
	cpu0 := selfCPU()
	r0, w0 := selfSyscalls(b)
	start := time.Now()
	cp.say(b, "GO")
	done := cp.await(b, "DONE")
	elapsed := time.Since(start)
	cpu := selfCPU() - cpu0
	r1, w1 := selfSyscalls(b)
	if prof != nil {
		pprof.StopCPUProfile()
	}
	f := strings.Fields(done)
	if len(f) != 3 {
		b.Fatalf("client process: %q", done)
	}
	ops, _ := strconv.Atoi(f[0])
	ccpu, _ := time.ParseDuration(f[1])
	queued, _ := strconv.ParseInt(f[2], 10, 64)
	if ops != clients*per {
		b.Fatalf("client process did %d operations, want %d", ops, clients*per)
	}
	return phase{ops: ops, elapsed: elapsed, cpu: cpu, clientCPU: ccpu, reads: r1 - r0, writes: w1 - w0, queued: queued}
}

// selfSyscalls returns how many read and write system calls this process
// made (/proc/self/io: syscr, syscw).
func selfSyscalls(b *testing.B) (reads, writes int64) {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, _ := strings.Cut(line, ": ")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "syscr":
			reads = n
		case "syscw":
			writes = n
		}
	}
	return reads, writes
}

const benchClientEnv = "FORGE_LEASE_BENCH_CLIENT"

// clientProc is the client process: it says READY when its connections
// are open, runs on GO, says DONE with its count and CPU, and exits when
// its stdin closes.
type clientProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

func startClientProc(b *testing.B, mode, url string, clients, per int) *clientProc {
	b.Helper()
	cmd, stdin, stdout := startTestProc(b, "TestBenchClientProcess", fmt.Sprintf("%s=%s %s %d %d", benchClientEnv, mode, url, clients, per))
	p := &clientProc{cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	return p
}

func (p *clientProc) say(b *testing.B, line string) {
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		b.Fatalf("client process: %v", err)
	}
}

// await returns what follows word on the client process's next line
// starting with it; other lines are logged.
func (p *clientProc) await(b *testing.B, word string) string {
	b.Helper()
	deadline := time.After(5 * time.Minute)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				b.Fatalf("client process ended before %s", word)
			}
			if rest, ok := strings.CutPrefix(line, word); ok {
				return strings.TrimSpace(rest)
			}
			if strings.HasPrefix(line, "FAIL") || strings.Contains(line, "client process:") {
				b.Log(line)
			}
		case <-deadline:
			b.Fatalf("client process: no %s within 5 minutes", word)
		}
	}
}

func (p *clientProc) stop() {
	p.stdin.Close()
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

// TestBenchClientProcess is the benchmarks' client process; it does
// nothing in a normal run. Its clients are ordinary coder/websocket
// clients, one connection each, that speak docs/leases.md's JSON.
func TestBenchClientProcess(t *testing.T) {
	spec := os.Getenv(benchClientEnv)
	if spec == "" {
		t.Skip("only runs as the client process of the benchmarks")
	}
	var mode, url string
	var clients, per int
	if _, err := fmt.Sscanf(spec, "%s %s %d %d", &mode, &url, &clients, &per); err != nil {
		t.Fatalf("%s=%q: %v", benchClientEnv, spec, err)
	}
	raiseFileLimit(t, uint64(clients)+200)
	ctx := context.Background()
	conns := make([]*websocket.Conn, clients)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	var failed sync.Once
	fail := func(err error) { failed.Do(func() { fmt.Printf("client process: %v\n", err); os.Exit(1) }) }
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, _, err := websocket.Dial(ctx, url, nil)
			if err != nil {
				fail(err)
			}
			if mode != "echo" {
				if m, err := readMsg(ctx, c); err != nil || m.Type != "hello" {
					fail(fmt.Errorf("hello: %v %+v", err, m))
				}
			}
			if mode == "idle" {
				// Hold one lease, and keep reading so that the library
				// answers the server's pings.
				if err := holdOne(ctx, c, i); err != nil {
					fail(err)
				}
				go func() {
					for {
						if _, _, err := c.Read(ctx); err != nil {
							lostConns.Add(1)
							return
						}
					}
				}()
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("READY")
	if mode == "idle" {
		// "LOST" asks how many connections ended (the server dropped
		// them: they were to stay open).
		for in.Scan() {
			if in.Text() == "LOST" {
				fmt.Printf("LOST %d\n", lostConns.Load())
			}
		}
		return
	}
	if !in.Scan() || in.Text() != "GO" {
		return
	}
	cpu0 := selfCPU()
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			switch mode {
			case "echo":
				err = echoLoop(ctx, c, i, per)
			case "lease":
				err = leaseLoop(ctx, c, i, per, false)
			case "lease-pipelined":
				err = leaseLoop(ctx, c, i, per, true)
			default:
				err = fmt.Errorf("unknown mode %q", mode)
			}
			if err != nil {
				fail(fmt.Errorf("client %d: %w", i, err))
			}
		}()
	}
	wg.Wait()
	fmt.Printf("DONE %d %s %d\n", clients*per, selfCPU()-cpu0, queuedSeen.Load())
	for in.Scan() {
	}
	for _, c := range conns {
		c.CloseNow()
	}
}

// lostConns counts the idle clients' connections that ended.
var lostConns atomic.Int64

// queuedSeen counts the queue positions the client process got.
var queuedSeen atomic.Int64

// clientMsg is what the clients read of a server message.
type clientMsg struct {
	Type    string `json:"type"`
	ID      string `json:"id"`
	Lease   string `json:"lease"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func readMsg(ctx context.Context, c *websocket.Conn) (clientMsg, error) {
	var m clientMsg
	_, data, err := c.Read(ctx)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("%q: %w", data, err)
	}
	if m.Type == "error" {
		return m, fmt.Errorf("server error: %s", data)
	}
	return m, nil
}

// expectMsg reads until a message of type typ; queue positions may come
// before it.
func expectMsg(ctx context.Context, c *websocket.Conn, typ string) (clientMsg, error) {
	for {
		m, err := readMsg(ctx, c)
		if err != nil || m.Type == typ {
			return m, err
		}
		if m.Type != "queued" {
			return m, fmt.Errorf("got %q, want %q", m.Type, typ)
		}
		queuedSeen.Add(1)
	}
}

func acquireMsg(i int) []byte {
	return fmt.Appendf(nil, `{"type":"acquire","id":"r%d","holder":"bench %d","requests":[{"pool":"bench","count":1}]}`, i, i)
}

func echoLoop(ctx context.Context, c *websocket.Conn, i, per int) error {
	msg := acquireMsg(i) // the size of a lease message
	for k := 0; k < per; k++ {
		if err := c.Write(ctx, websocket.MessageText, msg); err != nil {
			return err
		}
		_, data, err := c.Read(ctx)
		if err != nil {
			return err
		}
		if len(data) != len(msg) {
			return fmt.Errorf("echo: got %q, want %q", data, msg)
		}
	}
	return nil
}

func leaseLoop(ctx context.Context, c *websocket.Conn, i, per int, pipeline bool) error {
	acq := acquireMsg(i)
	if err := c.Write(ctx, websocket.MessageText, acq); err != nil {
		return err
	}
	for k := 0; k < per; k++ {
		g, err := expectMsg(ctx, c, "granted")
		if err != nil {
			return err
		}
		if err := c.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"type":"release","lease":%q}`, g.Lease)); err != nil {
			return err
		}
		next := k+1 < per
		if pipeline && next {
			if err := c.Write(ctx, websocket.MessageText, acq); err != nil {
				return err
			}
		}
		if m, err := expectMsg(ctx, c, "released"); err != nil || m.Lease != g.Lease {
			return fmt.Errorf("release of %s: %v %+v", g.Lease, err, m)
		}
		if !pipeline && next {
			if err := c.Write(ctx, websocket.MessageText, acq); err != nil {
				return err
			}
		}
	}
	return nil
}

// holdOne acquires one resource on c for client i.
func holdOne(ctx context.Context, c *websocket.Conn, i int) error {
	if err := c.Write(ctx, websocket.MessageText, acquireMsg(i)); err != nil {
		return err
	}
	_, err := expectMsg(ctx, c, "granted")
	return err
}

// raiseFileLimit lifts this process's open file limit to at least n, or
// fails the test.
func raiseFileLimit(t testing.TB, n uint64) {
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

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkLeaseIdle: 10,000 connections, each holding a lease, idle; the
// server runs in a child process (this test binary re-executed) and the
// clients in another (coder/websocket clients that keep reading, so their
// library answers the server's pings). The server's resident memory
// (VmRSS) is sampled every second for FORGE_LEASE_IDLE_WINDOW (default
// 20s; 10m for the ten minutes) once every client holds its
// lease; reported: RSS at the start and end of the window, its peak, and
// its slope (least squares, MiB per minute):
//
//	go test -run '^$' -bench LeaseIdle -benchtime 1x ./internal/lease/leasehttp
//	FORGE_LEASE_IDLE_WINDOW=10m go test -run '^$' -bench LeaseIdle -benchtime 1x -timeout 30m ./internal/lease/leasehttp
func BenchmarkLeaseIdle(b *testing.B) {
	conns := envInt("FORGE_LEASE_IDLE_CONNS", 10000)
	window := 20 * time.Second
	if w := os.Getenv("FORGE_LEASE_IDLE_WINDOW"); w != "" {
		d, err := time.ParseDuration(w)
		if err != nil {
			b.Fatalf("FORGE_LEASE_IDLE_WINDOW=%q: %v", w, err)
		}
		window = d
	}
	// Both children inherit this process's raised limit.
	raiseFileLimit(b, uint64(conns)+500)
	p := startServerProc(b, fmt.Sprintf("pools: {bench: {range: 1-%d}}", conns))
	cp := startClientProc(b, "idle", p.url, conns, 1)
	defer cp.stop()
	cp.await(b, "READY")
	b.ResetTimer()
	start := time.Now()
	var ts, rss []float64
	logEvery, logged := window/10, time.Duration(-1)
	for {
		now, _ := p.rss(b)
		t := time.Since(start)
		ts, rss = append(ts, t.Minutes()), append(rss, now)
		if t >= window {
			break
		}
		if t/logEvery != logged {
			logged = t / logEvery
			b.Logf("%5s idle: RSS %.1f MiB", t.Round(time.Second), now)
		}
		time.Sleep(time.Second)
	}
	b.StopTimer()
	cp.say(b, "LOST")
	lost, _ := strconv.Atoi(cp.await(b, "LOST"))
	_, peak := p.rss(b)
	b.Logf("server process after %s idle: %s", window, p.memStats(b))
	b.ReportMetric(rss[0], "start-rss-MiB")
	b.ReportMetric(rss[len(rss)-1], "end-rss-MiB")
	b.ReportMetric(slices.Max(rss), "max-rss-MiB")
	b.ReportMetric(peak, "peak-rss-MiB")
	b.ReportMetric(slope(ts, rss), "rss-MiB/min")
	b.ReportMetric(float64(lost), "lost-connections")
	b.ReportMetric(0, "ns/op")
}

// slope is the least-squares slope of ys over xs.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx, sy, sxx, sxy = sx+xs[i], sy+ys[i], sxx+xs[i]*xs[i], sxy+xs[i]*ys[i]
	}
	if d := n*sxx - sx*sx; d != 0 {
		return (n*sxy - sx*sy) / d
	}
	return 0
}
