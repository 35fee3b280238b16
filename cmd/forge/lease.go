package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/client/lease"
	"github.com/forgeci/forge/internal/guard"
)

// Exit statuses of forge lease besides CMD's own.
const (
	exitLeaseUnavailable      = 69  // the lease server cannot be reached (sysexits EX_UNAVAILABLE)
	exitLeaseLost             = 75  // the lease was lost while CMD ran (sysexits EX_TEMPFAIL)
	exitLeaseDenied           = 77  // the server refused our token, or wants one (sysexits EX_NOPERM)
	exitLeaseWait             = 124 // --wait passed before the grant (like timeout(1))
	exitLeaseCmdNotExecutable = 126 // CMD exists but cannot run (like a shell)
	exitLeaseCmdNotFound      = 127 // CMD not found (like a shell)
)

// defaultLeaseServer is where forge lease looks for the server when neither
// --server nor FORGE_SERVER says.
const defaultLeaseServer = "http://127.0.0.1:8080"

type leaseOptions struct {
	labels    []string
	wait      time.Duration
	server    string
	token     string
	holder    string
	killGrace time.Duration
	quiet     bool
	resume    time.Duration // the session grace asked for; 0: the server's
}

func newLeaseCmd() *cobra.Command {
	o := &leaseOptions{}
	cmd := &cobra.Command{
		Use:   "lease POOL[:N] [POOL[:N]...] [flags] -- CMD [ARGS...]",
		Short: "Hold test resources from a lease server while CMD runs",
		Long: `lease asks the forge server for N resources of each POOL (N defaults to 1),
all at once, waits its turn in the queue, then runs CMD with the granted
resources in its environment, and gives them back when CMD exits:

  FORGE_LEASE_<POOL>  the granted resource ids, comma-separated; the pool
                      name upper-cased with every character other than a
                      letter or digit as "_" (pool lab-dut.x: FORGE_LEASE_LAB_DUT_X)
  FORGE_LEASE_JSON    the server's whole "granted" message, with each
                      resource's attributes (host, serial, ...) and labels
  FORGE_LEASE_BROKEN  a file: when CMD finds its resources broken, it
                      writes why into it (echo "no boot" >"$FORGE_LEASE_BROKEN");
                      they are then released as broken, out of service
                      until their pool's health check passes or an
                      operator enables them

The lease lives as long as forge lease's session with the server: if forge
lease dies, however it dies, the server takes the resources back at once.
If the connection breaks (a network cut, a server restart), forge lease
reconnects and resumes its session within the session's grace (the
server's lease.grace, or --resume-grace), keeping its resources, and says so
on stderr. If that fails, or an operator revoked the lease, the resources
may already belong to someone else: CMD gets SIGTERM, SIGKILL after
--kill-grace, and forge lease exits 75. A server that does not know
sessions (protocol version 1) gives no grace: a broken connection loses
the lease.

While waiting, the queue position is shown on stderr ("waiting for dut:
position 2"). SIGINT, SIGTERM and SIGHUP are passed on to CMD, which runs in
its own process group (the terminal's foreground group when run from a
shell); whatever CMD leaves running in that group is stopped before the
resources are given back.

--label k=v selects resources by label in every pool; --label POOL:k=v in
one pool only. The server address comes from --server, else $FORGE_SERVER,
else ` + defaultLeaseServer + ` (https gives wss). A server whose reads are
private (api.private_reads) wants an API token: --token, else $FORGE_TOKEN
(create one with forge token create); it goes in the WebSocket handshake's
Authorization header.

Exit status:
  CMD's own status; 128+N when CMD was killed by signal N
  2    bad arguments, an unknown pool, or a request no pool can satisfy
  69   the lease server cannot be reached or is shutting down
  75   the lease was lost while CMD ran (CMD was stopped)
  77   the server wants a token, or refused the one given
  124  --wait passed before the resources were granted
  126  CMD cannot be executed (not executable, a directory)
  127  CMD not found (not on $PATH, or no such file)
  130  interrupted while waiting
  1    any other failure`,
		Example: `  forge lease dut -- pytest -x tests/hw
  forge lease dut:2 --label arch=arm64 -- ./flash.sh          # two arm64 devices
  forge lease dut ports:3 --label dut:arch=arm64 --wait 10m -- make hil
  FORGE_SERVER=https://ci.example.com forge lease dut -- sh -c 'ssh "$FORGE_LEASE_DUT" uname -a'`,
		Args: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			switch {
			case dash < 0:
				return usageError{errors.New(`missing "--" before the command: forge lease POOL[:N]... -- CMD [ARGS...]`)}
			case dash == 0:
				return usageError{errors.New("no pool given: forge lease POOL[:N]... -- CMD [ARGS...]")}
			case dash == len(args):
				return usageError{errors.New(`no command given after "--"`)}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			return runLease(cmd.Context(), o, args[:dash], args[dash:], cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.ValidArgsFunction = func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if leaseCompletingCommand(cmd, args) {
			return nil, cobra.ShellCompDirectiveDefault // CMD and its arguments
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
		defer cancel()
		names, err := leasePoolNames(ctx, leaseServerAddress(o.server), leaseToken(o.token))
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return names, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
	}
	f := cmd.Flags()
	f.StringArrayVarP(&o.labels, "label", "l", nil, "select resources with label `k=v` (every pool) or POOL:k=v (one pool); repeatable")
	f.DurationVar(&o.wait, "wait", 0, "give up when not granted within `DURATION` (exit 124; default: wait forever)")
	f.StringVar(&o.server, "server", "", "the forge server `URL` (default $FORGE_SERVER, else "+defaultLeaseServer+")")
	f.StringVar(&o.token, "token", "", "the API `TOKEN` the server wants when its reads are private (default $FORGE_TOKEN)")
	f.StringVar(&o.holder, "holder", "", "who holds the lease, as operators see it (default: user@host CMD)")
	f.DurationVar(&o.killGrace, "kill-grace", 10*time.Second, "after a lost lease, how long CMD has between SIGTERM and SIGKILL")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "print nothing of forge lease's own but errors")
	f.DurationVar(&o.resume, "resume-grace", 0, "how long the server keeps the lease for forge lease to reconnect after its connection breaks (default: the server's lease.grace; the server may cut it)")
	return cmd
}

// parseLeaseArgs turns POOL[:N] arguments and --label values into
// requests, in argument order.
func parseLeaseArgs(pools, labels []string) ([]lease.Request, error) {
	var reqs []lease.Request
	index := map[string]int{}
	for _, arg := range pools {
		name, count, hasCount := strings.Cut(arg, ":")
		if name == "" || strings.ContainsAny(name, " \t\n=,") {
			return nil, usageError{fmt.Errorf("bad pool %q: want POOL or POOL:N, e.g. dut or dut:2", arg)}
		}
		n := 1
		if hasCount {
			v, err := strconv.Atoi(count)
			if err != nil || v < 1 {
				return nil, usageError{fmt.Errorf("bad count in %q: want a whole number of at least 1, e.g. %s:2", arg, name)}
			}
			n = v
		}
		if _, dup := index[name]; dup {
			return nil, usageError{fmt.Errorf("pool %q given twice: ask for several with %s:N", name, name)}
		}
		index[name] = len(reqs)
		reqs = append(reqs, lease.Request{Pool: name, Count: n})
	}
	for _, l := range labels {
		target, kv := "", l
		if eq := strings.IndexByte(l, '='); eq >= 0 {
			if colon := strings.IndexByte(l[:eq], ':'); colon >= 0 {
				target, kv = l[:colon], l[colon+1:]
			}
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usageError{fmt.Errorf("bad --label %q: want k=v or POOL:k=v", l)}
		}
		for i := range reqs {
			if target != "" && reqs[i].Pool != target {
				continue
			}
			if reqs[i].Labels == nil {
				reqs[i].Labels = map[string]string{}
			}
			reqs[i].Labels[k] = v
		}
		if _, ok := index[target]; target != "" && !ok {
			return nil, usageError{fmt.Errorf("--label %q names pool %q, which is not asked for", l, target)}
		}
	}
	return reqs, nil
}

func runLease(ctx context.Context, o *leaseOptions, poolArgs, argv []string, stdin io.Reader, stdout, stderr io.Writer) error {
	reqs, err := parseLeaseArgs(poolArgs, o.labels)
	if err != nil {
		return err
	}
	if o.wait < 0 || o.killGrace < 0 || o.resume < 0 {
		return usageError{errors.New("--wait, --kill-grace and --resume-grace must not be negative")}
	}
	server := leaseServerAddress(o.server)
	if _, err := lease.WebSocketURL(server); err != nil {
		return usageError{err}
	}
	// Find CMD before taking anything: a typo must not cost a queue turn.
	path, err := findLeaseCommand(argv[0])
	if err != nil {
		return err
	}
	holder := o.holder
	if holder == "" {
		holder = lease.DefaultHolder(strings.Join(argv, " "))
	}
	say := func(format string, args ...any) {
		if !o.quiet {
			fmt.Fprintf(stderr, "forge lease: "+format+"\n", args...)
		}
	}

	copts := leaseClientOptions(leaseToken(o.token))
	copts.Resumable, copts.Grace = true, o.resume
	copts.Logf = func(format string, args ...any) { say(format, args...) }
	c, err := lease.Dial(ctx, server, copts)
	if err != nil {
		return leaseError(err, server)
	}
	defer c.Close()

	names := make([]string, len(reqs))
	for i, r := range reqs {
		names[i] = r.Pool
	}
	waitingFor := strings.Join(names, ", ")
	tty := leaseIsTerminal(stderr)
	shown := false
	opts := &lease.AcquireOptions{MaxWait: o.wait, Queued: func(pos int) {
		if o.quiet {
			return
		}
		if tty {
			fmt.Fprintf(stderr, "\r\033[Kforge lease: waiting for %s: position %d", waitingFor, pos)
			shown = true
			return
		}
		fmt.Fprintf(stderr, "forge lease: waiting for %s: position %d\n", waitingFor, pos)
	}}
	actx := ctx
	if o.wait > 0 {
		// The server enforces --wait; this is a backstop for one that does not.
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, o.wait+5*time.Second)
		defer cancel()
	}
	start := time.Now()
	l, err := c.Acquire(actx, holder, reqs, opts)
	if shown {
		fmt.Fprintln(stderr)
	}
	if err != nil {
		if forge.ErrorCode(err) == forge.ETIMEOUT && ctx.Err() == nil {
			return exitWith(exitLeaseWait, "no %s granted within --wait %s", waitingFor, o.wait)
		}
		return leaseError(err, server)
	}
	say("granted %s after %s (lease %s)", describeLeaseGrant(l), time.Since(start).Round(time.Millisecond), l.ID())

	// CMD may report the resources broken by writing why into the file
	// FORGE_LEASE_BROKEN names: they are then released as broken.
	brokenFile, err := leaseBrokenFile()
	if err != nil {
		return err
	}
	defer os.Remove(brokenFile)
	code, lost, err := runHolding(l, path, argv, []string{lease.EnvBroken + "=" + brokenFile}, stdin, stdout, stderr, o.killGrace, say)
	rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if reason := leaseBrokenReason(brokenFile); reason != "" && !lost {
		say("releasing %s as broken: %s", describeLeaseGrant(l), reason)
		l.ReleaseBroken(rctx, reason)
	} else {
		l.Release(rctx)
	}
	if err != nil {
		return err
	}
	if lost {
		return exitWith(exitLeaseLost, "lease %s on %s lost while %s ran (%s); %s was stopped",
			l.ID(), waitingFor, argv[0], forge.ErrorMessage(l.Err()), argv[0])
	}
	if code != 0 {
		return &exitError{code: code}
	}
	return nil
}

// leaseCompletingCommand reports whether shell completion is past the
// "--", at CMD or its arguments. Cobra's completion adds a "--" of its own
// and drops the user's, so the raw command line is consulted too.
func leaseCompletingCommand(cmd *cobra.Command, args []string) bool {
	if dash := cmd.ArgsLenAtDash(); dash >= 0 && dash < len(args) {
		return true
	}
	raw := os.Args
	return len(raw) > 2 && raw[1] == cobra.ShellCompRequestCmd && slices.Contains(raw[2:len(raw)-1], "--")
}

// findLeaseCommand finds CMD as a shell would, failing with the shell's
// statuses: 127 when there is no such command or file, 126 when it
// cannot be executed (no permission, a directory).
func findLeaseCommand(name string) (string, error) {
	path, err := exec.LookPath(name)
	switch {
	case err == nil:
		return path, nil
	case errors.Is(err, exec.ErrNotFound):
		return "", exitWith(exitLeaseCmdNotFound, "%s: command not found", name)
	case errors.Is(err, fs.ErrNotExist):
		return "", exitWith(exitLeaseCmdNotFound, "%s: no such file or directory", name)
	}
	if st, serr := os.Stat(name); serr == nil && st.IsDir() {
		return "", exitWith(exitLeaseCmdNotExecutable, "%s: is a directory", name)
	}
	var ee *exec.Error
	if errors.As(err, &ee) {
		err = ee.Err
	}
	return "", exitWith(exitLeaseCmdNotExecutable, "%s: cannot execute: %v", name, err)
}

// leaseToken is --token, else $FORGE_TOKEN; "" for none.
func leaseToken(flag string) string {
	if flag != "" {
		return flag
	}
	return os.Getenv("FORGE_TOKEN")
}

// leaseClientOptions sends token, if any, with the WebSocket handshake.
func leaseClientOptions(token string) *lease.Options {
	if token == "" {
		return &lease.Options{}
	}
	return &lease.Options{Header: http.Header{"Authorization": {"Bearer " + token}}}
}

// leaseServerAddress is --server, else $FORGE_SERVER, else the default.
func leaseServerAddress(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("FORGE_SERVER"); env != "" {
		return env
	}
	return defaultLeaseServer
}

// leasePoolNames lists the server's pools (GET /api/v1/pools), for shell
// completion.
func leasePoolNames(ctx context.Context, server, token string) ([]string, error) {
	ws, err := lease.WebSocketURL(server)
	if err != nil {
		return nil, err
	}
	u := strings.Replace(strings.TrimSuffix(ws, lease.Path)+"/api/v1/pools", "ws", "http", 1)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d", u, resp.StatusCode)
	}
	var body struct {
		Pools []struct {
			Name string `json:"name"`
		} `json:"pools"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&body); err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	names := make([]string, len(body.Pools))
	for i, p := range body.Pools {
		names[i] = p.Name
	}
	return names, nil
}

// describeLeaseGrant is "dut=dut1 ports=20000,20001".
func describeLeaseGrant(l *lease.Lease) string {
	var parts []string
	for pool := range l.Resources() {
		parts = append(parts, pool+"="+strings.Join(l.IDs(pool), ","))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// leaseError maps a client error to forge lease's exit statuses.
func leaseError(err error, server string) error {
	msg := forge.ErrorMessage(err)
	switch forge.ErrorCode(err) {
	case forge.EINVALID, forge.ENOTFOUND, forge.ETOOLARGE, forge.ECONFLICT:
		return exitWith(exitUsage, "%s", msg)
	case forge.EUNAUTHORIZED:
		return exitWith(exitLeaseDenied, "%s; set --token or FORGE_TOKEN (forge token create)", msg)
	case forge.EFORBIDDEN:
		return exitWith(exitLeaseDenied, "%s", msg)
	case forge.EUNAVAILABLE:
		return exitWith(exitLeaseUnavailable, "%s (is forge server running at %s? set --server or FORGE_SERVER)", errorText(err), server)
	case forge.ECANCELED:
		return exitWith(exitCanceled, "interrupted while waiting for the lease")
	case forge.ETIMEOUT:
		return exitWith(exitLeaseWait, "%s", msg)
	}
	return exitWith(exitFailed, "%s", errorText(err))
}

// leaseBrokenFile creates the empty file CMD writes to when it finds
// its resources broken.
func leaseBrokenFile() (string, error) {
	f, err := os.CreateTemp("", "forge-lease-broken-*")
	if err != nil {
		return "", forge.Errorf(forge.EINTERNAL, "cannot create the file for %s: %v", lease.EnvBroken, err)
	}
	f.Close()
	return f.Name(), nil
}

// leaseBrokenReason is what CMD wrote into the broken file (its first
// lease.MaxBrokenLength bytes, trimmed); "" when nothing.
func leaseBrokenReason(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	data, _ := io.ReadAll(io.LimitReader(f, lease.MaxBrokenLength))
	return strings.TrimSpace(strings.ToValidUTF8(string(data), ""))
}

// runHolding runs CMD while l is held. It returns CMD's exit status, and
// lost=true when the lease was lost and CMD stopped because of it.
func runHolding(l *lease.Lease, path string, argv, env []string, stdin io.Reader, stdout, stderr io.Writer,
	grace time.Duration, say func(string, ...any)) (code int, lost bool, err error) {
	cmd := exec.Command(path, argv[1:]...)
	cmd.Args = argv
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	cmd.Env = append(os.Environ(), env...)
	for k, v := range l.Env() {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	// CMD gets its own process group so that a signal reaches its whole
	// tree; on a terminal that group becomes the foreground one, so Ctrl-C
	// and reading the terminal work as without forge lease. If forge lease
	// itself dies, CMD gets SIGTERM (Pdeathsig): it no longer holds the
	// resources.
	cmd.SysProcAttr = leaseSysProcAttr()
	restore := func() {}
	if fd, ok := leaseForegroundTTY(stdin); ok {
		cmd.SysProcAttr.Foreground = true
		cmd.SysProcAttr.Ctty = fd
		restore = func() { leaseReclaimTerminal(fd) }
	}

	// Orphans of CMD (a daemon it started) become our children, so that
	// stopLeaseGroup can reap them instead of leaving zombies to a PID 1 that
	// may never wait for them.
	becomeSubreaper()

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	// Pdeathsig fires when the thread that started the child exits, so the
	// starting goroutine keeps its thread locked until CMD is gone.
	started := make(chan error, 1)
	exited := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			runtime.UnlockOSThread()
			return
		}
		started <- nil
		exited <- cmd.Wait()
		// The thread stays locked and is discarded with this goroutine.
	}()
	if err := <-started; err != nil {
		restore()
		if errors.Is(err, fs.ErrNotExist) { // a script whose interpreter is missing
			return 0, false, exitWith(exitLeaseCmdNotFound, "cannot start %s: %v", argv[0], err)
		}
		return 0, false, exitWith(exitLeaseCmdNotExecutable, "cannot start %s: %v", argv[0], err)
	}
	pgid := cmd.Process.Pid
	// Pdeathsig reaches CMD only, not what CMD started; the guard stops
	// the whole group should forge lease die without cleaning up: killed
	// with SIGKILL, the server's lease is released at once, so whatever
	// CMD started must not go on using the resources. Without a guard,
	// CMD still runs, with Pdeathsig only.
	g := guard.New()
	if err := g.Watch(pgid, grace); err != nil {
		say("forge lease: no guard for CMD's processes: %v", err)
	}
	defer g.Close()

	var waitErr error
	var killTimer <-chan time.Time
	lostC := l.Lost()
loop:
	for {
		select {
		case waitErr = <-exited:
			break loop
		case s := <-sigs:
			syscall.Kill(-pgid, s.(syscall.Signal))
		case <-lostC:
			lostC = nil
			lost = true
			restore()
			fmt.Fprintf(stderr, "forge lease: lost the lease (%s): the resources may already belong to someone else; stopping %s (SIGTERM, SIGKILL after %s)\n",
				forge.ErrorMessage(l.Err()), argv[0], grace)
			syscall.Kill(-pgid, syscall.SIGTERM)
			killTimer = time.After(grace)
		case <-killTimer:
			killTimer = nil
			syscall.Kill(-pgid, syscall.SIGKILL)
		}
	}
	restore()
	stopLeaseGroup(pgid, grace)
	g.Release(pgid)
	return leaseExitCode(cmd.ProcessState, waitErr), lost, nil
}

// stopLeaseGroup ends whatever CMD left running in its process group before
// the resources go back: SIGTERM, then SIGKILL after grace. The orphans
// forge lease inherited as subreaper are reaped.
func stopLeaseGroup(pgid int, grace time.Duration) {
	reapLeaseOrphans()
	guard.Stop(pgid, grace)
	reapLeaseOrphans()
}

// reapLeaseOrphans reaps the orphans forge lease inherited as subreaper.
// CMD itself was already waited for, and the guard is waited for by its
// Guard, so nothing else of ours is reaped here (were the guard reaped,
// its Guard would simply see it gone).
func reapLeaseOrphans() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

// leaseExitCode is CMD's status as a shell reports it.
func leaseExitCode(ps *os.ProcessState, err error) int {
	if ps == nil {
		if err != nil {
			return exitFailed
		}
		return exitOK
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

func leaseIsTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// leaseForegroundTTY reports stdin's descriptor when it is a terminal whose
// foreground process group is ours, i.e. forge lease runs in the
// foreground of an interactive shell.
func leaseForegroundTTY(stdin io.Reader) (int, bool) {
	f, ok := stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return 0, false
	}
	fd := int(f.Fd())
	pg, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP)
	if err != nil || pg != unix.Getpgrp() {
		return 0, false
	}
	return fd, true
}

// leaseReclaimTerminal makes forge lease's process group the terminal's
// foreground group again after CMD's. A background group gets SIGTTOU for
// that, so it is ignored for the call.
func leaseReclaimTerminal(fd int) {
	signal.Ignore(syscall.SIGTTOU)
	defer signal.Reset(syscall.SIGTTOU)
	_ = unix.IoctlSetPointerInt(fd, unix.TIOCSPGRP, unix.Getpgrp())
}

// leaseServerValue is forge exec's --lease-server flag: setting it to a
// server address makes *target a Leaser for that server, so that jobs with
// a resources: key acquire their leases there (one connection per job,
// held while the job runs), with $FORGE_TOKEN as the API token if set.
type leaseServerValue struct {
	url    string
	target *forge.Leaser
}

// newLeaseServerValue returns the flag value that sets *target.
func newLeaseServerValue(target *forge.Leaser) *leaseServerValue {
	return &leaseServerValue{target: target}
}

func (v *leaseServerValue) String() string { return v.url }

// Type names the value in --help.
func (v *leaseServerValue) Type() string { return "URL" }

// Set checks the address and makes the Leaser; a bad address is a usage
// error when the flags are parsed.
func (v *leaseServerValue) Set(s string) error {
	lr, err := lease.NewLeaser(s, leaseClientOptions(os.Getenv("FORGE_TOKEN")))
	if err != nil {
		return err
	}
	v.url = s
	*v.target = lr
	return nil
}
