// Package swarm is forge's swarm backend: each job runs as a Docker Swarm
// service of its image, driven by forgexec (internal/forgexec, whose
// package documentation describes the protocol).
//
// One attempt of a job is:
//
//   - a replicated service with one task and restart condition none, named
//     forge-{owner}-{repo}-{pr}-{timestamp} (cut to Docker's 63 characters),
//     labelled forge.repo, forge.pull_request, forge.build, forge.job,
//     forge.attempt, forge.role and forge.scope; CPU and memory reserved and
//     limited as the job (or the backend's defaults) says; placed by the
//     job's placement constraints;
//   - the job (steps, environment, secrets, nonce) in a Swarm secret mounted
//     as forgexec's job file: the task finds it in place when it starts,
//     nothing is copied into a running container, and the job's secrets are
//     not in `docker service inspect`;
//   - forgexec, read-only: from a volume (forge-exec-DIGEST, as the docker
//     backend makes it) that holds a static forge binary, or bound from
//     Options.NodeForgexec on the node;
//   - the workspace: a volume filled with the job's source before the
//     service is created, or a volume of the task's own into which
//     forgexec fetches the source from the backend (Options.SourceAddr);
//   - when the job has services:, an overlay network private to the
//     attempt, on which each service runs as a service of its own,
//     reachable by its name;
//   - ports: published on the node that runs the job (or through Swarm's
//     routing mesh, on every node, with Options.RoutingMesh);
//   - everything removed at the end, whatever the end; a newer build of the
//     same pull request removes the services of the builds it supersedes.
//
// The job's events come back through Swarm's service logs, whichever node
// ran the task, and its end through the task's status. A task that no
// node can take (constraints, resources) fails after Options.ScheduleTimeout
// with Swarm's own reason; a task whose node is lost fails saying so.
//
// # One node, many nodes
//
// By default the forgexec and workspace volumes are made through the
// engine forge talks to, so they exist on that engine's node only, and
// every job is placed there (a node.id constraint added to the job's
// own): nothing needs configuring, and a swarm of several nodes runs
// every job on forge's node. With Options.NodeForgexec (the forge binary
// at one path on every node) and Options.SourceAddr (a server of
// workspaces the tasks reach), nothing of a job is on forge's node: jobs
// run wherever Swarm places them, and images are named by their registry
// digest when the engine has one, so every node runs the same image.
package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/moby"
)

// Labels on everything the backend makes.
const (
	LabelScope       = "forge.scope"
	LabelRepo        = "forge.repo"
	LabelPullRequest = "forge.pull_request"
	LabelBuild       = "forge.build"
	LabelJob         = "forge.job"
	LabelAttempt     = "forge.attempt"
	LabelRole        = "forge.role"   // job, service, network, workspace, job-file
	LabelExec        = moby.LabelExec // the forgexec volume, with its binary's digest
)

// WorkspaceDir is where a job's workspace is mounted in its container.
const WorkspaceDir = "/workspace"

// DefaultScope is Options.Scope when none is given.
const DefaultScope = "default"

// DefaultScheduleTimeout is Options.ScheduleTimeout when none is given.
const DefaultScheduleTimeout = 5 * time.Minute

// Options configure the swarm backend.
type Options struct {
	// Client talks to a Swarm manager. When nil, New makes one from Host
	// and CertPath (or, when Host is empty, DOCKER_HOST and the other
	// DOCKER_* variables, else the local socket).
	Client *client.Client
	// Host is the manager's address: unix:///var/run/docker.sock,
	// tcp://manager:2376. A tcp:// host needs CertPath (TLS with a client
	// certificate) unless AllowPlainTCP.
	Host string
	// CertPath holds ca.pem, cert.pem and key.pem for TLS.
	CertPath      string
	AllowPlainTCP bool
	// Scope is the forge.scope label of everything this backend makes;
	// Clean only looks at its own scope. "" means DefaultScope.
	Scope string
	// Forgexec is the path of the static forge binary that runs as
	// forgexec in the tasks, copied into a volume on the engine's node;
	// "" means this process's own executable.
	Forgexec string
	// NodeForgexec is the path of a static forge binary on every node
	// that may run jobs: tasks bind it read-only as forgexec, and no
	// volume is made. With SourceAddr, it lets jobs run on any node (see
	// "One node, many nodes").
	NodeForgexec string
	// SourceAddr is where the backend serves jobs' workspaces to their
	// tasks (HTTPS, a certificate of its own pinned in each job, a secret
	// URL per job): ":7901". SourceURL is how tasks reach it
	// (https://forge:7901 when forge runs as a service on a network the
	// tasks join, see Networks); "" means the address it listens on. The
	// server runs from New to Close.
	SourceAddr, SourceURL string
	// Networks are more networks every job's task joins (by name or ID):
	// the network on which it reaches SourceURL.
	Networks []string
	// KillGrace is how long a step gets between SIGTERM and SIGKILL when
	// a job is cancelled or times out; 0 means 5s.
	KillGrace time.Duration
	// CPUs and Memory (bytes) reserve and limit a job that sets no limits:
	// of its own; zero means none.
	CPUs   float64
	Memory int64
	// User runs the jobs' steps ("uid", "uid:gid" or a name the image
	// knows); "" means the image's user.
	User string
	// Registries gives the credentials to pull from a registry, by its
	// host name as in the image reference (docker.io for Docker Hub).
	Registries map[string]RegistryAuth
	// PullTimeout bounds pulling one image; 0 means 10 minutes.
	PullTimeout time.Duration
	// ScheduleTimeout is how long a task may wait for a node that can
	// run it (constraints, free CPU and memory) before the job fails with
	// Swarm's reason; 0 means DefaultScheduleTimeout.
	ScheduleTimeout time.Duration
	// RoutingMesh publishes ports: through Swarm's routing mesh (every
	// node forwards them to the job) instead of on the node that runs the
	// job only. Two jobs publishing one port then cannot exist at once:
	// the second fails at once rather than waiting for the node.
	RoutingMesh bool
	// MaxLog is the size up to which a job's log is kept whole on its
	// node (json-file, whatever the engine's defaults): the events come
	// back through it, after a restart from its start. 0 means 8 GiB.
	MaxLog int64
	// KeepSuperseded leaves the services of older builds of the same
	// pull request running; by default a job's start removes them.
	KeepSuperseded bool
	// Logger receives the backend's warnings; nil discards them.
	Logger *slog.Logger
}

// RegistryAuth is the credentials of one registry.
type RegistryAuth struct {
	Username string `yaml:"username" json:"username"`
	Password string `yaml:"password" json:"password"`
}

// Backend runs jobs as Swarm services. It is safe for concurrent use.
type Backend struct {
	opts Options
	cli  *client.Client
	log  *slog.Logger

	nodeMu sync.Mutex
	nodeID string // the node of the engine forge talks to

	execMu    sync.Mutex
	execSum   string // the forgexec binary's digest
	execReady bool   // this process filled (or found filled) the volume

	pulls sync.Map // image → *sync.Mutex: one pull per image at a time

	superseded sync.Map // service ID → the build that removed it

	source    *sourceServer // with Options.SourceAddr
	closeOnce sync.Once
	closeErr  error

	stampMu   sync.Mutex
	lastStamp time.Time // the last time that named an attempt
}

var (
	_ forge.Backend  = (*Backend)(nil)
	_ forge.Attacher = (*Backend)(nil)
	_ forge.Janitor  = (*Backend)(nil)
)

// New returns a swarm backend. It does not contact the manager: the first
// job does (see Ping).
func New(opts Options) (*Backend, error) {
	if opts.Scope == "" {
		opts.Scope = DefaultScope
	}
	if opts.KillGrace <= 0 {
		opts.KillGrace = 5 * time.Second
	}
	if opts.PullTimeout <= 0 {
		opts.PullTimeout = 10 * time.Minute
	}
	if opts.MaxLog <= 0 {
		opts.MaxLog = 8 << 30
	}
	if opts.ScheduleTimeout <= 0 {
		opts.ScheduleTimeout = DefaultScheduleTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	cli := opts.Client
	if cli == nil {
		var err error
		if cli, err = NewClient(opts.Host, opts.CertPath, opts.AllowPlainTCP); err != nil {
			return nil, err
		}
	}
	if opts.Forgexec == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, forge.WrapError(forge.EINTERNAL, err, "swarm backend: cannot find forge's own binary for forgexec")
		}
		opts.Forgexec = exe
	}
	if err := moby.CheckStatic(opts.Forgexec); err != nil {
		return nil, err
	}
	if opts.NodeForgexec != "" && !strings.HasPrefix(opts.NodeForgexec, "/") {
		return nil, forge.Errorf(forge.EINVALID, "the forgexec path on the nodes, %q, is not absolute", opts.NodeForgexec)
	}
	if opts.SourceURL != "" && !strings.HasPrefix(opts.SourceURL, "https://") {
		return nil, forge.Errorf(forge.EINVALID, "the workspace server's URL %q is not https://HOST:PORT: tasks fetch workspaces over TLS", opts.SourceURL)
	}
	b := &Backend{opts: opts, cli: cli, log: opts.Logger}
	if opts.SourceAddr != "" {
		src, err := newSourceServer(opts.SourceAddr, opts.SourceURL, opts.Logger)
		if err != nil {
			return nil, err
		}
		b.source = src
	}
	return b, nil
}

// Close stops the workspace server (Options.SourceAddr); jobs still
// running can no longer fetch their workspace. It is idempotent.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		if b.source != nil {
			b.closeErr = b.source.Close()
		}
	})
	return b.closeErr
}

// spread reports whether jobs may run on any node: forgexec is on every
// node and workspaces are fetched over the network. Otherwise both are in
// volumes on the node of the engine forge talks to, where jobs run.
func (b *Backend) spread() bool {
	return b.opts.NodeForgexec != "" && b.source != nil
}

// NewClient returns a client of the Docker engine at host (see
// Options.Host); an empty host means the DOCKER_* environment, else the
// local socket. A tcp:// host without certPath is refused unless
// allowPlainTCP: whoever reaches a manager's API runs anything on the
// whole swarm.
func NewClient(host, certPath string, allowPlainTCP bool) (*client.Client, error) {
	opts := []client.Opt{client.WithAPIVersionNegotiation()}
	if host == "" {
		opts = append(opts, client.FromEnv)
		host = os.Getenv("DOCKER_HOST")
	} else {
		opts = append(opts, client.WithHost(host))
	}
	switch {
	case certPath != "":
		for _, f := range []string{"ca.pem", "cert.pem", "key.pem"} {
			if _, err := os.Stat(certPath + "/" + f); err != nil {
				return nil, forge.WrapError(forge.EINVALID, err,
					fmt.Sprintf("docker TLS: %s/%s is missing: the certificate directory needs ca.pem, cert.pem and key.pem", certPath, f))
			}
		}
		opts = append(opts, client.WithTLSClientConfig(certPath+"/ca.pem", certPath+"/cert.pem", certPath+"/key.pem"))
	case strings.HasPrefix(host, "tcp://") && !allowPlainTCP && os.Getenv("DOCKER_CERT_PATH") == "":
		return nil, forge.Errorf(forge.EINVALID,
			"docker host %s is plain TCP: give a certificate directory (FORGE_DOCKER_CERT_PATH with ca.pem, cert.pem, key.pem) for TLS with a client certificate, or allow plain TCP explicitly", host)
	}
	cli, err := client.New(opts...)
	if err != nil {
		return nil, forge.WrapError(forge.EINVALID, err, "docker client")
	}
	return cli, nil
}

// Ping checks that the engine answers and is a manager of an active
// swarm.
func (b *Backend) Ping(ctx context.Context) error {
	_, err := b.node(ctx)
	return err
}

// node returns the ID of the swarm node of the engine forge talks to,
// after checking that it is an active manager.
func (b *Backend) node(ctx context.Context) (string, error) {
	b.nodeMu.Lock()
	defer b.nodeMu.Unlock()
	if b.nodeID != "" {
		return b.nodeID, nil
	}
	if _, err := b.cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return "", forge.WrapError(forge.EUNAVAILABLE, err, "the Docker engine does not answer")
	}
	info, err := b.cli.Info(ctx, client.InfoOptions{})
	if err != nil {
		return "", moby.EngineError(err, "cannot ask the Docker engine about its swarm")
	}
	sw := info.Info.Swarm
	switch {
	case sw.LocalNodeState != "active":
		return "", forge.Errorf(forge.EUNAVAILABLE,
			"the Docker engine is not in an active swarm (its state is %q): run `docker swarm init` on it, or point forge at a manager", sw.LocalNodeState)
	case !sw.ControlAvailable:
		return "", forge.Errorf(forge.EUNAVAILABLE,
			"the Docker engine is a swarm worker, not a manager: services can only be made through a manager")
	}
	b.nodeID = sw.NodeID
	return b.nodeID, nil
}

// Client returns the engine client the backend uses.
func (b *Backend) Client() *client.Client { return b.cli }

// handle is what Attach needs to find an attempt again; the server stores
// it with the job and never shows it.
type handle struct {
	V         int      `json:"v"`
	Service   string   `json:"service"`
	Nonce     string   `json:"nonce"`
	Sidecars  []string `json:"sidecars,omitempty"`
	Network   string   `json:"network,omitempty"`
	Volume    string   `json:"volume,omitempty"`
	Secret    string   `json:"secret,omitempty"`
	Repo      string   `json:"repo,omitempty"`
	PR        string   `json:"pr,omitempty"`
	Build     string   `json:"build,omitempty"`
	KillGrace int64    `json:"kill_grace,omitempty"` // nanoseconds
	Created   int64    `json:"created,omitempty"`    // Unix nanoseconds
}

// attempt is what one attempt made, for the cleanup.
type attempt struct {
	h      handle
	steps  []forge.Step // nil when attached: the steps are forgexec's
	source string       // the workspace's token on the source server
	// helpers are the removals of helper containers still going on.
	helpers sync.WaitGroup
}

// Run runs one attempt of run.Job as a Swarm service, as forge.Backend
// documents.
func (b *Backend) Run(ctx context.Context, run *forge.JobRun, rep forge.Reporter) (forge.Status, error) {
	if run == nil || run.Job == nil {
		return forge.StatusError, forge.Errorf(forge.EINVALID, "no job to run")
	}
	job := run.Job
	if job.Image == "" {
		return forge.StatusError, forge.Errorf(forge.EINVALID,
			"job %s has no image: the swarm backend runs every job as a service of its image (set image: on the job or at the top level)", job.Name)
	}
	a := &attempt{h: handle{V: 1, KillGrace: int64(b.opts.KillGrace)}, steps: job.Steps}
	if err := b.start(ctx, run, a); err != nil {
		b.cleanup(a)
		if ctx.Err() != nil {
			// Ended before a step could start: every step is skipped.
			reportSkipped(job.Steps, ctx.Err(), rep)
			return ctxStatus(ctx.Err()), nil
		}
		return forge.StatusError, err
	}
	hb, _ := json.Marshal(a.h)
	rep.Report(forge.Event{Type: forge.EventJobHandle, Time: time.Now(), Handle: hb})
	return b.follow(ctx, a, 0, rep)
}

// Attach takes over an attempt from its handle, as forge.Attacher
// documents.
func (b *Backend) Attach(ctx context.Context, hb []byte, from int, rep forge.Reporter) (forge.Status, error) {
	var h handle
	if err := json.Unmarshal(hb, &h); err != nil || h.V != 1 || h.Service == "" || h.Nonce == "" {
		return forge.StatusError, forge.Errorf(forge.EINVALID, "not a swarm backend handle")
	}
	a := &attempt{h: h}
	if _, err := b.node(ctx); err != nil {
		return forge.StatusError, err
	}
	if _, err := b.cli.ServiceInspect(ctx, h.Service, client.ServiceInspectOptions{}); err != nil {
		if cerrdefs.IsNotFound(err) {
			b.cleanup(a)
			return forge.StatusError, forge.WrapError(forge.ENOTFOUND, err, "the job's service is gone")
		}
		return forge.StatusError, moby.EngineError(err, "cannot inspect the job's service")
	}
	return b.follow(ctx, a, from, rep)
}

// reportSkipped reports every step skipped because the job ended before
// they could start.
func reportSkipped(steps []forge.Step, err error, rep forge.Reporter) {
	why := "the job was cancelled"
	if errors.Is(err, context.DeadlineExceeded) {
		why = "the job timed out"
	}
	for i, s := range steps {
		rep.Report(forge.Event{Type: forge.EventStepFinished, Time: time.Now(), Step: i, StepName: s.Name,
			Status: forge.StatusSkipped, Message: "not run: " + why})
	}
}

// ctxStatus is a job's status when its context ended.
func ctxStatus(err error) forge.Status {
	if errors.Is(err, context.DeadlineExceeded) {
		return forge.StatusFailure
	}
	return forge.StatusCanceled
}
