package http

import (
	"bufio"
	"context"
	"encoding/json"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/ansi"
)

// LogIndex sizes and searches stored logs: implemented by internal/sqldb.
//
// LogLen returns the number of a job's last stored line (0 for none).
// SearchLog returns the numbers of the first limit lines (limit <= 0: all)
// from line from on that contain q, ignoring case, and how many match in
// all. SearchLogs finds q in the indexed logs of a repository's builds,
// newest first, at most limit; EINVALID when q is shorter than
// forge.MinLogQuery. All return ENOTFOUND for an unknown job and are safe
// for concurrent use.
type LogIndex interface {
	LogLen(ctx context.Context, jobID int64) (int, error)
	SearchLog(ctx context.Context, jobID int64, q string, from, limit int) (matches []int, total int, err error)
	SearchLogs(ctx context.Context, repoID int64, q string, limit int) ([]forge.LogMatch, error)
}

// The bounds of one JSON log response, one in-log search and one search
// across builds.
const (
	defaultJSONLines = 1000
	maxJSONLines     = 10000
	maxSearchMatches = 100000
	maxRepoMatches   = 1000
)

// logQuery is the query of GET .../log.
type logQuery struct {
	from, limit                  int // limit 0: to the end
	follow, download, timestamps bool
}

// parseLogQuery reads from, limit, follow, download and timestamps.
func parseLogQuery(r *http.Request) (logQuery, error) {
	lq := logQuery{from: 1}
	q := r.URL.Query()
	for key, dst := range map[string]*bool{"follow": &lq.follow, "download": &lq.download, "timestamps": &lq.timestamps} {
		if v := q.Get(key); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return lq, forge.Errorf(forge.EINVALID, "%s=%q: want true or false", key, v)
			}
			*dst = b
		}
	}
	for key, dst := range map[string]*int{"from": &lq.from, "limit": &lq.limit} {
		if v := q.Get(key); v != "" {
			n, err := positive(key, v)
			if err != nil {
				return lq, err
			}
			*dst = n
		}
	}
	return lq, nil
}

// positive parses query parameter key's value v as an integer >= 1.
func positive(key, v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, forge.Errorf(forge.EINVALID, "%s=%q: want an integer from 1", key, v)
	}
	return n, nil
}

// wantsJSON reports whether the request's Accept header asks for JSON.
func wantsJSON(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == "application/json" {
			return true
		}
	}
	return false
}

// logPageBody is the JSON form of a range of a log.
type logPageBody struct {
	Lines []forge.LogLine `json:"lines"`
	Total int             `json:"total"` // the number of the log's last stored line
	Done  bool            `json:"done"`  // the job has ended: the log is complete
}

// stampFormat is how ?timestamps=true prefixes a line: fixed width, UTC.
const stampFormat = "2006-01-02T15:04:05.000000Z"

// jobLog serves a job's log: as text/plain, one line per log line, from
// line ?from= (default 1), ?limit= lines (default: to the end, streamed a
// page at a time however long the log); with Accept: application/json, a
// range (default 1,000 lines, at most 10,000) with the log's length and
// whether it is complete. X-Log-Next is the from= of the next page;
// X-Job-Status tells whether more can still come. ?timestamps=true
// prefixes each text line with its time.
//
// With ?follow=true the response stays open while the job runs: stored
// lines first, then new ones as they happen, until the job ends.
//
// The text is for viewing: a step's output is written by strangers, so
// every terminal control sequence but colours is neutralised (see
// internal/ansi), lest `curl …/log` in a terminal write the reader's
// clipboard or retitle the window. ?download=true gives the exact bytes
// instead, as an attachment. The JSON form has the exact text: the page
// escapes and renders it.
func (s *Server) jobLog(repos forge.RepoStore, builds forge.BuildStore, logs forge.LogStore, index LogIndex, live LiveLogs) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, j, err := lookupJob(r, repos, builds)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		lq, err := parseLogQuery(r)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if wantsJSON(r) && !lq.download {
			if lq.follow {
				s.fail(w, r, forge.Errorf(forge.EINVALID, "follow=true is for text/plain: follow a log as JSON with GET .../log/events (Server-Sent Events)"))
				return
			}
			s.logJSON(w, r, j, lq, logs, index)
			return
		}
		view := ansi.Sanitize
		if lq.download {
			view = func(text string) string { return text }
			w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{
				"filename": logFileName(r.PathValue("owner"), r.PathValue("repo"), b.Number, j.ID)}))
		}
		text := func(bw *bufio.Writer, l forge.LogLine) {
			if lq.timestamps {
				bw.WriteString(l.Time.UTC().Format(stampFormat))
				bw.WriteByte(' ')
			}
			bw.WriteString(view(l.Text))
			bw.WriteByte('\n')
		}
		if lq.follow {
			h := w.Header()
			h.Set("Content-Type", "text/plain; charset=utf-8")
			h.Set("X-Content-Type-Options", "nosniff")
			h.Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusOK)
			f := &follower{s: s, j: j, builds: builds, logs: logs, live: live, next: lq.from,
				sink: &textSink{bw: bufio.NewWriterSize(w, 32<<10), w: w, text: text}}
			f.run(r.Context())
			return
		}
		s.rawLog(w, r, j, lq, logs, index, text)
	}
}

// rawLog streams lines [from, from+limit) as text, a page at a time.
func (s *Server) rawLog(w http.ResponseWriter, r *http.Request, j *forge.BuildJob, lq logQuery, logs forge.LogStore, index LogIndex, text func(*bufio.Writer, forge.LogLine)) {
	ctx := r.Context()
	want := func(read int) int { // the size of the next page
		if lq.limit == 0 {
			return logPage
		}
		return min(logPage, lq.limit-read)
	}
	lines, err := logs.Lines(ctx, j.ID, lq.from, want(0))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	end := int64(lq.from) + int64(lq.limit) // exclusive; limit 0: none
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Job-Status", string(j.Status))
	switch {
	case len(lines) < want(0): // the whole answer is in hand
		next := lq.from
		if len(lines) > 0 {
			next = lines[len(lines)-1].Number + 1
		}
		h.Set("X-Log-Next", strconv.Itoa(next))
	case index != nil:
		n, err := index.LogLen(ctx, j.ID)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		next := int64(n) + 1
		if lq.limit > 0 {
			next = min(next, end)
		}
		h.Set("X-Log-Next", strconv.FormatInt(max(next, int64(lq.from)), 10))
	}
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	read := 0
	for {
		for _, l := range lines {
			text(bw, l)
		}
		read += len(lines)
		if len(lines) < logPage || lq.limit > 0 && read >= lq.limit {
			break
		}
		next := lines[len(lines)-1].Number + 1
		if lines, err = logs.Lines(ctx, j.ID, next, want(read)); err != nil {
			if ctx.Err() == nil {
				s.log.Warn("streaming a log", "job", j.ID, "err", err)
			}
			// The status line is sent: a cut body is all that is left.
			panic(http.ErrAbortHandler)
		}
		if lq.limit > 0 {
			// Lines past a gap in the numbers must stay in range.
			k := len(lines)
			for k > 0 && int64(lines[k-1].Number) >= end {
				k--
			}
			lines = lines[:k]
		}
		if len(lines) == 0 {
			break
		}
	}
	_ = bw.Flush()
}

// logJSON answers a range of j's log as JSON.
func (s *Server) logJSON(w http.ResponseWriter, r *http.Request, j *forge.BuildJob, lq logQuery, logs forge.LogStore, index LogIndex) {
	if index == nil {
		s.fail(w, r, forge.Errorf(forge.ENOTIMPL, "the JSON form of logs is not enabled on this server"))
		return
	}
	limit := lq.limit
	if limit == 0 {
		limit = defaultJSONLines
	}
	if limit > maxJSONLines {
		s.fail(w, r, forge.Errorf(forge.EINVALID, "limit=%d: the JSON form gives at most %d lines at a time", limit, maxJSONLines))
		return
	}
	// j was read before the lines: when it says done, the lines are all
	// stored.
	body := logPageBody{Done: j.Status.Done()}
	var err error
	if body.Lines, err = logs.Lines(r.Context(), j.ID, lq.from, limit); err != nil {
		s.fail(w, r, err)
		return
	}
	if body.Total, err = index.LogLen(r.Context(), j.ID); err != nil {
		s.fail(w, r, err)
		return
	}
	if body.Lines == nil {
		body.Lines = []forge.LogLine{}
	}
	next := lq.from
	if len(body.Lines) > 0 {
		next = body.Lines[len(body.Lines)-1].Number + 1
	}
	w.Header().Set("X-Log-Next", strconv.Itoa(next))
	w.Header().Set("X-Job-Status", string(j.Status))
	writeJSON(w, http.StatusOK, body)
}

// textSink writes a followed log as text.
type textSink struct {
	bw   *bufio.Writer
	w    http.ResponseWriter
	text func(*bufio.Writer, forge.LogLine)
}

func (t *textSink) line(l forge.LogLine) { t.text(t.bw, l) }
func (t *textSink) flush() bool          { return flushTo(t.bw, t.w) }
func (t *textSink) idle() bool           { return true }
func (t *textSink) end(forge.Status)     {}

// flushTo sends what bw holds on to the client.
func flushTo(bw *bufio.Writer, w http.ResponseWriter) bool {
	if err := bw.Flush(); err != nil {
		return false
	}
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	return true
}

// logEvents follows a job's log as Server-Sent Events: every line is an
// event "line" with id its number and data its JSON (number, time, stream,
// text: the exact text); when the job ends, an event "end" with data
// {"status": ...}, and the stream closes. It starts at ?from= (default 1)
// or, when the client reconnects, after the Last-Event-ID it saw: stored
// lines first, then live ones, none twice and none missed. A comment every
// 15 s of silence keeps proxies from closing the stream.
func (s *Server) logEvents(repos forge.RepoStore, builds forge.BuildStore, logs forge.LogStore, live LiveLogs) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, j, err := lookupJob(r, repos, builds)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		from := 1
		if v := r.URL.Query().Get("from"); v != "" {
			if from, err = positive("from", v); err != nil {
				s.fail(w, r, err)
				return
			}
		}
		if v := r.Header.Get("Last-Event-ID"); v != "" {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || n < 0 {
				s.fail(w, r, forge.Errorf(forge.EINVALID, "Last-Event-ID %q: want the number of the last line received", v))
				return
			}
			from = n + 1
		}
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
		w.WriteHeader(http.StatusOK)
		sink := &eventSink{bw: bufio.NewWriterSize(w, 32<<10), w: w}
		// How long a browser waits before it reconnects.
		sink.bw.WriteString("retry: 2000\n\n")
		f := &follower{s: s, j: j, builds: builds, logs: logs, live: live, next: from, sink: sink}
		f.run(r.Context())
	}
}

// eventSink writes a followed log as Server-Sent Events.
type eventSink struct {
	bw *bufio.Writer
	w  http.ResponseWriter
}

func (e *eventSink) line(l forge.LogLine) {
	data, _ := json.Marshal(l) // a LogLine always marshals
	e.bw.WriteString("id: ")
	e.bw.WriteString(strconv.Itoa(l.Number))
	e.bw.WriteString("\nevent: line\ndata: ")
	e.bw.Write(data) // JSON escapes newlines: the data is one line
	e.bw.WriteString("\n\n")
}

func (e *eventSink) flush() bool { return flushTo(e.bw, e.w) }

func (e *eventSink) idle() bool {
	e.bw.WriteString(": keep-alive " + time.Now().UTC().Format(time.RFC3339) + "\n\n")
	return e.flush()
}

func (e *eventSink) end(status forge.Status) {
	data, _ := json.Marshal(struct {
		Status forge.Status `json:"status"`
	}{status})
	e.bw.WriteString("event: end\ndata: ")
	e.bw.Write(data)
	e.bw.WriteString("\n\n")
	e.flush()
}

// logMatches is the body of GET .../log/search.
type logMatches struct {
	Matches []int `json:"matches"`
	Total   int   `json:"total"`
}

// searchLog finds ?q= in a job's log, ignoring case, from line ?from= on:
// the numbers of the first ?limit= (default 1,000) matching lines and how
// many match in all.
func (s *Server) searchLog(repos forge.RepoStore, builds forge.BuildStore, index LogIndex) http.HandlerFunc {
	if index == nil {
		return notImplemented("log search")
	}
	return func(w http.ResponseWriter, r *http.Request) {
		_, j, err := lookupJob(r, repos, builds)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		q := r.URL.Query()
		text := q.Get("q")
		if text == "" {
			s.fail(w, r, forge.Errorf(forge.EINVALID, "q is required: the text to find"))
			return
		}
		from, limit := 1, defaultJSONLines
		for key, dst := range map[string]*int{"from": &from, "limit": &limit} {
			if v := q.Get(key); v != "" {
				n, err := positive(key, v)
				if err == nil && key == "limit" && n > maxSearchMatches {
					err = forge.Errorf(forge.EINVALID, "limit=%d: at most %d", n, maxSearchMatches)
				}
				if err != nil {
					s.fail(w, r, err)
					return
				}
				*dst = n
			}
		}
		matches, total, err := index.SearchLog(r.Context(), j.ID, text, from, limit)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if matches == nil {
			matches = []int{}
		}
		writeJSON(w, http.StatusOK, logMatches{Matches: matches, Total: total})
	}
}

// searchLogs finds ?q= in the logs of a repository's recent builds, newest
// first, at most ?limit= (default 50) lines.
func (s *Server) searchLogs(repos forge.RepoStore, index LogIndex) http.HandlerFunc {
	if index == nil {
		return notImplemented("log search")
	}
	return func(w http.ResponseWriter, r *http.Request) {
		repo, err := lookupRepo(r, repos)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		q := r.URL.Query()
		limit := 50
		if v := q.Get("limit"); v != "" {
			n, err := positive("limit", v)
			if err == nil && n > maxRepoMatches {
				err = forge.Errorf(forge.EINVALID, "limit=%d: at most %d", n, maxRepoMatches)
			}
			if err != nil {
				s.fail(w, r, err)
				return
			}
			limit = n
		}
		found, err := index.SearchLogs(r.Context(), repo.ID, q.Get("q"), limit)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if found == nil {
			found = []forge.LogMatch{}
		}
		writeJSON(w, http.StatusOK, found)
	}
}
