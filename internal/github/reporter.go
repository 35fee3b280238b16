package github

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/forgeci/forge"
)

// Repos finds a build's repository (forge.RepoStore).
type Repos interface {
	Repo(ctx context.Context, id int64) (*forge.Repo, error)
}

// Jobs lists a build's jobs (forge.BuildStore).
type Jobs interface {
	Jobs(ctx context.Context, buildID int64) ([]*forge.BuildJob, error)
}

// Adder queues outbox items (an *Outbox).
type Adder interface {
	Add(items ...*forge.OutboxItem)
}

// ReporterOptions configure a Reporter. Outbox, Repos and Jobs are
// required.
type ReporterOptions struct {
	Outbox Adder
	Repos  Repos
	Jobs   Jobs
	// PublicURL is forge's address as users reach it: statuses and check
	// runs link to PUBLIC/OWNER/REPO/builds/N/jobs/ID.
	PublicURL string
	// Checks also reports check runs (a GitHub App only: GitHub refuses
	// check runs from tokens).
	Checks bool
	// DeployActions are the actions reported as deployments (default
	// "deploy"), to Environment (default "production").
	DeployActions []string
	Environment   string
	Logger        *slog.Logger
}

// Reporter turns build and job changes into GitHub commit statuses,
// check runs and deployments, queued in the outbox. It is a forge.Observer:
// Observe only queues the change in memory; Run turns changes into outbox
// items, so a slow database or GitHub never slows a build.
type Reporter struct {
	opts ReporterOptions
	log  *slog.Logger

	mu      sync.Mutex
	changes []*forge.Change
	wake    chan struct{}
	idle    *sync.Cond
	busy    bool

	repoMu sync.Mutex
	repos  map[int64]*forge.Repo
}

var _ forge.Observer = (*Reporter)(nil)

// NewReporter returns a Reporter; Run starts it.
func NewReporter(opts ReporterOptions) *Reporter {
	if len(opts.DeployActions) == 0 {
		opts.DeployActions = []string{"deploy"}
	}
	if opts.Environment == "" {
		opts.Environment = "production"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Reporter{opts: opts, log: opts.Logger, wake: make(chan struct{}, 1), repos: map[int64]*forge.Repo{}}
	r.idle = sync.NewCond(&r.mu)
	return r
}

// Observe queues c. It never blocks.
func (r *Reporter) Observe(c *forge.Change) {
	r.mu.Lock()
	r.changes = append(r.changes, c)
	r.mu.Unlock()
	wake(r.wake)
}

// Run turns the observed changes into outbox items until ctx ends, then
// turns those still queued (so that the outbox stores them).
func (r *Reporter) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			r.drain(fctx)
			cancel()
			return nil
		case <-r.wake:
		}
		r.drain(ctx)
	}
}

func (r *Reporter) drain(ctx context.Context) {
	for {
		r.mu.Lock()
		batch := r.changes
		r.changes = nil
		r.busy = len(batch) > 0
		if !r.busy {
			r.idle.Broadcast()
		}
		r.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		var items []*forge.OutboxItem
		for _, c := range batch {
			items = append(items, r.items(ctx, c)...)
		}
		r.opts.Outbox.Add(items...)
	}
}

// Idle waits until every observed change is turned into items (tests).
func (r *Reporter) Idle(ctx context.Context) bool {
	stop := context.AfterFunc(ctx, func() { r.mu.Lock(); r.idle.Broadcast(); r.mu.Unlock() })
	defer stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	for ctx.Err() == nil && (len(r.changes) > 0 || r.busy) {
		r.idle.Wait()
	}
	return ctx.Err() == nil
}

// repo returns build b's repository, cached.
func (r *Reporter) repo(ctx context.Context, b *forge.Build) *forge.Repo {
	if b.Hook.Repo.Owner != "" && b.Hook.Repo.Name != "" {
		return &b.Hook.Repo
	}
	r.repoMu.Lock()
	repo := r.repos[b.RepoID]
	r.repoMu.Unlock()
	if repo != nil {
		return repo
	}
	repo, err := r.opts.Repos.Repo(ctx, b.RepoID)
	if err != nil {
		r.log.Warn("github: build without a repository", "build", b.ID, "err", err)
		return nil
	}
	r.repoMu.Lock()
	r.repos[b.RepoID] = repo
	r.repoMu.Unlock()
	return repo
}

// items turns one change into outbox items.
func (r *Reporter) items(ctx context.Context, c *forge.Change) []*forge.OutboxItem {
	b := &c.Build
	if b.Hook.SHA == "" {
		return nil // nothing on GitHub to report on
	}
	repo := r.repo(ctx, b)
	if repo == nil {
		return nil
	}
	var out []*forge.OutboxItem
	if r.deploys(b) {
		out = append(out, r.deployment(repo, c)...)
	}
	if c.Job != nil {
		return append(out, r.jobItems(repo, b, c.Job, c, false)...)
	}
	jobs := c.Jobs
	switch {
	case b.Status == forge.StatusBlocked, b.Status == forge.StatusQueued && jobs != nil:
		// A new build: every job is queued, or waits for approval.
		for _, j := range jobs {
			jj := *j
			if b.Status == forge.StatusBlocked {
				jj.Status = forge.StatusBlocked
			}
			out = append(out, r.jobItems(repo, b, &jj, c, false)...)
		}
	case b.Status.Done():
		// The build ended: every job that ended without its own change
		// reaching here (a server that died, a cancel before the start)
		// gets its final state, unless a better one is there.
		if jobs == nil {
			var err error
			if jobs, err = r.opts.Jobs.Jobs(ctx, b.ID); err != nil {
				r.log.Warn("github: jobs of a finished build", "build", b.ID, "err", err)
				return out
			}
		}
		for _, j := range jobs {
			if !j.Status.Done() {
				continue
			}
			jj := *j
			if jj.Error == "" && b.Error != "" && jj.Status != forge.StatusSuccess {
				jj.Error = b.Error
			}
			out = append(out, r.jobItems(repo, b, &jj, c, true)...)
		}
	}
	return out
}

// deploys reports whether b is reported as a deployment.
func (r *Reporter) deploys(b *forge.Build) bool {
	for _, a := range r.opts.DeployActions {
		if a == b.Action {
			return true
		}
	}
	return false
}

// Rank of a change: later builds, later attempts and later states rank
// higher, so an outdated message (a "running" after "success") is dropped.
func rank(b *forge.Build, attempt int, st forge.Status) int64 {
	var s int64
	switch st {
	case forge.StatusBlocked:
		s = 0
	case forge.StatusPending, forge.StatusQueued:
		s = 1
	case forge.StatusWaiting:
		s = 2
	case forge.StatusRunning:
		s = 3
	default:
		s = 7 // final
	}
	return b.ID<<12 | int64(min(max(attempt, 0), 255))<<3 | s
}

// Context returns the commit status context of job in a build of action:
// forge/JOB for the default action (and for a job named like its action),
// forge/ACTION/JOB otherwise. Matrix jobs carry their values in their
// name, so every variant has its own stable context.
func Context(action, job string) string {
	if action == "" || action == "execute" || action == job {
		return "forge/" + job
	}
	return "forge/" + action + "/" + job
}

// jobURL is job j's page on forge.
func (r *Reporter) jobURL(repo *forge.Repo, b *forge.Build, j *forge.BuildJob) string {
	if r.opts.PublicURL == "" {
		return ""
	}
	u := fmt.Sprintf("%s/%s/%s/builds/%d", strings.TrimRight(r.opts.PublicURL, "/"), repo.Owner, repo.Name, b.Number)
	if j.ID > 0 {
		u += "/jobs/" + strconv.FormatInt(j.ID, 10)
	}
	return u
}

func tgt(repo *forge.Repo, b *forge.Build) target {
	inst := b.Hook.Installation
	return target{Owner: repo.Owner, Repo: repo.Name, Installation: inst}
}

// jobItems are the status and check run of job j; weak ones do not
// replace what a job's own change said.
func (r *Reporter) jobItems(repo *forge.Repo, b *forge.Build, j *forge.BuildJob, c *forge.Change, weak bool) []*forge.OutboxItem {
	var tests *forge.TestSummary
	var tail []string
	if c.Job != nil {
		tests, tail = c.Tests, c.Tail
	}
	ctxName := Context(b.Action, j.Name)
	rk := rank(b, j.Attempt, j.Status)
	state, desc := statusOf(b, j, tests)
	sp := statusPayload{target: tgt(repo, b), SHA: b.Hook.SHA, State: state, Context: ctxName, Description: desc, TargetURL: r.jobURL(repo, b, j)}
	out := []*forge.OutboxItem{{
		Key:     fmt.Sprintf("status/%s/%s/%s/%s", repo.Owner, repo.Name, b.Hook.SHA, ctxName),
		Kind:    kindStatus,
		Rank:    rk,
		Weak:    weak,
		Payload: mustJSON(sp),
	}}
	if r.opts.Checks {
		cp := r.checkRun(repo, b, j, tests, tail, ctxName, desc)
		out = append(out, &forge.OutboxItem{
			Key:     fmt.Sprintf("check/%s/%s/%d/%s", repo.Owner, repo.Name, b.ID, j.Name),
			Kind:    kindCheckRun,
			Rank:    rk,
			Weak:    weak,
			Payload: mustJSON(cp),
		})
	}
	return out
}

func mustJSON(v any) []byte {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err) // plain structs of strings and numbers
	}
	return data
}

// statusOf is the commit status of job j: its state and a description
// that says what happened.
func statusOf(b *forge.Build, j *forge.BuildJob, tests *forge.TestSummary) (state, desc string) {
	switch j.Status {
	case forge.StatusBlocked:
		return "pending", "waiting for approval: a maintainer comments /forge approve"
	case forge.StatusPending, forge.StatusQueued:
		return "pending", "queued"
	case forge.StatusWaiting:
		return "pending", "waiting for resources"
	case forge.StatusRunning:
		if j.Attempt > 1 {
			return "pending", fmt.Sprintf("running (attempt %d)", j.Attempt)
		}
		return "pending", "running"
	case forge.StatusSuccess:
		d := duration(j)
		if tests != nil && tests.Total > 0 {
			return "success", fmt.Sprintf("%d tests passed%s", tests.Total-tests.Skipped, d)
		}
		return "success", "passed" + d
	case forge.StatusSkipped:
		return "success", "skipped: " + firstLine(firstNonEmpty(j.Error, "not run"))
	case forge.StatusFailure:
		switch {
		case tests != nil && tests.Failed > 0:
			return "failure", fmt.Sprintf("%d of %d tests failed", tests.Failed, tests.Total)
		case j.Error != "":
			return "failure", firstLine(j.Error)
		}
		if s := failedStep(j); s != nil {
			return "failure", fmt.Sprintf("step %q failed with exit code %d%s", s.Name, s.ExitCode, duration(j))
		}
		return "failure", fmt.Sprintf("failed with exit code %d%s", j.ExitCode, duration(j))
	case forge.StatusCanceled:
		return "error", "canceled: " + firstLine(firstNonEmpty(supersededBy(b), j.Error, b.Error, "canceled"))
	}
	return "error", "error: " + firstLine(firstNonEmpty(j.Error, b.Error, "forge could not run the job"))
}

// supersededBy rewords a build superseded by a newer one.
func supersededBy(b *forge.Build) string {
	if strings.HasPrefix(b.Error, "superseded by") {
		return b.Error
	}
	return ""
}

func failedStep(j *forge.BuildJob) *forge.BuildStep {
	for _, s := range j.Steps {
		if s.Status == forge.StatusFailure {
			return s
		}
	}
	return nil
}

// duration is " in 1m3s" for a finished job.
func duration(j *forge.BuildJob) string {
	if j.Started.IsZero() || j.Finished.IsZero() || j.Finished.Before(j.Started) {
		return ""
	}
	return " in " + human(j.Finished.Sub(j.Started))
}

// human rounds d for people: 850ms, 12s, 3m4s, 1h2m.
func human(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return strings.TrimSuffix(d.Round(time.Second).String(), "0s")
	}
	return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
}

// checkRun is the check run of job j.
func (r *Reporter) checkRun(repo *forge.Repo, b *forge.Build, j *forge.BuildJob, tests *forge.TestSummary, tail []string, name, desc string) checkRunPayload {
	p := checkRunPayload{
		target:     tgt(repo, b),
		SHA:        b.Hook.SHA,
		Name:       name,
		ExternalID: fmt.Sprintf("%d/%s", b.ID, j.Name),
		DetailsURL: r.jobURL(repo, b, j),
		StartedAt:  j.Started,
		Title:      desc,
	}
	switch {
	case !j.Status.Done():
		p.Status = "queued"
		if j.Status == forge.StatusRunning {
			p.Status = "in_progress"
		}
		p.Summary = fmt.Sprintf("Build #%d of `%.7s`: %s.", b.Number, b.Hook.SHA, desc)
		return p
	}
	p.Status = "completed"
	p.CompletedAt = j.Finished
	if p.CompletedAt.IsZero() {
		p.CompletedAt = time.Now().UTC()
	}
	switch j.Status {
	case forge.StatusSuccess:
		p.Conclusion = "success"
	case forge.StatusSkipped:
		p.Conclusion = "skipped"
	case forge.StatusCanceled:
		p.Conclusion = "cancelled"
	case forge.StatusFailure:
		p.Conclusion = "failure"
		if strings.Contains(j.Error, "timed out") {
			p.Conclusion = "timed_out"
		}
	default:
		p.Conclusion = "failure"
	}
	p.Summary = summary(b, j, tests, desc)
	if len(tail) > 0 {
		p.Text = "The last lines of the log:\n\n```text\n" + strings.ReplaceAll(strings.Join(tail, "\n"), "```", "`\u200b``") + "\n```\n"
	}
	if tests != nil {
		for _, f := range tests.Failures {
			a := annotation{Path: f.File, StartLine: f.Line, Level: "failure", Title: strings.TrimPrefix(f.Suite+"."+f.Name, "."), Message: firstNonEmpty(f.Message, "failed"), Details: f.Details}
			if a.Path == "" || strings.HasPrefix(a.Path, "/") {
				a.Path = f.Report // GitHub needs a path in the repository
			}
			if a.StartLine <= 0 {
				a.StartLine = 1
			}
			a.EndLine = a.StartLine
			p.Annotations = append(p.Annotations, a)
		}
	}
	return p
}

// summary is a check run's Markdown summary: what happened, the tests,
// and each step with its duration.
func summary(b *forge.Build, j *forge.BuildJob, tests *forge.TestSummary, desc string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "**%s** — build #%d of `%.7s`", desc, b.Number, b.Hook.SHA)
	if j.Attempt > 1 {
		fmt.Fprintf(&sb, ", attempt %d", j.Attempt)
	}
	sb.WriteString(".\n\n")
	if tests != nil && (tests.Total > 0 || len(tests.Problems) > 0) {
		fmt.Fprintf(&sb, "Tests: %d, failed %d, skipped %d, passed %d (from %d report files).\n\n",
			tests.Total, tests.Failed, tests.Skipped, tests.Total-tests.Failed-tests.Skipped, len(tests.Reports))
		for _, p := range tests.Problems {
			fmt.Fprintf(&sb, "- report problem: %s\n", mdEscape(p))
		}
		if tests.Failed > len(tests.Failures) {
			fmt.Fprintf(&sb, "\nThe first %d failures are annotated.\n", len(tests.Failures))
		}
		sb.WriteString("\n")
	}
	if len(j.Steps) > 0 {
		sb.WriteString("| Step | Result | Duration |\n| --- | --- | --- |\n")
		for _, s := range j.Steps {
			d := ""
			if !s.Started.IsZero() && !s.Finished.IsZero() {
				d = human(s.Finished.Sub(s.Started))
			}
			res := string(s.Status)
			if s.Status == forge.StatusFailure {
				res = fmt.Sprintf("failure (exit %d)", s.ExitCode)
			}
			fmt.Fprintf(&sb, "| %s | %s | %s |\n", mdEscape(s.Name), res, d)
		}
	}
	return sb.String()
}

// mdEscape keeps text from breaking a Markdown table or making links.
func mdEscape(s string) string {
	r := strings.NewReplacer("|", "\\|", "\n", " ", "<", "&lt;", ">", "&gt;", "[", "\\[", "]", "\\]")
	return r.Replace(s)
}

// deployment is the deployment item of a deploy build's change.
func (r *Reporter) deployment(repo *forge.Repo, c *forge.Change) []*forge.OutboxItem {
	b := &c.Build
	if c.Job != nil {
		return nil // the build's own changes say it
	}
	var state string
	switch b.Status {
	case forge.StatusQueued, forge.StatusPending:
		state = "queued"
	case forge.StatusRunning:
		state = "in_progress"
	case forge.StatusSuccess:
		state = "success"
	case forge.StatusFailure:
		state = "failure"
	case forge.StatusError, forge.StatusCanceled:
		state = "error"
	default:
		return nil
	}
	desc := map[string]string{"queued": "deploy queued", "in_progress": "deploying", "success": "deployed", "failure": "the deploy failed", "error": "the deploy could not run"}[state]
	if b.Error != "" && state == "error" {
		desc += ": " + firstLine(b.Error)
	}
	p := deploymentPayload{target: tgt(repo, b), SHA: b.Hook.SHA, Ref: firstNonEmpty(b.Hook.Target, b.Hook.Branch, b.Hook.Ref),
		Environment: r.opts.Environment, State: state, Description: desc, LogURL: r.jobURL(repo, b, &forge.BuildJob{})}
	return []*forge.OutboxItem{{
		Key:     fmt.Sprintf("deploy/%s/%s/%d", repo.Owner, repo.Name, b.ID),
		Kind:    kindDeployment,
		Rank:    rank(b, 0, b.Status),
		Payload: mustJSON(p),
	}}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// Comment queues a comment on the pull request of h.
func (r *Reporter) Comment(h *forge.Hook, body string) error {
	if h.PullRequest <= 0 || h.Repo.Owner == "" {
		return forge.Errorf(forge.EINVALID, "github: a comment needs a pull request")
	}
	p := commentPayload{target: target{Owner: h.Repo.Owner, Repo: h.Repo.Name, Installation: h.Installation}, Number: h.PullRequest, Body: body}
	r.opts.Outbox.Add(&forge.OutboxItem{
		// Every reply is its own: the same words may answer two commands.
		Key:     fmt.Sprintf("comment/%s/%s/%d/%d", h.Repo.Owner, h.Repo.Name, h.PullRequest, time.Now().UnixNano()),
		Kind:    kindComment,
		Rank:    1,
		Payload: mustJSON(p),
	})
	return nil
}

// Promote queues the promotion of the pull request h merged into main:
// the promotion pull request main → production is opened, or the open
// one lists it too.
func (r *Reporter) Promote(h *forge.Hook, main, production string) error {
	if h.PullRequest <= 0 || h.Repo.Owner == "" || main == "" || production == "" {
		return forge.Errorf(forge.EINVALID, "github: a promotion needs a merged pull request and two branches")
	}
	p := promotePayload{target: target{Owner: h.Repo.Owner, Repo: h.Repo.Name, Installation: h.Installation},
		Head: main, Base: production, Number: h.PullRequest, Title: prTitle(h)}
	r.opts.Outbox.Add(&forge.OutboxItem{
		Key:     fmt.Sprintf("promote/%s/%s/%s/%s/%d", h.Repo.Owner, h.Repo.Name, main, production, h.PullRequest),
		Kind:    kindPromote,
		Rank:    1,
		Payload: mustJSON(p),
	})
	return nil
}

// prTitle is the title of the pull request h merged, as GitHub's merge
// commit message carries it ("Merge pull request #2 from a/b", a blank
// line, the title), or the message's first line.
func prTitle(h *forge.Hook) string {
	lines := strings.Split(strings.TrimSpace(h.Message), "\n")
	if len(lines) >= 3 && strings.HasPrefix(lines[0], "Merge pull request #") && strings.TrimSpace(lines[1]) == "" {
		return strings.TrimSpace(lines[2])
	}
	if t := strings.TrimSpace(lines[0]); t != "" {
		return t
	}
	return fmt.Sprintf("pull request #%d", h.PullRequest)
}
