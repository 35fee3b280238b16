package leasehttp

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/testwait"
)

// checker records grants and releases as the clients see them.
type checker struct {
	mu   sync.Mutex
	reqs map[string]*seenReq
	// holds per resource ("pool/id"): when a client saw it granted and when
	// it let go of it.
	holds map[string][]*hold
}

type seenReq struct {
	id        string
	pools     []string
	sent      time.Time
	queued    time.Time // first queued message received; zero if none
	granted   bool
	grantedAt time.Time // server time of the grant
	gone      bool      // timed out, canceled or its connection dropped while queued
}

type hold struct {
	req        string
	start, end time.Time
}

func (c *checker) sent(id string, pools []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reqs[id] = &seenReq{id: id, pools: pools, sent: time.Now()}
}

func (c *checker) queued(id string) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.reqs[id]; r.queued.IsZero() {
		r.queued = now
	}
}

func (c *checker) granted(id string, m *wire.Message) []*hold {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.reqs[id]
	r.granted = true
	r.grantedAt, _ = time.Parse(time.RFC3339Nano, m.GrantedAt)
	var hs []*hold
	for pool, rs := range m.Resources {
		for _, res := range rs {
			h := &hold{req: id, start: now}
			c.holds[pool+"/"+res.ID] = append(c.holds[pool+"/"+res.ID], h)
			hs = append(hs, h)
		}
	}
	return hs
}

func (c *checker) ended(hs []*hold) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range hs {
		h.end = now
	}
}

func (c *checker) gone(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reqs[id].gone = true
}

func (c *checker) check(t *testing.T) {
	c.mu.Lock()
	defer c.mu.Unlock()
	grants := 0
	// Nobody holds a resource another holds.
	for res, hs := range c.holds {
		sort.Slice(hs, func(i, j int) bool { return hs[i].start.Before(hs[j].start) })
		for i, h := range hs {
			grants++
			if h.end.IsZero() {
				t.Errorf("%s: the hold of %s never ended", res, h.req)
				continue
			}
			if i > 0 && h.start.Before(hs[i-1].end) {
				t.Errorf("%s held twice: %s from %s while %s held it until %s", res, h.req,
					h.start.Format(time.StampMicro), hs[i-1].req, hs[i-1].end.Format(time.StampMicro))
			}
		}
	}
	// First come, first served: a request queued before another was sent,
	// sharing a pool with it, is granted no later than it.
	byPool := map[string][]*seenReq{}
	for _, r := range c.reqs {
		if r.granted {
			for _, p := range r.pools {
				if p != "c" { // "order: fill" lets requests pass
					byPool[p] = append(byPool[p], r)
				}
			}
		}
	}
	checked := 0
	for pool, rs := range byPool {
		for _, a := range rs {
			if a.queued.IsZero() {
				continue
			}
			for _, b := range rs {
				if a == b || !a.queued.Before(b.sent) {
					continue
				}
				checked++
				if a.grantedAt.After(b.grantedAt) {
					t.Errorf("pool %s: %s (queued %s) granted at %s, after %s (sent %s) granted at %s",
						pool, a.id, a.queued.Format(time.StampMicro), a.grantedAt.Format(time.StampMicro),
						b.id, b.sent.Format(time.StampMicro), b.grantedAt.Format(time.StampMicro))
				}
			}
		}
	}
	t.Logf("checked %d resource holds and %d ordered pairs of requests", grants, checked)
	if grants == 0 || checked == 0 {
		t.Errorf("the run granted %d and ordered %d pairs: nothing was tested", grants, checked)
	}
}

// TestRandomized: hundreds of clients acquire, release, cancel, time out
// and disconnect abruptly against pools of a few resources; the checker
// sees no double holder, FIFO order, and every resource free at the end.
// FORGE_LEASE_SEED replays a run's client scripts (the interleaving of
// goroutines still varies).
func TestRandomized(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("FORGE_LEASE_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("FORGE_LEASE_SEED=%q: %v", s, err)
		}
	}
	clients, ops := 200, 8
	if testing.Short() {
		clients, ops = 50, 5
	}
	t.Logf("seed %d (replay with FORGE_LEASE_SEED=%d)", seed, seed)
	defer func() {
		if t.Failed() {
			t.Logf("FAILED with seed %d: replay with FORGE_LEASE_SEED=%d go test -run TestRandomized ./internal/lease", seed, seed)
		}
	}()
	cfg := `
pools:
  a: {range: 1-3}
  b: {resources: [{id: b1}, {id: b2}]}
  c: {order: fill, resources: [{id: c1}, {id: c2}]}
`
	e := newEnv(t, cfg, Options{}, lease.MemoryOptions{PositionInterval: 5 * time.Millisecond})
	ck := &checker{reqs: map[string]*seenReq{}, holds: map[string][]*hold{}}
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			if err := randomClient(e.wsURL, i, ops, rng, ck); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Every resource free, nobody queued, once the server saw every close.
	busy := ""
	if err := testwait.Until(testwait.Scale(time.Minute), func() bool {
		pools, err := e.m.Pools(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		busy = ""
		for _, p := range pools {
			for _, r := range p.Resources {
				if r.State != lease.StateFree {
					busy += fmt.Sprintf(" %s/%s:%s", p.Name, r.ID, r.State)
				}
			}
			if len(p.Queue) > 0 {
				busy += fmt.Sprintf(" %s has %d waiting", p.Name, len(p.Queue))
			}
		}
		return busy == ""
	}); err != nil {
		t.Fatalf("at the end:%s; want every resource free and no queue (%v)", busy, err)
	}
	ck.check(t)
}

func randomClient(url string, i, ops int, rng *rand.Rand, ck *checker) error {
	var (
		ws   *websocket.Conn
		msgs chan *wire.Message
	)
	dial := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		ws, _, err = websocket.Dial(ctx, url, nil)
		if err != nil {
			return err
		}
		ch := make(chan *wire.Message, 64)
		msgs = ch
		go func(ws *websocket.Conn) {
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
		}(ws)
		if m := <-ch; m == nil || m.Type != wire.TypeHello {
			return fmt.Errorf("no hello: %+v", m)
		}
		return nil
	}
	send := func(v any) error {
		data, _ := json.Marshal(v)
		return ws.Write(context.Background(), websocket.MessageText, data)
	}
	next := func() (*wire.Message, error) {
		select {
		case m, ok := <-msgs:
			if !ok {
				return nil, fmt.Errorf("connection closed unexpectedly")
			}
			return m, nil
		case <-time.After(20 * time.Second):
			return nil, fmt.Errorf("no message in 20s")
		}
	}
	defer func() {
		if ws != nil {
			ws.CloseNow()
		}
	}()
	// Cancels that raced with a grant or a timeout get not_found later.
	staleCancel := map[string]bool{}
	for op := 0; op < ops; op++ {
		if ws == nil {
			clear(staleCancel)
			if err := dial(); err != nil {
				return err
			}
		}
		id := fmt.Sprintf("c%d-%d", i, op)
		var pools []string
		var reqs []any
		switch x := rng.IntN(12); {
		case x >= 10:
			// the fill pool: passing is allowed there, so only the
			// no-double-holder check applies to it
			pools = []string{"c"}
			reqs = []any{map[string]any{"pool": "c", "count": 1 + rng.IntN(2)}}
			if x == 11 {
				pools = append(pools, "a")
				reqs = append(reqs, map[string]any{"pool": "a"})
			}
		case x < 4:
			pools = []string{"a"}
			reqs = []any{map[string]any{"pool": "a", "count": 1 + rng.IntN(2)}}
		case x < 8:
			pools = []string{"b"}
			reqs = []any{map[string]any{"pool": "b"}}
		default:
			pools = []string{"a", "b"}
			reqs = []any{map[string]any{"pool": "a"}, map[string]any{"pool": "b"}}
		}
		msg := map[string]any{"type": "acquire", "id": id, "holder": id, "requests": reqs}
		if rng.IntN(10) < 3 {
			msg["max_wait_ms"] = 5 + rng.IntN(60)
		}
		wantCancel := rng.IntN(10) == 0
		ck.sent(id, pools)
		if err := send(msg); err != nil {
			return err
		}
		var grant *wire.Message
		canceled := false
	wait:
		for {
			m, err := next()
			if err != nil {
				return fmt.Errorf("%s: %w", id, err)
			}
			switch {
			case m.Type == wire.TypeQueued && m.ID == id:
				ck.queued(id)
				if wantCancel && !canceled {
					canceled = true
					staleCancel[id] = true
					if err := send(map[string]any{"type": "cancel", "id": id}); err != nil {
						return err
					}
				}
			case m.Type == wire.TypeGranted && m.ID == id:
				grant = m
				break wait
			case m.Type == wire.TypeCanceled && m.ID == id:
				ck.gone(id)
				break wait
			case m.Type == wire.TypeError && m.ID == id && m.Code == "timeout":
				ck.gone(id)
				break wait
			case m.Type == wire.TypeError && m.Code == "not_found" && staleCancel[m.ID]:
			default:
				return fmt.Errorf("%s: unexpected %+v", id, m)
			}
		}
		if grant == nil {
			continue
		}
		hs := ck.granted(id, grant)
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
		switch x := rng.IntN(20); {
		case x < 14:
			ck.ended(hs)
			if err := send(map[string]any{"type": "release", "lease": grant.Lease}); err != nil {
				return err
			}
			for {
				m, err := next()
				if err != nil {
					return fmt.Errorf("%s release: %w", id, err)
				}
				if m.Type == wire.TypeReleased && m.Lease == grant.Lease {
					break
				}
				if m.Type != wire.TypeQueued && !(m.Type == wire.TypeError && m.Code == "not_found" && staleCancel[m.ID]) {
					return fmt.Errorf("%s release: unexpected %+v", id, m)
				}
			}
		case x < 17:
			ck.ended(hs)
			ws.CloseNow() // like a killed process
			ws = nil
		default:
			ck.ended(hs)
			ws.Close(websocket.StatusNormalClosure, "done")
			ws = nil
		}
	}
	if ws != nil {
		ws.Close(websocket.StatusNormalClosure, "done")
		ws = nil
	}
	return nil
}
