package leasehttp

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/lease"

	wire "github.com/forgeci/forge/client/lease"
)

// TestAppendMessageMatchesJSON: the hand-written encoder writes what
// encoding/json writes, byte for byte, for random messages whose strings
// hold what needs escaping (quotes, control characters, HTML characters,
// invalid UTF-8, U+2028) and the server's real messages.
func TestAppendMessageMatchesJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pieces := []string{"", "a", "dut1", `"`, `\`, "\n", "\t", "\b", "\f", "\r", "\x00", "\x1f", "<", ">", "&",
		"é", "日本", "\u2028", "\u2029", "\xff", "\xe2\x80", "💡", " ", "/", "\x7f"}
	str := func() string {
		if rng.IntN(3) == 0 {
			return ""
		}
		var b []byte
		for range rng.IntN(6) {
			b = append(b, pieces[rng.IntN(len(pieces))]...)
		}
		return string(b)
	}
	num := func() int64 {
		switch rng.IntN(4) {
		case 0:
			return 0
		case 1:
			return -rng.Int64N(1 << 40)
		default:
			return rng.Int64N(1 << 50)
		}
	}
	strMap := func() map[string]string {
		switch rng.IntN(4) {
		case 0:
			return nil
		case 1:
			return map[string]string{}
		}
		m := map[string]string{}
		for range 1 + rng.IntN(4) {
			m[str()] = str()
		}
		return m
	}
	messages := []*wire.Message{
		grantedMessage(testGrant()),
		{Type: wire.TypeQueued, ID: "r1", Position: 3},
		{Type: wire.TypeReleased, Lease: "L1"},
		{Type: wire.TypeHello, Version: 2, KeepaliveMS: 10000, Connection: "C1"},
		{Type: wire.TypeSession, Session: "S1", Secret: "x", GraceMS: 15000, Durable: true},
		{Type: wire.TypeResumed, Session: "S1", Leases: []*wire.Message{grantedMessage(testGrant())}, Queued: []wire.Queued{{ID: "r", Position: 1}}},
	}
	// Every scalar field alone, found by reflection: a field added to
	// wire.Message and not to appendMessage fails here.
	for i := range reflect.TypeFor[wire.Message]().NumField() {
		m := &wire.Message{Type: "t"}
		f := reflect.ValueOf(m).Elem().Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("x<")
		case reflect.Int, reflect.Int64:
			f.SetInt(7)
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Map:
			f.Set(reflect.ValueOf(map[string][]wire.Resource{"p": {{ID: "r"}}}))
		}
		messages = append(messages, m)
	}
	for range 3000 {
		m := &wire.Message{Type: str(), ID: str(), Holder: str(), MaxWaitMS: num(), Lease: str(), Broken: str(),
			Version: int(num()), KeepaliveMS: num(), Connection: str(), Position: int(num()), GrantedAt: str(),
			Reason: str(), Code: str(), Message: str(), Session: str(), Secret: str(), GraceMS: num(), Durable: rng.IntN(2) == 0}
		if rng.IntN(2) == 0 {
			m.Resources = map[string][]wire.Resource{}
			for range rng.IntN(4) {
				var rs []wire.Resource
				if rng.IntN(5) > 0 {
					rs = []wire.Resource{}
				}
				for range rng.IntN(3) {
					rs = append(rs, wire.Resource{ID: str(), Attributes: strMap(), Labels: strMap()})
				}
				m.Resources[str()] = rs
			}
		}
		messages = append(messages, m)
	}
	for _, m := range messages {
		want, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := appendMessage([]byte("prefix"), m)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[len("prefix"):], want) {
			t.Fatalf("appendMessage(%#v):\n got %s\nwant %s", m, got[len("prefix"):], want)
		}
	}
}

func testGrant() *lease.Grant {
	return &lease.Grant{ID: "L7d3c", RequestID: "r1", Holder: "alice@host <pytest> & \"x\"", Granted: time.Date(2026, 11, 26, 13, 40, 2, 123456789, time.UTC),
		Pools: []lease.GrantedPool{
			{Pool: "dut", Resources: []forge.Resource{{ID: "dut1", Attributes: map[string]string{"host": "10.0.0.5", "a": "b"}, Labels: map[string]string{"arch": "arm64"}}, {ID: "dut2"}}},
			{Pool: "a-pool", Resources: []forge.Resource{{ID: "1"}}},
		}}
}
