package main

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/forgeci/forge"
)

// sshTestKey is a client key written as OpenSSH files, for Go's client
// and the ssh command.
type sshTestKey struct {
	signer gossh.Signer
	file   string // private key, 0600
	line   string // authorized_keys line without options
}

func newSSHTestKey(t testing.TB, dir, name string) sshTestKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := gossh.MarshalPrivateKey(priv, name)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return sshTestKey{signer: s, file: file, line: strings.TrimSpace(string(gossh.MarshalAuthorizedKey(s.PublicKey()))) + " " + name}
}

// sshAddrOf is the SSH address the server logged at start ("ssh
// listening" comes before "listening", which e2eStart waited for).
func sshAddrOf(t testing.TB, p *e2eServerProc) string {
	t.Helper()
	for _, line := range strings.Split(p.log(), "\n") {
		var rec struct {
			Msg     string
			SSHAddr string `json:"ssh_addr"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "ssh listening" {
			return rec.SSHAddr
		}
	}
	t.Fatalf("the server did not log its SSH address:\n%s", p.log())
	return ""
}

// sshEnv is a forge server with its SSH endpoint, and the client side.
type sshEnv struct {
	p          *e2eServerProc
	addr, port string
	hostKey    gossh.PublicKey
	knownHosts string
	haveSSH    bool
}

// ssh runs the ssh command as key with args (options, then the remote
// command), stdin as its input; it returns stdout, stderr, exit status.
func (e *sshEnv) ssh(t *testing.T, key sshTestKey, stdin string, args ...string) (string, string, int) {
	t.Helper()
	if !e.haveSSH {
		t.Skip("no ssh command (Debian's openssh-client)")
	}
	full := append([]string{"-F", "/dev/null", "-p", e.port, "-i", key.file, "-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + e.knownHosts, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=30", "-l", "forge"}, args...)
	cmd := exec.Command("ssh", full...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("ssh %v: %v", args, err)
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

func (e *sshEnv) dial(t *testing.T, auth gossh.AuthMethod) (*gossh.Client, error) {
	return gossh.Dial("tcp", e.addr, &gossh.ClientConfig{User: "forge", Auth: []gossh.AuthMethod{auth},
		HostKeyCallback: gossh.FixedHostKey(e.hostKey), Timeout: 30 * time.Second})
}

type sshResponse struct {
	RequestID json.RawMessage `json:"request_id"`
	Code      int             `json:"code"`
	Body      json.RawMessage `json:"body"`
}

func decodeSSHResponse(t *testing.T, out string) sshResponse {
	t.Helper()
	var r sshResponse
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("response %q: %v", out, err)
	}
	return r
}

// TestServerSSH is issue 13's acceptance: the API over SSH of the real
// forge server, with Go's client and the OpenSSH ssh command: calls,
// errors and exit statuses, a followed log, the newline-delimited mode
// answering out of order, and the refusals.
func TestServerSSH(t *testing.T) {
	_, err := exec.LookPath("ssh")
	haveSSH := err == nil
	if !haveSSH && os.Getenv("CI") == "true" {
		t.Fatal("CI=true but there is no ssh command: install Debian's openssh-client (.ci/run does)")
	}
	gate := filepath.Join(t.TempDir(), "gate")
	repo, sha := e2eRepo(t, "execute:\n  - echo start\n  - printf '\\033[31mred\\033[0m\\n'\n  - while [ ! -f "+gate+" ]; do sleep 0.05; done\n  - echo end\n")
	dir, data := t.TempDir(), t.TempDir()
	ops, viewer, remote, stranger := newSSHTestKey(t, dir, "ops"), newSSHTestKey(t, dir, "viewer"),
		newSSHTestKey(t, dir, "remote"), newSSHTestKey(t, dir, "stranger")
	keys := filepath.Join(dir, "authorized_keys")
	authorized := ops.line + "\n" + viewer.line + "\n" + `from="10.1.2.3" ` + remote.line + "\n"
	if err := os.WriteFile(keys, []byte(authorized), 0o600); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "forge.yml")
	if err := os.WriteFile(config, []byte("ssh:\n  roles:\n    ops: admin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := e2eStart(t, data, config, "FORGE_SSH_ADDR=127.0.0.1:0", "FORGE_SSH_AUTHORIZED_KEYS="+keys)
	e := &sshEnv{p: p, addr: sshAddrOf(t, p), haveSSH: haveSSH}
	e.port = e.addr[strings.LastIndex(e.addr, ":")+1:]
	hk, err := os.ReadFile(filepath.Join(data, "ssh", "host_ed25519_key"))
	if err != nil {
		t.Fatalf("the host key was not kept in the data directory: %v", err)
	}
	if st, _ := os.Stat(filepath.Join(data, "ssh", "host_ed25519_key")); st.Mode().Perm() != 0o600 {
		t.Errorf("host key mode %v, want 0600", st.Mode().Perm())
	}
	signer, err := gossh.ParsePrivateKey(hk)
	if err != nil {
		t.Fatal(err)
	}
	e.hostKey = signer.PublicKey()
	e.knownHosts = filepath.Join(dir, "known_hosts")
	line := fmt.Sprintf("[127.0.0.1]:%s %s", e.port, gossh.MarshalAuthorizedKey(e.hostKey))
	if err := os.WriteFile(e.knownHosts, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}

	// A build whose job runs until the gate opens.
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "ssh-1", e2ePrPayload(t, "opened", repo, sha, 2)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	b := e2eWaitBuild(t, p, 1, 60*time.Second, func(b *e2eBuildView) bool {
		return len(b.Jobs) > 0 && b.Jobs[0].Status == forge.StatusRunning
	})
	job := b.Jobs[0].ID
	const repoQ = "?repo=Codertocat/Hello-World"

	admin, err := e.dial(t, gossh.PublicKeys(ops.signer))
	if err != nil {
		t.Fatalf("dial as ops: %v", err)
	}
	defer admin.Close()

	t.Run("GoClientGET", func(t *testing.T) {
		s, _ := admin.NewSession()
		defer s.Close()
		out, err := s.Output("GET /builds" + repoQ)
		r := decodeSSHResponse(t, string(out))
		var list struct{ Builds []forge.Build }
		_ = json.Unmarshal(r.Body, &list)
		if err != nil || r.Code != 200 || len(list.Builds) != 1 || list.Builds[0].Number != 1 {
			t.Errorf("GET /builds: %v, code %d, %s", err, r.Code, r.Body)
		}
	})

	// The followed logs and the newline-delimited session start while the
	// job waits at the gate.
	type result struct {
		out  string
		exit int
		err  error
	}
	follow := func(pty bool) (started chan struct{}, done chan result) {
		started, done = make(chan struct{}), make(chan result, 1)
		s, err := admin.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		if pty {
			if err := s.RequestPty("xterm", 40, 120, gossh.TerminalModes{}); err != nil {
				t.Fatal(err)
			}
		}
		stdout, _ := s.StdoutPipe()
		if err := s.Start(fmt.Sprintf("logs Codertocat/Hello-World/1/%d --follow", job)); err != nil {
			t.Fatal(err)
		}
		go func() {
			defer s.Close()
			var buf bytes.Buffer
			sc := bufio.NewScanner(stdout)
			once := false
			for sc.Scan() {
				buf.WriteString(sc.Text() + "\n")
				if !once && strings.Contains(sc.Text(), "start") {
					once = true
					close(started)
				}
			}
			err := s.Wait()
			var exit *gossh.ExitError
			r := result{out: buf.String(), err: err}
			if errors.As(err, &exit) {
				r.exit, r.err = exit.ExitStatus(), nil
			}
			done <- r
		}()
		return started, done
	}
	plainStarted, plainDone := follow(false)
	ttyStarted, ttyDone := follow(true)

	var sshFollow *exec.Cmd
	var sshFollowOut bytes.Buffer
	var lines *exec.Cmd
	var linesIn io.WriteCloser
	var linesOut *bufio.Scanner
	if haveSSH {
		sshFollow = exec.Command("ssh", "-F", "/dev/null", "-p", e.port, "-i", viewer.file, "-o", "IdentitiesOnly=yes",
			"-o", "UserKnownHostsFile="+e.knownHosts, "-o", "BatchMode=yes", "forge@127.0.0.1", "logs", fmt.Sprintf("1/%d", job), "--follow")
		sshFollow.Stdout = &sshFollowOut
		if err := sshFollow.Start(); err != nil {
			t.Fatal(err)
		}
		lines = exec.Command("ssh", "-T", "-F", "/dev/null", "-p", e.port, "-i", ops.file, "-o", "IdentitiesOnly=yes",
			"-o", "UserKnownHostsFile="+e.knownHosts, "-o", "BatchMode=yes", "forge@127.0.0.1")
		linesIn, _ = lines.StdinPipe()
		pipe, _ := lines.StdoutPipe()
		lines.Stderr = os.Stderr
		linesOut = bufio.NewScanner(pipe)
		if err := lines.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = lines.Process.Kill(); _ = sshFollow.Process.Kill() }()
		// The slow request first (the log, followed until the job ends),
		// then a quick one: the quick one is answered first.
		fmt.Fprintf(linesIn, `{"id": "slow", "verb": "GET", "resource": "/builds/1/jobs/%d/log?repo=Codertocat/Hello-World&follow=true"}`+"\n", job)
		fmt.Fprintln(linesIn, `{"id": 2, "verb": "GET", "resource": "/repos"}`)
		if !linesOut.Scan() {
			t.Fatalf("newline-delimited session: no answer: %v", linesOut.Err())
		}
		if r := decodeSSHResponse(t, linesOut.Text()); string(r.RequestID) != "2" || r.Code != 200 || !strings.Contains(string(r.Body), "Hello-World") {
			t.Fatalf("first answer %s, want request 2 (GET /repos) while the log request still waits", linesOut.Text())
		}
	}

	t.Run("OpenSSHGET", func(t *testing.T) {
		out, stderr, exit := e.ssh(t, viewer, "", "127.0.0.1", "GET", "/builds/1"+repoQ)
		r := decodeSSHResponse(t, out)
		if exit != 0 || r.Code != 200 || !strings.Contains(string(r.Body), `"number": 1`) && !strings.Contains(string(r.Body), `"number":1`) {
			t.Errorf("GET /builds/1: exit %d, %s %s", exit, out, stderr)
		}
	})
	t.Run("ErrorExitStatus", func(t *testing.T) {
		out, _, exit := e.ssh(t, viewer, "", "127.0.0.1", "GET", "/builds/99"+repoQ)
		if r := decodeSSHResponse(t, out); exit != 4 || r.Code != 404 || !strings.Contains(string(r.Body), "not_found") {
			t.Errorf("GET /builds/99: exit %d (want 4), %s", exit, out)
		}
	})
	t.Run("StoreWithBody", func(t *testing.T) {
		out, stderr, exit := e.ssh(t, ops, `{"ref": "master"}`, "127.0.0.1", "STORE", "/builds"+repoQ)
		r := decodeSSHResponse(t, out)
		var nb forge.Build
		_ = json.Unmarshal(r.Body, &nb)
		if exit != 0 || r.Code != 201 || nb.Number != 2 || nb.Hook.SHA != sha {
			t.Errorf("STORE /builds: exit %d, %s %s: want 201 and build 2 of %s", exit, out, stderr, sha)
		}
	})
	t.Run("ReadOnlyKeyCannotCancel", func(t *testing.T) {
		out, _, exit := e.ssh(t, viewer, "", "127.0.0.1", "STORE", "/builds/1/cancel"+repoQ)
		if r := decodeSSHResponse(t, out); exit != 3 || r.Code != 403 {
			t.Errorf("a read-only key cancelling: exit %d, %s; want 403 and exit 3", exit, out)
		}
		if b := e2eWaitBuild(t, p, 1, 5*time.Second, func(*e2eBuildView) bool { return true }); b.Status != forge.StatusRunning {
			t.Errorf("build 1 is %s after a refused cancel", b.Status)
		}
	})
	t.Run("Refusals", func(t *testing.T) {
		if _, err := e.dial(t, gossh.PublicKeys(stranger.signer)); err == nil {
			t.Error("Go client: an unknown key logged in")
		}
		if _, err := e.dial(t, gossh.Password("forge")); err == nil {
			t.Error("Go client: a password logged in")
		}
		if !haveSSH {
			t.Skip("no ssh command")
		}
		for _, tt := range []struct {
			name string
			key  sshTestKey
			args []string
			exit int
			want string
		}{
			{"unknown key", stranger, []string{"127.0.0.1", "GET", "/repos"}, 255, "Permission denied (publickey)"},
			{"password", ops, []string{"-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive", "127.0.0.1", "GET", "/repos"}, 255, "Permission denied (publickey)"},
			{"outside from=", remote, []string{"127.0.0.1", "GET", "/repos"}, 255, "Permission denied (publickey)"},
			{"shell", ops, []string{"-tt", "127.0.0.1"}, 2, "no interactive shell"},
			{"a command of a shell", ops, []string{"127.0.0.1", "sh", "-c", "id"}, 2, "unknown command"},
			{"port forward", ops, []string{"-W", p.url[len("http://"):], "127.0.0.1"}, 255, "administratively prohibited"},
		} {
			out, stderr, exit := e.ssh(t, tt.key, "", tt.args...)
			if exit != tt.exit || !strings.Contains(out+stderr, tt.want) {
				t.Errorf("%s: exit %d (want %d), output %q %q, want %q", tt.name, exit, tt.exit, out, stderr, tt.want)
			}
		}
	})

	// The gate opens once every follower has the start of the log.
	for i, c := range []chan struct{}{plainStarted, ttyStarted} {
		d := []chan result{plainDone, ttyDone}[i]
		select {
		case <-c:
		case r := <-d:
			t.Fatalf("logs --follow (terminal %v) ended before the job: %+v", i == 1, r)
		case <-time.After(60 * time.Second):
			t.Fatalf("logs --follow (terminal %v) did not show the running job's first line; job %s", i == 1, e2eJobLog(t, p, 1, b.Jobs[0]))
		}
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ansi := regexp.MustCompile("\x1b\\[")
	for name, d := range map[string]chan result{"no terminal": plainDone, "terminal": ttyDone} {
		select {
		case r := <-d:
			if r.err != nil || r.exit != 0 || !strings.Contains(r.out, "end") {
				t.Errorf("logs --follow (%s): %v exit %d, %q: want the log to its end", name, r.err, r.exit, r.out)
			}
			if colour := ansi.MatchString(r.out); colour != (name == "terminal") {
				t.Errorf("logs --follow (%s): colour codes %v in %q", name, colour, r.out)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("logs --follow (%s) did not end with the job", name)
		}
	}
	if haveSSH {
		if err := sshFollow.Wait(); err != nil || !strings.Contains(sshFollowOut.String(), "start\nred\n") || !strings.HasSuffix(sshFollowOut.String(), "end\n") {
			t.Errorf("ssh logs --follow: %v, %q", err, sshFollowOut.String())
		}
		if !linesOut.Scan() {
			t.Fatalf("newline-delimited session: no answer to the log request: %v", linesOut.Err())
		}
		r := decodeSSHResponse(t, linesOut.Text())
		var text string
		_ = json.Unmarshal(r.Body, &text)
		if string(r.RequestID) != `"slow"` || r.Code != 200 || !strings.HasSuffix(text, "end\n") {
			t.Errorf("log request answered %s", linesOut.Text())
		}
		linesIn.Close()
		if err := lines.Wait(); err != nil {
			t.Errorf("newline-delimited session: %v", err)
		}
	}
	p.stop(t)
}
