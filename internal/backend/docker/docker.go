// Package docker is forge's docker backend: each job runs in a container of
// its image on a Docker engine, driven by forgexec (internal/forgexec, whose
// package documentation describes the protocol).
//
// One attempt of a job is:
//
//   - the job's image, used when the engine has it, else pulled (with the
//     credentials configured for its registry); a pull that fails is an
//     error naming the image;
//   - a workspace volume of the container's own at /workspace, filled by
//     forgexec with the job's source (Workspace.Clean: the tree of the
//     checkout's HEAD; otherwise the checkout as it is), which the backend
//     sends with the job to forgexec's stdin, attached before the start;
//   - when the job has services:, a network private to the attempt, on
//     which each service runs as a container reachable by its name;
//   - the job's container: forgexec as entrypoint (from a read-only volume,
//     see "Getting the binary in" in internal/forgexec), ports: published, CPU and memory limits
//     from the job or the backend's defaults, the image's user unless one is
//     configured; never the Docker socket;
//   - everything removed at the end, whatever the end.
//
// Everything carries labels: forge.scope (Options.Scope), forge.build,
// forge.job, forge.attempt and forge.role; Clean (the Janitor) removes what
// a crashed server left, by those labels, and Attach (the Attacher) takes
// over a job that outlived its server.
package docker

import (
	"archive/tar"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/forgexec"
	"github.com/forgeci/forge/internal/moby"
)

// Labels on everything the backend makes.
const (
	LabelScope   = "forge.scope"
	LabelBuild   = "forge.build"
	LabelJob     = "forge.job"
	LabelAttempt = "forge.attempt"
	LabelRole    = "forge.role" // job, service, network, workspace
)

// WorkspaceDir is where a job's workspace is mounted in its container.
const WorkspaceDir = "/workspace"

// DefaultScope is Options.Scope when none is given.
const DefaultScope = "default"

// Options configure the docker backend.
type Options struct {
	// Client talks to the engine. When nil, New makes one from Host and
	// CertPath (or, when Host is empty, DOCKER_HOST and the other
	// DOCKER_* variables, else the local socket).
	Client *client.Client
	// Host is the engine's address: unix:///var/run/docker.sock,
	// tcp://host:2376. A tcp:// host needs CertPath (TLS with a client
	// certificate) unless AllowPlainTCP.
	Host string
	// CertPath holds ca.pem, cert.pem and key.pem for TLS.
	CertPath      string
	AllowPlainTCP bool
	// Scope is the forge.scope label value of everything this backend
	// makes; Clean only looks at its own scope. Servers sharing an engine
	// with different databases need different scopes. "" means
	// DefaultScope.
	Scope string
	// Forgexec is the path of the forge binary that runs as forgexec in
	// the containers: a static Linux binary for the engine's platform.
	// "" means this process's own executable.
	Forgexec string
	// KillGrace is how long a step gets between SIGTERM and SIGKILL when
	// a job is cancelled or times out; 0 means 5s.
	KillGrace time.Duration
	// CPUs and Memory (bytes) limit a job that sets no limits: of its own;
	// zero means no limit.
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
	// MaxLog bounds the container log of one job, which carries its
	// events (see internal/forgexec); 0 means 8 GiB. The engine's default
	// rotation (often 10 MB) would lose the events of a talkative job, so
	// the backend sets its own. The log is removed with the container.
	MaxLog int64
	// Logger receives the backend's warnings; nil discards them.
	Logger *slog.Logger
}

// RegistryAuth is the credentials of one registry.
type RegistryAuth struct {
	Username string `yaml:"username" json:"username"`
	Password string `yaml:"password" json:"password"`
}

// Backend runs jobs in containers. It is safe for concurrent use.
type Backend struct {
	opts Options
	cli  *client.Client
	log  *slog.Logger

	execMu    sync.Mutex
	execReady map[string]bool // forgexec volumes known to hold the binary
	execFile  string          // the binary's path, and its digest
	execSum   string

	pulls sync.Map // image → *sync.Mutex: one pull per image at a time
}

var (
	_ forge.Backend  = (*Backend)(nil)
	_ forge.Attacher = (*Backend)(nil)
	_ forge.Janitor  = (*Backend)(nil)
)

// New returns a docker backend. It does not contact the engine: the first
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
			return nil, forge.WrapError(forge.EINTERNAL, err, "docker backend: cannot find forge's own binary for forgexec")
		}
		opts.Forgexec = exe
	}
	if err := moby.CheckStatic(opts.Forgexec); err != nil {
		return nil, err
	}
	return &Backend{opts: opts, cli: cli, log: opts.Logger, execReady: map[string]bool{}}, nil
}

// NewClient returns a client of the engine at host (see Options.Host); an
// empty host means the DOCKER_* environment, else the local socket.
func NewClient(host, certPath string, allowPlainTCP bool) (*client.Client, error) {
	opts := []client.Opt{client.WithAPIVersionNegotiation()}
	if host == "" {
		opts = append(opts, client.FromEnv)
	} else {
		opts = append(opts, client.WithHost(host))
	}
	if certPath != "" {
		opts = append(opts, client.WithTLSClientConfig(certPath+"/ca.pem", certPath+"/cert.pem", certPath+"/key.pem"))
	} else if strings.HasPrefix(host, "tcp://") && !allowPlainTCP {
		return nil, forge.Errorf(forge.EINVALID,
			"docker host %s is plain TCP: give a certificate directory (FORGE_DOCKER_CERT_PATH with ca.pem, cert.pem, key.pem) for TLS, or allow plain TCP explicitly", host)
	}
	cli, err := client.New(opts...)
	if err != nil {
		return nil, forge.WrapError(forge.EINVALID, err, "docker client")
	}
	return cli, nil
}

// Ping checks that the engine answers.
func (b *Backend) Ping(ctx context.Context) error {
	if _, err := b.cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return forge.WrapError(forge.EUNAVAILABLE, err, "the Docker engine does not answer")
	}
	return nil
}

// Client returns the engine client the backend uses.
func (b *Backend) Client() *client.Client { return b.cli }

// handle is what Attach needs to find an attempt again; it is stored by
// the server with the job, never shown.
type handle struct {
	V         int      `json:"v"`
	Container string   `json:"container"`
	Nonce     string   `json:"nonce"`
	Network   string   `json:"network,omitempty"`
	Volume    string   `json:"volume,omitempty"` // a named volume to remove, if any
	Services  []string `json:"services,omitempty"`
	KillGrace int64    `json:"kill_grace,omitempty"` // nanoseconds
}

// attempt is what one attempt made, for the cleanup.
type attempt struct {
	h       handle
	created []string // containers, services first
	// stream is the job container's attached stdin and output (Run
	// only; Attach reads the container's log); feed gets the result of
	// writing the job and its workspace to stdin.
	stream *client.HijackedResponse
	feed   chan error
}

// Run runs one attempt of run.Job in a container, as forge.Backend
// documents.
func (b *Backend) Run(ctx context.Context, run *forge.JobRun, rep forge.Reporter) (forge.Status, error) {
	if run == nil || run.Job == nil {
		return forge.StatusError, forge.Errorf(forge.EINVALID, "no job to run")
	}
	job := run.Job
	if job.Image == "" {
		return forge.StatusError, forge.Errorf(forge.EINVALID,
			"job %s has no image: the docker backend runs every job in a container of its image (set image: on the job or at the top level)", job.Name)
	}
	a := &attempt{h: handle{V: 1, KillGrace: int64(b.opts.KillGrace)}}
	st, err := b.start(ctx, run, a)
	if err != nil {
		b.cleanup(a)
		if ctx.Err() != nil {
			// Ended before a step could start: every step is skipped.
			reportSkipped(run.Job.Steps, ctx.Err(), rep)
			return ctxStatus(ctx.Err()), nil
		}
		return st, err
	}
	hb, _ := json.Marshal(a.h)
	rep.Report(forge.Event{Type: forge.EventJobHandle, Time: time.Now(), Handle: hb})
	return b.follow(ctx, a, 0, rep)
}

// Attach takes over an attempt from its handle, as forge.Attacher
// documents.
func (b *Backend) Attach(ctx context.Context, hb []byte, from int, rep forge.Reporter) (forge.Status, error) {
	var h handle
	if err := json.Unmarshal(hb, &h); err != nil || h.V != 1 || h.Container == "" || h.Nonce == "" {
		return forge.StatusError, forge.Errorf(forge.EINVALID, "not a docker backend handle")
	}
	a := &attempt{h: h, created: append(append([]string(nil), h.Services...), h.Container)}
	if _, err := b.cli.ContainerInspect(ctx, h.Container, client.ContainerInspectOptions{}); err != nil {
		if cerrdefs.IsNotFound(err) {
			b.cleanup(a)
			return forge.StatusError, forge.WrapError(forge.ENOTFOUND, err, "the job's container is gone")
		}
		return forge.StatusError, forge.WrapError(forge.EUNAVAILABLE, err, "cannot inspect the job's container")
	}
	return b.follow(ctx, a, from, rep)
}

// start makes everything of the attempt and starts the job's container.
// On error, a holds what was made so far.
func (b *Backend) start(ctx context.Context, run *forge.JobRun, a *attempt) (forge.Status, error) {
	job := run.Job
	nonce, err := forgexec.NewNonce()
	if err != nil {
		return forge.StatusError, forge.WrapError(forge.EINTERNAL, err, "docker backend")
	}
	a.h.Nonce = nonce
	user := cmp.Or(job.User, b.opts.User)
	imgUser, err := b.imageUser(ctx, job.Image)
	if err != nil {
		return forge.StatusError, err
	}
	for _, s := range job.Services {
		if err := b.ensureImage(ctx, s.Image); err != nil {
			return forge.StatusError, err
		}
	}
	execVol, err := b.execVolume(ctx, job.Image)
	if err != nil {
		return forge.StatusError, err
	}

	base := names(run)
	labels := func(role string) map[string]string {
		return map[string]string{
			LabelScope: b.opts.Scope, LabelBuild: run.BuildID, LabelJob: job.Name,
			LabelAttempt: strconv.Itoa(run.Attempt), LabelRole: role,
		}
	}
	netMode := container.NetworkMode("")
	if len(job.Services) > 0 {
		nw, err := b.cli.NetworkCreate(ctx, base, client.NetworkCreateOptions{Driver: "bridge", Labels: labels("network")})
		if err != nil {
			return forge.StatusError, moby.EngineError(err, "cannot create the build's network")
		}
		a.h.Network = nw.ID
		netMode = container.NetworkMode(nw.ID)
		for i, s := range job.Services {
			id, err := b.startService(ctx, s, fmt.Sprintf("%s-svc%d", base, i), nw.ID, labels("service"))
			if id != "" {
				a.h.Services = append(a.h.Services, id)
				a.created = append(a.created, id)
			}
			if err != nil {
				return forge.StatusError, err
			}
		}
	}

	exposed, bindings, err := portConfig(job.Ports)
	if err != nil {
		return forge.StatusError, err
	}
	cpus, mem := job.Limits.CPUs, job.Limits.Memory
	if cpus == 0 {
		cpus = b.opts.CPUs
	}
	if mem == 0 {
		mem = b.opts.Memory
	}
	cfg := &container.Config{
		Image:        job.Image,
		Entrypoint:   []string{forgexec.Bin},
		Cmd:          []string{},
		Env:          []string{forgexec.StdinEnv + "=1"},
		OpenStdin:    true,
		StdinOnce:    true,
		AttachStdin:  true,
		AttachStdout: true,
		AttachStderr: true,
		WorkingDir:   WorkspaceDir,
		User:         user,
		Labels:       labels("job"),
		ExposedPorts: exposed,
		StopSignal:   "SIGTERM",
	}
	hc := &container.HostConfig{
		NetworkMode:  netMode,
		PortBindings: bindings,
		LogConfig:    b.logConfig(),
		Mounts: []mount.Mount{
			// The workspace: a volume of the container's own, made with
			// it and removed with it.
			{Type: mount.TypeVolume, Target: WorkspaceDir, VolumeOptions: &mount.VolumeOptions{Labels: labels("workspace")}},
			{Type: mount.TypeVolume, Source: execVol, Target: forgexec.BinDir, ReadOnly: true,
				VolumeOptions: &mount.VolumeOptions{NoCopy: true}},
		},
		Resources: container.Resources{NanoCPUs: int64(cpus * 1e9), Memory: mem},
	}
	created, err := b.cli.ContainerCreate(ctx, client.ContainerCreateOptions{Config: cfg, HostConfig: hc, Name: base})
	if err != nil {
		return forge.StatusError, moby.EngineError(err, "cannot create the job's container from image "+job.Image)
	}
	a.h.Container = created.ID
	a.created = append(a.created, created.ID)

	fj := &forgexec.Job{
		Version: forgexec.Version, Nonce: nonce, Dir: WorkspaceDir,
		Env: jobEnv(run.Env), Secrets: run.Secrets, Steps: job.Steps,
		KillGrace: b.opts.KillGrace,
	}
	if dl, ok := ctx.Deadline(); ok {
		// The job ends on time even if this server is gone by then.
		fj.Timeout = max(time.Until(dl), time.Millisecond)
	}
	// The job and its source go in before the start, in one copy:
	// nothing races.
	// forgexec unpacks the source as the job's user: a user other than
	// root needs the workspace volume's root to be its own.
	if u := cmp.Or(user, imgUser); u != "" && u != "root" && u != "0" && !strings.HasPrefix(u, "0:") && !strings.HasPrefix(u, "root:") {
		if err := b.ownWorkspace(ctx, created.ID, u); err != nil {
			return forge.StatusError, err
		}
	}
	// The job and its source go to forgexec's stdin, attached before the
	// start: nothing races, and the attached stream carries the events.
	att, err := b.cli.ContainerAttach(ctx, created.ID, client.ContainerAttachOptions{Stream: true, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		return forge.StatusError, moby.EngineError(err, "cannot attach to the job's container")
	}
	a.stream = &att.HijackedResponse
	if _, err := b.cli.ContainerStart(ctx, created.ID, client.ContainerStartOptions{}); err != nil {
		b.forgetExec()
		return forge.StatusError, moby.EngineError(err, "cannot start the job's container")
	}
	a.feed = make(chan error, 1)
	go func() { a.feed <- b.feed(ctx, att.HijackedResponse, fj, run.Workspace) }()
	return forge.StatusRunning, nil
}

// logConfig is the log of a job's container: json-file, never rotated
// below MaxLog, whatever the engine's defaults, so the follower and a
// reattach after a restart read every event.
func (b *Backend) logConfig() container.LogConfig {
	return container.LogConfig{Type: "json-file", Config: map[string]string{
		"max-size": strconv.FormatInt(b.opts.MaxLog, 10), "max-file": "2", "compress": "false",
	}}
}

// jobEnv is the steps' environment in the container: run's, with
// FORGE_WORKSPACE where the job sees its workspace.
func jobEnv(env map[string]string) map[string]string {
	out := make(map[string]string, len(env)+1)
	for k, v := range env {
		out[k] = v
	}
	out["FORGE_WORKSPACE"] = WorkspaceDir
	return out
}

// startService starts one sidecar on network nw, reachable by its name.
func (b *Backend) startService(ctx context.Context, s forge.Service, name, nw string, labels map[string]string) (string, error) {
	exposed, bindings, err := portConfig(s.Ports)
	if err != nil {
		return "", err
	}
	env := make([]string, 0, len(s.Environment))
	for k, v := range s.Environment {
		env = append(env, k+"="+v)
	}
	cfg := &container.Config{Image: s.Image, Env: env, Labels: labels, ExposedPorts: exposed, Hostname: s.Name}
	if len(s.Command) > 0 {
		cfg.Cmd = s.Command
	}
	created, err := b.cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config: cfg,
		HostConfig: &container.HostConfig{
			NetworkMode: container.NetworkMode(nw), PortBindings: bindings,
			LogConfig: container.LogConfig{Type: "json-file"},
		},
		NetworkingConfig: &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
			nw: {Aliases: []string{s.Name}},
		}},
		Name: name,
	})
	if err != nil {
		return "", moby.EngineError(err, fmt.Sprintf("cannot create service %s from image %s", s.Name, s.Image))
	}
	if _, err := b.cli.ContainerStart(ctx, created.ID, client.ContainerStartOptions{}); err != nil {
		return created.ID, moby.EngineError(err, fmt.Sprintf("cannot start service %s", s.Name))
	}
	return created.ID, nil
}

// portConfig turns ports into the engine's exposed ports and bindings.
func portConfig(ports []forge.Port) (network.PortSet, network.PortMap, error) {
	if len(ports) == 0 {
		return nil, nil, nil
	}
	exposed := network.PortSet{}
	bindings := network.PortMap{}
	for _, p := range ports {
		proto := p.Protocol
		if proto == "" {
			proto = "tcp"
		}
		port, err := network.ParsePort(fmt.Sprintf("%d/%s", p.Target, proto))
		if err != nil {
			return nil, nil, forge.WrapError(forge.EINVALID, err, fmt.Sprintf("port %d/%s", p.Target, proto))
		}
		exposed[port] = struct{}{}
		bindings[port] = append(bindings[port], network.PortBinding{HostPort: strconv.Itoa(p.Published)})
	}
	return exposed, bindings, nil
}

// nameSafe replaces each run of characters Docker does not allow in a
// name with one "-". (A function, not a package-level regexp: every forge
// command would pay for compiling it at start, see TestStartupInitBudget.)
func nameSafe(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range s {
		if r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-') {
			b.WriteRune(r)
			dash = false
		} else if !dash {
			b.WriteByte('-')
			dash = true
		}
	}
	return b.String()
}

// names is the base name of an attempt's containers, network and volume:
// forge-BUILD-JOB-ATTEMPT-RANDOM, readable in `docker ps` and unique.
func names(run *forge.JobRun) string {
	job := strings.Trim(nameSafe(run.Job.Name), "-.")
	if len(job) > 40 {
		job = job[:40]
	}
	build := strings.Trim(nameSafe(run.BuildID), "-.")
	if len(build) > 40 {
		build = build[:40]
	}
	var r [4]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("forge-%s-%s-%d-%s", build, job, run.Attempt, hex.EncodeToString(r[:]))
}

// follow reports the attempt's events from its container's log (lines
// above from), stops the container when ctx ends, waits for its end and
// removes everything.
func (b *Backend) follow(ctx context.Context, a *attempt, from int, rep forge.Reporter) (forge.Status, error) {
	defer b.cleanup(a)
	// The stream is read to its end even after ctx ends: the last
	// records say how the job ended. A job just started is read from its
	// attached output; one taken over, from its log from the start.
	var logs io.Reader
	if a.stream != nil {
		defer a.stream.Close()
		logs = a.stream.Reader
	} else {
		lctx, stopLogs := context.WithCancel(context.WithoutCancel(ctx))
		defer stopLogs()
		rc, err := b.cli.ContainerLogs(lctx, a.h.Container, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Follow: true})
		if err != nil {
			if cerrdefs.IsNotFound(err) {
				return forge.StatusError, forge.WrapError(forge.ENOTFOUND, err, "the job's container is gone")
			}
			return forge.StatusError, moby.EngineError(err, "cannot read the job's container log")
		}
		defer rc.Close()
		logs = rc
	}

	// Stop the container when ctx ends: SIGTERM for a cancel, SIGUSR1
	// for a deadline (forgexec tells them apart), SIGKILL after the
	// grace period and a margin.
	ended := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-ended:
			return
		case <-ctx.Done():
		}
		sig := "SIGTERM"
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			sig = "SIGUSR1"
		}
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, _ = b.cli.ContainerKill(kctx, a.h.Container, client.ContainerKillOptions{Signal: sig})
		cancel()
		t := time.NewTimer(time.Duration(a.h.KillGrace) + 5*time.Second)
		defer t.Stop()
		select {
		case <-ended:
		case <-t.C:
			kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, _ = b.cli.ContainerKill(kctx, a.h.Container, client.ContainerKillOptions{Signal: "SIGKILL"})
			cancel()
		}
	}()
	defer func() { close(ended); <-stopped }()

	pr, pw := io.Pipe()
	stderr := moby.NewHeadBuffer(4096)
	copyDone := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(pw, stderr, logs)
		pw.CloseWithError(err)
		copyDone <- err
	}()
	var fin *forge.Event
	dec := forgexec.NewDecoder(a.h.Nonce)
	derr := dec.Decode(pr, func(e forge.Event) {
		switch e.Type {
		case forge.EventJobStarted:
			return // the engine reports the start
		case forge.EventJobFinished:
			fin = &e
			return
		case forge.EventLine:
			if e.Line.Number <= from {
				return
			}
		}
		rep.Report(e)
	})
	pr.CloseWithError(derr)
	cerr := <-copyDone
	if derr == nil {
		derr = cerr
	}

	// The log ends when the container stops.
	wctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	state, ierr := b.waitStopped(wctx, a.h.Container)
	var ferr error
	if a.feed != nil {
		ferr = <-a.feed
	}
	if ferr != nil && forge.ErrorCode(ferr) == forge.EINVALID {
		return forge.StatusError, ferr // e.g. no commit for a clean workspace
	}
	if fin != nil {
		switch fin.Status {
		case forge.StatusSuccess, forge.StatusFailure, forge.StatusCanceled:
			return fin.Status, nil
		}
		msg := fin.Message
		if msg == "" {
			msg = "forgexec could not run the job"
		}
		return forge.StatusError, forge.Errorf(forge.EINVALID, "%s", msg)
	}
	// No result from forgexec: say what the engine knows. If forgexec
	// did not even start, its volume may have been removed by hand: the
	// next job checks it again.
	b.forgetExec()
	if ctx.Err() != nil && ierr == nil {
		return ctxStatus(ctx.Err()), nil
	}
	var why []string
	switch {
	case ierr != nil:
		why = append(why, "cannot inspect the job's container: "+ierr.Error())
	case state.OOMKilled:
		why = append(why, "it ran out of memory (killed by the kernel)")
	case state.ExitCode == 127 || state.ExitCode == 126:
		why = append(why, fmt.Sprintf("exit code %d: forgexec could not be started in the image (is it a Linux image of the engine's platform?)", state.ExitCode))
	default:
		why = append(why, fmt.Sprintf("exit code %d", state.ExitCode))
	}
	if state.Error != "" {
		why = append(why, state.Error)
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		why = append(why, s)
	}
	if derr != nil {
		why = append(why, "reading its log: "+derr.Error())
	}
	if ferr != nil {
		why = append(why, "sending it the job: "+ferr.Error())
	}
	if dec.Foreign > 0 || dec.Corrupt > 0 {
		why = append(why, fmt.Sprintf("%d line(s) of its output were not forgexec's, %d frame(s) were cut short", dec.Foreign, dec.Corrupt))
	}
	return forge.StatusError, forge.Errorf(forge.EINTERNAL, "the job's container ended without a result: %s", strings.Join(why, "; "))
}

// waitStopped waits until the container has stopped and returns its state.
func (b *Backend) waitStopped(ctx context.Context, id string) (container.State, error) {
	for {
		res, err := b.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
		if err != nil {
			return container.State{}, err
		}
		if res.Container.State != nil && !res.Container.State.Running && !res.Container.State.Restarting {
			return *res.Container.State, nil
		}
		w := b.cli.ContainerWait(ctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
		select {
		case <-w.Result:
		case err := <-w.Error:
			if ctx.Err() != nil {
				return container.State{}, err
			}
		case <-ctx.Done():
			return container.State{}, ctx.Err()
		}
	}
}

// cleanup removes what the attempt made; it runs whatever the end.
func (b *Backend) cleanup(a *attempt) {
	if a.stream != nil {
		a.stream.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, id := range a.created {
		if _, err := b.cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
			b.log.Warn("docker: removing a job's container", "container", id, "err", err)
		}
	}
	if a.h.Network != "" {
		if _, err := b.cli.NetworkRemove(ctx, a.h.Network, client.NetworkRemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
			b.log.Warn("docker: removing a build's network", "network", a.h.Network, "err", err)
		}
	}
	if a.h.Volume != "" {
		if _, err := b.cli.VolumeRemove(ctx, a.h.Volume, client.VolumeRemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
			b.log.Warn("docker: removing a job's workspace", "volume", a.h.Volume, "err", err)
		}
	}
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

// ownWorkspace gives the workspace volume's root to user ("uid",
// "uid:gid" or a name the image knows) in the created container id.
func (b *Backend) ownWorkspace(ctx context.Context, id, user string) error {
	hdr := &tar.Header{Name: strings.TrimPrefix(WorkspaceDir, "/") + "/", Mode: 0o755, Typeflag: tar.TypeDir}
	// A numeric user is set in the archive; the engine looks a name up in
	// the image's /etc/passwd.
	uid, gid, _ := strings.Cut(user, ":")
	u, uerr := strconv.Atoi(uid)
	g, gerr := strconv.Atoi(cmp.Or(gid, "0"))
	byName := uerr != nil || gerr != nil
	if !byName {
		hdr.Uid, hdr.Gid = u, g
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(hdr)
	tw.Close()
	if _, err := b.cli.CopyToContainer(ctx, id, client.CopyToContainerOptions{DestinationPath: "/", Content: &buf, CopyUIDGID: byName}); err != nil {
		return moby.EngineError(err, "cannot give the workspace to the job's user (a user name the image does not know?)")
	}
	return nil
}
