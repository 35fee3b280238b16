package spec

import (
	"slices"
	"strings"
)

// check validates what spans several parts of the file: that there is an
// action, that names are unique, that needs name jobs of the same action
// without a cycle, and that on: runs actions that exist.
//
// clean says whether reading found no problem so far; without it a file
// whose only action was broken is not also reported as having no action.
func (f *File) check(r *reader, root pos, clean bool) {
	if len(f.actions) == 0 {
		if clean {
			r.ps.at(root, "no action: add an `execute:` list of commands, or `jobs:`")
		}
		return
	}
	byName := map[string]*jobSpec{}
	var names []string
	for _, j := range f.jobs {
		if other, dup := byName[j.name]; dup {
			switch {
			case other.topLevel:
				r.ps.at(j.p, "duplicate job `%s`: the top-level `%s` list at line %d is a job of that name", j.name, j.name, other.p.line)
			default:
				r.ps.at(j.p, "duplicate job `%s`: a job of that name is already defined at line %d", j.name, other.p.line)
			}
			continue
		}
		byName[j.name] = j
		names = append(names, j.name)
	}
	for _, j := range f.jobs {
		if byName[j.name] != j {
			continue
		}
		seen := map[string]bool{}
		for _, n := range j.needs {
			dep, ok := byName[n.s]
			switch {
			case !ok:
				r.ps.at(n.p, "job `%s` needs `%s`, which is not a job of this file:%s", j.name, n.s, orList(suggest(n.s, names), names))
			case dep.action != j.action:
				r.ps.at(n.p, "job `%s` (action `%s`) needs `%s`, a job of action `%s`: needs must stay within one action", j.name, j.action, n.s, dep.action)
			case seen[n.s]:
				r.ps.at(n.p, "job `%s` needs `%s` twice", j.name, n.s)
			}
			seen[n.s] = true
		}
	}
	f.checkCycles(r, byName)
	for _, rule := range f.on {
		for _, a := range rule.run {
			if !slices.Contains(f.actions, a.s) {
				r.ps.at(a.p, "`on.%s` runs action `%s`, which this file does not have:%s", rule.event, a.s, orList(suggest(a.s, f.actions), f.actions))
			}
		}
		if len(rule.run) == 0 && !slices.Contains(f.actions, DefaultAction) {
			r.ps.at(rule.p, "`on.%s` runs `%s` by default, which this file does not have: add `run:` with one of %s", rule.event, DefaultAction, strings.Join(quoteAll(f.actions), ", "))
		}
	}
}

// orList returns hint when not empty, else " the choices are a, b, c".
func orList(hint string, choices []string) string {
	if hint != "" {
		return hint
	}
	if len(choices) > 12 {
		return ""
	}
	return " the choices are " + strings.Join(quoteAll(choices), ", ")
}

func quoteAll(list []string) []string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = "`" + s + "`"
	}
	return out
}

// checkCycles reports every cycle in needs, naming the jobs around it, at
// the needs entry that closes it.
func (f *File) checkCycles(r *reader, byName map[string]*jobSpec) {
	const (
		unvisited = iota
		onStack
		done
	)
	state := map[string]int{}
	var stack []string
	var visit func(j *jobSpec)
	visit = func(j *jobSpec) {
		state[j.name] = onStack
		stack = append(stack, j.name)
		for _, n := range j.needs {
			dep, ok := byName[n.s]
			if !ok || dep.action != j.action {
				continue
			}
			switch state[dep.name] {
			case unvisited:
				visit(dep)
			case onStack:
				start := len(stack) - 1
				for stack[start] != dep.name {
					start--
				}
				cycle := append(append([]string(nil), stack[start:]...), dep.name)
				r.ps.at(n.p, "cycle in `needs`: %s", strings.Join(cycle, " → "))
			}
		}
		stack = stack[:len(stack)-1]
		state[j.name] = done
	}
	for _, j := range f.jobs {
		if byName[j.name] == j && state[j.name] == unvisited {
			visit(j)
		}
	}
}
