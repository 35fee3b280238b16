package leasehttp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
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

// TestBatchWriterFrames: the frames the server writes itself are whole
// RFC 6455 frames with each length form, inside a batch or not, and none
// follows the library's close frame.
func TestBatchWriterFrames(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		a, b := net.Pipe()
		bw := &batchWriter{nc: a}
		payload := bytes.Repeat([]byte("x"), n)
		got := make(chan []byte)
		go func() { data, _ := io.ReadAll(b); got <- data }()
		bw.begin()
		if err := bw.textFrame(payload); err != nil {
			t.Fatal(err)
		}
		if err := bw.end(); err != nil {
			t.Fatal(err)
		}
		if err := bw.textFrame(payload); err != nil {
			t.Fatal(err)
		}
		a.Close()
		data := <-got
		for i := range 2 {
			br := bufio.NewReaderSize(bytes.NewReader(data), len(data)+16)
			br.Peek(len(data))
			if !frameBuffered(br) {
				t.Fatalf("%d bytes, frame %d: not a whole text frame: % x", n, i+1, data[:min(len(data), 12)])
			}
			hdr := 2
			switch {
			case n > 65535:
				hdr = 10
			case n > 125:
				hdr = 4
			}
			if len(data) < hdr+n || !bytes.Equal(data[hdr:hdr+n], payload) {
				t.Fatalf("%d bytes, frame %d: payload not where the header says", n, i+1)
			}
			data = data[hdr+n:]
		}
		if len(data) != 0 {
			t.Fatalf("%d bytes: %d bytes left over", n, len(data))
		}
	}
	a, b := net.Pipe()
	defer b.Close()
	go io.Copy(io.Discard, b)
	bw := &batchWriter{nc: a}
	if _, err := bw.Write([]byte{0x88, 0x02, 0x03, 0xe8}); err != nil {
		t.Fatal(err)
	}
	if err := bw.textFrame([]byte("{}")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("a text frame after the close frame: %v, want net.ErrClosed", err)
	}
}
