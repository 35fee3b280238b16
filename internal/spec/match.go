package spec

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/goccy/go-yaml/ast"

	pathglob "github.com/forgeci/forge/internal/glob"
)

// glob is a compiled pattern for branches, tags, events and paths:
// `*` matches within one path segment, `**` across segments, `?` one
// character, `[a-z]` and `[!a-z]` classes. A leading `!` makes it an
// exclusion.
type glob struct {
	src     string
	exclude bool
	re      *regexp.Regexp // nil for a pattern without wildcards
	literal string
}

func (g glob) matches(name string) bool {
	if g.re == nil {
		return name == g.literal
	}
	return g.re.MatchString(name)
}

// compileGlob compiles pattern s.
func compileGlob(s string) (glob, error) {
	g := glob{src: s}
	if strings.HasPrefix(s, "!") {
		g.exclude = true
		s = s[1:]
	}
	if s == "" {
		return g, fmt.Errorf("empty pattern")
	}
	if !strings.ContainsAny(s, "*?[") {
		g.literal = s
		return g, nil
	}
	re, err := pathglob.Regexp(s)
	if err != nil {
		return g, err
	}
	g.re = re
	return g, nil
}

// globs is a list of patterns: a name matches when it matches some
// inclusion and no exclusion; a list of only exclusions matches every
// name that none of them matches.
type globs []glob

func (gs globs) match(name string) bool {
	included, hasInclude := false, false
	for _, g := range gs {
		if g.exclude {
			if g.matches(name) {
				return false
			}
			continue
		}
		hasInclude = true
		if !included && g.matches(name) {
			included = true
		}
	}
	return included || !hasInclude
}

func (gs globs) hasInclude() bool {
	for _, g := range gs {
		if !g.exclude {
			return true
		}
	}
	return false
}

func (gs globs) String() string {
	s := make([]string, len(gs))
	for i, g := range gs {
		s[i] = g.src
	}
	return strings.Join(s, ", ")
}

// patterns reads a pattern or a list of patterns.
func (r *reader) patterns(n ast.Node, what string) globs {
	var out globs
	for _, s := range r.strs(n, what) {
		g, err := r.glob(s.s)
		if err != nil {
			r.ps.at(s.p, "bad pattern `%s` in %s: %v", s.s, what, err)
			continue
		}
		out = append(out, g)
	}
	return out
}

// glob compiles s once per file: specs repeat the same patterns.
func (r *reader) glob(s string) (glob, error) {
	if g, ok := r.globs[s]; ok {
		return g, nil
	}
	g, err := compileGlob(s)
	if err == nil {
		if r.globs == nil {
			r.globs = map[string]glob{}
		}
		r.globs[s] = g
	}
	return g, err
}

// whenSpec is a job's when: condition. Every condition given must hold;
// nil lists are not conditions.
type whenSpec struct {
	branch, event, tag, paths globs
}

// when reads {branch, event, tag, paths}.
func (r *reader) when(n ast.Node, what string) *whenSpec {
	entries, ok := r.mapping(n, what, "duplicate key `%s` in "+what+" (first at line %d)")
	if !ok {
		return nil
	}
	w := &whenSpec{}
	for _, e := range entries {
		in := fmt.Sprintf("`%s` of %s", e.key, what)
		var gs globs
		switch e.key {
		case "branch", "event", "tag", "paths":
			gs = r.patterns(e.value, in)
			if r.isEmpty(e.value) {
				r.ps.at(e.keyPos, "%s is empty: give a pattern or a list of patterns", in)
			}
		default:
			r.unknownKey(e, what, whenKeys)
			continue
		}
		switch e.key {
		case "branch":
			w.branch = gs
		case "event":
			w.event = gs
		case "tag":
			w.tag = gs
		case "paths":
			w.paths = gs
		}
	}
	return w
}

// skip returns why the condition excludes a build described by opts, or
// "" when it does not. Without an Event nothing is known about the build
// (a plain local run) and only paths are checked; with an Event, an empty
// Branch or Tag means the build has none. Nil Paths are unknown and match.
func (w *whenSpec) skip(opts Options) string {
	if w == nil {
		return ""
	}
	if opts.Event != "" {
		check := []struct {
			key   string
			gs    globs
			value string
		}{
			{"event", w.event, opts.Event},
			{"branch", w.branch, opts.Branch},
			{"tag", w.tag, opts.Tag},
		}
		for _, c := range check {
			if c.gs == nil {
				continue
			}
			if c.value == "" {
				// Nothing to match: only a list of exclusions holds.
				if c.gs.hasInclude() {
					return fmt.Sprintf("when: the build has no %s to match %s", c.key, c.gs)
				}
				continue
			}
			if c.gs.match(c.value) {
				continue
			}
			return fmt.Sprintf("when: %s %q does not match %s", c.key, c.value, c.gs)
		}
	}
	if w.paths != nil && opts.Paths != nil {
		for _, p := range opts.Paths {
			if w.paths.match(p) {
				return ""
			}
		}
		return fmt.Sprintf("when: no changed file matches paths %s", w.paths)
	}
	return ""
}
