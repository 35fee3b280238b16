package docker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

func TestPassAndFail(t *testing.T) {
	b := newBackend(t, Options{})
	build := "pass-" + randHex(3)
	rec := &events{}
	st, err := b.Run(t.Context(), jobRun(build, &forge.Job{Name: "j", Image: imageShell, Steps: []forge.Step{
		{Name: "a", Run: "echo hello; echo \"ws=$FORGE_WORKSPACE ci=$CI pwd=$(pwd)\""},
		{Name: "b", Run: "exit 3"},
		{Name: "c", Run: "echo never"},
	}}), rec)
	if st != forge.StatusFailure || err != nil {
		t.Fatalf("got %s, %v; want failure", st, err)
	}
	if got, want := rec.lines(), []string{"hello", "ws=/workspace ci=true pwd=/workspace"}; !slices.Equal(got, want) {
		t.Errorf("lines: got %q, want %q", got, want)
	}
	fin := rec.steps()
	if len(fin) != 3 || fin[0].Status != forge.StatusSuccess || fin[1].ExitCode != 3 || fin[2].Status != forge.StatusSkipped {
		t.Errorf("steps: %+v", fin)
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

func TestTimeoutAndCancel(t *testing.T) {
	b := newBackend(t, Options{KillGrace: time.Second})
	t.Run("step timeout", func(t *testing.T) {
		build := "tmo-" + randHex(3)
		rec := &events{}
		st, err := b.Run(t.Context(), jobRun(build, &forge.Job{Name: "j", Image: imageShell, Steps: []forge.Step{
			{Run: "sleep 30", Timeout: 500 * time.Millisecond}, {Run: "echo never"}}}), rec)
		fin := rec.steps()
		if st != forge.StatusFailure || err != nil || len(fin) != 2 || fin[0].Message != "timed out after 500ms" {
			t.Errorf("got %s %v %+v; want failure, timed out after 500ms", st, err, fin)
		}
		if left := leftovers(t, build); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
	t.Run("job deadline", func(t *testing.T) {
		build := "dl-" + randHex(3)
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		rec := &events{}
		start := time.Now()
		st, err := b.Run(ctx, jobRun(build, &forge.Job{Name: "j", Image: imageShell, Steps: []forge.Step{{Run: "echo started; sleep 60"}}}), rec)
		fin := rec.steps()
		if st != forge.StatusFailure || err != nil || len(fin) != 1 || fin[0].Message != "the job timed out" {
			t.Errorf("got %s %v %+v; want failure, the job timed out", st, err, fin)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("took %v", d)
		}
	})
	t.Run("cancel mid-step", func(t *testing.T) {
		build := "cancel-" + randHex(3)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		rec := &events{on: func(e forge.Event) {
			if e.Type == forge.EventLine && e.Line.Text == "running" {
				cancel()
			}
		}}
		st, err := b.Run(ctx, jobRun(build, &forge.Job{Name: "j", Image: imageShell, Steps: []forge.Step{
			{Run: "trap 'echo got TERM; exit 143' TERM; echo running; while :; do sleep 0.1; done"}, {Run: "echo never"}},
			Services: []forge.Service{{Name: "side", Image: imageShell, Command: []string{"sleep", "600"}}}}), rec)
		fin := rec.steps()
		if st != forge.StatusCanceled || err != nil || len(fin) != 2 || fin[0].Status != forge.StatusCanceled || fin[1].Status != forge.StatusSkipped {
			t.Errorf("got %s %v %+v; want canceled", st, err, fin)
		}
		if got := rec.lines(); !slices.Contains(got, "got TERM") {
			t.Errorf("lines %q: the step did not get SIGTERM first", got)
		}
		if left := leftovers(t, build); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
}

func TestSidecarAndPorts(t *testing.T) {
	b := newBackend(t, Options{})
	build := "svc-" + randHex(3)
	port := freePort(t)
	rec := &events{}
	got := make(chan string, 1)
	rec.on = func(e forge.Event) {
		if e.Type == forge.EventLine && e.Line.Text == "listening" {
			// The job's published port, reached from the host.
			go func() {
				var text string
				for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
					c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
					if err != nil {
						continue
					}
					c.SetDeadline(time.Now().Add(5 * time.Second))
					buf, _ := io.ReadAll(c)
					c.Close()
					if text = strings.TrimSpace(string(buf)); text != "" {
						break
					}
				}
				got <- text
			}()
		}
	}
	st, err := b.Run(t.Context(), jobRun(build, &forge.Job{Name: "j", Image: imageShell,
		Ports: []forge.Port{{Published: port, Target: 8080}},
		Services: []forge.Service{{Name: "db", Image: imageShell, Environment: map[string]string{"ANSWER": "pong"},
			Command: []string{"sh", "-c", "while :; do echo $ANSWER | nc -l -p 5432; done"}}},
		Steps: []forge.Step{
			{Name: "sidecar", Run: "for i in $(seq 100); do r=$(nc db 5432 </dev/null) && [ -n \"$r\" ] && break; sleep 0.2; done; echo \"db says $r\""},
			{Name: "serve", Run: "echo listening; echo hello-host | nc -l -p 8080"},
		}}), rec)
	if st != forge.StatusSuccess || err != nil {
		t.Fatalf("got %s, %v; lines %q", st, err, rec.lines())
	}
	if lines := rec.lines(); !slices.Contains(lines, "db says pong") {
		t.Errorf("lines %q: the sidecar was not reached by its name", lines)
	}
	if text := <-got; text != "hello-host" {
		t.Errorf("from the published port: got %q, want hello-host", text)
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// A step that prints forgexec's frames, even complete ones, changes
// nothing but its own lines.
func TestFakeStepBoundary(t *testing.T) {
	b := newBackend(t, Options{})
	fake := `@0123456789abcdef E60:{"type":"job_finished","status":"success","step":0,"exit_code":0}`
	rec := &events{}
	st, err := b.Run(t.Context(), jobRun("fake-"+randHex(3), &forge.Job{Name: "j", Image: imageShell, Steps: []forge.Step{
		{Run: "printf '%s\\n' '" + fake + "'; printf 'E2:{} L0,1,0,o,1:x\\n'; cat /proc/1/environ 2>/dev/null || echo no environ; (echo x > /proc/1/fd/1) 2>/dev/null || echo no fd; exit 7"},
	}}), rec)
	if st != forge.StatusFailure || err != nil {
		t.Fatalf("got %s %v, want failure (exit 7)", st, err)
	}
	want := []string{fake, "E2:{} L0,1,0,o,1:x", "no environ", "no fd"}
	if got := rec.lines(); !slices.Equal(got, want) {
		t.Errorf("lines:\n got %q\nwant %q", got, want)
	}
	if fin := rec.steps(); len(fin) != 1 || fin[0].ExitCode != 7 {
		t.Errorf("steps: %+v", fin)
	}
}

// An image without any shell runs steps given as arguments; a shell step
// there fails with a clear message.
func TestImageWithoutShell(t *testing.T) {
	b := newBackend(t, Options{})
	rec := &events{}
	st, err := b.Run(t.Context(), jobRun("noshell-"+randHex(3), &forge.Job{Name: "j", Image: imageNoShell, Steps: []forge.Step{
		{Args: []string{"/bin/busybox", "echo", "no shell needed"}},
		{Args: []string{"busybox", "ls", "/bin"}},
		{Run: "echo needs a shell"},
	}}), rec)
	if st != forge.StatusError || err == nil || !strings.Contains(err.Error(), "shell /bin/sh not found") {
		t.Errorf("got %s %v; want error: shell /bin/sh not found", st, err)
	}
	if got, want := rec.lines(), []string{"no shell needed", "busybox"}; !slices.Equal(got, want) {
		t.Errorf("lines: got %q, want %q", got, want)
	}
}

func TestMissingImageFailsFast(t *testing.T) {
	b := newBackend(t, Options{PullTimeout: time.Minute})
	build := "noimg-" + randHex(3)
	start := time.Now()
	img := "forge-test-does-not-exist-" + randHex(4) + ":v1"
	st, err := b.Run(t.Context(), jobRun(build, &forge.Job{Name: "j", Image: img, Steps: []forge.Step{{Run: "true"}}}), &events{})
	if st != forge.StatusError || err == nil || !strings.Contains(err.Error(), "cannot pull image "+img) {
		t.Errorf("got %s %v; want an error naming the image", st, err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("took %v to fail", d)
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	st, err = b.Run(t.Context(), jobRun(build, &forge.Job{Name: "j", Steps: []forge.Step{{Run: "true"}}}), &events{})
	if st != forge.StatusError || forge.ErrorCode(err) != forge.EINVALID || !strings.Contains(err.Error(), "job j has no image") {
		t.Errorf("no image: got %s %v", st, err)
	}
}

// Workspaces: the checkout as it is, or its HEAD commit with Clean; the
// secrets masked.
func TestWorkspaceAndSecrets(t *testing.T) {
	b := newBackend(t, Options{})
	dir := t.TempDir()
	git := func(args ...string) {
		cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@t"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git("init", "-q")
	os.WriteFile(filepath.Join(dir, "committed.txt"), []byte("from the commit\n"), 0o644)
	git("add", ".")
	git("commit", "-qm", "c")
	os.WriteFile(filepath.Join(dir, "dirty.txt"), []byte("not committed\n"), 0o644)
	for _, clean := range []bool{false, true} {
		rec := &events{}
		run := jobRun("ws-"+randHex(3), &forge.Job{Name: "j", Image: imageShell, Steps: []forge.Step{
			{Run: "cat *.txt; echo token=$TOKEN; touch new"}}})
		run.Workspace = forge.Workspace{Dir: dir, Clean: clean}
		run.Secrets = map[string]string{"TOKEN": "hunter2-secret"}
		st, err := b.Run(t.Context(), run, rec)
		want := []string{"from the commit", "not committed", "token=***"}
		if clean {
			want = []string{"from the commit", "token=***"}
		}
		if got := rec.lines(); st != forge.StatusSuccess || err != nil || !slices.Equal(got, want) {
			t.Errorf("clean=%v: got %s %v %q, want %q", clean, st, err, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "new")); err == nil {
		t.Error("a file the job wrote came back into the checkout")
	}
}

// Attach takes over a running attempt: lines above from only, then the
// result, then nothing left.
func TestAttach(t *testing.T) {
	b := newBackend(t, Options{})
	build := "attach-" + randHex(3)
	run := jobRun(build, &forge.Job{Name: "j", Image: imageShell, Steps: []forge.Step{
		{Run: "for i in $(seq 5); do echo line $i; done; sleep 1"}, {Run: "echo after; exit 4"}}})
	a := &attempt{h: handle{V: 1, KillGrace: int64(time.Second)}}
	if _, err := b.start(t.Context(), run, a); err != nil {
		b.cleanup(a)
		t.Fatal(err)
	}
	// This server "dies": the job goes on without it.
	if err := <-a.feed; err != nil {
		t.Fatal(err)
	}
	a.stream.Close()
	hb, _ := json.Marshal(a.h)
	rec := &events{}
	st, err := b.Attach(t.Context(), hb, 3, rec)
	if st != forge.StatusFailure || err != nil {
		t.Fatalf("got %s %v, want failure", st, err)
	}
	if got, want := rec.lines(), []string{"line 4", "line 5", "after"}; !slices.Equal(got, want) {
		t.Errorf("lines: got %q, want %q", got, want)
	}
	if fin := rec.steps(); len(fin) != 2 || fin[1].ExitCode != 4 {
		t.Errorf("steps: %+v", fin)
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	// Gone now.
	if _, err := b.Attach(t.Context(), hb, 0, rec); forge.ErrorCode(err) != forge.ENOTFOUND {
		t.Errorf("attach to a removed job: got %v, want not_found", err)
	}
	if _, err := b.Attach(t.Context(), []byte(`{"v":9}`), 0, rec); forge.ErrorCode(err) != forge.EINVALID {
		t.Errorf("a foreign handle: got %v, want invalid", err)
	}
}

// The janitor removes what a crashed server left, in its scope, except
// the builds still running.
func TestJanitor(t *testing.T) {
	b := newBackend(t, Options{})
	deadBuild, liveBuild := "jan-dead-"+randHex(3), "jan-live-"+randHex(3)
	var live *attempt
	for _, build := range []string{deadBuild, liveBuild} {
		a := &attempt{h: handle{V: 1}}
		run := jobRun(build, &forge.Job{Name: "j", Image: imageShell, Steps: []forge.Step{{Run: "sleep 600"}},
			Services: []forge.Service{{Name: "s", Image: imageShell, Command: []string{"sleep", "600"}}}})
		if _, err := b.start(t.Context(), run, a); err != nil {
			b.cleanup(a)
			t.Fatal(err)
		}
		<-a.feed
		a.stream.Close()
		if build == liveBuild {
			live = a
		}
	}
	defer b.cleanup(live)
	if left := leftovers(t, deadBuild); len(left) != 4 {
		t.Fatalf("the dead build has %v, want its job, service, network and workspace volume", left)
	}
	// The job's container takes its workspace volume with it.
	n, err := b.Clean(t.Context(), func(id string) bool { return id == liveBuild })
	if err != nil || n != 3 {
		t.Errorf("Clean: %d, %v; want 3 things removed (2 containers, a network)", n, err)
	}
	if left := leftovers(t, deadBuild); len(left) > 0 {
		t.Errorf("left of the dead build: %v", left)
	}
	if left := leftovers(t, liveBuild); len(left) != 4 {
		t.Errorf("of the live build: %v, want its 4 things kept", left)
	}
}

// The spec's user runs the steps, and owns the workspace.
func TestUser(t *testing.T) {
	b := newBackend(t, Options{User: "4321"})
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "src.txt"), []byte("source\n"), 0o644)
	for _, tt := range []struct{ user, want string }{{"1234:1234", "1234 1234"}, {"", "4321 0"}} {
		rec := &events{}
		run := jobRun("user-"+randHex(3), &forge.Job{Name: "j", Image: imageShell, User: tt.user, Steps: []forge.Step{
			{Run: "echo $(id -u) $(id -g); touch made-here; cat src.txt"}}})
		run.Workspace = forge.Workspace{Dir: dir}
		st, err := b.Run(t.Context(), run, rec)
		if got := rec.lines(); st != forge.StatusSuccess || err != nil || !slices.Equal(got, []string{tt.want, "source"}) {
			t.Errorf("user %q: got %s %v %q, want %q", tt.user, st, err, got, tt.want)
		}
	}
}
