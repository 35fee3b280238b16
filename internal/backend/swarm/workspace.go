package swarm

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/forgexec"
	"github.com/forgeci/forge/internal/moby"
)

// fillWorkspace copies the source of ws into volume vol through a
// container of image that is created, never started, and removed; the
// files belong to the user the job runs as. The removal goes on after
// the copy (on some storage drivers it takes a second), in a goroutine
// that a's cleanup waits for.
func (b *Backend) fillWorkspace(ctx context.Context, a *attempt, image, vol string, ws forge.Workspace) error {
	if ws.Dir == "" {
		return nil // a job without source gets an empty workspace
	}
	dir, err := filepath.Abs(ws.Dir)
	if err != nil {
		return forge.WrapError(forge.EINVALID, err, "workspace "+ws.Dir)
	}
	if err := checkDir(dir); err != nil {
		return err
	}
	created, err := b.cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config: &container.Config{Image: image, Entrypoint: []string{forgexec.Bin}, Cmd: []string{}, User: b.opts.User,
			Labels: map[string]string{LabelScope: b.opts.Scope, LabelRole: "workspace-fill"}},
		HostConfig: &container.HostConfig{Mounts: []mount.Mount{
			{Type: mount.TypeVolume, Source: vol, Target: WorkspaceDir},
		}},
	})
	if err != nil {
		return moby.EngineError(err, "cannot create a container to fill the job's workspace")
	}
	defer a.helpers.Go(func() { b.removeContainer(created.ID) })

	pr, pw := io.Pipe()
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	packed := make(chan error, 1)
	go func() {
		err := packSource(actx, dir, ws.Clean, pw)
		pw.CloseWithError(err)
		packed <- err
	}()
	_, cerr := b.cli.CopyToContainer(ctx, created.ID, client.CopyToContainerOptions{
		DestinationPath: WorkspaceDir, Content: pr, CopyUIDGID: true,
	})
	pr.CloseWithError(errors.New("the copy ended"))
	cancel()
	perr := <-packed
	switch {
	case perr != nil && forge.ErrorCode(perr) == forge.EINVALID:
		return perr
	case cerr != nil:
		return moby.EngineError(cerr, "cannot copy the source into the job's workspace")
	case perr != nil && !errors.Is(perr, context.Canceled):
		return forge.WrapError(forge.EINTERNAL, perr, "cannot pack the source of "+dir)
	}
	return nil
}

// packSource writes the source in dir as a tar to w: with clean the tree
// of its HEAD commit (what a fresh clone has), else the directory as it
// is.
func packSource(ctx context.Context, dir string, clean bool, w io.Writer) error {
	if !clean {
		return packDir(dir, w)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "git", "-C", dir, "archive", "--format=tar", "HEAD")
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "LC_ALL=C")
	cmd.Stdout, cmd.Stderr = w, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return forge.WrapError(forge.EINVALID, err,
			fmt.Sprintf("a clean workspace needs a git repository with a commit: %s: %s", dir, strings.TrimSpace(stderr.String())))
	}
	return nil
}

// packDir writes the tree under dir as a tar to w: directories, regular
// files and symbolic links as they are; sockets, devices and pipes left
// out. Owners are left to the copy (CopyUIDGID).
func packDir(dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		switch mode := fi.Mode(); {
		case mode&fs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		case !mode.IsRegular() && !mode.IsDir():
			return nil
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
