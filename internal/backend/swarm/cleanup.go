package swarm

import (
	"context"
	"errors"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
)

// cleanupTimeout bounds the removal of what one attempt made.
const cleanupTimeout = time.Minute

// cleanup removes what the attempt made; it runs whatever the end. The
// services go first, at once; the secret, network and volume as soon as
// Swarm has removed the tasks that use them.
func (b *Backend) cleanup(a *attempt) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	for _, id := range append([]string{a.h.Service}, a.h.Sidecars...) {
		if id == "" {
			continue
		}
		if _, err := b.cli.ServiceRemove(ctx, id, client.ServiceRemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
			b.log.Warn("swarm: removing a job's service", "service", id, "err", err)
		}
	}
	if a.h.Secret != "" {
		b.retry(ctx, "the job's secret", a.h.Secret, func(ctx context.Context) error {
			_, err := b.cli.SecretRemove(ctx, a.h.Secret, client.SecretRemoveOptions{})
			return err
		})
	}
	if a.h.Network != "" {
		b.retry(ctx, "the build's network", a.h.Network, func(ctx context.Context) error {
			_, err := b.cli.NetworkRemove(ctx, a.h.Network, client.NetworkRemoveOptions{})
			return err
		})
	}
	if a.h.Volume != "" {
		b.retry(ctx, "the job's workspace", a.h.Volume, func(ctx context.Context) error {
			_, err := b.cli.VolumeRemove(ctx, a.h.Volume, client.VolumeRemoveOptions{})
			return err
		})
	}
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
		return 0, engineError(err, "cannot list services")
	}
	for _, s := range svcs.Items {
		if !stale(s.Spec.Labels) {
			continue
		}
		if _, err := b.cli.ServiceRemove(ctx, s.ID, client.ServiceRemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, engineError(err, "cannot remove service "+s.Spec.Name))
			continue
		}
		n++
	}
	cs, err := b.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: scope})
	if err != nil {
		return n, engineError(err, "cannot list containers")
	}
	for _, c := range cs.Items {
		if _, ok := c.Labels[LabelBuild]; ok {
			continue // a task's container: Swarm removes it with its service
		}
		if _, err := b.cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, engineError(err, "cannot remove container "+c.ID))
			continue
		}
		n++
	}

	// The rest is in use until Swarm has removed the tasks.
	wctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
	defer cancel()
	secrets, err := b.cli.SecretList(ctx, client.SecretListOptions{Filters: scope})
	if err != nil {
		return n, engineError(err, "cannot list secrets")
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
		return n, engineError(err, "cannot list networks")
	}
	for _, nw := range nws.Items {
		if stale(nw.Labels) && b.retry(wctx, "a network", nw.ID, func(ctx context.Context) error {
			_, err := b.cli.NetworkRemove(ctx, nw.ID, client.NetworkRemoveOptions{})
			return err
		}) {
			n++
		}
	}
	vols, err := b.cli.VolumeList(ctx, client.VolumeListOptions{Filters: scope})
	if err != nil {
		return n, engineError(err, "cannot list volumes")
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
