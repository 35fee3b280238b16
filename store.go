package forge

import (
	"context"
	"time"
)

// The stores below are implemented by internal/sqldb on SQLite and
// PostgreSQL. Every method is safe for concurrent use, honours ctx, and
// returns *Error codes: ENOTFOUND when a looked-up row does not exist,
// ECONFLICT on a uniqueness or version conflict, EINTERNAL otherwise.

// RepoStore keeps repositories.
type RepoStore interface {
	// UpsertRepo creates the repository named r.Owner/r.Name or updates
	// its other fields, and sets r.ID.
	UpsertRepo(ctx context.Context, r *Repo) error
	Repo(ctx context.Context, id int64) (*Repo, error)
	RepoByName(ctx context.Context, owner, name string) (*Repo, error)
	ListRepos(ctx context.Context) ([]*Repo, error)
}

// DeliveryStore keeps webhook deliveries.
type DeliveryStore interface {
	// CreateDelivery stores d; ECONFLICT when d.ID was stored before (a
	// redelivery).
	CreateDelivery(ctx context.Context, d *Delivery) error
	// PendingDeliveries returns up to limit unprocessed deliveries, oldest
	// first.
	PendingDeliveries(ctx context.Context, limit int) ([]*Delivery, error)
	// FinishDelivery marks delivery id processed with its result.
	FinishDelivery(ctx context.Context, id, result string) error
}

// BuildStore keeps builds, their jobs and steps.
type BuildStore interface {
	// CreateBuild stores b with its jobs in one transaction: it assigns
	// b.ID, b.Number (the repository's next), b.Version = 1 and the jobs'
	// IDs. ECONFLICT when b.DeliveryID is set and that delivery already
	// created a build for b.Action, so a delivery never builds twice.
	CreateBuild(ctx context.Context, b *Build, jobs []*BuildJob) error
	Build(ctx context.Context, id int64) (*Build, error)
	BuildByNumber(ctx context.Context, repoID, number int64) (*Build, error)
	ListBuilds(ctx context.Context, f BuildFilter) ([]*Build, error)
	// UpdateBuild saves b when b.Version equals the stored version and
	// increments b.Version; ECONFLICT otherwise (someone else changed it).
	UpdateBuild(ctx context.Context, b *Build) error
	// TouchBuilds sets the Heartbeat of the builds among ids that are
	// running and claimed by runner (Build.Runner) to at, unless it is
	// already later; the other ids (finished, claimed by another runner,
	// unknown) are skipped without error. It does not change Version, so
	// it never makes an UpdateBuild conflict; it is idempotent. EINVALID
	// when runner is empty or at is zero.
	TouchBuilds(ctx context.Context, runner string, ids []int64, at time.Time) error
	// Jobs returns a build's jobs with their steps, in creation order.
	Jobs(ctx context.Context, buildID int64) ([]*BuildJob, error)
	Job(ctx context.Context, id int64) (*BuildJob, error)
	UpdateJob(ctx context.Context, j *BuildJob) error
	// SaveStep creates or updates the step (JobID, Index).
	SaveStep(ctx context.Context, s *BuildStep) error
}

// Token is an API token. Only a hash of the secret is stored.
type Token struct {
	ID      int64     `json:"id"`
	Name    string    `json:"name"`
	Hash    string    `json:"-"` // hex SHA-256 of the secret
	Admin   bool      `json:"admin"`
	Created time.Time `json:"created"`
}

// TokenStore keeps API tokens.
type TokenStore interface {
	CreateToken(ctx context.Context, t *Token) error
	// TokenByHash finds a token by the hash of its secret; ENOTFOUND if none.
	TokenByHash(ctx context.Context, hash string) (*Token, error)
}
