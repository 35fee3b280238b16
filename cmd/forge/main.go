// Command forge is the forge CI/CD server and its command-line tools: one
// binary that runs pipelines locally (exec), checks specs (lint), serves
// webhooks and leases (server), leases test resources (lease) and migrates
// the database (migrate). Inside a container the same binary, named
// forgexec, drives a job's steps.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/forgexec"
)

// Exit statuses shared by every subcommand.
const (
	exitOK       = 0
	exitFailed   = 1   // a job, a lint or a command failed
	exitUsage    = 2   // bad flags, arguments or spec
	exitCanceled = 130 // interrupted by SIGINT/SIGTERM
)

// version, commit and date describe the build. make build and make
// release set them with -ldflags "-X main.version=... -X main.commit=...
// -X main.date=..."; a plain go build or go install leaves them empty and
// buildInfo takes what the Go toolchain recorded instead.
var (
	version = "dev"
	commit  = ""
	date    = ""
)

// buildInfo returns the version, commit and date of this binary: the
// -ldflags values, else the module version (go install ...@v1.2.3) and the
// VCS revision and commit time the toolchain stamps into a build from a
// checkout.
func buildInfo() (v, c, d string) {
	v, c, d = version, commit, date
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v, c, d
	}
	if v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if c == "" {
				c = s.Value
			}
		case "vcs.time":
			if d == "" {
				d = s.Value
			}
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if modified && commit == "" && c != "" {
		c += "-dirty"
	}
	return v, c, d
}

// exitError carries an exit status out of a subcommand. Its message, when not
// empty, is printed to stderr.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// exitWith returns an error that makes forge exit with code, printing msg.
func exitWith(code int, format string, args ...any) error {
	return &exitError{code: code, msg: fmt.Sprintf(format, args...)}
}

func main() {
	// Inside a job's container the same binary is the job driver.
	if filepath.Base(os.Args[0]) == forgexec.Name {
		os.Exit(forgexec.Main(context.Background(), os.Stdout, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes forge with args and returns the exit status. It is main
// without the process globals, so tests can drive it.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRootCmd(stdin, stdout, stderr)
	root.SetArgs(args[1:])
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(stderr, "forge:", ee.msg)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "forge:", errorText(err))
	if ctx.Err() != nil || forge.ErrorCode(err) == forge.ECANCELED {
		return exitCanceled
	}
	if isUsageError(err) {
		return exitUsage
	}
	return exitFailed
}

// errorText is the user-facing text of err.
func errorText(err error) string {
	var fe *forge.Error
	if errors.As(err, &fe) {
		return fe.Error()
	}
	return err.Error()
}

// usageError marks errors in flags and arguments.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func isUsageError(err error) bool {
	var ue usageError
	if errors.As(err, &ue) || forge.ErrorCode(err) == forge.EINVALID {
		return true
	}
	// cobra's own argument errors carry no type.
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires at least", "requires at most", "unknown flag", "invalid argument"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

func newRootCmd(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "forge",
		Short: "forge runs CI pipelines locally and as a server, and leases test resources",
		Long: `forge is a self-hosted CI/CD server in one binary.

  forge exec          run the pipeline in .forge.yml on this machine
  forge lint          check a .forge.yml and show what is wrong, with positions
  forge server        serve GitHub webhooks, builds, logs and resource leases
  forge lease POOL -- CMD   hold test resources while CMD runs
  forge migrate       migrate the server's database`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		newVersionCmd(),
		newExecCmd(),
		newMigrateCmd(),
		newLintCmd(),
		newLeaseCmd(),
		newServerCmd(),
		newTokenCmd(),
		newGitHubCmd(),
	)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print forge's version, commit and build date",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, c, d := buildInfo()
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "forge %s\n", v)
			if c == "" {
				c = "unknown"
			}
			if d == "" {
				d = "unknown"
			}
			fmt.Fprintf(out, "commit: %s\ndate:   %s\ngo:     %s %s/%s\n", c, d, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}
