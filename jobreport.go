package forge

// JobReport is what a finished job's reports said, kept for badges: its
// test counts when it declared test reports, its coverage when it declared
// a coverage report.
type JobReport struct {
	JobID int64 `json:"job_id"`
	// Tests is set when the job had test reports; only its counts are
	// kept.
	Tests *TestSummary `json:"tests,omitempty"`
	// Coverage is the percentage of statements (Go) or lines (Cobertura)
	// covered, when the job had a coverage report.
	Coverage *float64 `json:"coverage,omitempty"`
}
