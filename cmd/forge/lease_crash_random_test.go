package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease/leasecheck"
	"github.com/forgeci/forge/internal/testwait"
)

// TestLeaseRandomizedKill9: 200 clients with resumable sessions acquire,
// hold, release, end their sessions abruptly and move them to new
// connections, against a real forge server (SQLite) that the test kills
// with SIGKILL and restarts several times meanwhile. From the clients'
// own records: no resource is ever held by two sessions at once, waiters
// are served first come, first served, every lease a client held comes
// back on resume on the same resources (none is lost), and everything is
// free at the end. FORGE_LEASE_SEED replays a run's scripts and kill times
// (the interleaving still varies).
func TestLeaseRandomizedKill9(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("FORGE_LEASE_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("FORGE_LEASE_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (replay with FORGE_LEASE_SEED=%d go test -run TestLeaseRandomizedKill9 ./cmd/forge)", seed, seed)
	clients, ops, kills := 200, 6, 3
	if testing.Short() {
		clients, ops, kills = 50, 4, 2
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "forge.yml")
	// A short grace: a session whose end the killed server had not yet
	// written holds its resources until the grace ends after the restart.
	if err := os.WriteFile(cfg, []byte(`pools:
  a: {range: 1-3}
  b: {resources: [{id: b1}, {id: b2}]}
lease:
  grace: 5s
`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, addr, data := leaseCrashSetup(t)
	srv := startLeaseForgeServerAt(t, addr, data, cfg)
	url := "ws://" + addr + "/api/v1/leases/ws?version=2"

	ck := leasecheck.New()
	var st crashStats
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &crashClient{url: url, i: i, ck: ck, st: &st, rng: rand.New(rand.NewPCG(seed, uint64(i)))}
			if err := c.run(ops); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	rng := rand.New(rand.NewPCG(seed, 1<<40))
	restarts := 0
	for range kills {
		select {
		case <-done:
		case <-time.After(time.Duration(300+rng.IntN(1200)) * time.Millisecond):
			srv.cmd.Process.Signal(syscall.SIGKILL)
			srv.wait(t, 20*time.Second)
			srv = startLeaseForgeServerAt(t, addr, data, cfg)
			restarts++
		}
	}
	select {
	case <-done:
	case <-time.After(testwait.Scale(3 * time.Minute)):
		t.Fatalf("clients still running after 3 minutes")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if restarts == 0 {
		t.Errorf("the clients were done before the first kill: nothing was tested")
	}
	t.Logf("%d kill -9 and restarts; on resume: %d held leases kept, %d granted while away, %d releases and %d acquires sent again",
		restarts, st.heldKept.Load(), st.grantedAway.Load(), st.resentReleases.Load(), st.resentRequests.Load())
	if st.heldKept.Load() == 0 {
		t.Errorf("no client held a lease across a resume: nothing was tested")
	}
	leaseWaitFor(t, 20*time.Second, "every resource free and no queue", func() bool {
		fa, qa := leasePoolState(t, addr, "a")
		fb, qb := leasePoolState(t, addr, "b")
		return fa == 3 && fb == 2 && qa+qb == 0
	})
	ck.Check(t, true)
	srv.cmd.Process.Signal(syscall.SIGTERM)
	srv.wait(t, 20*time.Second)
}

// crashClient is one session's client, written from docs/leases.md:
// it resumes its session whenever its connection breaks, and reconciles
// what it knew with what the server says it has.
type crashClient struct {
	url string
	i   int
	ck  *leasecheck.Checker
	rng *rand.Rand
	st  *crashStats

	ws      *websocket.Conn
	msgs    chan *wire.Message
	stop    chan struct{} // closes the reader of ws
	session string
	secret  string

	// One request at a time: waiting for it, holding its lease, or
	// releasing it.
	req       string
	reqMsg    map[string]any
	reqPools  []string
	lease     string
	resources map[string][]string
	holds     []*leasecheck.Hold
	releasing bool
}

func (c *crashClient) dial() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, c.url, nil)
	if err != nil {
		return err
	}
	if c.stop != nil {
		close(c.stop)
	}
	ch, stop := make(chan *wire.Message, 64), make(chan struct{})
	go func() {
		defer close(ch)
		for {
			_, data, err := ws.Read(context.Background())
			if err != nil {
				return
			}
			m, err := wire.Decode(data)
			if err != nil {
				continue
			}
			select {
			case ch <- m:
			case <-stop:
				ws.CloseNow()
				return
			}
		}
	}()
	c.ws, c.msgs, c.stop = ws, ch, stop
	if m, err := c.next(); err != nil || m.Type != wire.TypeHello || m.Version < 2 {
		return fmt.Errorf("no version 2 hello: %+v %v", m, err)
	}
	return nil
}

var errBroken = fmt.Errorf("connection broken")

// crashStats count what the resumes had to do, to show the run tested it.
type crashStats struct {
	heldKept, resentReleases, resentRequests, grantedAway atomic.Int64
}

func (c *crashClient) next() (*wire.Message, error) {
	select {
	case m, ok := <-c.msgs:
		if !ok {
			return nil, errBroken
		}
		return m, nil
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("no message in 30s")
	}
}

func (c *crashClient) send(v any) error {
	data, _ := json.Marshal(v)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, data); err != nil {
		return errBroken
	}
	return nil
}

func (c *crashClient) open() error {
	if err := c.dial(); err != nil {
		return err
	}
	if err := c.send(map[string]any{"type": "session"}); err != nil {
		return err
	}
	m, err := c.next()
	if err != nil || m.Type != wire.TypeSession || !m.Durable {
		return fmt.Errorf("session: %+v %v", m, err)
	}
	c.session, c.secret = m.Session, m.Secret
	return nil
}

// resume takes the session back on a new connection, retrying while the
// server is away, and reconciles.
func (c *crashClient) resume() error {
	deadline := time.Now().Add(60 * time.Second)
	backoff := 20 * time.Millisecond
	for {
		if time.Now().After(deadline) {
			return fmt.Errorf("could not resume session %s within 60s", c.session)
		}
		if err := c.dial(); err != nil {
			time.Sleep(backoff)
			backoff = min(2*backoff, 300*time.Millisecond)
			continue
		}
		if err := c.send(map[string]any{"type": "resume", "session": c.session, "secret": c.secret}); err != nil {
			continue
		}
		timedOut := false
		for {
			m, err := c.next()
			if err == errBroken {
				break
			}
			if err != nil {
				return err
			}
			switch {
			case m.Type == wire.TypeResumed:
				return c.reconcile(m, timedOut)
			case m.Type == wire.TypeError && m.Session != "":
				return fmt.Errorf("resume of %s: %s: %s (held %q, waiting %q)", c.session, m.Code, m.Message, c.lease, c.req)
			case m.Type == wire.TypeError && m.ID == c.req && m.Code == "timeout":
				timedOut = true
			case m.Type == wire.TypeReleased && m.Lease == c.lease && c.releasing:
			default:
				return fmt.Errorf("before resumed: unexpected %+v", m)
			}
		}
	}
}

func (c *crashClient) reconcile(st *wire.Message, timedOut bool) error {
	var mine *wire.Message
	for _, g := range st.Leases {
		switch {
		case c.lease != "" && g.Lease == c.lease:
			if got := grantResources(g); !maps.EqualFunc(got, c.resources, slices.Equal) {
				return fmt.Errorf("resumed lease %s on %v, but it was granted %v", c.lease, got, c.resources)
			}
			mine = g
		case c.lease == "" && c.req != "" && g.ID == c.req:
			mine = g
		default:
			return fmt.Errorf("resumed with a lease %s (%s) this client does not know", g.Lease, g.ID)
		}
	}
	switch {
	case c.lease != "" && c.releasing:
		if mine != nil { // the release never became durable: again
			c.st.resentReleases.Add(1)
			return c.send(map[string]any{"type": "release", "lease": c.lease})
		}
		c.lease, c.releasing = "", false
		return nil
	case c.lease != "":
		if mine == nil {
			return fmt.Errorf("lease %s on %v lost in the resume", c.lease, c.resources)
		}
		c.st.heldKept.Add(1)
		return nil
	case c.req != "" && mine != nil:
		c.st.grantedAway.Add(1)
		c.grant(mine)
		return nil
	case c.req != "":
		for _, q := range st.Queued {
			if q.ID == c.req {
				return nil
			}
		}
		if timedOut {
			c.ck.Gone(c.req)
			c.req = ""
			return nil
		}
		// The server never kept it: send it again.
		c.st.resentRequests.Add(1)
		c.ck.Sent(c.req, c.reqPools)
		return c.send(c.reqMsg)
	}
	if len(st.Queued) > 0 {
		return fmt.Errorf("resumed with queued requests %+v this client does not know", st.Queued)
	}
	return nil
}

func (c *crashClient) grant(m *wire.Message) {
	at, _ := time.Parse(time.RFC3339Nano, m.GrantedAt)
	c.resources = grantResources(m)
	c.holds = c.ck.Granted(c.req, at, c.resources)
	c.lease, c.req = m.Lease, ""
}

func grantResources(m *wire.Message) map[string][]string {
	out := make(map[string][]string, len(m.Resources))
	for pool, rs := range m.Resources {
		for _, r := range rs {
			out[pool] = append(out[pool], r.ID)
		}
	}
	return out
}

// await reads messages until done says the state is reached, resuming
// whenever the connection breaks.
func (c *crashClient) await(done func() bool) error {
	for !done() {
		m, err := c.next()
		if err == errBroken {
			if err := c.resume(); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("%s/%s: %w", c.req, c.lease, err)
		}
		switch {
		case m.Type == wire.TypeQueued && m.ID == c.req:
			c.ck.Queued(c.req)
		case m.Type == wire.TypeGranted && m.ID == c.req && c.req != "":
			c.grant(m)
		case m.Type == wire.TypeError && m.ID == c.req && m.Code == "timeout":
			c.ck.Gone(c.req)
			c.req = ""
		case m.Type == wire.TypeReleased && m.Lease == c.lease && c.releasing:
			c.lease, c.releasing = "", false
		case m.Type == wire.TypeError && m.Code == "not_found" && m.Lease != "" && m.Lease == c.lease && c.releasing:
			c.lease, c.releasing = "", false // a release sent twice across a restart
		case m.Type == wire.TypeQueued:
		default:
			return fmt.Errorf("unexpected %+v (waiting %q, lease %q)", m, c.req, c.lease)
		}
	}
	return nil
}

// sendOrResume sends v, resuming first if the connection is broken (the
// resume may settle what v was for: then it is not sent).
func (c *crashClient) sendOrResume(v any, still func() bool) error {
	for still() {
		if err := c.send(v); err != errBroken {
			return err
		}
		if err := c.resume(); err != nil {
			return err
		}
	}
	return nil
}

func (c *crashClient) run(ops int) error {
	defer func() {
		if c.stop != nil {
			close(c.stop)
		}
	}()
	for op := range ops {
		if c.session == "" {
			for c.open() != nil { // the server is away: try again
				time.Sleep(50 * time.Millisecond)
			}
		}
		c.req = fmt.Sprintf("c%d-%d", c.i, op)
		var reqs []any
		switch x := c.rng.IntN(10); {
		case x < 4:
			c.reqPools = []string{"a"}
			reqs = []any{map[string]any{"pool": "a", "count": 1 + c.rng.IntN(2)}}
		case x < 8:
			c.reqPools = []string{"b"}
			reqs = []any{map[string]any{"pool": "b"}}
		default:
			c.reqPools = []string{"a", "b"}
			reqs = []any{map[string]any{"pool": "a"}, map[string]any{"pool": "b"}}
		}
		c.reqMsg = map[string]any{"type": "acquire", "id": c.req, "holder": c.req, "requests": reqs}
		if c.rng.IntN(10) < 2 {
			c.reqMsg["max_wait_ms"] = 200 + c.rng.IntN(2000)
		}
		c.ck.Sent(c.req, c.reqPools)
		id := c.req
		if err := c.sendOrResume(c.reqMsg, func() bool { return c.req == id }); err != nil {
			return err
		}
		if err := c.await(func() bool { return c.req == "" }); err != nil {
			return err
		}
		if c.lease == "" {
			continue // timed out
		}
		time.Sleep(time.Duration(5+c.rng.IntN(60)) * time.Millisecond)
		switch x := c.rng.IntN(10); {
		case x < 2:
			// Move the session to a new connection while the old one is
			// still open, as a client that noticed a break first does.
			if err := c.resume(); err != nil {
				return err
			}
			time.Sleep(time.Duration(c.rng.IntN(30)) * time.Millisecond)
			fallthrough
		case x < 8:
			c.ck.Ended(c.holds)
			c.releasing = true
			lease := c.lease
			if err := c.sendOrResume(map[string]any{"type": "release", "lease": lease}, func() bool { return c.lease == lease && c.releasing }); err != nil {
				return err
			}
			if err := c.await(func() bool { return c.lease == "" }); err != nil {
				return err
			}
		default:
			// Like a killed process: the session ends with the connection.
			c.ck.Ended(c.holds)
			c.ws.CloseNow()
			c.lease, c.session = "", ""
		}
	}
	if c.ws != nil {
		c.ws.Close(websocket.StatusNormalClosure, "done")
	}
	return nil
}
