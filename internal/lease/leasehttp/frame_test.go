package leasehttp

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

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
