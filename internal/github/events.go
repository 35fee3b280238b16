package github

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/forgeci/forge"
)

type prRef struct {
	Ref  string      `json:"ref"`
	SHA  string      `json:"sha"`
	Repo *repository `json:"repo"`
}

type pullRequest struct {
	Number            int    `json:"number"`
	State             string `json:"state"`
	AuthorAssociation string `json:"author_association"`
	Title             string `json:"title"`
	User              *user  `json:"user"`
	Draft             bool   `json:"draft"`
	Merged            bool   `json:"merged"`
	MergeCommitSHA    string `json:"merge_commit_sha"`
	Commits           int    `json:"commits"`
	Head              *prRef `json:"head"`
	Base              *prRef `json:"base"`
}

// fork reports whether the pull request's code comes from another
// repository than the one it goes into. A head repository GitHub no longer
// knows (a deleted fork) counts as a fork: its code is not trusted.
func (pr *pullRequest) fork() bool {
	if pr.Head.Repo == nil || pr.Base.Repo == nil {
		return true
	}
	if pr.Head.Repo.ID != 0 && pr.Base.Repo.ID != 0 {
		return pr.Head.Repo.ID != pr.Base.Repo.ID
	}
	return !strings.EqualFold(pr.Head.Repo.FullName, pr.Base.Repo.FullName)
}

// The pull_request actions forge builds; closed builds only when merged.
var pullRequestActions = map[string]bool{"opened": true, "reopened": true, "synchronize": true, "ready_for_review": true, "closed": true}

func parsePullRequest(payload []byte) (*forge.Hook, string, error) {
	var p struct {
		common
		Number      int          `json:"number"`
		Before      string       `json:"before"`
		PullRequest *pullRequest `json:"pull_request"`
	}
	if err := decode("pull_request", payload, &p); err != nil {
		return nil, "", err
	}
	repo, err := p.repo("pull_request")
	if err != nil {
		return nil, "", err
	}
	pr := p.PullRequest
	switch {
	case p.Action == "":
		return nil, "", forge.Errorf(forge.EINVALID, "pull_request payload has no action")
	case pr == nil:
		return nil, "", forge.Errorf(forge.EINVALID, "pull_request payload has no pull_request")
	case pr.Head == nil || pr.Base == nil:
		return nil, "", forge.Errorf(forge.EINVALID, "pull_request payload: pull request has no head or base")
	case !forge.IsSHA(pr.Head.SHA):
		return nil, "", forge.Errorf(forge.EINVALID, "pull_request payload: head sha %q is not a commit id", pr.Head.SHA)
	case !forge.ValidRefName(pr.Base.Ref):
		return nil, "", forge.Errorf(forge.EINVALID, "pull_request payload: base ref %q is not a branch name", pr.Base.Ref)
	}
	number := firstNonZero(pr.Number, p.Number)
	if number <= 0 {
		return nil, "", forge.Errorf(forge.EINVALID, "pull_request payload has no pull request number")
	}
	if !pullRequestActions[p.Action] {
		return nil, fmt.Sprintf("pull_request action %q is not built", p.Action), nil
	}
	h := &forge.Hook{
		Event:        "pull_request",
		Action:       p.Action,
		Repo:         repo,
		Ref:          "refs/pull/" + strconv.Itoa(number) + "/head",
		Branch:       pr.Head.Ref,
		Target:       pr.Base.Ref,
		SHA:          pr.Head.SHA,
		PullRequest:  number,
		Draft:        pr.Draft,
		Fork:         pr.fork(),
		Sender:       p.sender(),
		CommitCount:  pr.Commits,
		Installation: p.installation(),
		Association:  pr.AuthorAssociation,
	}
	if pr.User != nil {
		h.Author = pr.User.Login
	}
	if forge.IsSHA(pr.Base.SHA) {
		h.Base = pr.Base.SHA
	}
	if p.Action == "synchronize" && forge.IsSHA(p.Before) && p.Before != zeroSHA {
		h.Before = p.Before
	}
	if p.Action == "closed" {
		if !pr.Merged {
			return nil, fmt.Sprintf("pull request #%d closed without merging", number), nil
		}
		// A merge builds what landed on the target branch: the merge commit.
		if !forge.IsSHA(pr.MergeCommitSHA) {
			return nil, "", forge.Errorf(forge.EINVALID, "pull_request payload: merged pull request #%d has no merge_commit_sha", number)
		}
		h.Merged = true
		h.SHA = pr.MergeCommitSHA
		h.Ref = "refs/heads/" + pr.Base.Ref
		h.Before = pr.Base.SHA
		if !forge.IsSHA(h.Before) {
			h.Before = ""
		}
	}
	return h, "", nil
}

func parsePush(payload []byte) (*forge.Hook, string, error) {
	var p struct {
		common
		Ref        string   `json:"ref"`
		Before     string   `json:"before"`
		After      string   `json:"after"`
		Created    bool     `json:"created"`
		Deleted    bool     `json:"deleted"`
		BaseRef    *string  `json:"base_ref"`
		Commits    []commit `json:"commits"`
		HeadCommit *commit  `json:"head_commit"`
		Pusher     *struct {
			Name string `json:"name"`
		} `json:"pusher"`
	}
	if err := decode("push", payload, &p); err != nil {
		return nil, "", err
	}
	repo, err := p.repo("push")
	if err != nil {
		return nil, "", err
	}
	if p.Ref == "" {
		return nil, "", forge.Errorf(forge.EINVALID, "push payload has no ref")
	}
	if p.Deleted || p.After == zeroSHA {
		return nil, fmt.Sprintf("%s deleted", p.Ref), nil
	}
	if !forge.IsSHA(p.After) {
		return nil, "", forge.Errorf(forge.EINVALID, "push payload: after %q is not a commit id", p.After)
	}
	h := &forge.Hook{
		Event:        "push",
		Repo:         repo,
		Ref:          p.Ref,
		SHA:          p.After,
		Sender:       p.sender(),
		CommitCount:  len(p.Commits),
		Paths:        pathsOf(p.Commits),
		Installation: p.installation(),
	}
	if forge.IsSHA(p.Before) && p.Before != zeroSHA {
		h.Before = p.Before
	}
	if hc := p.HeadCommit; hc != nil {
		h.Message = hc.Message
		h.Author = firstNonEmpty(hc.Author.Username, hc.Author.Name)
	}
	if h.Author == "" && p.Pusher != nil {
		h.Author = p.Pusher.Name
	}
	switch {
	case strings.HasPrefix(p.Ref, "refs/heads/"):
		h.Branch = strings.TrimPrefix(p.Ref, "refs/heads/")
		h.Target = h.Branch
		if !forge.ValidRefName(h.Branch) {
			return nil, "", forge.Errorf(forge.EINVALID, "push payload: ref %q is not a valid branch name", p.Ref)
		}
	case strings.HasPrefix(p.Ref, "refs/tags/"):
		h.Event = "tag"
		h.Tag = strings.TrimPrefix(p.Ref, "refs/tags/")
		if !forge.ValidRefName(h.Tag) {
			return nil, "", forge.Errorf(forge.EINVALID, "push payload: ref %q is not a valid tag name", p.Ref)
		}
		if p.BaseRef != nil && strings.HasPrefix(*p.BaseRef, "refs/heads/") {
			h.Branch = strings.TrimPrefix(*p.BaseRef, "refs/heads/")
		}
	default:
		return nil, fmt.Sprintf("push to %s, which is neither a branch nor a tag", p.Ref), nil
	}
	return h, "", nil
}

// parseRefEvent reads create and delete. GitHub sends a push event along
// with every creation (which forge builds) and a deleted push along with
// every deletion, and neither payload names a commit: both are recorded
// and ignored.
func parseRefEvent(event string, payload []byte) (*forge.Hook, string, error) {
	var p struct {
		common
		Ref     string `json:"ref"`
		RefType string `json:"ref_type"`
	}
	if err := decode(event, payload, &p); err != nil {
		return nil, "", err
	}
	if _, err := p.repo(event); err != nil {
		return nil, "", err
	}
	if p.Ref == "" || (p.RefType != "branch" && p.RefType != "tag") {
		return nil, "", forge.Errorf(forge.EINVALID, "%s payload needs a ref and a ref_type of branch or tag (got %q, %q)", event, p.Ref, p.RefType)
	}
	if event == "create" {
		return nil, fmt.Sprintf("%s %s created: built from the push event GitHub sends with it", p.RefType, p.Ref), nil
	}
	return nil, fmt.Sprintf("%s %s deleted", p.RefType, p.Ref), nil
}

func parseCheckSuite(payload []byte) (*forge.Hook, string, error) {
	var p struct {
		common
		CheckSuite *struct {
			HeadBranch   *string `json:"head_branch"`
			HeadSHA      string  `json:"head_sha"`
			Before       string  `json:"before"`
			PullRequests []struct {
				Number int    `json:"number"`
				Head   *prRef `json:"head"`
				Base   *prRef `json:"base"`
			} `json:"pull_requests"`
			HeadCommit *commit `json:"head_commit"`
		} `json:"check_suite"`
	}
	if err := decode("check_suite", payload, &p); err != nil {
		return nil, "", err
	}
	repo, err := p.repo("check_suite")
	if err != nil {
		return nil, "", err
	}
	cs := p.CheckSuite
	if cs == nil {
		return nil, "", forge.Errorf(forge.EINVALID, "check_suite payload has no check_suite")
	}
	if !forge.IsSHA(cs.HeadSHA) {
		return nil, "", forge.Errorf(forge.EINVALID, "check_suite payload: head_sha %q is not a commit id", cs.HeadSHA)
	}
	if p.Action != "rerequested" {
		return nil, fmt.Sprintf("check_suite action %q: forge builds from push and pull_request events and rebuilds on rerequested", p.Action), nil
	}
	h := &forge.Hook{
		Event:        "push",
		Action:       "rerequested",
		Repo:         repo,
		SHA:          cs.HeadSHA,
		Sender:       p.sender(),
		Installation: p.installation(),
	}
	if hc := cs.HeadCommit; hc != nil {
		h.Message = hc.Message
		h.Author = firstNonEmpty(hc.Author.Username, hc.Author.Name)
	}
	// A suite of a pull request's head reruns that pull request's build.
	for _, pr := range cs.PullRequests {
		if pr.Number <= 0 || pr.Head == nil || pr.Base == nil || pr.Head.SHA != cs.HeadSHA {
			continue
		}
		h.Event = "pull_request"
		h.PullRequest = pr.Number
		h.Ref = "refs/pull/" + strconv.Itoa(pr.Number) + "/head"
		h.Branch = pr.Head.Ref
		h.Target = pr.Base.Ref
		h.Fork = pr.Head.Repo == nil || pr.Base.Repo == nil || pr.Head.Repo.ID != pr.Base.Repo.ID
		if forge.IsSHA(pr.Base.SHA) {
			h.Base = pr.Base.SHA
		}
		return h, "", nil
	}
	if cs.HeadBranch == nil || !forge.ValidRefName(*cs.HeadBranch) {
		// GitHub gives no branch for a suite of a fork's pull request
		// that it could not match; forge cannot tell what to run.
		return nil, "check suite rerequested for a commit on no known branch or pull request", nil
	}
	h.Branch = *cs.HeadBranch
	h.Target = h.Branch
	h.Ref = "refs/heads/" + h.Branch
	return h, "", nil
}

// parseCheckRun reads check_run: a re-requested check run of forge's
// rebuilds its commit like a re-requested check suite (forge reruns a
// build as a whole).
func parseCheckRun(payload []byte) (*forge.Hook, string, error) {
	var p struct {
		common
		CheckRun *struct {
			HeadSHA      string           `json:"head_sha"`
			ExternalID   string           `json:"external_id"`
			CheckSuite   *json.RawMessage `json:"check_suite"`
			PullRequests []any            `json:"pull_requests"`
		} `json:"check_run"`
	}
	if err := decode("check_run", payload, &p); err != nil {
		return nil, "", err
	}
	if _, err := p.repo("check_run"); err != nil {
		return nil, "", err
	}
	cr := p.CheckRun
	if cr == nil || cr.CheckSuite == nil {
		return nil, "", forge.Errorf(forge.EINVALID, "check_run payload has no check_run with a check_suite")
	}
	if p.Action != "rerequested" {
		return nil, fmt.Sprintf("check_run action %q: forge reruns on rerequested", p.Action), nil
	}
	// The check suite inside carries what a check_suite event does; the
	// pull requests are the check run's.
	var suite map[string]any
	if err := json.Unmarshal(*cr.CheckSuite, &suite); err != nil || suite == nil {
		return nil, "", forge.Errorf(forge.EINVALID, "check_run payload: check_suite is not an object")
	}
	if suite["head_sha"] == nil {
		suite["head_sha"] = cr.HeadSHA
	}
	if cr.PullRequests != nil {
		suite["pull_requests"] = cr.PullRequests
	}
	var whole map[string]any
	if err := json.Unmarshal(payload, &whole); err != nil {
		return nil, "", forge.Errorf(forge.EINVALID, "check_run payload: %v", err)
	}
	delete(whole, "check_run")
	whole["check_suite"] = suite
	as, err := json.Marshal(whole)
	if err != nil {
		return nil, "", forge.Errorf(forge.EINVALID, "check_run payload: %v", err)
	}
	return parseCheckSuite(as)
}

// Who may ask for a rebuild with a comment: people with write access.
// Anyone can comment on a public repository's pull request.
var commandAssociations = map[string]bool{"OWNER": true, "MEMBER": true, "COLLABORATOR": true}

func parseIssueComment(payload []byte) (*forge.Hook, string, error) {
	var p struct {
		common
		Issue *struct {
			Number      int `json:"number"`
			PullRequest *struct {
				URL string `json:"url"`
			} `json:"pull_request"`
		} `json:"issue"`
		Comment *struct {
			Body              string `json:"body"`
			User              *user  `json:"user"`
			AuthorAssociation string `json:"author_association"`
		} `json:"comment"`
	}
	if err := decode("issue_comment", payload, &p); err != nil {
		return nil, "", err
	}
	repo, err := p.repo("issue_comment")
	if err != nil {
		return nil, "", err
	}
	if p.Issue == nil || p.Comment == nil || p.Issue.Number <= 0 {
		return nil, "", forge.Errorf(forge.EINVALID, "issue_comment payload needs an issue with a number and a comment")
	}
	if p.Action != "created" {
		return nil, fmt.Sprintf("issue_comment action %q: only new comments are commands", p.Action), nil
	}
	action, cmd := Command(p.Comment.Body)
	if action == "" {
		return nil, "comment is not a /retest command", nil
	}
	if p.Issue.PullRequest == nil {
		return nil, fmt.Sprintf("%s on issue #%d, which is not a pull request", cmd, p.Issue.Number), nil
	}
	if !commandAssociations[p.Comment.AuthorAssociation] {
		// The trigger answers: the command did nothing, and why.
		action = "denied"
	}
	h := &forge.Hook{
		Event:        "pull_request",
		Action:       action,
		Repo:         repo,
		Ref:          "refs/pull/" + strconv.Itoa(p.Issue.Number) + "/head",
		PullRequest:  p.Issue.Number,
		Sender:       p.sender(),
		Installation: p.installation(),
	}
	if action != "retest" {
		// The command and who gave it, for the trigger's answer.
		h.Message, h.Association = cmd, p.Comment.AuthorAssociation
	}
	return h, "", nil
}

// IsRetest reports whether a comment is a rebuild command: a line that is
// "/retest", "/rebuild" or "/forge retest", alone or followed by words.
func IsRetest(body string) bool {
	action, _ := Command(body)
	return action == "retest"
}

// Command finds the first command in a comment: a line starting with
// "/retest", "/rebuild" or "/forge retest" (action "retest"), or
// "/forge approve" (action "approve"). cmd is the command as written.
func Command(body string) (action, cmd string) {
	for _, line := range strings.Split(body, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case f[0] == "/retest" || f[0] == "/rebuild":
			return "retest", f[0]
		case f[0] == "/forge" && len(f) > 1 && (f[1] == "retest" || f[1] == "rebuild"):
			return "retest", "/forge " + f[1]
		case f[0] == "/forge" && len(f) > 1 && f[1] == "approve":
			return "approve", "/forge approve"
		}
	}
	return "", ""
}

func parseInstallation(payload []byte) (*forge.Hook, string, error) {
	var p struct {
		common
		Installation *struct {
			ID int64 `json:"id"`
		} `json:"installation"`
		Repositories []struct {
			FullName string `json:"full_name"`
		} `json:"repositories"`
	}
	if err := decode("installation", payload, &p); err != nil {
		return nil, "", err
	}
	if p.Installation == nil || p.Installation.ID == 0 {
		return nil, "", forge.Errorf(forge.EINVALID, "installation payload has no installation id")
	}
	names := make([]string, 0, len(p.Repositories))
	for _, r := range p.Repositories {
		names = append(names, r.FullName)
	}
	return nil, fmt.Sprintf("installation %d %s for %s: recorded", p.Installation.ID, firstNonEmpty(p.Action, "event"), firstNonEmpty(strings.Join(names, ", "), "no listed repositories")), nil
}

func firstNonZero(v ...int) int {
	for _, n := range v {
		if n != 0 {
			return n
		}
	}
	return 0
}
