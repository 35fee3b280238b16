package lease

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/forgeci/forge"
)

// ProtocolVersion is the "version" of the hello message.
const ProtocolVersion = 1

// Limits of the wire protocol.
const (
	// DefaultMaxMessageBytes is the largest client message processed; a
	// larger one gets a "too_large" error.
	DefaultMaxMessageBytes = 64 << 10
	maxRequestID           = 128
	maxHolder              = 1024
	maxLeaseID             = 128
)

// Client message types.
const (
	TypeAcquire = "acquire"
	TypeRelease = "release"
	TypeCancel  = "cancel"
	TypePing    = "ping"
)

// Server message types.
const (
	TypeHello    = "hello"
	TypeQueued   = "queued"
	TypeGranted  = "granted"
	TypeReleased = "released"
	TypeCanceled = "canceled"
	TypeRevoked  = "revoked"
	TypePong     = "pong"
	TypeError    = "error"
)

// ClientMessage is a message from a client, decoded and validated by
// Decode.
type ClientMessage struct {
	Type string `json:"type"`
	// ID is the request id (acquire, cancel) or the ping id.
	ID       string        `json:"id,omitempty"`
	Holder   string        `json:"holder,omitempty"`
	Requests []WireRequest `json:"requests,omitempty"`
	// MaxWaitMS bounds the wait of an acquire; 0 waits forever.
	MaxWaitMS int64  `json:"max_wait_ms,omitempty"`
	Lease     string `json:"lease,omitempty"`
}

// WireRequest is one {pool, count, labels} of an acquire.
type WireRequest struct {
	Pool string `json:"pool"`
	// Count defaults to 1 when absent.
	Count  *int              `json:"count,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Wants converts the requests of an acquire for the Manager.
func (m *ClientMessage) Wants() []forge.ResourceRequest {
	out := make([]forge.ResourceRequest, len(m.Requests))
	for i, r := range m.Requests {
		n := 1
		if r.Count != nil {
			n = *r.Count
		}
		out[i] = forge.ResourceRequest{Pool: r.Pool, Count: n, Labels: r.Labels}
	}
	return out
}

// MaxWait is MaxWaitMS as a duration.
func (m *ClientMessage) MaxWait() time.Duration {
	return time.Duration(m.MaxWaitMS) * time.Millisecond
}

// ServerMessage is a message to a client; fields not used by its Type are
// left out of the JSON.
type ServerMessage struct {
	Type        string `json:"type"`
	Version     int    `json:"version,omitempty"`
	KeepaliveMS int64  `json:"keepalive_ms,omitempty"`
	Connection  string `json:"connection,omitempty"`
	ID          string `json:"id,omitempty"`
	Position    int    `json:"position,omitempty"`
	Lease       string `json:"lease,omitempty"`
	Holder      string `json:"holder,omitempty"`
	GrantedAt   string `json:"granted_at,omitempty"`
	// Resources maps a pool name to the granted resources.
	Resources map[string][]WireResource `json:"resources,omitempty"`
	Reason    string                    `json:"reason,omitempty"`
	Code      string                    `json:"code,omitempty"`
	Message   string                    `json:"message,omitempty"`
}

// WireResource is one granted resource. Attributes and labels are always
// present (possibly empty) so clients need not check for null.
type WireResource struct {
	ID         string            `json:"id"`
	Attributes map[string]string `json:"attributes"`
	Labels     map[string]string `json:"labels"`
}

var emptyMap = map[string]string{}

func grantedMessage(g *Grant) *ServerMessage {
	msg := &ServerMessage{
		Type: TypeGranted, ID: g.RequestID, Lease: g.ID, Holder: g.Holder,
		GrantedAt: g.Granted.UTC().Format(time.RFC3339Nano),
		Resources: make(map[string][]WireResource, len(g.Pools)),
	}
	for _, gp := range g.Pools {
		pool, rs := gp.Pool, gp.Resources
		out := make([]WireResource, len(rs))
		for i, r := range rs {
			out[i] = WireResource{ID: r.ID, Attributes: r.Attributes, Labels: r.Labels}
			if out[i].Attributes == nil {
				out[i].Attributes = emptyMap
			}
			if out[i].Labels == nil {
				out[i].Labels = emptyMap
			}
		}
		msg.Resources[pool] = out
	}
	return msg
}

func errorMessage(id, lease string, err error) *ServerMessage {
	return &ServerMessage{Type: TypeError, ID: id, Lease: lease, Code: forge.ErrorCode(err), Message: forge.ErrorMessage(err)}
}

// Decode parses and validates one client message. On error it still
// returns what it could read of the message (its type, id and lease), so
// the error reply can name the request; the error is a *forge.Error with
// code EINVALID.
func Decode(data []byte) (*ClientMessage, error) {
	var msg ClientMessage
	// Unmarshal also rejects anything after the object.
	if err := json.Unmarshal(data, &msg); err != nil {
		// Salvage the identifying fields for the reply, if they are there.
		var ids struct {
			Type  any `json:"type"`
			ID    any `json:"id"`
			Lease any `json:"lease"`
		}
		_ = json.Unmarshal(data, &ids)
		salvaged := &ClientMessage{}
		salvaged.Type, _ = ids.Type.(string)
		if s, ok := ids.ID.(string); ok && len(s) <= maxRequestID {
			salvaged.ID = s
		}
		if s, ok := ids.Lease.(string); ok && len(s) <= maxLeaseID {
			salvaged.Lease = s
		}
		return salvaged, forge.Errorf(forge.EINVALID, "malformed message: %s", jsonProblem(err))
	}
	err := msg.validate()
	if err != nil {
		// Do not echo identifiers the protocol does not allow.
		if len(msg.ID) > maxRequestID {
			msg.ID = ""
		}
		if len(msg.Lease) > maxLeaseID {
			msg.Lease = ""
		}
	}
	return &msg, err
}

func jsonProblem(err error) string {
	switch e := err.(type) {
	case *json.SyntaxError:
		return fmt.Sprintf("invalid JSON at byte %d: %s", e.Offset, e.Error())
	case *json.UnmarshalTypeError:
		if e.Field != "" {
			return fmt.Sprintf("field %q must be %s, not %s", e.Field, e.Type.String(), e.Value)
		}
		return fmt.Sprintf("a message must be a JSON object, not %s", e.Value)
	}
	return err.Error()
}

func (m *ClientMessage) validate() error {
	switch m.Type {
	case TypeAcquire:
		if err := checkRequestID(m.ID); err != nil {
			return err
		}
		if len(m.Holder) > maxHolder {
			return forge.Errorf(forge.EINVALID, "holder is longer than %d bytes", maxHolder)
		}
		if len(m.Requests) == 0 {
			return forge.Errorf(forge.EINVALID, "acquire %q: requests is empty: ask for at least one {\"pool\":...}", m.ID)
		}
		for i, r := range m.Requests {
			if r.Pool == "" {
				return forge.Errorf(forge.EINVALID, "acquire %q: requests[%d] has no pool", m.ID, i)
			}
			if r.Count != nil && *r.Count < 1 {
				return forge.Errorf(forge.EINVALID, "acquire %q: requests[%d]: count %d must be at least 1", m.ID, i, *r.Count)
			}
		}
		if m.MaxWaitMS < 0 {
			return forge.Errorf(forge.EINVALID, "acquire %q: max_wait_ms %d is negative", m.ID, m.MaxWaitMS)
		}
		if m.MaxWaitMS > int64(365*24*time.Hour/time.Millisecond) {
			return forge.Errorf(forge.EINVALID, "acquire %q: max_wait_ms %d is more than a year", m.ID, m.MaxWaitMS)
		}
	case TypeRelease:
		if m.Lease == "" {
			return forge.Errorf(forge.EINVALID, "release needs a lease")
		}
		if len(m.Lease) > maxLeaseID {
			m.Lease = ""
			return forge.Errorf(forge.EINVALID, "lease id is longer than %d characters", maxLeaseID)
		}
	case TypeCancel:
		return checkRequestID(m.ID)
	case TypePing:
		if len(m.ID) > maxRequestID {
			m.ID = ""
			return forge.Errorf(forge.EINVALID, "ping id is longer than %d characters", maxRequestID)
		}
	case "":
		return forge.Errorf(forge.EINVALID, "message has no type")
	default:
		return forge.Errorf(forge.EINVALID, "unknown message type %q (want acquire, release, cancel or ping)", m.Type)
	}
	return nil
}

func checkRequestID(id string) error {
	if id == "" {
		return forge.Errorf(forge.EINVALID, "request needs an id")
	}
	if len(id) > maxRequestID {
		return forge.Errorf(forge.EINVALID, "request id is longer than %d characters", maxRequestID)
	}
	return nil
}
