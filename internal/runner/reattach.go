package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/engine"
)

// storedHandle is what the runner keeps in BuildJob.Handle: the backend's
// handle of the running attempt and the number of the log line before the
// attempt's first (the attempt's line N is stored as Offset+N).
type storedHandle struct {
	Offset  int    `json:"offset"`
	Backend []byte `json:"backend"`
}

func encodeHandle(offset int, h []byte) []byte {
	b, _ := json.Marshal(storedHandle{Offset: offset, Backend: h})
	return b
}

// logLen is the length of a job's stored log; the store implements it
// (sqldb.DB.LogLen).
type logLen interface {
	LogLen(ctx context.Context, jobID int64) (int, error)
}

// resume prepares the recorder to continue a build a dead server left
// running, and returns what the engine needs: the jobs that had finished
// keep their result; a job running on this backend with a handle is
// attached to, its log resumed after the last stored line; a job that was
// running without one (it died with its server) ends with "server
// restarted"; the jobs that had not started run now.
func (rec *recorder) resume(ctx context.Context) (map[string]engine.Resumed, error) {
	ll, ok := rec.r.opts.Logs.(logLen)
	if !ok {
		return nil, forge.Errorf(forge.ENOTIMPL, "the log store cannot tell a log's length")
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	out := make(map[string]engine.Resumed, len(rec.order))
	now := time.Now().UTC()
	for _, js := range rec.order {
		row := js.row
		n, err := ll.LogLen(ctx, row.ID)
		if err != nil {
			return nil, err
		}
		js.last, js.offset = n, n
		switch {
		case row.Status.Done():
			out[row.Name] = engine.Resumed{Status: row.Status, ExitCode: row.ExitCode, Message: row.Error}
		case row.Status == forge.StatusRunning && row.Handle != nil && row.Backend == rec.r.opts.Backend:
			var h storedHandle
			if err := json.Unmarshal(row.Handle, &h); err != nil || h.Backend == nil || h.Offset > n {
				return nil, fmt.Errorf("job %s: unreadable handle", row.Name)
			}
			out[row.Name] = engine.Resumed{Attempt: row.Attempt, Handle: h.Backend, From: n - h.Offset}
			js.resumed = true
			rec.system(js, now, "forge restarted: following this job again")
			// The attempt's lines go on after that note, and a later
			// restart must know.
			js.offset = h.Offset + (js.last - n)
			row.Handle = encodeHandle(js.offset, h.Backend)
			rec.queueJob(js)
		case row.Status == forge.StatusRunning:
			// It ran as processes of the server that died, or its
			// handle never reached the database.
			msg := ErrServerRestarted(row.Backend)
			rec.system(js, now, msg)
			row.Status, row.Error, row.Finished = forge.StatusError, msg, now
			rec.queueJob(js)
			out[row.Name] = engine.Resumed{Status: forge.StatusError, Message: msg}
		}
	}
	return out, nil
}

// ErrServerRestarted is the error of a job that ran on a server that died
// and could not be followed again.
func ErrServerRestarted(backend string) string {
	if backend == "" || backend == "local" {
		return ErrServerRestart.Error()
	}
	return ErrServerRestart.Error() + ": the job could not be found again on the " + backend + " backend"
}

// resumeBuild claims the running build b, left by a dead server, for this
// runner and continues it. It reports false when another runner changed
// the build first.
func (r *Runner) resumeBuild(ctx context.Context, b *forge.Build) (bool, error) {
	b.Runner, b.Heartbeat = r.id, time.Now().UTC()
	if err := r.opts.Builds.UpdateBuild(ctx, b); err != nil {
		if forge.ErrorCode(err) == forge.ECONFLICT {
			return false, nil
		}
		return false, fmt.Errorf("runner: continuing build %d: %w", b.ID, err)
	}
	r.mu.Lock()
	stopping := r.stopping
	r.mu.Unlock()
	if stopping {
		return true, nil // the next server continues it
	}
	r.start(b, true)
	return true, nil
}

// clean has the Janitor remove what the backend made for builds that are
// not running any more.
func (r *Runner) clean(ctx context.Context) {
	running := map[string]bool{}
	var before int64
	for {
		list, err := r.opts.Builds.ListBuilds(ctx, forge.BuildFilter{Status: forge.StatusRunning, Before: before, Limit: 100})
		if err != nil {
			r.log.Error("janitor: listing running builds", "err", err)
			return
		}
		for _, b := range list {
			running[strconv.FormatInt(b.ID, 10)] = true
		}
		if len(list) < 100 {
			break
		}
		before = list[len(list)-1].ID
	}
	n, err := r.opts.Janitor.Clean(ctx, func(id string) bool { return running[id] })
	if err != nil {
		r.log.Error("janitor: removing what crashed servers left", "err", err)
	}
	if n > 0 {
		r.log.Warn("janitor: removed what crashed servers left (containers, networks, volumes)", "things", n)
	}
}
