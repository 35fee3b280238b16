package forge

// LogMatch is a log line found by a search across a repository's builds.
type LogMatch struct {
	Build   int64  `json:"build"` // the build's number in its repository
	Job     int64  `json:"job"`
	JobName string `json:"job_name"`
	Line    int    `json:"line"`
	Text    string `json:"text"`
}

// MinLogQuery is the shortest text a search across builds looks for: the
// full-text indexes match whole trigrams or words, never less.
const MinLogQuery = 3
