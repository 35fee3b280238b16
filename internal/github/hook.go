// Package github reads what GitHub sends forge: webhook payloads, parsed
// into forge.Hook values. Later issues add commit-status reporting here.
//
// The webhook handler (internal/http) verifies signatures and stores
// deliveries; this package only interprets payloads, so it is pure and
// safe for concurrent use.
package github

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/forgeci/forge"
)

// zeroSHA is what GitHub sends as "before" for a new ref and as "after"
// for a deleted one.
const zeroSHA = "0000000000000000000000000000000000000000"

// maxPushCommits is the most commits a push payload lists; a push with
// that many may have been cut, so its changed paths are not trusted.
const maxPushCommits = 2048

// Events lists the webhook events forge understands, in DESIGN.md order.
// Others are recorded and ignored.
var Events = []string{"ping", "pull_request", "push", "create", "delete", "check_suite", "check_run", "issue_comment", "installation"}

// ParseHook interprets the JSON payload of a webhook delivery of event
// (the X-GitHub-Event header).
//
// It returns exactly one of:
//   - a hook to build, for events forge acts on;
//   - ignored, a reason forge does not build for this delivery ("pull
//     request #2 closed without merging"), for events it records only;
//   - err, an *forge.Error with code EINVALID naming what is wrong, when the
//     payload is not the JSON its event promises.
//
// A hook with an empty SHA needs its commit looked up: an issue_comment
// "/retest" carries the pull request's number, not its head commit, so the
// hook's Ref is refs/pull/N/head and the caller resolves it (internal/trigger
// fetches that ref into the repository's mirror).
func ParseHook(event string, payload []byte) (hook *forge.Hook, ignored string, err error) {
	if !isObject(payload) {
		return nil, "", forge.Errorf(forge.EINVALID, "%s payload is not a JSON object", eventName(event))
	}
	switch event {
	case "ping":
		return nil, "ping", nil
	case "pull_request":
		return parsePullRequest(payload)
	case "push":
		return parsePush(payload)
	case "create", "delete":
		return parseRefEvent(event, payload)
	case "check_suite":
		return parseCheckSuite(payload)
	case "check_run":
		return parseCheckRun(payload)
	case "issue_comment":
		return parseIssueComment(payload)
	case "installation":
		return parseInstallation(payload)
	}
	return nil, fmt.Sprintf("event %s is not one forge builds", eventName(event)), nil
}

// Validate returns the error ParseHook returns for payload, ignoring
// whether forge builds for it: the webhook handler answers 400 when it is
// not nil.
func Validate(event string, payload []byte) error {
	_, _, err := ParseHook(event, payload)
	return err
}

func eventName(event string) string {
	if event == "" {
		return "(no event)"
	}
	return fmt.Sprintf("%q", event)
}

// isObject reports whether payload is one valid JSON object.
func isObject(payload []byte) bool {
	s := strings.TrimLeft(string(payload), " \t\r\n")
	return strings.HasPrefix(s, "{") && json.Valid(payload)
}

// The payload types below hold only what forge reads.

type user struct {
	Login string `json:"login"`
}

type repository struct {
	ID            int64  `json:"id"`
	Name          string `json:"name"`
	FullName      string `json:"full_name"`
	Owner         *user  `json:"owner"`
	CloneURL      string `json:"clone_url"`
	DefaultBranch string `json:"default_branch"`
	Private       bool   `json:"private"`
}

type commitUser struct {
	Name     string `json:"name"`
	Username string `json:"username"`
}

type commit struct {
	ID       string     `json:"id"`
	Message  string     `json:"message"`
	Author   commitUser `json:"author"`
	Added    []string   `json:"added"`
	Removed  []string   `json:"removed"`
	Modified []string   `json:"modified"`
}

// common is what most events carry.
type common struct {
	Action       string      `json:"action"`
	Repository   *repository `json:"repository"`
	Sender       *user       `json:"sender"`
	Installation *struct {
		ID int64 `json:"id"`
	} `json:"installation"`
}

// installation is the App installation the event came through, or 0.
func (c *common) installation() int64 {
	if c.Installation == nil || c.Installation.ID < 0 {
		return 0
	}
	return c.Installation.ID
}

// repo converts the payload's repository, checking it names one.
func (c *common) repo(event string) (forge.Repo, error) {
	r := c.Repository
	if r == nil {
		return forge.Repo{}, forge.Errorf(forge.EINVALID, "%s payload has no repository", event)
	}
	owner, name := "", r.Name
	if r.Owner != nil {
		owner = r.Owner.Login
	}
	if i := strings.IndexByte(r.FullName, '/'); i > 0 {
		if owner == "" {
			owner = r.FullName[:i]
		}
		if name == "" {
			name = r.FullName[i+1:]
		}
	}
	if owner == "" || name == "" {
		return forge.Repo{}, forge.Errorf(forge.EINVALID, "%s payload: repository has no owner/name", event)
	}
	if !validName(owner) || !validName(name) {
		return forge.Repo{}, forge.Errorf(forge.EINVALID, "%s payload: repository name %q is not a valid GitHub owner/name", event, owner+"/"+name)
	}
	return forge.Repo{
		Owner:         owner,
		Name:          name,
		CloneURL:      r.CloneURL,
		DefaultBranch: r.DefaultBranch,
		Private:       r.Private,
	}, nil
}

// validName reports whether s can be a GitHub owner or repository name:
// these become directory names of git mirrors, so nothing that could walk
// out of a directory is accepted.
func validName(s string) bool {
	if s == "" || s == "." || s == ".." || len(s) > 100 {
		return false
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

func (c *common) sender() string {
	if c.Sender == nil {
		return ""
	}
	return c.Sender.Login
}

func decode(event string, payload []byte, v any) error {
	if err := json.Unmarshal(payload, v); err != nil {
		return forge.Errorf(forge.EINVALID, "%s payload does not have the shape of a GitHub %s event: %v", event, event, unwrapJSON(err))
	}
	return nil
}

// unwrapJSON shortens encoding/json's type errors to what a person needs.
func unwrapJSON(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Errorf("field %s is %s, want %s", te.Field, te.Value, te.Type)
	}
	return err
}

// pathsOf lists the files a push changed, sorted and without duplicates;
// nil when the payload cannot tell (no commits, or a list GitHub cut).
func pathsOf(commits []commit) []string {
	if len(commits) == 0 || len(commits) >= maxPushCommits {
		return nil
	}
	var paths []string
	for _, c := range commits {
		paths = append(paths, c.Added...)
		paths = append(paths, c.Removed...)
		paths = append(paths, c.Modified...)
	}
	if paths == nil {
		return nil // merge commits list no files: unknown, not "none"
	}
	slices.Sort(paths)
	return slices.Compact(paths)
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
