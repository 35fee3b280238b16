// Package local is forge's local backend: it runs a job's steps as host
// processes, in the checkout itself or in a fresh git worktree of it.
//
// Environment. A step sees exactly JobRun.Env and JobRun.Secrets, plus, for
// a usable run on a developer's machine, these variables of forge's own
// environment when JobRun.Env does not set them: PATH, HOME, USER, LANG,
// TERM and TMPDIR. Nothing else of forge's environment reaches a step (no
// tokens, no DOCKER_HOST, no FORGE_* of the server). FORGE_WORKSPACE is set to
// the directory the steps actually run in, which differs from the checkout
// with Workspace.Clean.
//
// Workspaces. Without Workspace.Clean the steps run in Workspace.Dir itself.
// With it, the job gets `git worktree add --detach` of Dir's HEAD in a new
// temporary directory, removed afterwards (`git worktree remove --force`,
// then `git worktree prune`) unless Workspace.Keep: then its path is reported
// in a system line at the start of the first step. When Dir is a
// subdirectory of its checkout, the steps run in the same subdirectory of
// the worktree. Uncommitted changes and
// submodules are not copied, and the checkout's git hooks do not run: a
// clean workspace is the commit, as a server's fresh clone would have it.
//
// Nothing left behind. With Options.Guard, a job's processes die with the
// process running them, even when it is killed with SIGKILL (see package
// guard). Each clean workspace DIR has a lock file DIR.forge-lock beside it,
// locked (flock) while its forge process lives; RemoveLeftovers, called at
// start by forge server and forge exec, removes the workspaces whose lock is
// free: those of a forge that died. The lock, not a process ID, tells the
// living from the dead, so forges sharing a TempDir never remove each
// other's workspaces.
package local

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/shell"
)

// Options configure the local backend. The zero value is ready to use.
type Options struct {
	// TempDir holds --clean workspaces; "" means os.TempDir().
	TempDir string
	// KillGrace is how long a process group gets between SIGTERM and
	// SIGKILL; 0 means 5s.
	KillGrace time.Duration
	// Shell is the shell used; "" means /bin/sh (run as: sh -e -c SCRIPT).
	Shell string
	// Guard, when set, stops the steps' processes should this process die
	// (see shell.Options.Guard).
	Guard shell.Guard
	// Warn, when set, receives one warning per spec key the local backend
	// ignores (image:, services:, ports:), the first time a job has it.
	Warn func(msg string)
}

// Backend runs jobs as processes on this machine. It is safe for
// concurrent use.
type Backend struct {
	opts   Options
	locks  sync.Map // git common directory → *sync.Mutex of its worktree records
	warned sync.Map // spec keys already warned about
}

var _ forge.Backend = (*Backend)(nil)

// New returns a local backend.
func New(opts Options) *Backend {
	return &Backend{opts: opts}
}

// passThrough are the host variables a step gets unless JobRun.Env sets
// them: without them most tools do not work on a developer's machine.
var passThrough = []string{"PATH", "HOME", "USER", "LANG", "TERM", "TMPDIR"}

// defaultPath is PATH when the host has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Run runs one attempt of run.Job, as forge.Backend documents.
func (b *Backend) Run(ctx context.Context, run *forge.JobRun, rep forge.Reporter) (forge.Status, error) {
	if run == nil || run.Job == nil {
		return forge.StatusError, forge.Errorf(forge.EINVALID, "no job to run")
	}
	b.warnIgnored(run.Job)
	dir, err := checkDir(run.Workspace.Dir)
	if err != nil {
		return forge.StatusError, err
	}
	env, err := stepEnv(run.Env)
	if err != nil {
		return forge.StatusError, err
	}
	opts := shell.Options{Shell: b.opts.Shell, KillGrace: b.opts.KillGrace, Guard: b.opts.Guard}
	if run.Workspace.Clean {
		wt, err := b.addWorktree(ctx, dir)
		if err != nil {
			if ctx.Err() != nil {
				// Ended while git looked: RunSteps, seeing ctx done,
				// reports every step skipped and says why.
				return shell.RunSteps(ctx, run.Job.Steps, dir, env, run.Secrets, rep, opts)
			}
			return forge.StatusError, err
		}
		if run.Workspace.Keep {
			opts.Notes = append(opts.Notes, "clean workspace "+wt.run+" (kept after the job)")
			defer wt.disown()
		} else {
			defer wt.remove()
		}
		dir = wt.run
	}
	env = append(env, "FORGE_WORKSPACE="+dir)
	st, err := shell.RunSteps(ctx, run.Job.Steps, dir, env, run.Secrets, rep, opts)
	shell.CollectReports(dir, run.Job.Reports, rep)
	return st, err
}

// warnIgnored warns, once per key, about what job asks for that only
// container backends do.
func (b *Backend) warnIgnored(job *forge.Job) {
	if b.opts.Warn == nil {
		return
	}
	warn := func(key, msg string) {
		if _, done := b.warned.LoadOrStore(key, true); !done {
			b.opts.Warn(msg)
		}
	}
	if job.Image != "" {
		warn("image", fmt.Sprintf("image: %s is ignored: the local backend runs steps on this machine, not in an image; the docker and swarm backends run them in it (forge exec --backend docker)", job.Image))
	}
	if len(job.Services) > 0 {
		warn("services", "services: are not started: the local backend has no containers for sidecars; the docker and swarm backends start them (forge exec --backend docker)")
	}
	if job.User != "" {
		warn("user", "user: "+job.User+" is ignored: the local backend runs steps as the user running forge; the docker and swarm backends run them as that user (forge exec --backend docker)")
	}
	if len(job.Ports) > 0 {
		warn("ports", "ports: are not published: the local backend runs steps on this machine, where they listen on its own ports; the docker and swarm backends publish them (forge exec --backend docker)")
	}
}

// checkDir returns the absolute path of the workspace directory dir.
func checkDir(dir string) (string, error) {
	if dir == "" {
		return "", forge.Errorf(forge.EINVALID, "no workspace directory given")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", forge.WrapError(forge.EINVALID, err, "workspace "+dir)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", forge.WrapError(forge.EINVALID, err, fmt.Sprintf("workspace %s does not exist", dir))
	}
	if !fi.IsDir() {
		return "", forge.Errorf(forge.EINVALID, "workspace %s is not a directory", dir)
	}
	return abs, nil
}

// stepEnv is the steps' environment but FORGE_WORKSPACE: env and the
// pass-through host variables env lacks, sorted so runs are reproducible.
func stepEnv(env map[string]string) ([]string, error) {
	out := make([]string, 0, len(env)+len(passThrough)+1) // +1: FORGE_WORKSPACE
	for k, v := range env {
		if err := shell.CheckEnv(k, v); err != nil {
			return nil, err
		}
		if k != "FORGE_WORKSPACE" {
			out = append(out, k+"="+v)
		}
	}
	for _, k := range passThrough {
		if _, set := env[k]; set {
			continue
		}
		v, ok := os.LookupEnv(k)
		if k == "PATH" && v == "" {
			v, ok = defaultPath, true
		}
		if ok {
			out = append(out, k+"="+v)
		}
	}
	slices.Sort(out)
	return out, nil
}

// worktree is a clean workspace: a git worktree of a checkout's HEAD.
type worktree struct {
	repo  string      // the checkout it came from
	dir   string      // the worktree: a new temporary directory
	run   string      // where steps run: dir, or its subdirectory matching repo's
	lock  *sync.Mutex // the repository's worktree lock
	owner *ownerLock  // dir's lock file, held while the job runs
}

// addWorktree makes a detached worktree of the HEAD of the repository
// holding dir, in a new temporary directory. dir may be a subdirectory of
// the checkout: the worktree's matching subdirectory is where steps run.
func (b *Backend) addWorktree(ctx context.Context, dir string) (*worktree, error) {
	out, err := git(ctx, dir, "rev-parse", "--path-format=absolute", "--git-common-dir", "--show-prefix", "HEAD^{commit}")
	facts := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if err != nil || len(facts) != 3 {
		// Say which it is: no repository, or no commit yet.
		if _, gerr := git(ctx, dir, "rev-parse", "--git-dir"); gerr != nil {
			return nil, forge.WrapError(forge.EINVALID, gerr,
				fmt.Sprintf("a clean workspace needs a git repository: %s is not one", dir))
		}
		return nil, forge.WrapError(forge.EINVALID, err,
			fmt.Sprintf("a clean workspace needs a commit: the repository of %s has none yet", dir))
	}
	common, prefix, sha := facts[0], facts[1], facts[2]
	// Git reads the records of all worktrees while it adds one, and fails
	// on one another git is writing: adds and removals of one repository
	// take turns in this process, and retry when another process raced.
	mu := b.repoLock(common)
	mu.Lock()
	defer mu.Unlock()
	for attempt := 1; ; attempt++ {
		var wt *worktree
		if wt, err = addWorktreeOnce(b.opts.TempDir, dir, sha); err == nil {
			wt.lock = mu
			wt.run = filepath.Join(wt.dir, prefix)
			if _, serr := os.Stat(wt.run); serr != nil {
				wt.removeLocked()
				return nil, forge.WrapError(forge.EINVALID, serr,
					fmt.Sprintf("%s is not in the commit %.12s, so a clean workspace has no such directory", dir, sha))
			}
			return wt, nil
		}
		if attempt == 3 || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
	}
	return nil, forge.WrapError(forge.EINTERNAL, err, "cannot make a clean workspace of "+dir)
}

// addWorktreeOnce adds a worktree of commit sha of the repository holding
// repo, in a new directory of tempDir. The directory is named after the
// checkout and unique: git names its record of a worktree after the
// directory. The add is not cancelled with the job: a git killed half-way
// leaves a locked record that prune never removes, and adding takes a
// moment only.
func addWorktreeOnce(tempDir, repo, sha string) (*worktree, error) {
	dir, err := os.MkdirTemp(tempDir, "forge-"+filepath.Base(repo)+"-")
	if err != nil {
		return nil, err
	}
	owner, err := lockOwner(dir)
	if err != nil {
		os.Remove(dir)
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), gitTimeout)
	defer cancel()
	// Hooks off: a clean workspace is the commit as a server's fresh clone
	// has it, whatever post-checkout hook the developer's checkout runs.
	if _, err := git(ctx, repo, "-c", "core.hooksPath=/dev/null", "worktree", "add", "--detach", dir, sha); err != nil {
		os.RemoveAll(dir)
		git(ctx, repo, "worktree", "prune")
		unlockOwner(owner)
		return nil, err
	}
	return &worktree{repo: repo, dir: dir, owner: owner}, nil
}

// gitTimeout bounds git's bookkeeping of worktrees, which is not cancelled
// with a job.
const gitTimeout = 5 * time.Minute

// repoLock returns the lock of the worktree records in the git directory
// common.
func (b *Backend) repoLock(common string) *sync.Mutex {
	mu, _ := b.locks.LoadOrStore(common, new(sync.Mutex))
	return mu.(*sync.Mutex)
}

// remove deletes the worktree and git's record of it. It runs when the job
// is over, even if it was cancelled.
func (w *worktree) remove() {
	w.lock.Lock()
	defer w.lock.Unlock()
	w.removeLocked()
}

// removeLocked is remove with the repository's lock held.
func (w *worktree) removeLocked() {
	ctx, cancel := context.WithTimeout(context.Background(), gitTimeout)
	defer cancel()
	makeWritable(w.dir)
	git(ctx, w.repo, "worktree", "remove", "--force", w.dir)
	os.RemoveAll(w.dir)
	git(ctx, w.repo, "worktree", "prune")
	w.disown()
}

// disown removes the workspace's lock file: a kept workspace is the
// user's, not a leftover.
func (w *worktree) disown() {
	if w.owner != nil {
		unlockOwner(w.owner)
		w.owner = nil
	}
}

// git runs git in dir and returns its output; its error includes stderr.
func git(ctx context.Context, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return out, fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
		}
		return out, fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, msg)
	}
	return out, nil
}
