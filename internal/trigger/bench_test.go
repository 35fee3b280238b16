package trigger_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forgeci/forge/internal/github/githubtest"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/git"
	"github.com/forgeci/forge/internal/github"
	"github.com/forgeci/forge/internal/sqldb"
	"github.com/forgeci/forge/internal/trigger"
)

// BenchmarkDeliveries measures how fast deliveries become builds: 6,000
// pushes to the default branches of 20 local repositories (300 commits
// each, every push a new commit), on SQLite in a file (WAL,
// synchronous=FULL), with real git mirrors. The target is at least 200
// deliveries per second, sustained.
//
//	go test -run='^$' -bench=Deliveries -benchtime=1x -count=3 ./internal/trigger
//
// burst: all 6,000 are pending when the processor starts (a backlog after
// an outage); it reports deliveries/s over the whole drain and the
// lowest rate over any 5 seconds of it (min-5s-rate).
// paced: they arrive at 200/s while the processor runs, each stored in its
// own transaction and followed by a Notify, as the webhook handler does;
// it reports the delivery-to-build latency and the largest backlog.
// TRIGGER_BENCH_BATCH and TRIGGER_BENCH_PARALLEL override Options.Batch
// and Options.Parallel, to compare settings.
func BenchmarkDeliveries(b *testing.B) {
	const repos, perRepo = 20, 300
	ups := make([]*benchRepo, repos)
	var wg sync.WaitGroup
	for i := range ups {
		wg.Go(func() { ups[i] = newBenchRepo(b, fmt.Sprintf("app%02d", i), perRepo) })
	}
	wg.Wait()
	payloads := benchPayloads(b, ups)
	b.Run("burst", func(b *testing.B) {
		for range b.N {
			benchBurst(b, payloads)
		}
	})
	b.Run("paced-200", func(b *testing.B) {
		for range b.N {
			benchPaced(b, payloads, 200)
		}
	})
}

// benchRepo is a local repository with a chain of commits on master, each
// with the same spec and a file of its own.
type benchRepo struct {
	name, dir string
	shas      []string
}

func newBenchRepo(b *testing.B, name string, commits int) *benchRepo {
	r := &benchRepo{name: name, dir: b.TempDir()}
	run := func(stdin []byte, args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Dir = r.dir
		cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+r.dir)
		cmd.Stdin = bytes.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run(nil, "init", "--quiet", "--initial-branch=master")
	// fast-import makes the whole history in one process.
	var s bytes.Buffer
	fmt.Fprintf(&s, "blob\nmark :1\ndata %d\n%s\n", len(dagSpec), dagSpec)
	for i := range commits {
		msg := fmt.Sprintf("change %d", i)
		file := fmt.Sprintf("%s %d\n", name, i)
		fmt.Fprintf(&s, "commit refs/heads/master\ncommitter Dev <dev@example.com> %d +0000\ndata %d\n%s\n", 1700000000+i, len(msg), msg)
		if i == 0 {
			s.WriteString("M 100644 :1 .forge.yml\n")
		}
		fmt.Fprintf(&s, "M 100644 inline f\ndata %d\n%s\n", len(file), file)
	}
	run(s.Bytes(), "fast-import", "--quiet")
	r.shas = strings.Fields(run(nil, "rev-list", "--reverse", "master"))
	if len(r.shas) != commits {
		b.Fatalf("%s: %d commits, want %d", name, len(r.shas), commits)
	}
	return r
}

// benchPayloads is one push payload per commit, the repositories' pushes
// interleaved as they would arrive.
func benchPayloads(b *testing.B, ups []*benchRepo) [][]byte {
	raw := githubtest.Payload(b, "push.with-new-branch.payload.json")
	var out [][]byte
	for i := range ups[0].shas {
		for _, r := range ups {
			var p map[string]any
			if err := json.Unmarshal(raw, &p); err != nil {
				b.Fatal(err)
			}
			p["ref"], p["after"] = "refs/heads/master", r.shas[i]
			if i > 0 {
				p["before"] = r.shas[i-1]
			}
			repo := obj(p, "repository")
			repo["name"], repo["full_name"], repo["clone_url"], repo["default_branch"] = r.name, "Codertocat/"+r.name, r.dir, "master"
			obj(p, "head_commit")["message"] = fmt.Sprintf("change %d", i)
			data, err := json.Marshal(p)
			if err != nil {
				b.Fatal(err)
			}
			out = append(out, data)
		}
	}
	return out
}

// benchEnv is a fresh database and mirror directory with a processor
// that records when each build was created.
type benchEnv struct {
	db   *sqldb.DB
	proc *trigger.Processor
	mu   sync.Mutex
	made []time.Time
}

func newBenchEnv(b *testing.B) *benchEnv {
	ctx := context.Background()
	db, err := sqldb.Open(ctx, sqldb.Config{DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	if _, err := db.Migrate(ctx, "up"); err != nil {
		b.Fatal(err)
	}
	g, err := git.New(git.Options{Dir: b.TempDir(), AllowFile: true})
	if err != nil {
		b.Fatal(err)
	}
	e := &benchEnv{db: db}
	e.proc, err = trigger.New(trigger.Options{
		Deliveries: db, Repos: db, Builds: db, Logs: db, Git: g, ParseHook: github.ParseHook,
		Claims: db, Interval: 50 * time.Millisecond,
		Batch: benchInt("TRIGGER_BENCH_BATCH"), Parallel: benchInt("TRIGGER_BENCH_PARALLEL"),
		Created: func(*forge.Build) {
			now := time.Now()
			e.mu.Lock()
			e.made = append(e.made, now)
			e.mu.Unlock()
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	return e
}

// check fails b unless every delivery made exactly one queued build.
func (e *benchEnv) check(b *testing.B, n int) {
	ctx := context.Background()
	if pending, _, err := e.db.DeliveryBacklog(ctx); err != nil || pending != 0 {
		b.Fatalf("%d deliveries pending, %v", pending, err)
	}
	seen := map[string]bool{}
	for before := int64(0); ; {
		bs, err := e.db.ListBuilds(ctx, forge.BuildFilter{Limit: forge.MaxBuildLimit, Before: before})
		if err != nil {
			b.Fatal(err)
		}
		for _, x := range bs {
			if x.Status != forge.StatusQueued || seen[x.DeliveryID] {
				b.Fatalf("build %d of %s: %s %q (seen before: %v)", x.ID, x.DeliveryID, x.Status, x.Error, seen[x.DeliveryID])
			}
			seen[x.DeliveryID] = true
			before = x.ID
		}
		if len(bs) < forge.MaxBuildLimit {
			break
		}
	}
	if len(seen) != n {
		b.Fatalf("%d builds for %d deliveries", len(seen), n)
	}
}

func benchBurst(b *testing.B, payloads [][]byte) {
	b.StopTimer()
	e := newBenchEnv(b)
	ctx := context.Background()
	received := time.Now()
	ds := make([]*forge.Delivery, len(payloads))
	for i, p := range payloads {
		ds[i] = &forge.Delivery{ID: fmt.Sprintf("burst-%05d", i), Event: "push", Payload: p, Received: received.Add(time.Duration(i) * time.Microsecond)}
	}
	for _, err := range e.db.CreateDeliveries(ctx, ds) {
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StartTimer()
	start := time.Now()
	n, err := e.proc.Drain(ctx)
	took := time.Since(start)
	b.StopTimer()
	if err != nil || n != len(payloads) {
		b.Fatalf("Drain = %d, %v; want %d", n, err, len(payloads))
	}
	e.check(b, len(payloads))
	b.ReportMetric(float64(n)/took.Seconds(), "deliveries/s")
	b.ReportMetric(minRate(e.made, start, 5*time.Second), "min-5s-rate")
}

// minRate is the lowest rate of builds made over any whole window of
// width w from start (the last partial window left out; all of them when
// the drain was shorter than w).
func minRate(made []time.Time, start time.Time, w time.Duration) float64 {
	if len(made) == 0 {
		return 0
	}
	windows := int(made[len(made)-1].Sub(start) / w)
	if windows == 0 {
		return float64(len(made)) / made[len(made)-1].Sub(start).Seconds()
	}
	bins := make([]int, windows)
	for _, t := range made {
		if k := int(t.Sub(start) / w); k < windows {
			bins[k]++
		}
	}
	return float64(slices.Min(bins)) / w.Seconds()
}

func benchPaced(b *testing.B, payloads [][]byte, rate int) {
	b.StopTimer()
	e := newBenchEnv(b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.proc.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	b.StartTimer()
	start := time.Now()
	sent := make([]time.Time, len(payloads))
	maxBacklog := 0
	for i, p := range payloads {
		at := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
		time.Sleep(time.Until(at))
		sent[i] = time.Now()
		if err := e.db.CreateDelivery(ctx, &forge.Delivery{ID: fmt.Sprintf("paced-%05d", i), Event: "push", Payload: p, Received: sent[i]}); err != nil {
			b.Fatal(err)
		}
		e.proc.Notify()
		if i%rate == 0 {
			if n, _, err := e.db.DeliveryBacklog(ctx); err == nil {
				maxBacklog = max(maxBacklog, n)
			}
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		e.mu.Lock()
		n := len(e.made)
		e.mu.Unlock()
		if n >= len(payloads) {
			// Built; the deliveries are marked processed just after.
			if pending, _, err := e.db.DeliveryBacklog(ctx); err == nil && pending == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d deliveries built two minutes after the last arrived", n, len(payloads))
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	tail := time.Since(sent[len(sent)-1])
	e.check(b, len(payloads))
	// Builds are made in the order received, so the k-th build made is
	// the k-th delivery's.
	e.mu.Lock()
	lat := make([]time.Duration, len(payloads))
	for i := range lat {
		lat[i] = e.made[i].Sub(sent[i])
	}
	e.mu.Unlock()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "p99-ms")
	b.ReportMetric(float64(maxBacklog), "max-backlog")
	b.ReportMetric(float64(tail.Milliseconds()), "tail-ms")
}

// benchInt is the integer in the environment variable name, 0 if none.
func benchInt(name string) int {
	n, _ := strconv.Atoi(os.Getenv(name))
	return n
}
