package swarm

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/engine"
	"github.com/forgeci/forge/internal/spec"
)

func TestPass(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{})
	ws := t.TempDir()
	if err := os.WriteFile(filepath.Join(ws, "hello.txt"), []byte("from the checkout\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	build := newBuild()
	run := jobRun(build, &forge.Job{Name: "test", Image: imageShell, Steps: []forge.Step{
		{Name: "one", Run: "echo one; cat hello.txt; echo err >&2"},
		{Name: "two", Run: `echo "two in $PWD as $FORGE_WORKSPACE, CI=$CI"`},
	}})
	run.Workspace = forge.Workspace{Dir: ws}
	var rep events
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := b.Run(ctx, run, &rep)
	if err != nil || st != forge.StatusSuccess {
		t.Fatalf("Run = %s, %v; want success\n%s", st, err, rep.text())
	}
	want := []string{"one", "from the checkout", "err", "two in /workspace as /workspace, CI=true"}
	if got := rep.lines(); !slices.Equal(got, want) {
		t.Errorf("lines = %q, want %q", got, want)
	}
	if h := rep.ofType(forge.EventJobHandle); len(h) != 1 || len(h[0].Handle) == 0 {
		t.Errorf("handle events = %d, want 1 with a handle", len(h))
	}
	fin := rep.ofType(forge.EventStepFinished)
	if len(fin) != 2 || fin[0].Status != forge.StatusSuccess || fin[1].Status != forge.StatusSuccess {
		t.Errorf("step_finished events = %+v, want 2 successes", fin)
	}
	for i, l := range rep.ofType(forge.EventLine) {
		if l.Line.Number != i+1 {
			t.Errorf("line %d has number %d", i+1, l.Line.Number)
		}
		if (l.Line.Text == "err") != (l.Line.Stream == forge.Stderr) {
			t.Errorf("line %q on %s", l.Line.Text, l.Line.Stream)
		}
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left after the job: %s", strings.Join(left, ", "))
	}
}

// run runs job for a new build with a 2-minute bound and returns what
// happened.
func run(t *testing.T, b *Backend, job *forge.Job) (string, forge.Status, error, *events) {
	t.Helper()
	build := newBuild()
	var rep events
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := b.Run(ctx, jobRun(build, job), &rep)
	return build, st, err, &rep
}

func TestFail(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{})
	build, st, err, rep := run(t, b, &forge.Job{Name: "fail", Image: imageShell, Steps: []forge.Step{
		{Name: "ok", Run: "echo fine"},
		{Name: "bad", Run: "echo failing; exit 3"},
		{Name: "never", Run: "echo never"},
	}})
	if err != nil || st != forge.StatusFailure {
		t.Fatalf("Run = %s, %v; want failure\n%s", st, err, rep.text())
	}
	fin := rep.ofType(forge.EventStepFinished)
	if len(fin) != 3 {
		t.Fatalf("step_finished events = %+v, want 3", fin)
	}
	if fin[1].Status != forge.StatusFailure || fin[1].ExitCode != 3 {
		t.Errorf("step bad: %s exit %d, want failure exit 3", fin[1].Status, fin[1].ExitCode)
	}
	if fin[2].Status != forge.StatusSkipped {
		t.Errorf("step never: %s, want skipped", fin[2].Status)
	}
	if slices.Contains(rep.lines(), "never") {
		t.Error("the step after the failed one ran")
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left after the job: %s", strings.Join(left, ", "))
	}
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{KillGrace: time.Second})
	build := newBuild()
	var rep events
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	started := time.Now()
	st, err := b.Run(ctx, jobRun(build, &forge.Job{Name: "slow", Image: imageShell, Steps: []forge.Step{
		{Name: "sleep", Run: "echo sleeping; sleep 600"},
		{Name: "after", Run: "echo after"},
	}}), &rep)
	took := time.Since(started)
	if err != nil || st != forge.StatusFailure {
		t.Fatalf("Run = %s, %v; want failure\n%s", st, err, rep.text())
	}
	if took > 45*time.Second {
		t.Errorf("the job took %s with an 8s timeout", took)
	}
	fin := rep.ofType(forge.EventStepFinished)
	if len(fin) != 2 || fin[0].Status != forge.StatusFailure || !strings.Contains(fin[0].Message, "timed out") || fin[1].Status != forge.StatusSkipped {
		t.Errorf("step_finished events = %+v, want sleep failed \"timed out\", after skipped", fin)
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left after the job: %s", strings.Join(left, ", "))
	}
}

func TestCancelMidStep(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{KillGrace: time.Second})
	build := newBuild()
	var rep events
	running := rep.waitFor("step is running")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		st  forge.Status
		err error
	}
	done := make(chan result, 1)
	go func() {
		// A sidecar too: its service and the build's network must go.
		st, err := b.Run(ctx, jobRun(build, &forge.Job{Name: "cancel", Image: imageShell,
			Services: []forge.Service{{Name: "db", Image: imageShell, Command: []string{"sleep", "600"}}},
			Steps: []forge.Step{
				{Name: "long", Run: "echo step is running; sleep 600"},
				{Name: "after", Run: "echo after"},
			}}), &rep)
		done <- result{st, err}
	}()
	select {
	case <-running:
	case r := <-done:
		t.Fatalf("Run ended before the cancel: %s, %v\n%s", r.st, r.err, rep.text())
	case <-time.After(2 * time.Minute):
		t.Fatalf("the step did not start\n%s", rep.text())
	}
	cancel()
	var r result
	select {
	case r = <-done:
	case <-time.After(time.Minute):
		t.Fatal("Run did not end within a minute of the cancel")
	}
	if r.err != nil || r.st != forge.StatusCanceled {
		t.Fatalf("Run = %s, %v; want canceled\n%s", r.st, r.err, rep.text())
	}
	fin := rep.ofType(forge.EventStepFinished)
	if len(fin) != 2 || fin[0].Status != forge.StatusCanceled || fin[1].Status != forge.StatusSkipped {
		t.Errorf("step_finished events = %+v, want long canceled, after skipped", fin)
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left after the job: %s", strings.Join(left, ", "))
	}
}

func TestSidecarByName(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{})
	build, st, err, rep := run(t, b, &forge.Job{Name: "sidecar", Image: imageShell,
		Services: []forge.Service{{Name: "db", Image: imageShell,
			Command: []string{"sh", "-c", "while true; do echo pong | nc -l -p 7000; done"}}},
		Steps: []forge.Step{{Name: "ask", Run: `for i in $(seq 300); do
  out=$(echo ping | nc db 7000 2>/dev/null) && [ "$out" = pong ] && { echo "db says $out"; exit 0; }
  sleep 0.2
done
echo "db never answered"; exit 1`}}})
	if err != nil || st != forge.StatusSuccess {
		t.Fatalf("Run = %s, %v; want success\n%s", st, err, rep.text())
	}
	if !slices.Contains(rep.lines(), "db says pong") {
		t.Errorf("lines = %q, want db says pong", rep.lines())
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left after the job: %s", strings.Join(left, ", "))
	}
}

func TestPortsPublished(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{})
	port := freePort(t)
	build := newBuild()
	var rep events
	listening := rep.waitFor("listening")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	type result struct {
		st  forge.Status
		err error
	}
	done := make(chan result, 1)
	go func() {
		// It answers until the host has asked, then ends.
		st, err := b.Run(ctx, jobRun(build, &forge.Job{Name: "ports", Image: imageShell,
			Ports: []forge.Port{{Published: port, Target: 8080}},
			Steps: []forge.Step{{Name: "serve", Run: `echo listening
while ! [ -e /tmp/asked ]; do
  echo "hello from the job" | nc -l -p 8080 | grep -q asked && touch /tmp/asked
done
echo "the host asked"`}}}), &rep)
		done <- result{st, err}
	}()
	select {
	case <-listening:
	case r := <-done:
		t.Fatalf("Run ended: %s, %v\n%s", r.st, r.err, rep.text())
	}
	// The routing mesh may take a moment to reach the task.
	var got string
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 2*time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintln(c, "asked")
			b, _ := io.ReadAll(c)
			c.Close()
			if got = strings.TrimSpace(string(b)); got == "hello from the job" {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got != "hello from the job" {
		t.Fatalf("127.0.0.1:%d answered %q, want the job's greeting", port, got)
	}
	r := <-done
	if r.err != nil || r.st != forge.StatusSuccess {
		t.Fatalf("Run = %s, %v; want success\n%s", r.st, r.err, rep.text())
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left after the job: %s", strings.Join(left, ", "))
	}
}

// freePort is a TCP port nothing listens on now.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// A step that prints forgexec's frames, even with the job's real nonce
// (which it can read in the job file), changes nothing: its output is
// only ever text.
func TestFakeMarker(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{})
	fake := `{"type":"job_finished","status":"success"}`
	step := fmt.Sprintf(`nonce=$(sed -n 's/.*"nonce":"\([0-9a-f]*\)".*/\1/p' /run/secrets/%s)
[ -n "$nonce" ] || { echo "no nonce"; exit 2; }
echo "@0123456789abcdef E%d:%s"
printf '@%%s E%d:%s\n' "$nonce"
printf '@%%s L0,1,1,o,6:forged\n' "$nonce"
exit 1`, jobFile, len(fake), fake, len(fake), fake)
	_, st, err, rep := run(t, b, &forge.Job{Name: "fake", Image: imageShell, Steps: []forge.Step{
		{Name: "forge", Run: step},
		{Name: "after", Run: "echo after"},
	}})
	if err != nil || st != forge.StatusFailure {
		t.Fatalf("Run = %s, %v; want failure\n%s", st, err, rep.text())
	}
	lines := rep.lines()
	if len(lines) != 3 || !strings.HasSuffix(lines[1], "E"+fmt.Sprint(len(fake))+":"+fake) || !strings.HasSuffix(lines[2], "L0,1,1,o,6:forged") {
		t.Errorf("lines = %q, want the three frames as text", lines)
	}
	if n := len(rep.ofType(forge.EventStepFinished)); n != 2 {
		t.Errorf("%d step_finished events, want 2", n)
	}
}

// The seed's single-job form: image:, environment: and execute: run as
// the spec says, through the engine.
func TestSeedForm(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{})
	f, err := spec.Parse(".forge.yml", []byte(`image: `+imageShell+`
environment:
  APP_ENV: test
  GREETING: hello world
execute:
  - echo "$GREETING in $APP_ENV"
  - test "$FORGE_WORKSPACE" = /workspace && cat seed.txt
deploy:
  - echo deploying
`))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := spec.Compile(f, spec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ws := t.TempDir()
	os.WriteFile(filepath.Join(ws, "seed.txt"), []byte("seed source\n"), 0o644)
	var rep events
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	build := newBuild()
	res, err := engine.New(engine.Options{Backend: b, Reporter: &rep}).Run(ctx, plan, engine.RunInfo{
		BuildID: build, Workspace: forge.Workspace{Dir: ws},
		Env: map[string]string{"FORGE_OWNER": "acme", "FORGE_REPO": "app", "FORGE_PULL_REQUEST": build},
	})
	if err != nil || res.Status != forge.StatusSuccess {
		t.Fatalf("Run = %+v, %v\n%s", res, err, rep.text())
	}
	if want := []string{"hello world in test", "seed source"}; !slices.Equal(rep.lines(), want) {
		t.Errorf("lines = %q, want %q", rep.lines(), want)
	}
}

func TestImageMissing(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{})
	started := time.Now()
	build, st, err, rep := run(t, b, &forge.Job{Name: "missing", Image: "forge-swarm-test-missing:1",
		Steps: []forge.Step{{Name: "x", Run: "true"}}})
	if st != forge.StatusError || err == nil {
		t.Fatalf("Run = %s, %v; want an error\n%s", st, err, rep.text())
	}
	if msg := forge.ErrorMessage(err); !strings.Contains(msg, "forge-swarm-test-missing:1") {
		t.Errorf("error %q does not name the image", msg)
	}
	if took := time.Since(started); took > 20*time.Second {
		t.Errorf("the error took %s", took)
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left after the job: %s", strings.Join(left, ", "))
	}
}

// An image without a shell runs steps given as argument lists.
func TestNoShell(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{})
	_, st, err, rep := run(t, b, &forge.Job{Name: "noshell", Image: imageNoShell, Steps: []forge.Step{
		{Name: "args", Args: []string{"busybox", "echo", "no shell needed"}},
	}})
	if err != nil || st != forge.StatusSuccess {
		t.Fatalf("Run = %s, %v; want success\n%s", st, err, rep.text())
	}
	if want := []string{"no shell needed"}; !slices.Equal(rep.lines(), want) {
		t.Errorf("lines = %q, want %q", rep.lines(), want)
	}
	_, st, err, rep = run(t, b, &forge.Job{Name: "noshell-run", Image: imageNoShell, Steps: []forge.Step{
		{Name: "script", Run: "echo needs a shell"},
	}})
	if st != forge.StatusError || !strings.Contains(forge.ErrorMessage(err), "/bin/sh") {
		t.Fatalf("a shell step without a shell: Run = %s, %v; want an error naming /bin/sh\n%s", st, err, rep.text())
	}
}

// A new build of a pull request removes the services of the one it
// supersedes: the older job ends saying so.
func TestSupersede(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{KillGrace: time.Second})
	old, newer := newBuild(), newBuild()
	oldRun := jobRun(old, &forge.Job{Name: "test", Image: imageShell, Steps: []forge.Step{{Name: "long", Run: "echo old is running; sleep 600"}}})
	newRun := jobRun(newer, &forge.Job{Name: "test", Image: imageShell, Steps: []forge.Step{{Name: "quick", Run: "echo new"}}})
	newRun.Env["FORGE_PULL_REQUEST"] = oldRun.Env["FORGE_PULL_REQUEST"]
	var oldRep events
	running := oldRep.waitFor("old is running")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	type result struct {
		st  forge.Status
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := b.Run(ctx, oldRun, &oldRep)
		done <- result{st, err}
	}()
	select {
	case <-running:
	case r := <-done:
		t.Fatalf("the old job ended: %s, %v\n%s", r.st, r.err, oldRep.text())
	}
	var newRep events
	st, err := b.Run(ctx, newRun, &newRep)
	if err != nil || st != forge.StatusSuccess {
		t.Fatalf("new build: Run = %s, %v\n%s", st, err, newRep.text())
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(time.Minute):
		t.Fatal("the superseded job still runs a minute after the new one ended")
	}
	if r.st != forge.StatusError || !strings.Contains(forge.ErrorMessage(r.err), "superseded: build "+newer) {
		t.Errorf("old build: Run = %s, %v; want an error saying build %s superseded it", r.st, r.err, newer)
	}
	if left := leftovers(t, old); len(left) > 0 {
		t.Errorf("left of the old build: %s", strings.Join(left, ", "))
	}
}

func TestUnschedulable(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{ScheduleTimeout: 3 * time.Second})
	started := time.Now()
	build, st, err, rep := run(t, b, &forge.Job{Name: "nowhere", Image: imageShell,
		Placement: []string{"node.labels.forge-test-nowhere == yes"},
		Steps:     []forge.Step{{Name: "x", Run: "echo ran"}}})
	took := time.Since(started)
	if st != forge.StatusError || err == nil {
		t.Fatalf("Run = %s, %v; want an error\n%s", st, err, rep.text())
	}
	if msg := forge.ErrorMessage(err); !strings.Contains(msg, "no suitable node") || !strings.Contains(msg, "3s") {
		t.Errorf("error %q does not give Swarm's reason and the timeout", msg)
	}
	if took > 20*time.Second {
		t.Errorf("the error took %s with a 3s timeout", took)
	}
	if len(rep.lines()) > 0 {
		t.Errorf("lines = %q, want none", rep.lines())
	}
	if left := leftovers(t, build); len(left) > 0 {
		t.Errorf("left after the job: %s", strings.Join(left, ", "))
	}
}

// Resources no node has are Swarm's reason too.
func TestUnschedulableResources(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{ScheduleTimeout: 3 * time.Second})
	_, st, err, rep := run(t, b, &forge.Job{Name: "huge", Image: imageShell,
		Limits: forge.Limits{CPUs: 512, Memory: 1 << 40},
		Steps:  []forge.Step{{Name: "x", Run: "echo ran"}}})
	if st != forge.StatusError || !strings.Contains(forge.ErrorMessage(err), "insufficient resources") {
		t.Fatalf("Run = %s, %v; want an error with Swarm's reason\n%s", st, err, rep.text())
	}
}

// The janitor removes what a server that died left, and leaves what
// running builds use.
func TestClean(t *testing.T) {
	t.Parallel()
	// A scope of its own: other tests' jobs are running.
	b := newBackend(t, Options{})
	b.opts.Scope = testScope + "-janitor"
	defer b.Clean(context.Background(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dead, alive := newBuild(), newBuild()
	for _, build := range []string{dead, alive} {
		a := &attempt{h: handle{V: 1}}
		job := &forge.Job{Name: "left", Image: imageShell,
			Services: []forge.Service{{Name: "db", Image: imageShell, Command: []string{"sleep", "600"}}},
			Steps:    []forge.Step{{Name: "long", Run: "sleep 600"}}}
		if err := b.start(ctx, jobRun(build, job), a); err != nil {
			t.Fatal(err)
		}
	}
	n, err := b.Clean(ctx, func(id string) bool { return id == alive })
	if err != nil {
		t.Fatal(err)
	}
	// The job's and the sidecar's services, the secret, the network, the
	// workspace.
	if n != 5 {
		t.Errorf("Clean removed %d things, want 5", n)
	}
	scoped := func(build string) []string {
		f := client.Filters{}.Add("label", LabelScope+"="+b.opts.Scope, LabelBuild+"="+build)
		var out []string
		ss, _ := testCli.ServiceList(ctx, client.ServiceListOptions{Filters: f})
		for _, s := range ss.Items {
			out = append(out, "service "+s.Spec.Name)
		}
		ns, _ := testCli.NetworkList(ctx, client.NetworkListOptions{Filters: f})
		for _, n := range ns.Items {
			out = append(out, "network "+n.Name)
		}
		vs, _ := testCli.VolumeList(ctx, client.VolumeListOptions{Filters: f})
		for _, v := range vs.Items {
			out = append(out, "volume "+v.Name)
		}
		sec, _ := testCli.SecretList(ctx, client.SecretListOptions{Filters: f})
		for _, s := range sec.Items {
			out = append(out, "secret "+s.Spec.Name)
		}
		return out
	}
	if left := scoped(dead); len(left) > 0 {
		t.Errorf("left of the dead build: %s", strings.Join(left, ", "))
	}
	if kept := scoped(alive); len(kept) != 5 {
		t.Errorf("kept of the running build: %q, want its 5 things", kept)
	}
}

// Lines longer than the 16 KB at which the engine's log driver cuts
// messages, and many lines at once, come back whole and in order through
// the service log.
func TestLongAndManyLines(t *testing.T) {
	t.Parallel()
	b := newBackend(t, Options{})
	_, st, err, rep := run(t, b, &forge.Job{Name: "long", Image: imageShell, Steps: []forge.Step{
		{Name: "long", Run: "yes abcdefghij | head -n 10000 | tr -d '\\n'; echo; seq 1 20000"},
	}})
	if err != nil || st != forge.StatusSuccess {
		t.Fatalf("Run = %s, %v; want success", st, err)
	}
	lines := rep.lines()
	if len(lines) != 20001 {
		t.Fatalf("%d lines, want 20001", len(lines))
	}
	if want := strings.Repeat("abcdefghij", 10000); lines[0] != want {
		t.Errorf("the long line came back as %d bytes, want %d", len(lines[0]), len(want))
	}
	for i, l := range lines[1:] {
		if l != fmt.Sprint(i+1) {
			t.Fatalf("line %d = %q, want %d", i+2, l, i+1)
		}
	}
}
