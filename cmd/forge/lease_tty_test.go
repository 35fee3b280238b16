package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/forgeci/forge/client/lease"
)

// leaseOpenPTY opens a pseudo-terminal pair.
func leaseOpenPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	slave, err = os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Close(); slave.Close() })
	return master, slave
}

// startLeaseForgeOnTTY runs forge as the session leader of a new terminal, as
// an interactive shell would run it in the foreground.
func startLeaseForgeOnTTY(t *testing.T, env []string, args ...string) (*leaseProc, *os.File) {
	t.Helper()
	master, slave := leaseOpenPTY(t)
	p := &leaseProc{done: make(chan struct{})}
	p.cmd = exec.Command(leaseForgeBinary(t), args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = slave, slave, slave
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			p.stdout.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	go func() {
		p.cmd.Wait()
		p.code = leaseExitCode(p.cmd.ProcessState, nil)
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p, master
}

// TestLeaseOnATerminal: on a terminal the queue position is updated in
// place, CMD runs in the terminal's foreground (it can read the terminal,
// and Ctrl-C reaches it and not forge lease), and forge lease exits with
// CMD's status.
func TestLeaseOnATerminal(t *testing.T) {
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := lease.Dial(ctx, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	other, err := c.Acquire(ctx, "other", []lease.Request{{Pool: "dut"}}, nil)
	if err != nil {
		t.Fatal(err)
	}

	p, tty := startLeaseForgeOnTTY(t, []string{"FORGE_SERVER=" + srv.URL}, "lease", "dut", "--", "sh", "-c",
		`read line; echo "read $line"; trap 'echo got INT; exit 4' INT; echo started; while :; do sleep 0.02; done`)
	leaseWaitFor(t, 10*time.Second, "the position on the terminal", func() bool {
		return strings.Contains(p.stdout.String(), "\r\033[Kforge lease: waiting for dut: position 1")
	})
	if err := other.Release(ctx); err != nil {
		t.Fatal(err)
	}
	leaseWaitFor(t, 10*time.Second, "the grant", func() bool { return strings.Contains(p.stdout.String(), "granted dut=dut1") })
	tty.Write([]byte("hello\n"))
	leaseWaitFor(t, 10*time.Second, "CMD to read the terminal", func() bool { return strings.Contains(p.stdout.String(), "started") })
	tty.Write([]byte{3}) // Ctrl-C
	if code := p.wait(t, 10*time.Second); code != 4 {
		t.Errorf("exit %d, want CMD's 4\noutput: %q", code, p.stdout.String())
	}
	// What CMD wrote before it exited may still be on its way from the
	// terminal to p.stdout (it was, under make test-loaded).
	for _, want := range []string{"read hello", "got INT"} {
		leaseWaitFor(t, 10*time.Second, fmt.Sprintf("%q in the output", want), func() bool { return strings.Contains(p.stdout.String(), want) })
	}
	leaseWaitFor(t, 5*time.Second, "the release", func() bool { return len(srv.leases(t, "dut")) == 0 })
}

// TestLeaseInterruptedWhileWaiting: SIGINT while queued withdraws the
// request and exits 130 without running CMD.
func TestLeaseInterruptedWhileWaiting(t *testing.T) {
	srv := newLeaseServer(t, leasePool("dut", "dut1"))
	dir := t.TempDir()
	holder := startLeaseForge(t, []string{"FORGE_SERVER=" + srv.URL}, "lease", "dut", "--", "sleep", "60")
	leaseWaitFor(t, 10*time.Second, "the holder", func() bool { return len(srv.leases(t, "dut")) == 1 })
	p := startLeaseForge(t, []string{"FORGE_SERVER=" + srv.URL}, "lease", "dut", "--", "touch", dir+"/ran")
	leaseWaitFor(t, 10*time.Second, "the waiter to queue", func() bool { return srv.queueLen(t, "dut") == 1 })
	p.cmd.Process.Signal(syscall.SIGINT)
	if code := p.wait(t, 10*time.Second); code != exitCanceled {
		t.Errorf("exit %d, want %d; stderr %q", code, exitCanceled, p.stderr.String())
	}
	if !strings.Contains(p.stderr.String(), "interrupted while waiting") {
		t.Errorf("stderr %q", p.stderr.String())
	}
	leaseWaitFor(t, 5*time.Second, "the queue to empty", func() bool { return srv.queueLen(t, "dut") == 0 })
	if _, err := os.Stat(dir + "/ran"); err == nil {
		t.Error("CMD ran although interrupted before the grant")
	}
	if holder.cmd.ProcessState != nil {
		t.Error("the holder ended")
	}
}
