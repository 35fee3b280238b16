package git

import (
	"bytes"
	"context"
	"io"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/forgeci/forge"
)

// Error is a failed git command: what ran (never with credentials) and
// the end of what git said.
type Error struct {
	Args   []string
	Stderr string
	Err    error
}

func (e *Error) Error() string {
	msg := "git " + strings.Join(e.Args, " ") + ": " + e.Err.Error()
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// notFound reports whether git said the thing asked for does not exist.
func (e *Error) notFound() bool {
	s := strings.ToLower(e.Stderr)
	for _, p := range []string{"couldn't find remote ref", "not our ref", "no such remote ref", "unadvertised object", "not a valid object", "remote error: upload-pack: not our ref", "repository not found", "does not appear to be a git repository"} {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

// killGrace is how long a cancelled git gets to clean up after SIGTERM.
const killGrace = 2 * time.Second

// maxStderr bounds what an error keeps of git's output.
const maxStderr = 2000

// run runs git in dir (or the current directory when dir is "") and
// returns its standard output.
func (g *Git) run(ctx context.Context, dir string, env []string, args ...string) (string, error) {
	var out bytes.Buffer
	err := g.runTo(ctx, dir, env, &out, args...)
	return out.String(), err
}

// runTo runs git writing its standard output to stdout. Errors are
// *Error wrapped in a forge error: EUNAVAILABLE for a remote that could
// not be reached or refused, ECANCELED when ctx ended, EINTERNAL else.
func (g *Git) runTo(ctx context.Context, dir string, env []string, stdout io.Writer, args ...string) error {
	return g.runWith(ctx, dir, env, nil, stdout, args...)
}

// runWith is runTo with stdin (nil for none) as git's standard input.
func (g *Git) runWith(ctx context.Context, dir string, env []string, stdin io.Reader, stdout io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, g.opts.Binary, args...)
	cmd.Dir = dir
	cmd.Stdin = stdin
	cmd.Env = append(append(gitEnv(), g.allowProtocol()), env...)
	cmd.Stdout = stdout
	var stderr bytes.Buffer
	cmd.Stderr = &limited{w: &stderr, n: 64 << 10}
	// git may start helpers (ssh, remote-https): stop them all on cancel.
	// SIGTERM first, because git removes its *.lock files on SIGTERM; a
	// SIGKILL in the middle of update-ref leaves a ref lock behind that
	// fails every later fetch of the mirror. SIGKILL follows after a grace.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		pgid := cmd.Process.Pid
		time.AfterFunc(killGrace, func() { syscall.Kill(-pgid, syscall.SIGKILL) })
		return syscall.Kill(-pgid, syscall.SIGTERM)
	}
	cmd.WaitDelay = killGrace + 3*time.Second
	if err := cmd.Run(); err != nil {
		ge := &Error{Args: redactArgs(args), Stderr: tail(redact(strings.TrimSpace(stderr.String())), maxStderr), Err: err}
		switch {
		case ctx.Err() != nil:
			return forge.WrapError(forge.ECANCELED, ge, "git cancelled")
		case len(args) > 0 && args[0] == "fetch" && !ge.notFound():
			return forge.WrapError(forge.EUNAVAILABLE, ge, "could not fetch from the repository")
		}
		return forge.WrapError(forge.EINTERNAL, ge, "git failed")
	}
	return nil
}

// gitEnv is the server's environment without anything that would point
// git elsewhere (GIT_DIR, GIT_WORK_TREE, ... from a hook or a shell) and
// with prompts and system configuration turned off.
func gitEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GIT_") {
			env = append(env, kv)
		}
	}
	return append(env,
		"GIT_TERMINAL_PROMPT=0",
		"GIT_ASKPASS=/bin/false",
		"SSH_ASKPASS=/bin/false",
		"GIT_SSH_COMMAND=ssh -o BatchMode=yes",
		"GIT_CONFIG_NOSYSTEM=1",
		"LC_ALL=C",
	)
}

// userinfo is compiled on first use, not at start-up: every forge command
// links this package, few redact a URL.
var userinfo = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@`)
})

// redact removes credentials written into URLs (https://user:pw@host).
func redact(s string) string { return userinfo().ReplaceAllString(s, "${1}***@") }

func redactArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if u, err := url.Parse(a); err == nil && u.User != nil {
			a = redact(a)
		}
		out[i] = a
	}
	return out
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// limited keeps the first n bytes written to it and drops the rest.
type limited struct {
	w io.Writer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
