package spec

import (
	"fmt"
	"slices"
	"strings"

	"github.com/goccy/go-yaml/ast"

	"github.com/forgeci/forge"
)

// The events of an on: section and the filter key each takes.
var onEvents = map[string]string{
	"pull_request": "branches", // the branch the pull request goes into
	"push":         "branches", // the pushed branch
	"merged":       "branches", // the branch a pull request was merged into
	"tag":          "tags",     // the pushed tag
	"manual":       "",
}

var onEventNames = []string{"pull_request", "push", "merged", "tag", "manual"}

// onRule is one event of an on: section.
type onRule struct {
	event  string
	p      pos
	filter globs // branches or tags; nil matches every one
	run    []strAt
}

// on reads the on: section. Each event is an action name, a list of
// action names, or a mapping {branches|tags: patterns, run: actions}; an
// empty event runs `execute`.
func (r *reader) on(n ast.Node) []*onRule {
	if r.isNull(r.resolve(n)) {
		return nil
	}
	entries, ok := r.mapping(n, "`on`", "duplicate event `%s` in `on` (first at line %d)")
	if !ok {
		return nil
	}
	var out []*onRule
	for _, e := range entries {
		filterKey, known := onEvents[e.key]
		if !known {
			hint := suggest(e.key, onEventNames)
			if hint == "" {
				hint = " the events are `" + strings.Join(onEventNames, "`, `") + "`"
			}
			r.ps.at(e.keyPos, "unknown event `%s` in `on`:%s", e.key, hint)
			continue
		}
		what := fmt.Sprintf("`on.%s`", e.key)
		rule := &onRule{event: e.key, p: e.keyPos}
		v := r.resolve(e.value)
		switch v.(type) {
		case nil:
			continue
		case *ast.NullNode:
		case *ast.MappingNode, *ast.MappingValueNode:
			entries, ok := r.mapping(v, what, "duplicate key `%s` in "+what+" (first at line %d)")
			if !ok {
				continue
			}
			keys := []string{"run"}
			if filterKey != "" {
				keys = append(keys, filterKey)
			}
			for _, f := range entries {
				in := fmt.Sprintf("`%s` of %s", f.key, what)
				switch {
				case f.key == "run":
					rule.run = r.strs(f.value, in)
					if r.isEmpty(f.value) {
						r.ps.at(f.keyPos, "%s is empty: name the actions to run", in)
					}
				case f.key == filterKey:
					rule.filter = r.patterns(f.value, in)
					if r.isEmpty(f.value) {
						r.ps.at(f.keyPos, "%s is empty: give a pattern or a list of patterns", in)
					}
				default:
					r.unknownKey(f, what, keys)
				}
			}
		default:
			rule.run = r.strs(v, what)
		}
		out = append(out, rule)
	}
	return out
}

// actions returns the actions the rule runs, `execute` by default.
func (o *onRule) actions() []string {
	if len(o.run) == 0 {
		return []string{DefaultAction}
	}
	out := make([]string, 0, len(o.run))
	for _, a := range o.run {
		if !slices.Contains(out, a.s) {
			out = append(out, a.s)
		}
	}
	return out
}

// ActionsFor returns the actions the on: section runs for hook, in the
// order written, or nil when it runs none (or the file has no on:).
//
// The events, from Hook.Event and Hook.Action:
//   - "pull_request" with Action "", "opened", "reopened", "synchronize"
//     or "ready_for_review": on.pull_request, filtered on Hook.Target,
//     the branch the pull request goes into;
//   - "pull_request" with Action "closed" and Merged: on.merged, filtered
//     on Hook.Target; other pull request actions run nothing;
//   - "merged": on.merged likewise;
//   - "push" of a branch: on.push, filtered on Hook.Target (or
//     Hook.Branch, or the branch of Hook.Ref, when Target is empty); a push of a tag (Hook.Tag set or
//     Ref under refs/tags/) and "tag": on.tag, filtered on the tag;
//   - "manual": on.manual.
func (f *File) ActionsFor(h *forge.Hook) []string {
	if f == nil || h == nil || !f.hasOn {
		return nil
	}
	event, subject := "", ""
	tag := h.Tag
	if t, ok := strings.CutPrefix(h.Ref, "refs/tags/"); ok && tag == "" {
		tag = t
	}
	branch := h.Target
	if branch == "" {
		branch = h.Branch
	}
	if b, ok := strings.CutPrefix(h.Ref, "refs/heads/"); ok && branch == "" {
		branch = b
	}
	switch h.Event {
	case "pull_request":
		switch h.Action {
		case "", "opened", "reopened", "synchronize", "ready_for_review":
			event, subject = "pull_request", h.Target
		case "closed":
			if !h.Merged {
				return nil
			}
			event, subject = "merged", h.Target
		default:
			return nil
		}
	case "merged":
		event, subject = "merged", branch
	case "push":
		if tag != "" {
			event, subject = "tag", tag
		} else {
			event, subject = "push", branch
		}
	case "tag":
		event, subject = "tag", tag
	case "manual":
		event = "manual"
	default:
		return nil
	}
	var out []string
	for _, rule := range f.on {
		if rule.event != event {
			continue
		}
		if rule.filter != nil && (subject == "" || !rule.filter.match(subject)) {
			continue
		}
		for _, a := range rule.actions() {
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
}
