package replica

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/forgeci/forge"
)

// A relayed lease WebSocket is copied byte for byte once the leader has
// accepted the handshake: the leader's pings reach the client and its
// pongs come back, so the leader's keepalive judges the client itself,
// and the relay parses nothing of what the leader sends. It follows the
// client's frames, though, to tell the leader how the client left: a
// client whose socket closed between frames without a close frame (a
// killed process: its choice) gets a close frame sent on its behalf, so
// the leader ends its session at once; anything else that ends a relay (a
// client cut in the middle of a frame, this server's death or stop, the
// leader's) closes the leader's side without one, and the leader keeps
// the session for its grace.

// relay is one relayed connection.
type relay struct {
	client, leader net.Conn
	once           sync.Once
}

func (rl *relay) close() {
	rl.once.Do(func() {
		rl.client.Close()
		rl.leader.Close()
	})
}

// relay forwards a lease WebSocket handshake to the leader and, once it is
// accepted, relays the connection (see above).
func (r *Replica) relay(w http.ResponseWriter, req *http.Request, l Leader) {
	target, err := url.Parse(l.URL)
	if err != nil || target.Host == "" {
		r.opts.WriteError(w, req, forge.Errorf(forge.EUNAVAILABLE, "the lease leader's URL %q is not usable: retry later", l.URL))
		return
	}
	up, err := dialLeader(req.Context(), target)
	if err != nil {
		r.forget()
		r.opts.WriteError(w, req, forge.WrapError(forge.EUNAVAILABLE, err, fmt.Sprintf("the lease leader at %s cannot be reached (%v): retry", l.URL, err)))
		return
	}
	out := req.Clone(context.Background())
	out.URL = &url.URL{Path: req.URL.Path, RawQuery: req.URL.RawQuery}
	out.RequestURI = ""
	out.Host = req.Host
	out.Header = req.Header.Clone()
	out.Header.Set("X-Forwarded-For", req.RemoteAddr)
	r.outHeader(out.Header, l)
	up.SetDeadline(time.Now().Add(10 * time.Second))
	ubr := bufio.NewReader(up)
	var resp *http.Response
	if err = out.Write(up); err == nil {
		resp, err = http.ReadResponse(ubr, out)
	}
	if err != nil {
		up.Close()
		r.forget()
		r.opts.WriteError(w, req, forge.WrapError(forge.EUNAVAILABLE, err, fmt.Sprintf("the lease leader at %s did not answer the handshake (%v): retry", l.URL, err)))
		return
	}
	up.SetDeadline(time.Time{})
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// Refused (401, 503, …): the leader's answer is the client's.
		defer up.Close()
		for k, vs := range resp.Header {
			if k != "Connection" && k != "Content-Length" && k != "Transfer-Encoding" {
				w.Header()[k] = vs
			}
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		up.Close()
		r.opts.WriteError(w, req, forge.Errorf(forge.EINTERNAL, "cannot relay a WebSocket on this connection"))
		return
	}
	down, dbuf, err := hj.Hijack()
	if err != nil {
		up.Close()
		return
	}
	down.SetDeadline(time.Time{}) // the HTTP server's are for requests
	rl := &relay{client: down, leader: up}
	// The leader's answer, then whatever either side sent early.
	err = resp.Write(down)
	if err == nil && ubr.Buffered() > 0 {
		_, err = io.CopyN(down, ubr, int64(ubr.Buffered()))
	}
	var early []byte
	if err == nil && dbuf.Reader.Buffered() > 0 {
		early = make([]byte, dbuf.Reader.Buffered())
		_, err = io.ReadFull(dbuf.Reader, early)
	}
	if err != nil {
		rl.close()
		return
	}
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		rl.close()
		return
	}
	r.relays[rl] = struct{}{}
	r.mu.Unlock()
	go func() {
		defer func() {
			r.mu.Lock()
			delete(r.relays, rl)
			r.mu.Unlock()
		}()
		rl.run(early)
	}()
}

// dialLeader opens a connection to the leader's host.
func dialLeader(ctx context.Context, u *url.URL) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	host := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			host = net.JoinHostPort(u.Hostname(), "443")
		} else {
			host = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	if u.Scheme == "https" {
		d := &tls.Dialer{Config: &tls.Config{ServerName: u.Hostname()}}
		return d.DialContext(ctx, "tcp", host)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", host)
}

// run copies both ways until either side ends.
func (rl *relay) run(early []byte) {
	fromLeader := make(chan struct{})
	go func() {
		defer close(fromLeader)
		_, _ = io.Copy(rl.client, rl.leader) // splice on Linux
		// The leader closed, or died: the client's connection ends
		// with it (a close frame from the leader came through).
		rl.close()
	}()
	var fr frames
	clean := false
	if len(early) > 0 {
		fr.feed(early)
		if _, err := rl.leader.Write(early); err != nil {
			rl.close()
			<-fromLeader
			return
		}
	}
	buf := make([]byte, 4096)
	for {
		n, err := rl.client.Read(buf)
		if n > 0 {
			fr.feed(buf[:n])
			if _, werr := rl.leader.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			// The client's socket closed (or broke): between frames
			// and without a close frame, it left by its own choice.
			clean = err == io.EOF && fr.boundary() && !fr.closed
			break
		}
	}
	if clean {
		_, _ = rl.leader.Write(closeFrame(1001, "the client's connection to the forwarding server ended"))
		if tc, ok := rl.leader.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		// The leader answers the close and closes its side.
		select {
		case <-fromLeader:
		case <-time.After(5 * time.Second):
		}
	}
	rl.close()
	<-fromLeader
}

// frames follows the frame boundaries of a stream of WebSocket frames
// from a client (RFC 6455 section 5.2).
type frames struct {
	hdr    [14]byte
	have   int    // header bytes collected
	need   int    // header length once known (0: not yet)
	left   uint64 // payload bytes of the current frame still to come
	closed bool   // a close frame was seen
}

// boundary reports whether the stream ended between frames.
func (f *frames) boundary() bool { return f.have == 0 && f.left == 0 }

func (f *frames) feed(p []byte) {
	for len(p) > 0 {
		if f.left > 0 {
			n := uint64(len(p))
			if n > f.left {
				n = f.left
			}
			f.left -= n
			p = p[n:]
			continue
		}
		f.hdr[f.have] = p[0]
		f.have++
		p = p[1:]
		if f.have == 2 {
			f.need = 2
			switch f.hdr[1] & 0x7f {
			case 126:
				f.need += 2
			case 127:
				f.need += 8
			}
			if f.hdr[1]&0x80 != 0 {
				f.need += 4
			}
		}
		if f.have < 2 || f.have < f.need {
			continue
		}
		var n uint64
		switch l := f.hdr[1] & 0x7f; l {
		case 126:
			n = uint64(binary.BigEndian.Uint16(f.hdr[2:4]))
		case 127:
			n = binary.BigEndian.Uint64(f.hdr[2:10])
		default:
			n = uint64(l)
		}
		if f.hdr[0]&0x0f == 0x8 {
			f.closed = true
		}
		f.have, f.need, f.left = 0, 0, n
	}
}

// closeFrame is a client's close frame (masked, with a zero mask) with
// status code and reason.
func closeFrame(code uint16, reason string) []byte {
	payload := make([]byte, 2, 2+len(reason))
	binary.BigEndian.PutUint16(payload, code)
	payload = append(payload, reason...)
	if len(payload) > 125 {
		payload = payload[:125]
	}
	return append([]byte{0x88, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
}

// closeRelays ends every relayed connection when this server stops,
// without a close frame to the leader, which keeps the sessions for their
// grace; the clients see their connection end and resume elsewhere.
func (r *Replica) closeRelays() {
	r.mu.Lock()
	r.closing = true
	relays := make([]*relay, 0, len(r.relays))
	for rl := range r.relays {
		relays = append(relays, rl)
	}
	r.mu.Unlock()
	for _, rl := range relays {
		rl.close()
	}
}
