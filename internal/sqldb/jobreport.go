package sqldb

import (
	"context"
	"database/sql"

	"github.com/forgeci/forge"
)

// SaveJobReport keeps what job r.JobID's reports said (test counts and
// coverage; test failures are not kept), replacing what was kept before.
// ENOTFOUND when the job does not exist.
func (db *DB) SaveJobReport(ctx context.Context, r *forge.JobReport) error {
	var has, total, failed, skipped int
	if r.Tests != nil {
		has, total, failed, skipped = 1, r.Tests.Total, r.Tests.Failed, r.Tests.Skipped
	}
	var cov sql.NullFloat64
	if r.Coverage != nil {
		cov = sql.NullFloat64{Float64: *r.Coverage, Valid: true}
	}
	return db.write(ctx, func(tx *sql.Tx) error {
		if err := db.exists(ctx, tx, "SELECT 1 FROM jobs WHERE id = ?", r.JobID, "job %d not found"); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, db.q(`INSERT INTO job_reports (job_id, has_tests, tests_total, tests_failed, tests_skipped, coverage, updated)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (job_id) DO UPDATE SET has_tests = excluded.has_tests, tests_total = excluded.tests_total,
tests_failed = excluded.tests_failed, tests_skipped = excluded.tests_skipped, coverage = excluded.coverage, updated = excluded.updated`),
			r.JobID, has, total, failed, skipped, cov, now().UnixMicro())
		if err != nil {
			return db.fail(ctx, err, "save job report")
		}
		return nil
	})
}

// JobReport returns what job jobID's reports said; ENOTFOUND when nothing
// was kept for it (it had no reports, or has not finished).
func (db *DB) JobReport(ctx context.Context, jobID int64) (*forge.JobReport, error) {
	var (
		has                    int
		total, failed, skipped int
		cov                    sql.NullFloat64
	)
	err := db.read(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, db.q("SELECT has_tests, tests_total, tests_failed, tests_skipped, coverage FROM job_reports WHERE job_id = ?"), jobID).
			Scan(&has, &total, &failed, &skipped, &cov)
		if err == sql.ErrNoRows {
			return notFound("no report of job %d", jobID)
		}
		if err != nil {
			return db.fail(ctx, err, "read job report")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	r := &forge.JobReport{JobID: jobID}
	if has != 0 {
		r.Tests = &forge.TestSummary{Total: total, Failed: failed, Skipped: skipped}
	}
	if cov.Valid {
		c := cov.Float64
		r.Coverage = &c
	}
	return r, nil
}
