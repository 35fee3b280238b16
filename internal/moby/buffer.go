package moby

import "sync"

// HeadBuffer keeps the first bytes written to it, up to its limit, and
// takes (and drops) the rest: a job's forgexec stderr, shown when the job
// fails before its steps report. Safe for concurrent use.
type HeadBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

// NewHeadBuffer keeps the first max bytes.
func NewHeadBuffer(max int) *HeadBuffer { return &HeadBuffer{max: max} }

func (t *HeadBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if room := t.max - len(t.b); room > 0 {
		t.b = append(t.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (t *HeadBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
