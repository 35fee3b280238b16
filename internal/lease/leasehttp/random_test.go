package leasehttp

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/lease/leasecheck"
	"github.com/forgeci/forge/internal/testwait"
)

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
	ck := leasecheck.New("c") // "order: fill" lets requests pass
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
	ck.Check(t, true)
}

func randomClient(url string, i, ops int, rng *rand.Rand, ck *leasecheck.Checker) error {
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
		ck.Sent(id, pools)
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
				ck.Queued(id)
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
				ck.Gone(id)
				break wait
			case m.Type == wire.TypeError && m.ID == id && m.Code == "timeout":
				ck.Gone(id)
				break wait
			case m.Type == wire.TypeError && m.Code == "not_found" && staleCancel[m.ID]:
			default:
				return fmt.Errorf("%s: unexpected %+v", id, m)
			}
		}
		if grant == nil {
			continue
		}
		grantedAt, _ := time.Parse(time.RFC3339Nano, grant.GrantedAt)
		hs := ck.Granted(id, grantedAt, grantResources(grant))
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
		switch x := rng.IntN(20); {
		case x < 14:
			ck.Ended(hs)
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
			ck.Ended(hs)
			ws.CloseNow() // like a killed process
			ws = nil
		default:
			ck.Ended(hs)
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

// grantResources is a granted message's pool → resource ids.
func grantResources(m *wire.Message) map[string][]string {
	out := make(map[string][]string, len(m.Resources))
	for pool, rs := range m.Resources {
		for _, r := range rs {
			out[pool] = append(out[pool], r.ID)
		}
	}
	return out
}
