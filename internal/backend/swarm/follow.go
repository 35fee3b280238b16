package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/forgexec"
	"github.com/forgeci/forge/internal/moby"
)

// How often the job's task is looked at: often while it starts, then
// every pollMax; its node every nodeEvery.
const (
	pollFirst = 100 * time.Millisecond
	pollMax   = time.Second
	nodeEvery = 5 * time.Second
)

// logState is what came through the job's log so far. The reader owns it
// while it reads; follow reads it once the reader is done, except started,
// which is atomic.
type logState struct {
	nonce string
	from  int // the caller has the lines up to from
	// seen counts the records of the log read so far: a new read of the
	// log from its start skips them.
	seen    int
	steps   int // step events reported
	fin     *forge.Event
	started atomic.Int64 // when forgexec started (Unix nanoseconds), 0 before
	// What the last read found that was not a frame of this job: what
	// forgexec printed on stderr, and counts of foreign and cut frames.
	stderr           *moby.HeadBuffer
	foreign, corrupt int
}

// readLogs reads the service's log from its start, following it or not,
// skips the records read before, and reports the rest until the job's
// job_finished record, which it keeps in st.fin. It returns nil when the
// log ends or the record came, else why it stopped.
func (b *Backend) readLogs(ctx context.Context, service string, follow bool, st *logState, rep forge.Reporter) error {
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	logs, err := b.cli.ServiceLogs(rctx, service, client.ServiceLogsOptions{ShowStdout: true, ShowStderr: true, Follow: follow})
	if err != nil {
		return err
	}
	defer logs.Close()
	pr, pw := io.Pipe()
	st.stderr = moby.NewHeadBuffer(4096)
	copied := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(pw, st.stderr, logs)
		pw.CloseWithError(err)
		copied <- err
	}()
	skip, n := st.seen, 0
	dec := forgexec.NewDecoder(st.nonce)
	derr := dec.Decode(pr, func(e forge.Event) {
		n++
		if n <= skip || st.fin != nil {
			return
		}
		st.seen++
		switch e.Type {
		case forge.EventJobStarted:
			st.started.Store(e.Time.UnixNano())
			return // the engine reports the start
		case forge.EventJobFinished:
			st.fin = &e
			stop() // nothing comes after it
			return
		case forge.EventLine:
			if e.Line.Number <= st.from {
				return
			}
		case forge.EventStepStarted, forge.EventStepFinished:
			st.steps++
		}
		rep.Report(e)
	})
	pr.CloseWithError(errors.New("the log was read"))
	cerr := <-copied
	st.foreign, st.corrupt = dec.Foreign, dec.Corrupt
	if st.fin != nil {
		return nil
	}
	if derr == nil {
		derr = cerr
	}
	if derr != nil && ctx.Err() == nil {
		return derr
	}
	return ctx.Err()
}

// follow reports the attempt's events from its service's log (lines above
// from), stops the task when ctx ends, waits for the job's end and
// removes everything.
func (b *Backend) follow(ctx context.Context, a *attempt, from int, rep forge.Reporter) (forge.Status, error) {
	defer b.cleanup(a)
	st := &logState{nonce: a.h.Nonce, from: from}

	var (
		readerDone = make(chan error, 1)
		reading    bool
		stopReader context.CancelFunc
	)
	startReader := func() {
		// The log is read to its end even after ctx ends: its last
		// records say how the job ended.
		rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		stopReader, reading = cancel, true
		go func() { readerDone <- b.readLogs(rctx, a.h.Service, true, st, rep) }()
	}
	endReader := func() {
		if reading {
			stopReader()
			<-readerDone
			stopReader()
			reading = false
		}
	}
	defer endReader()
	startReader()

	w := &watch{created: time.Unix(0, a.h.Created)}
	if a.h.Created == 0 {
		w.created = time.Now()
	}
	interval := pollFirst
	poll := time.NewTimer(pollFirst)
	defer poll.Stop()
	ctxDone := ctx.Done()
	var (
		stopTimer *time.Timer // the job's deadline passed: stop it then
		stopC     <-chan time.Time
		giveUp    <-chan time.Time
		reopen    bool
	)
	defer func() {
		if stopTimer != nil {
			stopTimer.Stop()
		}
	}()
	// stopTask stops the job: SIGTERM cancels it, SIGUSR1 times it out
	// (forgexec tells them apart). A task container on the engine's own
	// node gets the signal at once; elsewhere, Swarm stops the task with
	// SIGTERM when it is scaled down.
	stopTask := func(sig string) {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if giveUp == nil {
			giveUp = time.After(time.Duration(a.h.KillGrace) + stopMargin + 15*time.Second)
		}
		if id := b.localContainer(sctx, a.h.Service); id != "" {
			_, err := b.cli.ContainerKill(sctx, id, client.ContainerKillOptions{Signal: sig})
			if err == nil || cerrdefs.IsNotFound(err) {
				return
			}
			b.log.Warn("swarm: signalling a job's container", "container", id, "err", err)
		}
		if sig == "SIGUSR1" && st.started.Load() != 0 {
			// forgexec times the job out itself, late by as much as it
			// started after the job was made: give it that, so that its
			// steps end "timed out".
			wait := max(time.Unix(0, st.started.Load()).Sub(w.created), 0) + time.Duration(a.h.KillGrace) + stopMargin
			stopTimer = time.NewTimer(wait)
			stopC = stopTimer.C
			return
		}
		if err := b.scaleDown(sctx, a.h.Service); err != nil && !cerrdefs.IsNotFound(err) {
			b.log.Warn("swarm: stopping a job's task", "service", a.h.Service, "err", err)
		}
	}
	for {
		select {
		case err := <-readerDone:
			reading = false
			stopReader()
			if st.fin != nil {
				return b.result(ctx, a, st)
			}
			// The stream ended without the job's end (the manager
			// closed it, or the network failed): the task says what
			// next.
			if err != nil {
				b.log.Debug("swarm: the job's log stream ended", "service", a.h.Service, "err", err)
			}
			reopen = true
			poll.Reset(0)
		case <-poll.C:
			v, t, err := b.check(ctx, a, w)
			switch v {
			case verdictFailed:
				endReader()
				return forge.StatusError, err
			case verdictEnded:
				// The rest of the log is in the engine: read it all,
				// skipping what came already.
				endReader()
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
				rerr := b.readLogs(rctx, a.h.Service, false, st, rep)
				cancel()
				if st.fin != nil {
					return b.result(ctx, a, st)
				}
				if ctx.Err() != nil {
					if st.steps == 0 {
						reportSkipped(a.steps, ctx.Err(), rep)
					}
					return ctxStatus(ctx.Err()), nil
				}
				return forge.StatusError, b.endedError(t, st, rerr)
			}
			if reopen && !reading {
				reopen = false
				startReader()
			}
			interval = min(interval*2, pollMax)
			poll.Reset(interval)
		case <-ctxDone:
			ctxDone = nil
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				stopTask("SIGUSR1")
			} else {
				stopTask("SIGTERM")
			}
		case <-stopC:
			stopC = nil
			if err := b.scaleDown(context.WithoutCancel(ctx), a.h.Service); err != nil && !cerrdefs.IsNotFound(err) {
				b.log.Warn("swarm: stopping a job's task", "service", a.h.Service, "err", err)
			}
		case <-giveUp:
			endReader()
			return ctxStatus(ctx.Err()), nil
		}
	}
}

// result is the job's status from forgexec's last record.
func (b *Backend) result(ctx context.Context, a *attempt, st *logState) (forge.Status, error) {
	if st.fin.Status == forge.StatusCanceled && ctx.Err() == nil {
		// Not cancelled by forge: was the service removed under it?
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := b.cli.ServiceInspect(lctx, a.h.Service, client.ServiceInspectOptions{}); cerrdefs.IsNotFound(err) {
			return forge.StatusError, b.goneError(lctx, a)
		}
	}
	switch st.fin.Status {
	case forge.StatusSuccess, forge.StatusFailure, forge.StatusCanceled:
		return st.fin.Status, nil
	}
	msg := st.fin.Message
	if msg == "" {
		msg = "forgexec could not run the job"
	}
	return forge.StatusError, forge.Errorf(forge.EINVALID, "%s", msg)
}

// localContainer returns the container of the service's task when it is
// on the node of the engine forge talks to, else "".
func (b *Backend) localContainer(ctx context.Context, service string) string {
	node, err := b.node(ctx)
	if err != nil {
		return ""
	}
	t, err := b.task(ctx, service)
	if err != nil || t == nil || t.Status.ContainerStatus == nil || t.NodeID != node {
		return ""
	}
	return t.Status.ContainerStatus.ContainerID
}

// task returns the service's latest task, nil when it has none.
func (b *Backend) task(ctx context.Context, service string) (*swarm.Task, error) {
	res, err := b.cli.TaskList(ctx, client.TaskListOptions{Filters: client.Filters{}.Add("service", service)})
	if err != nil {
		return nil, err
	}
	var t *swarm.Task
	for i := range res.Items {
		if t == nil || res.Items[i].CreatedAt.After(t.CreatedAt) {
			t = &res.Items[i]
		}
	}
	return t, nil
}

// scaleDown stops the service's task: Swarm sends it the stop signal
// (SIGTERM: forgexec cancels the job and reports it), then SIGKILL after
// the grace period. The service and the task's log stay.
func (b *Backend) scaleDown(ctx context.Context, service string) error {
	for i := 0; ; i++ {
		res, err := b.cli.ServiceInspect(ctx, service, client.ServiceInspectOptions{})
		if err != nil {
			return err
		}
		spec := res.Service.Spec
		if spec.Mode.Replicated == nil || spec.Mode.Replicated.Replicas == nil || *spec.Mode.Replicated.Replicas == 0 {
			return nil
		}
		spec.Mode.Replicated.Replicas = ptr(uint64(0))
		_, err = b.cli.ServiceUpdate(ctx, service, client.ServiceUpdateOptions{Version: res.Service.Version, Spec: spec})
		if err == nil || i >= 3 || !strings.Contains(err.Error(), "out of sequence") {
			return err
		}
	}
}

// verdict is what the task's status means for the job.
type verdict int

const (
	verdictWait   verdict = iota // not running yet, or running
	verdictEnded                 // the task ended: its log has the rest
	verdictFailed                // the job cannot go on: the error says why
)

// watch is what follow knows of the job's task between looks.
type watch struct {
	created   time.Time // when the service was made
	hadTask   bool
	node      *swarm.Node
	nodeCheck time.Time
}

// check looks at the job's task (and, now and then, its node) and says
// what it means.
func (b *Backend) check(ctx context.Context, a *attempt, w *watch) (verdict, *swarm.Task, error) {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	t, err := b.task(lctx, a.h.Service)
	if err != nil {
		b.log.Warn("swarm: listing a job's tasks", "service", a.h.Service, "err", err)
		return verdictWait, nil, nil // the manager may be back soon
	}
	if t == nil {
		if _, err := b.cli.ServiceInspect(lctx, a.h.Service, client.ServiceInspectOptions{}); cerrdefs.IsNotFound(err) {
			return verdictFailed, nil, b.goneError(lctx, a)
		}
	}
	if t != nil {
		w.hadTask = true
		if t.NodeID != "" && (w.node == nil || w.node.ID != t.NodeID || time.Since(w.nodeCheck) > nodeEvery) {
			w.nodeCheck = time.Now()
			if n, err := b.cli.NodeInspect(lctx, t.NodeID, client.NodeInspectOptions{}); err == nil {
				w.node = &n.Node
			} else if cerrdefs.IsNotFound(err) {
				w.node = &swarm.Node{ID: t.NodeID, Status: swarm.NodeStatus{State: swarm.NodeStateDown, Message: "the node was removed from the swarm"}}
			}
		}
	}
	v, err := judge(t, w.node, time.Since(w.created), b.opts.ScheduleTimeout)
	return v, t, err
}

// judge says what task t (nil: Swarm made none yet) means for the job,
// with node the node it was given to (nil when unknown), waited the time
// since the service was made and timeout how long a task may wait for a
// node.
func judge(t *swarm.Task, node *swarm.Node, waited, timeout time.Duration) (verdict, error) {
	if t == nil {
		if waited > timeout {
			return verdictFailed, forge.Errorf(forge.EUNAVAILABLE, "Swarm made no task for the job's service within %s", timeout)
		}
		return verdictWait, nil
	}
	switch t.Status.State {
	case swarm.TaskStateNew, swarm.TaskStateAllocated, swarm.TaskStatePending:
		if waited > timeout {
			why := t.Status.Err
			if why == "" {
				why = t.Status.Message
			}
			return verdictFailed, forge.Errorf(forge.EUNAVAILABLE,
				"no node of the swarm can run the job (waited %s for one): Swarm says: %s", timeout, why)
		}
		return verdictWait, nil
	case swarm.TaskStateComplete, swarm.TaskStateFailed, swarm.TaskStateRejected,
		swarm.TaskStateShutdown, swarm.TaskStateRemove:
		return verdictEnded, nil
	case swarm.TaskStateOrphaned:
		return verdictFailed, lostError(t, node)
	}
	// Given to a node: assigned up to running.
	if node != nil && (node.Status.State == swarm.NodeStateDown || node.Status.State == swarm.NodeStateDisconnected) {
		return verdictFailed, lostError(t, node)
	}
	return verdictWait, nil
}

// lostError is the error of a job whose node was lost.
func lostError(t *swarm.Task, node *swarm.Node) error {
	name := t.NodeID
	state, msg := "unreachable", ""
	if node != nil {
		if node.Description.Hostname != "" {
			name = fmt.Sprintf("%s (%s)", node.Description.Hostname, t.NodeID)
		}
		if node.Status.State != "" {
			state = string(node.Status.State)
		}
		msg = node.Status.Message
	}
	if msg != "" {
		msg = ": " + msg
	}
	return forge.Errorf(forge.EUNAVAILABLE, "the node that ran the job, %s, was lost (it is %s%s): what the job did after is unknown", name, state, msg)
}

// endedError says why a task ended without forgexec's last record.
func (b *Backend) endedError(t *swarm.Task, st *logState, rerr error) error {
	var why []string
	if t == nil {
		why = append(why, "its task is gone")
	} else {
		s := t.Status
		why = append(why, "its task is "+string(s.State))
		if cs := s.ContainerStatus; cs != nil && s.State == swarm.TaskStateFailed {
			switch cs.ExitCode {
			case 126, 127:
				why = append(why, fmt.Sprintf("exit code %d: forgexec could not be started in the image (is it a Linux image of the node's platform?)", cs.ExitCode))
			case 137:
				why = append(why, "exit code 137: killed (SIGKILL), most likely for running out of memory")
			default:
				why = append(why, "exit code "+strconv.Itoa(cs.ExitCode))
			}
		}
		if s.Err != "" {
			why = append(why, "Swarm says: "+s.Err)
		} else if s.Message != "" && s.State != swarm.TaskStateComplete {
			why = append(why, "Swarm says: "+s.Message)
		}
	}
	if st.stderr != nil {
		if s := strings.TrimSpace(st.stderr.String()); s != "" {
			why = append(why, s)
		}
	}
	if rerr != nil {
		why = append(why, "reading its log: "+rerr.Error())
	}
	if st.foreign > 0 || st.corrupt > 0 {
		why = append(why, fmt.Sprintf("%d line(s) of its output were not forgexec's, %d frame(s) were cut short", st.foreign, st.corrupt))
	}
	return forge.Errorf(forge.EINTERNAL, "the job's task ended without a result: %s", strings.Join(why, "; "))
}

// goneError is the error of a job whose service was removed under it:
// by a newer build of the same pull request, or by hand.
func (b *Backend) goneError(ctx context.Context, a *attempt) error {
	if by, ok := b.superseded.LoadAndDelete(a.h.Service); ok {
		return forge.Errorf(forge.ECANCELED, "superseded: build %s of pull request #%s removed this job's service", by, a.h.PR)
	}
	if a.h.Repo != "" && a.h.PR != "" {
		f := client.Filters{}.Add("label", LabelScope+"="+b.opts.Scope, LabelRepo+"="+a.h.Repo, LabelPullRequest+"="+a.h.PR)
		if res, err := b.cli.ServiceList(ctx, client.ServiceListOptions{Filters: f}); err == nil {
			var newer []string
			for _, s := range res.Items {
				if id := s.Spec.Labels[LabelBuild]; older(a.h.Build, id) && !slices.Contains(newer, id) {
					newer = append(newer, id)
				}
			}
			if len(newer) > 0 {
				return forge.Errorf(forge.ECANCELED, "superseded: build %s of pull request #%s removed this job's service", strings.Join(newer, ", "), a.h.PR)
			}
		}
	}
	return forge.Errorf(forge.ECANCELED, "the job's service was removed while the job ran (by a newer build of its pull request, or by hand)")
}

// older reports whether build a came before build b: both are numbers.
func older(a, b string) bool {
	x, err1 := strconv.ParseInt(a, 10, 64)
	y, err2 := strconv.ParseInt(b, 10, 64)
	return err1 == nil && err2 == nil && x < y
}
