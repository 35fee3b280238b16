package ssh

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// testKey is a client key pair.
type testKey struct {
	signer gossh.Signer
	line   string // its authorized_keys line, without options
}

func newKey(t testing.TB, comment string) testKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(gossh.MarshalAuthorizedKey(s.PublicKey()))) + " " + comment
	return testKey{signer: s, line: line}
}

// testServer is a Server on 127.0.0.1:0 in front of handler.
type testServer struct {
	addr    string
	srv     *Server
	dir     string
	hostKey gossh.PublicKey
}

func startServer(t testing.TB, handler http.Handler, authorized string, opts Options) *testServer {
	t.Helper()
	dir := t.TempDir()
	keys := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(keys, []byte(authorized), 0o600); err != nil {
		t.Fatal(err)
	}
	opts.Handler = handler
	opts.HostKeyFile = filepath.Join(dir, "host_key")
	opts.AuthorizedKeysFile = keys
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &testServer{addr: ln.Addr().String(), srv: srv, dir: dir, hostKey: srv.HostKey()}
}

func (ts *testServer) dial(t testing.TB, auth ...gossh.AuthMethod) (*gossh.Client, error) {
	t.Helper()
	return gossh.Dial("tcp", ts.addr, &gossh.ClientConfig{
		User:            "forge",
		Auth:            auth,
		HostKeyCallback: gossh.FixedHostKey(ts.hostKey),
		Timeout:         30 * time.Second,
	})
}

func (ts *testServer) client(t testing.TB, k testKey) *gossh.Client {
	t.Helper()
	c, err := ts.dial(t, gossh.PublicKeys(k.signer))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// run runs cmd in a new session with stdin, returning stdout, stderr and
// the exit status.
func run(t testing.TB, c *gossh.Client, cmd, stdin string) (string, string, int) {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out, errb bytes.Buffer
	s.Stdout, s.Stderr, s.Stdin = &out, &errb, strings.NewReader(stdin)
	err = s.Run(cmd)
	var exit *gossh.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &exit):
		return out.String(), errb.String(), exit.ExitStatus()
	}
	t.Fatalf("run %q: %v", cmd, err)
	return "", "", 0
}

// echoAPI answers every request with what it saw, as JSON; /api/v1/fail
// answers 404, /api/v1/slow waits for release.
type echoAPI struct {
	release chan struct{}
}

func (e *echoAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	c, ok := CallerFrom(r.Context())
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/api/v1/fail":
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"code":"not_found","message":"nothing here"}`)
		return
	case "/api/v1/slow":
		select {
		case <-e.release:
		case <-r.Context().Done():
		}
	}
	_ = json.NewEncoder(w).Encode(map[string]any{
		"method": r.Method, "uri": r.URL.RequestURI(), "body": string(body),
		"user": c.User, "role": c.Role.String(), "caller": ok, "auth": r.Header.Get("Authorization"),
	})
}

func TestExecRequest(t *testing.T) {
	admin := newKey(t, "alice")
	ts := startServer(t, &echoAPI{}, admin.line+"\n", Options{Roles: map[string]Role{"alice": RoleAdmin}})
	c := ts.client(t, admin)
	tests := []struct {
		cmd, stdin string
		code, exit int
		method     string
		uri, body  string
	}{
		{cmd: "GET /builds?repo=o/r", code: 200, method: "GET", uri: "/api/v1/repos/o/r/builds"},
		{cmd: "get /api/v1/repos/o/r", code: 200, method: "GET", uri: "/api/v1/repos/o/r"},
		{cmd: `STORE /builds?repo=o/r {"ref": "main"}`, code: 200, method: "POST", uri: "/api/v1/repos/o/r/builds", body: `{"ref": "main"}`},
		{cmd: "STORE /builds?repo=o/r", stdin: `{"ref":"dev"}` + "\n", code: 200, method: "POST", uri: "/api/v1/repos/o/r/builds", body: `{"ref":"dev"}`},
		{cmd: "UPDATE /pools/devices '{\"resources\": []}'", code: 200, method: "PUT", uri: "/api/v1/pools/devices", body: `{"resources": []}`},
		{cmd: "DELETE /leases/L1", code: 200, method: "DELETE", uri: "/api/v1/leases/L1"},
		{cmd: "GET /fail", code: 404, exit: 4},
		{cmd: "GET /builds", code: 400, exit: 2},
		{cmd: "STORE /repos {not json", code: 400, exit: 2},
	}
	for _, tt := range tests {
		out, stderr, exit := run(t, c, tt.cmd, tt.stdin)
		if exit != tt.exit {
			t.Errorf("%q: exit %d, want %d (stderr %q)", tt.cmd, exit, tt.exit, stderr)
		}
		var resp struct {
			Code int
			Body struct {
				Method, URI, Body, User, Role string
				Caller                        bool
			}
		}
		if err := json.Unmarshal([]byte(out), &resp); err != nil {
			t.Errorf("%q: output %q: %v", tt.cmd, out, err)
			continue
		}
		if resp.Code != tt.code {
			t.Errorf("%q: code %d, want %d: %s", tt.cmd, resp.Code, tt.code, out)
		}
		if tt.method == "" {
			continue
		}
		b := resp.Body
		if b.Method != tt.method || b.URI != tt.uri || b.Body != tt.body || b.User != "alice" || b.Role != "admin" || !b.Caller {
			t.Errorf("%q: the API saw %+v, want %s %s body %q as alice (admin)", tt.cmd, b, tt.method, tt.uri, tt.body)
		}
	}
	if out, stderr, exit := run(t, c, "sh -c id", ""); exit == 0 || out != "" || !strings.Contains(stderr, "unknown command") {
		t.Errorf("sh -c id: exit %d, out %q, stderr %q: want refused", exit, out, stderr)
	}
}

// TestLinesOutOfOrder: in newline-delimited mode a slow request does not
// hold back a fast one sent after it.
func TestLinesOutOfOrder(t *testing.T) {
	k := newKey(t, "bob")
	api := &echoAPI{release: make(chan struct{})}
	ts := startServer(t, api, k.line+"\n", Options{})
	c := ts.client(t, k)
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	in, _ := s.StdinPipe()
	outPipe, _ := s.StdoutPipe()
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	out := bufio.NewScanner(outPipe)
	next := func() Response {
		t.Helper()
		if !out.Scan() {
			t.Fatalf("no response: %v", out.Err())
		}
		var r Response
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("response %q: %v", out.Text(), err)
		}
		return r
	}
	fmt.Fprintln(in, `{"id": 1, "verb": "GET", "resource": "/slow"}`)
	fmt.Fprintln(in, `{"id": "two", "verb": "GET", "resource": "/repos"}`)
	if r := next(); string(r.RequestID) != `"two"` || r.Code != 200 {
		t.Fatalf("first answer = %s %d, want the fast request \"two\"", r.RequestID, r.Code)
	}
	fmt.Fprintln(in, `{"id": 3, "verb": "FETCH", "resource": "/repos"}`)
	if r := next(); string(r.RequestID) != "3" || r.Code != 400 {
		t.Fatalf("bad verb answered %s %d, want 3 400", r.RequestID, r.Code)
	}
	close(api.release)
	if r := next(); string(r.RequestID) != "1" || r.Code != 200 {
		t.Fatalf("slow answer = %s %d, want 1 200", r.RequestID, r.Code)
	}
	in.Close()
	if err := s.Wait(); err != nil {
		t.Errorf("session end: %v", err)
	}
}

func TestRoles(t *testing.T) {
	reader, admin := newKey(t, "carol"), newKey(t, "dave")
	ts := startServer(t, &echoAPI{}, reader.line+"\n"+admin.line+"\n", Options{Roles: map[string]Role{"dave": RoleAdmin}})
	for _, tt := range []struct {
		k    testKey
		want string
	}{{reader, `"role": "read"`}, {admin, `"role": "admin"`}} {
		out, _, _ := run(t, ts.client(t, tt.k), "GET /repos", "")
		if !strings.Contains(out, tt.want) {
			t.Errorf("output %s, want %s", out, tt.want)
		}
	}
}

func TestRefusals(t *testing.T) {
	known, stranger, faraway, nopty := newKey(t, "erin"), newKey(t, "mallory"), newKey(t, "frank"), newKey(t, "gina")
	authorized := known.line + "\n" +
		`from="10.9.9.9,192.0.2.0/24" ` + faraway.line + "\n" +
		`no-pty ` + nopty.line + "\n"
	ts := startServer(t, &echoAPI{}, authorized, Options{MaxConnsPerKey: 2})

	if _, err := ts.dial(t, gossh.PublicKeys(stranger.signer)); err == nil {
		t.Error("an unknown key logged in")
	}
	if _, err := ts.dial(t, gossh.Password("secret")); err == nil || !strings.Contains(err.Error(), "no supported methods remain") {
		t.Errorf("password login: %v, want refused with no supported methods", err)
	}
	if _, err := ts.dial(t, gossh.KeyboardInteractive(func(string, string, []string, []bool) ([]string, error) { return nil, nil })); err == nil {
		t.Error("keyboard-interactive login accepted")
	}
	if _, err := ts.dial(t, gossh.PublicKeys(faraway.signer)); err == nil {
		t.Error("a key logged in from outside its from=")
	}

	c := ts.client(t, known)
	if _, err := c.Dial("tcp", ts.addr); err == nil || !strings.Contains(err.Error(), "prohibited") {
		t.Errorf("port forward: %v, want administratively prohibited", err)
	}
	if _, err := c.Listen("tcp", "127.0.0.1:0"); err == nil {
		t.Error("remote port forward accepted")
	}
	// A shell with a terminal is refused with advice.
	s, _ := c.NewSession()
	if err := s.RequestPty("xterm", 24, 80, gossh.TerminalModes{}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	s.Stderr = &out
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	var exit *gossh.ExitError
	if err := s.Wait(); !errors.As(err, &exit) || exit.ExitStatus() == 0 || !strings.Contains(out.String(), "no interactive shell") {
		t.Errorf("shell: %v %q, want refused", err, out.String())
	}
	// Agent forwarding and subsystems are refused.
	s, _ = c.NewSession()
	if ok, err := s.SendRequest("auth-agent-req@openssh.com", true, nil); ok || err != nil {
		t.Errorf("agent forwarding: %v %v, want refused", ok, err)
	}
	if err := s.RequestSubsystem("sftp"); err == nil {
		t.Error("sftp subsystem accepted")
	}
	s.Close()
	// no-pty keys get no terminal.
	s, _ = ts.client(t, nopty).NewSession()
	if err := s.RequestPty("xterm", 24, 80, gossh.TerminalModes{}); err == nil {
		t.Error("a no-pty key got a terminal")
	}
	s.Close()

	// The per-key cap: erin has one connection open (c); a second is
	// served (a session opens once the server counted it), the third is
	// closed after the handshake.
	second, err := ts.client(t, known).NewSession()
	if err != nil {
		t.Fatalf("a second connection of a key capped at 2: %v", err)
	}
	defer second.Close()
	extra, err := ts.dial(t, gossh.PublicKeys(known.signer))
	if err == nil {
		_, err = extra.NewSession()
		extra.Close()
	}
	if err == nil {
		t.Error("a third connection of a key capped at 2 was served")
	}
}

func TestHandshakeAndIdleTimeout(t *testing.T) {
	k := newKey(t, "hal")
	ts := startServer(t, &echoAPI{}, k.line+"\n", Options{HandshakeTimeout: 2 * time.Second, IdleTimeout: 300 * time.Millisecond})
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.Copy(io.Discard, nc); err != nil {
		t.Errorf("a silent client was not disconnected: %v", err)
	}
	c := ts.client(t, k)
	waited := make(chan error, 1)
	go func() { waited <- c.Wait() }()
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
		t.Error("an idle connection stayed open")
	}
}

func TestHostKeyKept(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "ssh", "host_key")
	opts := Options{Handler: &echoAPI{}, HostKeyFile: file, AuthorizedKeysFile: filepath.Join(dir, "none")}
	a, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(file)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("host key file: %v, mode %v, want 0600", err, st.Mode())
	}
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.HostKey().Marshal(), b.HostKey().Marshal()) || a.HostKey().Type() != gossh.KeyAlgoED25519 {
		t.Error("the host key changed across starts, or is not Ed25519")
	}
	if err := os.WriteFile(opts.AuthorizedKeysFile, []byte("ssh-ed25519 AAAAnotbase64 x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(opts); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("a broken authorized_keys: %v, want an error naming line 1", err)
	}
}

func TestConcurrentSessions(t *testing.T) {
	k := newKey(t, "ivy")
	ts := startServer(t, &echoAPI{}, k.line+"\n", Options{})
	c := ts.client(t, k)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := c.NewSession()
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			out, err := s.Output(fmt.Sprintf("GET /repos/o/r%d", i))
			if err != nil || !strings.Contains(string(out), fmt.Sprintf("/api/v1/repos/o/r%d", i)) {
				errs <- fmt.Errorf("session %d: %v %s", i, err, out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// fixedAPI answers GETs from a table of paths, 404 otherwise.
type fixedAPI map[string]string

func (f fixedAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok := f[r.URL.RequestURI()]
	if !ok {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, `{"code":"not_found","message":"no %s"}`, r.URL.RequestURI())
		return
	}
	if strings.HasPrefix(body, "{") {
		w.Header().Set("Content-Type", "application/json")
	}
	fmt.Fprint(w, body)
}

func TestLeasesAndLogs(t *testing.T) {
	k := newKey(t, "jo")
	since := time.Now().Add(-90 * time.Second).UTC().Format(time.RFC3339)
	api := fixedAPI{
		"/api/v1/pools": `{"pools": [{"name": "dut", "order": "fifo", "size": 2, "free": 0, "in_use": 1, "disabled": 1,
			"resources": [{"id": "d1", "state": "leased", "lease": "L1", "holder": "ann@lab pytest", "since": "` + since + `"},
			              {"id": "d2", "state": "disabled", "disabled": true}],
			"queue": [{"holder": "ben@ci make hil", "position": 1, "since": "` + since + `", "wants": [{"pool": "dut", "count": 1, "labels": {"arch": "arm64"}}]}]}]}`,
		"/api/v1/repos":                         `{"repos": [{"owner": "o", "name": "r"}]}`,
		"/api/v1/repos/o/r/builds/7/jobs/3/log": "one \x1b[32mgreen\x1b[0m\ntwo\n",
		"/api/v1/repos/x/y/builds/7/jobs/3/log": "other\n",
	}
	ts := startServer(t, api, k.line+"\n", Options{})
	c := ts.client(t, k)

	out, stderr, exit := run(t, c, "leases", "")
	for _, want := range []string{
		"POOL", "dut   fifo   2     0     1       1         1",
		"dut/d1", "leased", "ann@lab pytest", "L1", "1m3",
		"dut/d2", "disabled",
		"QUEUE", "ben@ci make hil", "1 dut arch=arm64",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("leases output lacks %q:\n%s%s", want, out, stderr)
		}
	}
	if exit != 0 {
		t.Errorf("leases: exit %d", exit)
	}

	for _, tt := range []struct {
		cmd, out, errWant string
		exit              int
	}{
		{cmd: "logs 7/3", out: "one green\ntwo\n"},          // the only repository; no terminal: no colours
		{cmd: "logs x/y/7/3", out: "other\n"},               // named
		{cmd: "logs 7/3 --repo x/y", out: "other\n"},        // named by flag
		{cmd: "logs 8/3", errWant: `"code": 404`, exit: 4},  // the API's error, on stderr
		{cmd: "logs 7", errWant: "want BUILD/JOB", exit: 2}, // usage
		{cmd: "logs 7/x", errWant: "not a positive number", exit: 2},
	} {
		out, stderr, exit := run(t, c, tt.cmd, "")
		if out != tt.out || exit != tt.exit || !strings.Contains(stderr, tt.errWant) {
			t.Errorf("%s: out %q, stderr %q, exit %d; want out %q, stderr with %q, exit %d", tt.cmd, out, stderr, exit, tt.out, tt.errWant, tt.exit)
		}
	}
}
