package sqldb

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/forgeci/forge"
)

var _ forge.BuildStore = (*DB)(nil)

const buildColumns = "id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat"

func scanBuild(row interface{ Scan(...any) error }) (*forge.Build, error) {
	b := new(forge.Build)
	var hook string
	err := row.Scan(&b.ID, &b.RepoID, &b.Number, &b.Action, &b.Status, &hook, &b.DeliveryID, &b.Error,
		timeCol{&b.Created}, timeCol{&b.Started}, timeCol{&b.Finished}, &b.Version, &b.Runner, timeCol{&b.Heartbeat})
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(hook), &b.Hook); err != nil {
		return nil, fmt.Errorf("build %d: stored hook: %w", b.ID, err)
	}
	return b, nil
}

// CreateBuild stores b with its jobs (and the jobs' steps, if any) in one
// transaction. It assigns b.ID, b.Number (the repository's next),
// b.Version = 1, the jobs' IDs and BuildIDs; it sets b.Created to now when
// zero, b.Status to queued and each job's Status to pending when empty.
// ENOTFOUND when b.RepoID does not exist; ECONFLICT when b.DeliveryID is set
// and that delivery already created a build for b.Action.
//
// Numbers come from a per-repository counter incremented inside the
// transaction (a row lock on PostgreSQL, the single writer on SQLite), so
// concurrent CreateBuild calls never share a number; a failed CreateBuild
// leaves no gap.
func (db *DB) CreateBuild(ctx context.Context, b *forge.Build, jobs []*forge.BuildJob) error {
	hook, err := prepareBuild(b, jobs)
	if err != nil {
		return err
	}
	var id, number int64
	err = db.write(ctx, func(tx *sql.Tx) error {
		var err error
		id, number, err = db.insertBuild(ctx, tx, b, hook, jobs)
		return err
	})
	if err != nil {
		for _, j := range jobs {
			j.ID, j.BuildID = 0, 0
		}
		return err
	}
	b.ID, b.Number, b.Version = id, number, 1
	return nil
}

// CreateBuilds is CreateBuild for many builds in one transaction, so a
// burst of deliveries costs one durable commit rather than one per build.
// It returns one error per build: nil when it was created (its IDs and
// number set as CreateBuild sets them), ECONFLICT when its delivery had
// already created a build for its action, ENOTFOUND for an unknown
// repository, EINVALID for a build CreateBuild would refuse; those builds
// are not stored, the others are. When the transaction itself fails every
// build gets that error and none is stored. Builds of one repository are
// numbered in the order given.
func (db *DB) CreateBuilds(ctx context.Context, builds []*forge.Build, jobs [][]*forge.BuildJob) []error {
	errs := make([]error, len(builds))
	if len(jobs) != len(builds) {
		for i := range errs {
			errs[i] = forge.Errorf(forge.EINVALID, "create builds: %d builds but %d job lists", len(builds), len(jobs))
		}
		return errs
	}
	hooks := make([]string, len(builds))
	for i, b := range builds {
		hooks[i], errs[i] = prepareBuild(b, jobs[i])
	}
	type made struct{ id, number int64 }
	done := make([]made, len(builds))
	err := db.write(ctx, func(tx *sql.Tx) error {
		for i, b := range builds {
			if errs[i] != nil {
				continue
			}
			if b.DeliveryID != "" {
				// Checked rather than left to the unique index, whose
				// violation would end the whole transaction on
				// PostgreSQL. Every build of a delivery is of one
				// repository, whose row the numbering locks: a
				// concurrent transaction creating one waits here.
				if _, err := tx.ExecContext(ctx, db.q("UPDATE repos SET last_number = last_number WHERE id = ?"), b.RepoID); err != nil {
					return db.fail(ctx, err, "lock repository")
				}
				var one int
				// delivery_id <> '' lets SQLite use the partial unique
				// index rather than scan every build.
				err := tx.QueryRowContext(ctx, db.q("SELECT 1 FROM builds WHERE delivery_id = ? AND action = ? AND delivery_id <> ''"), b.DeliveryID, b.Action).Scan(&one)
				if err == nil {
					errs[i] = forge.Errorf(forge.ECONFLICT, "delivery %s already created a %s build", b.DeliveryID, b.Action)
					continue
				}
				if !errors.Is(err, sql.ErrNoRows) {
					return db.fail(ctx, err, "look up the build of delivery "+b.DeliveryID)
				}
			}
			id, number, err := db.insertBuild(ctx, tx, b, hooks[i], jobs[i])
			if forge.ErrorCode(err) == forge.ENOTFOUND {
				errs[i] = err
				continue
			}
			if err != nil {
				return err
			}
			done[i] = made{id, number}
		}
		return nil
	})
	for i, b := range builds {
		switch {
		case err != nil && errs[i] == nil:
			errs[i] = err
		case errs[i] == nil:
			b.ID, b.Number, b.Version = done[i].id, done[i].number, 1
			continue
		}
		for _, j := range jobs[i] {
			j.ID, j.BuildID = 0, 0
		}
	}
	return errs
}

// prepareBuild checks a new build and its jobs, fills the defaults
// CreateBuild documents, and returns the build's hook as stored.
func prepareBuild(b *forge.Build, jobs []*forge.BuildJob) (string, error) {
	if b.Action == "" {
		return "", forge.Errorf(forge.EINVALID, "build needs an action")
	}
	names := make(map[string]bool, len(jobs))
	for _, j := range jobs {
		if j.Name == "" {
			return "", forge.Errorf(forge.EINVALID, "build job needs a name")
		}
		if names[j.Name] {
			return "", forge.Errorf(forge.EINVALID, "build has two jobs named %q", j.Name)
		}
		names[j.Name] = true
		steps := make(map[int]bool, len(j.Steps))
		for _, s := range j.Steps {
			if s.Index < 0 || steps[s.Index] {
				return "", forge.Errorf(forge.EINVALID, "job %q: step index %d is negative or given twice", j.Name, s.Index)
			}
			steps[s.Index] = true
		}
	}
	hook, err := json.Marshal(&b.Hook)
	if err != nil {
		return "", forge.WrapError(forge.EINVALID, err, "build hook")
	}
	if b.Status == "" {
		b.Status = forge.StatusQueued
	}
	if b.Created.IsZero() {
		b.Created = now()
	}
	b.Created, b.Started, b.Finished, b.Heartbeat = stamp(b.Created), stamp(b.Started), stamp(b.Finished), stamp(b.Heartbeat)
	b.Error = cleanText(b.Error)
	return string(hook), nil
}

// insertBuild numbers and inserts build b with its jobs in tx and returns
// its ID and number.
func (db *DB) insertBuild(ctx context.Context, tx *sql.Tx, b *forge.Build, hook string, jobs []*forge.BuildJob) (id, number int64, err error) {
	err = tx.QueryRowContext(ctx, db.q("UPDATE repos SET last_number = last_number + 1 WHERE id = ? RETURNING last_number"), b.RepoID).Scan(&number)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, 0, notFound("repository %d not found", b.RepoID)
	}
	if err != nil {
		return 0, 0, db.fail(ctx, err, "number build")
	}
	h := &b.Hook
	err = tx.QueryRowContext(ctx, db.q(`INSERT INTO builds (repo_id, number, action, status, event, branch, pull_request, sha,
			hook, delivery_id, error, created, started, finished, version, runner, heartbeat)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?) RETURNING id`),
		b.RepoID, number, b.Action, string(b.Status), h.Event, h.Branch, h.PullRequest, h.SHA,
		hook, b.DeliveryID, b.Error, b.Created.UnixMicro(), micros(b.Started), micros(b.Finished),
		b.Runner, micros(b.Heartbeat),
	).Scan(&id)
	if isUnique(err) && b.DeliveryID != "" {
		return 0, 0, forge.WrapError(forge.ECONFLICT, err,
			fmt.Sprintf("delivery %s already created a %s build", b.DeliveryID, b.Action))
	}
	if err != nil {
		return 0, 0, db.fail(ctx, err, "save build")
	}
	return id, number, db.insertJobs(ctx, tx, id, jobs)
}

// insertJobs stores a new build's jobs and their steps with one multi-row
// INSERT per 500 jobs and per 1,000 steps, so creating a build costs a
// few round trips whatever its size. Job IDs come back by name (names are
// unique in a build), which holds whatever order RETURNING uses.
func (db *DB) insertJobs(ctx context.Context, tx *sql.Tx, buildID int64, jobs []*forge.BuildJob) error {
	var steps []*forge.BuildStep
	for start := 0; start < len(jobs); start += 500 {
		chunk := jobs[start:min(start+500, len(jobs))]
		var q strings.Builder
		q.WriteString("INSERT INTO jobs (build_id, name, status, attempt, exit_code, error, needs, started, finished, backend, handle) VALUES ")
		args := make([]any, 0, 11*len(chunk))
		byName := make(map[string]*forge.BuildJob, len(chunk))
		for i, j := range chunk {
			if j.Status == "" {
				j.Status = forge.StatusPending
			}
			j.Started, j.Finished = stamp(j.Started), stamp(j.Finished)
			j.Error = cleanText(j.Error)
			needs := []byte("[]")
			if j.Needs != nil {
				var err error
				if needs, err = json.Marshal(j.Needs); err != nil {
					return forge.WrapError(forge.EINVALID, err, "job needs")
				}
			}
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
			args = append(args, buildID, j.Name, string(j.Status), j.Attempt, j.ExitCode, j.Error, string(needs),
				micros(j.Started), micros(j.Finished), j.Backend, blob(j.Handle))
			byName[j.Name] = j
		}
		q.WriteString(" RETURNING id, name")
		rows, err := tx.QueryContext(ctx, db.q(q.String()), args...)
		if err != nil {
			return db.fail(ctx, err, "save jobs")
		}
		for rows.Next() {
			var id int64
			var name string
			if err := rows.Scan(&id, &name); err != nil {
				rows.Close()
				return db.fail(ctx, err, "save jobs")
			}
			if j := byName[name]; j != nil {
				j.ID, j.BuildID = id, buildID
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return db.fail(ctx, err, "save jobs")
		}
		for _, j := range chunk {
			if j.ID == 0 {
				return forge.Errorf(forge.EINTERNAL, "save jobs: no id came back for job %q", j.Name)
			}
			for _, st := range j.Steps {
				st.JobID = j.ID
				if st.Status == "" {
					st.Status = forge.StatusPending
				}
				st.Started, st.Finished = stamp(st.Started), stamp(st.Finished)
				steps = append(steps, st)
			}
		}
	}
	for start := 0; start < len(steps); start += 1000 {
		chunk := steps[start:min(start+1000, len(steps))]
		var q strings.Builder
		q.WriteString("INSERT INTO steps (" + stepColumns + ") VALUES ")
		args := make([]any, 0, 9*len(chunk))
		for i, st := range chunk {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?)")
			args = append(args, st.JobID, st.Index, st.Name, string(st.Status), st.ExitCode, micros(st.Started), micros(st.Finished), st.FirstLine, st.LastLine)
		}
		if _, err := tx.ExecContext(ctx, db.q(q.String()), args...); err != nil {
			return db.fail(ctx, err, "save steps")
		}
	}
	return nil
}

// Build returns the build with id; ENOTFOUND if there is none.
func (db *DB) Build(ctx context.Context, id int64) (*forge.Build, error) {
	b, err := scanBuild(db.r.QueryRowContext(ctx, db.q("SELECT "+buildColumns+" FROM builds WHERE id = ?"), id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("build %d not found", id)
	}
	if err != nil {
		return nil, db.fail(ctx, err, "read build")
	}
	return b, nil
}

// BuildByNumber returns build number of repository repoID; ENOTFOUND if
// there is none.
func (db *DB) BuildByNumber(ctx context.Context, repoID, number int64) (*forge.Build, error) {
	b, err := scanBuild(db.r.QueryRowContext(ctx, db.q("SELECT "+buildColumns+" FROM builds WHERE repo_id = ? AND number = ?"), repoID, number))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("build %d of repository %d not found", number, repoID)
	}
	if err != nil {
		return nil, db.fail(ctx, err, "read build")
	}
	return b, nil
}

// ListBuilds returns the builds f selects: newest first (by ID) unless
// f.Ascending, at most f.Limit of them (forge.DefaultBuildLimit when
// f.Limit <= 0, never more than forge.MaxBuildLimit). Page with f.Before
// (newest first) or f.After (oldest first) set to the last ID seen.
func (db *DB) ListBuilds(ctx context.Context, f forge.BuildFilter) ([]*forge.Build, error) {
	var where []string
	var args []any
	add := func(cond string, arg any) {
		where = append(where, cond)
		args = append(args, arg)
	}
	if f.RepoID != 0 {
		add("repo_id = ?", f.RepoID)
	}
	if f.Status != "" {
		add("status = ?", string(f.Status))
	}
	if len(f.Statuses) > 0 {
		marks := strings.TrimSuffix(strings.Repeat("?, ", len(f.Statuses)), ", ")
		where = append(where, "status IN ("+marks+")")
		for _, s := range f.Statuses {
			args = append(args, string(s))
		}
	}
	if f.Branch != "" {
		add("branch = ?", f.Branch)
	}
	if f.PullRequest != 0 {
		add("pull_request = ?", f.PullRequest)
	}
	if f.Action != "" {
		add("action = ?", f.Action)
	}
	if f.SHA != "" {
		add("sha = ?", f.SHA)
	}
	if f.DeliveryID != "" {
		// The second condition lets SQLite use the partial index.
		add("delivery_id = ? AND delivery_id <> ''", f.DeliveryID)
	}
	if f.Before != 0 {
		add("id < ?", f.Before)
	}
	if f.After != 0 {
		add("id > ?", f.After)
	}
	limit := f.Limit
	switch {
	case limit <= 0:
		limit = forge.DefaultBuildLimit
	case limit > forge.MaxBuildLimit:
		limit = forge.MaxBuildLimit
	}
	query := "SELECT " + buildColumns + " FROM builds"
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	if f.Ascending {
		query += " ORDER BY id ASC"
	} else {
		query += " ORDER BY id DESC"
	}
	query += " LIMIT ?"
	args = append(args, limit)
	rows, err := db.r.QueryContext(ctx, db.q(query), args...)
	if err != nil {
		return nil, db.fail(ctx, err, "list builds")
	}
	defer rows.Close()
	var out []*forge.Build
	for rows.Next() {
		b, err := scanBuild(rows)
		if err != nil {
			return nil, db.fail(ctx, err, "list builds")
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, db.fail(ctx, err, "list builds")
	}
	return out, nil
}

// UpdateBuild saves b's Status, Error, Started, Finished, Runner and
// Heartbeat when b.Version equals the stored version, and increments
// b.Version; ECONFLICT when someone else changed the build since b was
// read, ENOTFOUND when it does not exist. The other fields of a build never
// change.
func (db *DB) UpdateBuild(ctx context.Context, b *forge.Build) error {
	if b.Status == "" {
		return forge.Errorf(forge.EINVALID, "build %d: empty status", b.ID)
	}
	b.Started, b.Finished, b.Heartbeat = stamp(b.Started), stamp(b.Finished), stamp(b.Heartbeat)
	b.Error = cleanText(b.Error)
	return db.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, db.q(`UPDATE builds SET status = ?, error = ?, started = ?, finished = ?,
				runner = ?, heartbeat = ?, version = version + 1
			WHERE id = ? AND version = ?`),
			string(b.Status), b.Error, micros(b.Started), micros(b.Finished), b.Runner, micros(b.Heartbeat), b.ID, b.Version)
		if err != nil {
			return db.fail(ctx, err, "update build")
		}
		n, err := res.RowsAffected()
		if err != nil {
			return db.fail(ctx, err, "update build")
		}
		if n == 1 {
			b.Version++
			return nil
		}
		var version int64
		err = tx.QueryRowContext(ctx, db.q("SELECT version FROM builds WHERE id = ?"), b.ID).Scan(&version)
		if errors.Is(err, sql.ErrNoRows) {
			return notFound("build %d not found", b.ID)
		}
		if err != nil {
			return db.fail(ctx, err, "update build")
		}
		return forge.Errorf(forge.ECONFLICT, "build %d was changed by someone else (version %d, not %d): read it again", b.ID, version, b.Version)
	})
}

// TouchBuilds sets the heartbeat of the builds among ids that are running
// and claimed by runner to at, unless a later one is stored; other ids are
// skipped. The version is left alone: a heartbeat is not a change another
// writer must see, and it must not make the runner's own UpdateBuild
// conflict. One statement per 500 ids; EINVALID when runner is empty or at
// is zero.
func (db *DB) TouchBuilds(ctx context.Context, runner string, ids []int64, at time.Time) error {
	if runner == "" || at.IsZero() {
		return forge.Errorf(forge.EINVALID, "touch builds: a runner and a time are required")
	}
	if len(ids) == 0 {
		return nil
	}
	t := at.UnixMicro()
	return db.write(ctx, func(tx *sql.Tx) error {
		for start := 0; start < len(ids); start += 500 {
			chunk := ids[start:min(start+500, len(ids))]
			marks := strings.TrimSuffix(strings.Repeat("?, ", len(chunk)), ", ")
			args := []any{t, runner, string(forge.StatusRunning), t}
			for _, id := range chunk {
				args = append(args, id)
			}
			_, err := tx.ExecContext(ctx, db.q(`UPDATE builds SET heartbeat = ?
				WHERE runner = ? AND status = ? AND (heartbeat IS NULL OR heartbeat < ?) AND id IN (`+marks+")"), args...)
			if err != nil {
				return db.fail(ctx, err, "touch builds")
			}
		}
		return nil
	})
}

const jobColumns = "id, build_id, name, status, attempt, exit_code, error, needs, started, finished, backend, handle"

func scanJob(row interface{ Scan(...any) error }) (*forge.BuildJob, error) {
	j := new(forge.BuildJob)
	var needs string
	err := row.Scan(&j.ID, &j.BuildID, &j.Name, &j.Status, &j.Attempt, &j.ExitCode, &j.Error, &needs,
		timeCol{&j.Started}, timeCol{&j.Finished}, &j.Backend, &j.Handle)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(needs), &j.Needs); err != nil {
		return nil, fmt.Errorf("job %d: stored needs: %w", j.ID, err)
	}
	if len(j.Needs) == 0 {
		j.Needs = nil
	}
	return j, nil
}

// queryJobs runs a job query and loads the steps of the jobs it returns,
// in tx so both see one snapshot.
func (db *DB) queryJobs(ctx context.Context, tx *sql.Tx, query string, args ...any) ([]*forge.BuildJob, error) {
	rows, err := tx.QueryContext(ctx, db.q(query), args...)
	if err != nil {
		return nil, db.fail(ctx, err, "read jobs")
	}
	defer rows.Close()
	var jobs []*forge.BuildJob
	byID := map[int64]*forge.BuildJob{}
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, db.fail(ctx, err, "read jobs")
		}
		jobs = append(jobs, j)
		byID[j.ID] = j
	}
	if err := rows.Err(); err != nil {
		return nil, db.fail(ctx, err, "read jobs")
	}
	rows.Close()
	// Steps of up to 500 jobs per query keeps within every driver's limit
	// on parameters.
	for start := 0; start < len(jobs); start += 500 {
		chunk := jobs[start:min(start+500, len(jobs))]
		marks := strings.TrimSuffix(strings.Repeat("?, ", len(chunk)), ", ")
		ids := make([]any, len(chunk))
		for i, j := range chunk {
			ids[i] = j.ID
		}
		srows, err := tx.QueryContext(ctx, db.q("SELECT "+stepColumns+" FROM steps WHERE job_id IN ("+marks+") ORDER BY job_id, idx"), ids...)
		if err != nil {
			return nil, db.fail(ctx, err, "read steps")
		}
		for srows.Next() {
			s, err := scanStep(srows)
			if err != nil {
				srows.Close()
				return nil, db.fail(ctx, err, "read steps")
			}
			j := byID[s.JobID]
			j.Steps = append(j.Steps, s)
		}
		err = srows.Err()
		srows.Close()
		if err != nil {
			return nil, db.fail(ctx, err, "read steps")
		}
	}
	return jobs, nil
}

// Jobs returns a build's jobs with their steps, in creation order;
// ENOTFOUND when the build does not exist.
func (db *DB) Jobs(ctx context.Context, buildID int64) ([]*forge.BuildJob, error) {
	var jobs []*forge.BuildJob
	err := db.read(ctx, func(tx *sql.Tx) error {
		var err error
		jobs, err = db.queryJobs(ctx, tx, "SELECT "+jobColumns+" FROM jobs WHERE build_id = ? ORDER BY id", buildID)
		if err != nil || len(jobs) > 0 {
			return err
		}
		return db.exists(ctx, tx, "SELECT 1 FROM builds WHERE id = ?", buildID, "build %d not found")
	})
	if err != nil {
		return nil, err
	}
	return jobs, nil
}

// JobsByStatus returns the jobs in any of statuses, with their steps,
// oldest first: for restart recovery (running and waiting jobs) and for
// operators. At most forge.MaxBuildLimit jobs with ID above after are
// returned; page by passing the last ID seen.
func (db *DB) JobsByStatus(ctx context.Context, after int64, statuses ...forge.Status) ([]*forge.BuildJob, error) {
	if len(statuses) == 0 {
		return nil, forge.Errorf(forge.EINVALID, "jobs by status: no status given")
	}
	marks := strings.TrimSuffix(strings.Repeat("?, ", len(statuses)), ", ")
	args := []any{after}
	for _, s := range statuses {
		args = append(args, string(s))
	}
	args = append(args, forge.MaxBuildLimit)
	var jobs []*forge.BuildJob
	err := db.read(ctx, func(tx *sql.Tx) error {
		var err error
		jobs, err = db.queryJobs(ctx, tx, "SELECT "+jobColumns+" FROM jobs WHERE id > ? AND status IN ("+marks+") ORDER BY id LIMIT ?", args...)
		return err
	})
	return jobs, err
}

// Job returns the job with id and its steps; ENOTFOUND if there is none.
func (db *DB) Job(ctx context.Context, id int64) (*forge.BuildJob, error) {
	var jobs []*forge.BuildJob
	err := db.read(ctx, func(tx *sql.Tx) error {
		var err error
		jobs, err = db.queryJobs(ctx, tx, "SELECT "+jobColumns+" FROM jobs WHERE id = ?", id)
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(jobs) == 0 {
		return nil, notFound("job %d not found", id)
	}
	return jobs[0], nil
}

// UpdateJob saves j's Status, Attempt, ExitCode, Error, Started, Finished,
// Backend and Handle; ENOTFOUND if the job does not exist. Its name, needs
// and steps are not changed (steps are saved with SaveStep).
func (db *DB) UpdateJob(ctx context.Context, j *forge.BuildJob) error {
	if j.Status == "" {
		return forge.Errorf(forge.EINVALID, "job %d: empty status", j.ID)
	}
	j.Started, j.Finished = stamp(j.Started), stamp(j.Finished)
	j.Error = cleanText(j.Error)
	return db.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, db.q(`UPDATE jobs SET status = ?, attempt = ?, exit_code = ?, error = ?,
				started = ?, finished = ?, backend = ?, handle = ? WHERE id = ?`),
			string(j.Status), j.Attempt, j.ExitCode, j.Error, micros(j.Started), micros(j.Finished), j.Backend, blob(j.Handle), j.ID)
		if err != nil {
			return db.fail(ctx, err, "update job")
		}
		if n, err := res.RowsAffected(); err != nil {
			return db.fail(ctx, err, "update job")
		} else if n == 0 {
			return notFound("job %d not found", j.ID)
		}
		return nil
	})
}

const stepColumns = "job_id, idx, name, status, exit_code, started, finished, first_line, last_line"

func scanStep(row interface{ Scan(...any) error }) (*forge.BuildStep, error) {
	s := new(forge.BuildStep)
	err := row.Scan(&s.JobID, &s.Index, &s.Name, &s.Status, &s.ExitCode, timeCol{&s.Started}, timeCol{&s.Finished}, &s.FirstLine, &s.LastLine)
	return s, err
}

// SaveStep creates or updates the step (s.JobID, s.Index); ENOTFOUND when
// the job does not exist.
func (db *DB) SaveStep(ctx context.Context, s *forge.BuildStep) error {
	return db.write(ctx, func(tx *sql.Tx) error { return db.saveStep(ctx, tx, s) })
}

func (db *DB) saveStep(ctx context.Context, tx *sql.Tx, s *forge.BuildStep) error {
	if s.Index < 0 {
		return forge.Errorf(forge.EINVALID, "step index %d is negative", s.Index)
	}
	if s.FirstLine < 0 || s.LastLine < 0 {
		return forge.Errorf(forge.EINVALID, "step %d: line numbers %d and %d: want 0 or more", s.Index, s.FirstLine, s.LastLine)
	}
	if s.Status == "" {
		s.Status = forge.StatusPending
	}
	s.Started, s.Finished = stamp(s.Started), stamp(s.Finished)
	_, err := tx.ExecContext(ctx, db.q(`INSERT INTO steps (`+stepColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (job_id, idx) DO UPDATE SET name = excluded.name, status = excluded.status,
			exit_code = excluded.exit_code, started = excluded.started, finished = excluded.finished,
			first_line = excluded.first_line, last_line = excluded.last_line`),
		s.JobID, s.Index, s.Name, string(s.Status), s.ExitCode, micros(s.Started), micros(s.Finished), s.FirstLine, s.LastLine)
	if isForeignKey(err) {
		return forge.WrapError(forge.ENOTFOUND, err, fmt.Sprintf("job %d not found", s.JobID))
	}
	if err != nil {
		return db.fail(ctx, err, "save step")
	}
	return nil
}

// exists returns ENOTFOUND (with message format and arg) when query, which
// selects a row by arg, finds nothing.
func (db *DB) exists(ctx context.Context, tx *sql.Tx, query string, arg any, format string) error {
	var one int
	err := tx.QueryRowContext(ctx, db.q(query), arg).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return notFound(format, arg)
	}
	if err != nil {
		return db.fail(ctx, err, "read")
	}
	return nil
}

// blob is b as stored: NULL when empty, so an empty handle reads back nil.
func blob(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}
