package swarm

import (
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/forgeci/forge"
)

// maxName is Docker's limit on a service name (a DNS label).
const maxName = 63

// meta is what names and labels an attempt's things.
type meta struct {
	owner, repo string
	pr          string // the pull request's number, "" for other builds
	ref         string // the branch or tag, for the name of other builds
	build, job  string
	attempt     int
}

func metaOf(run *forge.JobRun) meta {
	return meta{
		owner: run.Env["FORGE_OWNER"], repo: run.Env["FORGE_REPO"],
		pr: run.Env["FORGE_PULL_REQUEST"], ref: run.Env["FORGE_REF"],
		build: run.BuildID, job: run.Job.Name, attempt: run.Attempt,
	}
}

// fullRepo is owner/repo, or "" when either is unknown.
func (m meta) fullRepo() string {
	if m.owner == "" || m.repo == "" {
		return ""
	}
	return m.owner + "/" + m.repo
}

// labels of a thing of the attempt with role, in scope.
func (m meta) labels(scope, role string) map[string]string {
	l := map[string]string{
		LabelScope: scope, LabelBuild: m.build, LabelJob: m.job,
		LabelAttempt: strconv.Itoa(m.attempt), LabelRole: role,
	}
	if r := m.fullRepo(); r != "" {
		l[LabelRepo] = r
	}
	if m.pr != "" {
		l[LabelPullRequest] = m.pr
	}
	return l
}

// serviceName is forge-{owner}-{repo}-{pr}-{timestamp}: a build that is
// not of a pull request has its branch or tag in place of {pr}. It is at
// most maxName characters of [a-z0-9-], cut in the owner and repository
// so that the pull request and the timestamp (down to the millisecond,
// which tells a build's jobs apart) stay whole.
func serviceName(m meta, t time.Time) string {
	pr := m.pr
	if pr == "" {
		pr = path.Base(strings.TrimPrefix(m.ref, "refs/"))
	}
	pr = clean(pr, 20)
	if pr == "" || pr == "." {
		pr = "build"
	}
	t = t.UTC()
	ts := t.Format("20060102-150405") + fmt.Sprintf("-%03d", t.Nanosecond()/int(time.Millisecond))
	tail := "-" + pr + "-" + ts
	room := maxName - len("forge") - len(tail)
	owner, repo := clean(m.owner, room), clean(m.repo, room)
	// owner and repo with a dash before each share room; the longer
	// gives way first.
	for len(owner)+len(repo)+2 > room {
		if len(owner) >= len(repo) {
			owner = strings.TrimRight(owner[:len(owner)-1], "-")
		} else {
			repo = strings.TrimRight(repo[:len(repo)-1], "-")
		}
	}
	name := "forge"
	for _, p := range []string{owner, repo} {
		if p != "" {
			name += "-" + p
		}
	}
	return name + tail
}

// derived is base with suffix, base cut so that the whole is at most
// maxName characters.
func derived(base, suffix string) string {
	if len(base)+len(suffix) > maxName {
		base = strings.TrimRight(base[:maxName-len(suffix)], "-")
	}
	return base + suffix
}

// clean lowercases s and keeps letters and digits, other runs becoming
// one dash, without dashes at the ends, cut to at most n characters.
func clean(s string, n int) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			dash = false
			b.WriteRune(r)
			continue
		}
		dash = true
	}
	out := b.String()
	if n >= 0 && len(out) > n {
		out = strings.TrimRight(out[:n], "-")
	}
	return out
}
