package swarm

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/forgexec"
	"github.com/forgeci/forge/internal/moby"
)

// jobFile is the name of the job's secret in the task (under
// /run/secrets/).
const jobFile = "forge-job.json"

// maxSecret is Swarm's limit on the size of a secret.
const maxSecret = 500 << 10

// stopMargin is what a task gets past the kill grace between its stop
// signal and SIGKILL: forgexec's own time to report the end.
const stopMargin = 5 * time.Second

// start makes everything of the attempt and creates the job's service.
// On error, a holds what was made so far.
func (b *Backend) start(ctx context.Context, run *forge.JobRun, a *attempt) error {
	job := run.Job
	m := metaOf(run)
	a.h.Repo, a.h.PR, a.h.Build = m.fullRepo(), m.pr, m.build
	node, err := b.node(ctx)
	if err != nil {
		return err
	}
	if !b.opts.KeepSuperseded {
		b.supersede(ctx, m)
	}
	if a.h.Nonce, err = forgexec.NewNonce(); err != nil {
		return forge.WrapError(forge.EINTERNAL, err, "swarm backend")
	}
	spread := b.spread()
	image, err := b.jobImage(ctx, job.Image, spread)
	if err != nil {
		return err
	}
	sidecarImages := make([]string, len(job.Services))
	for i, s := range job.Services {
		if sidecarImages[i], err = b.jobImage(ctx, s.Image, spread); err != nil {
			return err
		}
	}
	// forgexec: bound from the node, or from the volume on forge's node.
	exec := mount.Mount{Type: mount.TypeBind, Source: b.opts.NodeForgexec, Target: forgexec.Bin, ReadOnly: true}
	if !spread {
		vol, err := b.execVolume(ctx, image)
		if err != nil {
			return err
		}
		exec = mount.Mount{Type: mount.TypeVolume, Source: vol, Target: forgexec.BinDir, ReadOnly: true,
			VolumeOptions: &mount.VolumeOptions{NoCopy: true}}
	}

	// The job's file names the attempt: its secret is made first, since
	// Swarm refuses a second secret of one name where a volume would be
	// shared silently.
	fj := &forgexec.Job{
		Version: forgexec.Version, Nonce: a.h.Nonce, Dir: WorkspaceDir,
		Env: jobEnv(run.Env), Secrets: run.Secrets, Steps: job.Steps,
		KillGrace: b.opts.KillGrace,
	}
	if spread && run.Workspace.Dir != "" {
		if err := checkDir(run.Workspace.Dir); err != nil {
			return err
		}
		ws := run.Workspace
		if ws.Dir, err = filepath.Abs(ws.Dir); err != nil {
			return forge.WrapError(forge.EINVALID, err, "workspace "+run.Workspace.Dir)
		}
		src, token, err := b.source.add(ws)
		if err != nil {
			return forge.WrapError(forge.EINTERNAL, err, "swarm backend")
		}
		fj.Source, a.source = src, token
	}
	if dl, ok := ctx.Deadline(); ok {
		// The job ends on time even if this server is gone by then.
		fj.Timeout = max(time.Until(dl), time.Millisecond)
	}
	data, err := json.Marshal(fj)
	if err != nil {
		return forge.WrapError(forge.EINTERNAL, err, "cannot encode the job")
	}
	if len(data) > maxSecret {
		return forge.Errorf(forge.ETOOLARGE,
			"job %s is %d KB once encoded (steps, environment, secrets): Swarm carries at most %d KB to a task", job.Name, len(data)>>10, maxSecret>>10)
	}
	var base string
	for i := 0; ; i++ {
		now := b.stamp()
		base = serviceName(m, now)
		res, err := b.cli.SecretCreate(ctx, client.SecretCreateOptions{Spec: swarm.SecretSpec{
			Annotations: swarm.Annotations{Name: derived(base, "-job"), Labels: m.labels(b.opts.Scope, "job-file")},
			Data:        data,
		}})
		if cerrdefs.IsConflict(err) && i < 10 {
			continue // a job of another forge, named in the same millisecond
		}
		if err != nil {
			return moby.EngineError(err, "cannot create the job's secret")
		}
		a.h.Secret, a.h.Created = res.ID, now.UnixNano()
		break
	}

	// The workspace: a volume filled on forge's node, or one of the
	// task's own (removed with its container) that forgexec fills.
	ws := mount.Mount{Type: mount.TypeVolume, Target: WorkspaceDir}
	if !spread {
		vol, err := b.cli.VolumeCreate(ctx, client.VolumeCreateOptions{Name: derived(base, "-ws"), Labels: m.labels(b.opts.Scope, "workspace")})
		if err != nil {
			return moby.EngineError(err, "cannot create the job's workspace volume")
		}
		a.h.Volume, ws.Source = vol.Volume.Name, vol.Volume.Name
		if err := b.fillWorkspace(ctx, a, image, vol.Volume.Name, run.Workspace); err != nil {
			return err
		}
	}

	constraints := slices.Clone(job.Placement)
	if !spread {
		constraints = append(constraints, "node.id=="+node)
	}
	var nets []swarm.NetworkAttachmentConfig
	if len(job.Services) > 0 {
		nw, err := b.cli.NetworkCreate(ctx, derived(base, "-net"), client.NetworkCreateOptions{
			Driver: "overlay", Scope: "swarm", Labels: m.labels(b.opts.Scope, "network"),
		})
		if err != nil {
			return moby.EngineError(err, "cannot create the build's network")
		}
		a.h.Network = nw.ID
		nets = append(nets, swarm.NetworkAttachmentConfig{Target: nw.ID})
		for i, s := range job.Services {
			id, err := b.createSidecar(ctx, s, sidecarImages[i], derived(base, "-"+clean(s.Name, 20)), nw.ID, constraints, m.labels(b.opts.Scope, "service"))
			if err != nil {
				return err
			}
			a.h.Sidecars = append(a.h.Sidecars, id)
		}
	}

	for _, n := range b.opts.Networks {
		nets = append(nets, swarm.NetworkAttachmentConfig{Target: n})
	}
	ports, err := portConfig(job.Ports, b.portMode())
	if err != nil {
		return err
	}
	cpus, mem := job.Limits.CPUs, job.Limits.Memory
	if cpus == 0 {
		cpus = b.opts.CPUs
	}
	if mem == 0 {
		mem = b.opts.Memory
	}
	var res *swarm.ResourceRequirements
	if cpus > 0 || mem > 0 {
		res = &swarm.ResourceRequirements{
			Limits:       &swarm.Limit{NanoCPUs: int64(cpus * 1e9), MemoryBytes: mem},
			Reservations: &swarm.Resources{NanoCPUs: int64(cpus * 1e9), MemoryBytes: mem},
		}
	}
	grace := b.opts.KillGrace + stopMargin
	labels := m.labels(b.opts.Scope, "job")
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: base, Labels: labels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image:   image,
				Labels:  labels,
				Command: []string{forgexec.Bin},
				Env:     []string{forgexec.JobFileEnv + "=/run/secrets/" + jobFile},
				Dir:     WorkspaceDir,
				User:    cmp.Or(job.User, b.opts.User),
				Mounts:  []mount.Mount{ws, exec},
				Secrets: []*swarm.SecretReference{{
					SecretID: a.h.Secret, SecretName: derived(base, "-job"),
					// Readable by whatever user the image runs as: the
					// steps run as that user too, and knowing the nonce
					// does not let them write frames (see forgexec).
					File: &swarm.SecretReferenceFileTarget{Name: jobFile, UID: "0", GID: "0", Mode: 0o444},
				}},
				StopSignal:      "SIGTERM",
				StopGracePeriod: &grace,
			},
			Resources:     res,
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
			Placement:     &swarm.Placement{Constraints: constraints},
			Networks:      nets,
			// A driver the engine can read back, whatever its default,
			// never rotated below MaxLog: service logs are how the job's
			// events come back, after a restart from the start.
			LogDriver: &swarm.Driver{Name: "json-file", Options: map[string]string{
				"max-size": strconv.FormatInt(b.opts.MaxLog, 10), "max-file": "2", "compress": "false",
			}},
		},
		Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: ptr(uint64(1))}},
		EndpointSpec: &swarm.EndpointSpec{Mode: b.endpointMode(ports), Ports: ports},
	}
	created, err := b.cli.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: spec, EncodedRegistryAuth: b.encodedAuth(job.Image)})
	if err != nil {
		return moby.EngineError(err, "cannot create the job's service from image "+job.Image)
	}
	a.h.Service = created.ID
	return nil
}

// createSidecar creates the service of one of the job's services:, on
// network nw where the job finds it by its name.
func (b *Backend) createSidecar(ctx context.Context, s forge.Service, image, name, nw string, constraints []string, labels map[string]string) (string, error) {
	ports, err := portConfig(s.Ports, b.portMode())
	if err != nil {
		return "", err
	}
	env := make([]string, 0, len(s.Environment))
	for k, v := range s.Environment {
		env = append(env, k+"="+v)
	}
	// A service is thrown away with the job: no need to wait long for
	// it to stop (a sleep as PID 1 ignores SIGTERM).
	grace := b.opts.KillGrace
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: name, Labels: labels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: image, Labels: labels, Args: s.Command, Env: env, Hostname: s.Name,
				StopGracePeriod: &grace},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
			Placement:     &swarm.Placement{Constraints: constraints},
			Networks:      []swarm.NetworkAttachmentConfig{{Target: nw, Aliases: []string{s.Name}}},
			LogDriver:     &swarm.Driver{Name: "json-file"},
		},
		Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: ptr(uint64(1))}},
		EndpointSpec: &swarm.EndpointSpec{Mode: b.endpointMode(ports), Ports: ports},
	}
	created, err := b.cli.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: spec, EncodedRegistryAuth: b.encodedAuth(s.Image)})
	if err != nil {
		return "", moby.EngineError(err, fmt.Sprintf("cannot create service %s from image %s", s.Name, s.Image))
	}
	return created.ID, nil
}

// checkDir checks that the workspace dir is a directory.
func checkDir(dir string) error {
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return forge.Errorf(forge.EINVALID, "workspace %s is not a directory", dir)
	}
	return nil
}

// stamp returns the time that names a new attempt: now, but always after
// the last one this backend gave, so that two jobs of a build started in
// one millisecond get different names.
func (b *Backend) stamp() time.Time {
	b.stampMu.Lock()
	defer b.stampMu.Unlock()
	t := time.Now().Truncate(time.Millisecond)
	if !t.After(b.lastStamp) {
		t = b.lastStamp.Add(time.Millisecond)
	}
	b.lastStamp = t
	return t
}

// jobEnv is the steps' environment in the task: run's, with
// FORGE_WORKSPACE where the job sees its workspace.
func jobEnv(env map[string]string) map[string]string {
	out := make(map[string]string, len(env)+1)
	for k, v := range env {
		out[k] = v
	}
	out["FORGE_WORKSPACE"] = WorkspaceDir
	return out
}

// portConfig publishes ports in mode.
func portConfig(ports []forge.Port, mode swarm.PortConfigPublishMode) ([]swarm.PortConfig, error) {
	var out []swarm.PortConfig
	for _, p := range ports {
		proto := network.IPProtocol(strings.ToLower(p.Protocol))
		switch proto {
		case "":
			proto = network.TCP
		case network.TCP, network.UDP:
		default:
			return nil, forge.Errorf(forge.EINVALID, "port %d: protocol %q is not tcp or udp", p.Target, p.Protocol)
		}
		if p.Target <= 0 || p.Target > 65535 || p.Published < 0 || p.Published > 65535 {
			return nil, forge.Errorf(forge.EINVALID, "port %d:%d is out of range", p.Published, p.Target)
		}
		out = append(out, swarm.PortConfig{
			Protocol: proto, TargetPort: uint32(p.Target), PublishedPort: uint32(p.Published),
			PublishMode: mode,
		})
	}
	return out, nil
}

// endpointMode is how a service's name resolves on its networks: to its
// task's own address (DNS round robin), with no virtual IP and load
// balancer in between, unless the routing mesh publishes ports, which
// needs one.
func (b *Backend) endpointMode(ports []swarm.PortConfig) swarm.ResolutionMode {
	if b.opts.RoutingMesh && len(ports) > 0 {
		return swarm.ResolutionModeVIP
	}
	return swarm.ResolutionModeDNSRR
}

// portMode is how ports: are published: on the node that runs the job
// (host), unless Options.RoutingMesh.
func (b *Backend) portMode() swarm.PortConfigPublishMode {
	if b.opts.RoutingMesh {
		return swarm.PortConfigPublishModeIngress
	}
	return swarm.PortConfigPublishModeHost
}

func ptr[T any](v T) *T { return &v }
