package runner_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/runner"
	"github.com/forgeci/forge/internal/testwait"
)

// changes records what a runner publishes.
type changes struct {
	mu   sync.Mutex
	seen []string
	last *forge.Change
}

func (c *changes) Observe(ch *forge.Change) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch.Job != nil {
		c.seen = append(c.seen, fmt.Sprintf("job %s %s", ch.Job.Name, ch.Job.Status))
		if ch.Job.Status.Done() {
			c.last = ch
		}
	} else {
		c.seen = append(c.seen, fmt.Sprintf("build %s", ch.Build.Status))
	}
}

// TestChangesPublishedOnce is the reporting seam: every state change of a
// build and of its jobs is published once, in order, the job's end with
// its steps and its log's last lines.
func TestChangesPublishedOnce(t *testing.T) {
	db := openDB(t)
	repo := makeRepo(t, db, "app")
	var obs changes
	s := newRunner(t, db, planOf("echo one;two", "fail", "echo never"), func(o *runner.Options) { o.Observer = &obs })
	b := queue(t, db, repo, "test")
	s.start(t)
	waitBuild(t, db, b.ID)
	waitJobs(t, db, b.ID, forge.StatusFailure)
	// The build's end is published after it is stored: wait for it to be
	// heard, not for the store (under load the observer came later).
	want := "build running, job test running, job test failure, build failure"
	testwait.For(t, "the build's end to be published", func() bool {
		obs.mu.Lock()
		defer obs.mu.Unlock()
		return len(obs.seen) >= 4
	})
	obs.mu.Lock()
	defer obs.mu.Unlock()
	// The job was created queued: its first change is the start.
	if got := strings.Join(obs.seen, ", "); got != want {
		t.Errorf("published:\n%s\nwant\n%s", got, want)
	}
	c := obs.last
	if c == nil || len(c.Job.Steps) != 2 || c.Job.Steps[1].Status != forge.StatusFailure || c.Build.ID != b.ID {
		t.Fatalf("the job's end: %+v, want the two steps that ran, the second failed", c)
	}
	if strings.Join(c.Tail, "|") != "one|two" {
		t.Errorf("tail %q, want the log's last lines", c.Tail)
	}
}
