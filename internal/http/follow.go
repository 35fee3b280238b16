package http

import (
	"bufio"
	"net/http"
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

// followLog streams job j's log from line from until the job ends or the
// client goes away: stored lines, then live ones. Lines are never sent
// twice or out of order: each is written only when its number is the next.
// view turns a line's text into what is sent (see jobLog).
func (s *Server) followLog(w http.ResponseWriter, r *http.Request, j *forge.BuildJob, from int, builds forge.BuildStore, logs forge.LogStore, live LiveLogs, view func(string) string) {
	ctx := r.Context()
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 32<<10)
	flusher, _ := w.(http.Flusher)
	flush := func() bool {
		if err := bw.Flush(); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	next := from
	write := func(l forge.LogLine) {
		if l.Number == next {
			bw.WriteString(view(l.Text))
			bw.WriteByte('\n')
			next++
		}
	}
	// catchUp writes the stored lines from next on.
	catchUp := func() bool {
		for {
			lines, err := logs.Lines(ctx, j.ID, next, 10000)
			if err != nil {
				s.log.Warn("following a log", "job", j.ID, "err", err)
				return false
			}
			for _, l := range lines {
				if l.Number > next {
					next = l.Number // a gap in the store: go on after it
				}
				write(l)
			}
			if len(lines) < 10000 {
				return flush()
			}
		}
	}
	finished := func() bool {
		cur, err := builds.Job(ctx, j.ID)
		return err != nil || cur.Status.Done()
	}
	tick := time.NewTicker(followPoll)
	defer tick.Stop()
	for {
		var lines <-chan forge.LogLine
		dropped, stop := func() bool { return false }, func() {}
		if live != nil {
			// Subscribe before reading the store, so no line falls
			// between the two.
			lines, dropped, stop = live.Follow(j.ID)
		}
		// A job recorded finished has all its lines stored.
		done := finished()
		if !catchUp() || done {
			stop()
			return
		}
		// Live lines after a gap (lines published before the subscription
		// and not stored yet) wait in pending until the store has the gap.
		var pending []forge.LogLine
		var gap <-chan time.Time
		fill := func() bool {
			if !catchUp() {
				return false
			}
			rest := pending[:0]
			for _, l := range pending {
				write(l)
				if l.Number >= next {
					rest = append(rest, l)
				}
			}
			pending = rest
			gap = nil
			if len(pending) > 0 {
				gap = time.After(gapWait)
			}
			return flush()
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
				case l.Number < next:
				case l.Number == next && len(pending) == 0:
					write(l)
					if len(lines) == 0 && !flush() {
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
				if finished() {
					catchUp()
					stop()
					return
				}
				// Lines published live before this follower subscribed
				// reach it only through the store: without this, a job
				// that goes quiet would show nothing until its next line.
				if !catchUp() {
					stop()
					return
				}
			}
		}
		stop()
		if !dropped() {
			// The job's log is complete: what is left is in the store.
			catchUp()
			return
		}
		s.log.Debug("log follower fell behind; continuing from the store", "job", j.ID, "next", strconv.Itoa(next))
	}
}

// gapWait is how long live lines wait for the lines before them to reach
// the store (the runner writes every ~100ms); maxPending bounds them (the
// rest are read from the store).
const (
	gapWait    = 150 * time.Millisecond
	maxPending = 10000
)
