package forge

// Status is the state of a build, a job or a step.
type Status string

// The statuses. Blocked, Pending, Queued, Waiting and Running are not
// final; the rest are.
const (
	StatusBlocked  Status = "blocked"  // a build waiting for a maintainer's approval (a fork's pull request)
	StatusPending  Status = "pending"  // known, not yet queued (e.g. needs not done)
	StatusQueued   Status = "queued"   // waiting for a runner slot
	StatusWaiting  Status = "waiting"  // waiting for a lease on its resources
	StatusRunning  Status = "running"  // running now
	StatusSuccess  Status = "success"  // finished and passed
	StatusFailure  Status = "failure"  // a command failed
	StatusError    Status = "error"    // forge could not run it (infrastructure, bad spec)
	StatusSkipped  Status = "skipped"  // not run: a job it needs did not pass, or when: excluded it
	StatusCanceled Status = "canceled" // cancelled by a user, a signal or a newer build
)

// Done reports whether s is final.
func (s Status) Done() bool {
	switch s {
	case StatusSuccess, StatusFailure, StatusError, StatusSkipped, StatusCanceled:
		return true
	}
	return false
}

// Passed reports whether s counts as passing for whatever depends on it.
func (s Status) Passed() bool { return s == StatusSuccess }
