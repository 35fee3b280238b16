package web

import (
	"context"
	"time"

	"github.com/forgeci/forge"
)

// lastLine returns the number of a job's last stored line (0 for none),
// found by probing the log store, which reads a line by number cheaply
// whatever the log's size: about 2·log2(n) one-line reads.
func lastLine(ctx context.Context, logs forge.LogStore, job int64) (int, error) {
	has := func(n int) (bool, error) {
		ls, err := logs.Lines(ctx, job, n, 1)
		return len(ls) > 0, err
	}
	lo, hi := 0, 1 // line lo exists (or is 0); find an hi that does not
	for {
		ok, err := has(hi)
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		lo, hi = hi, hi*2
	}
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		ok, err := has(mid)
		if err != nil {
			return 0, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo, nil
}

// stepRange is a step as the log page folds it: its lines From..To.
type stepRange struct {
	Index    int          `json:"index"`
	Name     string       `json:"name"`
	Status   forge.Status `json:"status"`
	Duration string       `json:"duration"`
	From     int          `json:"from"`
	To       int          `json:"to"` // From-1 when it printed nothing
	// Last is the step's own last line once it ended (0 if unknown): the
	// lines after it up to To are forge's, printed between steps.
	Last int  `json:"last,omitempty"`
	Open bool `json:"open"`
}

// stepRanges places j's steps in its log of total lines. A step's lines
// start at its recorded first line; for steps recorded without one (by an
// older forge), at the first line stamped at or after the step started.
// They run to the next step's start, or the end of the log. The lines
// before the first step (forge's own) make a section of their own. The log
// page (log.js, splitSteps) places the steps of a running job the same
// way as they start.
func stepRanges(ctx context.Context, logs forge.LogStore, j *forge.BuildJob, total int) ([]stepRange, error) {
	// firstAt finds the first line in [lo, total] stamped at or after t.
	firstAt := func(lo int, t time.Time) (int, error) {
		hi := total + 1
		for lo < hi {
			mid := lo + (hi-lo)/2
			ls, err := logs.Lines(ctx, j.ID, mid, 1)
			if err != nil {
				return 0, err
			}
			if len(ls) == 0 || !ls[0].Time.Before(t) {
				hi = mid
			} else {
				lo = mid + 1
			}
		}
		return lo, nil
	}
	failed := j.Status == forge.StatusFailure || j.Status == forge.StatusError
	var out []stepRange
	at := 1
	for _, s := range j.Steps {
		if s.Started.IsZero() && s.FirstLine == 0 {
			continue
		}
		from := s.FirstLine
		if from == 0 {
			var err error
			if from, err = firstAt(at, s.Started); err != nil {
				return nil, err
			}
		}
		// A step of an earlier attempt that has not run again yet starts
		// where the one before it does.
		from = max(from, at)
		if len(out) == 0 && from > 1 {
			out = append(out, stepRange{Index: -1, Name: "set up", Status: forge.StatusSuccess, From: 1, Open: !failed})
		}
		r := stepRange{Index: s.Index, Name: s.Name, Status: s.Status, Duration: durationText(s.Started, s.Finished),
			From: from, Open: !failed || s.Status == forge.StatusFailure || s.Status == forge.StatusError}
		if s.FirstLine == from && s.Status.Done() {
			r.Last = s.LastLine
		}
		out = append(out, r)
		at = from
	}
	for i := range out {
		if i+1 < len(out) {
			out[i].To = out[i+1].From - 1
		} else {
			out[i].To = total
		}
		if out[i].Last < out[i].From-1 || out[i].Last > out[i].To {
			out[i].Last = 0 // not this step's lines after all
		}
	}
	return out, nil
}
