package http

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/forgeci/forge"
)

//go:embed openapi.json
var openAPI []byte

// OpenAPI returns the OpenAPI 3.1 description of the REST API.
func OpenAPI() []byte { return openAPI }

// routesInit registers every route. The OpenAPI description lists the same
// routes; a test keeps the two in step.
func (s *Server) routesInit() {
	o := s.opts
	s.handle("GET", "/healthz", Public, healthz())
	s.handle("GET", "/readyz", Public, readyz(o.Ready, &s.draining))
	s.handle("GET", "/metrics", Public, metrics(o.Gatherer))
	s.handle("GET", "/api/v1/openapi.json", Public, openAPIHandler())
	if o.Hooks != nil {
		s.handle("POST", "/hooks/github", Public, o.Hooks)
	} else {
		s.handle("POST", "/hooks/github", Public, notImplemented("the GitHub webhook"))
	}

	const repo = "/api/v1/repos/{owner}/{repo}"
	const build = repo + "/builds/{number}"
	s.handle("GET", "/api/v1/repos", Read, s.listRepos(o.Repos))
	s.handle("GET", repo, Read, s.showRepo(o.Repos))
	s.handle("GET", repo+"/builds", Read, s.listBuilds(o.Repos, o.Store))
	s.handle("POST", repo+"/builds", Write, s.triggerBuild(o.Repos, o.Trigger))
	s.handle("GET", build, Read, s.showBuild(o.Repos, o.Store))
	s.handle("POST", build+"/cancel", Write, s.cancelBuild(o.Repos, o.Store, o.Control))
	s.handle("POST", build+"/restart", Write, s.restartBuild(o.Repos, o.Store, o.Control))
	s.handle("POST", build+"/approve", Write, s.approveBuild(o.Repos, o.Store, o.Trigger))
	s.handle("GET", build+"/jobs", Read, s.listJobs(o.Repos, o.Store))
	s.handle("GET", build+"/jobs/{job}", Read, s.showJob(o.Repos, o.Store))
	s.handle("GET", build+"/jobs/{job}/log", Read, s.jobLog(o.Repos, o.Store, o.Logs, o.LogIndex, o.Live))
	s.handle("GET", build+"/jobs/{job}/log/events", Read, s.logEvents(o.Repos, o.Store, o.Logs, o.Live))
	s.handle("GET", build+"/jobs/{job}/log/search", Read, s.searchLog(o.Repos, o.Store, o.LogIndex))
	s.handle("GET", repo+"/search", Read, s.searchLogs(o.Repos, o.LogIndex))

	s.badgeRoutes(o.Repos, o.Store, o.Reports)

	leases := o.Leases
	if leases == nil {
		leases = notImplemented("the lease server")
	}
	s.handle("", "/api/v1/leases/", Delegated, leases)
	s.handle("", "/api/v1/leases", Delegated, leases)
	s.handle("", "/api/v1/pools", Delegated, leases)
	s.handle("", "/api/v1/pools/", Delegated, leases)

	// Unknown paths get a JSON 404 (registered without the route list),
	// or the web pages outside /api/.
	if o.UI != nil {
		s.mux.Handle("/api/", s.notFound())
		s.mux.Handle("/", o.UI)
	} else {
		s.mux.Handle("/", s.notFound())
	}
}

func openAPIHandler() http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPI)
	}
}

// repoList is the body of GET /api/v1/repos.
type repoList struct {
	Repos []*forge.Repo `json:"repos"`
}

func (s *Server) listRepos(repos forge.RepoStore) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		list, err := repos.ListRepos(r.Context())
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if list == nil {
			list = []*forge.Repo{}
		}
		writeJSON(w, http.StatusOK, repoList{Repos: list})
	}
}

// lookupRepo finds the repository named by the path.
func lookupRepo(r *http.Request, repos forge.RepoStore) (*forge.Repo, error) {
	owner, name := r.PathValue("owner"), r.PathValue("repo")
	repo, err := repos.RepoByName(r.Context(), owner, name)
	if forge.ErrorCode(err) == forge.ENOTFOUND {
		return nil, forge.Errorf(forge.ENOTFOUND, "no repository %s/%s", owner, name)
	}
	return repo, err
}

// lookupBuild finds the repository and build named by the path.
func lookupBuild(r *http.Request, repos forge.RepoStore, builds forge.BuildStore) (*forge.Repo, *forge.Build, error) {
	repo, err := lookupRepo(r, repos)
	if err != nil {
		return nil, nil, err
	}
	n, err := strconv.ParseInt(r.PathValue("number"), 10, 64)
	if err != nil || n <= 0 {
		return nil, nil, forge.Errorf(forge.EINVALID, "build number %q is not a positive integer", r.PathValue("number"))
	}
	b, err := builds.BuildByNumber(r.Context(), repo.ID, n)
	if forge.ErrorCode(err) == forge.ENOTFOUND {
		return nil, nil, forge.Errorf(forge.ENOTFOUND, "no build %d in %s", n, repo.FullName())
	}
	return repo, b, err
}

// lookupJob finds the job named by the path, which must belong to the build.
func lookupJob(r *http.Request, repos forge.RepoStore, builds forge.BuildStore) (*forge.Build, *forge.BuildJob, error) {
	_, b, err := lookupBuild(r, repos, builds)
	if err != nil {
		return nil, nil, err
	}
	id, err := strconv.ParseInt(r.PathValue("job"), 10, 64)
	if err != nil || id <= 0 {
		return nil, nil, forge.Errorf(forge.EINVALID, "job id %q is not a positive integer", r.PathValue("job"))
	}
	j, err := builds.Job(r.Context(), id)
	if forge.ErrorCode(err) == forge.ENOTFOUND || err == nil && j.BuildID != b.ID {
		return nil, nil, forge.Errorf(forge.ENOTFOUND, "no job %d in build %d", id, b.Number)
	}
	return b, j, err
}

func (s *Server) showRepo(repos forge.RepoStore) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		repo, err := lookupRepo(r, repos)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, repo)
	}
}

// buildList is the body of a build listing; NextBefore, when not zero, is
// the before= value of the next page.
type buildList struct {
	Builds     []*forge.Build `json:"builds"`
	NextBefore int64          `json:"next_before,omitempty"`
}

// buildFilter reads a listing's query: status, branch, pull_request,
// before, limit.
func buildFilter(r *http.Request) (forge.BuildFilter, error) {
	q := r.URL.Query()
	var f forge.BuildFilter
	for key := range q {
		switch key {
		case "status", "branch", "pull_request", "before", "limit":
		default:
			return f, forge.Errorf(forge.EINVALID, "unknown query parameter %q (want status, branch, pull_request, before or limit)", key)
		}
	}
	if v := q.Get("status"); v != "" {
		for _, st := range strings.Split(v, ",") {
			st := forge.Status(strings.TrimSpace(st))
			if !validStatus(st) {
				return f, forge.Errorf(forge.EINVALID, "status %q is not one of blocked, pending, queued, waiting, running, success, failure, error, skipped, canceled", st)
			}
			f.Statuses = append(f.Statuses, st)
		}
	}
	f.Branch = q.Get("branch")
	ints := []struct {
		name string
		min  int64
		max  int64
		set  func(int64)
	}{
		{"pull_request", 1, 1 << 31, func(v int64) { f.PullRequest = int(v) }},
		{"before", 1, 1 << 62, func(v int64) { f.Before = v }},
		{"limit", 1, forge.MaxBuildLimit, func(v int64) { f.Limit = int(v) }},
	}
	for _, p := range ints {
		v := q.Get(p.name)
		if v == "" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < p.min || n > p.max {
			return f, forge.Errorf(forge.EINVALID, "%s=%q: want an integer from %d to %d", p.name, v, p.min, p.max)
		}
		p.set(n)
	}
	if f.Limit == 0 {
		f.Limit = 25
	}
	return f, nil
}

func validStatus(s forge.Status) bool {
	switch s {
	case forge.StatusBlocked, forge.StatusPending, forge.StatusQueued, forge.StatusWaiting, forge.StatusRunning,
		forge.StatusSuccess, forge.StatusFailure, forge.StatusError, forge.StatusSkipped, forge.StatusCanceled:
		return true
	}
	return false
}

func (s *Server) listBuilds(repos forge.RepoStore, builds forge.BuildStore) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		repo, err := lookupRepo(r, repos)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		f, err := buildFilter(r)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		f.RepoID = repo.ID
		list, err := builds.ListBuilds(r.Context(), f)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		body := buildList{Builds: list}
		if list == nil {
			body.Builds = []*forge.Build{}
		}
		if len(list) == f.Limit {
			body.NextBefore = list[len(list)-1].ID
		}
		writeJSON(w, http.StatusOK, body)
	}
}

// buildDetail is a build with its jobs and steps.
type buildDetail struct {
	*forge.Build
	Repo string            `json:"repo"`
	Jobs []*forge.BuildJob `json:"jobs"`
}

func detail(r *http.Request, repo *forge.Repo, b *forge.Build, builds forge.BuildStore) (*buildDetail, error) {
	jobs, err := builds.Jobs(r.Context(), b.ID)
	if err != nil {
		return nil, err
	}
	if jobs == nil {
		jobs = []*forge.BuildJob{}
	}
	return &buildDetail{Build: b, Repo: repo.FullName(), Jobs: jobs}, nil
}

func (s *Server) showBuild(repos forge.RepoStore, builds forge.BuildStore) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		repo, b, err := lookupBuild(r, repos, builds)
		if err == nil {
			var d *buildDetail
			if d, err = detail(r, repo, b, builds); err == nil {
				writeJSON(w, http.StatusOK, d)
				return
			}
		}
		s.fail(w, r, err)
	}
}

// manualRequest is the body of POST .../builds.
type manualRequest struct {
	Ref    string `json:"ref"`
	Action string `json:"action"`
}

// maxRequestBody bounds the JSON bodies the API reads.
const maxRequestBody = 1 << 20

func (s *Server) triggerBuild(repos forge.RepoStore, trigger Trigger) http.HandlerFunc {
	if trigger == nil {
		return notImplemented("manual triggering")
	}
	return func(w http.ResponseWriter, r *http.Request) {
		repo, err := lookupRepo(r, repos)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		var req manualRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			var tooBig *http.MaxBytesError
			switch {
			case errors.As(err, &tooBig):
				s.fail(w, r, forge.Errorf(forge.ETOOLARGE, "request body over %d bytes", maxRequestBody))
			case err == io.EOF:
				s.fail(w, r, forge.Errorf(forge.EINVALID, `empty body: want {"ref": "...", "action": "..."}`))
			default:
				s.fail(w, r, forge.Errorf(forge.EINVALID, "request body: %v", err))
			}
			return
		}
		if strings.TrimSpace(req.Ref) == "" {
			s.fail(w, r, forge.Errorf(forge.EINVALID, `"ref" is required: a branch, tag, full ref or commit SHA`))
			return
		}
		b, err := trigger.Manual(r.Context(), repo, req.Ref, req.Action)
		if forge.ErrorCode(err) == forge.ENOTFOUND {
			// The repository of the path exists (lookupRepo); what does
			// not is the ref or commit of the body: a bad request, 400.
			err = forge.WrapError(forge.EINVALID, err, forge.ErrorMessage(err))
		}
		if err != nil {
			s.fail(w, r, err)
			return
		}
		s.log.Info("manual build", "repo", repo.FullName(), "ref", req.Ref, "action", b.Action, "build", b.ID)
		writeJSON(w, http.StatusCreated, b)
	}
}

func (s *Server) cancelBuild(repos forge.RepoStore, builds forge.BuildStore, control Builds) http.HandlerFunc {
	if control == nil {
		return notImplemented("build control")
	}
	return func(w http.ResponseWriter, r *http.Request) {
		_, b, err := lookupBuild(r, repos, builds)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		b, err = control.Cancel(r.Context(), b.ID, "canceled through the API")
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, b)
	}
}

func (s *Server) restartBuild(repos forge.RepoStore, builds forge.BuildStore, control Builds) http.HandlerFunc {
	if control == nil {
		return notImplemented("build control")
	}
	return func(w http.ResponseWriter, r *http.Request) {
		_, b, err := lookupBuild(r, repos, builds)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		nb, err := control.Restart(r.Context(), b.ID)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusCreated, nb)
	}
}

// jobList is the body of GET .../jobs.
type jobList struct {
	Jobs []*forge.BuildJob `json:"jobs"`
}

func (s *Server) listJobs(repos forge.RepoStore, builds forge.BuildStore) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, b, err := lookupBuild(r, repos, builds)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		jobs, err := builds.Jobs(r.Context(), b.ID)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if jobs == nil {
			jobs = []*forge.BuildJob{}
		}
		writeJSON(w, http.StatusOK, jobList{Jobs: jobs})
	}
}

func (s *Server) showJob(repos forge.RepoStore, builds forge.BuildStore) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, j, err := lookupJob(r, repos, builds)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, j)
	}
}

// logFileName names a downloaded job log: acme-app-build-12-job-31.log.
// Characters other than letters, digits, '.', '-' and '_' become '_'.
func logFileName(owner, repo string, build int64, job int64) string {
	name := []byte(fmt.Sprintf("%s-%s-build-%d-job-%d.log", owner, repo, build, job))
	for i, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			name[i] = '_'
		}
	}
	return string(name)
}
