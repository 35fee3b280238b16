package http

import (
	"context"
	"net/http"

	"github.com/forgeci/forge"
)

// Approver lets builds waiting for approval run (internal/trigger): the
// builds of pull request number of repo, approved by user. It is an
// optional ability of Options.Trigger, found by type assertion.
type Approver interface {
	Approve(ctx context.Context, repo *forge.Repo, number int, by string) (int, error)
}

// approveBuild approves a build of a fork's pull request that waits for
// approval (and the other waiting builds of its pull request).
func (s *Server) approveBuild(repos forge.RepoStore, builds forge.BuildStore, trigger Trigger) http.HandlerFunc {
	approver, ok := trigger.(Approver)
	if !ok {
		return notImplemented("build approval")
	}
	return func(w http.ResponseWriter, r *http.Request) {
		repo, b, err := lookupBuild(r, repos, builds)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if b.Status != forge.StatusBlocked || b.Hook.PullRequest <= 0 {
			s.fail(w, r, forge.Errorf(forge.ECONFLICT, "build %d is %s, not waiting for approval", b.Number, b.Status))
			return
		}
		if _, err := approver.Approve(r.Context(), repo, b.Hook.PullRequest, "the API"); err != nil {
			s.fail(w, r, err)
			return
		}
		if b, err = builds.Build(r.Context(), b.ID); err != nil {
			s.fail(w, r, err)
			return
		}
		s.log.Info("build approved", "repo", repo.FullName(), "build", b.ID)
		writeJSON(w, http.StatusOK, b)
	}
}
