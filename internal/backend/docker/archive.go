package docker

import (
	"archive/tar"
	"bytes"
	"context"
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

// feed writes the job and its source to the attached stdin of the job's
// container (forgexec.WriteStdin), then closes it: the source of ws.Dir as
// it is, or with ws.Clean the tree of its HEAD (git archive); none without
// a Dir. forgexec unpacks it as the container's user into the workspace.
func (b *Backend) feed(ctx context.Context, att client.HijackedResponse, job *forgexec.Job, ws forge.Workspace) error {
	defer att.CloseWrite()
	dir := ""
	if ws.Dir != "" {
		var err error
		if dir, err = filepath.Abs(ws.Dir); err != nil {
			return forge.WrapError(forge.EINVALID, err, "workspace "+ws.Dir)
		}
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return forge.Errorf(forge.EINVALID, "workspace %s is not a directory", ws.Dir)
		}
	}
	err := forgexec.WriteStdin(att.Conn, job, func(tw *tar.Writer) error {
		switch {
		case dir == "":
			return nil
		case ws.Clean:
			return gitArchive(ctx, dir, tw, "")
		}
		return dirArchive(dir, tw, "")
	})
	if err != nil && forge.ErrorCode(err) != forge.EINVALID {
		err = forge.WrapError(forge.EINTERNAL, err, "cannot send the job and its source")
	}
	return err
}

// gitArchive adds the tree of dir's HEAD commit to tw, under prefix.
func gitArchive(ctx context.Context, dir string, tw *tar.Writer, prefix string) error {
	cmd := exec.CommandContext(ctx, "git", "-C", dir, "archive", "--format=tar", "HEAD")
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return forge.WrapError(forge.EINVALID, err, "a clean workspace needs git")
	}
	cerr := copyTar(tw, out, prefix)
	if cerr != nil {
		io.Copy(io.Discard, out)
	}
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return forge.WrapError(forge.EINVALID, err, fmt.Sprintf("a clean workspace needs a git repository with a commit: %s: %s", dir, strings.TrimSpace(stderr.String())))
	}
	return cerr
}

// copyTar adds the entries of the tar r to tw, under prefix.
func copyTar(tw *tar.Writer, r io.Reader, prefix string) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue // git's commit id
		}
		hdr.Name = prefix + hdr.Name
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
}

// dirArchive adds the tree under dir to tw, under prefix: directories,
// regular files and symbolic links (sockets, devices and pipes are left
// out).
func dirArchive(dir string, tw *tar.Writer, prefix string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
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
		hdr.Name = prefix + filepath.ToSlash(rel)
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
}
