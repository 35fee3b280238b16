package swarm

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/moby"
)

// cleanupTimeout bounds the removal of what one attempt made.
const cleanupTimeout = time.Minute

// cleanup removes what the attempt made; it runs whatever the end. The
// services go first, at once; the secret, network and volume as soon as
// Swarm has removed the tasks that use them.
func (b *Backend) cleanup(a *attempt) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	b.superseded.Delete(a.h.Service)
	if a.source != "" {
		b.source.remove(a.source)
	}
	var services []string
	for _, id := range append([]string{a.h.Service}, a.h.Sidecars...) {
		if id == "" {
			continue
		}
		services = append(services, id)
		if _, err := b.cli.ServiceRemove(ctx, id, client.ServiceRemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
			b.log.Warn("swarm: removing a job's service", "service", id, "err", err)
		}
	}
	b.removeContainers(ctx, services)
	if a.h.Secret != "" {
		b.retry(ctx, "the job's secret", a.h.Secret, func(ctx context.Context) error {
			_, err := b.cli.SecretRemove(ctx, a.h.Secret, client.SecretRemoveOptions{})
			return err
		})
	}
	if a.h.Network != "" {
		b.removeNetwork(ctx, a.h.Network)
	}
	a.helpers.Wait() // the volume is in use until they are gone
	if a.h.Volume != "" {
		b.retry(ctx, "the job's workspace", a.h.Volume, func(ctx context.Context) error {
			_, err := b.cli.VolumeRemove(ctx, a.h.Volume, client.VolumeRemoveOptions{})
			return err
		})
	}
}

// removeContainers removes the task containers of services, which were
// just removed, from the engine's own node, and waits until they are
// gone: until then their network, volumes and secret are in use (and
// Swarm forgets a removed network before the engine does). Swarm would
// remove them too, one after the other after each one's stop grace
// period; the engine removes them at once. Tasks on other nodes (jobs
// spread over the swarm) are Swarm's to remove.
func (b *Backend) removeContainers(ctx context.Context, services []string) {
	if len(services) == 0 {
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	removing := map[string]bool{}
	wait := 20 * time.Millisecond
	for {
		res, err := b.cli.ContainerList(ctx, client.ContainerListOptions{All: true,
			Filters: client.Filters{}.Add("label", swarmServiceLabel)})
		if err == nil {
			left := false
			for _, c := range res.Items {
				if !slices.Contains(services, c.Labels[swarmServiceLabel]) {
					continue
				}
				left = true
				if !removing[c.ID] {
					removing[c.ID] = true
					wg.Go(func() {
						// Swarm may be removing it too: a conflict is fine.
						_, _ = b.cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
					})
				}
			}
			if !left {
				return
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			b.log.Warn("swarm: the containers of removed services are still there", "services", services)
			return
		case <-t.C:
		}
		wait = min(wait*2, 250*time.Millisecond)
	}
}

// swarmServiceLabel is the engine's label of a task's container with its
// service's ID.
const swarmServiceLabel = "com.docker.swarm.service.id"

// removeNetwork removes an overlay network and waits until the engine
// forgets it too: Swarm forgets it first, the engine once it has seen
// that no task of its own uses it.
func (b *Backend) removeNetwork(ctx context.Context, id string) bool {
	return b.retry(ctx, "a network", id, func(ctx context.Context) error {
		_, err := b.cli.NetworkRemove(ctx, id, client.NetworkRemoveOptions{})
		if err != nil {
			return err
		}
		if _, err := b.cli.NetworkInspect(ctx, id, client.NetworkInspectOptions{}); err == nil {
			return errors.New("the engine still has the network")
		} else if !cerrdefs.IsNotFound(err) {
			return err
		}
		return nil
	})
}

// retry runs remove until it succeeds or finds nothing to remove: a thing
// is in use until the engine has removed the task containers of the
// services just removed. It gives up, with a warning, when ctx ends.
func (b *Backend) retry(ctx context.Context, what, id string, remove func(context.Context) error) bool {
	wait := 20 * time.Millisecond
	for {
		err := remove(ctx)
		if err == nil || cerrdefs.IsNotFound(err) {
			return true
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			b.log.Warn("swarm: cannot remove "+what+"; the janitor will", "id", id, "err", err)
			return false
		case <-t.C:
		}
		wait = min(wait*2, 500*time.Millisecond)
	}
}

// supersede removes the services of the older builds of m's pull request:
// a new build of a pull request makes the ones before it pointless. Their
// jobs end with an error that says so; what else they made is removed by
// their own end (or the janitor, when their server is gone).
func (b *Backend) supersede(ctx context.Context, m meta) {
	if m.pr == "" || m.fullRepo() == "" {
		return
	}
	f := client.Filters{}.Add("label", LabelScope+"="+b.opts.Scope, LabelRepo+"="+m.fullRepo(), LabelPullRequest+"="+m.pr)
	res, err := b.cli.ServiceList(ctx, client.ServiceListOptions{Filters: f})
	if err != nil {
		b.log.Warn("swarm: listing the services of older builds", "err", err)
		return
	}
	for _, s := range res.Items {
		if !older(s.Spec.Labels[LabelBuild], m.build) {
			continue
		}
		// For the older job's own end, when it runs in this process.
		b.superseded.Store(s.ID, m.build)
		if _, err := b.cli.ServiceRemove(ctx, s.ID, client.ServiceRemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
			b.log.Warn("swarm: removing a superseded build's service", "service", s.Spec.Name, "err", err)
		}
	}
}

// Clean removes the services, secrets, networks and volumes of this
// backend's scope whose build keep does not report as running, and the
// helper containers of its scope: what crashed servers left. It
// implements forge.Janitor.
func (b *Backend) Clean(ctx context.Context, keep func(buildID string) bool) (int, error) {
	scope := client.Filters{}.Add("label", LabelScope+"="+b.opts.Scope)
	stale := func(labels map[string]string) bool {
		id, ok := labels[LabelBuild]
		return !ok || keep == nil || !keep(id)
	}
	n := 0
	var errs []error
	svcs, err := b.cli.ServiceList(ctx, client.ServiceListOptions{Filters: scope})
	if err != nil {
		return 0, moby.EngineError(err, "cannot list services")
	}
	var removed []string
	for _, s := range svcs.Items {
		if !stale(s.Spec.Labels) {
			continue
		}
		if _, err := b.cli.ServiceRemove(ctx, s.ID, client.ServiceRemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, moby.EngineError(err, "cannot remove service "+s.Spec.Name))
			continue
		}
		removed = append(removed, s.ID)
		n++
	}
	cs, err := b.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: scope})
	if err != nil {
		return n, moby.EngineError(err, "cannot list containers")
	}
	for _, c := range cs.Items {
		if _, ok := c.Labels[LabelBuild]; ok {
			continue // a task's container: Swarm removes it with its service
		}
		if _, err := b.cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, moby.EngineError(err, "cannot remove container "+c.ID))
			continue
		}
		n++
	}

	// The rest is in use until Swarm has removed the tasks.
	wctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
	defer cancel()
	b.removeContainers(wctx, removed)
	secrets, err := b.cli.SecretList(ctx, client.SecretListOptions{Filters: scope})
	if err != nil {
		return n, moby.EngineError(err, "cannot list secrets")
	}
	for _, s := range secrets.Items {
		if stale(s.Spec.Labels) && b.retry(wctx, "a secret", s.ID, func(ctx context.Context) error {
			_, err := b.cli.SecretRemove(ctx, s.ID, client.SecretRemoveOptions{})
			return err
		}) {
			n++
		}
	}
	nws, err := b.cli.NetworkList(ctx, client.NetworkListOptions{Filters: scope})
	if err != nil {
		return n, moby.EngineError(err, "cannot list networks")
	}
	for _, nw := range nws.Items {
		if stale(nw.Labels) && b.removeNetwork(wctx, nw.ID) {
			n++
		}
	}
	vols, err := b.cli.VolumeList(ctx, client.VolumeListOptions{Filters: scope})
	if err != nil {
		return n, moby.EngineError(err, "cannot list volumes")
	}
	for _, v := range vols.Items {
		if stale(v.Labels) && b.retry(wctx, "a volume", v.Name, func(ctx context.Context) error {
			_, err := b.cli.VolumeRemove(ctx, v.Name, client.VolumeRemoveOptions{})
			return err
		}) {
			n++
		}
	}
	if wctx.Err() != nil && ctx.Err() == nil {
		errs = append(errs, forge.Errorf(forge.EUNAVAILABLE, "some of what crashed servers left is still in use after %s", cleanupTimeout))
	}
	return n, errors.Join(errs...)
}
