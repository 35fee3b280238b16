package lease

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// fakeServer is a small, strict lease server that speaks the protocol of
// wire.go: FIFO over all pools, all-or-nothing grants, everything released
// when a connection ends. It lets the client be tested without the real
// server; the real one (internal/lease) is exercised by cmd/forge's tests.
type fakeServer struct {
	t   *testing.T
	srv *httptest.Server

	mu      sync.Mutex
	pools   map[string][]Resource
	held    map[string]string // resource key (pool/id) → lease id
	leases  map[string]*fakeLease
	queue   []*fakeWait
	nextID  int
	conns   map[*fakeConn]bool
	silent  bool // new connections get a hello and then nothing, not even pongs
	granted []string
}

type fakeConn struct {
	ws  *websocket.Conn
	out chan Message
	ids map[string]bool
}

type fakeLease struct {
	id   string
	conn *fakeConn
	keys []string
}

type fakeWait struct {
	conn     *fakeConn
	msg      *Message
	deadline time.Time
	lastPos  int
}

func newFakeServer(t *testing.T, pools map[string][]Resource) *fakeServer {
	f := &fakeServer{t: t, pools: pools, held: map[string]string{}, leases: map[string]*fakeLease{}, conns: map[*fakeConn]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Path, f.serve)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeServer) URL() string { return f.srv.URL }

func (f *fakeServer) serve(w http.ResponseWriter, r *http.Request) {
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := &fakeConn{ws: ws, out: make(chan Message, 64), ids: map[string]bool{}}
	hello, _ := json.Marshal(Message{Type: TypeHello, Version: 1, KeepaliveMS: 10000, Connection: "C1"})
	if err := ws.Write(ctx, websocket.MessageText, hello); err != nil {
		return
	}
	f.mu.Lock()
	silent := f.silent
	f.conns[c] = true
	f.mu.Unlock()
	if silent {
		<-r.Context().Done() // never reads: pings go unanswered
		ws.CloseNow()
		return
	}
	go func() {
		for m := range c.out {
			data, _ := json.Marshal(m)
			ws.Write(ctx, websocket.MessageText, data)
		}
	}()
	defer func() {
		f.mu.Lock()
		f.drop(c)
		f.mu.Unlock()
		close(c.out)
	}()
	go func() { // expires max_wait_ms while nothing else happens
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			f.mu.Lock()
			f.schedule()
			f.mu.Unlock()
		}
	}()
	for {
		_, data, err := ws.Read(ctx)
		if err != nil {
			return
		}
		m, err := Decode(data)
		f.mu.Lock()
		if err != nil {
			c.out <- Message{Type: TypeError, Code: CodeInvalid, Message: err.Error()}
		} else {
			f.handle(c, m)
		}
		f.schedule()
		f.mu.Unlock()
	}
}

// handle runs under f.mu.
func (f *fakeServer) handle(c *fakeConn, m *Message) {
	switch m.Type {
	case TypePing:
		c.out <- Message{Type: TypePong, ID: m.ID}
	case TypeAcquire:
		if c.ids[m.ID] {
			c.out <- Message{Type: TypeError, ID: m.ID, Code: CodeConflict, Message: "duplicate request id " + m.ID}
			return
		}
		for _, r := range m.Requests {
			rs, ok := f.pools[r.Pool]
			if !ok {
				c.out <- Message{Type: TypeError, ID: m.ID, Code: CodeNotFound, Message: fmt.Sprintf("unknown pool %q", r.Pool)}
				return
			}
			if max(r.Count, 1) > len(matching(rs, r.Labels)) {
				c.out <- Message{Type: TypeError, ID: m.ID, Code: CodeInvalid, Message: fmt.Sprintf("pool %q has only %d matching resources", r.Pool, len(rs))}
				return
			}
		}
		c.ids[m.ID] = true
		w := &fakeWait{conn: c, msg: m}
		if m.MaxWaitMS > 0 {
			w.deadline = time.Now().Add(time.Duration(m.MaxWaitMS) * time.Millisecond)
		}
		f.queue = append(f.queue, w)
	case TypeCancel:
		for i, w := range f.queue {
			if w.conn == c && w.msg.ID == m.ID {
				f.queue = append(f.queue[:i], f.queue[i+1:]...)
				c.out <- Message{Type: TypeCanceled, ID: m.ID}
				return
			}
		}
		c.out <- Message{Type: TypeError, ID: m.ID, Code: CodeNotFound, Message: "no queued request " + m.ID}
	case TypeRelease:
		l := f.leases[m.Lease]
		if l == nil || l.conn != c {
			c.out <- Message{Type: TypeError, Lease: m.Lease, Code: CodeNotFound, Message: "no lease " + m.Lease}
			return
		}
		f.free(l)
		c.out <- Message{Type: TypeReleased, Lease: m.Lease}
	default:
		c.out <- Message{Type: TypeError, ID: m.ID, Code: CodeInvalid, Message: "unexpected " + m.Type}
	}
}

func matching(rs []Resource, labels map[string]string) []Resource {
	var out []Resource
	for _, r := range rs {
		ok := true
		for k, v := range labels {
			if r.Labels[k] != v {
				ok = false
			}
		}
		if ok {
			out = append(out, r)
		}
	}
	return out
}

// schedule grants what it can in FIFO order: the head of the queue blocks
// everyone behind it. Runs under f.mu.
func (f *fakeServer) schedule() {
	now := time.Now()
	for len(f.queue) > 0 {
		w := f.queue[0]
		if !w.deadline.IsZero() && now.After(w.deadline) {
			f.queue = f.queue[1:]
			w.conn.out <- Message{Type: TypeError, ID: w.msg.ID, Code: CodeTimeout, Message: "max_wait_ms passed"}
			continue
		}
		got := map[string][]Resource{}
		var keys []string
		taken := map[string]bool{}
		ok := true
		for _, r := range w.msg.Requests {
			n := max(r.Count, 1)
			for _, res := range matching(f.pools[r.Pool], r.Labels) {
				k := r.Pool + "/" + res.ID
				if n == 0 || f.held[k] != "" || taken[k] {
					continue
				}
				taken[k] = true
				keys = append(keys, k)
				got[r.Pool] = append(got[r.Pool], res)
				n--
			}
			if n > 0 {
				ok = false
			}
		}
		if !ok {
			break
		}
		f.queue = f.queue[1:]
		f.nextID++
		l := &fakeLease{id: fmt.Sprintf("L%d", f.nextID), conn: w.conn, keys: keys}
		for _, k := range keys {
			f.held[k] = l.id
		}
		f.leases[l.id] = l
		f.granted = append(f.granted, strings.Join(keys, ","))
		w.conn.out <- Message{Type: TypeGranted, ID: w.msg.ID, Lease: l.id, Holder: w.msg.Holder,
			GrantedAt: now.UTC().Format(time.RFC3339Nano), Resources: got}
	}
	for i, w := range f.queue {
		if w.lastPos != i+1 {
			w.lastPos = i + 1
			w.conn.out <- Message{Type: TypeQueued, ID: w.msg.ID, Position: i + 1}
		}
	}
}

func (f *fakeServer) free(l *fakeLease) {
	for _, k := range l.keys {
		delete(f.held, k)
	}
	delete(f.leases, l.id)
}

// drop releases everything of a closed connection. Runs under f.mu.
func (f *fakeServer) drop(c *fakeConn) {
	delete(f.conns, c)
	for _, l := range f.leases {
		if l.conn == c {
			f.free(l)
		}
	}
	q := f.queue[:0]
	for _, w := range f.queue {
		if w.conn != c {
			q = append(q, w)
		}
	}
	f.queue = q
	f.schedule()
}

// revoke force-releases lease id, telling its holder.
func (f *fakeServer) revoke(id, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l := f.leases[id]; l != nil {
		f.free(l)
		l.conn.out <- Message{Type: TypeRevoked, Lease: id, Reason: reason}
		f.schedule()
	}
}

// kill drops every connection abruptly, as a crashing server would.
func (f *fakeServer) kill() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.ws.CloseNow()
	}
}

// heldCount is how many resources are leased now.
func (f *fakeServer) heldCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.held)
}
