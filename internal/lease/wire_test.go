package lease

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/forgeci/forge"
)

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		name, in, code string
		check          func(*ClientMessage) bool
	}{
		{"acquire", `{"type":"acquire","id":"r1","holder":"h","requests":[{"pool":"dut","count":2,"labels":{"arch":"arm64"}}],"max_wait_ms":30000}`, "",
			func(m *ClientMessage) bool {
				w := m.Wants()
				return m.ID == "r1" && m.Holder == "h" && len(w) == 1 && w[0].Count == 2 && w[0].Labels["arch"] == "arm64" && m.MaxWait().Seconds() == 30
			}},
		{"default count", `{"type":"acquire","id":"r1","requests":[{"pool":"dut"}]}`, "",
			func(m *ClientMessage) bool { return m.Wants()[0].Count == 1 }},
		{"unknown fields ignored", `{"type":"ping","id":"p","extra":[1,2]}`, "", func(m *ClientMessage) bool { return m.ID == "p" }},
		{"release", `{"type":"release","lease":"L1"}`, "", func(m *ClientMessage) bool { return m.Lease == "L1" }},
		{"cancel", `{"type":"cancel","id":"r1"}`, "", func(m *ClientMessage) bool { return m.ID == "r1" }},
		{"null", `null`, forge.EINVALID, nil},
		{"string", `"acquire"`, forge.EINVALID, nil},
		{"empty", ``, forge.EINVALID, nil},
		{"type wrong type", `{"type":1,"id":"r"}`, forge.EINVALID, func(m *ClientMessage) bool { return m.ID == "r" }},
		{"huge wait", `{"type":"acquire","id":"r","requests":[{"pool":"p"}],"max_wait_ms":99999999999999}`, forge.EINVALID, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Decode([]byte(tc.in))
			if got := forge.ErrorCode(err); got != tc.code {
				t.Fatalf("code: got %q (%v), want %q", got, err, tc.code)
			}
			if m == nil {
				t.Fatal("Decode returned no message")
			}
			if tc.check != nil && !tc.check(m) {
				t.Fatalf("decoded %+v: not what was sent", m)
			}
		})
	}
}

// FuzzDecode: Decode never panics, always returns a message, returns
// EINVALID or nothing, accepts only known types, and an accepted message
// survives a round trip through JSON unchanged in meaning.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"type":"acquire","id":"r1","holder":"alice@host pytest -k x","requests":[{"pool":"dut","count":1,"labels":{"arch":"arm64"}}],"max_wait_ms":30000}`,
		`{"type":"release","lease":"L1"}`, `{"type":"cancel","id":"r1"}`, `{"type":"ping","id":"p1"}`,
		`{"type":"acquire","id":"r","requests":[{"pool":"a"},{"pool":"b","count":3}]}`, `{}`, `[]`, `null`, `{"type":"x"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data)
		if m == nil {
			t.Fatal("nil message")
		}
		if err != nil {
			if forge.ErrorCode(err) != forge.EINVALID || forge.ErrorMessage(err) == "" {
				t.Fatalf("error %v: want invalid with a message", err)
			}
			if len(m.ID) > maxRequestID || len(m.Lease) > maxLeaseID {
				t.Fatalf("echoes an over-long id")
			}
			return
		}
		switch m.Type {
		case TypeAcquire:
			if m.ID == "" || len(m.ID) > maxRequestID || len(m.Requests) == 0 || m.MaxWaitMS < 0 {
				t.Fatalf("accepted bad acquire %+v", m)
			}
			for _, w := range m.Wants() {
				if w.Pool == "" || w.Count < 1 {
					t.Fatalf("accepted bad request %+v", w)
				}
			}
		case TypeRelease:
			if m.Lease == "" {
				t.Fatal("accepted release without lease")
			}
		case TypeCancel:
			if m.ID == "" {
				t.Fatal("accepted cancel without id")
			}
		case TypePing:
		default:
			t.Fatalf("accepted unknown type %q", m.Type)
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := Decode(again)
		if err != nil {
			if !utf8.Valid(data) {
				return // invalid UTF-8 was replaced; lengths may change
			}
			t.Fatalf("re-decoding %s: %v", again, err)
		}
		if m2.Type != m.Type || m2.ID != m.ID || m2.Lease != m.Lease || len(m2.Requests) != len(m.Requests) {
			t.Fatalf("round trip changed %+v into %+v", m, m2)
		}
	})
}

func TestFrameBuffered(t *testing.T) {
	text := textFrame(`{"type":"ping"}`)
	long := textFrame(strings.Repeat("x", 300))
	ping := []byte{0x89, 0x80, 1, 2, 3, 4}
	for _, tc := range []struct {
		name string
		in   []byte
		want bool
	}{
		{"empty", nil, false},
		{"whole text frame", text, true},
		{"text frame and more", append(append([]byte{}, text...), text...), true},
		{"half a frame", text[:len(text)-3], false},
		{"header only", text[:2], false},
		{"whole 16-bit length frame", long, true},
		{"partial 16-bit length frame", long[:200], false},
		{"control frame", ping, false},
		{"not final", append([]byte{0x01}, text[1:]...), false},
	} {
		br := bufio.NewReaderSize(bytes.NewReader(tc.in), 1024)
		br.Peek(len(tc.in))
		if got := frameBuffered(br); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
