package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease/leasecheck"
	"github.com/forgeci/forge/internal/pgtest"
)

// sessionClient speaks protocol version 2 with a resumable session to a
// replica picked at random for every connection, and resumes on another
// when its connection breaks.
type sessionClient struct {
	addrs   []string
	rng     *rand.Rand
	grace   time.Duration
	ws      *websocket.Conn
	msgs    chan *wire.Message
	queue   []*wire.Message // read while resuming, before resumed
	sess    string
	secret  string
	resumes *atomic.Int64
}

func (c *sessionClient) dial() error {
	addr := c.addrs[c.rng.IntN(len(c.addrs))]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+addr+"/api/v1/leases/ws?version=2", nil)
	if err != nil {
		return err
	}
	ch := make(chan *wire.Message, 64)
	go func() {
		defer close(ch)
		for {
			_, data, err := ws.Read(context.Background())
			if err != nil {
				return
			}
			var m wire.Message
			if json.Unmarshal(data, &m) == nil {
				ch <- &m
			}
		}
	}()
	select {
	case m := <-ch:
		if m == nil || m.Type != wire.TypeHello {
			ws.CloseNow()
			return fmt.Errorf("no hello from %s: %+v", addr, m)
		}
	case <-time.After(10 * time.Second):
		ws.CloseNow()
		return fmt.Errorf("no hello from %s", addr)
	}
	c.ws, c.msgs = ws, ch
	return nil
}

func (c *sessionClient) send(v any) error {
	data, _ := json.Marshal(v)
	err := c.ws.Write(context.Background(), websocket.MessageText, data)
	if err != nil {
		// The reader sees the break and resumes; what was not sent is
		// reconciled with resumed.
		return nil
	}
	return nil
}

// open starts a new session, retrying on replicas that are down.
func (c *sessionClient) open() error {
	deadline := time.Now().Add(c.grace)
	for {
		err := c.dial()
		if err == nil {
			c.send(map[string]any{"type": "session", "grace_ms": c.grace.Milliseconds()})
			m, ok := <-c.msgs
			if ok && m.Type == wire.TypeSession {
				c.sess, c.secret = m.Session, m.Secret
				return nil
			}
			c.ws.CloseNow()
			err = fmt.Errorf("session answered %+v", m)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no session within %s: %w", c.grace, err)
		}
		time.Sleep(time.Duration(20+c.rng.IntN(80)) * time.Millisecond)
	}
}

// next returns the next message; after a break it resumes and returns
// what the resume brought, resumed last.
func (c *sessionClient) next() (*wire.Message, error) {
	if len(c.queue) > 0 {
		m := c.queue[0]
		c.queue = c.queue[1:]
		return m, nil
	}
	select {
	case m, ok := <-c.msgs:
		if ok {
			return m, nil
		}
	case <-time.After(90 * time.Second):
		// Longer than the grace: a session whose client vanished in a
		// failover keeps what it holds until its grace ends.
		return nil, fmt.Errorf("no message in 90s")
	}
	c.ws.CloseNow()
	c.resumes.Add(1)
	deadline := time.Now().Add(c.grace)
	for time.Now().Before(deadline) {
		if err := c.dial(); err != nil {
			time.Sleep(time.Duration(20+c.rng.IntN(80)) * time.Millisecond)
			continue
		}
		c.send(map[string]any{"type": "resume", "session": c.sess, "secret": c.secret})
		var got []*wire.Message
		for m := range c.msgs {
			switch {
			case m.Type == wire.TypeResumed:
				c.queue = append(got, m)
				return c.next()
			case m.Type == wire.TypeError && m.Session != "":
				return nil, fmt.Errorf("resume of %s: %s: %s", c.sess, m.Code, m.Message)
			default:
				got = append(got, m)
			}
		}
		c.ws.CloseNow() // broke again before resumed: try again
	}
	return nil, fmt.Errorf("session %s not resumed within %s", c.sess, c.grace)
}

// run makes ops acquisitions, then goes on until stop is closed.
func (c *sessionClient) run(i, ops int, stop <-chan struct{}, ck *leasecheck.Checker) error {
	if err := c.open(); err != nil {
		return err
	}
	defer func() {
		if c.ws != nil {
			c.ws.Close(websocket.StatusNormalClosure, "done")
		}
	}()
	for op := 0; ; op++ {
		if op >= ops {
			select {
			case <-stop:
				return nil
			default:
			}
		}
		if c.ws == nil {
			if err := c.open(); err != nil {
				return err
			}
		}
		id := fmt.Sprintf("c%d-%d", i, op)
		var pools []string
		var reqs []any
		switch x := c.rng.IntN(10); {
		case x < 4:
			pools = []string{"a"}
			reqs = []any{map[string]any{"pool": "a", "count": 1 + c.rng.IntN(2)}}
		case x < 8:
			pools = []string{"b"}
			reqs = []any{map[string]any{"pool": "b"}}
		default:
			pools = []string{"a", "b"}
			reqs = []any{map[string]any{"pool": "a"}, map[string]any{"pool": "b"}}
		}
		acquire := map[string]any{"type": "acquire", "id": id, "holder": id, "requests": reqs}
		ck.Sent(id, pools)
		c.send(acquire)
		var grant *wire.Message
		for grant == nil {
			m, err := c.next()
			if err != nil {
				return fmt.Errorf("%s: %w", id, err)
			}
			switch {
			case m.Type == wire.TypeQueued && m.ID == id:
				ck.Queued(id)
			case m.Type == wire.TypeGranted && m.ID == id:
				grant = m
			case m.Type == wire.TypeResumed:
				waiting := false
				for _, q := range m.Queued {
					waiting = waiting || q.ID == id
				}
				for _, l := range m.Leases {
					if l.ID == id {
						grant = l
					}
				}
				if grant == nil && !waiting {
					// It never reached the leader: send it again.
					ck.Sent(id, pools)
					c.send(acquire)
				}
			case m.Type == wire.TypeReconnect || m.Type == wire.TypeError && m.Code == wire.CodeConflict:
			default:
				return fmt.Errorf("%s: unexpected %+v", id, m)
			}
		}
		hs := ck.Granted(id, grantTime(grant), grantIDs(grant))
		want := resourceList(grant)
		time.Sleep(time.Duration(c.rng.IntN(20)) * time.Millisecond)
		switch x := c.rng.IntN(20); {
		case x < 16:
			ck.Ended(hs)
			c.send(map[string]any{"type": "release", "lease": grant.Lease})
			for released := false; !released; {
				m, err := c.next()
				if err != nil {
					return fmt.Errorf("%s release: %w", id, err)
				}
				switch {
				case m.Type == wire.TypeReleased && m.Lease == grant.Lease:
					released = true
				case m.Type == wire.TypeResumed:
					still := false
					for _, l := range m.Leases {
						if l.Lease == grant.Lease {
							still = true
							if got := resourceList(l); got != want {
								return fmt.Errorf("%s: lease %s resumed on %s, granted on %s", id, grant.Lease, got, want)
							}
						}
					}
					if !still {
						released = true // the release reached the leader before the break
					} else {
						c.send(map[string]any{"type": "release", "lease": grant.Lease})
					}
				case m.Type == wire.TypeQueued || m.Type == wire.TypeReconnect || m.Type == wire.TypeError && m.Code == wire.CodeConflict:
				default:
					return fmt.Errorf("%s release: unexpected %+v", id, m)
				}
			}
		case x < 18:
			ck.Ended(hs)
			c.ws.CloseNow() // like a killed process: the session ends at once
			c.ws = nil
		default:
			ck.Ended(hs)
			c.ws.Close(websocket.StatusNormalClosure, "done")
			c.ws = nil
		}
	}
}

// grantTime is a grant's granted_at.
func grantTime(m *wire.Message) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, m.GrantedAt)
	return t
}

// grantIDs is a grant's resources: pool → ids.
func grantIDs(m *wire.Message) map[string][]string {
	out := map[string][]string{}
	for pool, rs := range m.Resources {
		for _, r := range rs {
			out[pool] = append(out[pool], r.ID)
		}
	}
	return out
}

// resourceList is a grant's resources as "pool/id" in order.
func resourceList(m *wire.Message) string {
	var out []string
	for pool, rs := range m.Resources {
		for _, r := range rs {
			out = append(out, pool+"/"+r.ID)
		}
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// TestLeaseReplicasRandomized: three servers on one PostgreSQL database;
// clients with resumable sessions connect to replicas at random, acquire,
// hold, release or vanish, while the test kills replicas with SIGKILL at
// random (the leader first) and restarts them. From the clients' own
// records: no resource is ever held by two sessions at once, every lease
// a resume returns is on the resources it was granted, waiters are served
// first come first served across replicas and failovers, and everything
// is free at the end. FORGE_LEASE_SEED replays a run's choices.
func TestLeaseReplicasRandomized(t *testing.T) {
	pgtest.URL(t)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("FORGE_LEASE_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("FORGE_LEASE_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (replay with FORGE_LEASE_SEED=%d go test -run TestLeaseReplicasRandomized ./cmd/forge)", seed, seed)
	clients, ops, kills := 100, 5, 3
	if testing.Short() {
		clients, kills = 40, 2
	}
	rs := startLeaseReplicas(t, 3, "pools:\n  a: {range: 1-3}\n  b: {resources: [{id: b1}, {id: b2}]}\n")
	ck := leasecheck.New()
	stop := make(chan struct{})
	var resumes atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &sessionClient{addrs: rs.addrs, rng: rand.New(rand.NewPCG(seed, uint64(i))), grace: 15 * time.Second, resumes: &resumes}
			if err := c.run(i, ops, stop, ck); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		}()
	}
	// The killer: the leader first, then any replica; each restarted.
	rng := rand.New(rand.NewPCG(seed, 1<<40))
	var epoch int64
	for k := 0; k < kills; k++ {
		time.Sleep(time.Duration(500+rng.IntN(1500)) * time.Millisecond)
		lead, e := rs.leader(0) // whoever leads now
		epoch = e
		victim := lead
		if k > 0 && rng.IntN(2) == 0 {
			victim = rng.IntN(len(rs.addrs))
		}
		t.Logf("kill -9 of server %d (leader: %d, epoch %d)", victim, lead, epoch)
		rs.kill9(victim)
		if victim == lead {
			_, epoch = rs.leader(epoch)
		}
		time.Sleep(time.Duration(200+rng.IntN(800)) * time.Millisecond)
		rs.start(victim)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d kills, %d resumes by clients", kills, resumes.Load())
	if resumes.Load() == 0 {
		t.Error("no client resumed: the kills tested nothing")
	}
	busy := ""
	leaseWaitFor(t, 60*time.Second, "every resource free and no queue", func() bool {
		resp, err := http.Get("http://" + rs.addrs[0] + "/api/v1/pools")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var body struct {
			Pools []struct {
				Name      string            `json:"name"`
				InUse     int               `json:"in_use"`
				Queue     []json.RawMessage `json:"queue"`
				Resources []struct {
					ID    string `json:"id"`
					State string `json:"state"`
				} `json:"resources"`
			} `json:"pools"`
		}
		if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&body) != nil {
			return false
		}
		busy = ""
		for _, p := range body.Pools {
			for _, r := range p.Resources {
				if r.State != "free" {
					busy += fmt.Sprintf(" %s/%s:%s", p.Name, r.ID, r.State)
				}
			}
			if len(p.Queue) > 0 {
				busy += fmt.Sprintf(" %s has %d waiting", p.Name, len(p.Queue))
			}
		}
		return busy == "" && len(body.Pools) == 2
	})
	ck.Check(t, true)
}
