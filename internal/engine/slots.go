package engine

import (
	"context"
	"sync"
)

// slots limits how many jobs run at once. Waiters are served first come,
// first served, except that urgent waiters (jobs already holding a lease)
// go before the others.
type slots struct {
	mu      sync.Mutex
	free    int
	waiters [2][]chan struct{} // [0] urgent, [1] normal
}

func newSlots(n int) *slots { return &slots{free: n} }

// acquire takes a slot, waiting for one until ctx ends.
func (s *slots) acquire(ctx context.Context, urgent bool) error {
	s.mu.Lock()
	if s.free > 0 && len(s.waiters[0]) == 0 && len(s.waiters[1]) == 0 {
		s.free--
		s.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	class := 1
	if urgent {
		class = 0
	}
	s.waiters[class] = append(s.waiters[class], ch)
	s.mu.Unlock()

	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		for i, w := range s.waiters[class] {
			if w == ch {
				s.waiters[class] = append(s.waiters[class][:i], s.waiters[class][i+1:]...)
				return ctx.Err()
			}
		}
		// The slot was handed over just as ctx ended: pass it on.
		s.releaseLocked()
		return ctx.Err()
	}
}

// release gives a slot back, to the next waiter if there is one.
func (s *slots) release() {
	s.mu.Lock()
	s.releaseLocked()
	s.mu.Unlock()
}

func (s *slots) releaseLocked() {
	for c := range s.waiters {
		if len(s.waiters[c]) > 0 {
			ch := s.waiters[c][0]
			s.waiters[c] = s.waiters[c][1:]
			close(ch)
			return
		}
	}
	s.free++
}
