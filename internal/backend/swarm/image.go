package swarm

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/moby"
)

// resolveImage makes sure the engine has image, pulling it (with the
// credentials of its registry) when it does not, and returns its ID.
// The service names the image by ID: the task then starts from exactly
// this image, and Swarm does not ask a registry for it again at every
// start.
func (b *Backend) resolveImage(ctx context.Context, image string) (string, error) {
	if res, err := b.cli.ImageInspect(ctx, image); err == nil {
		return res.ID, nil
	} else if !cerrdefs.IsNotFound(err) {
		return "", moby.EngineError(err, "cannot look up image "+image)
	}
	// One pull of an image at a time: the others wait for it.
	mu, _ := b.pulls.LoadOrStore(image, new(sync.Mutex))
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	if res, err := b.cli.ImageInspect(ctx, image); err == nil {
		return res.ID, nil
	}
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return "", forge.WrapError(forge.EINVALID, err, fmt.Sprintf("image %q is not a valid image reference", image))
	}
	opts := client.ImagePullOptions{RegistryAuth: b.encodedAuth(image)}
	pctx, cancel := context.WithTimeout(ctx, b.opts.PullTimeout)
	defer cancel()
	resp, err := b.cli.ImagePull(pctx, reference.TagNameOnly(named).String(), opts)
	if err == nil {
		err = resp.Wait(pctx)
		resp.Close()
	}
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return "", forge.WrapError(forge.ECANCELED, err, "pulling image "+image+" was cancelled")
		case pctx.Err() != nil:
			return "", forge.Errorf(forge.ETIMEOUT, "cannot pull image %s: no answer within %s", image, b.opts.PullTimeout)
		}
		msg, _, _ := strings.Cut(err.Error(), "\n")
		return "", forge.WrapError(forge.EINVALID, err, fmt.Sprintf("image %s is not on the engine and cannot be pulled: %s", image, msg))
	}
	res, err := b.cli.ImageInspect(ctx, image)
	if err != nil {
		return "", moby.EngineError(err, "image "+image+" was pulled but cannot be found")
	}
	return res.ID, nil
}

// jobImage is how a service names image. On forge's node only (not
// spread), by the ID of the image the engine has or pulls (resolveImage).
// Spread over the nodes, by its registry digest when the engine has the
// image from a registry (every node runs the same image, pulling it when
// it lacks it), else as written (each node uses its own or pulls it; one
// that cannot is Swarm's reason to reject the task).
func (b *Backend) jobImage(ctx context.Context, image string, spread bool) (string, error) {
	if !spread {
		return b.resolveImage(ctx, image)
	}
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return "", forge.WrapError(forge.EINVALID, err, fmt.Sprintf("image %q is not a valid image reference", image))
	}
	res, err := b.cli.ImageInspect(ctx, image)
	if err != nil {
		return image, nil
	}
	for _, d := range res.RepoDigests {
		if dn, err := reference.ParseNormalizedNamed(d); err == nil && dn.Name() == named.Name() {
			return d, nil
		}
	}
	return image, nil
}

// encodedAuth is the registry credentials of image for Swarm to pass to
// the nodes that pull it, "" when none are configured.
func (b *Backend) encodedAuth(image string) string {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return ""
	}
	host := reference.Domain(named)
	auth, ok := b.registryAuth(host)
	if !ok {
		return ""
	}
	buf, _ := json.Marshal(registry.AuthConfig{Username: auth.Username, Password: auth.Password, ServerAddress: host})
	return base64.URLEncoding.EncodeToString(buf)
}

// registryAuth returns the credentials configured for registry host.
func (b *Backend) registryAuth(host string) (RegistryAuth, bool) {
	if a, ok := b.opts.Registries[host]; ok {
		return a, true
	}
	if host == "docker.io" {
		for _, alias := range []string{"index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/"} {
			if a, ok := b.opts.Registries[alias]; ok {
				return a, true
			}
		}
	}
	return RegistryAuth{}, false
}

// execVolume returns the volume holding the forgexec binary, filling it
// when it is new (moby.FillExecVolume: named after the binary's content,
// the same volume the docker backend uses, complete once its marker
// exists). Jobs mount it read-only at forgexec.BinDir.
func (b *Backend) execVolume(ctx context.Context, image string) (string, error) {
	b.execMu.Lock()
	defer b.execMu.Unlock()
	if b.execSum == "" {
		sum, err := moby.FileDigest(b.opts.Forgexec)
		if err != nil {
			return "", forge.WrapError(forge.EINTERNAL, err, "cannot read the forgexec binary "+b.opts.Forgexec)
		}
		b.execSum = sum
	}
	name := moby.ExecVolumeName(b.execSum)
	if b.execReady {
		// Filled by this process; it may have been removed by hand since.
		if _, err := b.cli.VolumeInspect(ctx, name, client.VolumeInspectOptions{}); err == nil {
			return name, nil
		}
		b.execReady = false
	}
	name, err := moby.FillExecVolume(ctx, b.cli, b.opts.Forgexec, b.execSum, image,
		map[string]string{LabelScope: b.opts.Scope, LabelRole: "exec-fill"})
	if err != nil {
		return "", err
	}
	b.execReady = true
	return name, nil
}

// removeContainer removes a helper container, whatever happened.
func (b *Backend) removeContainer(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := b.cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
		b.log.Warn("swarm: removing a helper container", "container", id, "err", err)
	}
}
