package moby

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"

	"github.com/forgeci/forge/internal/dockertest"
	"github.com/forgeci/forge/internal/forgexec"
	"github.com/forgeci/forge/internal/testwait"
)

// TestFillWaitsForAnotherFiller: a server that finds another filling the
// forgexec volume (its fill container exists, the marker not yet) waits
// for the marker and does not write the binary again. Two that both
// wrote it made a job of the first, which ran the binary while the second
// rewrote it, fail with "text file busy" (swarm's TestPass under load).
func TestFillWaitsForAnotherFiller(t *testing.T) {
	env := dockertest.Setup(t)
	cli := env.Client
	ctx := context.Background()
	sum := fmt.Sprintf("%064x", time.Now().UnixNano()) // a volume of this test's own
	name := ExecVolumeName(sum)
	t.Cleanup(func() {
		_, _ = cli.ContainerRemove(context.Background(), name+"-fill", client.ContainerRemoveOptions{Force: true})
		_, _ = cli.VolumeRemove(context.Background(), name, client.VolumeRemoveOptions{Force: true})
	})
	if _, err := cli.VolumeCreate(ctx, client.VolumeCreateOptions{Name: name}); err != nil {
		t.Fatal(err)
	}
	// The other filler has written its binary, not yet the marker.
	other, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:   name + "-fill",
		Config: &container.Config{Image: dockertest.ImageShell, Entrypoint: []string{forgexec.Bin}},
		HostConfig: &container.HostConfig{Mounts: []mount.Mount{
			{Type: mount.TypeVolume, Source: name, Target: forgexec.BinDir, VolumeOptions: &mount.VolumeOptions{NoCopy: true}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	put := func(file, content string) {
		t.Helper()
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		_ = tw.WriteHeader(&tar.Header{Name: file, Mode: 0o755, Size: int64(len(content)), Typeflag: tar.TypeReg})
		_, _ = tw.Write([]byte(content))
		_ = tw.Close()
		if _, err := cli.CopyToContainer(ctx, other.ID, client.CopyToContainerOptions{DestinationPath: forgexec.BinDir, Content: &buf}); err != nil {
			t.Fatal(err)
		}
	}
	put(forgexec.Name, "the other filler's binary")

	done := make(chan error, 1)
	go func() {
		_, err := FillExecVolume(ctx, cli, env.Forge, sum, dockertest.ImageShell, nil)
		done <- err
	}()
	// Nothing it can see lets it finish before the marker: a second of
	// quiet is the chance for a fill that does not wait to show.
	select {
	case err := <-done:
		t.Fatalf("the fill returned (%v) while another filler had not written the marker", err)
	case <-time.After(time.Second):
	}
	put(forgexec.Name+".complete", "")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("fill: %v", err)
		}
	case <-time.After(testwait.Scale(time.Minute)):
		t.Fatal("the fill still waits after the other filler's marker")
	}
	res, err := cli.CopyFromContainer(ctx, other.ID, client.CopyFromContainerOptions{SourcePath: forgexec.Bin})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Content.Close()
	tr := tar.NewReader(res.Content)
	if _, err := tr.Next(); err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(tr)
	if string(got) != "the other filler's binary" {
		t.Errorf("the volume's binary has %d bytes, not the other filler's: it was written again", len(got))
	}
}
