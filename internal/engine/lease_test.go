package engine

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

func leaseJob(name string, steps ...string) *forge.Job {
	j := job(name, nil, steps...)
	j.Resources = []forge.ResourceRequest{{Pool: "dut", Count: 1}}
	return j
}

func TestLeaseWithoutLeaser(t *testing.T) {
	b := &scripted{}
	res, _ := run(t, context.Background(), Options{Backend: b},
		&forge.Plan{Jobs: []*forge.Job{leaseJob("hw", "print x"), job("after", []string{"hw"}, "print y")}}, RunInfo{})
	jr := res.Job("hw")
	want := "job hw needs resources from pool dut: run with --lease-server URL"
	if jr.Status != forge.StatusError || jr.Message != want {
		t.Errorf("got %s %q, want error %q", jr.Status, jr.Message, want)
	}
	if len(b.runs) != 0 {
		t.Errorf("ran %d jobs, want none", len(b.runs))
	}
	if res.Job("after").Status != forge.StatusSkipped {
		t.Errorf("dependent: got %s, want skipped", res.Job("after").Status)
	}
}

// A job waiting for its lease holds no slot: with Parallel 1, another job
// runs while it waits; once granted, it sees the lease's variables and the
// lease is released when it ends.
func TestLeaseWaitHoldsNoSlot(t *testing.T) {
	b := &scripted{started: make(chan string, 4)}
	l := &fakeLeaser{grants: make(chan *fakeGrant)}
	g := newGrant(map[string]string{"FORGE_LEASE_DUT": "dut1"})
	plan := &forge.Plan{Jobs: []*forge.Job{
		leaseJob("hw", "env FORGE_LEASE_DUT"),
		job("other", nil, "sleep 10ms"),
	}}
	go func() {
		if name := <-b.started; name != "other" {
			t.Errorf("first job to start: got %s, want other (hw waits for its lease)", name)
		}
		l.grants <- g
		<-b.started
	}()
	res, rec := run(t, context.Background(), Options{Backend: b, Leaser: l, Parallel: 1}, plan, RunInfo{BuildID: "12"})
	if res.Status != forge.StatusSuccess {
		t.Fatalf("status: got %s, want success", res.Status)
	}
	var waits []string
	var line string
	for _, e := range rec.events {
		if e.Job == "hw" && e.Type == forge.EventJobWaiting {
			waits = append(waits, e.Message)
		}
		if e.Job == "hw" && e.Type == forge.EventLine {
			line = e.Line.Text
		}
	}
	if len(waits) != 3 || !strings.Contains(waits[0], "1 of dut") || !strings.Contains(waits[2], "position 1") {
		t.Errorf("job_waiting messages: got %q, want a first wait and positions 2 and 1", waits)
	}
	if line != "FORGE_LEASE_DUT=dut1" {
		t.Errorf("lease variable: got %q", line)
	}
	if g.released.Load() != 1 {
		t.Errorf("lease released %d times, want 1", g.released.Load())
	}
	if len(l.holders) != 1 || !strings.Contains(l.holders[0], "12") || !strings.Contains(l.holders[0], "hw") {
		t.Errorf("holder: got %q, want it to name the build and job", l.holders)
	}
	if got := rec.of("hw"); got[0] != forge.EventJobQueued || got[1] != forge.EventJobWaiting {
		t.Errorf("hw events: got %v, want queued then waiting", got)
	}
}

func TestLeaseLost(t *testing.T) {
	b := &scripted{started: make(chan string, 1)}
	l := &fakeLeaser{grants: make(chan *fakeGrant, 1)}
	g := newGrant(nil)
	l.grants <- g
	j := leaseJob("hw", "hang")
	j.Retries = 2 // a lost lease is not retried: the resource may be gone
	go func() {
		<-b.started
		close(g.lost)
	}()
	start := time.Now()
	res, _ := run(t, context.Background(), Options{Backend: b, Leaser: l}, &forge.Plan{Jobs: []*forge.Job{j}}, RunInfo{})
	jr := res.Job("hw")
	if jr.Status != forge.StatusError || !strings.HasPrefix(jr.Message, "lease lost") || jr.Attempts != 1 {
		t.Errorf("got %s %q after %d attempts, want error \"lease lost...\" after 1", jr.Status, jr.Message, jr.Attempts)
	}
	if g.released.Load() != 1 {
		t.Errorf("lease released %d times, want 1", g.released.Load())
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("the job was not stopped promptly")
	}
}

func TestLeaseError(t *testing.T) {
	l := &fakeLeaser{err: forge.Errorf(forge.ENOTFOUND, "no pool named dut")}
	res, _ := run(t, context.Background(), Options{Backend: &scripted{}, Leaser: l}, &forge.Plan{Jobs: []*forge.Job{leaseJob("hw", "print x")}}, RunInfo{})
	jr := res.Job("hw")
	if jr.Status != forge.StatusError || !strings.Contains(jr.Message, "no pool named dut") || forge.ErrorCode(jr.Err) != forge.ENOTFOUND {
		t.Errorf("got %s %q (%v), want error naming the pool", jr.Status, jr.Message, jr.Err)
	}
}

func TestLeaseWaitCanceled(t *testing.T) {
	l := &fakeLeaser{grants: make(chan *fakeGrant)}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	res, _ := run(t, ctx, Options{Backend: &scripted{}, Leaser: l}, &forge.Plan{Jobs: []*forge.Job{leaseJob("hw", "print x")}}, RunInfo{})
	if jr := res.Job("hw"); jr.Status != forge.StatusCanceled || res.Status != forge.StatusCanceled {
		t.Errorf("got job %s run %s, want both canceled", jr.Status, res.Status)
	}
}
