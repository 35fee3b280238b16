package lease

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Path is where a forge server serves the lease WebSocket.
const Path = "/api/v1/leases/ws"

// ProtocolVersion is the version of the wire protocol in this file; the
// server announces its own in its hello message.
const ProtocolVersion = 1

// MaxIDLength bounds a client-chosen request id.
const MaxIDLength = 128

// Message types. Every frame is one JSON object with a "type" field.
const (
	// Client to server.
	TypeAcquire = "acquire"
	TypeRelease = "release"
	TypeCancel  = "cancel"
	TypePing    = "ping"

	// Server to client.
	TypeHello    = "hello"
	TypeQueued   = "queued"
	TypeGranted  = "granted"
	TypeReleased = "released"
	TypeCanceled = "canceled"
	TypeRevoked  = "revoked"
	TypePong     = "pong"
	TypeError    = "error"
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

	// Code and Message describe an error (error).
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

// Request asks for Count resources of Pool whose labels include every one
// of Labels. A Count of 0 means 1 on the wire.
type Request struct {
	Pool   string            `json:"pool"`
	Count  int               `json:"count,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Resource is one granted resource.
type Resource struct {
	ID         string            `json:"id"`
	Attributes map[string]string `json:"attributes,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
}

// Decode parses one frame and checks what every message of its type must
// carry. It never panics, whatever data holds; the error names the problem
// in words a client author can act on.
func Decode(data []byte) (*Message, error) {
	var m Message
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Validate checks that m carries what its type requires.
func (m *Message) Validate() error {
	need := func(field, value string) error {
		if value == "" {
			return fmt.Errorf("%s message without %q", m.Type, field)
		}
		return nil
	}
	switch m.Type {
	case "":
		return fmt.Errorf(`message without "type"`)
	case TypeAcquire:
		if err := checkID(m.ID); err != nil {
			return err
		}
		if len(m.Requests) == 0 {
			return fmt.Errorf(`acquire %q without "requests"`, m.ID)
		}
		for i, r := range m.Requests {
			if r.Pool == "" {
				return fmt.Errorf(`acquire %q: request %d without "pool"`, m.ID, i+1)
			}
			if r.Count < 0 {
				return fmt.Errorf("acquire %q: request %d: count %d is negative", m.ID, i+1, r.Count)
			}
		}
		if m.MaxWaitMS < 0 {
			return fmt.Errorf("acquire %q: max_wait_ms %d is negative", m.ID, m.MaxWaitMS)
		}
	case TypeCancel, TypePing, TypeQueued, TypeCanceled, TypePong:
		return checkID(m.ID)
	case TypeRelease, TypeReleased, TypeRevoked:
		return need("lease", m.Lease)
	case TypeGranted:
		if err := checkID(m.ID); err != nil {
			return err
		}
		if err := need("lease", m.Lease); err != nil {
			return err
		}
		for pool, rs := range m.Resources {
			for _, r := range rs {
				if r.ID == "" {
					return fmt.Errorf("granted %q: a resource of pool %q without an id", m.ID, pool)
				}
			}
		}
	case TypeError:
		return need("code", m.Code)
	case TypeHello:
		if m.Version < 1 {
			return fmt.Errorf(`hello without a "version"`)
		}
	default:
		return fmt.Errorf("unknown message type %q", m.Type)
	}
	return nil
}

func checkID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf(`message without "id"`)
	case len(id) > MaxIDLength:
		return fmt.Errorf("id of %d bytes is longer than %d", len(id), MaxIDLength)
	case !utf8.ValidString(id):
		return fmt.Errorf("id is not valid UTF-8")
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
func EnvName(pool string) string {
	var b strings.Builder
	b.WriteString("FORGE_LEASE_")
	for _, r := range pool { // an invalid byte is a rune of its own, as for regexp
		switch {
		case r >= 'a' && r <= 'z':
			b.WriteRune(r - 'a' + 'A')
		case r >= 'A' && r <= 'Z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// EnvJSON is the variable that carries the whole granted message.
const EnvJSON = "FORGE_LEASE_JSON"

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
