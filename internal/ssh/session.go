package ssh

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/ansi"
)

// session is one SSH session channel.
type session struct {
	srv    *Server
	caller Caller
	ch     gossh.Channel
	reqs   <-chan *gossh.Request
	act    *activity
	log    *slog.Logger
	remote string
	noPTY  bool

	pty bool
}

const usage = `forge's API over SSH. Commands:
  GET|STORE|UPDATE|DELETE RESOURCE [BODY]   one API call (body also on stdin)
      e.g. GET /repos, GET /builds?repo=owner/repo, STORE /builds?repo=owner/repo '{"ref":"main"}'
  logs [OWNER/REPO/]BUILD/JOB [--follow]    a job's log (ssh -t keeps colours)
  leases                                    lease pools, holders and queues
  help                                      this text
Without a command (ssh -T), one JSON request per line:
  {"id": 1, "verb": "GET", "resource": "/repos"}  ->  {"request_id": 1, "code": 200, "body": ...}
`

// run serves the session's requests until it has run its command.
func (s *session) run(ctx context.Context) {
	defer s.ch.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	started := false
	done := make(chan struct{})
	for {
		var req *gossh.Request
		var ok bool
		select {
		case req, ok = <-s.reqs:
		case <-done:
			// The command ended: drain further requests (none matter)
			// while the channel closes.
			go gossh.DiscardRequests(s.reqs)
			return
		}
		if !ok {
			// The client closed the channel: stop what runs.
			cancel()
			if started {
				<-done
			}
			return
		}
		switch req.Type {
		case "pty-req":
			// Only before the command: it reads s.pty once started.
			if !started {
				s.pty = !s.noPTY
			}
			_ = req.Reply(s.pty && !started, nil)
		case "window-change", "env":
			_ = req.Reply(req.Type == "window-change", nil)
		case "exec", "shell":
			if started {
				_ = req.Reply(false, nil)
				continue
			}
			var cmd string
			if req.Type == "exec" {
				var payload struct{ Command string }
				if err := gossh.Unmarshal(req.Payload, &payload); err != nil {
					_ = req.Reply(false, nil)
					continue
				}
				cmd = payload.Command
			}
			started = true
			_ = req.Reply(true, nil)
			shell := req.Type == "shell"
			go func() {
				defer close(done)
				status := s.command(ctx, cmd, shell)
				_, _ = s.ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, uint32(status)))
			}()
		default:
			// subsystem, x11-req, auth-agent-req@openssh.com, signals...
			_ = req.Reply(false, nil)
		}
	}
}

// command runs one session's command and returns its exit status.
func (s *session) command(ctx context.Context, line string, shell bool) int {
	if shell {
		if s.pty {
			fmt.Fprintf(s.ch.Stderr(), "forge: no interactive shell here. Run a command (ssh HOST help), or ssh -T HOST for the JSON protocol.\r\n")
			return 2
		}
		return s.lines(ctx)
	}
	args, err := splitCommand(line)
	if err != nil {
		fmt.Fprintf(s.ch.Stderr(), "forge: %s\n", forge.ErrorMessage(err))
		return 2
	}
	if len(args) == 0 {
		fmt.Fprint(s.ch.Stderr(), usage)
		return 2
	}
	switch strings.ToLower(args[0]) {
	case "help", "--help", "-h":
		fmt.Fprint(s.ch, usage)
		return 0
	case "logs", "log":
		return s.logs(ctx, args[1:])
	case "leases":
		return s.leases(ctx, args[1:])
	}
	if _, ok := method(args[0]); !ok {
		fmt.Fprintf(s.ch.Stderr(), "forge: unknown command %q (no shell here)\n%s", clip(args[0]), usage)
		return 2
	}
	return s.exec(ctx, line)
}

// exec runs "VERB RESOURCE [BODY]".
func (s *session) exec(ctx context.Context, line string) int {
	r, err := ParseCommand(line)
	if err != nil {
		return s.answer(&Response{Code: forge.HTTPStatus(err), Body: errorJSON(err)})
	}
	if m, _ := method(r.Verb); len(r.Body) == 0 && (m == http.MethodPost || m == http.MethodPut || m == http.MethodPatch) {
		body, err := io.ReadAll(io.LimitReader(s.ch, MaxRequest+1))
		if err != nil {
			fmt.Fprintf(s.ch.Stderr(), "forge: reading the body: %v\n", err)
			return 1
		}
		if len(body) > MaxRequest {
			return s.answer(&Response{Code: http.StatusRequestEntityTooLarge, Body: errorJSON(forge.Errorf(forge.ETOOLARGE, "body over %d bytes", MaxRequest))})
		}
		r.Body = bytes.TrimSpace(body)
	}
	return s.answer(s.srv.do(ctx, s.caller, s.remote, s.act, r))
}

// answer prints resp and returns its exit status.
func (s *session) answer(resp *Response) int {
	out, _ := json.MarshalIndent(resp, "", "  ")
	if s.pty {
		out = bytes.ReplaceAll(out, []byte("\n"), []byte("\r\n"))
		out = append(out, '\r')
	}
	_, _ = s.ch.Write(append(out, '\n'))
	return ExitStatus(resp.Code)
}

// lines speaks the newline-delimited protocol until the client ends its
// input, then waits for the requests in flight.
func (s *session) lines(ctx context.Context) int {
	var wmu sync.Mutex
	send := func(resp *Response) {
		b, _ := json.Marshal(resp)
		wmu.Lock()
		defer wmu.Unlock()
		_, _ = s.ch.Write(append(b, '\n'))
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, s.srv.opts.MaxInFlight)
	sc := bufio.NewScanner(s.ch)
	sc.Buffer(make([]byte, 0, 64<<10), MaxRequest+1)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		req, err := DecodeRequest(line)
		if err != nil {
			send(&Response{RequestID: idOf(line), Code: forge.HTTPStatus(err), Body: errorJSON(err)})
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return 1
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			send(s.srv.do(ctx, s.caller, s.remote, s.act, req))
		}()
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			send(&Response{Code: http.StatusRequestEntityTooLarge, Body: errorJSON(forge.Errorf(forge.ETOOLARGE, "request line over %d bytes", MaxRequest))})
		}
		return 1
	}
	return 0
}

// idOf salvages the id of a request that did not decode, so the error
// can be matched to it.
func idOf(line []byte) json.RawMessage {
	var v struct {
		ID json.RawMessage `json:"id"`
	}
	if json.Unmarshal(line, &v) != nil {
		return nil
	}
	return v.ID
}

// errorJSON is the API's error body for err.
func errorJSON(err error) json.RawMessage {
	code := forge.ErrorCode(err)
	msg := forge.ErrorMessage(err)
	if code == forge.EINTERNAL {
		msg = "internal error"
	}
	b, _ := json.Marshal(map[string]string{"code": code, "message": msg})
	return b
}

// do runs r through the API handler as caller.
func (srv *Server) do(ctx context.Context, caller Caller, remote string, act *activity, r *Request) *Response {
	defer act.begin()()
	m, p, err := r.Target()
	if err != nil {
		return &Response{RequestID: r.ID, Code: forge.HTTPStatus(err), Body: errorJSON(err)}
	}
	rec := &recorder{h: http.Header{}}
	srv.serve(ctx, caller, remote, m, p, r.Body, rec)
	resp := &Response{RequestID: r.ID, Code: rec.code()}
	body := bytes.TrimSpace(rec.buf.Bytes())
	switch {
	case len(body) == 0:
	case json.Valid(body):
		resp.Body = body
	default:
		resp.Body, _ = json.Marshal(rec.buf.String())
	}
	return resp
}

// serve calls the API handler with a request synthesized from the call.
func (srv *Server) serve(ctx context.Context, caller Caller, remote, method, target string, body []byte, w http.ResponseWriter) {
	ctx = context.WithValue(ctx, callerKey{}, caller)
	req, err := http.NewRequestWithContext(ctx, method, target, bytes.NewReader(body))
	if err != nil {
		// Target() checked the path; this is a bug, answered as one.
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	req.RequestURI = target
	req.RemoteAddr = remote
	req.Host = "forge-ssh"
	if len(body) > 0 {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("User-Agent", "forge-ssh")
	srv.opts.Handler.ServeHTTP(w, req)
}

// recorder keeps a handler's answer.
type recorder struct {
	h      http.Header
	status int
	buf    bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.h }
func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}
func (r *recorder) Write(p []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.buf.Write(p)
}
func (r *recorder) code() int {
	if r.status == 0 {
		return http.StatusOK
	}
	return r.status
}

// stream passes a handler's 200 answer (a log, sanitized by the API:
// colours are the only escapes left) to out line by line: on a terminal
// with CRLF line ends, elsewhere without the colours, as plain text. Any
// other answer is kept, to be shown as an error.
type stream struct {
	recorder
	out     io.Writer
	pty     bool
	pending []byte
}

func (s *stream) Write(p []byte) (int, error) {
	s.WriteHeader(http.StatusOK)
	if s.status != http.StatusOK {
		return s.buf.Write(p)
	}
	s.pending = append(s.pending, p...)
	i := bytes.LastIndexByte(s.pending, '\n')
	if i < 0 {
		return len(p), nil
	}
	err := s.emit(s.pending[:i+1])
	s.pending = append(s.pending[:0], s.pending[i+1:]...)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// emit writes whole lines.
func (s *stream) emit(b []byte) error {
	if s.pty {
		b = bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
	} else {
		b = stripSGR(b)
	}
	_, err := s.out.Write(b)
	return err
}

// finish writes what is left of an unterminated last line.
func (s *stream) finish() {
	if len(s.pending) > 0 && s.status == http.StatusOK {
		_ = s.emit(s.pending)
		s.pending = nil
	}
}

// Flush makes the log handler flush each batch of lines (whole lines
// go out as they come).
func (s *stream) Flush() {}

// stripSGR removes colour sequences from sanitized text.
func stripSGR(b []byte) []byte {
	if bytes.IndexByte(b, 0x1b) < 0 {
		return b
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); {
		if n := ansi.SGRLen(string(b[i:min(len(b), i+64)])); n > 0 {
			i += n
			continue
		}
		out = append(out, b[i])
		i++
	}
	return out
}

// logs runs "logs [OWNER/REPO/]BUILD/JOB [--follow] [--repo OWNER/REPO]".
func (s *session) logs(ctx context.Context, args []string) int {
	var follow bool
	var repo, target string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-f" || a == "--follow":
			follow = true
		case a == "--repo" && i+1 < len(args):
			i++
			repo = args[i]
		case strings.HasPrefix(a, "--repo="):
			repo = strings.TrimPrefix(a, "--repo=")
		case strings.HasPrefix(a, "-") || target != "":
			fmt.Fprintf(s.ch.Stderr(), "forge: logs: unexpected %q: usage: logs [OWNER/REPO/]BUILD/JOB [--follow]\n", clip(a))
			return 2
		default:
			target = a
		}
	}
	parts := strings.Split(target, "/")
	if len(parts) == 4 {
		repo, parts = parts[0]+"/"+parts[1], parts[2:]
	}
	if len(parts) != 2 {
		fmt.Fprintf(s.ch.Stderr(), "forge: logs: want BUILD/JOB (a build number and a job id) or OWNER/REPO/BUILD/JOB, got %q\n", clip(target))
		return 2
	}
	for _, p := range parts {
		if n, err := strconv.ParseInt(p, 10, 64); err != nil || n <= 0 {
			fmt.Fprintf(s.ch.Stderr(), "forge: logs: %q is not a positive number\n", clip(p))
			return 2
		}
	}
	if repo == "" {
		var err error
		if repo, err = s.onlyRepo(ctx); err != nil {
			fmt.Fprintf(s.ch.Stderr(), "forge: logs: %s\n", forge.ErrorMessage(err))
			return ExitStatus(forge.HTTPStatus(err))
		}
	}
	owner, name, ok := strings.Cut(repo, "/")
	if !ok || owner == "" || name == "" || strings.Contains(name, "/") {
		fmt.Fprintf(s.ch.Stderr(), "forge: logs: repository %q: want OWNER/REPO\n", clip(repo))
		return 2
	}
	q := url.Values{}
	if follow {
		q.Set("follow", "true")
	}
	p := fmt.Sprintf("/api/v1/repos/%s/%s/builds/%s/jobs/%s/log", url.PathEscape(owner), url.PathEscape(name), parts[0], parts[1])
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	defer s.act.begin()()
	w := &stream{recorder: recorder{h: http.Header{}}, out: s.ch, pty: s.pty}
	s.srv.serve(ctx, s.caller, s.remote, http.MethodGet, p, nil, w)
	w.finish()
	if code := w.code(); code != http.StatusOK {
		out, _ := json.MarshalIndent(Response{Code: code, Body: bytes.TrimSpace(w.buf.Bytes())}, "", "  ")
		fmt.Fprintf(s.ch.Stderr(), "%s\n", out)
		return ExitStatus(code)
	}
	return 0
}

// onlyRepo returns the repository when the server has exactly one, so
// that "logs 7/3" needs no OWNER/REPO on a single-repository server.
func (s *session) onlyRepo(ctx context.Context) (string, error) {
	var list struct {
		Repos []struct {
			Owner string `json:"owner"`
			Name  string `json:"name"`
		} `json:"repos"`
	}
	if err := s.getJSON(ctx, "/api/v1/repos", &list); err != nil {
		return "", err
	}
	if len(list.Repos) != 1 {
		return "", forge.Errorf(forge.EINVALID, "this server has %d repositories: name one, as OWNER/REPO/BUILD/JOB or --repo OWNER/REPO", len(list.Repos))
	}
	return list.Repos[0].Owner + "/" + list.Repos[0].Name, nil
}

// getJSON GETs an API path into v; a non-200 answer is an error with the
// API's code and message.
func (s *session) getJSON(ctx context.Context, p string, v any) error {
	resp := s.srv.do(ctx, s.caller, s.remote, s.act, &Request{Verb: "GET", Resource: p})
	if resp.Code != http.StatusOK {
		var e struct{ Code, Message string }
		_ = json.Unmarshal(resp.Body, &e)
		if e.Message == "" {
			e.Message = fmt.Sprintf("GET %s answered %d", p, resp.Code)
		}
		return forge.Errorf(statusCode(resp.Code), "%s", e.Message)
	}
	if err := json.Unmarshal(resp.Body, v); err != nil {
		return forge.Errorf(forge.EINTERNAL, "GET %s: %v", p, err)
	}
	return nil
}

// statusCode maps an HTTP status back to the error code behind it.
func statusCode(status int) string {
	for _, c := range []string{forge.EINVALID, forge.EUNAUTHORIZED, forge.EFORBIDDEN, forge.ENOTFOUND, forge.ECONFLICT, forge.EUNAVAILABLE, forge.ENOTIMPL} {
		if forge.HTTPStatus(forge.Errorf(c, "")) == status {
			return c
		}
	}
	return forge.EINTERNAL
}

// leases prints the lease pools, their resources' holders and queues.
func (s *session) leases(ctx context.Context, args []string) int {
	if len(args) > 0 {
		fmt.Fprintf(s.ch.Stderr(), "forge: leases takes no arguments\n")
		return 2
	}
	var pools struct {
		Pools []struct {
			Name      string `json:"name"`
			Order     string `json:"order"`
			Deleted   bool   `json:"deleted"`
			Size      int    `json:"size"`
			Free      int    `json:"free"`
			InUse     int    `json:"in_use"`
			Disabled  int    `json:"disabled"`
			Resources []struct {
				ID       string     `json:"id"`
				State    string     `json:"state"`
				Disabled bool       `json:"disabled"`
				Lease    string     `json:"lease"`
				Holder   string     `json:"holder"`
				Since    *time.Time `json:"since"`
			} `json:"resources"`
			Queue []struct {
				Holder   string                  `json:"holder"`
				Position int                     `json:"position"`
				Since    time.Time               `json:"since"`
				Wants    []forge.ResourceRequest `json:"wants"`
			} `json:"queue"`
		} `json:"pools"`
	}
	defer s.act.begin()()
	if err := s.getJSON(ctx, "/api/v1/pools", &pools); err != nil {
		fmt.Fprintf(s.ch.Stderr(), "forge: leases: %s\n", forge.ErrorMessage(err))
		return ExitStatus(forge.HTTPStatus(err))
	}
	var out bytes.Buffer
	now := time.Now()
	ago := func(t time.Time) string { return now.Sub(t).Truncate(time.Second).String() }
	tw := tabwriter.NewWriter(&out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tORDER\tSIZE\tFREE\tIN USE\tDISABLED\tWAITING")
	for _, p := range pools.Pools {
		name := p.Name
		if p.Deleted {
			name += " (deleted)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\n", name, p.Order, p.Size, p.Free, p.InUse, p.Disabled, len(p.Queue))
	}
	tw.Flush()
	out.WriteString("\n")
	tw = tabwriter.NewWriter(&out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tSTATE\tHOLDER\tLEASE\tFOR")
	for _, p := range pools.Pools {
		for _, r := range p.Resources {
			state, held := r.State, ""
			if r.Disabled && state != "disabled" {
				state += ", disabled"
			}
			if r.Since != nil {
				held = ago(*r.Since)
			}
			fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\n", p.Name, r.ID, state, dash(r.Holder), dash(r.Lease), dash(held))
		}
	}
	tw.Flush()
	waiting := false
	for _, p := range pools.Pools {
		waiting = waiting || len(p.Queue) > 0
	}
	if waiting {
		out.WriteString("\n")
		tw = tabwriter.NewWriter(&out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "QUEUE\t#\tHOLDER\tWANTS\tWAITING")
		for _, p := range pools.Pools {
			for _, q := range p.Queue {
				var wants []string
				for _, w := range q.Wants {
					s := fmt.Sprintf("%d %s", w.Count, w.Pool)
					for k, v := range w.Labels {
						s += fmt.Sprintf(" %s=%s", k, v)
					}
					wants = append(wants, s)
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", p.Name, q.Position, dash(q.Holder), strings.Join(wants, ", "), ago(q.Since))
			}
		}
		tw.Flush()
	}
	b := out.Bytes()
	if s.pty {
		b = bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
	}
	_, _ = s.ch.Write(b)
	return 0
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
