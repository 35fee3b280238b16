package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/forgexec"
)

// copyWorkspace fills the job's workspace volume (mounted at WorkspaceDir
// in the created container id) with the source: with ws.Clean the tree of
// ws.Dir's HEAD (git archive), else ws.Dir as it is.
func (b *Backend) copyWorkspace(ctx context.Context, id string, ws forge.Workspace) error {
	if ws.Dir == "" {
		return nil // a job without source: an empty workspace
	}
	dir, err := filepath.Abs(ws.Dir)
	if err != nil {
		return forge.WrapError(forge.EINVALID, err, "workspace "+ws.Dir)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return forge.Errorf(forge.EINVALID, "workspace %s is not a directory", ws.Dir)
	}
	pr, pw := io.Pipe()
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		var err error
		if ws.Clean {
			err = gitArchive(actx, dir, pw)
		} else {
			err = dirArchive(dir, pw)
		}
		pw.CloseWithError(err)
		done <- err
	}()
	_, cerr := b.cli.CopyToContainer(ctx, id, client.CopyToContainerOptions{
		DestinationPath: WorkspaceDir, Content: pr, CopyUIDGID: true,
	})
	pr.CloseWithError(errors.New("the copy ended"))
	cancel()
	aerr := <-done
	if aerr != nil && forge.ErrorCode(aerr) == forge.EINVALID {
		return aerr
	}
	if cerr != nil {
		return engineError(cerr, "cannot copy the source into the job's workspace")
	}
	if aerr != nil {
		return forge.WrapError(forge.EINTERNAL, aerr, "cannot pack the source of "+dir)
	}
	return nil
}

// gitArchive writes the tree of dir's HEAD commit as a tar to w.
func gitArchive(ctx context.Context, dir string, w io.Writer) error {
	cmd := exec.CommandContext(ctx, "git", "-C", dir, "archive", "--format=tar", "HEAD")
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return forge.WrapError(forge.EINVALID, err, fmt.Sprintf("a clean workspace needs a git repository with a commit: %s: %s", dir, strings.TrimSpace(stderr.String())))
	}
	return nil
}

// dirArchive writes the tree under dir as a tar to w: directories, regular
// files and symbolic links (sockets, devices and pipes are left out).
func dirArchive(dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		case fi.Mode().IsRegular(), fi.IsDir():
		default:
			return nil
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			_, err = io.CopyN(tw, f, hdr.Size)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// jobArchive is a tar holding the job file at forgexec.DefaultJobFile
// (relative to /), readable by its owner only.
func jobArchive(j *forgexec.Job) ([]byte, error) {
	data, err := json.Marshal(j)
	if err != nil {
		return nil, forge.WrapError(forge.EINTERNAL, err, "cannot encode the job")
	}
	name := strings.TrimPrefix(forgexec.DefaultJobFile, "/")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if d := filepath.Dir(name); d != "." {
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o700, Typeflag: tar.TypeDir}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
