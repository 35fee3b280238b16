package swarm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
)

// With forgexec on every node and a workspace server, nothing of a job is
// on forge's node: no node constraint, forgexec bound from the node, the
// workspace fetched by forgexec over TLS.
func TestSpread(t *testing.T) {
	t.Parallel()
	b := newBackend(t, spreadOptions(t))

	t.Run("clean workspace", func(t *testing.T) {
		t.Parallel()
		repo := t.TempDir()
		os.WriteFile(filepath.Join(repo, "committed.txt"), []byte("from HEAD\n"), 0o644)
		os.MkdirAll(filepath.Join(repo, "sub"), 0o755)
		os.WriteFile(filepath.Join(repo, "sub", "deep.txt"), []byte("deep\n"), 0o644)
		os.Symlink("committed.txt", filepath.Join(repo, "link"))
		for _, args := range [][]string{{"init", "-q"}, {"add", "."}, {"-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "x"}} {
			if out, err := exec.Command("git", append([]string{"-C", repo}, args...)...).CombinedOutput(); err != nil {
				t.Fatalf("git %v: %v\n%s", args, err, out)
			}
		}
		os.WriteFile(filepath.Join(repo, "uncommitted.txt"), []byte("not in HEAD\n"), 0o644)
		build := newBuild()
		run := jobRun(build, &forge.Job{Name: "spread", Image: imageShell, Steps: []forge.Step{
			{Name: "look", Run: "cat committed.txt sub/deep.txt link; ls; test ! -e uncommitted.txt"},
		}})
		run.Workspace = forge.Workspace{Dir: repo, Clean: true}
		var rep events
		// Look at the service while it runs.
		seen := make(chan []string, 1)
		rep.on = func(e forge.Event) {
			if e.Type != forge.EventJobHandle {
				return
			}
			res, err := testCli.ServiceList(context.Background(), client.ServiceListOptions{
				Filters: client.Filters{}.Add("label", LabelScope+"="+testScope, LabelBuild+"="+build)})
			if err != nil || len(res.Items) != 1 {
				seen <- []string{"no service"}
				return
			}
			var got []string
			ts := res.Items[0].Spec.TaskTemplate
			got = append(got, ts.Placement.Constraints...)
			for _, m := range ts.ContainerSpec.Mounts {
				got = append(got, string(m.Type)+" "+m.Source+" "+m.Target)
			}
			seen <- got
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		st, err := b.Run(ctx, run, &rep)
		if err != nil || st != forge.StatusSuccess {
			t.Fatalf("Run = %s, %v\n%s", st, err, rep.text())
		}
		if want := []string{"from HEAD", "deep", "from HEAD", "committed.txt", "link", "sub"}; !slices.Equal(rep.lines(), want) {
			t.Errorf("lines = %q, want %q", rep.lines(), want)
		}
		got := <-seen
		want := []string{string(mount.TypeVolume) + "  " + WorkspaceDir, string(mount.TypeBind) + " " + forgeBin + " /.forge/forgexec"}
		if !slices.Equal(got, want) {
			t.Errorf("constraints and mounts = %q, want no constraint and %q", got, want)
		}
		if left := leftovers(t, build); len(left) > 0 {
			t.Errorf("left after the job: %s", strings.Join(left, ", "))
		}
	})

	t.Run("sidecar", func(t *testing.T) {
		t.Parallel()
		build, st, err, rep := run(t, b, &forge.Job{Name: "spread-sidecar", Image: imageShell,
			Services: []forge.Service{{Name: "cache", Image: imageShell,
				Command: []string{"sh", "-c", "while true; do echo pong | nc -l -p 6379; done"}}},
			Steps: []forge.Step{{Name: "ask", Run: `for i in $(seq 300); do
  out=$(echo ping | nc cache 6379 2>/dev/null) && [ "$out" = pong ] && { echo "cache says $out"; exit 0; }
  sleep 0.2
done
exit 1`}}})
		if err != nil || st != forge.StatusSuccess {
			t.Fatalf("Run = %s, %v\n%s", st, err, rep.text())
		}
		if left := leftovers(t, build); len(left) > 0 {
			t.Errorf("left after the job: %s", strings.Join(left, ", "))
		}
	})

	t.Run("missing image", func(t *testing.T) {
		t.Parallel()
		started := time.Now()
		_, st, err, rep := run(t, b, &forge.Job{Name: "spread-missing", Image: "forge-swarm-test-missing:2",
			Steps: []forge.Step{{Name: "x", Run: "true"}}})
		if st != forge.StatusError || !strings.Contains(forge.ErrorMessage(err), "forge-swarm-test-missing:2") {
			t.Fatalf("Run = %s, %v; want an error naming the image\n%s", st, err, rep.text())
		}
		if took := time.Since(started); took > 30*time.Second {
			t.Errorf("the error took %s", took)
		}
	})

	t.Run("workspace gone", func(t *testing.T) {
		t.Parallel()
		run := jobRun(newBuild(), &forge.Job{Name: "spread-nows", Image: imageShell, Steps: []forge.Step{{Name: "x", Run: "true"}}})
		run.Workspace = forge.Workspace{Dir: filepath.Join(t.TempDir(), "missing")}
		var rep events
		st, err := b.Run(context.Background(), run, &rep)
		if st != forge.StatusError || forge.ErrorCode(err) != forge.EINVALID {
			t.Errorf("Run = %s, %v; want EINVALID", st, err)
		}
	})
}
