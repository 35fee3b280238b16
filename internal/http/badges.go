package http

import (
	"context"
	"fmt"
	"math"
	"net/http"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/badge"
)

// JobReports gives what finished jobs' test and coverage reports said
// (internal/sqldb). JobReport returns ENOTFOUND when a job kept none. Safe
// for concurrent use.
type JobReports interface {
	JobReport(ctx context.Context, jobID int64) (*forge.JobReport, error)
}

// badgeBuilds is how many of a branch's latest finished builds a badge
// looks through for one that has what it shows (the named job, a report).
const badgeBuilds = 20

// badgeCache lets GitHub's image proxy (camo) and browsers keep a badge a
// minute, then fetch it again.
const badgeCache = "public, max-age=60, s-maxage=60"

// The badges a repository has, by file name.
const (
	statusBadge   = "status"
	testsBadge    = "tests"
	coverageBadge = "coverage"
)

// badgeRoutes registers the badges. They are public even when reads are
// private (api.private_reads): a README's badge is fetched by GitHub's
// image proxy, which cannot send a token, and a badge tells no more than
// the state of a branch's last build.
func (s *Server) badgeRoutes(repos forge.RepoStore, builds forge.BuildStore, reports JobReports) {
	const base = "/badges/{owner}/{repo}/"
	s.handle("GET", base+"status.svg", Public, s.badge(statusBadge, false, repos, builds, reports))
	s.handle("GET", base+"status.json", Public, s.badge(statusBadge, true, repos, builds, reports))
	s.handle("GET", base+"tests.svg", Public, s.badge(testsBadge, false, repos, builds, reports))
	s.handle("GET", base+"coverage.svg", Public, s.badge(coverageBadge, false, repos, builds, reports))
}

// badge serves the badge kind of a repository's branch (?branch=, default
// the repository's default branch) and, with ?job=NAME, of that job only,
// as SVG or (asJSON) in shields.io's endpoint format. Whatever is unknown
// (repository, branch, job, a build that finished, a report) gives a
// valid grey "unknown" badge with status 200, never an error page: an
// image tag cannot show one.
func (s *Server) badge(kind string, asJSON bool, repos forge.RepoStore, builds forge.BuildStore, reports JobReports) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, err := s.badgeFor(r, kind, repos, builds, reports)
		if err != nil && forge.ErrorCode(err) != forge.ENOTFOUND {
			s.log.Warn("drawing a badge", "path", r.URL.Path, "err", err)
		}
		h := w.Header()
		h.Set("Cache-Control", badgeCache)
		h.Set("X-Content-Type-Options", "nosniff")
		if asJSON {
			h.Set("Content-Type", "application/json")
			h.Set("Access-Control-Allow-Origin", "*")
			_, _ = w.Write(badge.Endpoint(b))
			return
		}
		// An SVG opened on its own is a document: it may run nothing.
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		h.Set("Content-Type", "image/svg+xml; charset=utf-8")
		_, _ = w.Write(badge.SVG(b))
	}
}

// badgeFor works out what badge kind says; on an error it is the
// "unknown" badge.
func (s *Server) badgeFor(r *http.Request, kind string, repos forge.RepoStore, builds forge.BuildStore, reports JobReports) (badge.Badge, error) {
	q := r.URL.Query()
	jobName := q.Get("job")
	label := kind
	switch {
	case kind == statusBadge && jobName != "":
		label = jobName
	case kind == statusBadge:
		label = "build"
	}
	unknown := badge.Badge{Label: label, Value: "unknown", Color: badge.Grey}
	if kind != statusBadge && reports == nil {
		return unknown, nil
	}
	ctx := r.Context()
	repo, err := lookupRepo(r, repos)
	if err != nil {
		return unknown, err
	}
	branch := q.Get("branch")
	if branch == "" {
		branch = repo.DefaultBranch
	}
	list, err := builds.ListBuilds(ctx, forge.BuildFilter{RepoID: repo.ID, Branch: branch, Limit: badgeBuilds,
		Statuses: []forge.Status{forge.StatusSuccess, forge.StatusFailure, forge.StatusError, forge.StatusCanceled}})
	if err != nil {
		return unknown, err
	}
	for _, b := range list {
		if b.Hook.PullRequest != 0 {
			continue // a pull request's build says nothing of the branch
		}
		if kind == statusBadge && jobName == "" {
			return statusValue(label, b.Status), nil
		}
		jobs, err := builds.Jobs(ctx, b.ID)
		if err != nil {
			return unknown, err
		}
		var picked []*forge.BuildJob
		for _, j := range jobs {
			if (jobName == "" || j.Name == jobName) && j.Status.Done() {
				picked = append(picked, j)
			}
		}
		if len(picked) == 0 {
			continue
		}
		if kind == statusBadge {
			return statusValue(label, picked[0].Status), nil
		}
		if b, ok, err := reportValue(ctx, kind, picked, reports); err != nil || ok {
			return b, err
		}
	}
	return unknown, nil
}

// statusValue is the status badge of a finished build or job.
func statusValue(label string, st forge.Status) badge.Badge {
	switch st {
	case forge.StatusSuccess:
		return badge.Badge{Label: label, Value: "passing", Color: badge.Green}
	case forge.StatusFailure:
		return badge.Badge{Label: label, Value: "failing", Color: badge.Red}
	case forge.StatusError:
		return badge.Badge{Label: label, Value: "error", Color: badge.Orange}
	}
	return badge.Badge{Label: label, Value: string(st), Color: badge.Grey}
}

// reportValue sums the reports of jobs into a tests or coverage badge; ok
// is false when none of them had such a report.
func reportValue(ctx context.Context, kind string, jobs []*forge.BuildJob, reports JobReports) (badge.Badge, bool, error) {
	var tests forge.TestSummary
	var hasTests bool
	var cov, n float64
	for _, j := range jobs {
		rep, err := reports.JobReport(ctx, j.ID)
		if forge.ErrorCode(err) == forge.ENOTFOUND {
			continue
		}
		if err != nil {
			return badge.Badge{}, false, err
		}
		if rep.Tests != nil {
			hasTests = true
			tests.Total += rep.Tests.Total
			tests.Failed += rep.Tests.Failed
			tests.Skipped += rep.Tests.Skipped
		}
		if rep.Coverage != nil {
			cov += *rep.Coverage
			n++
		}
	}
	switch {
	case kind == testsBadge && hasTests:
		return testsValue(tests), true, nil
	case kind == coverageBadge && n > 0:
		return coverageValue(cov / n), true, nil
	}
	return badge.Badge{}, false, nil
}

// testsValue is "118 passed, 2 failed, 3 skipped": red with a failure,
// green otherwise.
func testsValue(t forge.TestSummary) badge.Badge {
	passed := t.Total - t.Failed - t.Skipped
	value := fmt.Sprintf("%d passed", max(passed, 0))
	color := badge.Green
	if t.Failed > 0 {
		value += fmt.Sprintf(", %d failed", t.Failed)
		color = badge.Red
	}
	if t.Skipped > 0 {
		value += fmt.Sprintf(", %d skipped", t.Skipped)
	}
	return badge.Badge{Label: "tests", Value: value, Color: color}
}

// coverageValue is "87%", coloured from red (under 50%) to green (90% and
// more).
func coverageValue(pct float64) badge.Badge {
	pct = math.Max(0, math.Min(100, pct))
	color := badge.Red
	switch {
	case pct >= 90:
		color = badge.Green
	case pct >= 75:
		color = "#97ca00"
	case pct >= 60:
		color = badge.Yellow
	case pct >= 50:
		color = badge.Orange
	}
	// Rounded down: never a full score not reached.
	return badge.Badge{Label: "coverage", Value: fmt.Sprintf("%.0f%%", math.Floor(pct)), Color: color}
}
