package engine

import (
	"sync"

	"github.com/forgeci/forge"
)

// queue hands events from the jobs to the Reporter: many producers, one
// delivering goroutine, at most max events waiting. Producers append to a
// batch under a mutex (cheaper per event than a channel when a job prints a
// million lines); the deliverer takes the whole batch at once.
type queue struct {
	rep forge.Reporter

	mu     sync.Mutex
	items  sync.Cond // signalled when buf gets its first event or on close
	space  sync.Cond // broadcast when the deliverer empties buf
	buf    []forge.Event
	spare  []forge.Event
	max    int
	closed bool
	done   chan struct{} // closed when deliver returns
}

func newQueue(rep forge.Reporter, max int) *queue {
	q := &queue{rep: rep, max: max, done: make(chan struct{})}
	q.items.L = &q.mu
	q.space.L = &q.mu
	return q
}

// push queues e, waiting while the queue is full.
func (q *queue) push(e forge.Event) {
	if q.rep == nil {
		return
	}
	q.mu.Lock()
	for len(q.buf) >= q.max && !q.closed {
		q.space.Wait()
	}
	q.buf = append(q.buf, e)
	if len(q.buf) == 1 {
		q.items.Signal()
	}
	q.mu.Unlock()
}

// deliver reports queued events in order until the queue is closed and
// empty. It runs in its own goroutine, owned by Run.
func (q *queue) deliver() {
	defer close(q.done)
	if q.rep == nil {
		return
	}
	for {
		q.mu.Lock()
		for len(q.buf) == 0 && !q.closed {
			q.items.Wait()
		}
		if len(q.buf) == 0 && q.closed {
			q.mu.Unlock()
			return
		}
		batch := q.buf
		q.buf = q.spare[:0]
		q.space.Broadcast()
		q.mu.Unlock()

		for i := range batch {
			q.rep.Report(batch[i])
			batch[i] = forge.Event{} // let lines be collected
		}
		q.mu.Lock()
		q.spare = batch[:0]
		q.mu.Unlock()
	}
}

// close stops the queue once every queued event is delivered, and waits
// for that.
func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.items.Signal()
	q.space.Broadcast()
	q.mu.Unlock()
	<-q.done
}
