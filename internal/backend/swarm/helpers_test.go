package swarm

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/dockertest"
	"github.com/forgeci/forge/internal/moby"
)

// The test images, built offline at test time from Debian's static
// busybox: one with a shell (busybox applets as symbolic links) and one
// without any shell (the bare busybox binary).
const (
	imageShell   = "forge-swarm-test-busybox:1"
	imageNoShell = "forge-swarm-test-noshell:1"
)

var (
	setupOnce sync.Once
	setupErr  error
	forgeBin  string // a static forge binary, run as forgexec
	// testScope keeps this run's things apart from any other's: the
	// janitor of one test run never removes another's.
	testScope = "test-" + randHex(4)
	testCli   *client.Client
)

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func TestMain(m *testing.M) {
	if os.Getenv(crashHelperEnv) != "" {
		os.Exit(crashHelper())
	}
	code := m.Run()
	if testCli != nil {
		// Whatever a failed test left in this run's scope, and the
		// forgexec volume of this run's binary.
		b := &Backend{cli: testCli, opts: Options{Scope: testScope}, log: discard()}
		if _, err := b.Clean(context.Background(), nil); err != nil {
			fmt.Fprintln(os.Stderr, "cleaning up:", err)
		}
		if sum, err := moby.FileDigest(forgeBin); err == nil {
			testCli.VolumeRemove(context.Background(), "forge-exec-"+sum[:16], client.VolumeRemoveOptions{Force: true})
		}
	}
	if forgeBin != "" {
		os.RemoveAll(filepath.Dir(forgeBin))
	}
	os.Exit(code)
}

// dockerEngine skips t without a Docker engine in an active swarm (fails under
// CI=true), and makes the forge binary and the test images once.
func dockerEngine(t testing.TB) *client.Client {
	t.Helper()
	setupOnce.Do(func() { setupErr = setup() })
	if setupErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("swarm backend tests need a Docker engine that manages a swarm: %v", setupErr)
		}
		t.Skipf("no Docker engine managing a swarm: %v", setupErr)
	}
	return testCli
}

func setup() error {
	cli, err := NewClient("", "", false)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b := &Backend{cli: cli, log: discard()}
	if err := b.Ping(ctx); err != nil {
		return err
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		return fmt.Errorf("the test images need Debian's busybox-static (/bin/busybox): %w", err)
	}
	// A binary of this process's own (dockertest.BuildForge), so that
	// its forgexec volume is too: with one build ID for every run, test
	// processes running at once (CI's packages, several checkouts) filled
	// one volume while another ran the binary in it ("text file busy"),
	// and each one's end removed it from under the others.
	bin, err := dockertest.BuildForge()
	if err != nil {
		return err
	}
	forgeBin = bin
	bctx, bcancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer bcancel()
	applets := []string{"sh", "echo", "cat", "sleep", "nc", "true", "false", "ls", "printf", "seq", "env", "kill",
		"ps", "wc", "yes", "head", "mkdir", "rm", "grep", "sed", "id", "pwd", "hostname", "test", "touch", "find",
		"wget", "date", "cut", "tr"}
	if err := buildImage(bctx, cli, imageShell, applets); err != nil {
		return err
	}
	if err := buildImage(bctx, cli, imageNoShell, nil); err != nil {
		return err
	}
	testCli = cli
	return nil
}

// buildImage builds tag FROM scratch with /bin/busybox and links to it
// for applets, unless the engine has it already.
func buildImage(ctx context.Context, cli *client.Client, tag string, applets []string) error {
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
		h.Size, h.ModTime = int64(len(data)), time.Unix(1, 0)
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

// newBackend returns a backend of this run's scope.
func newBackend(t testing.TB, opts Options) *Backend {
	t.Helper()
	dockerEngine(t)
	opts.Client = testCli
	opts.Scope = testScope
	opts.Forgexec = forgeBin
	if os.Getenv("FORGE_TEST_DEBUG") != "" && opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if opts.KillGrace == 0 {
		opts.KillGrace = 2 * time.Second
	}
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// spreadOptions are options that let jobs run on any node: forgexec
// bound from the node (this one's test binary), workspaces served on the
// address of the engine's gateway bridge, which tasks reach.
func spreadOptions(t testing.TB) Options {
	t.Helper()
	dockerEngine(t)
	res, err := testCli.NetworkInspect(context.Background(), "docker_gwbridge", client.NetworkInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var gw string
	for _, c := range res.Network.IPAM.Config {
		if c.Gateway.IsValid() && c.Gateway.Is4() {
			gw = c.Gateway.String()
		}
	}
	if gw == "" {
		t.Fatalf("the engine's bridge network has no IPv4 gateway: %+v", res.Network.IPAM)
	}
	return Options{NodeForgexec: forgeBin, SourceAddr: gw + ":0"}
}

// events records what a backend reports.
type events struct {
	mu  sync.Mutex
	all []forge.Event
	on  func(forge.Event)
}

func (r *events) Report(e forge.Event) {
	r.mu.Lock()
	if e.Line != nil {
		l := *e.Line
		e.Line = &l
	}
	r.all = append(r.all, e)
	on := r.on
	r.mu.Unlock()
	if on != nil {
		on(e)
	}
}

func (r *events) lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.all {
		if e.Type == forge.EventLine {
			out = append(out, e.Line.Text)
		}
	}
	return out
}

func (r *events) text() string { return strings.Join(r.lines(), "\n") }

func (r *events) ofType(typ forge.EventType) []forge.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []forge.Event
	for _, e := range r.all {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// waitFor returns a channel closed when a line containing s is reported.
func (r *events) waitFor(s string) <-chan struct{} {
	ch := make(chan struct{})
	var once sync.Once
	r.mu.Lock()
	defer r.mu.Unlock()
	prev := r.on
	r.on = func(e forge.Event) {
		if prev != nil {
			prev(e)
		}
		if e.Type == forge.EventLine && strings.Contains(e.Line.Text, s) {
			once.Do(func() { close(ch) })
		}
	}
	return ch
}

// leftovers lists what this run's scope still has for build.
func leftovers(t testing.TB, build string) []string {
	t.Helper()
	ctx := context.Background()
	f := client.Filters{}.Add("label", LabelScope+"="+testScope, LabelBuild+"="+build)
	var out []string
	ss, err := testCli.ServiceList(ctx, client.ServiceListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ss.Items {
		out = append(out, "service "+s.Spec.Name)
	}
	sec, err := testCli.SecretList(ctx, client.SecretListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sec.Items {
		out = append(out, "secret "+s.Spec.Name)
	}
	ns, err := testCli.NetworkList(ctx, client.NetworkListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns.Items {
		out = append(out, "network "+n.Name)
	}
	vs, err := testCli.VolumeList(ctx, client.VolumeListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs.Items {
		out = append(out, "volume "+v.Name)
	}
	cs, err := testCli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs.Items {
		out = append(out, "container "+c.ID[:12])
	}
	return out
}

// jobRun is a run of job for build, of acme/app's pull request of the
// same number (so that tests running at once supersede no one).
func jobRun(build string, job *forge.Job) *forge.JobRun {
	return &forge.JobRun{Job: job, BuildID: build, Attempt: 1, Env: map[string]string{
		"CI": "true", "FORGE_OWNER": "acme", "FORGE_REPO": "app", "FORGE_PULL_REQUEST": build,
		"FORGE_BUILD_ID": build,
	}}
}

// newBuild returns a build ID no other test uses.
func newBuild() string {
	buildMu.Lock()
	defer buildMu.Unlock()
	lastBuild++
	return fmt.Sprint(lastBuild)
}

var (
	buildMu   sync.Mutex
	lastBuild = time.Now().Unix() % 1e6 * 1000
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
