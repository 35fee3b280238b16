package github

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	gh "github.com/google/go-github/v76/github"

	"github.com/forgeci/forge"
)

// The kinds of outbox items this package delivers.
const (
	kindStatus     = "github_status"
	kindCheckRun   = "github_check_run"
	kindComment    = "github_comment"
	kindPromote    = "github_promote"
	kindDeployment = "github_deployment"
)

// target is the repository an item is about.
type target struct {
	Owner        string `json:"owner"`
	Repo         string `json:"repo"`
	Installation int64  `json:"installation,omitempty"`
}

// statusPayload is a commit status (POST /repos/{owner}/{repo}/statuses/{sha}).
type statusPayload struct {
	target
	SHA         string `json:"sha"`
	State       string `json:"state"` // pending, success, failure, error
	Context     string `json:"context"`
	Description string `json:"description"`
	TargetURL   string `json:"target_url,omitempty"`
}

// checkRunPayload is the state a check run should have.
type checkRunPayload struct {
	target
	SHA         string       `json:"sha"`
	Name        string       `json:"name"`
	ExternalID  string       `json:"external_id"`
	DetailsURL  string       `json:"details_url,omitempty"`
	Status      string       `json:"status"` // queued, in_progress, completed
	Conclusion  string       `json:"conclusion,omitempty"`
	StartedAt   time.Time    `json:"started_at,omitzero"`
	CompletedAt time.Time    `json:"completed_at,omitzero"`
	Title       string       `json:"title"`
	Summary     string       `json:"summary"`
	Text        string       `json:"text,omitempty"`
	Annotations []annotation `json:"annotations,omitempty"`
}

type annotation struct {
	Path      string `json:"path"`
	StartLine int    `json:"start_line"`
	EndLine   int    `json:"end_line"`
	Level     string `json:"annotation_level"`
	Title     string `json:"title,omitempty"`
	Message   string `json:"message"`
	Details   string `json:"raw_details,omitempty"`
}

// commentPayload is a comment on a pull request.
type commentPayload struct {
	target
	Number int    `json:"number"`
	Body   string `json:"body"`
}

// promotePayload asks for the promotion pull request Head → Base to list
// pull request Number.
type promotePayload struct {
	target
	Head   string `json:"head"`
	Base   string `json:"base"`
	Number int    `json:"number"`
	Title  string `json:"title"`
}

// deploymentPayload is a deployment of SHA and its latest state.
type deploymentPayload struct {
	target
	SHA         string `json:"sha"`
	Ref         string `json:"ref"`
	Environment string `json:"environment"`
	State       string `json:"state"` // queued, in_progress, success, failure, error
	Description string `json:"description"`
	LogURL      string `json:"log_url,omitempty"`
}

// MaxAnnotations is how many annotations GitHub takes per check run
// request; more are sent in further updates.
const MaxAnnotations = 50

// Deliver delivers an outbox item of this package's kinds through c. It
// is the Outbox's DeliverFunc.
func (c *Client) Deliver(ctx context.Context, it *forge.OutboxItem) (string, int, error) {
	switch it.Kind {
	case kindStatus:
		var p statusPayload
		if err := json.Unmarshal(it.Payload, &p); err != nil {
			return it.Ref, it.Progress, badPayload(it, err)
		}
		return it.Ref, it.Progress, c.deliverStatus(ctx, &p)
	case kindCheckRun:
		var p checkRunPayload
		if err := json.Unmarshal(it.Payload, &p); err != nil {
			return it.Ref, it.Progress, badPayload(it, err)
		}
		return c.deliverCheckRun(ctx, it, &p)
	case kindComment:
		var p commentPayload
		if err := json.Unmarshal(it.Payload, &p); err != nil {
			return it.Ref, it.Progress, badPayload(it, err)
		}
		return it.Ref, it.Progress, c.deliverComment(ctx, &p)
	case kindPromote:
		var p promotePayload
		if err := json.Unmarshal(it.Payload, &p); err != nil {
			return it.Ref, it.Progress, badPayload(it, err)
		}
		return c.deliverPromote(ctx, it, &p)
	case kindDeployment:
		var p deploymentPayload
		if err := json.Unmarshal(it.Payload, &p); err != nil {
			return it.Ref, it.Progress, badPayload(it, err)
		}
		return c.deliverDeployment(ctx, it, &p)
	}
	return it.Ref, it.Progress, forge.Errorf(forge.EINVALID, "github: outbox item %s has kind %q, which this forge does not deliver", it.Key, it.Kind)
}

func badPayload(it *forge.OutboxItem, err error) error {
	return forge.Errorf(forge.EINVALID, "github: outbox item %s: payload: %v", it.Key, err)
}

func (c *Client) deliverStatus(ctx context.Context, p *statusPayload) error {
	g, err := c.For(ctx, p.Owner, p.Repo, p.Installation)
	if err != nil {
		return err
	}
	st := &gh.RepoStatus{State: gh.Ptr(p.State), Context: gh.Ptr(p.Context), Description: gh.Ptr(cutRunes(p.Description, 140))}
	if p.TargetURL != "" {
		st.TargetURL = gh.Ptr(p.TargetURL)
	}
	_, _, err = g.Repositories.CreateStatus(ctx, p.Owner, p.Repo, p.SHA, st)
	return classify(err, fmt.Sprintf("status %s of %s/%s@%.7s", p.Context, p.Owner, p.Repo, p.SHA))
}

// deliverCheckRun creates the check run (Ref keeps its ID) or updates it,
// then sends its annotations in batches of MaxAnnotations, counting the
// batches sent in Progress so a retry does not send one twice.
func (c *Client) deliverCheckRun(ctx context.Context, it *forge.OutboxItem, p *checkRunPayload) (string, int, error) {
	ref, progress := it.Ref, it.Progress
	g, err := c.For(ctx, p.Owner, p.Repo, p.Installation)
	if err != nil {
		return ref, progress, err
	}
	what := fmt.Sprintf("check run %s of %s/%s@%.7s", p.Name, p.Owner, p.Repo, p.SHA)
	batches := (len(p.Annotations) + MaxAnnotations - 1) / MaxAnnotations
	output := func(batch int) *gh.CheckRunOutput {
		o := &gh.CheckRunOutput{Title: gh.Ptr(cutRunes(p.Title, 255)), Summary: gh.Ptr(cutRunes(p.Summary, 65535))}
		if p.Text != "" {
			o.Text = gh.Ptr(cutRunes(p.Text, 65535))
		}
		if batch < batches {
			for _, a := range p.Annotations[batch*MaxAnnotations : min((batch+1)*MaxAnnotations, len(p.Annotations))] {
				o.Annotations = append(o.Annotations, &gh.CheckRunAnnotation{
					Path: gh.Ptr(a.Path), StartLine: gh.Ptr(a.StartLine), EndLine: gh.Ptr(a.EndLine),
					AnnotationLevel: gh.Ptr(a.Level), Message: gh.Ptr(cutRunes(a.Message, 64000)),
					Title: nonEmpty(cutRunes(a.Title, 255)), RawDetails: nonEmpty(cutRunes(a.Details, 64000)),
				})
			}
		}
		return o
	}
	ts := func(t time.Time) *gh.Timestamp {
		if t.IsZero() {
			return nil
		}
		return &gh.Timestamp{Time: t}
	}
	sent := false
	if ref == "" {
		opts := gh.CreateCheckRunOptions{
			Name: p.Name, HeadSHA: p.SHA, ExternalID: gh.Ptr(p.ExternalID), Status: gh.Ptr(p.Status),
			StartedAt: ts(p.StartedAt), Output: output(0),
		}
		if p.DetailsURL != "" {
			opts.DetailsURL = gh.Ptr(p.DetailsURL)
		}
		if p.Status == "completed" {
			opts.Conclusion, opts.CompletedAt = gh.Ptr(p.Conclusion), ts(p.CompletedAt)
		}
		run, _, err := g.Checks.CreateCheckRun(ctx, p.Owner, p.Repo, opts)
		if err != nil {
			return ref, progress, classify(err, "create "+what)
		}
		ref, sent = strconv.FormatInt(run.GetID(), 10), true
		progress = min(1, batches)
	}
	id, err := strconv.ParseInt(ref, 10, 64)
	if err != nil {
		return "", 0, forge.Errorf(forge.EINVALID, "github: %s: stored check run id %q", what, ref)
	}
	update := func(batch int) error {
		opts := gh.UpdateCheckRunOptions{Name: p.Name, Status: gh.Ptr(p.Status), Output: output(batch)}
		if p.DetailsURL != "" {
			opts.DetailsURL = gh.Ptr(p.DetailsURL)
		}
		if p.Status == "completed" {
			opts.Conclusion, opts.CompletedAt = gh.Ptr(p.Conclusion), ts(p.CompletedAt)
		}
		_, _, err := g.Checks.UpdateCheckRun(ctx, p.Owner, p.Repo, id, opts)
		return classify(err, "update "+what)
	}
	// The annotations GitHub has not had yet, a batch per request; an
	// update without annotations when there are none left to send.
	for progress < batches {
		if err := update(progress); err != nil {
			return ref, progress, err
		}
		progress++
		sent = true
	}
	if !sent {
		if err := update(batches); err != nil {
			return ref, progress, err
		}
	}
	return ref, progress, nil
}

func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func (c *Client) deliverComment(ctx context.Context, p *commentPayload) error {
	g, err := c.For(ctx, p.Owner, p.Repo, p.Installation)
	if err != nil {
		return err
	}
	_, _, err = g.Issues.CreateComment(ctx, p.Owner, p.Repo, p.Number, &gh.IssueComment{Body: gh.Ptr(p.Body)})
	return classify(err, fmt.Sprintf("comment on %s/%s#%d", p.Owner, p.Repo, p.Number))
}

// cutRunes cuts s to at most n characters, on a character boundary.
func cutRunes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// promotionMarker starts the list of merged pull requests in a promotion
// pull request's body; forge keeps the lines after it.
const promotionMarker = "<!-- forge:promotion -->"

// deliverPromote opens the promotion pull request Head → Base listing
// pull request Number, or adds Number to the open one's list.
func (c *Client) deliverPromote(ctx context.Context, it *forge.OutboxItem, p *promotePayload) (string, int, error) {
	g, err := c.For(ctx, p.Owner, p.Repo, p.Installation)
	if err != nil {
		return it.Ref, 0, err
	}
	what := fmt.Sprintf("promotion pull request %s → %s of %s/%s", p.Head, p.Base, p.Owner, p.Repo)
	open, _, err := g.PullRequests.List(ctx, p.Owner, p.Repo, &gh.PullRequestListOptions{
		State: "open", Head: p.Owner + ":" + p.Head, Base: p.Base, ListOptions: gh.ListOptions{PerPage: 10},
	})
	if err != nil {
		return it.Ref, 0, classify(err, "list "+what)
	}
	line := fmt.Sprintf("- #%d %s", p.Number, p.Title)
	for _, pr := range open {
		if pr.GetHead().GetRef() != p.Head || pr.GetBase().GetRef() != p.Base {
			continue
		}
		body := pr.GetBody()
		if strings.Contains(body, fmt.Sprintf("- #%d ", p.Number)) {
			return strconv.Itoa(pr.GetNumber()), 1, nil // listed already (a redelivery)
		}
		if !strings.Contains(body, promotionMarker) {
			body = strings.TrimRight(body, "\n") + "\n\n" + promotionMarker
		}
		body = strings.TrimRight(body, "\n") + "\n" + line + "\n"
		if _, _, err := g.PullRequests.Edit(ctx, p.Owner, p.Repo, pr.GetNumber(), &gh.PullRequest{Body: gh.Ptr(body)}); err != nil {
			return it.Ref, 0, classify(err, "update "+what)
		}
		return strconv.Itoa(pr.GetNumber()), 1, nil
	}
	body := fmt.Sprintf("Promotes `%s` to `%s`. forge opened this pull request when a pull request passed and was merged into `%s`; it lists the pull requests merged since, and a merge deploys them.\n\n%s\n%s\n",
		p.Head, p.Base, p.Head, promotionMarker, line)
	pr, _, err := g.PullRequests.Create(ctx, p.Owner, p.Repo, &gh.NewPullRequest{
		Title: gh.Ptr(fmt.Sprintf("Promote %s to %s", p.Head, p.Base)), Head: gh.Ptr(p.Head), Base: gh.Ptr(p.Base), Body: gh.Ptr(body),
	})
	if err != nil {
		return it.Ref, 0, classify(err, "open "+what)
	}
	return strconv.Itoa(pr.GetNumber()), 1, nil
}

// deliverDeployment creates the deployment (Ref keeps its ID) and posts
// its latest state.
func (c *Client) deliverDeployment(ctx context.Context, it *forge.OutboxItem, p *deploymentPayload) (string, int, error) {
	ref := it.Ref
	g, err := c.For(ctx, p.Owner, p.Repo, p.Installation)
	if err != nil {
		return ref, 0, err
	}
	what := fmt.Sprintf("deployment of %s/%s@%.7s to %s", p.Owner, p.Repo, p.SHA, p.Environment)
	if ref == "" {
		d, _, err := g.Repositories.CreateDeployment(ctx, p.Owner, p.Repo, &gh.DeploymentRequest{
			Ref: gh.Ptr(p.SHA), Task: gh.Ptr("deploy"), AutoMerge: gh.Ptr(false), RequiredContexts: &[]string{},
			Environment: gh.Ptr(p.Environment), Description: gh.Ptr(cutRunes("forge: "+p.Ref, 140)),
			ProductionEnvironment: gh.Ptr(true),
		})
		if err != nil {
			return ref, 0, classify(err, "create "+what)
		}
		ref = strconv.FormatInt(d.GetID(), 10)
	}
	id, err := strconv.ParseInt(ref, 10, 64)
	if err != nil {
		return "", 0, forge.Errorf(forge.EINVALID, "github: %s: stored deployment id %q", what, ref)
	}
	req := &gh.DeploymentStatusRequest{State: gh.Ptr(p.State), Description: gh.Ptr(cutRunes(p.Description, 140)), Environment: gh.Ptr(p.Environment)}
	if p.LogURL != "" {
		req.LogURL = gh.Ptr(p.LogURL)
	}
	if _, _, err := g.Repositories.CreateDeploymentStatus(ctx, p.Owner, p.Repo, id, req); err != nil {
		return ref, 0, classify(err, "report the state of "+what)
	}
	return ref, 1, nil
}
