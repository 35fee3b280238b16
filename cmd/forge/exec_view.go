package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/engine"
)

// An execView shows a run to the user. Report is called by the engine from one
// goroutine at a time; Finish is called once, after the run, with its
// result, and writes the summary.
type execView interface {
	forge.Reporter
	Finish(res *engine.Result) error
	// Note tells the user something about the run as a whole (safe to
	// call from any goroutine).
	Note(msg string)
	// Halt stops the view's flushing goroutine without a summary, for a
	// run that never started; it is idempotent, and Finish calls it.
	Halt()
}

// flushEvery is how often buffered output reaches stdout off a terminal:
// often enough to look live, rarely enough that a million lines cost a few
// hundred writes, not a million. redrawEvery is the same on a terminal,
// where each flush also redraws the state block: five times a second.
const (
	flushEvery  = 100 * time.Millisecond
	redrawEvery = 200 * time.Millisecond
)

// textView prints each job's output prefixed with the job's name. Off a
// terminal it prints plain "[job] text" lines and nothing else; on a
// terminal (live) it also keeps a block of job states at the bottom,
// redrawn in place at most every redrawEvery, and colours the prefixes
// unless colour is off.
type textView struct {
	mu     sync.Mutex
	w      *bufio.Writer
	live   bool
	colour bool
	width  func() (cols, rows int) // the terminal's size (live only)
	now    func() time.Time

	jobs  map[string]*jobState
	order []*jobState
	pad   int // width of the name column in live mode

	drawn  int // lines of the state block on screen now (live only)
	failed writeFailure
	halt   sync.Once
	stop   chan struct{}
	done   chan struct{}
}

// jobState is what the view knows of a job.
type jobState struct {
	name     string
	prefix   string // "[name] " with colour and padding, ready to write
	colour   string
	status   forge.Status
	steps    int
	cont     []bool // the steps' ContinueOnError
	step     int    // index of the current step
	stepName string
	attempt  int
	started  time.Time
	duration time.Duration
	message  string
}

// The colours of job prefixes, chosen in turn.
var jobColours = []string{"36", "33", "35", "32", "34", "96", "93", "95", "92", "94"}

func newTextView(out io.Writer, plan *forge.Plan, live, colour bool, size func() (int, int), onErr func(error)) *textView {
	v := &textView{
		failed: writeFailure{fn: onErr},
		w:      bufio.NewWriterSize(out, 64<<10),
		live:   live,
		colour: colour && live,
		width:  size,
		now:    time.Now,
		jobs:   make(map[string]*jobState, len(plan.Jobs)),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	for _, j := range plan.Jobs {
		v.pad = max(v.pad, min(len(j.Name), 24))
	}
	for i, j := range plan.Jobs {
		s := &jobState{name: j.Name, status: forge.StatusPending, steps: len(j.Steps)}
		for _, st := range j.Steps {
			s.cont = append(s.cont, st.ContinueOnError)
		}
		s.colour = jobColours[i%len(jobColours)]
		s.prefix = "[" + j.Name + "] "
		if v.live {
			s.prefix = "[" + j.Name + "]" + strings.Repeat(" ", max(0, v.pad-len(j.Name))) + " "
		}
		if v.colour {
			s.prefix = "\x1b[" + s.colour + "m" + s.prefix + "\x1b[0m"
		}
		v.jobs[j.Name] = s
		v.order = append(v.order, s)
	}
	go v.tick()
	return v
}

// tick flushes (and, live, redraws) until Finish.
func (v *textView) tick() {
	defer close(v.done)
	every := flushEvery
	if v.live {
		every = redrawEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-v.stop:
			return
		case <-t.C:
			v.mu.Lock()
			if v.live {
				v.eraseBlock()
				v.drawBlock()
			}
			v.failed.check(v.w.Flush())
			v.mu.Unlock()
		}
	}
}

// Report shows e.
func (v *textView) Report(e forge.Event) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.jobs[e.Job]
	if s == nil {
		return // plan_finished: the summary follows
	}
	if v.live && v.drawn > 0 {
		v.eraseBlock()
	}
	switch e.Type {
	case forge.EventLine:
		v.w.WriteString(s.prefix)
		if v.live {
			v.w.WriteString(sanitizeControl(e.Line.Text))
		} else {
			v.w.WriteString(e.Line.Text)
		}
		v.w.WriteByte('\n')
		return
	case forge.EventJobQueued:
		s.status = forge.StatusQueued
	case forge.EventJobWaiting:
		s.status, s.message = forge.StatusWaiting, e.Message
		v.say(s, e.Message)
	case forge.EventJobStarted:
		s.status, s.attempt, s.message = forge.StatusRunning, e.Attempt, ""
		if e.Attempt == 1 {
			s.started = e.Time
		}
		if e.Message != "" {
			v.say(s, fmt.Sprintf("attempt %d: %s", e.Attempt, e.Message))
		}
	case forge.EventStepStarted:
		s.step, s.stepName = e.Step, e.StepName
		v.say(s, "$ "+e.StepName)
	case forge.EventStepFinished:
		switch e.Status {
		case forge.StatusFailure, forge.StatusError:
			msg := fmt.Sprintf("step %s failed: %s", stepTitle(e), e.Message)
			if e.Message == "" {
				msg = fmt.Sprintf("step %s failed with exit code %d", stepTitle(e), e.ExitCode)
				if e.Step < len(s.cont) && s.cont[e.Step] {
					msg += " (continue_on_error: the job goes on)"
				}
			}
			v.say(s, msg)
		}
	case forge.EventJobFinished:
		s.status, s.duration, s.message = e.Status, e.Duration, e.Message
		msg := string(e.Status)
		if e.Duration > 0 {
			msg += " in " + roundDuration(e.Duration).String()
		}
		if e.Message != "" {
			msg += ": " + e.Message
		}
		v.say(s, msg)
	}
}

// say prints one of forge's own lines about job s.
func (v *textView) say(s *jobState, msg string) {
	v.w.WriteString(s.prefix)
	if v.colour {
		v.w.WriteString("\x1b[2m" + msg + "\x1b[0m\n")
		return
	}
	v.w.WriteString(msg)
	v.w.WriteByte('\n')
}

func stepTitle(e forge.Event) string {
	if e.StepName != "" {
		return strconv.Quote(e.StepName)
	}
	return strconv.Itoa(e.Step + 1)
}

// eraseBlock removes the state block from the screen: the cursor goes to
// the block's first line and everything below is cleared.
func (v *textView) eraseBlock() {
	if v.drawn == 0 {
		return
	}
	fmt.Fprintf(v.w, "\x1b[%dF\x1b[J", v.drawn)
	v.drawn = 0
}

// drawBlock writes the state block under the output: one line per job, or,
// when they do not all fit in half the terminal, the running and waiting
// ones and a line counting every job by state.
func (v *textView) drawBlock() {
	cols, rows := 80, 24
	if v.width != nil {
		if c, r := v.width(); c > 0 && r > 0 {
			cols, rows = c, r
		}
	}
	room := max(rows/2, 3)
	shown := v.order
	hidden := 0
	if len(shown) > room {
		shown = nil
		for _, s := range v.order {
			if !s.status.Done() && s.status != forge.StatusPending && s.status != forge.StatusQueued && len(shown) < room-1 {
				shown = append(shown, s)
			}
		}
		hidden = len(v.order) - len(shown)
	}
	now := v.now()
	for _, s := range shown {
		v.w.WriteString(fitWidth(v.stateLine(s, now), cols-1, v.colour))
		v.w.WriteString("\x1b[K\n")
		v.drawn++
	}
	if hidden > 0 {
		counts := map[forge.Status]int{}
		for _, s := range v.order {
			counts[s.status]++
		}
		var parts []string
		for _, st := range []forge.Status{forge.StatusRunning, forge.StatusWaiting, forge.StatusQueued, forge.StatusSuccess, forge.StatusFailure, forge.StatusError, forge.StatusSkipped, forge.StatusCanceled} {
			if counts[st] > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", counts[st], st))
			}
		}
		v.w.WriteString(fitWidth(fmt.Sprintf("  all %d jobs: %s", len(v.order), strings.Join(parts, ", ")), cols-1, false))
		v.w.WriteString("\x1b[K\n")
		v.drawn++
	}
}

// stateLine is one line of the state block.
func (v *textView) stateLine(s *jobState, now time.Time) string {
	elapsed := ""
	switch {
	case s.status == forge.StatusRunning:
		elapsed = now.Sub(s.started).Truncate(100 * time.Millisecond).String()
	case s.status.Done() && s.duration > 0:
		elapsed = roundDuration(s.duration).String()
	}
	detail := ""
	switch {
	case s.status == forge.StatusRunning && s.steps > 0:
		detail = fmt.Sprintf("step %d/%d %s", s.step+1, s.steps, s.stepName)
		if s.attempt > 1 {
			detail = fmt.Sprintf("attempt %d, %s", s.attempt, detail)
		}
	case s.message != "":
		detail = s.message
	}
	sym, col := statusMark(s.status)
	name := s.name + strings.Repeat(" ", max(0, v.pad-len(s.name)))
	line := fmt.Sprintf("%s %s %-8s %8s  %s", sym, name, s.status, elapsed, detail)
	if v.colour && col != "" {
		line = "\x1b[" + col + "m" + sym + "\x1b[0m" + line[len(sym):]
	}
	return line
}

// statusMark is the symbol and colour of a status.
func statusMark(st forge.Status) (string, string) {
	switch st {
	case forge.StatusRunning:
		return "▶", "36"
	case forge.StatusWaiting:
		return "⧗", "33"
	case forge.StatusSuccess:
		return "✓", "32"
	case forge.StatusFailure, forge.StatusError:
		return "✗", "31"
	case forge.StatusSkipped:
		return "-", "33"
	case forge.StatusCanceled:
		return "⊘", "33"
	}
	return "·", ""
}

// fitWidth cuts s to at most n characters on screen, counting escape sequences
// as nothing when coloured.
func fitWidth(s string, n int, coloured bool) string {
	w := 0
	for i := 0; i < len(s); {
		if coloured && s[i] == 0x1b {
			if k := sgrEnd(s[i:]); k > 0 {
				i += k
				continue
			}
		}
		if w == n {
			if coloured {
				return s[:i] + "\x1b[0m"
			}
			return s[:i]
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
		w++
	}
	return s
}

// Note prints "forge: msg" among the jobs' output.
func (v *textView) Note(msg string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.eraseBlock()
	if v.colour {
		v.w.WriteString("\x1b[1mforge: " + msg + "\x1b[0m\n")
	} else {
		v.w.WriteString("forge: " + msg + "\n")
	}
	v.w.Flush()
}

// Halt stops the redraws.
func (v *textView) Halt() {
	v.halt.Do(func() { close(v.stop) })
	<-v.done
}

// Finish stops the redraws, clears the state block and prints the summary.
func (v *textView) Finish(res *engine.Result) error {
	v.Halt()
	v.mu.Lock()
	defer v.mu.Unlock()
	v.eraseBlock()
	writeSummary(v.w, res, v.colour)
	return v.w.Flush()
}

// writeSummary prints the table of jobs and the overall line.
func writeSummary(w io.Writer, res *engine.Result, colour bool) {
	rows := [][]string{{"JOB", "RESULT", "DURATION", "ATTEMPTS", ""}}
	counts := map[forge.Status]int{}
	for _, j := range res.Jobs {
		counts[j.Status]++
		dur := "-"
		if j.Attempts > 0 {
			dur = roundDuration(j.Duration).String()
		}
		msg := ""
		if j.Status != forge.StatusSuccess {
			msg = j.Message
		}
		rows = append(rows, []string{j.Name, string(j.Status), dur, strconv.Itoa(j.Attempts), msg})
	}
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	b.WriteByte('\n')
	for n, r := range rows {
		var line strings.Builder
		for i, c := range r {
			cell := c
			if i < len(r)-1 {
				cell += strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)+2)
			}
			if colour && n > 0 && i == 1 {
				_, col := statusMark(forge.Status(c))
				cell = "\x1b[" + col + "m" + c + "\x1b[0m" + cell[len(c):]
			}
			line.WriteString(cell)
		}
		b.WriteString(strings.TrimRight(line.String(), " "))
		b.WriteByte('\n')
	}
	var parts []string
	for _, c := range []struct {
		st   forge.Status
		word string
	}{{forge.StatusSuccess, "passed"}, {forge.StatusFailure, "failed"}, {forge.StatusError, "errored"}, {forge.StatusSkipped, "skipped"}, {forge.StatusCanceled, "canceled"}} {
		if counts[c.st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[c.st], c.word))
		}
	}
	if len(parts) == 0 {
		parts = append(parts, "no jobs")
	}
	fmt.Fprintf(&b, "\n%s: %s in %s\n", res.Status, strings.Join(parts, ", "), roundDuration(res.Duration))
	io.WriteString(w, b.String())
}

// jsonView prints one JSON object per event, then a summary object; nothing
// else goes to stdout.
type jsonView struct {
	stderr io.Writer
	failed writeFailure
	halt   sync.Once
	buf    []byte
	mu     sync.Mutex
	w      *bufio.Writer
	enc    *json.Encoder
	stop   chan struct{}
	done   chan struct{}
}

func newJSONView(out, stderr io.Writer, onErr func(error)) *jsonView {
	v := &jsonView{stderr: stderr, failed: writeFailure{fn: onErr}, w: bufio.NewWriterSize(out, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
	v.enc = json.NewEncoder(v.w)
	v.enc.SetEscapeHTML(false)
	go func() {
		defer close(v.done)
		t := time.NewTicker(flushEvery)
		defer t.Stop()
		for {
			select {
			case <-v.stop:
				return
			case <-t.C:
				v.mu.Lock()
				v.failed.check(v.w.Flush())
				v.mu.Unlock()
			}
		}
	}()
	return v
}

// Report prints e as one line of JSON. Output lines, the bulk of a run,
// are written by hand (five times cheaper than encoding/json for a
// million lines); everything else goes through the encoder.
func (v *jsonView) Report(e forge.Event) {
	v.mu.Lock()
	if lineFastPath(&e) {
		v.buf = appendLineEvent(v.buf[:0], &e)
		v.w.Write(v.buf)
	} else {
		v.enc.Encode(e)
	}
	v.mu.Unlock()
}

// lineFastPath reports whether appendLineEvent encodes e exactly as
// encoding/json would (a line event with none of the "finished" fields).
func lineFastPath(e *forge.Event) bool {
	return e.Type == forge.EventLine && e.Line != nil && e.Status == "" && e.Duration == 0 &&
		e.Message == "" && e.ExitCode == 0 && jsonTimeOK(e.Time) && jsonTimeOK(e.Line.Time)
}

// jsonTimeOK: time.Time.MarshalJSON refuses years outside [0, 9999].
func jsonTimeOK(t time.Time) bool { return t.Year() >= 0 && t.Year() <= 9999 }

// appendLineEvent appends e (a line event, see lineFastPath) as the JSON
// encoding/json makes of a forge.Event, and a newline.
func appendLineEvent(b []byte, e *forge.Event) []byte {
	b = append(b, `{"type":"line","time":"`...)
	b = e.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if e.Job != "" {
		b = append(b, `,"job":`...)
		b = appendJSONString(b, e.Job)
	}
	if e.Attempt != 0 {
		b = append(b, `,"attempt":`...)
		b = strconv.AppendInt(b, int64(e.Attempt), 10)
	}
	b = append(b, `,"step":`...)
	b = strconv.AppendInt(b, int64(e.Step), 10)
	if e.StepName != "" {
		b = append(b, `,"step_name":`...)
		b = appendJSONString(b, e.StepName)
	}
	b = append(b, `,"line":{"number":`...)
	b = strconv.AppendInt(b, int64(e.Line.Number), 10)
	b = append(b, `,"time":"`...)
	b = e.Line.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","stream":`...)
	b = appendJSONString(b, string(e.Line.Stream))
	b = append(b, `,"text":`...)
	b = appendJSONString(b, e.Line.Text)
	return append(b, "},\"exit_code\":0}\n"...)
}

// appendJSONString appends s as a JSON string the way encoding/json does
// without HTML escaping: invalid UTF-8 becomes U+FFFD, control characters
// and U+2028/U+2029 are escaped.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// jsonSummary is the last object --json prints.
type jsonSummary struct {
	Type     string           `json:"type"` // "summary"
	Status   forge.Status     `json:"status"`
	Duration time.Duration    `json:"duration"`
	Jobs     []jsonJobSummary `json:"jobs"`
}

type jsonJobSummary struct {
	Name     string        `json:"name"`
	Status   forge.Status  `json:"status"`
	Attempts int           `json:"attempts"`
	ExitCode int           `json:"exit_code"`
	Duration time.Duration `json:"duration"`
	Message  string        `json:"message,omitempty"`
}

// Note prints msg on stderr: stdout carries only JSON.
func (v *jsonView) Note(msg string) {
	if v.stderr != nil {
		fmt.Fprintln(v.stderr, "forge:", msg)
	}
}

// Halt stops the periodic flush.
func (v *jsonView) Halt() {
	v.halt.Do(func() { close(v.stop) })
	<-v.done
}

// Finish prints the summary object.
func (v *jsonView) Finish(res *engine.Result) error {
	v.Halt()
	s := jsonSummary{Type: "summary", Status: res.Status, Duration: res.Duration, Jobs: []jsonJobSummary{}}
	for _, j := range res.Jobs {
		s.Jobs = append(s.Jobs, jsonJobSummary{Name: j.Name, Status: j.Status, Attempts: j.Attempts, ExitCode: j.ExitCode, Duration: j.Duration, Message: j.Message})
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.enc.Encode(s)
	return v.w.Flush()
}

// writeFailure calls fn once, on the first error writing the output (a
// closed pipe: `forge exec | head`), so that the run can be stopped
// cleanly instead of going on unseen.
type writeFailure struct {
	once sync.Once
	fn   func(error)
}

func (w *writeFailure) check(err error) {
	if err != nil && w.fn != nil {
		w.once.Do(func() { w.fn(err) })
	}
}

// execTee reports every event to a log directory and a view.
type execTee struct {
	logs *logDir
	view execView
}

// Report passes e to both.
func (t execTee) Report(e forge.Event) {
	if e.Type == forge.EventJobHandle {
		return // the backend's bookkeeping, for a server's reattach
	}
	if t.logs != nil {
		t.logs.Report(e)
	}
	t.view.Report(e)
}
