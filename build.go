package forge

import (
	"context"
	"strings"
	"time"
)

// Repo is a repository forge builds.
type Repo struct {
	ID            int64     `json:"id"`
	Owner         string    `json:"owner"`
	Name          string    `json:"name"`
	CloneURL      string    `json:"clone_url"`
	DefaultBranch string    `json:"default_branch"`
	Private       bool      `json:"private"`
	Created       time.Time `json:"created"`
	Updated       time.Time `json:"updated"`
}

// FullName returns "owner/name".
func (r *Repo) FullName() string { return r.Owner + "/" + r.Name }

// Hook is a source-control event that may trigger builds, independent of
// how it arrived (GitHub webhook, manual trigger).
type Hook struct {
	Event  string `json:"event"`  // "pull_request", "push", "tag", "manual", ...
	Action string `json:"action"` // the event's action ("opened", "synchronize", ...), if any
	Repo   Repo   `json:"repo"`
	Ref    string `json:"ref"`    // full ref: refs/heads/main, refs/pull/7/head, refs/tags/v1
	Branch string `json:"branch"` // the branch built (a pull request's head branch)
	// Target is the branch a pull request goes into, or the pushed branch.
	Target string `json:"target"`
	SHA    string `json:"sha"`
	Before string `json:"before,omitempty"`
	// Base is the tip of a pull request's target branch when the event
	// was sent: the pull request's changed files are those between the
	// merge base of Base and SHA, and SHA.
	Base        string `json:"base,omitempty"`
	PullRequest int    `json:"pull_request,omitempty"`
	Draft       bool   `json:"draft,omitempty"`
	Merged      bool   `json:"merged,omitempty"`
	// Fork is true when the code comes, or may come, from another
	// repository: its jobs never see secrets (see Trusted).
	Fork        bool     `json:"fork,omitempty"`
	Tag         string   `json:"tag,omitempty"`
	Message     string   `json:"message,omitempty"`
	Author      string   `json:"author,omitempty"`
	Sender      string   `json:"sender,omitempty"`
	CommitCount int      `json:"commit_count,omitempty"`
	Paths       []string `json:"paths,omitempty"` // files changed, when known
	// Installation is the GitHub App installation the event came
	// through, when it came through one: reports use its token.
	Installation int64 `json:"installation,omitempty"`
	// Association is the pull request author's relation to the
	// repository as GitHub says it (OWNER, MEMBER, COLLABORATOR,
	// CONTRIBUTOR, FIRST_TIME_CONTRIBUTOR, FIRST_TIMER, NONE), for the
	// approval of forks' pull requests.
	Association string `json:"association,omitempty"`
}

// Trusted reports whether forge can show that the hook's code comes from
// the repository itself, the one condition under which its builds see the
// repository's secrets, whatever started them (a webhook, a manual
// trigger, a restart, a /retest, a re-requested check suite):
//
//   - a push of a branch or tag (event push or tag, ref refs/heads/… or
//     refs/tags/…), unless marked Fork (a re-requested check suite whose
//     commit is not on the branch it names);
//   - a pull request whose head GitHub says is in the repository (not
//     Fork), or a merged one (its merge commit is on the target branch);
//   - a manual build of a branch or tag (ref refs/heads/… or refs/tags/…).
//
// Anything else is not: a fork's pull request, a manual build of a pull
// request's ref or of a bare commit id (GitHub serves a fork's commits
// from the repository it forks), an event forge does not know.
func (h *Hook) Trusted() bool {
	branchOrTag := strings.HasPrefix(h.Ref, "refs/heads/") || strings.HasPrefix(h.Ref, "refs/tags/")
	switch h.Event {
	case "push", "tag", "manual":
		return branchOrTag && !h.Fork
	case "pull_request":
		return h.Merged || !h.Fork
	}
	return false
}

// Build is one run of one action of a repository at one commit.
type Build struct {
	ID     int64  `json:"id"`
	RepoID int64  `json:"repo_id"`
	Number int64  `json:"number"` // counts per repository from 1
	Action string `json:"action"`
	Status Status `json:"status"`
	Hook   Hook   `json:"hook"`
	// DeliveryID is the webhook delivery that created the build, if any;
	// a delivery creates at most one build per action.
	DeliveryID string `json:"delivery_id,omitempty"`
	// Error says why forge could not run the build (StatusError).
	Error    string    `json:"error,omitempty"`
	Created  time.Time `json:"created"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	// Version counts updates, for optimistic locking.
	Version int64 `json:"version"`
	// Runner identifies the server process that claimed the build, and
	// Heartbeat is when that process last said it still runs it: a
	// running build whose heartbeat goes stale was left by a server that
	// died, and is ended by whichever server notices first. They are the
	// servers' bookkeeping, not part of the API (a runner ID names a host).
	Runner    string    `json:"-"`
	Heartbeat time.Time `json:"-"`
}

// BuildJob is the record of one job of a build.
type BuildJob struct {
	ID       int64     `json:"id"`
	BuildID  int64     `json:"build_id"`
	Name     string    `json:"name"`
	Status   Status    `json:"status"`
	Attempt  int       `json:"attempt"`
	ExitCode int       `json:"exit_code"`
	Error    string    `json:"error,omitempty"`
	Needs    []string  `json:"needs,omitempty"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	// Handle lets a backend reattach to a job that outlived a restart.
	Backend string       `json:"backend,omitempty"`
	Handle  []byte       `json:"-"`
	Steps   []*BuildStep `json:"steps,omitempty"`
}

// BuildStep is the record of one step of a job.
type BuildStep struct {
	JobID    int64     `json:"job_id"`
	Index    int       `json:"index"`
	Name     string    `json:"name"`
	Status   Status    `json:"status"`
	ExitCode int       `json:"exit_code"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	// FirstLine is the number of the step's first line in its job's log
	// (the line after those printed before it started) and LastLine that
	// of its last, FirstLine-1 when it printed nothing. Each is 0 until
	// the step starts or ends, and for steps recorded by a forge that did
	// not count them.
	FirstLine int `json:"first_line"`
	LastLine  int `json:"last_line"`
}

// Delivery is a webhook delivery as received, kept so that nothing answered
// 2xx is ever lost and nothing is processed twice.
type Delivery struct {
	ID        string    `json:"id"` // X-GitHub-Delivery
	Event     string    `json:"event"`
	Action    string    `json:"action,omitempty"`
	Payload   []byte    `json:"-"`
	Received  time.Time `json:"received"`
	Processed time.Time `json:"processed,omitzero"`
	// Result is what came of it: "builds created", "ignored: ...", an error.
	Result string `json:"result,omitempty"`
}

// BuildFilter selects builds in a listing. Zero fields match everything.
type BuildFilter struct {
	RepoID      int64
	Status      Status
	Branch      string
	PullRequest int
	// Paging: builds with ID below Before, newest first, at most Limit.
	Before int64
	Limit  int
	// Ascending lists oldest first (the runner's queue order).
	Ascending bool

	// Statuses, when not empty, matches a build in any of them (e.g.
	// queued and running, for restart recovery). With Status set too, a
	// build must match both.
	Statuses []Status
	// Action and SHA, when set, match exactly.
	Action string
	SHA    string
	// DeliveryID, when set, matches the builds that webhook delivery
	// created (with Action: the one build of that action).
	DeliveryID string
	// After: only builds with ID above After (paging oldest first).
	After int64
}

// Build listing limits: a BuildFilter with Limit <= 0 lists
// DefaultBuildLimit builds; no listing returns more than MaxBuildLimit.
const (
	DefaultBuildLimit = 100
	MaxBuildLimit     = 1000
)

// LogStore keeps job logs permanently.
//
// Append adds lines to the end of a job's log; lines arrive in order and
// Number is unique per job. Lines returns lines with numbers in
// [from, from+limit); limit <= 0 means all. Safe for concurrent use.
type LogStore interface {
	Append(ctx context.Context, jobID int64, lines []LogLine) error
	Lines(ctx context.Context, jobID int64, from, limit int) ([]LogLine, error)
}
