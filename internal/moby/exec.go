package moby

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

// ExecMarker is an empty file the fill writes after the binary: the engine
// unpacks a tar in order, so once it exists the binary is whole and closed.
const ExecMarker = forgexec.Bin + ".complete"

// ExecVolumeName is the forgexec volume of the binary whose SHA-256 is
// sum: forge-exec-DIGEST, named after the binary's content so that every
// job of every server (docker or swarm backend) with the same binary
// shares it, and a new binary gets a new volume.
func ExecVolumeName(sum string) string { return "forge-exec-" + sum[:16] }

// FillExecVolume creates the volume ExecVolumeName(sum) if it is new and
// puts the binary at path in it unless it is complete already. It fills
// it through a container of image (which the engine has) that is created
// with labels, never started, and removed. Jobs then mount it read-only
// at forgexec.BinDir.
//
// One filler at a time writes a volume: the fill container is named
// ExecVolumeName(sum)+"-fill", and the engine refuses a second container
// of that name. The others wait for the marker. (Two servers, or two test
// processes, that both found no marker and both copied made a job of the
// first that ran the binary while the second rewrote it fail with "text
// file busy".) A fill container older than fillStale was left by a filler
// that died, and is removed.
func FillExecVolume(ctx context.Context, cli *client.Client, path, sum, image string, labels map[string]string) (string, error) {
	name := ExecVolumeName(sum)
	if _, err := cli.VolumeCreate(ctx, client.VolumeCreateOptions{Name: name, Labels: map[string]string{LabelExec: sum}}); err != nil {
		return "", EngineError(err, "cannot create the forgexec volume")
	}
	lock := name + "-fill"
	var created client.ContainerCreateResult
	for pause := 50 * time.Millisecond; ; pause = min(2*pause, time.Second) {
		var err error
		created, err = cli.ContainerCreate(ctx, client.ContainerCreateOptions{
			Name:   lock,
			Config: &container.Config{Image: image, Entrypoint: []string{forgexec.Bin}, Cmd: []string{}, Labels: labels},
			HostConfig: &container.HostConfig{Mounts: []mount.Mount{
				{Type: mount.TypeVolume, Source: name, Target: forgexec.BinDir, VolumeOptions: &mount.VolumeOptions{NoCopy: true}},
			}},
		})
		if err == nil {
			break
		}
		if !cerrdefs.IsConflict(err) {
			return "", EngineError(err, "cannot create a container to fill the forgexec volume")
		}
		// Another filler holds the volume: its fill container mounts it,
		// so the marker is seen through it.
		if _, err := cli.ContainerStatPath(ctx, lock, client.ContainerStatPathOptions{Path: ExecMarker}); err == nil {
			return name, nil
		}
		if in, err := cli.ContainerInspect(ctx, lock, client.ContainerInspectOptions{}); err == nil {
			if at, err := time.Parse(time.RFC3339Nano, in.Container.Created); err == nil && time.Since(at) > fillStale {
				_, _ = cli.ContainerRemove(ctx, lock, client.ContainerRemoveOptions{Force: true})
			}
		}
		select {
		case <-ctx.Done():
			return "", EngineError(ctx.Err(), "waiting for another server to fill the forgexec volume")
		case <-time.After(pause):
		}
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = cli.ContainerRemove(rctx, created.ID, client.ContainerRemoveOptions{Force: true})
	}()
	// Another server with the same binary may have filled it already:
	// the marker, written after the binary, says it is complete and
	// closed. (A binary of the full size may still be open for writing,
	// and a job that runs it then fails with "text file busy".)
	if _, err := cli.ContainerStatPath(ctx, created.ID, client.ContainerStatPathOptions{Path: ExecMarker}); err == nil {
		return name, nil
	} else if !cerrdefs.IsNotFound(err) {
		return "", EngineError(err, "cannot look into the forgexec volume")
	}
	content, err := BinaryArchive(path)
	if err != nil {
		return "", err
	}
	if _, err := cli.CopyToContainer(ctx, created.ID, client.CopyToContainerOptions{DestinationPath: forgexec.BinDir, Content: content}); err != nil {
		return "", EngineError(err, "cannot copy forgexec into its volume")
	}
	return name, nil
}

// fillStale is how old a volume's fill container is when its filler is
// taken for dead: a fill copies one binary of tens of megabytes.
const fillStale = 5 * time.Minute

// CheckStatic refuses a forgexec binary that needs a dynamic loader: the
// job's image may have none (or another libc).
func CheckStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return forge.WrapError(forge.EINVALID, err, fmt.Sprintf("forgexec %s is not a Linux binary", path))
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return forge.Errorf(forge.EINVALID,
				"forgexec %s is dynamically linked, so it cannot run in any image: build forge with CGO_ENABLED=0 (make build), or name a static forge binary as the backend's forgexec", path)
		}
	}
	return nil
}

// BinaryArchive is a tar of the binary at path as forgexec.Name, mode
// 0755, then of the empty marker (ExecMarker).
func BinaryArchive(path string) (io.Reader, error) {
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

// FileDigest is the hex SHA-256 of the file at path.
func FileDigest(path string) (string, error) {
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
