// Package githubtest gives tests real GitHub webhook payloads (from
// octokit/webhooks, MIT licence: see testdata/webhooks). Only tests import
// it; the payloads are embedded, so a test reads them wherever it runs.
package githubtest

import (
	"embed"
	"io/fs"
	"path"
	"sort"
	"strings"
	"testing"
)

//go:embed testdata/webhooks/*.payload.json
var payloads embed.FS

const dir = "testdata/webhooks"

// Payload returns the payload file name (e.g. "push.payload.json"); a name
// that does not exist fails the test.
func Payload(t testing.TB, name string) []byte {
	t.Helper()
	b, err := payloads.ReadFile(path.Join(dir, name))
	if err != nil {
		t.Fatalf("github webhook fixture %q: %v (the payloads are %s)", name, err, strings.Join(Names(), ", "))
	}
	return b
}

// Names returns the file names of every payload, sorted:
// "EVENT.payload.json" or "EVENT.NAME.payload.json".
func Names() []string {
	entries, err := fs.ReadDir(payloads, dir)
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// Event returns the event a payload file name is of: "pull_request" for
// "pull_request.opened.payload.json".
func Event(name string) string {
	event, _, _ := strings.Cut(name, ".")
	return event
}
