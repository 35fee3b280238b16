package forgexec

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/forgeci/forge"
)

// Decoder reads the frames forgexec writes (see the package
// documentation) from a container's stdout.
type Decoder struct {
	prefix []byte // "@NONCE "
	slab   []forge.LogLine
	// Foreign counts the text lines that were not frames of this nonce
	// (something else wrote to the container's stdout), Corrupt the frames
	// that could not be read to their end (a container killed while
	// forgexec wrote).
	Foreign, Corrupt int
}

// NewDecoder returns a Decoder of the frames marked with nonce.
func NewDecoder(nonce string) *Decoder {
	return &Decoder{prefix: []byte("@" + nonce + " ")}
}

// Decode reads frames from r until EOF and passes every event to emit, in
// order. LogLines handed out are never reused: emit may keep them. It
// returns r's error, or nil at EOF.
func (d *Decoder) Decode(r io.Reader, emit func(forge.Event)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var long []byte // a frame longer than br's buffer
	for {
		frame, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long, frame...)
			continue
		}
		if long != nil {
			frame = append(long, frame...)
			long = nil
		}
		if len(frame) > 0 {
			if err == nil {
				frame = frame[:len(frame)-1]
			}
			d.frame(frame, emit)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// frame decodes one frame, without its newline.
func (d *Decoder) frame(b []byte, emit func(forge.Event)) {
	if !bytes.HasPrefix(b, d.prefix) {
		d.Foreign++
		return
	}
	b = b[len(d.prefix):]
	for len(b) > 0 {
		var (
			e   forge.Event
			err error
		)
		switch b[0] {
		case 'L':
			e, b, err = d.line(b[1:])
		case 'E':
			e, b, err = event(b[1:])
		default:
			err = fmt.Errorf("unknown record %q", b[0])
		}
		if err != nil {
			d.Corrupt++
			return
		}
		emit(e)
		if len(b) > 0 {
			if b[0] != ' ' {
				d.Corrupt++
				return
			}
			b = b[1:]
		}
	}
}

// line decodes the rest of an L record and returns the bytes after it.
func (d *Decoder) line(b []byte) (forge.Event, []byte, error) {
	var f [3]int64
	var err error
	for i := range f {
		if f[i], b, err = number(b, ','); err != nil {
			return forge.Event{}, nil, err
		}
	}
	if len(b) < 2 || b[1] != ',' {
		return forge.Event{}, nil, errors.New("no stream")
	}
	stream := forge.Stdout
	switch b[0] {
	case 'e':
		stream = forge.Stderr
	case 's':
		stream = forge.System
	}
	n, b, err := number(b[2:], ':')
	if err != nil || n < 0 || int64(len(b)) < n {
		return forge.Event{}, nil, errors.New("bad text length")
	}
	if len(d.slab) == 0 {
		d.slab = make([]forge.LogLine, 256)
	}
	l := &d.slab[0]
	d.slab = d.slab[1:]
	t := time.Unix(0, f[2])
	*l = forge.LogLine{Number: int(f[1]), Time: t, Stream: stream, Text: string(b[:n])}
	return forge.Event{Type: forge.EventLine, Time: t, Step: int(f[0]), Line: l}, b[n:], nil
}

// event decodes the rest of an E record.
func event(b []byte) (forge.Event, []byte, error) {
	n, b, err := number(b, ':')
	if err != nil || n < 0 || int64(len(b)) < n {
		return forge.Event{}, nil, errors.New("bad event length")
	}
	var e forge.Event
	if err := json.Unmarshal(b[:n], &e); err != nil {
		return forge.Event{}, nil, err
	}
	return e, b[n:], nil
}

// number reads a decimal integer ended by sep.
func number(b []byte, sep byte) (int64, []byte, error) {
	i := bytes.IndexByte(b, sep)
	if i <= 0 || i > 20 {
		return 0, nil, errors.New("bad number")
	}
	n, err := strconv.ParseInt(string(b[:i]), 10, 64)
	if err != nil {
		return 0, nil, err
	}
	return n, b[i+1:], nil
}
