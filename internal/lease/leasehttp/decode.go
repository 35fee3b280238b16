package leasehttp

import (
	"unicode/utf8"

	wire "github.com/forgeci/forge/client/lease"
)

// decode is wire.Decode, with a fast path for the plain messages clients
// send most (acquire, release, ping, cancel, session, resume), which
// encoding/json decoded at a sixth of the server's CPU per grant. The
// fast path reads only a strict subset of JSON: known keys spelled
// exactly, each at most once, strings without escapes, integers without
// fractions or exponents, no nulls. Whatever falls outside it, and every
// message that fails validation, goes to wire.Decode, so the result and
// the error are wire.Decode's (TestDecodeMatchesWire).
func decode(data []byte) (*wire.Message, error) {
	if m := decodeFast(data); m != nil && m.Validate() == nil {
		return m, nil
	}
	return wire.Decode(data)
}

// fastReader scans data; ok turns false at the first thing the fast path
// does not read.
type fastReader struct {
	data []byte
	i    int
	ok   bool
}

func (r *fastReader) space() {
	for r.i < len(r.data) {
		switch r.data[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

// byte consumes c (after white space).
func (r *fastReader) byte(c byte) bool {
	r.space()
	if r.ok && r.i < len(r.data) && r.data[r.i] == c {
		r.i++
		return true
	}
	return false
}

// peek reports whether the next token starts with c.
func (r *fastReader) peek(c byte) bool {
	r.space()
	return r.i < len(r.data) && r.data[r.i] == c
}

// str reads a string without escapes or control characters.
func (r *fastReader) str() string {
	if !r.byte('"') {
		r.ok = false
		return ""
	}
	start := r.i
	for r.i < len(r.data) {
		c := r.data[r.i]
		switch {
		case c == '"':
			s := string(r.data[start:r.i])
			r.i++
			return s
		case c == '\\' || c < 0x20:
			r.ok = false
			return ""
		}
		r.i++
	}
	r.ok = false
	return ""
}

// int reads an integer: an optional minus, then digits without a leading
// zero (but 0 itself), at most 15 of them.
func (r *fastReader) int() int64 {
	r.space()
	neg := r.i < len(r.data) && r.data[r.i] == '-'
	if neg {
		r.i++
	}
	start := r.i
	var n int64
	for r.i < len(r.data) && r.data[r.i] >= '0' && r.data[r.i] <= '9' {
		n = n*10 + int64(r.data[r.i]-'0')
		r.i++
	}
	digits := r.i - start
	if digits == 0 || digits > 15 || digits > 1 && r.data[start] == '0' {
		r.ok = false
		return 0
	}
	if r.i < len(r.data) {
		switch r.data[r.i] {
		case '.', 'e', 'E':
			r.ok = false
			return 0
		}
	}
	if neg {
		return -n
	}
	return n
}

// object reads an object's members, calling member for each key (which
// must read the value); false when a key repeats or member fails.
func (r *fastReader) object(member func(key string) bool) {
	if !r.byte('{') {
		r.ok = false
		return
	}
	if r.byte('}') {
		return
	}
	for r.ok {
		key := r.str()
		if !r.ok || !r.byte(':') || !member(key) {
			r.ok = false
			return
		}
		if r.byte(',') {
			continue
		}
		if !r.byte('}') {
			r.ok = false
		}
		return
	}
}

// decodeFast returns the message, or nil when data is outside the fast
// path's subset.
func decodeFast(data []byte) *wire.Message {
	if !utf8.Valid(data) {
		return nil
	}
	r := &fastReader{data: data, ok: true}
	m := &wire.Message{}
	var seen uint16
	once := func(bit uint16) bool {
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		return true
	}
	r.object(func(key string) bool {
		switch key {
		case "type":
			m.Type = r.str()
			return once(1 << 0)
		case "id":
			m.ID = r.str()
			return once(1 << 1)
		case "holder":
			m.Holder = r.str()
			return once(1 << 2)
		case "lease":
			m.Lease = r.str()
			return once(1 << 3)
		case "max_wait_ms":
			m.MaxWaitMS = r.int()
			return once(1 << 4)
		case "session":
			m.Session = r.str()
			return once(1 << 5)
		case "secret":
			m.Secret = r.str()
			return once(1 << 6)
		case "grace_ms":
			m.GraceMS = r.int()
			return once(1 << 7)
		case "requests":
			m.Requests = r.requests()
			return once(1<<8) && m.Requests != nil
		}
		return false
	})
	if !r.ok {
		return nil
	}
	if r.space(); r.i != len(data) {
		return nil
	}
	return m
}

// requests reads an acquire's requests: a non-empty array of objects
// with pool, a count of at least 1, and labels.
func (r *fastReader) requests() []wire.Request {
	if !r.byte('[') || r.peek(']') {
		r.ok = false
		return nil
	}
	var out []wire.Request
	for r.ok {
		var q wire.Request
		var seen uint8
		r.object(func(key string) bool {
			bit := uint8(0)
			switch key {
			case "pool":
				q.Pool, bit = r.str(), 1
			case "count":
				q.Count, bit = int(r.int()), 2
				if q.Count < 1 {
					return false // wire.Decode tells 0 from absent
				}
			case "labels":
				q.Labels, bit = r.labels(), 4
			default:
				return false
			}
			if seen&bit != 0 {
				return false
			}
			seen |= bit
			return r.ok
		})
		out = append(out, q)
		if r.byte(',') {
			continue
		}
		if !r.byte(']') {
			r.ok = false
		}
		break
	}
	if !r.ok {
		return nil
	}
	return out
}

// labels reads an object of strings, each key once.
func (r *fastReader) labels() map[string]string {
	m := map[string]string{}
	r.object(func(key string) bool {
		if _, dup := m[key]; dup {
			return false
		}
		m[key] = r.str()
		return r.ok
	})
	return m
}
