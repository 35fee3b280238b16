package lease

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/forgeci/forge"
)

// Path is where a forge server serves the lease WebSocket.
const Path = "/api/v1/leases/ws"

// ProtocolVersion is the version of the wire protocol in this file; the
// server announces its own in its hello message. Version 2 added
// resumable sessions (session, resume, resumed, reconnect); a client that
// sends none of them gets version 1's semantics unchanged.
const ProtocolVersion = 2

// MaxSecretLength bounds a session id and a session secret.
const MaxSecretLength = 128

// Limits of the protocol, checked by Validate.
const (
	// MaxIDLength bounds a client-chosen request id (acquire, cancel,
	// ping).
	MaxIDLength = 128
	// MaxLeaseIDLength bounds a lease id.
	MaxLeaseIDLength = 128
	// MaxHolderLength bounds an acquire's holder, in bytes.
	MaxHolderLength = 1024
	// MaxBrokenLength bounds the reason of a release that reports its
	// resources broken.
	MaxBrokenLength = 4096
	// MaxWaitMS bounds an acquire's max_wait_ms: a year.
	MaxWaitMS = 365 * 24 * 3600 * 1000
)

// Message types. Every frame is one JSON object with a "type" field.
const (
	// Client to server.
	TypeAcquire = "acquire"
	TypeRelease = "release"
	TypeCancel  = "cancel"
	TypePing    = "ping"
	// TypeSession asks for a resumable session (client, before any
	// acquire) and answers with its id and secret (server).
	TypeSession = "session"
	// TypeResume reattaches a session on a new connection (client,
	// first message).
	TypeResume = "resume"

	// Server to client.
	TypeHello    = "hello"
	TypeQueued   = "queued"
	TypeGranted  = "granted"
	TypeReleased = "released"
	TypeCanceled = "canceled"
	TypeRevoked  = "revoked"
	TypePong     = "pong"
	TypeError    = "error"
	// TypeResumed answers a resume with the session's state.
	TypeResumed = "resumed"
	// TypeReconnect tells a session's client that the server restarts:
	// resume on a new connection.
	TypeReconnect = "reconnect"
)

// Error codes of error messages. They are spelled like forge's own error
// codes (forge.EINVALID and so on), so a client maps them one to one.
const (
	CodeInvalid     = "invalid"
	CodeNotFound    = "not_found"
	CodeTimeout     = "timeout"
	CodeTooLarge    = "too_large"
	CodeConflict    = "conflict"
	CodeUnavailable = "unavailable"
	// CodeExpired answers a resume of a session whose grace ended (or that
	// the server never had): its leases are lost.
	CodeExpired = "expired"
	// CodeUnauthorized answers a resume with the wrong secret.
	CodeUnauthorized = "unauthorized"
)

// Message is one frame of the protocol in either direction. It is a flat
// union: Type says which of the other fields are meaningful, and the JSON
// encoding leaves out the rest. The field names are the protocol's (see
// docs/leases.md); servers and clients in Go may both use this type.
type Message struct {
	Type string `json:"type"`

	// ID is the client-chosen request id (acquire, cancel, ping, and the
	// answers queued, granted, canceled, pong, error).
	ID string `json:"id,omitempty"`
	// Holder describes who asks (acquire) or holds (granted).
	Holder string `json:"holder,omitempty"`
	// Requests are granted all at once or not at all (acquire).
	Requests []Request `json:"requests,omitempty"`
	// MaxWaitMS bounds the wait in the queue; 0 waits forever (acquire).
	MaxWaitMS int64 `json:"max_wait_ms,omitempty"`

	// Lease is the lease id (release, granted, released, revoked, error).
	Lease string `json:"lease,omitempty"`
	// Broken, on a release, reports the lease's resources broken: the
	// server takes them out of service with this reason (at most 4 KiB).
	Broken string `json:"broken,omitempty"`

	// Version, KeepaliveMS and Connection come with hello.
	Version     int    `json:"version,omitempty"`
	KeepaliveMS int64  `json:"keepalive_ms,omitempty"`
	Connection  string `json:"connection,omitempty"`

	// Position in the queue, 1 being next in line (queued).
	Position int `json:"position,omitempty"`

	// GrantedAt is an RFC 3339 time with nanoseconds (granted).
	GrantedAt string `json:"granted_at,omitempty"`
	// Resources maps each pool to the resources granted from it (granted).
	Resources map[string][]Resource `json:"resources,omitempty"`

	// Reason says why a lease was revoked (revoked).
	Reason string `json:"reason,omitempty"`

	// Code and Message describe an error (error, and the reason of
	// reconnect).
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`

	// Session and Secret identify a resumable session (session, resume,
	// resumed; an error answering resume); GraceMS is its grace (session,
	// resumed).
	Session string `json:"session,omitempty"`
	Secret  string `json:"secret,omitempty"`
	GraceMS int64  `json:"grace_ms,omitempty"`
	// Durable says the server keeps lease state across its own restart
	// (session): without it, a server that is gone took the session
	// with it.
	Durable bool `json:"durable,omitempty"`
	// Leases are the session's leases, as granted messages, and Queued its
	// requests still waiting (resumed).
	Leases []*Message `json:"leases,omitempty"`
	Queued []Queued   `json:"queued,omitempty"`
}

// Queued is a request still waiting in the queue (resumed).
type Queued struct {
	ID       string `json:"id"`
	Position int    `json:"position"`
}

// Request asks for Count resources of Pool whose labels include every one
// of Labels. A Count of 0 means 1 on the wire (the field is left out); a
// "count" that is on the wire must be at least 1.
type Request struct {
	Pool   string            `json:"pool"`
	Count  int               `json:"count,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`

	countGiven bool // "count" was on the wire (Validate rejects 0)
}

// UnmarshalJSON decodes a request, noting whether "count" was given, so
// that Validate can tell an explicit 0 (invalid) from an absent count
// (1).
func (r *Request) UnmarshalJSON(data []byte) error {
	var w struct {
		Pool   string            `json:"pool"`
		Count  *int              `json:"count"`
		Labels map[string]string `json:"labels"`
	}
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	*r = Request{Pool: w.Pool, Labels: w.Labels}
	if w.Count != nil {
		r.Count, r.countGiven = *w.Count, true
	}
	return nil
}

// ResourceRequest is r in forge's domain terms, its count defaulted to 1.
func (r Request) ResourceRequest() forge.ResourceRequest {
	return forge.ResourceRequest{Pool: r.Pool, Count: max(r.Count, 1), Labels: r.Labels}
}

// Resource is one granted resource. A server always sends both maps,
// empty ones as {}.
type Resource struct {
	ID         string            `json:"id"`
	Attributes map[string]string `json:"attributes"`
	Labels     map[string]string `json:"labels"`
}

// Decode parses one frame and checks it against the rules of its type
// (Validate). It never panics, whatever data holds, and never returns a
// nil message: on error the message holds what could be read of the
// frame's "type", "id" and "lease" (when they are well-formed), so a
// server can name the request in its error answer. The error is a
// *forge.Error with code EINVALID whose message a client author can act
// on.
func Decode(data []byte) (*Message, error) {
	if !utf8.Valid(data) {
		return &Message{}, forge.Errorf(forge.EINVALID, "message is not valid UTF-8: a text frame must be")
	}
	var m Message
	if err := json.Unmarshal(data, &m); err != nil {
		return salvage(data), forge.Errorf(forge.EINVALID, "malformed message: %s", jsonProblem(err))
	}
	if err := m.Validate(); err != nil {
		// Do not echo identifiers the protocol does not allow.
		if len(m.ID) > MaxIDLength {
			m.ID = ""
		}
		if len(m.Lease) > MaxLeaseIDLength {
			m.Lease = ""
		}
		return &m, err
	}
	return &m, nil
}

// salvage reads the identifying fields of a message that did not decode.
func salvage(data []byte) *Message {
	var ids struct {
		Type  any `json:"type"`
		ID    any `json:"id"`
		Lease any `json:"lease"`
	}
	_ = json.Unmarshal(data, &ids) // what is not there stays empty
	m := &Message{}
	m.Type, _ = ids.Type.(string)
	if s, ok := ids.ID.(string); ok && len(s) <= MaxIDLength {
		m.ID = s
	}
	if s, ok := ids.Lease.(string); ok && len(s) <= MaxLeaseIDLength {
		m.Lease = s
	}
	return m
}

// jsonProblem words a JSON decoding error for the author of the message.
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("invalid JSON at byte %d: %s", syn.Offset, syn.Error())
	case errors.As(err, &typ) && typ.Field != "":
		return fmt.Sprintf("field %q must be %s, not %s", typ.Field, typ.Type.String(), typ.Value)
	case errors.As(err, &typ):
		return fmt.Sprintf("a message must be a JSON object, not %s", typ.Value)
	}
	return err.Error()
}

// Validate checks that m carries what its type requires, within the
// protocol's limits. The error is a *forge.Error with code EINVALID.
func (m *Message) Validate() error {
	invalid := func(format string, args ...any) error {
		return forge.Errorf(forge.EINVALID, format, args...)
	}
	switch m.Type {
	case "":
		return invalid(`message without "type"`)
	case TypeAcquire:
		if err := checkID(m.Type, m.ID, true); err != nil {
			return err
		}
		if len(m.Holder) > MaxHolderLength {
			return invalid("acquire %q: holder is longer than %d bytes", m.ID, MaxHolderLength)
		}
		if len(m.Requests) == 0 {
			return invalid(`acquire %q without "requests": ask for at least one {"pool": ...}`, m.ID)
		}
		for i, r := range m.Requests {
			if r.Pool == "" {
				return invalid(`acquire %q: request %d without "pool"`, m.ID, i+1)
			}
			if r.Count < 0 || r.Count == 0 && r.countGiven {
				return invalid("acquire %q: request %d: count %d must be at least 1", m.ID, i+1, r.Count)
			}
		}
		if m.MaxWaitMS < 0 {
			return invalid("acquire %q: max_wait_ms %d is negative", m.ID, m.MaxWaitMS)
		}
		if m.MaxWaitMS > MaxWaitMS {
			return invalid("acquire %q: max_wait_ms %d is more than a year", m.ID, m.MaxWaitMS)
		}
	case TypeCancel, TypeQueued, TypeCanceled:
		return checkID(m.Type, m.ID, true)
	case TypePing, TypePong:
		return checkID(m.Type, m.ID, false)
	case TypeRelease, TypeReleased, TypeRevoked:
		if len(m.Broken) > MaxBrokenLength {
			return invalid("release %q: broken is %d bytes, more than %d", m.Lease, len(m.Broken), MaxBrokenLength)
		}
		return checkLease(m.Type, m.Lease)
	case TypeGranted:
		if err := checkID(m.Type, m.ID, true); err != nil {
			return err
		}
		if err := checkLease(m.Type, m.Lease); err != nil {
			return err
		}
		for pool, rs := range m.Resources {
			for _, r := range rs {
				if r.ID == "" {
					return invalid("granted %q: a resource of pool %q without an id", m.ID, pool)
				}
			}
		}
	case TypeSession:
		if m.GraceMS < 0 || m.GraceMS > MaxWaitMS {
			return invalid("session: grace_ms %d must be between 0 and a year", m.GraceMS)
		}
		if len(m.Session) > MaxSecretLength || len(m.Secret) > MaxSecretLength {
			return invalid("session: session or secret longer than %d bytes", MaxSecretLength)
		}
	case TypeResume:
		if m.Session == "" || m.Secret == "" {
			return invalid(`resume without "session" and "secret"`)
		}
		if len(m.Session) > MaxSecretLength || len(m.Secret) > MaxSecretLength {
			return invalid("resume: session or secret longer than %d bytes", MaxSecretLength)
		}
	case TypeResumed:
		if m.Session == "" {
			return invalid(`resumed without "session"`)
		}
		for _, g := range m.Leases {
			if g == nil || g.Lease == "" {
				return invalid("resumed %q: a lease without an id", m.Session)
			}
		}
	case TypeReconnect:
	case TypeError:
		if m.Code == "" {
			return invalid(`error message without "code"`)
		}
	case TypeHello:
		if m.Version < 1 {
			return invalid(`hello without a "version"`)
		}
	default:
		return invalid("unknown message type %q (a client sends acquire, release, cancel, ping, session or resume)", m.Type)
	}
	return nil
}

// checkID checks a request id; an optional one may be empty.
func checkID(typ, id string, required bool) error {
	switch {
	case id == "" && required:
		return forge.Errorf(forge.EINVALID, `%s message without "id"`, typ)
	case len(id) > MaxIDLength:
		return forge.Errorf(forge.EINVALID, "%s: id of %d bytes is longer than %d", typ, len(id), MaxIDLength)
	}
	return nil
}

func checkLease(typ, lease string) error {
	switch {
	case lease == "":
		return forge.Errorf(forge.EINVALID, `%s message without "lease"`, typ)
	case len(lease) > MaxLeaseIDLength:
		return forge.Errorf(forge.EINVALID, "%s: lease id of %d bytes is longer than %d", typ, len(lease), MaxLeaseIDLength)
	}
	return nil
}

// Time parses a granted message's GrantedAt; the zero time when it is
// missing or malformed.
func (m *Message) Time() time.Time {
	t, err := time.Parse(time.RFC3339Nano, m.GrantedAt)
	if err != nil {
		return time.Time{}
	}
	return t
}

// EnvName returns the variable that carries a pool's resource ids:
// FORGE_LEASE_ and the pool name upper-cased with every character other
// than an ASCII letter or digit replaced by "_" ("lab-dut.x" gives
// FORGE_LEASE_LAB_DUT_X).
func EnvName(pool string) string { return forge.EnvName("FORGE_LEASE_", pool) }

// EnvJSON is the variable that carries the whole granted message.
const EnvJSON = "FORGE_LEASE_JSON"

// EnvBroken is the variable forge lease gives CMD: a file into which CMD
// writes why its resources are broken; forge lease then releases them
// with ReleaseBroken.
const EnvBroken = "FORGE_LEASE_BROKEN"

// GrantEnv returns the environment of a grant: one EnvName(pool) per pool
// with the comma-separated resource ids, in the order granted, and EnvJSON
// with raw, the granted message as received. Pools whose names map to the
// same variable ("a-b" and "a.b") share it, their ids in pool name order.
func GrantEnv(resources map[string][]Resource, raw []byte) map[string]string {
	env := make(map[string]string, len(resources)+1)
	for _, pool := range slices.Sorted(maps.Keys(resources)) {
		name := EnvName(pool)
		for _, r := range resources[pool] {
			if env[name] != "" {
				env[name] += ","
			}
			env[name] += r.ID
		}
		if _, ok := env[name]; !ok {
			env[name] = ""
		}
	}
	env[EnvJSON] = string(raw)
	return env
}
