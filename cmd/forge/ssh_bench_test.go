package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// BenchmarkServerSSH measures the API over SSH of the real forge server
// (SQLite): on one open connection, the latency of GET /builds?repo=...
// in newline-delimited mode, one request at a time (target p50 < 5 ms);
// then 100 connections, each with a session open at once, each sending 20
// requests, all answered (reported: p50 and p99 latency under that load
// and the wall time).
//
//	go test -run='^$' -bench=ServerSSH -benchtime=1x -count=3 ./cmd/forge
func BenchmarkServerSSH(b *testing.B) {
	repo, sha := e2eRepo(b, "execute:\n  - true\n")
	dir := b.TempDir()
	key := newSSHTestKey(b, dir, "bench")
	keys := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(keys, []byte(key.line+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	data := b.TempDir()
	p := e2eStartServer(b, data, "FORGE_SSH_ADDR=127.0.0.1:0", "FORGE_SSH_AUTHORIZED_KEYS="+keys, "FORGE_SSH_MAX_CONNS_PER_KEY=200")
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "bench-1", e2ePrPayload(b, "opened", repo, sha, 1)); err != nil || st != 202 {
		b.Fatalf("delivery: %d %v", st, err)
	}
	e2eWaitBuild(b, p, 1, 60*time.Second, e2eBuildDone)
	addr := sshAddrOf(b, p)
	cfg := &gossh.ClientConfig{User: "forge", Auth: []gossh.AuthMethod{gossh.PublicKeys(key.signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 60 * time.Second}
	const req = `{"id": %d, "verb": "GET", "resource": "/builds?repo=Codertocat/Hello-World"}` + "\n"

	// session opens a newline-delimited session; ask sends one request
	// and waits for its answer.
	session := func(c *gossh.Client) (ask func(id int) time.Duration, end func()) {
		s, err := c.NewSession()
		if err != nil {
			b.Fatal(err)
		}
		in, _ := s.StdinPipe()
		out, _ := s.StdoutPipe()
		if err := s.Shell(); err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		ask = func(id int) time.Duration {
			start := time.Now()
			fmt.Fprintf(in, req, id)
			if !sc.Scan() {
				b.Fatalf("no answer: %v", sc.Err())
			}
			var r struct{ Code int }
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil || r.Code != 200 {
				b.Fatalf("answer %s: %v", sc.Text(), err)
			}
			return time.Since(start)
		}
		return ask, func() { in.Close(); _ = s.Wait() }
	}
	pct := func(d []time.Duration, q float64) float64 {
		slices.Sort(d)
		return float64(d[int(float64(len(d)-1)*q)].Microseconds()) / 1000
	}

	for i := 0; i < b.N; i++ {
		c, err := gossh.Dial("tcp", addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		ask, end := session(c)
		ask(0) // warm
		var lat []time.Duration
		for k := range 200 {
			lat = append(lat, ask(k))
		}
		end()
		c.Close()
		b.ReportMetric(pct(lat, 0.5), "p50-ms")
		b.ReportMetric(pct(lat, 0.9), "p90-ms")

		// 100 connections with a session each, all open together.
		const conns, each = 100, 20
		var mu sync.Mutex
		var all []time.Duration
		var ready, wg sync.WaitGroup
		gate := make(chan struct{})
		start := time.Now()
		ready.Add(conns)
		for range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := gossh.Dial("tcp", addr, cfg)
				if err != nil {
					b.Error(err)
					ready.Done()
					return
				}
				defer c.Close()
				ask, end := session(c)
				ready.Done()
				<-gate
				var mine []time.Duration
				for k := range each {
					mine = append(mine, ask(k))
				}
				end()
				mu.Lock()
				all = append(all, mine...)
				mu.Unlock()
			}()
		}
		ready.Wait()
		connected := time.Since(start)
		close(gate)
		wg.Wait()
		if len(all) != conns*each {
			b.Fatalf("%d of %d requests answered", len(all), conns*each)
		}
		b.ReportMetric(connected.Seconds(), "connect100-s")
		b.ReportMetric(pct(all, 0.5), "p50-100sess-ms")
		b.ReportMetric(pct(all, 0.99), "p99-100sess-ms")
	}
	p.stop(b)
}
