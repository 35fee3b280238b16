package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/forgexec"
)

// LabelExec labels the volumes that hold a forgexec binary, with its
// digest.
const LabelExec = "forge.exec"

// execVolume returns the volume holding the forgexec binary, filling it
// the first time: forge-exec-DIGEST, named after the binary's content so
// that every job of every server with the same binary shares it, and a
// new binary gets a new volume. It is filled through a container that is
// created (from image, which the engine has) and never started, then
// removed; once the binary is in place, jobs mount the volume read-only.
func (b *Backend) execVolume(ctx context.Context, image string) (string, error) {
	b.execMu.Lock()
	defer b.execMu.Unlock()
	if b.execSum == "" {
		sum, err := fileDigest(b.opts.Forgexec)
		if err != nil {
			return "", forge.WrapError(forge.EINTERNAL, err, "cannot read the forgexec binary "+b.opts.Forgexec)
		}
		b.execSum = sum
	}
	name := "forge-exec-" + b.execSum[:16]
	if b.execReady[name] {
		return name, nil
	}
	if _, err := b.cli.VolumeCreate(ctx, client.VolumeCreateOptions{Name: name, Labels: map[string]string{LabelExec: b.execSum}}); err != nil {
		return "", engineError(err, "cannot create the forgexec volume")
	}
	created, err := b.cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config: &container.Config{Image: image, Entrypoint: []string{forgexec.Bin}, Cmd: []string{},
			Labels: map[string]string{LabelScope: b.opts.Scope, LabelRole: "exec-fill"}},
		HostConfig: &container.HostConfig{Mounts: []mount.Mount{
			{Type: mount.TypeVolume, Source: name, Target: forgexec.BinDir, VolumeOptions: &mount.VolumeOptions{NoCopy: true}},
		}},
	})
	if err != nil {
		return "", engineError(err, "cannot create a container to fill the forgexec volume")
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = b.cli.ContainerRemove(rctx, created.ID, client.ContainerRemoveOptions{Force: true})
	}()
	// Another server with the same binary may have filled it already:
	// the marker, written after the binary, says it is complete and
	// closed. (A binary of the full size may still be open for writing,
	// and a job that runs it then fails with "text file busy".)
	if _, err := b.cli.ContainerStatPath(ctx, created.ID, client.ContainerStatPathOptions{Path: execMarker}); err == nil {
		b.execReady[name] = true
		return name, nil
	} else if !cerrdefs.IsNotFound(err) {
		return "", engineError(err, "cannot look into the forgexec volume")
	}
	content, err := binaryArchive(b.opts.Forgexec)
	if err != nil {
		return "", err
	}
	if _, err := b.cli.CopyToContainer(ctx, created.ID, client.CopyToContainerOptions{DestinationPath: forgexec.BinDir, Content: content}); err != nil {
		return "", engineError(err, "cannot copy forgexec into its volume")
	}
	b.execReady[name] = true
	return name, nil
}

// checkStatic refuses a forgexec binary that needs a dynamic loader: the
// job's image may have none (or another libc).
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return forge.WrapError(forge.EINVALID, err, fmt.Sprintf("forgexec %s is not a Linux binary", path))
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return forge.Errorf(forge.EINVALID,
				"forgexec %s is dynamically linked, so it cannot run in any image: build forge with CGO_ENABLED=0 (make build), or name a static forge binary as the docker backend's forgexec", path)
		}
	}
	return nil
}

// forgetExec makes the next job check the forgexec volume again.
func (b *Backend) forgetExec() {
	b.execMu.Lock()
	clear(b.execReady)
	b.execMu.Unlock()
}

// execMarker is an empty file the fill writes after the binary: the engine
// unpacks a tar in order, so once it exists the binary is whole and closed.
const execMarker = forgexec.Bin + ".complete"

// binaryArchive is a tar of the binary at path as "forgexec", mode 0755,
// then of the empty marker (execMarker).
func binaryArchive(path string) (io.Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, forge.WrapError(forge.EINTERNAL, err, "cannot read the forgexec binary")
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, forge.WrapError(forge.EINTERNAL, err, "cannot read the forgexec binary")
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: forgexec.Name, Mode: 0o755, Size: fi.Size(), ModTime: fi.ModTime(), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := io.Copy(tw, f); err != nil {
		return nil, forge.WrapError(forge.EINTERNAL, err, "cannot read the forgexec binary")
	}
	if err := tw.WriteHeader(&tar.Header{Name: forgexec.Name + ".complete", Mode: 0o644, ModTime: fi.ModTime(), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return &buf, nil
}

// fileDigest is the hex SHA-256 of the file at path.
func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
