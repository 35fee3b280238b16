package swarm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// crashHelperEnv makes the test binary a stand-in server (crashHelper)
// that runs one job on the swarm backend and records what it reports in
// a file, the way a server stores it, until it is killed.
const crashHelperEnv = "FORGE_SWARM_CRASH_HELPER"

// record is one line of the helper's file.
type record struct {
	Type   forge.EventType `json:"type"`
	Handle []byte          `json:"handle,omitempty"`
	Line   *forge.LogLine  `json:"line,omitempty"`
	Status forge.Status    `json:"status,omitempty"`
	Err    string          `json:"err,omitempty"`
}

// crashJob prints 60 numbered lines over a few seconds, in two steps.
func crashJob() *forge.Job {
	return &forge.Job{Name: "crash", Image: imageShell, Steps: []forge.Step{
		{Name: "count", Run: "for i in $(seq 1 50); do echo line $i; sleep 0.1; done"},
		{Name: "more", Run: "for i in $(seq 51 60); do echo line $i; done"},
	}}
}

func crashHelper() int {
	out, err := os.OpenFile(os.Getenv(crashHelperEnv), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	write := func(r record) {
		b, _ := json.Marshal(r)
		out.Write(append(b, '\n')) // unbuffered: a kill -9 loses nothing written
	}
	b, err := New(Options{Scope: os.Getenv("FORGE_SWARM_SCOPE"), Forgexec: os.Getenv("FORGE_SWARM_FORGEXEC"), KillGrace: time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	build := os.Getenv("FORGE_SWARM_BUILD")
	st, err := b.Run(context.Background(), jobRun(build, crashJob()), forge.ReporterFunc(func(e forge.Event) {
		switch e.Type {
		case forge.EventJobHandle:
			write(record{Type: e.Type, Handle: e.Handle})
		case forge.EventLine:
			write(record{Type: e.Type, Line: e.Line})
		}
	}))
	r := record{Type: forge.EventJobFinished, Status: st}
	if err != nil {
		r.Err = err.Error()
	}
	write(r)
	return 0
}

// A server killed with SIGKILL while a job runs: the job goes on, and a
// new server attaching by the stored handle gets the rest of the log and
// the result, no line twice, none missing.
func TestKilledServerReattach(t *testing.T) {
	t.Parallel()
	dockerEngine(t)
	build := newBuild()
	file := filepath.Join(t.TempDir(), "store.jsonl")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashHelperEnv+"="+file, "FORGE_SWARM_SCOPE="+testScope,
		"FORGE_SWARM_FORGEXEC="+forgeBin, "FORGE_SWARM_BUILD="+build)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	// Kill it once it has stored the handle and a few lines.
	var stored []record
	deadline := time.Now().Add(2 * time.Minute)
	for {
		stored = readRecords(t, file)
		lines := 0
		for _, r := range stored {
			if r.Type == forge.EventLine {
				lines++
			}
		}
		if lines >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the helper stored %d lines in 2 minutes: %+v", lines, stored)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	stored = readRecords(t, file) // what it wrote before it died

	var h []byte
	from := 0
	for _, r := range stored {
		switch r.Type {
		case forge.EventJobHandle:
			h = r.Handle
		case forge.EventLine:
			from = r.Line.Number
		case forge.EventJobFinished:
			t.Fatalf("the job ended before the kill: %+v", r)
		}
	}
	if h == nil {
		t.Fatal("no handle stored")
	}

	b := newBackend(t, Options{KillGrace: time.Second})
	var rep events
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := b.Attach(ctx, h, from, &rep)
	if err != nil || st != forge.StatusSuccess {
		t.Fatalf("Attach = %s, %v\n%s", st, err, rep.text())
	}
	var all []string
	for _, r := range stored {
		if r.Type == forge.EventLine {
			all = append(all, r.Line.Text)
		}
	}
	next := from + 1
	for _, e := range rep.ofType(forge.EventLine) {
		if e.Line.Number != next {
			t.Errorf("attached line %d is number %d", next, e.Line.Number)
		}
		next++
		all = append(all, e.Line.Text)
	}
	var want []string
	for i := 1; i <= 60; i++ {
		want = append(want, fmt.Sprintf("line %d", i))
	}
	if strings.Join(all, "\n") != strings.Join(want, "\n") {
		t.Errorf("stored %d lines, attached %d: the whole log is\n%s\nwant lines 1 to 60 once each", from, len(rep.ofType(forge.EventLine)), strings.Join(all, "\n"))
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left after the job: %s", strings.Join(left, ", "))
	}

	// Attaching again finds nothing: the job is over and cleaned up.
	if st, err := b.Attach(ctx, h, 60, &rep); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Errorf("Attach after the end = %s, %v; want ENOTFOUND", st, err)
	}
	if _, err := b.Attach(ctx, []byte(`{"v":1}`), 0, &rep); forge.ErrorCode(err) != forge.EINVALID {
		t.Errorf("Attach of a bad handle: %v, want EINVALID", err)
	}
}

func readRecords(t *testing.T, file string) []record {
	t.Helper()
	f, err := os.Open(file)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			break // a line cut by the kill
		}
		out = append(out, r)
	}
	return out
}
