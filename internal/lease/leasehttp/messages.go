package leasehttp

import (
	"time"

	"github.com/forgeci/forge"
	wire "github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/lease"
)

// The server speaks the public client's wire types (client/lease): one
// definition of the protocol's messages, which both ends import.

// DefaultMaxMessageBytes is the largest client message processed; a
// larger one gets a "too_large" error.
const DefaultMaxMessageBytes = 64 << 10

var emptyMap = map[string]string{}

// grantedMessage is the granted message of g. Every resource carries both
// maps, empty ones as {}, as docs/leases.md promises.
func grantedMessage(g *lease.Grant) *wire.Message {
	msg := &wire.Message{
		Type: wire.TypeGranted, ID: g.RequestID, Lease: g.ID, Holder: g.Holder,
		GrantedAt: g.Granted.UTC().Format(time.RFC3339Nano),
		Resources: make(map[string][]wire.Resource, len(g.Pools)),
	}
	for _, gp := range g.Pools {
		out := make([]wire.Resource, len(gp.Resources))
		for i, r := range gp.Resources {
			out[i] = wire.Resource{ID: r.ID, Attributes: r.Attributes, Labels: r.Labels}
			if out[i].Attributes == nil {
				out[i].Attributes = emptyMap
			}
			if out[i].Labels == nil {
				out[i].Labels = emptyMap
			}
		}
		msg.Resources[gp.Pool] = out
	}
	return msg
}

func errorMessage(id, leaseID string, err error) *wire.Message {
	return &wire.Message{Type: wire.TypeError, ID: id, Lease: leaseID, Code: forge.ErrorCode(err), Message: forge.ErrorMessage(err)}
}

// wants converts an acquire's requests for the Manager.
func wants(m *wire.Message) []forge.ResourceRequest {
	out := make([]forge.ResourceRequest, len(m.Requests))
	for i, r := range m.Requests {
		out[i] = r.ResourceRequest()
	}
	return out
}

func maxWait(m *wire.Message) time.Duration {
	return time.Duration(m.MaxWaitMS) * time.Millisecond
}

// resumedMessage is the resumed message of a session's state.
func resumedMessage(st *lease.Resumed) *wire.Message {
	msg := &wire.Message{Type: wire.TypeResumed, Session: st.Session, GraceMS: st.Grace.Milliseconds(),
		Leases: make([]*wire.Message, len(st.Leases)), Queued: make([]wire.Queued, len(st.Queued))}
	for i, g := range st.Leases {
		msg.Leases[i] = grantedMessage(g)
	}
	for i, q := range st.Queued {
		msg.Queued[i] = wire.Queued{ID: q.RequestID, Position: q.Position}
	}
	return msg
}
