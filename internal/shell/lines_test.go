package shell

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

// feed writes data into a lineBuffer in chunks of the given sizes (cycled)
// and returns what it emitted; complete lines get their newline back.
func feed(data []byte, chunks []int, maxLine int, m *Masker) (out []byte, pieces []string) {
	b := lineBuffer{max: maxLine, look: m.Lookahead(), m: m}
	b.emit = func(line []byte, complete bool) {
		out = append(out, line...)
		if complete {
			out = append(out, '\n')
		}
		pieces = append(pieces, string(line))
	}
	for i := 0; len(data) > 0; i++ {
		n := len(data)
		if len(chunks) > 0 {
			n = min(n, max(1, chunks[i%len(chunks)]))
		}
		space := b.space()
		n = min(n, len(space))
		copy(space, data[:n])
		b.commit(n)
		data = data[n:]
	}
	b.flush()
	return out, pieces
}

func TestLineBuffer(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		chunks []int
		max    int
		want   []string
	}{
		{"lines", "a\nbb\n\nccc", nil, 10, []string{"a", "bb", "", "ccc"}},
		{"byte by byte", "ab\ncd\n", []int{1}, 10, []string{"ab", "cd"}},
		{"exactly max stays whole", "0123456789\nx\n", []int{3}, 10, []string{"0123456789", "x"}},
		{"one past max is cut", "0123456789A\n", nil, 10, []string{"0123456789", "A"}},
		{"long line in pieces", "aaaaaaaaaabbbbbbbbbbcc\n", []int{7}, 10, []string{"aaaaaaaaaa", "bbbbbbbbbb", "cc"}},
		{"long last line", "aaaaaaaaaabbb", nil, 10, []string{"aaaaaaaaaa", "bbb"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got := feed([]byte(tt.in), tt.chunks, tt.max, nil)
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCleanText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"", ""},
		{"a\x00b", "a\uFFFDb"},
		{"a\xff\xfe\xfdb", "a\uFFFDb"},
		{"\xe2\x9c", "\uFFFD"},       // a cut rune
		{"ok ✓ \xc3", "ok ✓ \uFFFD"}, // cut at the end
		{"\uFFFD stays", "\uFFFD stays"},
	}
	for _, tt := range tests {
		if got := string(cleanText([]byte(tt.in))); got != tt.want {
			t.Errorf("cleanText(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzLineBuffer checks that no byte is lost or added, whatever the chunks:
// the pieces with their newlines are the input again, none is longer than
// max, and no piece of valid UTF-8 input cuts a rune.
func FuzzLineBuffer(f *testing.F) {
	f.Add([]byte("a\nbb\nccc"), 3, 4)
	f.Add([]byte("✓✓✓✓✓✓\n"), 1, 5)
	f.Add(bytes.Repeat([]byte("x"), 100), 7, 10)
	f.Fuzz(func(t *testing.T, data []byte, chunk, maxLine int) {
		if maxLine < 4 || maxLine > 1000 || chunk < 1 {
			return
		}
		out, pieces := feed(data, []int{chunk, chunk*3 + 1}, maxLine, nil)
		if !bytes.Equal(out, data) {
			t.Fatalf("got %q, want %q", out, data)
		}
		valid := utf8.Valid(data)
		for _, p := range pieces {
			if len(p) > maxLine {
				t.Fatalf("piece of %d bytes, max %d", len(p), maxLine)
			}
			if valid && !utf8.ValidString(p) {
				t.Fatalf("piece %q cuts a rune", p)
			}
		}
	})
}

// TestPipeReadDeadline checks that the read end of pipe() is pollable: the
// drain timeout relies on read deadlines, which only pollable files have.
func TestPipeReadDeadline(t *testing.T) {
	r, w, err := pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close() // held open: only the deadline can end the read
	if err := r.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatalf("SetReadDeadline: %v", err)
	}
	start := time.Now()
	_, err = r.Read(make([]byte, 10))
	if !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Errorf("Read: got %v after %v, want a deadline error after 50ms", err, time.Since(start))
	}
}

// TestKillPipeHoldersOnlyWriters: a process holding the read end of a
// step's pipe (a child forge forks for another job, before it execs) is
// left alone; one holding the write end is killed.
func TestKillPipeHoldersOnlyWriters(t *testing.T) {
	m := marker(t)
	killMarked(t, m)
	r, w, err := pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	reader := exec.Command("sleep", m)
	reader.Stdin = r
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		reader.Process.Kill()
		reader.Wait()
	}()
	writer := exec.Command("sleep", m)
	writer.Stdout = w
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if n := killPipeHolders([]*os.File{r}); n != 1 {
		t.Errorf("killPipeHolders = %d, want 1 (the writer)", n)
	}
	if err := writer.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("writer: got %v, want killed", err)
	}
	if err := reader.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the reader was killed too: %v", err)
	}
}
