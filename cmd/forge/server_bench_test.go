package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkServerWebhookToFirstCommand measures, on the real forge server
// (SQLite, local backend, repository cloned from a local path), the time
// from sending a signed pull_request delivery to the first command of its
// build running: the command writes the clock to a file. Each delivery is
// a new pull request, so none supersedes another. It reports p50 and p90
// over 30 deliveries; the target is p50 < 250 ms.
//
//	go test -run='^$' -bench=ServerWebhookToFirstCommand -benchtime=1x -count=5 ./cmd/forge
func BenchmarkServerWebhookToFirstCommand(b *testing.B) {
	marks := b.TempDir()
	repo, sha := e2eRepo(b, fmt.Sprintf("execute:\n  - date +%%s%%N > %s/$FORGE_PULL_REQUEST\n", marks))
	p := e2eStartServer(b, b.TempDir())
	client := &http.Client{}
	// The first delivery clones the repository into the mirror.
	if st, err := e2eDeliver(client, p.url, "pull_request", "warm", e2ePrPayload(b, "opened", repo, sha, 1)); err != nil || st != 202 {
		b.Fatalf("delivery: %d %v", st, err)
	}
	waitFile(b, filepath.Join(marks, "1"))
	const n = 30
	for i := 0; i < b.N; i++ {
		var lat []time.Duration
		for k := 0; k < n; k++ {
			pr := 1000*(i+1) + k
			payload := e2ePrPayload(b, "opened", repo, sha, pr)
			sent := time.Now()
			if st, err := e2eDeliver(client, p.url, "pull_request", fmt.Sprintf("lat-%d-%d", i, k), payload); err != nil || st != 202 {
				b.Fatalf("delivery: %d %v", st, err)
			}
			ran := waitFile(b, filepath.Join(marks, strconv.Itoa(pr)))
			lat = append(lat, ran.Sub(sent))
		}
		slices.Sort(lat)
		b.ReportMetric(float64(lat[n/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[n*9/10].Microseconds())/1000, "p90-ms")
	}
	p.stop(b)
}

// waitFile waits for path to hold a date +%s%N stamp and returns it.
func waitFile(b *testing.B, path string) time.Time {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, err := os.ReadFile(path)
		if err == nil && strings.HasSuffix(string(data), "\n") {
			ns, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
			if err != nil {
				b.Fatalf("%s: %q", path, data)
			}
			return time.Unix(0, ns)
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s did not appear within 30s", path)
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkServerIdleRSS starts the real forge server (SQLite, no pools)
// and reports its resident memory after it has been idle for two seconds,
// having served one API request. The target is under 40 MB.
//
//	go test -run='^$' -bench=ServerIdleRSS -benchtime=1x -count=5 ./cmd/forge
func BenchmarkServerIdleRSS(b *testing.B) {
	for i := 0; i < b.N; i++ {
		p := e2eStartServer(b, b.TempDir())
		if st := e2eApiCall(b, "GET", p.url+"/api/v1/repos", "", nil); st != 200 {
			b.Fatalf("repos: %d", st)
		}
		time.Sleep(2 * time.Second)
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
		if err != nil {
			b.Fatal(err)
		}
		var kb float64
		for _, line := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(line, "VmRSS:") {
				fmt.Sscanf(strings.TrimPrefix(line, "VmRSS:"), "%f", &kb)
			}
		}
		if kb == 0 {
			b.Fatalf("no VmRSS in %s", status)
		}
		b.ReportMetric(kb/1024, "RSS-MB")
		p.stop(b)
	}
}
