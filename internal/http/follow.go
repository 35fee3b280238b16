package http

import (
	"context"
	"strconv"
	"time"

	"github.com/forgeci/forge"
)

// LiveLogs carries log lines of running jobs (internal/livelog).
//
// Follow subscribes to the lines of jobID published from now on. lines is
// closed when the job's log is complete or when the reader fell behind
// (dropped then reports true; the reader continues from the log store).
// stop ends the subscription; it is idempotent. Safe for concurrent use.
type LiveLogs interface {
	Follow(jobID int64) (lines <-chan forge.LogLine, dropped func() bool, stop func())
}

// followPoll is how often a follower without live lines looks at the
// store: for jobs run by another server, and to see a job end.
const followPoll = time.Second

// keepAlive is how long a follower may stay silent before it sends
// something (an SSE comment), so that proxies keep the connection open.
const keepAlive = 15 * time.Second

// logSink is where a follower writes: the raw text or the SSE stream.
type logSink interface {
	// line writes one line (buffered).
	line(l forge.LogLine)
	// flush sends what was written; false when the client is gone.
	flush() bool
	// idle is called when nothing was sent for keepAlive; false when the
	// client is gone.
	idle() bool
	// end says the job ended with status and its whole log was written.
	end(status forge.Status)
}

// follower streams job j's log from line from until the job ends or the
// client goes away: stored lines, then live ones. Lines are never sent
// twice or out of order: each is written only when its number is the next.
type follower struct {
	s      *Server
	j      *forge.BuildJob
	builds forge.BuildStore
	logs   forge.LogStore
	live   LiveLogs
	sink   logSink
	next   int
	last   time.Time // when something was last sent
}

// run follows until the job ends (then sink.end) or ctx ends.
func (f *follower) run(ctx context.Context) {
	f.last = time.Now()
	tick := time.NewTicker(followPoll)
	defer tick.Stop()
	live := f.live
	for {
		var lines <-chan forge.LogLine
		dropped, stop := func() bool { return false }, func() {}
		if live != nil {
			// Subscribe before reading the store, so no line falls
			// between the two.
			lines, dropped, stop = live.Follow(f.j.ID)
		}
		// A job recorded finished has all its lines stored.
		status, done := f.status(ctx)
		if !f.catchUp(ctx) {
			stop()
			return
		}
		if done {
			stop()
			f.sink.end(status)
			return
		}
		// Live lines after a gap (lines published before the subscription
		// and not stored yet) wait in pending until the store has the gap.
		var pending []forge.LogLine
		var gap <-chan time.Time
		fill := func() bool {
			if !f.catchUp(ctx) {
				return false
			}
			rest := pending[:0]
			for _, l := range pending {
				f.write(l)
				if l.Number >= f.next {
					rest = append(rest, l)
				}
			}
			pending = rest
			gap = nil
			if len(pending) > 0 {
				gap = time.After(gapWait)
			}
			return f.flush()
		}
	stream:
		for {
			select {
			case <-ctx.Done():
				stop()
				return
			case l, ok := <-lines:
				if !ok {
					break stream
				}
				switch {
				case l.Number < f.next:
				case l.Number == f.next && len(pending) == 0:
					f.write(l)
					if len(lines) == 0 && !f.flush() {
						stop()
						return
					}
				default:
					if len(pending) < maxPending {
						pending = append(pending, l)
					}
					if gap == nil {
						gap = time.After(gapWait)
					}
				}
			case <-gap:
				if !fill() {
					stop()
					return
				}
			case <-tick.C:
				if status, done := f.status(ctx); done {
					stop()
					if f.catchUp(ctx) {
						f.sink.end(status)
					}
					return
				}
				// Lines published live before this follower subscribed
				// reach it only through the store: without reading it
				// each tick, a job that goes quiet would show nothing
				// until its next line.
				if !f.catchUp(ctx) {
					stop()
					return
				}
				if time.Since(f.last) >= keepAlive {
					if !f.sink.idle() {
						stop()
						return
					}
					f.last = time.Now()
				}
			}
		}
		stop()
		if dropped() {
			f.s.log.Debug("log follower fell behind; continuing from the store", "job", f.j.ID, "next", strconv.Itoa(f.next))
			continue
		}
		// The job's log is complete; the job's record may lag a moment
		// behind: go on polling the store until it says the job ended.
		live = nil
	}
}

// status returns the job's current status and whether it ended; a job
// that cannot be read any more counts as ended.
func (f *follower) status(ctx context.Context) (forge.Status, bool) {
	cur, err := f.builds.Job(ctx, f.j.ID)
	if err != nil {
		return f.j.Status, true
	}
	return cur.Status, cur.Status.Done()
}

func (f *follower) write(l forge.LogLine) {
	if l.Number == f.next {
		f.sink.line(l)
		f.next++
	}
}

func (f *follower) flush() bool {
	f.last = time.Now()
	return f.sink.flush()
}

// catchUp writes the stored lines from next on.
func (f *follower) catchUp(ctx context.Context) bool {
	for {
		lines, err := f.logs.Lines(ctx, f.j.ID, f.next, logPage)
		if err != nil {
			if ctx.Err() == nil {
				f.s.log.Warn("following a log", "job", f.j.ID, "err", err)
			}
			return false
		}
		for _, l := range lines {
			if l.Number > f.next {
				f.next = l.Number // a gap in the store: go on after it
			}
			f.write(l)
		}
		if len(lines) < logPage {
			return f.flush()
		}
		if !f.flush() {
			return false
		}
	}
}

// logPage is how many lines are read from the store at a time when a log
// is streamed: a bounded buffer however long the log.
const logPage = 10000

// gapWait is how long live lines wait for the lines before them to reach
// the store (the runner writes every ~100ms); maxPending bounds them (the
// rest are read from the store).
const (
	gapWait    = 150 * time.Millisecond
	maxPending = 10000
)
