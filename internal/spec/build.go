package spec

import "github.com/forgeci/forge"

// FileName is the build spec's name in a repository's root.
const FileName = ".forge.yml"

// BuildOptions are the Options of build b: what when: conditions see. The
// trigger creates a build's job rows with them and the runner compiles the
// build with them again at run time, so both get the same jobs.
//
// Event is the hook's event ("pull_request", "push", "tag", "manual"),
// "merged" for a merged pull request, and "manual" when the hook has
// none; Branch is the branch the change goes into for a pull request (as
// Drone and Woodpecker match it) and the built branch otherwise.
func BuildOptions(b *forge.Build) Options {
	h := b.Hook
	o := Options{Action: b.Action, Event: h.Event, Branch: h.Branch, Tag: h.Tag, Paths: h.Paths}
	if h.Event == "pull_request" {
		o.Branch = h.Target
		if h.Merged {
			o.Event = "merged"
		}
	}
	if o.Event == "" {
		o.Event = "manual"
	}
	return o
}
