package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/console"
	"github.com/forgeci/forge/internal/engine"
	"github.com/forgeci/forge/internal/git"
	"github.com/forgeci/forge/internal/guard"
	"github.com/forgeci/forge/internal/spec"
)

// execOptions are forge exec's flags.
type execOptions struct {
	file        string
	action      string
	event       string
	branch      string
	tag         string
	parallel    int
	clean       bool
	keep        bool
	secrets     []string
	secretFiles []string
	json        bool
	logDir      string
	noColor     bool
	actionSet   bool // --action was given
	backend     string

	// leaser acquires the resources of jobs with a resources: key. The
	// lease client sets it from --lease-server; nil makes such jobs fail
	// with a message saying to give that flag.
	leaser forge.Leaser
}

// defaultEvent is the event forge exec evaluates on: and when: with: a
// local run of a branch is what the server does for a push to it.
const defaultEvent = "push"

// noEvent is the --event that evaluates nothing: when: checks only paths
// and on: is not consulted, so every job of the action runs.
const noEvent = "none"

// knownEvents are the events --event accepts.
var knownEvents = []string{"push", "pull_request", "tag", "manual", "merged", noEvent}

func newExecCmd() *cobra.Command {
	o := &execOptions{}
	cmd := &cobra.Command{
		Use:   "exec [flags]",
		Short: "Run the pipeline in .forge.yml on this machine",
		Long: `exec runs an action of the build spec (.forge.yml) in this checkout, on this
machine, the way the server runs it: the jobs of the DAG in parallel, each
job's steps in order in /bin/sh -e -c, with the FORGE_* variables taken from
git.

Jobs run in the checkout itself; --clean gives each job a fresh git worktree
of HEAD in a temporary directory instead (removed afterwards unless --keep).
With --backend docker each job runs in a container of its image instead,
with a copy of the checkout (of HEAD with --clean) at /workspace; the
image:, services: and ports: keys, which the local backend ignores with a
warning, are honoured there. With --backend swarm each job runs the same way
as a service of the Swarm whose manager FORGE_DOCKER_HOST names.
The on: section and when: conditions are evaluated for --event (default
push) on --branch (default: the current branch); without --action, a file
with an on: section runs the first action on: gives for that event.

On a terminal forge shows a live view of the jobs and each job's output
prefixed with its name; elsewhere it prints plain "[job] text" lines.
--json prints one JSON object per event instead, then a summary object.

Exit status: 0 when every job passed (jobs excluded by when: count as
passed), 1 when a job failed, 2 for bad flags or an invalid spec (nothing
runs), 130 when interrupted.`,
		Example: `  forge exec                         # the execute action of ./.forge.yml
  forge exec --action deploy         # another action of the file
  forge exec -f examples/dag.yml --parallel 2
  forge exec --clean --secret TOKEN=abc --log-dir logs/
  forge exec --json | jq -c 'select(.type=="job_finished")'
  forge exec --backend docker        # each job in a container of its image
  forge exec --backend swarm         # each job as a service of the Swarm`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.actionSet = cmd.Flags().Changed("action")
			return runExec(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.file, "file", "f", ".forge.yml", "the build spec to run")
	f.StringVar(&o.action, "action", spec.DefaultAction, "the action to run: a top-level list of commands, or the jobs with that action:\n(when not given and the file has on:, the first action on: runs for --event)")
	f.StringVar(&o.event, "event", defaultEvent, "the event on: and when: are evaluated for: "+strings.Join(knownEvents, ", ")+"\n(none: evaluate nothing, run every job of the action)")
	f.StringVar(&o.branch, "branch", "", "the branch on: and when: see (default: the current git branch)")
	f.StringVar(&o.tag, "tag", "", "the tag when: sees with --event tag (default: a tag at HEAD)")
	f.IntVarP(&o.parallel, "parallel", "p", 0, "how many jobs run at once (default: the number of CPUs)")
	f.BoolVar(&o.clean, "clean", false, "run each job in a fresh git worktree of HEAD in a temporary directory")
	f.BoolVar(&o.keep, "keep", false, "with --clean, keep the jobs' directories")
	f.StringArrayVar(&o.secrets, "secret", nil, "pass a secret `NAME=VALUE` to the steps, masked as *** in the output (repeatable)")
	f.StringArrayVar(&o.secretFiles, "secret-file", nil, "read secrets from `FILE`: NAME=VALUE lines, # comments (repeatable)")
	f.BoolVar(&o.json, "json", false, "print one JSON object per event on stdout, and a summary object")
	f.StringVar(&o.logDir, "log-dir", "", "write each job's log, with timestamps, to `DIR`/<job>.log")
	f.BoolVar(&o.noColor, "no-color", false, "no colours on a terminal (NO_COLOR set to anything does the same)")
	f.StringVar(&o.backend, "backend", "", "run the jobs with `BACKEND`: local (host processes), docker (a container of each job's image)\nor swarm (a Swarm service of each job's image) (default $FORGE_BACKEND, else local; docker and swarm\nread FORGE_DOCKER_HOST and the other FORGE_DOCKER_* variables, swarm also FORGE_SWARM_*)")
	f.Var(newLeaseServerValue(&o.leaser), "lease-server", "acquire the resources: of jobs from the forge server at `URL` (its lease WebSocket)")
	_ = cmd.MarkFlagFilename("file", "yml", "yaml")
	_ = cmd.MarkFlagFilename("secret-file")
	_ = cmd.MarkFlagDirname("log-dir")
	_ = cmd.RegisterFlagCompletionFunc("event", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return knownEvents, cobra.ShellCompDirectiveNoFileComp
	})
	_ = cmd.RegisterFlagCompletionFunc("action", func(cmd *cobra.Command, _ []string, _ string) ([]string, cobra.ShellCompDirective) {
		f, err := spec.Load(o.file)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return f.Actions(), cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}

func runExec(ctx context.Context, o *execOptions, stdout, stderr io.Writer) error {
	if err := o.check(); err != nil {
		return err
	}
	secrets, err := o.readSecrets()
	if err != nil {
		return err
	}
	// git runs while the spec is read.
	gitc := make(chan *git.Local, 1)
	cwd, err := os.Getwd()
	if err != nil {
		return err
	}
	go func() { gitc <- git.ReadLocal(ctx, cwd, o.event == "tag" && o.tag == "") }()

	f, err := spec.Load(o.file)
	if err != nil {
		<-gitc
		if forge.ErrorCode(err) == forge.ENOTFOUND {
			return exitWith(exitUsage, "%s (give another file with --file)", forge.ErrorMessage(err))
		}
		fmt.Fprint(stderr, spec.Report(err))
		return exitWith(exitUsage, "%s is not a valid spec: nothing was run", o.file)
	}
	g := <-gitc
	branch, tag := o.branch, o.tag
	if branch == "" {
		branch = g.Branch
	}
	if tag == "" {
		tag = g.Tag
	}
	if actions := f.Actions(); !slices.Contains(actions, o.action) && (o.actionSet || !f.HasOn()) {
		return exitWith(exitUsage, "%s has no action %q; its actions are: %s", o.file, o.action, strings.Join(actions, ", "))
	}
	b := o.localBuild(g, branch, tag)
	action := o.chooseAction(f, &b.Hook, stderr)
	b.Action = action
	event := o.event
	if event == noEvent {
		event = ""
	}
	plan, err := spec.Compile(f, spec.Options{Action: action, Event: event, Branch: branch, Tag: tag, RequireImage: usesContainers(o.backend)})
	if err != nil {
		fmt.Fprint(stderr, spec.Report(err))
		return exitWith(exitUsage, "%s is not a valid spec: nothing was run", o.file)
	}
	if o.clean && g.SHA == "" {
		return exitWith(exitUsage, "--clean needs a git checkout with at least one commit: %s", g.Problem())
	}

	dir := g.Top
	if dir == "" {
		dir = cwd
	}
	id := "local-" + time.Now().UTC().Format("20060102-150405")
	info := engine.RunInfo{
		BuildID:   id,
		Env:       forge.RunEnv{Build: b, Repo: &b.Hook.Repo, BuildID: id}.Vars(),
		Secrets:   secrets,
		Workspace: forge.Workspace{Dir: dir, Clean: o.clean, Keep: o.keep},
	}

	// A hang-up (the terminal closed) cancels the run like an interrupt;
	// by default it would kill forge alone and leave the steps running.
	ctx, stopHup := signal.NotifyContext(ctx, syscall.SIGHUP)
	defer stopHup()
	// A closed stdout (forge exec | head) stops the run cleanly: SIGPIPE
	// is caught rather than ignored (an ignored signal would be inherited
	// by the steps), so writes fail with EPIPE and the view reports it.
	sigpipe := make(chan os.Signal, 1)
	signal.Notify(sigpipe, syscall.SIGPIPE)
	defer signal.Stop(sigpipe)
	runCtx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	onWriteError := func(err error) { stopRun(fmt.Errorf("%w: %v", errOutputClosed, err)) }

	rep := console.Tee{}
	if o.logDir != "" {
		if rep.Logs, err = console.NewLogDir(o.logDir); err != nil {
			return exitWith(exitUsage, "--log-dir: %v", err)
		}
	}
	var v console.View
	if o.json {
		v = console.NewJSON(stdout, stderr, onWriteError)
	} else {
		live, size := false, func() (int, int) { return 0, 0 }
		if f, ok := stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			live = true
			size = func() (int, int) {
				w, h, err := term.GetSize(int(f.Fd()))
				if err != nil {
					return 0, 0
				}
				return w, h
			}
		}
		_, noColourEnv := os.LookupEnv("NO_COLOR")
		v = console.NewText(stdout, plan, live, !o.noColor && !noColourEnv, size, onWriteError)
	}
	rep.View = v
	defer v.Halt()

	// The steps die with forge exec, however it dies; clean workspaces of
	// a forge exec that died are removed now.
	jobGuard := guard.New()
	defer jobGuard.Close()
	bc := backendConfig{Guard: jobGuard, Warn: func(msg string) { fmt.Fprintln(stderr, "forge: warning:", msg) }}
	if err := bc.Docker.applyEnv(os.Getenv); err != nil {
		return exitWith(exitUsage, "%v", err)
	}
	if err := bc.Swarm.applyEnv(os.Getenv); err != nil {
		return exitWith(exitUsage, "%v", err)
	}
	if bc.Docker.Scope == "" {
		bc.Docker.Scope = "exec"
	}
	backend, err := newBackend(o.backend, bc)
	if err != nil {
		return exitWith(exitUsage, "%v", err)
	}
	defer closeBackend(backend)
	if n, err := removeLeftovers(ctx, backend); err != nil {
		v.Note(fmt.Sprintf("cannot remove the clean workspaces a killed forge left: %v", err))
	} else if n > 0 {
		v.Note(fmt.Sprintf("removed %d clean workspace(s) a killed forge left", n))
	}
	eng := engine.New(engine.Options{
		Backend:  backend,
		Leaser:   o.leaser,
		Parallel: o.parallel,
		Reporter: rep,
	})
	// Say at once what an interrupt does, so nobody presses Ctrl-C again
	// while steps get their grace period.
	ran := make(chan struct{})
	noted := make(chan struct{})
	go func() {
		defer close(noted)
		select {
		case <-ctx.Done():
			v.Note("interrupted: stopping every job (SIGTERM to each step, SIGKILL after 5s)")
		case <-ran:
		}
	}()
	res, err := eng.Run(runCtx, plan, info)
	close(ran)
	<-noted
	if err != nil {
		return err
	}
	werr := v.Finish(res)
	if cause := context.Cause(runCtx); ctx.Err() == nil && errors.Is(cause, errOutputClosed) {
		if rep.Logs != nil {
			rep.Logs.Close()
		}
		return exitWith(exitFailed, "%v: the run was stopped", cause)
	}
	if rep.Logs != nil {
		if err := rep.Logs.Close(); err != nil {
			werr = errors.Join(werr, err)
		}
	}
	switch res.Status {
	case forge.StatusSuccess:
		if werr != nil {
			return exitWith(exitFailed, "%v", werr)
		}
		return nil
	case forge.StatusCanceled:
		return exitWith(exitCanceled, "canceled")
	}
	n := 0
	for _, j := range res.Jobs {
		if j.Status == forge.StatusFailure || j.Status == forge.StatusError {
			n++
		}
	}
	return exitWith(exitFailed, "%d of %d jobs did not pass", n, len(res.Jobs))
}

// chooseAction evaluates the file's on: section for the event: without
// --action, the first action on: runs for it (execute when it runs none);
// with --action, that action, with a note when on: would not run it.
func (o *execOptions) chooseAction(f *spec.File, h *forge.Hook, stderr io.Writer) string {
	if !f.HasOn() || o.event == noEvent {
		return o.action
	}
	on := f.ActionsFor(h)
	branch, tag := h.Branch, h.Tag
	what := o.event
	if branch != "" && o.event != "tag" && o.event != "manual" {
		what += " to " + branch
	} else if tag != "" && o.event == "tag" {
		what += " " + tag
	}
	switch {
	case o.actionSet && !slices.Contains(on, o.action):
		fmt.Fprintf(stderr, "forge: note: on: does not run %s for a %s; running it because --action asked for it\n", o.action, what)
	case !o.actionSet && len(on) > 0:
		return on[0]
	case !o.actionSet:
		fmt.Fprintf(stderr, "forge: note: on: runs nothing for a %s; running %s anyway\n", what, o.action)
	}
	return o.action
}

// localBuild describes the run forge exec is about to make the way the
// server describes a build: the hook of the event --event stands for
// (none: no event), on the commit and branch (or tag) of the checkout g or
// of the flags. on: is evaluated on it, and it makes the jobs' FORGE_*
// variables (forge.RunEnv), as a build does on the server.
func (o *execOptions) localBuild(g *git.Local, branch, tag string) *forge.Build {
	h := forge.Hook{
		Event:       o.event,
		Repo:        forge.Repo{Owner: g.Owner, Name: g.Repo},
		Branch:      branch,
		Target:      branch,
		Tag:         tag,
		SHA:         g.SHA,
		Merged:      o.event == "merged",
		CommitCount: g.CommitCount,
	}
	switch {
	case o.event == noEvent:
		h.Event = ""
	case o.event == "tag" && tag != "":
		h.Ref = "refs/tags/" + tag
	}
	if h.Ref == "" && branch != "" {
		h.Ref = "refs/heads/" + branch
	} else if h.Ref == "" {
		h.Ref = g.Ref // detached: the commit
	}
	return &forge.Build{Hook: h}
}

// errOutputClosed is why a run stops when its output cannot be written.
var errOutputClosed = errors.New("cannot write the output")

// check refuses flag values that make no sense.
func (o *execOptions) check() error {
	switch {
	case o.parallel < 0:
		return exitWith(exitUsage, "--parallel must be 1 or more (0 means the number of CPUs), got %d", o.parallel)
	case o.keep && !o.clean:
		return exitWith(exitUsage, "--keep keeps the directories --clean makes: give --clean too")
	case !slices.Contains(knownEvents, o.event):
		return exitWith(exitUsage, "unknown --event %q: want one of %s", o.event, strings.Join(knownEvents, ", "))
	case o.tag != "" && o.event != "tag":
		return exitWith(exitUsage, "--tag goes with --event tag")
	}
	if o.backend == "" {
		o.backend = os.Getenv("FORGE_BACKEND")
	}
	if o.backend == "" {
		o.backend = backendLocal
	}
	if err := checkBackend(o.backend); err != nil {
		return exitWith(exitUsage, "--backend: %v", forge.ErrorMessage(err))
	}
	return nil
}

// readSecrets gathers --secret-file and --secret values (the flags win
// over the files).
func (o *execOptions) readSecrets() (map[string]string, error) {
	secrets := map[string]string{}
	for _, path := range o.secretFiles {
		if err := readSecretFile(path, secrets); err != nil {
			return nil, err
		}
	}
	for _, s := range o.secrets {
		name, value, err := parseSecret(s)
		if err != nil {
			return nil, exitWith(exitUsage, "--secret %q: %v", s, err)
		}
		secrets[name] = value
	}
	return secrets, nil
}

// parseSecret splits NAME=VALUE.
func parseSecret(s string) (string, string, error) {
	name, value, ok := strings.Cut(s, "=")
	switch {
	case !ok:
		return "", "", errors.New("want NAME=VALUE")
	case !spec.IsVarName(name):
		return "", "", fmt.Errorf("%q is not a variable name (letters, digits and _, not starting with a digit)", name)
	case value == "":
		return "", "", fmt.Errorf("the value of %s is empty: there is nothing to mask", name)
	}
	return name, value, nil
}

// readSecretFile reads NAME=VALUE lines into secrets. Blank lines and lines
// starting with # are skipped; the value is everything after the first =,
// as written (no quotes are removed).
func readSecretFile(path string, secrets map[string]string) error {
	f, err := os.Open(path)
	if err != nil {
		return exitWith(exitUsage, "--secret-file: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if t := strings.TrimSpace(line); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		name, value, err := parseSecret(line)
		if err != nil {
			return exitWith(exitUsage, "%s:%d: %v", path, n, err)
		}
		secrets[name] = value
	}
	if err := sc.Err(); err != nil {
		return exitWith(exitUsage, "--secret-file %s: %v", path, err)
	}
	return nil
}
