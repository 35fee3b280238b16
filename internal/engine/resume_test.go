package engine

import (
	"context"
	"slices"
	"testing"

	"github.com/forgeci/forge"
)

// attacher is the scripted backend that can also attach: it records the
// handles and from values it is given, and reports one line above from.
type attacher struct {
	scripted
	attached []string
}

func (b *attacher) Attach(ctx context.Context, handle []byte, from int, rep forge.Reporter) (forge.Status, error) {
	b.mu.Lock()
	b.attached = append(b.attached, string(handle))
	b.mu.Unlock()
	rep.Report(forge.Event{Type: forge.EventLine, Line: &forge.LogLine{Number: from + 1, Text: "resumed"}})
	rep.Report(forge.Event{Type: forge.EventStepFinished, Step: 0, Status: forge.StatusFailure, ExitCode: 5})
	return forge.StatusFailure, nil
}

// A resumed run: finished jobs keep their result and are not run, the
// running job is attached to (no new job_started) and retried after, the
// jobs not started run once their needs allow.
func TestResume(t *testing.T) {
	b := &attacher{}
	plan := &forge.Plan{Jobs: []*forge.Job{
		job("done", nil, "print never"),
		job("attached", []string{"done"}, "print never"),
		job("after", []string{"done"}, "print ran"),
		job("dependent", []string{"attached"}, "print never"),
	}}
	plan.Jobs[1].Retries = 1
	res, rec := run(t, context.Background(), Options{Backend: b}, plan, RunInfo{Resume: map[string]Resumed{
		"done":     {Status: forge.StatusSuccess},
		"attached": {Attempt: 1, Handle: []byte("h1"), From: 7},
	}})
	if got := rec.of("done"); len(got) != 1 || got[0] != forge.EventJobQueued {
		t.Errorf("a finished job got events %v, want only job_queued", got)
	}
	if !slices.Equal(b.attached, []string{"h1"}) {
		t.Errorf("attached %q, want h1", b.attached)
	}
	want := []forge.EventType{forge.EventJobQueued, forge.EventLine, forge.EventStepFinished,
		forge.EventJobStarted, forge.EventStepStarted, forge.EventLine, forge.EventStepFinished, forge.EventJobFinished}
	if got := rec.of("attached"); !slices.Equal(got, want) {
		t.Errorf("attached job events:\n got %v\nwant %v", got, want)
	}
	for _, e := range rec.events {
		if e.Job == "attached" && e.Type == forge.EventLine && e.Line.Text == "resumed" && (e.Line.Number != 8 || e.Attempt != 1) {
			t.Errorf("resumed line %+v attempt %d, want number 8 of attempt 1", e.Line, e.Attempt)
		}
		if e.Job == "attached" && e.Type == forge.EventJobStarted && e.Attempt != 2 {
			t.Errorf("the retry is attempt %d, want 2", e.Attempt)
		}
	}
	if r := res.Job("done"); r.Status != forge.StatusSuccess {
		t.Errorf("done: %s", r.Status)
	}
	if r := res.Job("after"); r.Status != forge.StatusSuccess || r.Attempts != 1 {
		t.Errorf("after: %s, %d attempts", r.Status, r.Attempts)
	}
	if r := res.Job("attached"); r.Status != forge.StatusSuccess || r.Attempts != 2 {
		t.Errorf("attached: %s after %d attempts, want success on the retry (attempt 2)", r.Status, r.Attempts)
	}
	if r := res.Job("dependent"); r.Status != forge.StatusSuccess {
		t.Errorf("dependent: %s %s", r.Status, r.Message)
	}
}
