package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/dockertest"
	"github.com/forgeci/forge/internal/moby"
)

const (
	imageShell   = dockertest.ImageShell
	imageNoShell = dockertest.ImageNoShell
)

var (
	testScope = "test-" + randHex(4)
	testCli   *client.Client
	forgeBin  string
	execSum   string
)

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testCli != nil {
		// Whatever a failed test left in this run's scope, and the
		// forgexec volume of this run's binary.
		b := &Backend{cli: testCli, opts: Options{Scope: testScope}}
		b.Clean(context.Background(), nil)
		dockertest.RemoveExecVolumes(testCli, forgeBin)
	}
	dockertest.Cleanup()
	os.Exit(code)
}

// engine skips t without a Docker engine (fails under CI=true).
func engine(t testing.TB) *client.Client {
	t.Helper()
	env := dockertest.Setup(t)
	if testCli == nil {
		testCli, forgeBin = env.Client, env.Forge
		sum, err := moby.FileDigest(forgeBin)
		if err != nil {
			t.Fatal(err)
		}
		execSum = sum
	}
	return testCli
}

// newBackend returns a backend of this run's scope.
func newBackend(t testing.TB, opts Options) *Backend {
	t.Helper()
	engine(t)
	opts.Client = testCli
	opts.Scope = testScope
	opts.Forgexec = forgeBin
	if opts.KillGrace == 0 {
		opts.KillGrace = 2 * time.Second
	}
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return b
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

func (r *events) steps() []forge.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []forge.Event
	for _, e := range r.all {
		if e.Type == forge.EventStepFinished {
			out = append(out, e)
		}
	}
	return out
}

// leftovers lists what this run's scope still has for build.
func leftovers(t testing.TB, build string) []string {
	t.Helper()
	return dockertest.Leftovers(t, testCli, LabelScope+"="+testScope, LabelBuild+"="+build)
}

func jobRun(build string, job *forge.Job) *forge.JobRun {
	return &forge.JobRun{Job: job, BuildID: build, Attempt: 1, Env: map[string]string{"CI": "true"}}
}
