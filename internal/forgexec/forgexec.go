// Package forgexec drives a job's steps inside a container and carries what
// happens back to the forge server. It is the contract between container
// backends (internal/backend/docker, internal/backend/swarm) and the
// in-container driver, which is the forge binary itself started under the
// name forgexec (cmd/forge dispatches on argv[0] to Main).
//
// # The driver
//
// A container backend starts the job's container from the job's image with
// the forge binary as its entrypoint, named forgexec (see "Getting the binary
// in" below). forgexec reads the Job (below), then runs the steps with
// internal/shell exactly as the local backend runs them on the host: each
// step in its own process group (SHELL -e -c SCRIPT, or a program and its
// arguments for steps with Args), its output cut into timestamped lines,
// secret values masked, step timeouts, SIGTERM then SIGKILL after the
// grace period. When it is PID 1 it collects the orphans steps leave.
//
// # Getting the job in
//
// The Job is JSON, read from the file named by $FORGE_EXEC_JOB_FILE
// (DefaultJobFile when unset: a backend may copy it into a created
// container before starting it), or, when that file does not exist and
// $FORGE_EXEC_JOB is set, from that variable (base64 of the JSON: for
// engines where nothing can be copied into a container before it starts,
// e.g. a Swarm service; a Swarm secret mounted as a file, named by
// $FORGE_EXEC_JOB_FILE, keeps secrets out of `docker service inspect`).
// forgexec removes the file once read. The steps' environment is the
// container's own (the image's ENV: PATH, ...) overridden by Job.Env and
// Job.Secrets; FORGE_EXEC_* variables are never passed on.
//
// A backend that can attach to the container's stdin before it starts (the
// docker backend) sets $FORGE_EXEC_STDIN=1 and writes the job and the
// workspace there instead (WriteStdin): one stream, nothing copied into the
// container beforehand, and the files are the container user's. forgexec
// reads it to its end, extracting the workspace into Job.Dir, before the
// first step.
//
// # The channel back
//
// Everything forgexec reports is written to its stdout as frames, one frame
// per text line:
//
//	@NONCE RECORD RECORD ...\n
//
// NONCE is Job.Nonce, a random value per job attempt that only forgexec and
// the server know. The steps cannot forge a frame: their stdout and stderr
// are pipes that forgexec reads (their output travels as the text of line
// records, never as frames), and forgexec makes itself non-dumpable so a
// step cannot open /proc/1/fd/1, /proc/1/environ or /proc/1/mem to write raw
// frames or read the nonce (even as root: that needs CAP_SYS_PTRACE, which
// containers do not get). The server ignores any stdout text line that does
// not start with "@NONCE ", and shows what forgexec prints on stderr (only
// its own fatal errors) as system lines.
//
// A RECORD is one of:
//
//	L<step>,<number>,<unixnano>,<stream>,<length>:<text>
//	E<length>:<json>
//
// L is a log line: the step index, the line number (from 1, across the
// job), the time it was read (Unix nanoseconds), the stream (o stdout, e
// stderr, s system) and the text, <length> bytes of UTF-8 without a
// newline. E is any other event (step started or finished, the job's end),
// a forge.Event as JSON. The last record of a run is an E record of type
// job_finished carrying the job's status and, for StatusError, the reason
// in Message; the container then exits with ExitCode(status). A container
// that ends without that record (killed, out of memory) ended abnormally,
// and the backend says so from the engine's own account (exit code,
// OOMKilled).
//
// Frames are written in batches: a frame holds up to about 16 KB of
// records (under the 16 KB an engine's log driver cuts messages at) and is
// written at once when a step starts or ends, else within FlushDelay of its
// first record. The container's log is the durable copy of the stream: the
// server follows it while the job runs and, after a restart, replays it
// from the start, skipping the lines it already stored (numbers are
// stable), which is how Attach resumes without a line twice or missing.
//
// # Stopping
//
// SIGTERM (or SIGINT) cancels the job: the running step's process group
// gets SIGTERM, then SIGKILL after Job.KillGrace, the rest are skipped, the
// job ends canceled. SIGUSR1 ends it the same way as a timeout (the job
// fails "timed out"). Job.Timeout bounds the whole job from forgexec's
// start, so a job whose server is gone still ends on time. A backend stops
// a container with SIGTERM (cancel) or SIGUSR1 (the job's deadline passed)
// and gives it KillGrace plus a margin before killing it.
//
// # Getting the binary in
//
// The binary must be in place before the container starts, whatever the
// engine. The docker backend keeps it in a volume named after the binary's
// digest (forge-exec-<sha256 prefix>), filled once through a created, never
// started, container and mounted read-only at BinDir in every job container;
// the server's own path is never bind-mounted, so it works when forge itself
// runs in a container or talks to a remote engine. A volume is per node: on
// Swarm, a node must get the volume (or an image holding the binary) before
// a task can use it.
package forgexec

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/shell"
)

// Name is the name forgexec is started under (argv[0]'s base name).
const Name = "forgexec"

// BinDir is where container backends mount the directory holding the
// forgexec binary; Bin is the binary's path in the container.
const (
	BinDir = "/.forge"
	Bin    = BinDir + "/" + Name
)

// The variables forgexec reads its job from.
const (
	JobFileEnv = "FORGE_EXEC_JOB_FILE"
	JobEnv     = "FORGE_EXEC_JOB"
	// StdinEnv set to 1 makes forgexec read its job and workspace from
	// stdin (see WriteStdin).
	StdinEnv = "FORGE_EXEC_STDIN"
)

// DefaultJobFile is where forgexec looks for its job when $FORGE_EXEC_JOB_FILE
// is not set.
const DefaultJobFile = "/.forgexec/job.json"

// FlushDelay is the longest a record waits in forgexec before its frame is
// written.
const FlushDelay = 10 * time.Millisecond

// maxFrame is the size past which a frame is written at once: under the
// 16 KB at which Docker's log drivers cut a message in parts.
const maxFrame = 15 << 10

// Version is the version of the Job and frame format.
const Version = 1

// Job is what forgexec runs: one attempt of one job.
type Job struct {
	Version int `json:"version"`
	// Nonce marks forgexec's frames; see the package documentation.
	Nonce string `json:"nonce"`
	// Dir is where the steps run (the job's workspace in the container).
	Dir string `json:"dir"`
	// Env overrides the container's environment for the steps.
	Env     map[string]string `json:"env,omitempty"`
	Secrets map[string]string `json:"secrets,omitempty"`
	Steps   []forge.Step      `json:"steps"`
	// Timeout bounds the job from forgexec's start; zero means no bound.
	Timeout time.Duration `json:"timeout,omitempty"`
	// KillGrace is the time between SIGTERM and SIGKILL; zero means
	// shell.DefaultKillGrace.
	KillGrace time.Duration `json:"kill_grace,omitempty"`
	// Shell runs the steps with Run; "" means /bin/sh.
	Shell string `json:"shell,omitempty"`
	// Source, when set, is where forgexec fetches the workspace into Dir
	// before the first step (see FetchSource).
	Source *Source `json:"source,omitempty"`
}

// NewNonce returns a random nonce for Job.Nonce.
func NewNonce() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("forgexec: nonce: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// EncodeJobEnv returns j as the value of $FORGE_EXEC_JOB.
func EncodeJobEnv(j *Job) (string, error) {
	b, err := json.Marshal(j)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// Exit statuses of forgexec, one per job status.
const (
	exitSuccess  = 0
	exitFailure  = 1
	exitError    = 2
	exitCanceled = 3
)

// ExitCode is the exit status of forgexec for a job that ended with st.
func ExitCode(st forge.Status) int {
	switch st {
	case forge.StatusSuccess:
		return exitSuccess
	case forge.StatusFailure:
		return exitFailure
	case forge.StatusCanceled:
		return exitCanceled
	}
	return exitError
}

// Main is forgexec: it runs the job and returns the exit status. stdout
// carries the frames; stderr forgexec's own errors.
func Main(ctx context.Context, stdout, stderr io.Writer) int {
	// Steps run as the same user: without this they could open
	// /proc/1/fd/1 and write frames, or read the nonce.
	_ = unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
	var job *Job
	var err error
	if os.Getenv(StdinEnv) == "1" {
		job, err = ReadStdin(os.Stdin)
	} else {
		job, err = ReadJob()
	}
	if err != nil {
		fmt.Fprintln(stderr, "forgexec:", err)
		return exitError
	}
	w := NewWriter(stdout, job.Nonce)
	st, err := Run(ctx, job, w)
	if err != nil {
		fmt.Fprintln(stderr, "forgexec:", err)
	}
	return ExitCode(st)
}

// ReadJob reads the job from $FORGE_EXEC_JOB_FILE (default DefaultJobFile),
// removing the file, or else from $FORGE_EXEC_JOB.
func ReadJob() (*Job, error) {
	path := os.Getenv(JobFileEnv)
	if path == "" {
		path = DefaultJobFile
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		_ = os.Remove(path) // a secret mount may refuse: it is read-only
	case errors.Is(err, os.ErrNotExist) && os.Getenv(JobEnv) != "":
		data, err = base64.StdEncoding.DecodeString(os.Getenv(JobEnv))
		if err != nil {
			return nil, fmt.Errorf("$%s is not base64: %w", JobEnv, err)
		}
	default:
		return nil, fmt.Errorf("no job: %w (set $%s or $%s)", err, JobFileEnv, JobEnv)
	}
	return parseJob(data)
}

// parseJob decodes and checks a job.
func parseJob(data []byte) (*Job, error) {
	var j Job
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("the job is not valid JSON: %w", err)
	}
	if j.Version != Version {
		return nil, fmt.Errorf("job format %d, this forgexec reads %d: the server and the forgexec binary differ", j.Version, Version)
	}
	if j.Nonce == "" || strings.ContainsAny(j.Nonce, " \n") {
		return nil, errors.New("the job has no valid nonce")
	}
	if j.Dir == "" {
		j.Dir = "/"
	}
	return &j, nil
}

// Run runs job, reporting to w, and returns the job's status. It ends the
// job on SIGTERM, SIGINT (cancel) and SIGUSR1 (timeout), and after
// Job.Timeout. The job_finished record is written and flushed before it
// returns.
func Run(ctx context.Context, job *Job, w *Writer) (forge.Status, error) {
	jctx, end := newJobContext(ctx)
	defer end(nil)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	stopSigs := make(chan struct{})
	sigsDone := make(chan struct{})
	go func() {
		defer close(sigsDone)
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGUSR1 {
					end(context.DeadlineExceeded)
				} else {
					end(context.Canceled)
				}
			case <-stopSigs:
				return
			}
		}
	}()
	defer func() { close(stopSigs); <-sigsDone }()
	if job.Timeout > 0 {
		t := time.AfterFunc(job.Timeout, func() { end(context.DeadlineExceeded) })
		defer t.Stop()
	}

	w.Report(forge.Event{Type: forge.EventJobStarted, Time: time.Now()})
	var st forge.Status
	var err error
	if job.Source != nil {
		if err = FetchSource(jctx, job.Source, job.Dir); err != nil {
			st = forge.StatusError
		}
	}
	if err == nil {
		env := stepEnv(os.Environ(), job.Env)
		st, err = shell.RunSteps(jctx, job.Steps, job.Dir, env, job.Secrets, w,
			shell.Options{Shell: job.Shell, KillGrace: job.KillGrace})
	}
	if os.Getpid() == 1 {
		shell.ReapOrphans()
	}
	fin := forge.Event{Type: forge.EventJobFinished, Time: time.Now(), Status: st}
	if err != nil {
		fin.Message = forge.ErrorMessage(err)
	}
	w.Report(fin)
	if ferr := w.Close(); ferr != nil && err == nil {
		err = fmt.Errorf("writing the job's events: %w", ferr)
	}
	return st, err
}

// stepEnv is the container's environment without forgexec's own
// variables, overridden by env.
func stepEnv(base []string, env map[string]string) []string {
	out := make([]string, 0, len(base)+len(env))
	for _, e := range base {
		name, _, _ := strings.Cut(e, "=")
		if strings.HasPrefix(name, "FORGE_EXEC_") {
			continue
		}
		if _, over := env[name]; over {
			continue
		}
		out = append(out, e)
	}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// jobContext is the job's context: it ends with ctx, or when end is
// called with context.Canceled or context.DeadlineExceeded, and then its
// Err is that error, as internal/shell needs to tell a cancel from a
// timeout.
type jobContext struct {
	context.Context // the parent, for values and deadline
	done            chan struct{}
	once            sync.Once
	mu              sync.Mutex
	err             error
}

func newJobContext(parent context.Context) (*jobContext, func(error)) {
	c := &jobContext{Context: parent, done: make(chan struct{})}
	end := func(err error) {
		c.once.Do(func() {
			if err == nil {
				err = context.Canceled
			}
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			close(c.done)
		})
	}
	stop := context.AfterFunc(parent, func() { end(parent.Err()) })
	return c, func(err error) {
		if err == nil {
			stop()
			return
		}
		end(err)
	}
}

func (c *jobContext) Done() <-chan struct{} { return c.done }

func (c *jobContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Writer encodes events as frames (see the package documentation). It is a
// forge.Reporter; Report may be called from several goroutines, and a slow
// reader of the frames slows the steps down rather than losing records.
type Writer struct {
	mu     sync.Mutex
	w      *bufio.Writer
	prefix []byte // "@NONCE"
	frame  []byte // the frame being built, from prefix on
	timer  *time.Timer
	armed  bool
	err    error
}

// NewWriter returns a Writer of frames marked with nonce to w.
func NewWriter(w io.Writer, nonce string) *Writer {
	fw := &Writer{w: bufio.NewWriterSize(w, 64<<10), prefix: []byte("@" + nonce)}
	fw.frame = append(make([]byte, 0, maxFrame+4096), fw.prefix...)
	fw.timer = time.AfterFunc(time.Hour, fw.flushTimer)
	fw.timer.Stop()
	return fw
}

// Report encodes e. It implements forge.Reporter.
func (fw *Writer) Report(e forge.Event) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.frame = append(fw.frame, ' ')
	if e.Type == forge.EventLine && e.Line != nil && !strings.ContainsAny(e.Line.Text, "\n") {
		fw.frame = appendLine(fw.frame, e.Step, e.Line)
		if len(fw.frame) >= maxFrame {
			fw.writeFrameLocked(false)
		}
		if !fw.armed {
			fw.armed = true
			fw.timer.Reset(FlushDelay)
		}
		return
	}
	b, err := json.Marshal(e)
	if err != nil {
		b, _ = json.Marshal(forge.Event{Type: e.Type, Time: e.Time, Step: e.Step, Status: e.Status, Message: "forgexec: " + err.Error()})
	}
	fw.frame = append(fw.frame, 'E')
	fw.frame = strconv.AppendInt(fw.frame, int64(len(b)), 10)
	fw.frame = append(fw.frame, ':')
	fw.frame = append(fw.frame, b...)
	// Steps starting and ending show at once.
	fw.writeFrameLocked(true)
}

// appendLine appends an L record of line l of step.
func appendLine(b []byte, step int, l *forge.LogLine) []byte {
	b = append(b, 'L')
	b = strconv.AppendInt(b, int64(step), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(l.Number), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, l.Time.UnixNano(), 10)
	b = append(b, ',', streamCode(l.Stream), ',')
	b = strconv.AppendInt(b, int64(len(l.Text)), 10)
	b = append(b, ':')
	return append(b, l.Text...)
}

func streamCode(s forge.Stream) byte {
	switch s {
	case forge.Stderr:
		return 'e'
	case forge.System:
		return 's'
	}
	return 'o'
}

func (fw *Writer) flushTimer() {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.armed = false
	fw.writeFrameLocked(true)
}

// writeFrameLocked ends the frame, writes it and, with flush, pushes the
// buffer out.
func (fw *Writer) writeFrameLocked(flush bool) {
	if len(fw.frame) > len(fw.prefix) {
		fw.frame = append(fw.frame, '\n')
		if _, err := fw.w.Write(fw.frame); err != nil && fw.err == nil {
			fw.err = err
		}
		fw.frame = fw.frame[:len(fw.prefix)]
	}
	if flush {
		if err := fw.w.Flush(); err != nil && fw.err == nil {
			fw.err = err
		}
	}
}

// Close writes what is buffered and returns the first write error.
func (fw *Writer) Close() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.timer.Stop()
	fw.writeFrameLocked(true)
	return fw.err
}
