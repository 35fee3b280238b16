package runner

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/sqldb"
)

// TestStepLinesSurviveReplay: a backend following a job again after a
// restart reports its steps' starts and ends again; the steps keep the
// lines recorded the first time, and a step that goes on gets its last line
// in the resumed numbering.
func TestStepLinesSurviveReplay(t *testing.T) {
	ctx := context.Background()
	db, err := sqldb.Open(ctx, sqldb.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Migrate(ctx, "up"); err != nil {
		t.Fatal(err)
	}
	repo := &forge.Repo{Owner: "acme", Name: "app", CloneURL: "x", DefaultBranch: "main"}
	if err := db.UpsertRepo(ctx, repo); err != nil {
		t.Fatal(err)
	}
	b := &forge.Build{RepoID: repo.ID, Action: "execute", Status: forge.StatusRunning}
	if err := db.CreateBuild(ctx, b, []*forge.BuildJob{{Name: "test", Status: forge.StatusQueued}}); err != nil {
		t.Fatal(err)
	}
	r := &Runner{opts: Options{Builds: db, Logs: db, FlushInterval: 10 * time.Millisecond}, log: slog.New(slog.DiscardHandler)}
	rows := func() []*forge.BuildJob {
		jobs, err := db.Jobs(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		return jobs
	}
	t0 := time.Now().UTC()
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	line := func(n int) forge.Event {
		return forge.Event{Type: forge.EventLine, Job: "test", Line: &forge.LogLine{Number: n, Time: t0, Stream: forge.Stdout, Text: "x"}}
	}
	started := func(step, s int) forge.Event {
		return forge.Event{Type: forge.EventStepStarted, Job: "test", Step: step, StepName: "s", Time: at(s)}
	}
	finished := func(step, s int) forge.Event {
		return forge.Event{Type: forge.EventStepFinished, Job: "test", Step: step, StepName: "s", Status: forge.StatusSuccess, Time: at(s)}
	}
	rec := newRecorder(r, b, rows())
	for _, e := range []forge.Event{{Type: forge.EventJobStarted, Job: "test", Attempt: 1, Time: at(0)},
		started(0, 1), line(1), line(2), finished(0, 2), started(1, 3), line(3)} {
		rec.Report(e)
	}
	rec.close()

	// Another server follows the job again: its log holds 3 lines, and
	// it notes that it follows the job again (line 4).
	rec = newRecorder(r, b, rows())
	js := rec.jobs["test"]
	rec.mu.Lock()
	js.last, js.offset, js.resumed = 3, 3, true // as resume does
	rec.system(js, at(4), "forge restarted: following this job again")
	rec.mu.Unlock()
	for _, e := range []forge.Event{started(0, 1), finished(0, 2), started(1, 3), line(2), finished(1, 5)} {
		rec.Report(e)
	}
	rec.close()
	steps := rows()[0].Steps
	if len(steps) != 2 {
		t.Fatalf("steps: %+v", steps)
	}
	if a, b := steps[0], steps[1]; a.FirstLine != 1 || a.LastLine != 2 || b.FirstLine != 3 || b.LastLine != 5 || !b.Status.Done() {
		t.Errorf("step lines after the replay: %d-%d and %d-%d (%s); want 1-2 and 3-5", a.FirstLine, a.LastLine, b.FirstLine, b.LastLine, b.Status)
	}
}
