package leasehttp

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	wire "github.com/forgeci/forge/client/lease"
)

// TestDecodeMatchesWire: the server's decode gives wire.Decode's message
// and error for the messages clients send, for random mutations of them
// (cut, a byte changed, keys repeated or cased differently, escapes,
// nulls, odd numbers), and takes its fast path for the plain ones.
func TestDecodeMatchesWire(t *testing.T) {
	plain := []string{
		`{"type":"acquire","id":"r1","holder":"alice@host pytest -k x","requests":[{"pool":"dut","count":1,"labels":{"arch":"arm64"}}],"max_wait_ms":30000}`,
		`{"type":"acquire","id":"r1","requests":[{"pool":"bench","count":1}]}`,
		`{"type":"acquire","id":"r2","requests":[{"pool":"a"},{"pool":"b","count":2,"labels":{}}]}`,
		` { "type" : "release" , "lease" : "L7d3c9a0b1e2f30415263" } `,
		`{"type":"cancel","id":"r1"}`,
		`{"type":"ping","id":"p1"}`,
		`{"type":"ping"}`,
		`{"type":"session","grace_ms":15000}`,
		`{"type":"resume","session":"S1","secret":"abc"}`,
	}
	for _, s := range plain {
		if decodeFast([]byte(s)) == nil {
			t.Errorf("%s: not on the fast path", s)
		}
		checkDecode(t, s)
	}
	odd := []string{
		`{"type":"acquire","id":"r1","requests":[{"pool":"dut","count":0}]}`,
		`{"type":"acquire","id":"r1","requests":[{"pool":"dut","count":-1}]}`,
		`{"type":"acquire","id":"r1","requests":[]}`,
		`{"type":"acquire","id":"r1","requests":[{"pool":"dut","count":1.0}]}`,
		`{"type":"acquire","id":"r1","requests":[{"pool":"dut","count":1e0}]}`,
		`{"type":"acquire","id":"r1","requests":[{"pool":"dut","count":01}]}`,
		`{"type":"acquire","id":"r1","requests":[{"pool":"dut","labels":{"a":"b","a":"c"}}]}`,
		`{"type":"acquire","id":"r1","requests":[{"pool":"dut","count":1,"count":2}]}`,
		`{"type":"acquire","id":"r1","requests":[{"pool":"dut"}],"requests":[{"pool":"x"}]}`,
		`{"type":"acquire","id":"r1","max_wait_ms":-5,"requests":[{"pool":"dut"}]}`,
		`{"type":"acquire","id":"r1","max_wait_ms":99999999999999999,"requests":[{"pool":"dut"}]}`,
		`{"type":"release","lease":"L1","lease":"L2"}`,
		`{"Type":"release","LEASE":"L1"}`,
		`{"type":"release","lease":"L\u0031"}`,
		`{"type":"release","lease":null}`,
		`{"type":"release","lease":"L1","extra":[1,{"x":null}]}`,
		`{"type":"release","lease":"L1"} x`,
		`{"type":"release","lease":"L1"}{}`,
		`{"type":"release","lease":"L1",}`,
		`{"type":"release","lease":"` + strings.Repeat("L", 200) + `"}`,
		`{"type":"ping","id":"` + strings.Repeat("p", 129) + `"}`,
		`{"type":"hello"}`,
		`{"type":"acquire"}`,
		`{}`, `[]`, `"x"`, `null`, ``, `{"type":"ping","id":"\xff"}`, "{\"type\":\"ping\",\"id\":\"a\tb\"}",
		`{"type":"session","grace_ms":-1}`, `{"type":"ping","id":"p","id":"q"}`, `{"type":7}`,
	}
	for _, s := range odd {
		checkDecode(t, s)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	alphabet := []byte(`{}[]":,-0123456789. ez\ntypeidacquirelease` + "\x00\xff")
	for range 20000 {
		b := []byte(plain[rng.IntN(len(plain))])
		switch rng.IntN(4) {
		case 0:
			b = b[:rng.IntN(len(b)+1)]
		case 1:
			b[rng.IntN(len(b))] = alphabet[rng.IntN(len(alphabet))]
		case 2:
			i := rng.IntN(len(b) + 1)
			b = append(b[:i:i], append([]byte{alphabet[rng.IntN(len(alphabet))]}, b[i:]...)...)
		case 3:
			i := rng.IntN(len(b))
			b = append(b[:i:i], b[i+1:]...)
		}
		checkDecode(t, string(b))
	}
}

func checkDecode(t *testing.T, s string) {
	t.Helper()
	want, wantErr := wire.Decode([]byte(s))
	got, gotErr := decode([]byte(s))
	if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
		t.Fatalf("%q: error %v, wire.Decode's %v", s, gotErr, wantErr)
	}
	wj, _ := json.Marshal(want)
	gj, _ := json.Marshal(got)
	if string(wj) != string(gj) {
		t.Fatalf("%q: decoded %s, wire.Decode %s", s, gj, wj)
	}
}
