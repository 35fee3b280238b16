// Package livelog is an in-process publish/subscribe hub for the log lines
// of running jobs: the runner publishes every line as it happens and the log
// viewer follows a job by subscribing. Lines are kept permanently elsewhere
// (forge.LogStore); this package only carries them live.
//
// Publishing never blocks: a subscriber whose buffer is full is dropped (its
// channel is closed and Dropped reports true), so a slow reader can never slow
// a build. A dropped reader catches up from the log store.
package livelog

import (
	"sync"

	"github.com/forgeci/forge"
)

// Hub routes published lines to the subscribers of each job. The zero value
// is not usable; use New. A Hub is safe for concurrent use.
type Hub struct {
	mu   sync.Mutex
	subs map[int64]map[*Subscription]struct{}
}

// New returns an empty hub.
func New() *Hub {
	return &Hub{subs: make(map[int64]map[*Subscription]struct{})}
}

// Subscription receives the lines published for one job after it was made.
type Subscription struct {
	hub     *Hub
	jobID   int64
	c       chan forge.LogLine
	dropped bool // guarded by hub.mu
	closed  bool // guarded by hub.mu
}

// C returns the channel the lines arrive on. It is closed when the job ends
// (Hub.Finish), when the subscriber fell behind (Dropped), or after Close.
func (s *Subscription) C() <-chan forge.LogLine { return s.c }

// Dropped reports whether the subscription was ended because its reader fell
// behind; the reader should then continue from the log store.
func (s *Subscription) Dropped() bool {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return s.dropped
}

// Close ends the subscription. It is idempotent.
func (s *Subscription) Close() {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	s.hub.remove(s)
}

// remove closes s and forgets it; the caller holds h.mu.
func (h *Hub) remove(s *Subscription) {
	if s.closed {
		return
	}
	s.closed = true
	close(s.c)
	if m := h.subs[s.jobID]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(h.subs, s.jobID)
		}
	}
}

// Subscribe follows jobID's lines; buffer is how many lines may wait for the
// reader before it is dropped (at least 1).
func (h *Hub) Subscribe(jobID int64, buffer int) *Subscription {
	if buffer < 1 {
		buffer = 1
	}
	s := &Subscription{hub: h, jobID: jobID, c: make(chan forge.LogLine, buffer)}
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.subs[jobID]
	if m == nil {
		m = make(map[*Subscription]struct{})
		h.subs[jobID] = m
	}
	m[s] = struct{}{}
	return s
}

// Publish hands lines of jobID to its subscribers without blocking.
func (h *Hub) Publish(jobID int64, lines []forge.LogLine) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs[jobID] {
		for _, l := range lines {
			select {
			case s.c <- l:
			default:
				s.dropped = true
				h.remove(s)
			}
			if s.closed {
				break
			}
		}
	}
}

// Finish tells jobID's subscribers that the job's log is complete by
// closing their channels.
func (h *Hub) Finish(jobID int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs[jobID] {
		h.remove(s)
	}
}

// Subscribers returns how many subscriptions jobID has (for tests and metrics).
func (h *Hub) Subscribers(jobID int64) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs[jobID])
}
