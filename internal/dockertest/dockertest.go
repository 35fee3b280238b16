// Package dockertest is the test support of the container backends: it
// finds the Docker engine (a test skips without one, and fails when
// CI=true), builds forge as a static binary to run as forgexec, and builds
// the test images offline, FROM scratch with Debian's static busybox: one
// with a shell (busybox applets linked under /bin) and one without any.
// Only tests import it.
package dockertest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// The test images.
const (
	ImageShell   = "forge-test-busybox:1"
	ImageNoShell = "forge-test-noshell:1"
)

// Env is what Setup makes.
type Env struct {
	Client *client.Client
	// Forge is a static forge binary, to run as forgexec.
	Forge string
}

var (
	once   sync.Once
	env    *Env
	envErr error
)

// Setup returns the engine's client, a static forge and the test images,
// made once per test process; it skips t when there is no engine, and
// fails it when CI=true.
func Setup(t testing.TB) *Env {
	t.Helper()
	once.Do(func() { env, envErr = setup() })
	if envErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the container backend tests need a Docker engine: %v", envErr)
		}
		t.Skipf("no Docker engine: %v", envErr)
	}
	return env
}

// Cleanup removes the static forge Setup built; call it from TestMain.
func Cleanup() {
	if env != nil && env.Forge != "" {
		os.RemoveAll(filepath.Dir(env.Forge))
	}
}

func setup() (*Env, error) {
	cli, err := client.New(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return nil, err
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		return nil, fmt.Errorf("the test images need Debian's busybox-static (/bin/busybox): %w", err)
	}
	bin, err := BuildForge()
	if err != nil {
		return nil, err
	}
	bctx, bcancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer bcancel()
	applets := []string{"sh", "echo", "cat", "sleep", "nc", "true", "false", "ls", "printf", "seq", "env", "kill",
		"ps", "wc", "yes", "head", "mkdir", "rm", "grep", "sed", "id", "pwd", "hostname", "test", "touch", "find", "wget", "tr"}
	if err := BuildImage(bctx, cli, ImageShell, applets); err != nil {
		return nil, err
	}
	if err := BuildImage(bctx, cli, ImageNoShell, nil); err != nil {
		return nil, err
	}
	return &Env{Client: cli, Forge: bin}, nil
}

// BuildForge builds forge as a static binary in a new temporary directory.
// Its version names this test process, so that its digest, and with it
// the forgexec volume the container backends fill from it, is this
// process's own: test packages running at once never fill one volume
// while another runs the binary in it.
func BuildForge() (string, error) {
	dir, err := os.MkdirTemp("", "forge-static-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "forge")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", fmt.Sprintf("-X main.version=dev-test-%d", os.Getpid()), "-o", bin, "github.com/forgeci/forge/cmd/forge")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("building a static forge: %v\n%s", err, out)
	}
	return bin, nil
}

// BuildImage builds tag FROM scratch with /bin/busybox, /tmp and links to
// busybox for applets, unless the engine has it already.
func BuildImage(ctx context.Context, cli *client.Client, tag string, applets []string) error {
	if _, err := cli.ImageInspect(ctx, tag); err == nil {
		return nil
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, data []byte) {
		h.Size = int64(len(data))
		h.ModTime = time.Unix(1, 0)
		tw.WriteHeader(h)
		tw.Write(data)
	}
	add(&tar.Header{Name: "Dockerfile", Mode: 0o644, Typeflag: tar.TypeReg}, []byte("FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\n"))
	add(&tar.Header{Name: "rootfs/", Mode: 0o755, Typeflag: tar.TypeDir}, nil)
	add(&tar.Header{Name: "rootfs/tmp/", Mode: 0o1777, Typeflag: tar.TypeDir}, nil)
	add(&tar.Header{Name: "rootfs/bin/", Mode: 0o755, Typeflag: tar.TypeDir}, nil)
	add(&tar.Header{Name: "rootfs/bin/busybox", Mode: 0o755, Typeflag: tar.TypeReg}, bb)
	for _, a := range applets {
		add(&tar.Header{Name: "rootfs/bin/" + a, Linkname: "busybox", Mode: 0o777, Typeflag: tar.TypeSymlink}, nil)
	}
	tw.Close()
	res, err := cli.ImageBuild(ctx, &buf, client.ImageBuildOptions{Tags: []string{tag}, Remove: true, ForceRemove: true})
	if err != nil {
		return fmt.Errorf("building %s: %w", tag, err)
	}
	out, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if _, err := cli.ImageInspect(ctx, tag); err != nil {
		return fmt.Errorf("building %s: %s", tag, out)
	}
	return nil
}

// Leftovers lists the containers, networks and volumes that carry every
// one of labels ("key=value").
func Leftovers(t testing.TB, cli *client.Client, labels ...string) []string {
	t.Helper()
	ctx := context.Background()
	f := client.Filters{}
	for _, l := range labels {
		f = f.Add("label", l)
	}
	var out []string
	cs, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs.Items {
		out = append(out, "container "+c.Names[0])
	}
	ns, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns.Items {
		out = append(out, "network "+n.Name)
	}
	vs, err := cli.VolumeList(ctx, client.VolumeListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs.Items {
		out = append(out, "volume "+v.Name)
	}
	return out
}

// RemoveExecVolumes removes the volumes the docker backend filled with
// the forgexec binary bin (label forge.exec=SHA256 of bin, as
// internal/backend/docker names them), so that a test run leaves nothing
// labelled by forge.
func RemoveExecVolumes(cli *client.Client, bin string) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return
	}
	sum := sha256.Sum256(data)
	ctx := context.Background()
	vs, err := cli.VolumeList(ctx, client.VolumeListOptions{Filters: client.Filters{}.Add("label", "forge.exec="+hex.EncodeToString(sum[:]))})
	if err != nil {
		return
	}
	for _, v := range vs.Items {
		cli.VolumeRemove(ctx, v.Name, client.VolumeRemoveOptions{Force: true})
	}
}
