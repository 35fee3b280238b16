package swarm

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"

	"github.com/forgeci/forge"
)

// Swarm's rule for a service name.
var validName = regexp.MustCompile(`^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$`)

func TestServiceName(t *testing.T) {
	at := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	long := strings.Repeat("very-long-name-", 10)
	tests := []struct {
		m    meta
		want string
	}{
		{meta{owner: "acme", repo: "app", pr: "42"}, "forge-acme-app-42-20240506-070809-123"},
		{meta{owner: "Acme Corp", repo: "My_App.go", pr: "7"}, "forge-acme-corp-my-app-go-7-20240506-070809-123"},
		{meta{owner: "acme", repo: "app", ref: "refs/heads/main"}, "forge-acme-app-main-20240506-070809-123"},
		{meta{owner: "acme", repo: "app", ref: "refs/tags/v1.2"}, "forge-acme-app-v1-2-20240506-070809-123"},
		{meta{}, "forge-build-20240506-070809-123"},
		{meta{owner: long, repo: "app", pr: "123456"}, ""},
		{meta{owner: long, repo: long, pr: "123456"}, ""},
		{meta{owner: "--", repo: "__", pr: "-"}, "forge-build-20240506-070809-123"},
	}
	for _, tt := range tests {
		got := serviceName(tt.m, at)
		if tt.want != "" && got != tt.want {
			t.Errorf("serviceName(%+v) = %q, want %q", tt.m, got, tt.want)
		}
		if len(got) > maxName || !validName.MatchString(got) {
			t.Errorf("serviceName(%+v) = %q (%d characters): not a valid service name", tt.m, got, len(got))
		}
		if !strings.HasSuffix(got, "-20240506-070809-123") || clean(tt.m.pr, 20) != "" && !strings.Contains(got, "-"+clean(tt.m.pr, 20)+"-") {
			t.Errorf("serviceName(%+v) = %q lost the pull request or the time", tt.m, got)
		}
		for _, suffix := range []string{"-job", "-ws", "-net", "-" + clean(long, 20)} {
			if d := derived(got, suffix); len(d) > maxName || !validName.MatchString(d) || !strings.HasSuffix(d, suffix) {
				t.Errorf("derived(%q, %q) = %q", got, suffix, d)
			}
		}
	}
}

func TestJudge(t *testing.T) {
	task := func(state swarm.TaskState, err string) *swarm.Task {
		return &swarm.Task{NodeID: "n1", Status: swarm.TaskStatus{State: state, Err: err}}
	}
	node := func(state swarm.NodeState) *swarm.Node {
		return &swarm.Node{ID: "n1", Description: swarm.NodeDescription{Hostname: "worker-3"}, Status: swarm.NodeStatus{State: state}}
	}
	const timeout = time.Minute
	tests := []struct {
		name   string
		t      *swarm.Task
		n      *swarm.Node
		waited time.Duration
		want   verdict
		msg    string
	}{
		{"no task yet", nil, nil, time.Second, verdictWait, ""},
		{"no task ever", nil, nil, 2 * timeout, verdictFailed, "no task"},
		{"pending", task(swarm.TaskStatePending, "no suitable node (insufficient resources on 1 node)"), nil, time.Second, verdictWait, ""},
		{"pending too long", task(swarm.TaskStatePending, "no suitable node (insufficient resources on 1 node)"), nil, 2 * timeout,
			verdictFailed, "waited 1m0s for one): Swarm says: no suitable node (insufficient resources on 1 node)"},
		{"preparing long", task(swarm.TaskStatePreparing, ""), node(swarm.NodeStateReady), 2 * timeout, verdictWait, ""},
		{"running", task(swarm.TaskStateRunning, ""), node(swarm.NodeStateReady), 2 * timeout, verdictWait, ""},
		{"node down", task(swarm.TaskStateRunning, ""), node(swarm.NodeStateDown), time.Second, verdictFailed,
			"the node that ran the job, worker-3 (n1), was lost (it is down)"},
		{"node disconnected", task(swarm.TaskStateStarting, ""), node(swarm.NodeStateDisconnected), time.Second, verdictFailed, "was lost"},
		{"orphaned", task(swarm.TaskStateOrphaned, ""), nil, time.Second, verdictFailed, "n1, was lost (it is unreachable)"},
		{"complete", task(swarm.TaskStateComplete, ""), node(swarm.NodeStateReady), time.Second, verdictEnded, ""},
		{"failed", task(swarm.TaskStateFailed, "task: non-zero exit (137)"), nil, time.Second, verdictEnded, ""},
		{"rejected", task(swarm.TaskStateRejected, "No such image"), nil, time.Second, verdictEnded, ""},
		{"shutdown", task(swarm.TaskStateShutdown, ""), node(swarm.NodeStateDown), time.Second, verdictEnded, ""},
	}
	for _, tt := range tests {
		v, err := judge(tt.t, tt.n, tt.waited, timeout)
		if v != tt.want {
			t.Errorf("%s: verdict %d, want %d", tt.name, v, tt.want)
		}
		if tt.msg == "" && err != nil || tt.msg != "" && (err == nil || !strings.Contains(forge.ErrorMessage(err), tt.msg)) {
			t.Errorf("%s: error %v, want one containing %q", tt.name, err, tt.msg)
		}
	}
}

// Plain TCP to a manager is refused unless allowed: whoever reaches its
// API runs anything on the swarm.
func TestClientRefusesPlainTCP(t *testing.T) {
	t.Setenv("DOCKER_CERT_PATH", "")
	if _, err := NewClient("tcp://manager.example:2375", "", false); forge.ErrorCode(err) != forge.EINVALID ||
		!strings.Contains(forge.ErrorMessage(err), "plain TCP") {
		t.Errorf("plain tcp: err = %v, want EINVALID about plain TCP", err)
	}
	if _, err := NewClient("tcp://manager.example:2375", "", true); err != nil {
		t.Errorf("plain tcp explicitly allowed: %v", err)
	}
	if _, err := NewClient("tcp://manager.example:2376", t.TempDir(), false); forge.ErrorCode(err) != forge.EINVALID ||
		!strings.Contains(forge.ErrorMessage(err), "ca.pem") {
		t.Errorf("an empty certificate directory: err = %v, want EINVALID naming ca.pem", err)
	}
	if _, err := NewClient("unix:///var/run/docker.sock", "", false); err != nil {
		t.Errorf("the local socket: %v", err)
	}
}
