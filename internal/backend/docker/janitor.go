package docker

import (
	"context"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/moby"
)

// Clean removes the containers, networks and volumes of this backend's
// scope whose build keep does not report as running: what crashed servers
// left. It implements forge.Janitor.
func (b *Backend) Clean(ctx context.Context, keep func(buildID string) bool) (int, error) {
	scope := client.Filters{}.Add("label", LabelScope+"="+b.opts.Scope)
	n := 0
	stale := func(labels map[string]string) bool {
		id, ok := labels[LabelBuild]
		return !ok || keep == nil || !keep(id)
	}
	cs, err := b.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: scope})
	if err != nil {
		return 0, moby.EngineError(err, "cannot list containers")
	}
	// Services and jobs before the networks and volumes they use.
	for _, c := range cs.Items {
		if !stale(c.Labels) {
			continue
		}
		if _, err := b.cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
			return n, moby.EngineError(err, "cannot remove container "+c.ID)
		}
		n++
	}
	nws, err := b.cli.NetworkList(ctx, client.NetworkListOptions{Filters: scope})
	if err != nil {
		return n, moby.EngineError(err, "cannot list networks")
	}
	for _, nw := range nws.Items {
		if !stale(nw.Labels) {
			continue
		}
		if _, err := b.cli.NetworkRemove(ctx, nw.ID, client.NetworkRemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
			return n, moby.EngineError(err, "cannot remove network "+nw.Name)
		}
		n++
	}
	vols, err := b.cli.VolumeList(ctx, client.VolumeListOptions{Filters: scope})
	if err != nil {
		return n, moby.EngineError(err, "cannot list volumes")
	}
	for _, v := range vols.Items {
		if !stale(v.Labels) {
			continue
		}
		if _, err := b.cli.VolumeRemove(ctx, v.Name, client.VolumeRemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
			return n, moby.EngineError(err, "cannot remove volume "+v.Name)
		}
		n++
	}
	return n, nil
}

var _ = forge.Janitor((*Backend)(nil))
