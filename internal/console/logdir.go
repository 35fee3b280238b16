package console

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/forgeci/forge"
)

// LogDir writes each job's log to DIR/<job>.log, one line per output line
// with its time and stream:
//
//	2026-11-26T13:04:05.123456Z out building...
//
// forge's own lines (steps starting and ending, the job's result) use the
// stream "sys". Files are buffered and written as the job runs; a file is
// complete when its job finishes.
type LogDir struct {
	dir   string
	files map[string]*jobLogFile // by job name
	names map[string]bool        // file names in use
	last  *jobLogFile            // the job of the previous event: lines come in runs
	ts    timestamper
	err   error // the first write error; later writes are skipped
}

type jobLogFile struct {
	job  string
	path string
	f    *os.File
	w    *bufio.Writer
}

// NewLogDir makes dir if needed and returns a LogDir writing into it.
func NewLogDir(dir string) (*LogDir, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &LogDir{dir: dir, files: map[string]*jobLogFile{}, names: map[string]bool{}}, nil
}

// logFileName turns a job name such as "test (go=1.22, os=linux)" into a
// file name: characters other than letters, digits, '.', '-' and '_'
// become '_'.
func logFileName(job string) string {
	b := []byte(job)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

func (d *LogDir) open(job string) *jobLogFile {
	if l := d.files[job]; l != nil {
		return l
	}
	base := logFileName(job)
	name := base + ".log"
	for i := 2; d.names[name]; i++ { // two names that map to one file name
		name = base + "-" + strconv.Itoa(i) + ".log"
	}
	d.names[name] = true
	l := &jobLogFile{job: job, path: filepath.Join(d.dir, name)}
	f, err := os.Create(l.path)
	if err != nil {
		d.fail(err)
	} else {
		l.f, l.w = f, bufio.NewWriterSize(f, 64<<10)
	}
	d.files[job] = l
	return l
}

func (d *LogDir) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

// Report writes e to its job's file.
func (d *LogDir) Report(e forge.Event) {
	if e.Job == "" || e.Type == forge.EventJobQueued {
		return
	}
	l := d.last
	if l == nil || l.job != e.Job {
		l = d.open(e.Job)
		d.last = l
	}
	if l.w == nil {
		return
	}
	switch e.Type {
	case forge.EventLine:
		d.line(l, e.Line.Time, e.Line.Stream, e.Line.Text)
	case forge.EventJobWaiting:
		d.line(l, e.Time, forge.System, e.Message)
	case forge.EventJobStarted:
		msg := "job " + e.Job + " started, attempt " + strconv.Itoa(e.Attempt)
		if e.Message != "" {
			msg += ": " + e.Message
		}
		d.line(l, e.Time, forge.System, msg)
	case forge.EventStepStarted:
		d.line(l, e.Time, forge.System, fmt.Sprintf("step %d: %s", e.Step+1, e.StepName))
	case forge.EventStepFinished:
		if e.Status == forge.StatusSkipped {
			d.line(l, e.Time, forge.System, fmt.Sprintf("step %d skipped", e.Step+1))
			break
		}
		d.line(l, e.Time, forge.System, fmt.Sprintf("step %d %s (exit code %d) in %s", e.Step+1, e.Status, e.ExitCode, roundDuration(e.Duration)))
	case forge.EventJobFinished:
		msg := "job " + string(e.Status)
		if e.Duration > 0 {
			msg += " in " + roundDuration(e.Duration).String()
		}
		if e.Message != "" {
			msg += ": " + e.Message
		}
		d.line(l, e.Time, forge.System, msg)
		if err := l.w.Flush(); err != nil {
			d.fail(err)
		}
		if err := l.f.Close(); err != nil {
			d.fail(err)
		}
		l.w = nil
	}
}

func (d *LogDir) line(l *jobLogFile, t time.Time, s forge.Stream, text string) {
	w := l.w
	w.Write(d.ts.format(t))
	switch s {
	case forge.Stderr:
		w.WriteString(" err ")
	case forge.System:
		w.WriteString(" sys ")
	default:
		w.WriteString(" out ")
	}
	w.WriteString(text)
	if err := w.WriteByte('\n'); err != nil {
		d.fail(err)
	}
}

// Close flushes and closes every file still open (jobs that never
// finished) and returns the first error writing any of them.
func (d *LogDir) Close() error {
	for _, l := range d.files {
		if l.w != nil {
			if err := l.w.Flush(); err != nil {
				d.fail(err)
			}
			l.f.Close()
			l.w = nil
		}
	}
	if d.err != nil {
		return fmt.Errorf("writing logs to %s: %w", d.dir, d.err)
	}
	return nil
}

// timestamper formats times as 2006-01-02T15:04:05.000000Z in UTC. It
// keeps the text of the current second, so a line costs a few digit
// writes rather than a full time.Format.
type timestamper struct {
	sec int64
	buf [27]byte
}

func (t *timestamper) format(tm time.Time) []byte {
	ns := tm.UnixNano()
	sec, frac := ns/1e9, ns%1e9
	if frac < 0 { // before 1970
		sec, frac = sec-1, frac+1e9
	}
	if sec != t.sec || t.buf[0] == 0 {
		t.sec = sec
		time.Unix(sec, 0).UTC().AppendFormat(t.buf[:0], "2006-01-02T15:04:05.")
	}
	us := frac / 1000
	for i := 25; i >= 20; i-- {
		t.buf[i] = byte('0' + us%10)
		us /= 10
	}
	t.buf[26] = 'Z'
	return t.buf[:]
}

// roundDuration shortens d for people: milliseconds under a minute,
// seconds above.
func roundDuration(d time.Duration) time.Duration {
	if d >= time.Minute {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}
