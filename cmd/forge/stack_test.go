package main

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/backend/swarm"
)

// TestStackFileDeploys deploys deploy/forge-stack.yml on the local swarm,
// as its header says, with an image of this forge (and the host's git),
// and builds a pull request through it: the server in its container makes
// the job's service, which runs on a node with forgexec from the forgexec
// service and the workspace fetched from the server over the jobs'
// network. It changes the machine (a node label, /var/lib/forge-exec),
// so it runs only with FORGE_TEST_STACK=1, as .ci/run sets.
func TestStackFileDeploys(t *testing.T) {
	if os.Getenv("FORGE_TEST_STACK") != "1" {
		t.Skip("FORGE_TEST_STACK=1 runs the deployment test of deploy/forge-stack.yml (it labels the swarm's node and writes /var/lib/forge-exec)")
	}
	cli, bin, _ := swarmEnv(t)
	if _, err := exec.LookPath("docker"); err != nil {
		t.Fatal("the stack test needs the docker command")
	}
	ctx := context.Background()
	image := buildStackImage(t, cli, bin)
	stack := "forgetest" + strconv.Itoa(os.Getpid())
	scope := stack

	// The repository, served by git daemon where the server's container
	// reaches the host.
	gw := gatewayIP(t, cli)
	base := t.TempDir()
	repo, _ := e2eRepo(t, "image: "+swarmImage+`
environment:
  APP_ENV: stack
execute:
  - echo "hello from $APP_ENV in $FORGE_WORKSPACE"
  - cat README.md
`)
	sha := e2eCommit(t, repo, "README.md", "# deployed by the stack\n")
	if err := os.Rename(repo, filepath.Join(base, "app")); err != nil {
		t.Fatal(err)
	}
	// Over git's smart HTTP (git http-backend), with the stack's GitHub
	// API URL on the same host: forge fetches only from the configured
	// GitHub's host, and never over git://.
	execPath, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(gw, "0"))
	if err != nil {
		t.Fatal(err)
	}
	gitSrv := &http.Server{Handler: &cgi.Handler{
		Path: filepath.Join(strings.TrimSpace(string(execPath)), "git-http-backend"),
		Env:  []string{"GIT_PROJECT_ROOT=" + base, "GIT_HTTP_EXPORT_ALL=1"},
	}}
	go gitSrv.Serve(ln)
	t.Cleanup(func() { gitSrv.Close() })
	gitURL := "http://" + ln.Addr().String()

	node, err := cli.Info(ctx, client.InfoOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodeID := node.Info.Swarm.NodeID
	dockerCLI(t, "node", "update", "--label-add", "forge.data=true", nodeID)
	_, hadExec := os.Stat("/var/lib/forge-exec")
	port := freeTCPPort(t)
	t.Cleanup(func() {
		dockerCLI(t, "stack", "rm", stack)
		// The stack's services go first, then its network and volume.
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			res, err := cli.ServiceList(ctx, client.ServiceListOptions{Filters: client.Filters{}.Add("label", "com.docker.stack.namespace="+stack)})
			if err == nil && len(res.Items) == 0 {
				break
			}
		}
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			_, err1 := cli.NetworkRemove(ctx, "forge_jobs", client.NetworkRemoveOptions{})
			_, err2 := cli.VolumeRemove(ctx, stack+"_forgedata", client.VolumeRemoveOptions{})
			if (err1 == nil || cerrdefs.IsNotFound(err1)) && (err2 == nil || cerrdefs.IsNotFound(err2)) {
				break
			}
		}
		dockerCLI(t, "node", "update", "--label-rm", "forge.data", nodeID)
		if os.IsNotExist(hadExec) {
			os.RemoveAll("/var/lib/forge-exec")
		}
	})
	cmd := exec.Command("docker", "stack", "deploy", "-c", "../../deploy/forge-stack.yml", stack)
	cmd.Env = append(os.Environ(), "FORGE_IMAGE="+image, "FORGE_GITHUB_WEBHOOK_SECRET="+e2eSecret,
		"FORGE_PORT="+strconv.Itoa(port), "FORGE_SCOPE="+scope, "FORGE_GITHUB_API_URL="+gitURL)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker stack deploy: %v\n%s", err, out)
	}
	url := "http://127.0.0.1:" + strconv.Itoa(port)
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if resp, err := http.Get(url + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			out, _ := exec.Command("docker", "service", "logs", "--raw", stack+"_forge").CombinedOutput()
			t.Fatalf("the stack's forge did not answer /healthz within 2 minutes:\n%s", out)
		}
	}

	payload := e2ePrPayload(t, "opened", gitURL+"/app", sha, 12)
	if st, err := e2eDeliver(http.DefaultClient, url, "pull_request", "stack-1", payload); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	p := &e2eServerProc{url: url}
	b := e2eWaitBuild(t, p, 1, 3*time.Minute, e2eBuildDone)
	if b.Status != forge.StatusSuccess {
		out, _ := exec.Command("docker", "service", "logs", "--raw", stack+"_forge").CombinedOutput()
		t.Fatalf("build %s %q\n%s", b.Status, b.Error, out)
	}
	log := e2eJobLog(t, p, 1, b.Jobs[0])
	for _, want := range []string{"hello from stack in /workspace", "# deployed by the stack"} {
		if !strings.Contains(log, want+"\n") {
			t.Errorf("job log has no line %q:\n%s", want, log)
		}
	}
	if left, err := cli.ServiceList(ctx, client.ServiceListOptions{Filters: client.Filters{}.Add("label", swarm.LabelScope+"="+scope)}); err != nil || len(left.Items) > 0 {
		t.Errorf("job services left: %d (%v)", len(left.Items), err)
	}
}

// buildStackImage builds an image like the compose file's (forge at
// /usr/local/bin/forge, git, /bin/sh) from this machine's files, offline:
// FROM scratch with busybox, the static forge, and git with its
// libraries.
func buildStackImage(t *testing.T, cli *client.Client, forgeBin string) string {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "rootfs")
	copyFile := func(src, dst string, mode os.FileMode) {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatalf("the stack image needs %s: %v", src, err)
		}
		os.MkdirAll(filepath.Dir(filepath.Join(root, dst)), 0o755)
		if err := os.WriteFile(filepath.Join(root, dst), data, mode); err != nil {
			t.Fatal(err)
		}
	}
	copyFile("/bin/busybox", "bin/busybox", 0o755)
	for _, a := range []string{"sh", "cp", "mv", "mkdir", "sleep", "echo", "cat"} {
		os.Symlink("busybox", filepath.Join(root, "bin", a))
	}
	copyFile(forgeBin, "usr/local/bin/forge", 0o755)
	copyFile("/usr/bin/git", "usr/bin/git", 0o755)
	// git's own commands (upload-pack for a clone) are the same binary.
	copyFile("/usr/bin/git", "usr/lib/git-core/git", 0o755)
	for _, c := range []string{"git-upload-pack", "git-receive-pack", "git-remote", "git-fetch"} {
		os.Symlink("git", filepath.Join(root, "usr/lib/git-core", c))
	}
	// Its HTTP(S) helper, for fetches over http and https.
	copyFile("/usr/lib/git-core/git-remote-http", "usr/lib/git-core/git-remote-http", 0o755)
	os.Symlink("git-remote-http", filepath.Join(root, "usr/lib/git-core", "git-remote-https"))
	out, err := exec.Command("ldd", "/usr/bin/git", "/usr/lib/git-core/git-remote-http").Output()
	if err != nil {
		t.Fatalf("ldd git: %v", err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/") && !strings.HasSuffix(f[0], ":"):
			lib = f[0]
		default:
			continue
		}
		copyFile(lib, strings.TrimPrefix(lib, "/"), 0o755)
	}
	os.MkdirAll(filepath.Join(root, "tmp"), 0o1777)
	os.MkdirAll(filepath.Join(root, "root"), 0o700)
	copyFileData := func(dst, data string) {
		os.MkdirAll(filepath.Dir(filepath.Join(root, dst)), 0o755)
		os.WriteFile(filepath.Join(root, dst), []byte(data), 0o644)
	}
	copyFileData("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
	copyFileData("../Dockerfile", "FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/bin:/usr/bin:/bin HOME=/root\nENTRYPOINT [\"forge\"]\n")
	tag := "forge-stack-test:" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("docker", "build", "-q", "-t", tag, dir).CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	t.Cleanup(func() { cli.ImageRemove(context.Background(), tag, client.ImageRemoveOptions{Force: true}) })
	return tag
}

// gatewayIP is the host's address on the engine's gateway bridge, which
// containers on overlay networks reach.
func gatewayIP(t *testing.T, cli *client.Client) string {
	t.Helper()
	res, err := cli.NetworkInspect(context.Background(), "docker_gwbridge", client.NetworkInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Network.IPAM.Config {
		if c.Gateway.IsValid() && c.Gateway.Is4() {
			return c.Gateway.String()
		}
	}
	t.Fatalf("docker_gwbridge has no IPv4 gateway")
	return ""
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
