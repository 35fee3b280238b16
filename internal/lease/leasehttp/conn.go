package leasehttp

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/forgeci/forge"
	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
)

// conn is one client connection. Its serve goroutine reads; a writer
// goroutine runs only while there is something to write, a handler only
// while a message is handled, and a keepalive goroutine only while a
// ping is in flight, so an idle connection costs one goroutine.
type conn struct {
	s      *Server
	id     string
	ws     *websocket.Conn
	bw     *batchWriter
	br     *bufio.Reader // the library's reader: peeked for whole frames
	remote string
	// done is closed, and the socket closed, when the connection ends.
	// (No context: one per connection, with its children, costs memory
	// on every idle connection.)
	done     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup // writer and keepalive goroutines

	// lastSeen is when the server last read anything from the client, or
	// finished writing to it, in nanoseconds since the server's epoch:
	// every frame, a message as much as a pong, proves the client alive,
	// and so does its taking what it is sent. So a client whose pong waits
	// behind the messages it pipelined is not taken for dead.
	lastSeen atomic.Int64
	// working is set while the reader does the server's own work (pacing
	// the client, handling a message) rather than waiting for the client
	// or writing to it, and workedUntil is when it last stopped: the
	// server's slowness is not the client's silence.
	working     atomic.Bool
	workedUntil atomic.Int64
	// writeSince is when the write in progress began (0: none), to tell a
	// client that does not read from one that sends nothing.
	writeSince atomic.Int64

	mu        sync.Mutex
	out       []*wire.Message
	closed    bool
	writing   bool                 // a writer goroutine is running
	corked    bool                 // the reader has more whole messages: write after them
	goingOff  websocket.StatusCode // not 0: send what is queued, then close with it
	pingTimer *time.Timer

	limit limiter // the reader's only

	// The owner of this connection's requests and leases in the Manager:
	// the connection id, or the session's once one is opened or resumed
	// (then the connection's end detaches rather than releases). Only the
	// reader and the handler it waits for touch them.
	version    int // the protocol version spoken (askedVersion)
	owner      string
	attachment uint64
	resumable  bool
	started    bool // a message that fixes the owner was handled
	// moved: the session went to another connection; this one neither
	// releases nor detaches it when it ends (under mu).
	moved bool
	// detach: the server ended the connection for a reason that is not
	// the client's choice (a silent network, a restart): a resumable
	// session is detached, not ended (under mu). A connection the client
	// ends itself (a close frame, or a FIN or reset: a closed socket, a
	// killed process) ends its session at once.
	detach bool
	// forwarded: another server relays this connection (Options.Forwarded).
	forwarded bool
}

// maxCorked bounds the answers held back for pipelined messages: past it
// they are written even though more messages wait to be read.
const maxCorked = 128

// seen records a sign of life from the client.
func (c *conn) seen() { c.lastSeen.Store(int64(time.Since(c.s.epoch))) }

// work marks the reader as doing the server's own work, or done with it.
func (c *conn) work(on bool) {
	if !on {
		c.workedUntil.Store(int64(time.Since(c.s.epoch)))
	}
	c.working.Store(on)
}

// silentSince reports whether the client has been silent since t, the
// reader having waited on it (not on the server's own work) all along.
func (c *conn) silentSince(t int64) bool {
	return c.lastSeen.Load() < t && !c.working.Load() && c.workedUntil.Load() < t
}

// serve runs the connection to its end; it owns the connection.
func (c *conn) serve() {
	s := c.s
	defer s.wg.Done()
	c.send(&wire.Message{Type: wire.TypeHello, Version: c.version,
		KeepaliveMS: s.opts.Keepalive.Milliseconds(), Connection: c.id})
	c.mu.Lock()
	c.pingTimer = time.AfterFunc(s.opts.Keepalive/2, c.keepalive)
	c.mu.Unlock()
	c.readLoop()

	// The connection is gone (or being dropped): release everything at
	// once, before anything else, so the next waiter is served now; a
	// resumable session that did not close cleanly is kept for its grace.
	c.mu.Lock()
	moved, detach := c.moved, c.detach
	c.mu.Unlock()
	var err error
	switch {
	case moved:
	case c.resumable && detach:
		err = s.m.Detach(context.Background(), c.owner, c.attachment)
	default:
		err = s.m.Disconnect(context.Background(), c.owner)
	}
	if err != nil {
		s.log.Error("lease disconnect failed", "connection", c.id, "owner", c.owner, "err", err)
	}
	c.mu.Lock()
	c.closed = true
	c.pingTimer.Stop()
	c.mu.Unlock()
	c.stop()
	c.ws.CloseNow() // the library's own state; the socket is closed already
	c.wg.Wait()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.connCount.Add(-1)
}

// send queues msg for writing; it never blocks. A connection whose queue
// is full is dropped: it does not read what it is sent.
func (c *conn) send(msg *wire.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Nothing follows the message a connection goes off with: a grant
	// queued after "the server is shutting down" (the holder's leases
	// released as its own connection closed) made forge lease run its
	// command on a lease about to end (TestLeaseServerGoesAwayWhileWaiting).
	if c.closed || c.goingOff != 0 {
		return
	}
	if len(c.out) >= c.s.opts.SendQueue {
		c.dropLocked(DropSendQueue, fmt.Sprintf("%d messages wait to be written: the client does not read what it is sent", len(c.out)))
		return
	}
	c.out = append(c.out, msg)
	if !c.corked {
		c.startWriterLocked()
	}
}

// cork holds back writing while the reader handles messages it already
// has, so that the answers to a client's pipelined messages (a release
// and the next acquire, say) leave in one write.
func (c *conn) cork(on bool) {
	c.mu.Lock()
	c.corked = on
	if !on && len(c.out) > 0 {
		c.startWriterLocked()
	}
	c.mu.Unlock()
}

// backlog is how many messages wait to be written.
func (c *conn) backlog() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.out)
}

// uncorkAndWrite lets writing go on and writes what is queued on the
// calling goroutine.
func (c *conn) uncorkAndWrite() {
	c.mu.Lock()
	c.corked = false
	if c.writing || c.closed || len(c.out) == 0 {
		c.mu.Unlock()
		return
	}
	c.writing = true
	c.wg.Add(1)
	c.mu.Unlock()
	c.writeOut()
}

func (c *conn) startWriterLocked() {
	if !c.writing && !c.closed {
		c.writing = true
		c.wg.Add(1)
		go c.writeOut()
	}
}

// notify receives the Manager's events for this connection. It runs with
// the Manager's lock held, so it only queues.
func (c *conn) notify(ev lease.Event) {
	switch ev.Type {
	case lease.EventQueued:
		c.send(&wire.Message{Type: wire.TypeQueued, ID: ev.RequestID, Position: ev.Position})
	case lease.EventGranted:
		c.send(grantedMessage(ev.Lease))
	case lease.EventTimeout:
		c.send(&wire.Message{Type: wire.TypeError, ID: ev.RequestID, Code: forge.ETIMEOUT,
			Message: "max_wait_ms passed before a grant: the request left the queue"})
	case lease.EventFailed:
		c.send(errorMessage(ev.RequestID, "", ev.Err))
	case lease.EventRevoked:
		c.send(&wire.Message{Type: wire.TypeRevoked, Lease: ev.Lease.ID, Reason: ev.Reason})
	case lease.EventReleased:
		c.send(&wire.Message{Type: wire.TypeReleased, Lease: ev.Lease.ID})
	case lease.EventCanceled:
		c.send(&wire.Message{Type: wire.TypeCanceled, ID: ev.RequestID})
	case lease.EventResumed:
		c.send(resumedMessage(ev.Resumed))
	case lease.EventMoved:
		c.mu.Lock()
		c.moved = true
		c.mu.Unlock()
		c.closeWith(websocket.StatusPolicyViolation, &wire.Message{Type: wire.TypeError, Code: forge.ECONFLICT,
			Message: "the session was resumed on another connection: this one is closed"})
	}
}

// drop ends the connection at once, without a close handshake, because
// of reason: logged and counted (Server.countDrop). A connection that
// already ended is left alone.
func (c *conn) drop(reason, detail string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropLocked(reason, detail)
}

func (c *conn) dropLocked(reason, detail string) {
	if c.closed {
		return
	}
	c.closed = true
	// A client that went silent or fell behind may come back; one that
	// sent too large a message will only do it again.
	c.detach = reason != DropTooLarge
	c.s.countDrop(c, reason, detail)
	c.stop()
}

// broken ends a connection that failed under the server (a write error:
// the client went away); it is no drop, the reader sees the end too.
func (c *conn) broken(err error) {
	c.mu.Lock()
	ended := c.closed
	c.closed = true
	c.mu.Unlock()
	if !ended {
		c.s.log.Debug("lease connection broken", "connection", c.id, "remote", c.remote, "err", err)
	}
	c.stop()
}

// stop ends the connection: the reader, writer and keepalive all return.
// It closes the socket itself rather than through the library, whose
// CloseNow waits for a close handshake in progress (a shutdown's, with a
// client that never answers it); it never blocks.
func (c *conn) stop() {
	c.stopOnce.Do(func() {
		close(c.done)
		c.bw.nc.Close()
	})
}

func (c *conn) stopped() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// goAway sends the shutdown notice, then closes with status 1001. A
// resumable session on a server whose Manager outlives it (Durable) is
// told to reconnect instead, and the connection closed with 1012.
func (c *conn) goAway(durable bool) {
	if durable && c.resumable {
		c.mu.Lock()
		c.detach = true
		c.mu.Unlock()
		c.closeWith(websocket.StatusServiceRestart, &wire.Message{Type: wire.TypeReconnect, Code: forge.EUNAVAILABLE,
			Message: "the server is restarting: resume your session on a new connection within its grace"})
		return
	}
	if c.resumable {
		// Its state ends with this process: resuming would only fail.
		c.closeWith(websocket.StatusGoingAway, &wire.Message{Type: wire.TypeError, Code: wire.CodeExpired, Session: c.owner,
			Message: "the server is shutting down and keeps no lease state: the session and its leases end now"})
		return
	}
	c.closeWith(websocket.StatusGoingAway, &wire.Message{Type: wire.TypeError, Code: forge.EUNAVAILABLE,
		Message: "the server is shutting down: every lease of this connection ends now"})
}

// closeWith sends msg after what is queued, then closes with status.
func (c *conn) closeWith(status websocket.StatusCode, msg *wire.Message) {
	c.mu.Lock()
	if !c.closed && c.goingOff == 0 {
		c.goingOff = status
		c.out = append(c.out, msg)
		c.startWriterLocked()
	}
	c.mu.Unlock()
}

// writeOut writes queued messages until none is left.
func (c *conn) writeOut() {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		batch := c.out
		c.out = nil
		goingOff := c.goingOff
		if len(batch) == 0 {
			c.writing = false
			c.mu.Unlock()
			if goingOff != 0 {
				// The reader sees the close handshake end and cleans up.
				c.ws.Close(goingOff, "server shutting down")
			}
			return
		}
		c.mu.Unlock()
		c.writeSince.Store(int64(time.Since(c.s.epoch)))
		c.bw.begin()
		var err error
		ep := encodeBuffers.Get().(*[]byte)
		for _, msg := range batch {
			*ep, err = appendMessage((*ep)[:0], msg)
			if err == nil {
				err = c.bw.textFrame(*ep)
			}
			if err != nil {
				break
			}
		}
		if cap(*ep) <= 4096 {
			encodeBuffers.Put(ep)
		}
		if endErr := c.bw.end(); err == nil {
			err = endErr
		}
		c.writeSince.Store(0)
		if err == nil {
			// The client took what it was sent (the kernel's buffers
			// have room only as far as it reads): a sign of life, for a
			// client that reads slowly while the server answers it.
			c.seen()
		}
		if err != nil {
			c.mu.Lock()
			c.writing = false
			c.mu.Unlock()
			c.broken(fmt.Errorf("write: %w", err))
			return
		}
	}
}

// keepalive runs from the ping timer, one at a time: it pings, waits up
// to Keepalive/2 for the pong, and arms the next round. A client is
// dropped when nothing at all came from it since the ping and it took
// nothing it was sent, so a silent client keeps its leases at most
// Keepalive after its last sign of life.
// One that sent messages meanwhile is alive, even if its pong waits
// behind them; so is one whose messages the server has not got round to
// reading (the reader was busy with the server's own work since the
// ping).
func (c *conn) keepalive() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	defer c.wg.Done()
	bound := c.s.opts.Keepalive / 2
	sent := int64(time.Since(c.s.epoch))
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	err := c.ws.Ping(ctx)
	cancel()
	if c.stopped() {
		return
	}
	next := bound
	if err != nil {
		if c.silentSince(sent) {
			why := "it sent nothing"
			if w := c.writeSince.Load(); w != 0 {
				why = fmt.Sprintf("it does not read what it is sent: a write to it has waited %s", time.Duration(int64(time.Since(c.s.epoch))-w).Round(time.Millisecond))
			}
			c.drop(DropKeepalive, fmt.Sprintf("nothing from the client, not even a pong, within %s of a ping (keepalive %s): %s", bound, c.s.opts.Keepalive, why))
			return
		}
		// Alive, but the pong is late: ask again at once.
		next = 0
	}
	c.mu.Lock()
	if !c.closed {
		c.pingTimer.Reset(next)
	}
	c.mu.Unlock()
}

// readLoop reads until the connection ends.
func (c *conn) readLoop() {
	max := c.s.opts.MaxMessageBytes
	for {
		typ, r, err := c.ws.Reader(context.Background())
		if err != nil {
			if !c.stopped() {
				c.s.log.Debug("lease connection ended by the client", "connection", c.id, "remote", c.remote, "err", err)
				if c.forwarded && websocket.CloseStatus(err) == -1 {
					// The relay broke, not the client's choice: the
					// relaying server closes with a frame for that.
					c.mu.Lock()
					c.detach = true
					c.mu.Unlock()
				}
			}
			return
		}
		c.seen()
		if !c.throttle() {
			return
		}
		bp := readBuffers.Get().(*[]byte)
		ok := c.readMessage(typ, r, bp, max)
		if cap(*bp) <= 4096 {
			readBuffers.Put(bp)
		}
		if !ok {
			return
		}
	}
}

// encodeBuffers hold a message while it is encoded and written.
var encodeBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// readBuffers hold messages while they are read and handled, so an idle
// connection holds no buffer.
var readBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// readMessage reads and handles one message; false when the connection
// is done.
func (c *conn) readMessage(typ websocket.MessageType, r io.Reader, bp *[]byte, max int64) bool {
	*bp = (*bp)[:0]
	n, err := readInto(bp, io.LimitReader(r, max+1))
	if err != nil {
		return false
	}
	if int64(n) > max {
		rest, err := io.Copy(io.Discard, r)
		if err != nil {
			if int64(n)+rest >= 16*max {
				c.drop(DropTooLarge, fmt.Sprintf("a message over %d bytes (close 1009)", 16*max))
			}
			return false
		}
		c.send(&wire.Message{Type: wire.TypeError, Code: forge.ETOOLARGE,
			Message: fmt.Sprintf("message over the limit of %d bytes: ignored", max)})
		c.cork(false) // held back after an earlier pipelined message
		return true
	}
	if typ != websocket.MessageText {
		c.send(&wire.Message{Type: wire.TypeError, Code: forge.EINVALID, Message: "binary messages are not part of the protocol: send JSON in text messages"})
		c.cork(false)
		return true
	}
	// Decoding and the Manager call run on a short-lived goroutine, so
	// the reader's own stack stays small while it waits, idle, for the
	// next message: that is most of an idle connection's memory.
	// While a message is handled, this connection's answers are held
	// back; they leave in one write when the handler is done and no
	// further whole message is already waiting (a client's pipelined
	// release and acquire get one write back), or enough are held back.
	// The handler goroutine then writes them itself (no writer goroutine
	// to start and wake), after letting the reader go on: reading never
	// waits for writing, or a client whose own reading waits for its
	// writes (a library that answers pings only between them) and the
	// server would wait for each other. A client that does not read at
	// all fills its send queue instead, and is dropped.
	more := frameBuffered(c.br)
	c.cork(true)
	handled := make(chan struct{}) // per message: an idle connection keeps none
	// Working from now until the reader runs again, not only while the
	// handler runs: a goroutine made runnable can wait seconds for a CPU
	// on a loaded machine, and meanwhile a reader waiting for its handler
	// looked like a silent client to the keepalive
	// (TestBusyConnectionsKeepTheirLeases, make test-loaded).
	c.work(true)
	go func() {
		c.handle(*bp)
		close(handled)
		if !more || c.backlog() >= maxCorked {
			c.uncorkAndWrite()
		}
	}()
	<-handled
	c.work(false) // when the reader runs again, not before
	return true
}

// throttle takes a token of the connection's message rate, waiting for
// one when there is none; false when the connection ended meanwhile.
// Before waiting it lets out the answers held back for pipelined
// messages, so they do not wait for the pace.
func (c *conn) throttle() bool {
	d := c.limit.take(time.Now())
	if d == 0 {
		return true
	}
	c.cork(false)
	c.work(true)
	defer c.work(false)
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-c.done:
			return false
		}
		if d = c.limit.take(time.Now()); d == 0 {
			return true
		}
		t.Reset(d)
	}
}

// limiter is a token bucket: rate tokens a second, at most burst kept.
// Time spent waiting beyond what was asked (timers fire late on a busy
// machine) is credited, so the rate holds however coarse the timers. An
// empty bucket is waited on until it holds a few milliseconds' worth of
// tokens (refill), so a client paced at the limit costs the server one
// wake-up per batch of messages rather than one per message.
type limiter struct {
	rate, burst, refill, tokens float64
	last                        time.Time
}

// pacingStep is how much time an empty bucket is let to refill for.
const pacingStep = 10 * time.Millisecond

func (l *limiter) reset(rate float64, burst int, now time.Time) {
	l.rate, l.burst, l.tokens, l.last = rate, float64(burst), float64(burst), now
	l.refill = max(1, min(l.burst, math.Floor(rate*pacingStep.Seconds())))
}

// take takes a token at now and returns 0, or returns how long until the
// bucket is refilled, taking nothing.
func (l *limiter) take(now time.Time) time.Duration {
	if elapsed := now.Sub(l.last); elapsed > 0 {
		l.tokens = min(l.burst, l.tokens+elapsed.Seconds()*l.rate)
		l.last = now
	}
	if l.tokens >= 1 {
		l.tokens--
		return 0
	}
	return time.Duration(math.Ceil((l.refill - l.tokens) / l.rate * float64(time.Second)))
}

func (c *conn) handle(data []byte) {
	msg, err := decode(data)
	if err != nil {
		c.send(errorMessage(msg.ID, msg.Lease, err))
		return
	}
	ctx := context.Background()
	if (msg.Type == wire.TypeSession || msg.Type == wire.TypeResume) && c.version < 2 {
		c.send(errorMessage("", "", forge.Errorf(forge.EINVALID,
			"%s needs protocol version 2: connect with ?version=2 on the WebSocket URL", msg.Type)))
		return
	}
	switch msg.Type {
	case wire.TypePing:
		c.send(&wire.Message{Type: wire.TypePong, ID: msg.ID})
	case wire.TypeAcquire:
		holder := msg.Holder
		if holder == "" {
			holder = c.remote
		}
		if c.s.isClosing() {
			c.send(errorMessage(msg.ID, "", forge.Errorf(forge.EUNAVAILABLE, "the server is shutting down")))
			return
		}
		c.started = true
		req := &lease.Request{Owner: c.owner, ID: msg.ID, Holder: holder, Wants: wants(msg),
			MaxWait: maxWait(msg), Notify: c.notify}
		if err := c.s.m.Acquire(ctx, req); err != nil {
			c.send(errorMessage(msg.ID, "", err))
		}
	case wire.TypeRelease:
		release := c.s.m.Release
		if msg.Broken != "" {
			release = func(ctx context.Context, owner, leaseID string) error {
				return c.s.m.ReleaseBroken(ctx, owner, leaseID, msg.Broken)
			}
		}
		if err := release(ctx, c.owner, msg.Lease); err != nil {
			c.send(errorMessage("", msg.Lease, err))
		}
	case wire.TypeCancel:
		if err := c.s.m.Cancel(ctx, c.owner, msg.ID); err != nil {
			c.send(errorMessage(msg.ID, "", err))
		}
	case wire.TypeSession:
		if c.started {
			c.send(errorMessage("", "", forge.Errorf(forge.EINVALID, "session must be the first message of a connection, before any acquire")))
			return
		}
		sess, err := c.s.m.OpenSession(ctx, time.Duration(msg.GraceMS)*time.Millisecond, c.notify)
		if err != nil {
			c.send(errorMessage("", "", err))
			return
		}
		c.started, c.resumable, c.owner, c.attachment = true, true, sess.ID, sess.Attachment
		c.send(&wire.Message{Type: wire.TypeSession, Session: sess.ID, Secret: sess.Secret, GraceMS: sess.Grace.Milliseconds(),
			Durable: c.s.opts.Durable})
	case wire.TypeResume:
		if c.started {
			c.send(&wire.Message{Type: wire.TypeError, Session: msg.Session, Code: forge.EINVALID,
				Message: "resume must be the first message of a connection, before any acquire or session"})
			return
		}
		sess, err := c.s.m.Resume(ctx, msg.Session, msg.Secret, c.notify)
		if err != nil {
			code := forge.ErrorCode(err)
			if code == forge.ENOTFOUND {
				code = wire.CodeExpired
			}
			c.send(&wire.Message{Type: wire.TypeError, Session: msg.Session, Code: code, Message: forge.ErrorMessage(err)})
			return
		}
		c.started, c.resumable, c.owner, c.attachment = true, true, sess.ID, sess.Attachment
	default:
		c.send(errorMessage(msg.ID, msg.Lease, forge.Errorf(forge.EINVALID,
			"%q is a message the server sends: a client sends acquire, release, cancel, ping, session or resume", msg.Type)))
	}
}
