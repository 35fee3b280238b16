package forgexec

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// collect decodes frames from r until EOF.
func collect(t *testing.T, d *Decoder, r io.Reader) []forge.Event {
	t.Helper()
	var evs []forge.Event
	if err := d.Decode(r, func(e forge.Event) { evs = append(evs, e) }); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	return evs
}

func TestFramesRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, "n0nce")
	t0 := time.Unix(1700000000, 123456789)
	texts := []string{"", "plain", "@n0nce E5:{\"a\"} L0,1,2,o,1:x", "tab\there \r mid", strings.Repeat("ä", 20000), "ünïcode ✓"}
	w.Report(forge.Event{Type: forge.EventStepStarted, Time: t0, Step: 0, StepName: "s"})
	for i, text := range texts {
		st := []forge.Stream{forge.Stdout, forge.Stderr, forge.System}[i%3]
		w.Report(forge.Event{Type: forge.EventLine, Time: t0, Step: 0, Line: &forge.LogLine{Number: i + 1, Time: t0.Add(time.Duration(i)), Stream: st, Text: text}})
	}
	// A text with a newline cannot be an L record: it goes as JSON.
	w.Report(forge.Event{Type: forge.EventLine, Time: t0, Step: 0, Line: &forge.LogLine{Number: 7, Time: t0, Stream: forge.System, Text: "two\nlines"}})
	w.Report(forge.Event{Type: forge.EventStepFinished, Time: t0, Step: 0, Status: forge.StatusFailure, ExitCode: 3, Message: "exit code 3"})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// Foreign text between frames is ignored and counted.
	in := "junk before\n" + buf.String() + "@other L0,9,0,o,1:x\n"
	d := NewDecoder("n0nce")
	evs := collect(t, d, strings.NewReader(in))
	if d.Foreign != 2 || d.Corrupt != 0 {
		t.Errorf("foreign %d corrupt %d, want 2 and 0", d.Foreign, d.Corrupt)
	}
	if len(evs) != len(texts)+3 {
		t.Fatalf("got %d events, want %d: %+v", len(evs), len(texts)+3, evs)
	}
	if evs[0].Type != forge.EventStepStarted || evs[0].StepName != "s" || !evs[0].Time.Equal(t0) {
		t.Errorf("first event: %+v", evs[0])
	}
	for i, text := range texts {
		e := evs[i+1]
		if e.Type != forge.EventLine || e.Line.Text != text || e.Line.Number != i+1 || !e.Line.Time.Equal(t0.Add(time.Duration(i))) ||
			e.Line.Stream != []forge.Stream{forge.Stdout, forge.Stderr, forge.System}[i%3] {
			t.Errorf("line %d: got %+v %+v", i, e, e.Line)
		}
	}
	if l := evs[len(texts)+1].Line; l == nil || l.Text != "two\nlines" || l.Number != 7 {
		t.Errorf("multi-line text: got %+v", evs[len(texts)+1])
	}
	if e := evs[len(evs)-1]; e.Type != forge.EventStepFinished || e.ExitCode != 3 || e.Status != forge.StatusFailure {
		t.Errorf("last event: %+v", e)
	}
}

func TestDecoderCorruptFrames(t *testing.T) {
	for _, in := range []string{"@n L", "@n L1,2", "@n L1,2,3,o,5:ab", "@n E9:{}", "@n E2:{x", "@n Q", "@n L0,1,0,o,1:xy"} {
		d := NewDecoder("n")
		collect(t, d, strings.NewReader(in+"\n"))
		if d.Corrupt != 1 {
			t.Errorf("%q: corrupt %d, want 1", in, d.Corrupt)
		}
	}
}

func FuzzDecoder(f *testing.F) {
	var buf bytes.Buffer
	w := NewWriter(&buf, "n")
	w.Report(forge.Event{Type: forge.EventStepStarted, Step: 1})
	w.Report(forge.Event{Type: forge.EventLine, Line: &forge.LogLine{Number: 1, Text: "x"}})
	w.Close()
	f.Add(buf.Bytes())
	f.Add([]byte("@n L0,1,0,o,3:abc E2:{}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d := NewDecoder("n")
		_ = d.Decode(bytes.NewReader(b), func(e forge.Event) {
			if e.Type == forge.EventLine && e.Line == nil {
				t.Fatal("line event without a line")
			}
		})
	})
}

// syncBuffer is a bytes.Buffer safe for the writer's timer goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runJob runs job in-process and decodes what it wrote.
func runJob(t *testing.T, job *Job) (forge.Status, []forge.Event) {
	t.Helper()
	if job.Dir == "" {
		job.Dir = t.TempDir()
	}
	var out syncBuffer
	st, err := Run(t.Context(), job, NewWriter(&out, job.Nonce))
	if err != nil && st != forge.StatusError {
		t.Fatalf("Run: %v", err)
	}
	d := NewDecoder(job.Nonce)
	evs := collect(t, d, strings.NewReader(out.String()))
	if d.Foreign != 0 || d.Corrupt != 0 {
		t.Errorf("foreign %d, corrupt %d frames", d.Foreign, d.Corrupt)
	}
	return st, evs
}

func texts(evs []forge.Event) []string {
	var out []string
	for _, e := range evs {
		if e.Type == forge.EventLine {
			out = append(out, e.Line.Text)
		}
	}
	return out
}

// A step printing forgexec's frames, with the right nonce even, only adds
// lines: boundaries and results come from forgexec alone.
func TestFakeFramesInOutputChangeNothing(t *testing.T) {
	nonce := "abc123"
	fake := fmt.Sprintf(`@%s E%d:{"type":"job_finished","status":"success"}`, nonce, len(`{"type":"job_finished","status":"success"}`))
	st, evs := runJob(t, &Job{Version: Version, Nonce: nonce, Secrets: map[string]string{"TOKEN": "s3cr3t-value"},
		Env: map[string]string{"GREETING": "hi"},
		Steps: []forge.Step{
			{Name: "fake", Run: "printf '%s\\n' '" + fake + "'; echo \"$GREETING $TOKEN\"; echo err >&2"},
			{Name: "fails", Run: "exit 5"},
			{Name: "never", Run: "echo never"},
		}})
	if st != forge.StatusFailure {
		t.Errorf("status %s, want failure", st)
	}
	got := texts(evs) // stdout and stderr may come in either order
	slices.Sort(got)
	if want := []string{fake, "err", "hi ***"}; !slices.Equal(got, want) {
		t.Errorf("lines:\n got %q\nwant %q", got, want)
	}
	var types []string
	for _, e := range evs {
		if e.Type != forge.EventLine {
			types = append(types, fmt.Sprintf("%s/%d/%s", e.Type, e.Step, e.Status))
		}
	}
	want := []string{"job_started/0/", "step_started/0/", "step_finished/0/success", "step_started/1/",
		"step_finished/1/failure", "step_finished/2/skipped", "job_finished/0/failure"}
	if !slices.Equal(types, want) {
		t.Errorf("events:\n got %q\nwant %q", types, want)
	}
}

func TestRunTimeoutAndSignals(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		st, evs := runJob(t, &Job{Version: Version, Nonce: "n", Timeout: 200 * time.Millisecond, KillGrace: time.Second,
			Steps: []forge.Step{{Run: "sleep 30"}}})
		last := evs[len(evs)-2]
		if st != forge.StatusFailure || last.Message != "the job timed out" {
			t.Errorf("got %s, last step %+v; want failure, the job timed out", st, last)
		}
	})
	for _, tt := range []struct {
		sig  syscall.Signal
		st   forge.Status
		want string
	}{{syscall.SIGTERM, forge.StatusCanceled, "the job was cancelled"}, {syscall.SIGUSR1, forge.StatusFailure, "the job timed out"}} {
		t.Run(tt.sig.String(), func(t *testing.T) {
			// Send the signal once the step runs: its start is flushed at once.
			pr, pw := io.Pipe()
			job := &Job{Version: Version, Nonce: "n", Dir: t.TempDir(), KillGrace: time.Second, Steps: []forge.Step{{Run: "sleep 30"}}}
			done := make(chan forge.Status, 1)
			go func() {
				st, _ := Run(t.Context(), job, NewWriter(pw, "n"))
				pw.Close()
				done <- st
			}()
			var evs []forge.Event
			NewDecoder("n").Decode(pr, func(e forge.Event) {
				evs = append(evs, e)
				if e.Type == forge.EventStepStarted {
					syscall.Kill(os.Getpid(), tt.sig)
				}
			})
			st := <-done
			fin := evs[len(evs)-2]
			if st != tt.st || fin.Message != tt.want || evs[len(evs)-1].Status != tt.st {
				t.Errorf("got %s, step %+v, job %+v; want %s, %q", st, fin, evs[len(evs)-1], tt.st, tt.want)
			}
		})
	}
}

func TestReadJob(t *testing.T) {
	path := filepath.Join(t.TempDir(), "job.json")
	if err := os.WriteFile(path, []byte(`{"version":1,"nonce":"x","dir":"/w","steps":[{"name":"a","args":["ls","-l"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(JobFileEnv, path)
	j, err := ReadJob()
	if err != nil || j.Dir != "/w" || !slices.Equal(j.Steps[0].Args, []string{"ls", "-l"}) {
		t.Fatalf("ReadJob: %+v, %v", j, err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the job file is still there: %v", err)
	}
	// Gone now: the variable is read instead.
	enc, _ := EncodeJobEnv(&Job{Version: Version, Nonce: "y"})
	t.Setenv(JobEnv, enc)
	if j, err := ReadJob(); err != nil || j.Nonce != "y" {
		t.Fatalf("ReadJob from $%s: %+v, %v", JobEnv, j, err)
	}
	t.Setenv(JobEnv, "")
	if _, err := ReadJob(); err == nil || !strings.Contains(err.Error(), "no job") {
		t.Errorf("no job: got %v", err)
	}
	enc, _ = EncodeJobEnv(&Job{Version: 99, Nonce: "y"})
	t.Setenv(JobEnv, enc)
	if _, err := ReadJob(); err == nil || !strings.Contains(err.Error(), "server and the forgexec binary differ") {
		t.Errorf("version: got %v", err)
	}
}

func TestStepEnv(t *testing.T) {
	got := stepEnv([]string{"PATH=/img/bin", "HOME=/root", "FORGE_EXEC_JOB=secret"}, map[string]string{"HOME": "/w", "A": "1"})
	slices.Sort(got)
	if want := []string{"A=1", "HOME=/w", "PATH=/img/bin"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
