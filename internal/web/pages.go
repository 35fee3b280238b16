package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/forgeci/forge"
)

// buildsPerPage is how many builds a repository's page lists.
const buildsPerPage = 50

// repoRow is a repository with its latest build, on the repositories page.
type repoRow struct {
	Repo  *forge.Repo
	Build *forge.Build
}

func (u *UI) reposPage(w http.ResponseWriter, r *http.Request, s *session) {
	repos, err := u.opts.Repos.ListRepos(r.Context())
	if err != nil {
		u.fail(w, r, err)
		return
	}
	rows := make([]repoRow, 0, len(repos))
	for _, repo := range repos {
		row := repoRow{Repo: repo}
		if len(repos) <= 200 { // one indexed query each; a huge list skips it
			bs, err := u.opts.Builds.ListBuilds(r.Context(), forge.BuildFilter{RepoID: repo.ID, Limit: 1})
			if err != nil {
				u.fail(w, r, err)
				return
			}
			if len(bs) > 0 {
				row.Build = bs[0]
			}
		}
		rows = append(rows, row)
	}
	u.render(w, r, http.StatusOK, "repos", s, map[string]any{"Title": "Repositories", "Repos": rows})
}

func (u *UI) lookupRepo(r *http.Request) (*forge.Repo, error) {
	owner, name := r.PathValue("owner"), r.PathValue("repo")
	repo, err := u.opts.Repos.RepoByName(r.Context(), owner, name)
	if forge.ErrorCode(err) == forge.ENOTFOUND {
		return nil, forge.Errorf(forge.ENOTFOUND, "no repository %s/%s", owner, name)
	}
	return repo, err
}

func (u *UI) lookupBuild(r *http.Request) (*forge.Repo, *forge.Build, error) {
	repo, err := u.lookupRepo(r)
	if err != nil {
		return nil, nil, err
	}
	n, err := strconv.ParseInt(r.PathValue("number"), 10, 64)
	if err != nil || n <= 0 {
		return nil, nil, forge.Errorf(forge.EINVALID, "build number %q is not a positive integer", r.PathValue("number"))
	}
	b, err := u.opts.Builds.BuildByNumber(r.Context(), repo.ID, n)
	if forge.ErrorCode(err) == forge.ENOTFOUND {
		return nil, nil, forge.Errorf(forge.ENOTFOUND, "no build %d in %s", n, repo.FullName())
	}
	return repo, b, err
}

// statuses are the states a builds listing can be filtered by.
var statuses = []forge.Status{forge.StatusQueued, forge.StatusRunning, forge.StatusSuccess, forge.StatusFailure,
	forge.StatusError, forge.StatusCanceled, forge.StatusBlocked, forge.StatusSkipped}

func (u *UI) buildsPage(w http.ResponseWriter, r *http.Request, s *session) {
	repo, err := u.lookupRepo(r)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	f := forge.BuildFilter{RepoID: repo.ID, Limit: buildsPerPage + 1, Branch: q.Get("branch"), Action: q.Get("action")}
	if st := q.Get("status"); st != "" {
		f.Status = forge.Status(st)
	}
	if v := q.Get("before"); v != "" {
		if f.Before, err = strconv.ParseInt(v, 10, 64); err != nil || f.Before < 1 {
			u.fail(w, r, forge.Errorf(forge.EINVALID, "before=%q: want a build id", v))
			return
		}
	}
	builds, err := u.opts.Builds.ListBuilds(r.Context(), f)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	var next string
	if len(builds) > buildsPerPage {
		builds = builds[:buildsPerPage]
		nq := url.Values{}
		for k, v := range q {
			nq[k] = v
		}
		nq.Set("before", strconv.FormatInt(builds[len(builds)-1].ID, 10))
		next = "?" + nq.Encode()
	}
	base := strings.TrimRight(u.opts.PublicURL, "/")
	badge := fmt.Sprintf("[![forge](%s/badges/%s/%s/status.svg)](%s/%s/%s)", base, repo.Owner, repo.Name, base, repo.Owner, repo.Name)
	u.render(w, r, http.StatusOK, "builds", s, map[string]any{
		"Title": repo.FullName(), "Repo": repo, "Builds": builds, "Next": next, "Badge": badge,
		"Statuses": statuses, "Filter": map[string]string{"status": q.Get("status"), "branch": q.Get("branch")},
		"Filtered": q.Get("status") != "" || q.Get("branch") != "" || q.Get("before") != "",
	})
}

func (u *UI) buildPage(w http.ResponseWriter, r *http.Request, s *session) {
	repo, b, err := u.lookupBuild(r)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	jobs, err := u.opts.Builds.Jobs(r.Context(), b.ID)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	u.render(w, r, http.StatusOK, "build", s, map[string]any{
		"Title": fmt.Sprintf("%s #%d", repo.FullName(), b.Number), "Repo": repo, "Build": b, "Jobs": jobs,
		"Graph":      layoutGraph(jobs, fmt.Sprintf("/%s/%s/builds/%d/jobs/", repo.Owner, repo.Name, b.Number)),
		"CanControl": u.opts.Control != nil,
	})
}

func (u *UI) jobPage(w http.ResponseWriter, r *http.Request, s *session) {
	repo, b, err := u.lookupBuild(r)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	id, err := strconv.ParseInt(r.PathValue("job"), 10, 64)
	if err != nil || id <= 0 {
		u.fail(w, r, forge.Errorf(forge.EINVALID, "job id %q is not a positive integer", r.PathValue("job")))
		return
	}
	// A build's jobs come with their steps (Job alone has none).
	jobs, err := u.opts.Builds.Jobs(r.Context(), b.ID)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	var j *forge.BuildJob
	for _, x := range jobs {
		if x.ID == id {
			j = x
		}
	}
	if j == nil {
		u.fail(w, r, forge.Errorf(forge.ENOTFOUND, "no job %d in build %d", id, b.Number))
		return
	}
	total, err := lastLine(r.Context(), u.opts.Logs, j.ID)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	steps, err := stepRanges(r.Context(), u.opts.Logs, j, total)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	stepsJSON, err := json.Marshal(steps)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	u.render(w, r, http.StatusOK, "job", s, map[string]any{
		"Title": fmt.Sprintf("%s · %s #%d", j.Name, repo.FullName(), b.Number), "Repo": repo, "Build": b, "Job": j,
		"Total": total, "Steps": string(stepsJSON),
		"API": fmt.Sprintf("/api/v1/repos/%s/%s/builds/%d/jobs/%d", url.PathEscape(repo.Owner), url.PathEscape(repo.Name), b.Number, j.ID),
	})
}

func (u *UI) poolsPage(w http.ResponseWriter, r *http.Request, s *session) {
	u.render(w, r, http.StatusOK, "pools", s, map[string]any{"Title": "Lease pools"})
}

// control serves the build page's cancel and restart buttons.
func (u *UI) control(w http.ResponseWriter, r *http.Request, s *session) {
	if u.opts.Control == nil {
		u.fail(w, r, forge.Errorf(forge.ENOTIMPL, "this server cannot cancel or restart builds"))
		return
	}
	repo, b, err := u.lookupBuild(r)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	switch r.PathValue("op") {
	case "cancel":
		_, err = u.opts.Control.Cancel(r.Context(), b.ID, "cancelled from the web page by "+s.Token.Name)
	case "restart":
		var nb *forge.Build
		if nb, err = u.opts.Control.Restart(r.Context(), b.ID); err == nil {
			http.Redirect(w, r, fmt.Sprintf("/%s/%s/builds/%d", repo.Owner, repo.Name, nb.Number), http.StatusSeeOther)
			return
		}
	default:
		err = forge.Errorf(forge.ENOTFOUND, "no action %q on builds", r.PathValue("op"))
	}
	if err != nil {
		u.fail(w, r, err)
		return
	}
	http.Redirect(w, r, fmt.Sprintf("/%s/%s/builds/%d", repo.Owner, repo.Name, b.Number), http.StatusSeeOther)
}

// durationText prints how long something took, or has taken so far.
func durationText(start, end time.Time) string {
	if start.IsZero() {
		return ""
	}
	if end.IsZero() {
		end = time.Now()
	}
	d := end.Sub(start).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm %02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh %02dm", int(d.Hours()), int(d.Minutes())%60)
}

// ago prints how long ago t was.
func ago(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d.Hours()))
	}
	return t.UTC().Format("2006-01-02")
}

func shortSHA(s string) string {
	if len(s) > 7 {
		return s[:7]
	}
	return s
}

// refName shortens a full ref for display.
func refName(h forge.Hook) string {
	switch {
	case h.PullRequest > 0:
		return fmt.Sprintf("#%d %s", h.PullRequest, h.Branch)
	case h.Tag != "":
		return h.Tag
	case h.Branch != "":
		return h.Branch
	}
	for _, p := range []string{"refs/heads/", "refs/tags/"} {
		if strings.HasPrefix(h.Ref, p) {
			return strings.TrimPrefix(h.Ref, p)
		}
	}
	return h.Ref
}
