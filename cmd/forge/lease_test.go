package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/client/lease"
	ilease "github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/lease/leasehttp"
	"github.com/forgeci/forge/internal/testwait"
)

// leaseBinaryOnce builds the forge binary once for every test that drives
// it as a user would.
var leaseBinaryOnce struct {
	sync.Once
	path string
	err  error
	out  []byte
}

func leaseForgeBinary(t testing.TB) string {
	t.Helper()
	leaseBinaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "forge-lease-test")
		if err != nil {
			leaseBinaryOnce.err = err
			return
		}
		leaseBinaryOnce.path = filepath.Join(dir, "forge")
		leaseBinaryOnce.out, leaseBinaryOnce.err = exec.Command("go", "build", "-o", leaseBinaryOnce.path, ".").CombinedOutput()
	})
	if leaseBinaryOnce.err != nil {
		t.Fatalf("go build: %v\n%s", leaseBinaryOnce.err, leaseBinaryOnce.out)
	}
	return leaseBinaryOnce.path
}

// leaseServer is the real lease server (internal/lease/leasehttp) on loopback.
type leaseServer struct {
	URL string
	m   *ilease.Memory
	s   *leasehttp.Server
}

func newLeaseServer(t testing.TB, pools ...*forge.Pool) *leaseServer {
	t.Helper()
	m, err := ilease.NewMemory(pools, ilease.MemoryOptions{PositionInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatalf("NewMemory: %v", err)
	}
	s := leasehttp.NewServer(m, leasehttp.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		hs.Close()
		m.Close()
	})
	return &leaseServer{URL: hs.URL, m: m, s: s}
}

func leasePool(name string, ids ...string) *forge.Pool {
	p := &forge.Pool{Name: name, Order: "fifo"}
	for i, id := range ids {
		p.Resources = append(p.Resources, &forge.Resource{ID: id, Attributes: map[string]string{"host": "10.0.0." + strconv.Itoa(5+i)}})
	}
	return p
}

// leases returns the leases of pool in force, by resource id.
func (s *leaseServer) leases(t testing.TB, pool string) map[string]string {
	t.Helper()
	p, err := s.m.Pool(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range p.Resources {
		if r.Lease != "" {
			out[r.ID] = r.Lease
		}
	}
	return out
}

func (s *leaseServer) queueLen(t testing.TB, pool string) int {
	t.Helper()
	p, err := s.m.Pool(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	return len(p.Queue)
}

// leaseBuffer is a bytes.Buffer safe to read while a process writes it.
type leaseBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *leaseBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *leaseBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// leaseProc is a running forge lease.
type leaseProc struct {
	cmd            *exec.Cmd
	stdout, stderr leaseBuffer
	done           chan struct{}
	code           int
}

func startLeaseForge(t testing.TB, env []string, args ...string) *leaseProc {
	t.Helper()
	p := &leaseProc{done: make(chan struct{})}
	p.cmd = exec.Command(leaseForgeBinary(t), args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		p.code = leaseExitCode(p.cmd.ProcessState, nil)
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *leaseProc) wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	timeout = testwait.Scale(max(timeout, testwait.Patience)) // as leaseWaitFor: a bound, not a measurement
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		t.Fatalf("forge %v still running after %v\nstdout: %s\nstderr: %s", p.cmd.Args[1:], timeout, p.stdout.String(), p.stderr.String())
		return -1
	}
}

// leaseWaitFor polls cond until it holds. timeout is what that takes at
// most on a quiet machine; it fails after testwait.Patience.
func leaseWaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testwait.Within(t, max(timeout, testwait.Patience), what, cond)
}

// leaseProcessGone reports whether pid has ended: no such process, or a zombie
// nobody reaped (PID 1 of a container may never reap orphans).
func leaseProcessGone(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name.
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z'
	}
	return false
}

func TestParseLeaseArgs(t *testing.T) {
	tests := []struct {
		pools, labels []string
		want          []lease.Request
		err           string
	}{
		{[]string{"dut"}, nil, []lease.Request{{Pool: "dut", Count: 1}}, ""},
		{[]string{"dut:2", "ports:10"}, nil, []lease.Request{{Pool: "dut", Count: 2}, {Pool: "ports", Count: 10}}, ""},
		{[]string{"dut", "ports"}, []string{"arch=arm64"}, []lease.Request{
			{Pool: "dut", Count: 1, Labels: map[string]string{"arch": "arm64"}},
			{Pool: "ports", Count: 1, Labels: map[string]string{"arch": "arm64"}}}, ""},
		{[]string{"dut", "ports"}, []string{"dut:arch=arm64", "zone=a=b"}, []lease.Request{
			{Pool: "dut", Count: 1, Labels: map[string]string{"arch": "arm64", "zone": "a=b"}},
			{Pool: "ports", Count: 1, Labels: map[string]string{"zone": "a=b"}}}, ""},
		{[]string{"lab-dut.x:1"}, nil, []lease.Request{{Pool: "lab-dut.x", Count: 1}}, ""},
		{[]string{"dut:0"}, nil, nil, `bad count in "dut:0"`},
		{[]string{"dut:x"}, nil, nil, `bad count in "dut:x"`},
		{[]string{"dut:-1"}, nil, nil, "bad count"},
		{[]string{":2"}, nil, nil, `bad pool ":2"`},
		{[]string{"a=b"}, nil, nil, `bad pool "a=b"`},
		{[]string{"dut", "dut:2"}, nil, nil, `pool "dut" given twice`},
		{[]string{"dut"}, []string{"arch"}, nil, `bad --label "arch"`},
		{[]string{"dut"}, []string{"=x"}, nil, `bad --label "=x"`},
		{[]string{"dut"}, []string{"ports:a=b"}, nil, `names pool "ports", which is not asked for`},
	}
	for _, tt := range tests {
		got, err := parseLeaseArgs(tt.pools, tt.labels)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) || !isUsageError(err) {
				t.Errorf("parseLeaseArgs(%v, %v) error = %v, want a usage error containing %q", tt.pools, tt.labels, err, tt.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseLeaseArgs(%v, %v) = %+v, %v; want %+v", tt.pools, tt.labels, got, err, tt.want)
		}
	}
}

// TestLeaseTwoHolders is the acceptance of issue 3 with two shells: the
// second waits, shows its position, and starts when the first finishes.
func TestLeaseTwoHolders(t *testing.T) {
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	dir := t.TempDir()
	env := []string{"FORGE_SERVER=" + srv.URL, "DIR=" + dir}
	first := startLeaseForge(t, env, "lease", "dut", "--", "sh", "-c", `echo "first has $FORGE_LEASE_DUT"; sleep 0.5; touch "$DIR/first-done"`)
	leaseWaitFor(t, 5*time.Second, "the first to hold dut1", func() bool { return srv.leases(t, "dut")["dut1"] != "" })
	second := startLeaseForge(t, env, "lease", "dut", "--", "sh", "-c", `test -f "$DIR/first-done" && echo "second has $FORGE_LEASE_DUT after the first"`)

	if code := first.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("first exited %d: %s", code, first.stderr.String())
	}
	if code := second.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("second exited %d; stdout %q stderr %q", code, second.stdout.String(), second.stderr.String())
	}
	if got, want := first.stdout.String(), "first has dut1\n"; got != want {
		t.Errorf("first printed %q, want %q", got, want)
	}
	if got, want := second.stdout.String(), "second has dut1 after the first\n"; got != want {
		t.Errorf("second printed %q, want %q", got, want)
	}
	if got := second.stderr.String(); !strings.Contains(got, "waiting for dut: position 1") {
		t.Errorf("second's stderr %q does not show its queue position", got)
	}
	if got := srv.leases(t, "dut"); len(got) != 0 {
		t.Errorf("leases left after both exited: %v", got)
	}
}

// TestLeaseSIGKILLHandsOver: killing the holder with SIGKILL starts the
// waiter at once, and the holder's CMD does not keep running.
func TestLeaseSIGKILLHandsOver(t *testing.T) {
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	dir := t.TempDir()
	env := []string{"FORGE_SERVER=" + srv.URL, "DIR=" + dir}
	first := startLeaseForge(t, env, "lease", "dut", "--", "sh", "-c", `echo $$ > "$DIR/first.pid"; exec sleep 60`)
	leaseWaitFor(t, 5*time.Second, "the first's CMD to start", func() bool { _, err := os.Stat(filepath.Join(dir, "first.pid")); return err == nil })
	second := startLeaseForge(t, env, "lease", "dut", "--", "sh", "-c", `touch "$DIR/second-started"`)
	leaseWaitFor(t, 5*time.Second, "the second to queue", func() bool { return srv.queueLen(t, "dut") == 1 })

	killed := time.Now()
	first.cmd.Process.Signal(syscall.SIGKILL)
	leaseWaitFor(t, 2*time.Second, "the second's CMD to start", func() bool {
		_, err := os.Stat(filepath.Join(dir, "second-started"))
		return err == nil
	})
	t.Logf("second started %v after SIGKILL of the first (includes process start-up)", time.Since(killed))
	if code := second.wait(t, 5*time.Second); code != 0 {
		t.Errorf("second exited %d: %s", code, second.stderr.String())
	}
	data, _ := os.ReadFile(filepath.Join(dir, "first.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	leaseWaitFor(t, 2*time.Second, "the killed holder's CMD to end", func() bool {
		return pid > 0 && leaseProcessGone(pid)
	})
}

// TestLeaseSIGKILLStopsCMDTree: when forge lease is killed with SIGKILL,
// the lease goes back at once, so what CMD started (not only CMD, which
// Pdeathsig reaches) must stop too: the guard process sees to it.
func TestLeaseSIGKILLStopsCMDTree(t *testing.T) {
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	dir := t.TempDir()
	env := []string{"FORGE_SERVER=" + srv.URL, "DIR=" + dir}
	p := startLeaseForge(t, env, "lease", "dut", "--kill-grace", "1s", "--", "sh", "-c",
		`sleep 300 & echo $! > "$DIR/bg.pid"; wait`)
	bgFile := filepath.Join(dir, "bg.pid")
	leaseWaitFor(t, 5*time.Second, "CMD's background child to start", func() bool {
		data, err := os.ReadFile(bgFile)
		return err == nil && strings.HasSuffix(string(data), "\n")
	})
	data, _ := os.ReadFile(bgFile)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if pid <= 0 {
		t.Fatalf("no pid recorded: %q", data)
	}
	defer syscall.Kill(pid, syscall.SIGKILL)
	p.cmd.Process.Signal(syscall.SIGKILL)
	// forge lease's output pipes close when the guard has ended the
	// grandchild that shares them: a minute is room for a loaded
	// machine, and far below the sleep's 300s.
	p.wait(t, time.Minute)
	leaseWaitFor(t, 5*time.Second, "the killed holder's grandchild to end", func() bool { return leaseProcessGone(pid) })
}

func TestLeaseLostWhileRunning(t *testing.T) {
	tests := []struct {
		name    string
		script  string
		lose    func(t *testing.T, srv *leaseServer, id string)
		grace   string
		minTime time.Duration
		stdout  string
		reason  string
	}{
		{
			name:   "revoked, CMD stops on SIGTERM",
			script: `trap 'echo got TERM; exit 3' TERM; echo started; while :; do sleep 0.02; done`,
			lose: func(t *testing.T, srv *leaseServer, id string) {
				if err := srv.m.Revoke(context.Background(), id, "maintenance"); err != nil {
					t.Fatal(err)
				}
			},
			grace: "5s", stdout: "started\ngot TERM\n", reason: "maintenance",
		},
		{
			name:   "server shut down, CMD ignores SIGTERM",
			script: `trap 'echo ignoring TERM' TERM; echo started; while :; do sleep 0.02; done`,
			lose: func(t *testing.T, srv *leaseServer, _ string) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				srv.s.Shutdown(ctx)
			},
			grace: "300ms", minTime: 300 * time.Millisecond, stdout: "started\nignoring TERM\n", reason: "lease server",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newLeaseServer(t, leasePool("dut", "dut1"))
			p := startLeaseForge(t, []string{"FORGE_SERVER=" + srv.URL}, "lease", "dut", "--kill-grace", tt.grace, "--", "sh", "-c", tt.script)
			leaseWaitFor(t, 5*time.Second, "CMD to start", func() bool { return strings.Contains(p.stdout.String(), "started") })
			start := time.Now()
			tt.lose(t, srv, srv.leases(t, "dut")["dut1"])
			code := p.wait(t, 10*time.Second)
			if code != exitLeaseLost {
				t.Errorf("exit status %d, want %d", code, exitLeaseLost)
			}
			if d := time.Since(start); d < tt.minTime {
				t.Errorf("exited %v after the loss, before the %v grace", d, tt.minTime)
			}
			if got := p.stdout.String(); got != tt.stdout {
				t.Errorf("stdout %q, want %q", got, tt.stdout)
			}
			stderr := p.stderr.String()
			for _, want := range []string{"lost the lease", "may already belong to someone else", tt.reason} {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr %q lacks %q", stderr, want)
				}
			}
		})
	}
}

func TestLeaseExitStatusAndEnv(t *testing.T) {
	srv := newLeaseServer(t, leasePool("lab-dut.x", "d1", "d2", "d3"))
	env := []string{"FORGE_SERVER=" + srv.URL}
	tests := []struct {
		script string
		code   int
	}{
		{`exit 0`, 0},
		{`exit 7`, 7},
		{`kill -TERM $$`, 128 + int(syscall.SIGTERM)},
		{`test "$FORGE_LEASE_LAB_DUT_X" = d1,d2`, 0},
	}
	for _, tt := range tests {
		p := startLeaseForge(t, env, "lease", "lab-dut.x:2", "--", "sh", "-c", tt.script)
		if code := p.wait(t, 10*time.Second); code != tt.code {
			t.Errorf("forge lease -- sh -c %q exited %d, want %d; stderr %q", tt.script, code, tt.code, p.stderr.String())
		}
	}
	p := startLeaseForge(t, env, "lease", "-q", "lab-dut.x:3", "--", "sh", "-c", `printf %s "$FORGE_LEASE_JSON"`)
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exit %d: %s", code, p.stderr.String())
	}
	var m lease.Message
	if err := json.Unmarshal([]byte(p.stdout.String()), &m); err != nil {
		t.Fatalf("FORGE_LEASE_JSON %q: %v", p.stdout.String(), err)
	}
	if m.Type != "granted" || len(m.Resources["lab-dut.x"]) != 3 || m.Resources["lab-dut.x"][0].Attributes["host"] != "10.0.0.5" {
		t.Errorf("FORGE_LEASE_JSON = %+v, want the grant of three devices with attributes", m)
	}
	if got := p.stderr.String(); got != "" {
		t.Errorf("-q printed %q", got)
	}
	if got := srv.leases(t, "lab-dut.x"); len(got) != 0 {
		t.Errorf("leases left: %v", got)
	}
}

func TestLeaseForwardsSignals(t *testing.T) {
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		p := startLeaseForge(t, []string{"FORGE_SERVER=" + srv.URL}, "lease", "dut", "--", "sh", "-c",
			`trap 'echo got signal; exit 5' INT TERM; echo started; while :; do sleep 0.02; done`)
		leaseWaitFor(t, 5*time.Second, "CMD to start", func() bool { return strings.Contains(p.stdout.String(), "started") })
		p.cmd.Process.Signal(sig)
		if code := p.wait(t, 5*time.Second); code != 5 {
			t.Errorf("%v: exit %d, want CMD's 5; stderr %q", sig, code, p.stderr.String())
		}
		if !strings.Contains(p.stdout.String(), "got signal") {
			t.Errorf("%v: CMD did not get the signal: %q", sig, p.stdout.String())
		}
		leaseWaitFor(t, 2*time.Second, "the release", func() bool { return len(srv.leases(t, "dut")) == 0 })
	}
}

func TestLeaseLeftoversAreStopped(t *testing.T) {
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	dir := t.TempDir()
	p := startLeaseForge(t, []string{"FORGE_SERVER=" + srv.URL, "DIR=" + dir}, "lease", "dut", "--kill-grace", "1s", "--", "sh", "-c",
		`sleep 60 & echo $! > "$DIR/bg.pid"`)
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exit %d: %s", code, p.stderr.String())
	}
	data, _ := os.ReadFile(filepath.Join(dir, "bg.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if pid <= 0 {
		t.Fatalf("no pid recorded: %q", data)
	}
	if !leaseProcessGone(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("CMD's background child %d still runs after forge lease gave the device back", pid)
	}
}

func TestLeaseErrors(t *testing.T) {
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	holder := startLeaseForge(t, []string{"FORGE_SERVER=" + srv.URL}, "lease", "dut", "--", "sleep", "60")
	leaseWaitFor(t, 5*time.Second, "the holder", func() bool { return len(srv.leases(t, "dut")) == 1 })
	unreachable := "http://127.0.0.1:1"
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-executable")
	os.WriteFile(notExec, []byte("#!/bin/sh\ntrue\n"), 0o644)
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"unknown pool", []string{"lease", "--server", srv.URL, "nope", "--", "true"}, exitUsage, `unknown pool "nope"`},
		{"more than the pool has", []string{"lease", "--server", srv.URL, "dut:2", "--", "true"}, exitUsage, "can never grant 2"},
		{"bad pool spec", []string{"lease", "dut:two", "--", "true"}, exitUsage, `bad count in "dut:two"`},
		{"no dash", []string{"lease", "dut", "true"}, exitUsage, `missing "--"`},
		{"no command", []string{"lease", "dut", "--"}, exitUsage, "no command"},
		{"no pool", []string{"lease", "--", "true"}, exitUsage, "no pool"},
		{"bad server", []string{"lease", "--server", "ftp://x", "dut", "--", "true"}, exitUsage, "scheme"},
		{"unreachable", []string{"lease", "--server", unreachable, "dut", "--", "true"}, exitLeaseUnavailable, "cannot reach the lease server at " + unreachable},
		{"wait passes", []string{"lease", "--server", srv.URL, "--wait", "200ms", "dut", "--", "true"}, exitLeaseWait, "no dut granted within --wait 200ms"},
		{"command not found", []string{"lease", "--server", srv.URL, "dut", "--", "no-such-command-xyz"}, exitLeaseCmdNotFound, "no-such-command-xyz: command not found"},
		{"no such file", []string{"lease", "--server", srv.URL, "dut", "--", "/nonexistent"}, exitLeaseCmdNotFound, "/nonexistent: no such file or directory"},
		{"not executable", []string{"lease", "--server", srv.URL, "dut", "--", notExec}, exitLeaseCmdNotExecutable, notExec + ": cannot execute: permission denied"},
		{"a directory", []string{"lease", "--server", srv.URL, "dut", "--", dir}, exitLeaseCmdNotExecutable, dir + ": is a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startLeaseForge(t, nil, tt.args...)
			if code := p.wait(t, 10*time.Second); code != tt.code {
				t.Errorf("exit %d, want %d; stderr %q", code, tt.code, p.stderr.String())
			}
			if got := p.stderr.String(); !strings.Contains(got, tt.msg) {
				t.Errorf("stderr %q lacks %q", got, tt.msg)
			}
		})
	}
	if holder.cmd.ProcessState != nil {
		t.Errorf("the holder ended early: %s", holder.stderr.String())
	}
	if got := srv.queueLen(t, "dut"); got != 0 {
		t.Errorf("%d requests left in the queue", got)
	}
}

// A script whose interpreter is missing is found, but cannot start: the
// shell's 127, and the resources go back.
func TestLeaseMissingInterpreter(t *testing.T) {
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	script := filepath.Join(t.TempDir(), "bad-interpreter")
	if err := os.WriteFile(script, []byte("#!/no/such/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := startLeaseForge(t, nil, "lease", "--server", srv.URL, "dut", "--", script)
	if code := p.wait(t, 10*time.Second); code != exitLeaseCmdNotFound {
		t.Errorf("exit %d, want %d; stderr %q", code, exitLeaseCmdNotFound, p.stderr.String())
	}
	if got := p.stderr.String(); !strings.Contains(got, "cannot start "+script) {
		t.Errorf("stderr %q does not say %s cannot start", got, script)
	}
	leaseWaitFor(t, 5*time.Second, "the lease to end", func() bool { return len(srv.leases(t, "dut")) == 0 })
}

func TestLeaseCompletesPoolNames(t *testing.T) {
	srv := newLeaseServer(t, leasePool("dut", "dut1"), leasePool("lab-ports", "p1"))
	tests := []struct {
		args []string
		want []string
		not  []string
	}{
		{[]string{"__complete", "lease", "--server", srv.URL, ""}, []string{"dut", "lab-ports"}, nil},
		{[]string{"__complete", "lease", "--server", srv.URL, "dut", ""}, []string{"lab-ports"}, nil},
		{[]string{"__complete", "lease", "--server", srv.URL, "dut", "--", ""}, nil, []string{"lab-ports"}},
		{[]string{"__complete", "lease", "--server", srv.URL, "dut", "--", "sh", ""}, nil, []string{"lab-ports"}},
		{[]string{"__complete", "lease", "--server", "http://127.0.0.1:1", ""}, nil, []string{"dut"}},
	}
	for _, tt := range tests {
		out, _ := exec.Command(leaseForgeBinary(t), tt.args...).Output()
		lines := strings.Split(string(out), "\n")
		for _, w := range tt.want {
			if !slices.Contains(lines, w) {
				t.Errorf("forge %v: completions %q lack %q", tt.args, lines, w)
			}
		}
		for _, n := range tt.not {
			if slices.Contains(lines, n) {
				t.Errorf("forge %v: completions %q include %q", tt.args, lines, n)
			}
		}
	}
}

// TestLeaseServerGoesAwayWhileWaiting: a server shutting down while
// forge lease waits ends it with 69 and a message, CMD never run.
func TestLeaseServerGoesAwayWhileWaiting(t *testing.T) {
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	dir := t.TempDir()
	startLeaseForge(t, []string{"FORGE_SERVER=" + srv.URL}, "lease", "dut", "--", "sleep", "60")
	leaseWaitFor(t, 10*time.Second, "the holder", func() bool { return len(srv.leases(t, "dut")) == 1 })
	p := startLeaseForge(t, []string{"FORGE_SERVER=" + srv.URL}, "lease", "dut", "--", "touch", dir+"/ran")
	leaseWaitFor(t, 10*time.Second, "the waiter to queue", func() bool { return srv.queueLen(t, "dut") == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.s.Shutdown(ctx) // up to 5s: the holder keeps its connection
	if code := p.wait(t, time.Minute); code != exitLeaseUnavailable {
		t.Errorf("exit %d, want %d; stderr %q", code, exitLeaseUnavailable, p.stderr.String())
	}
	if got := p.stderr.String(); !strings.Contains(got, "lease server") {
		t.Errorf("stderr %q does not say what happened", got)
	}
	if _, err := os.Stat(dir + "/ran"); err == nil {
		t.Error("CMD ran without a lease")
	}
}
