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
	Open     bool         `json:"open"`
}

// stepRanges places j's steps in its log of total lines by time: a step's
// lines start at the first line stamped at or after the step started. The
// lines before the first step (forge's own) make a section of their own.
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
		if s.Started.IsZero() {
			continue
		}
		from, err := firstAt(at, s.Started)
		if err != nil {
			return nil, err
		}
		if len(out) == 0 && from > 1 {
			out = append(out, stepRange{Index: -1, Name: "set up", Status: forge.StatusSuccess, From: 1, Open: !failed})
		}
		out = append(out, stepRange{Index: s.Index, Name: s.Name, Status: s.Status, Duration: durationText(s.Started, s.Finished),
			From: from, Open: !failed || s.Status == forge.StatusFailure || s.Status == forge.StatusError})
		at = from
	}
	for i := range out {
		if i+1 < len(out) {
			out[i].To = out[i+1].From - 1
		} else {
			out[i].To = total
		}
	}
	return out, nil
}
