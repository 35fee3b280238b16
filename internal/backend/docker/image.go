package docker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/moby"
)

// imageUser returns the user image runs as ("" for root), pulling it
// first if the engine does not have it (see ensureImage).
func (b *Backend) imageUser(ctx context.Context, image string) (string, error) {
	res, err := b.cli.ImageInspect(ctx, image)
	if cerrdefs.IsNotFound(err) {
		if err := b.ensureImage(ctx, image); err != nil {
			return "", err
		}
		res, err = b.cli.ImageInspect(ctx, image)
	}
	if err != nil {
		return "", moby.EngineError(err, "cannot look up image "+image)
	}
	if res.Config == nil {
		return "", nil
	}
	return res.Config.User, nil
}

// ensureImage makes sure the engine has image: used as it is when present,
// else pulled with the credentials of its registry. A pull that fails is
// an error naming the image.
func (b *Backend) ensureImage(ctx context.Context, image string) error {
	if _, err := b.cli.ImageInspect(ctx, image); err == nil {
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return moby.EngineError(err, "cannot look up image "+image)
	}
	// One pull of an image at a time: the others wait for it.
	mu, _ := b.pulls.LoadOrStore(image, new(sync.Mutex))
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	if _, err := b.cli.ImageInspect(ctx, image); err == nil {
		return nil
	}
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return forge.WrapError(forge.EINVALID, err, fmt.Sprintf("image %q is not a valid image reference", image))
	}
	opts := client.ImagePullOptions{}
	host := reference.Domain(named)
	if auth, ok := b.registryAuth(host); ok {
		buf, _ := json.Marshal(registry.AuthConfig{Username: auth.Username, Password: auth.Password, ServerAddress: host})
		opts.RegistryAuth = base64.URLEncoding.EncodeToString(buf)
	}
	pctx, cancel := context.WithTimeout(ctx, b.opts.PullTimeout)
	defer cancel()
	ref := reference.TagNameOnly(named).String()
	resp, err := b.cli.ImagePull(pctx, ref, opts)
	if err == nil {
		err = resp.Wait(pctx)
		resp.Close()
	}
	if err != nil {
		if ctx.Err() != nil {
			return forge.WrapError(forge.ECANCELED, err, "pulling image "+image+" was cancelled")
		}
		if pctx.Err() != nil {
			return forge.Errorf(forge.ETIMEOUT, "cannot pull image %s: no answer within %s", image, b.opts.PullTimeout)
		}
		return forge.WrapError(forge.EINVALID, err, fmt.Sprintf("cannot pull image %s: %s", image, firstLine(err.Error())))
	}
	return nil
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

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
