package leasehttp

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
)

// The benchmarks run the server in a child process (this test binary
// re-executed with FORGE_LEASE_BENCH_SERVER set) so that its CPU time and
// resident memory are measured apart from the clients'.
//
//	go test -run='^$' -bench=. -benchtime=1x ./internal/lease

const benchServerEnv = "FORGE_LEASE_BENCH_SERVER"

// TestBenchServerProcess is the child: it serves the pools given in the
// environment until its stdin closes. It does nothing in a normal run.
func TestBenchServerProcess(t *testing.T) {
	cfg := os.Getenv(benchServerEnv)
	if cfg == "" {
		t.Skip("only runs as the server process of the benchmarks")
	}
	pools, _ := poolsFromYAML(t, cfg)
	var mopts lease.MemoryOptions
	if d := os.Getenv("FORGE_LEASE_BENCH_POSITIONS"); d != "" {
		mopts.PositionInterval, _ = time.ParseDuration(d)
	}
	m, err := lease.NewMemory(pools, mopts)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if r := os.Getenv("FORGE_LEASE_BENCH_RATE"); r != "" {
		opts.MessageRate, _ = strconv.ParseFloat(r, 64)
	}
	s := NewServer(m, opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: s.Handler()}
	go hs.Serve(ln)
	if f := os.Getenv("FORGE_LEASE_BENCH_CPU"); f != "" {
		if out, err := os.Create(f); err == nil {
			pprof.StartCPUProfile(out)
			defer func() { pprof.StopCPUProfile(); out.Close() }()
		}
	}
	fmt.Printf("ADDR %s\n", ln.Addr())
	// The parent asks for memory figures with "stats" and closes stdin to
	// stop us.
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "stats" {
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if f := os.Getenv("FORGE_LEASE_BENCH_HEAP"); f != "" {
				if out, err := os.Create(f); err == nil {
					pprof.WriteHeapProfile(out)
					out.Close()
				}
			}
			fmt.Printf("STATS heap-inuse=%.1fMiB stack-inuse=%.1fMiB sys=%.1fMiB goroutines=%d\n",
				float64(ms.HeapInuse)/(1<<20), float64(ms.StackInuse)/(1<<20), float64(ms.Sys)/(1<<20), runtime.NumGoroutine())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.Shutdown(ctx)
	hs.Shutdown(ctx)
	m.Close()
}

type serverProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	url   string
	stats chan string
}

// memStats asks the server process for its Go memory figures.
func (p *serverProc) memStats(b *testing.B) string {
	if _, err := io.WriteString(p.stdin, "stats\n"); err != nil {
		b.Fatal(err)
	}
	select {
	case s := <-p.stats:
		return s
	case <-time.After(10 * time.Second):
		b.Fatal("no stats from the server process")
	}
	return ""
}

func startServerProc(b *testing.B, cfg string, env ...string) *serverProc {
	b.Helper()
	cmd, stdin, stdout := startTestProc(b, "TestBenchServerProcess", append([]string{benchServerEnv + "=" + cfg}, env...)...)
	p := &serverProc{cmd: cmd, stdin: stdin}
	b.Cleanup(p.stop)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if addr, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			p.url = "ws://" + addr + "/api/v1/leases/ws"
			p.stats = make(chan string, 1)
			go func() {
				for sc.Scan() {
					if s, ok := strings.CutPrefix(sc.Text(), "STATS "); ok {
						p.stats <- s
					}
				}
			}()
			return p
		}
	}
	b.Fatalf("server process gave no address")
	return nil
}

// startTestProc starts this test binary again to run only the test
// called name, with env added to the environment, and returns its stdin
// and stdout.
func startTestProc(b *testing.B, name string, env ...string) (*exec.Cmd, io.WriteCloser, io.ReadCloser) {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return cmd, stdin, stdout
}

func (p *serverProc) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	p.stdin.Close()
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

// cpu returns the process's user+system CPU time.
func (p *serverProc) cpu(b *testing.B) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name in parentheses; utime and stime are
	// the 14th and 15th fields overall.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

// selfCPU returns this process's user+system CPU time (the clients').
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rss returns VmRSS (now) and VmHWM (peak) of the process, in MiB.
func (p *serverProc) rss(b *testing.B) (now, peak float64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "VmRSS:" || f[0] == "VmHWM:") {
			kb, _ := strconv.ParseFloat(f[1], 64)
			if f[0] == "VmRSS:" {
				now = kb / 1024
			} else {
				peak = kb / 1024
			}
		}
	}
	return now, peak
}

// benchConn is a minimal raw WebSocket client for benchmarks: several
// messages go out in one write, frames are read from one buffer, and the
// type and lease are picked out of the server's messages without a full
// JSON decode, so the clients leave as much CPU as possible to the server.
// It answers the server's pings while reading.
type benchConn struct {
	nc  net.Conn
	br  *bufio.Reader
	mu  sync.Mutex // writes
	out []byte
	buf []byte
}

func benchDial(ctx context.Context, url string) (*benchConn, error) {
	hostPath := strings.TrimPrefix(url, "ws://")
	host, path, _ := strings.Cut(hostPath, "/")
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(nc, "GET /%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path, host)
	br := bufio.NewReaderSize(nc, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		nc.Close()
		return nil, fmt.Errorf("handshake: %s", resp.Status)
	}
	c := &benchConn{nc: nc, br: br}
	if m, err := c.read(ctx); err != nil || m.Type != wire.TypeHello {
		nc.Close()
		return nil, fmt.Errorf("hello: %v %+v", err, m)
	}
	return c, nil
}

func (c *benchConn) close() { c.nc.Close() }

// frame appends a masked client frame (a zero mask key: valid framing,
// and no masking work) of opcode op.
func appendFrame(b []byte, op byte, p string) []byte {
	b = append(b, 0x80|op)
	switch n := len(p); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	default:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	}
	b = append(b, 0, 0, 0, 0)
	return append(b, p...)
}

// write sends messages in one system call.
func (c *benchConn) write(_ context.Context, msgs ...string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out = c.out[:0]
	for _, m := range msgs {
		c.out = appendFrame(c.out, 1, m)
	}
	_, err := c.nc.Write(c.out)
	return err
}

// read returns the next text message, answering pings on the way.
func (c *benchConn) read(_ context.Context) (*wire.Message, error) {
	for {
		var h [2]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return nil, err
		}
		n := int(h[1] & 0x7f)
		switch n {
		case 126:
			var l [2]byte
			if _, err := io.ReadFull(c.br, l[:]); err != nil {
				return nil, err
			}
			n = int(l[0])<<8 | int(l[1])
		case 127:
			var l [8]byte
			if _, err := io.ReadFull(c.br, l[:]); err != nil {
				return nil, err
			}
			n = int(l[6])<<8 | int(l[7]) | int(l[5])<<16
		}
		if cap(c.buf) < n {
			c.buf = make([]byte, n)
		}
		c.buf = c.buf[:n]
		if _, err := io.ReadFull(c.br, c.buf); err != nil {
			return nil, err
		}
		switch h[0] & 0x0f {
		case 9: // ping: pong with the same payload
			c.mu.Lock()
			c.out = appendFrame(c.out[:0], 0xA, string(c.buf))
			_, err := c.nc.Write(c.out)
			c.mu.Unlock()
			if err != nil {
				return nil, err
			}
			continue
		case 8:
			return nil, io.EOF
		case 1:
		default:
			continue
		}
		m := &wire.Message{Type: field(c.buf, "type"), Lease: field(c.buf, "lease")}
		if m.Type == wire.TypeError {
			return nil, fmt.Errorf("server error: %s", c.buf)
		}
		return m, nil
	}
}

// field returns the string value of "name" in a flat JSON object the
// server wrote (its fields need no unescaping).
func field(data []byte, name string) string {
	key := []byte(`"` + name + `":"`)
	i := bytes.Index(data, key)
	if i < 0 {
		return ""
	}
	rest := data[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}

// expect reads until a message of type typ, skipping queue updates.
func (c *benchConn) expect(ctx context.Context, typ string) (*wire.Message, error) {
	for {
		m, err := c.read(ctx)
		if err != nil {
			return nil, err
		}
		if m.Type == typ {
			return m, nil
		}
		if m.Type != wire.TypeQueued && m.Type != wire.TypeReleased {
			return nil, fmt.Errorf("got %+v, want %s", m, typ)
		}
	}
}

// BenchmarkThroughput: 1,000 clients on persistent connections loop
// acquire(1) → release against a pool of 100. b.N is the total number of
// grants. Reports grants/s and the server process's CPU and memory.
// FORGE_LEASE_BENCH_POSITIONS sets the server's queue-position interval
// (e.g. 1h to see the cost of position updates).
func BenchmarkThroughput(b *testing.B) {
	const clients = 1000
	p := startServerProc(b, "pools: {bench: {range: 1-100}}", "FORGE_LEASE_BENCH_POSITIONS="+os.Getenv("FORGE_LEASE_BENCH_POSITIONS"))
	ctx := context.Background()
	conns := make([]*benchConn, clients)
	var dialWG sync.WaitGroup
	sem := make(chan struct{}, 50)
	for i := range conns {
		dialWG.Add(1)
		sem <- struct{}{}
		go func() {
			defer dialWG.Done()
			defer func() { <-sem }()
			c, err := benchDial(ctx, p.url)
			if err != nil {
				b.Error(err)
				return
			}
			conns[i] = c
		}()
	}
	dialWG.Wait()
	if b.Failed() {
		return
	}
	n := max(b.N, 20*clients) // at least 20 rounds per client for a steady state
	per := n / clients
	cpu0 := p.cpu(b)
	self0 := selfCPU()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			acq := fmt.Sprintf(`{"type":"acquire","id":"r%d","requests":[{"pool":"bench","count":1}]}`, i)
			if err := c.write(ctx, acq); err != nil {
				b.Error(err)
				return
			}
			for k := 0; k < per; k++ {
				g, err := c.expect(ctx, wire.TypeGranted)
				if err != nil {
					b.Error(err)
					return
				}
				// Release and ask again at once, in one write; the server
				// answers in order.
				rel := `{"type":"release","lease":"` + g.Lease + `"}`
				var err2 error
				if k+1 < per {
					err2 = c.write(ctx, rel, acq)
				} else {
					err2 = c.write(ctx, rel)
				}
				if err2 != nil {
					b.Error(err2)
					return
				}
			}
			if _, err := c.expect(ctx, wire.TypeReleased); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := p.cpu(b) - cpu0
	self := selfCPU() - self0
	rss, peak := p.rss(b)
	total := per * clients
	b.ReportMetric(float64(total)/elapsed.Seconds(), "grants/s")
	b.ReportMetric(cpu.Seconds()/elapsed.Seconds(), "server-cpu-cores")
	b.ReportMetric(self.Seconds()/elapsed.Seconds(), "client-cpu-cores")
	b.ReportMetric(float64(cpu.Microseconds())/float64(total), "server-cpu-µs/grant")
	b.ReportMetric(rss, "server-rss-MiB")
	b.ReportMetric(peak, "server-peak-rss-MiB")
	b.ReportMetric(0, "ns/op")
	for _, c := range conns {
		c.close()
	}
}

// BenchmarkGrantLatency: one client, a free resource: time from sending
// acquire to receiving granted. Reports p50 and p99. The one client loops
// flat out, far above the per-connection message rate limit (5,000/s)
// that would otherwise pace it, so the limit is lifted for this run.
func BenchmarkGrantLatency(b *testing.B) {
	p := startServerProc(b, "pools: {bench: {range: 1-100}}", "FORGE_LEASE_BENCH_RATE=1000000")
	ctx := context.Background()
	c, err := benchDial(ctx, p.url)
	if err != nil {
		b.Fatal(err)
	}
	defer c.close()
	n := max(b.N, 5000)
	lat := make([]time.Duration, 0, n)
	b.ResetTimer()
	for i := 0; i < n; i++ {
		start := time.Now()
		if err := c.write(ctx, `{"type":"acquire","id":"r","requests":[{"pool":"bench"}]}`); err != nil {
			b.Fatal(err)
		}
		g, err := c.expect(ctx, wire.TypeGranted)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		if err := c.write(ctx, `{"type":"release","lease":"`+g.Lease+`"}`); err != nil {
			b.Fatal(err)
		}
		if _, err := c.expect(ctx, wire.TypeReleased); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkIdleConnections: 10,000 connections each holding a lease; the
// server process's resident memory.
func BenchmarkIdleConnections(b *testing.B) {
	const conns = 10000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	if lim.Cur < 2*conns+500 {
		lim.Cur = min(lim.Max, 2*conns+1000)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			b.Fatalf("raise the open file limit: %v", err)
		}
	}
	if lim.Cur < conns+200 {
		b.Skipf("open file limit %d is too low for %d connections", lim.Cur, conns)
	}
	// FORGE_LEASE_BENCH_GOMEMLIMIT passes a soft memory limit to the
	// server process (the runtime's GOMEMLIMIT), to measure how a server
	// configured with one fares; by default the server runs with the Go
	// defaults.
	var env []string
	if l := os.Getenv("FORGE_LEASE_BENCH_GOMEMLIMIT"); l != "" {
		env = append(env, "GOMEMLIMIT="+l)
	}
	p := startServerProc(b, fmt.Sprintf("pools: {bench: {range: 1-%d}}", conns), env...)
	_, base := p.rss(b)
	ctx := context.Background()
	cs := make([]*benchConn, conns)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range cs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := benchDial(ctx, p.url)
			if err != nil {
				b.Error(err)
				return
			}
			if err := c.write(ctx, fmt.Sprintf(`{"type":"acquire","id":"r%d","holder":"idle %d","requests":[{"pool":"bench"}]}`, i, i)); err != nil {
				b.Error(err)
				return
			}
			if _, err := c.expect(ctx, wire.TypeGranted); err != nil {
				b.Error(err)
				return
			}
			cs[i] = c
			// Keep reading so the library answers the server's pings.
			go func() {
				for {
					if _, err := c.read(context.Background()); err != nil {
						return
					}
				}
			}()
		}()
		if b.Failed() {
			break
		}
	}
	wg.Wait()
	defer func() {
		for _, c := range cs {
			if c != nil {
				c.close()
			}
		}
	}()
	if b.Failed() {
		return
	}
	// Idle through a keepalive period so pings have run.
	time.Sleep(6 * time.Second)
	b.Logf("server process: %s", p.memStats(b))
	rss, peak := p.rss(b)
	b.ReportMetric(rss, "server-rss-MiB")
	b.ReportMetric(peak, "server-peak-rss-MiB")
	b.ReportMetric(base, "server-start-rss-MiB")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkPipelinedMessages: one client sends pings back to back,
// without waiting for answers (at least 26,000: the burst and five
// seconds at the documented rate), while it reads the pongs. With the
// server's default limits it reports the rate the server reads one
// connection at (docs/leases.md: 5,000 messages/s); with
// FORGE_LEASE_BENCH_RATE=1000000 the limit is lifted, and it shows how far
// above the documented rate one connection could go. Either way it
// reports the server's CPU per message.
func BenchmarkPipelinedMessages(b *testing.B) {
	p := startServerProc(b, "pools: {bench: {range: 1-1}}", "FORGE_LEASE_BENCH_RATE="+os.Getenv("FORGE_LEASE_BENCH_RATE"))
	ctx := context.Background()
	c, err := benchDial(ctx, p.url)
	if err != nil {
		b.Fatal(err)
	}
	defer c.close()
	n := max(b.N, 26000)
	got := make(chan error, 1)
	cpu0 := p.cpu(b)
	b.ResetTimer()
	start := time.Now()
	go func() {
		for i := 0; i < n; i++ {
			m, err := c.read(ctx)
			if err != nil {
				got <- err
				return
			}
			if m.Type != wire.TypePong {
				got <- fmt.Errorf("got %+v, want pong", m)
				return
			}
		}
		got <- nil
	}()
	batch := make([]string, 100)
	for i := 0; i < n; i += len(batch) {
		for j := range batch {
			batch[j] = fmt.Sprintf(`{"type":"ping","id":"p%d"}`, i+j)
		}
		if err := c.write(ctx, batch[:min(len(batch), n-i)]...); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-got; err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := p.cpu(b) - cpu0
	b.ReportMetric(float64(n)/elapsed.Seconds(), "messages/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(n), "server-cpu-µs/message")
	b.ReportMetric(0, "ns/op")
}
