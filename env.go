package forge

import "strconv"

// RunEnv is what a run tells its jobs through their environment. forge
// server and forge exec both describe their run with one, so a step sees
// the same variables wherever it runs; only the values that belong to one
// place (a build number, a status page) are empty elsewhere.
type RunEnv struct {
	// Build is the run: its Action, its Number (0 for a local run) and the
	// Hook it builds: Event, Ref, Branch, SHA, PullRequest, CommitCount.
	Build *Build
	// Repo gives Owner and Name.
	Repo *Repo
	// BuildID is FORGE_BUILD_ID: the build's ID on a server,
	// local-<time> for forge exec.
	BuildID string
	// StatusURL is the build's page; "" where there are no pages.
	StatusURL string
}

// Vars returns the variables every job of the run sees: CI=true and the
// FORGE_* variables of DESIGN.md part 4 with FORGE_BRANCH, FORGE_EVENT and
// FORGE_BUILD_NUMBER, all but the per-job ones SetJobVars adds. Every name
// is set, empty when the run has no value for it (no pull request, no
// build number, no page), so a step can test them the same way everywhere.
func (r RunEnv) Vars() map[string]string {
	b, repo := r.Build, r.Repo
	if b == nil {
		b = &Build{}
	}
	if repo == nil {
		repo = &Repo{}
	}
	h := &b.Hook
	return map[string]string{
		"CI":                 "true",
		"FORGE_ACTION":       b.Action,
		"FORGE_OWNER":        repo.Owner,
		"FORGE_REPO":         repo.Name,
		"FORGE_SHA":          h.SHA,
		"FORGE_REF":          h.Ref,
		"FORGE_BRANCH":       h.Branch,
		"FORGE_EVENT":        h.Event,
		"FORGE_PULL_REQUEST": positive(int64(h.PullRequest)),
		"FORGE_COMMIT_COUNT": strconv.Itoa(h.CommitCount),
		"FORGE_BUILD_ID":     r.BuildID,
		"FORGE_BUILD_NUMBER": positive(b.Number),
		"FORGE_STATUS_URL":   r.StatusURL,
	}
}

// SetJobVars sets in env, the variables of a run (RunEnv.Vars), those of
// one job: FORGE_JOB, FORGE_WORKSPACE (the directory the job runs in; a
// backend that runs it elsewhere sets its own) and, when statusURL is not
// empty, FORGE_STATUS_URL becomes the job's own page.
func SetJobVars(env map[string]string, job, workspace, statusURL string) {
	env["FORGE_JOB"] = job
	env["FORGE_WORKSPACE"] = workspace
	if statusURL != "" {
		env["FORGE_STATUS_URL"] = statusURL
	}
}

// positive is n in decimal, or "" when it is not set (0).
func positive(n int64) string {
	if n <= 0 {
		return ""
	}
	return strconv.FormatInt(n, 10)
}
