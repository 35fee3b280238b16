package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/forgeci/forge"
)

// resumeAttemptTimeout bounds one reconnection attempt.
const resumeAttemptTimeout = 5 * time.Second

// resume reconnects after the connection ended with cause and resumes the
// session, trying until its grace ends. It returns the new connection,
// installed, or the error that ends the Client (its leases lost).
func (c *Client) resume(cause error) (*websocket.Conn, error) {
	c.mu.Lock()
	id, grace := c.session, c.grace
	c.mu.Unlock()
	deadline := time.Now().Add(grace)
	c.logf("lease connection lost (%s): resuming session %s within its grace of %s", forge.ErrorMessage(cause), id, grace)
	backoff := 50 * time.Millisecond
	last := cause
	for {
		if c.ctx.Err() != nil {
			return nil, forge.Errorf(forge.ECANCELED, "lease client closed")
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			err := forge.WrapError(forge.EUNAVAILABLE, last, fmt.Sprintf("could not resume lease session %s within its grace of %s (%s): its leases are lost", id, grace, forge.ErrorMessage(last)))
			c.logf("%s", forge.ErrorMessage(err))
			return nil, err
		}
		conn, err := c.resumeOnce(id, min(remaining, resumeAttemptTimeout))
		if err == nil {
			return conn, nil
		}
		if !c.durable && errors.Is(err, syscall.ECONNREFUSED) {
			// Nothing listens where the server was: it is gone, and a
			// server that keeps no lease state took the session with it.
			err = forge.WrapError(forge.EUNAVAILABLE, err, fmt.Sprintf("the lease server is gone (%s) and kept no lease state: session %s and its leases are lost", forge.ErrorMessage(err), id))
			c.logf("%s", forge.ErrorMessage(err))
			return nil, err
		}
		switch forge.ErrorCode(err) {
		case forge.ENOTFOUND, forge.EUNAUTHORIZED, forge.EINVALID, forge.ECANCELED:
			c.logf("%s", forge.ErrorMessage(err))
			return nil, err
		}
		last = err
		t := time.NewTimer(min(backoff, remaining))
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
		}
		backoff = min(2*backoff, time.Second)
	}
}

// resumeOnce makes one attempt: dial, resume, take what happened while
// away, and reconcile with the server's state.
func (c *Client) resumeOnce(id string, timeout time.Duration) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	defer cancel()
	conn, hello, err := dialOnce(ctx, c.url, c.url, &c.opts, c.lastSeen)
	if err != nil {
		return nil, err
	}
	if hello.Version < 2 {
		conn.CloseNow()
		return nil, forge.Errorf(forge.EINVALID, "lease session %s cannot be resumed: the server now speaks protocol version %d, without sessions; its leases are lost", id, hello.Version)
	}
	data, _ := json.Marshal(&Message{Type: TypeResume, Session: id, Secret: c.secret})
	if err := conn.Write(ctx, websocket.MessageText, data); err != nil {
		conn.CloseNow()
		return nil, forge.WrapError(forge.EUNAVAILABLE, err, "cannot send resume")
	}
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			conn.CloseNow()
			return nil, forge.WrapError(forge.EUNAVAILABLE, err, "no answer to resume")
		}
		c.lastSeen.Store(time.Now().UnixNano())
		m, err := Decode(data)
		if err != nil {
			continue
		}
		switch {
		case m.Type == TypeResumed:
			if err := c.install(conn, m); err != nil {
				return nil, err
			}
			return conn, nil
		case m.Type == TypeError && m.Session != "":
			conn.CloseNow()
			if m.Code == CodeExpired {
				return nil, forge.Errorf(forge.ENOTFOUND, "lease session %s expired: the server released its leases (%s)", id, m.Message)
			}
			return nil, serverError(m)
		default:
			// What happened while away (revoked, a timed-out request),
			// sent before resumed.
			c.dispatch(m, data)
		}
	}
}

// install makes conn the Client's connection and reconciles the Client's
// leases and waiting acquisitions with the session's state st: a lease
// the server no longer has is lost (or released, if its release was
// asked); an acquisition the server granted while we were away is
// completed; messages the server never got are sent again.
func (c *Client) install(conn *websocket.Conn, st *Message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	held := make(map[string]*Message, len(st.Leases))
	for _, g := range st.Leases {
		held[g.Lease] = g
	}
	queued := make(map[string]bool, len(st.Queued))
	for _, q := range st.Queued {
		queued[q.ID] = true
	}
	var resend []*Message
	type ending struct {
		l    *Lease
		lost bool
	}
	var ends []ending
	c.mu.Lock()
	if c.closing || c.err != nil {
		c.mu.Unlock()
		conn.Close(websocket.StatusNormalClosure, "client closed")
		return forge.Errorf(forge.ECANCELED, "lease client closed")
	}
	c.conn = conn
	if st.GraceMS > 0 {
		c.grace = time.Duration(st.GraceMS) * time.Millisecond
	}
	for id, l := range c.leases {
		if held[id] != nil {
			delete(held, id)
			if l.isReleasing() {
				resend = append(resend, l.releaseMessage())
			}
			continue
		}
		delete(c.leases, id)
		ends = append(ends, ending{l, !l.isReleasing()})
	}
	for _, g := range held { // granted while away, or never ours to keep
		p := c.pending[g.ID]
		if p == nil || p.abandoned {
			delete(c.pending, g.ID)
			resend = append(resend, &Message{Type: TypeRelease, Lease: g.Lease})
			continue
		}
		delete(c.pending, g.ID)
		raw, _ := json.Marshal(g)
		l := newLease(c, g, raw)
		c.leases[l.id] = l
		p.result <- acquireResult{lease: l}
	}
	for id, p := range c.pending {
		switch {
		case queued[id] && p.abandoned:
			resend = append(resend, &Message{Type: TypeCancel, ID: id})
		case queued[id]:
		case p.abandoned:
			delete(c.pending, id)
		default: // the server never got it
			resend = append(resend, p.msg)
		}
	}
	kept, waiting := len(c.leases), len(c.pending)
	c.mu.Unlock()
	for _, e := range ends {
		if e.lost {
			e.l.end(forge.Errorf(forge.ECONFLICT, "lease %s was lost while the connection was down (revoked, or the server lost it)", e.l.id), true)
		} else {
			e.l.end(ErrReleased, false)
		}
	}
	for _, m := range resend {
		if err := c.sendLocked(m); err != nil {
			return err
		}
	}
	c.logf("lease session %s resumed: %d leases kept, %d requests waiting", st.Session, kept, waiting)
	return nil
}
