// Package spec reads forge's build spec, .forge.yml, and compiles it into a
// backend-neutral forge.Plan.
//
// Reading keeps the position of every value, so that each problem is
// reported as FILE:LINE:COL with the offending line, and as many problems
// as possible are reported at once (see Errors). docs/spec.md is the
// format's reference for users; forge.schema.json is its JSON Schema.
package spec

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml/ast"

	"github.com/forgeci/forge"
)

// DefaultAction is the action run when none is named.
const DefaultAction = "execute"

// maxFileSize bounds the size of a spec; larger files are refused. The
// YAML library slows down on large inputs, and 512 KiB holds hundreds of
// jobs.
const maxFileSize = 512 << 10

// File is a parsed, validated spec. Compile turns it into plans.
type File struct {
	// Name is the file name used in positions.
	Name string

	image   strAt
	env     []envVar
	ports   []forge.Port
	jobs    []*jobSpec // top-level action lists first, in file order, then jobs:
	actions []string   // in order of first appearance
	on      []*onRule
	hasOn   bool
	ps      *problems // the file's lines, to quote them in Compile's problems
}

// envVar is one entry of an environment mapping.
type envVar struct {
	name, value string
	p           pos
}

// jobSpec is one job as written: a top-level action list or an entry of
// jobs:. Matrix expansion, when: and ${} happen in Compile.
type jobSpec struct {
	name     string
	p        pos  // of the name (the key)
	topLevel bool // a top-level action list
	action   string
	image    strAt
	env      []envVar
	ports    []forge.Port
	needs    []strAt
	services []forge.Service
	res      []forge.ResourceRequest
	timeout  time.Duration
	retries  int
	when     *whenSpec
	matrix   []matrixAxis
	steps    []forge.Step
	// artifacts and reports paths are expanded like commands.
	artifacts []string
	reports   []forge.Report
	limits    forge.Limits
	placement []string
	user      strAt
}

// matrixAxis is one key of a matrix with its values.
type matrixAxis struct {
	key    string
	values []string
}

// The keys the format knows, for "did you mean" and for reserved names.
var (
	topKeys     = []string{"image", "environment", "ports", "jobs", "on", "execute"}
	jobKeys     = []string{"action", "image", "environment", "ports", "needs", "services", "resources", "timeout", "retries", "when", "matrix", "steps", "artifacts", "reports", "limits", "placement", "user"}
	stepKeys    = []string{"name", "run", "timeout", "continue_on_error"}
	serviceKeys = []string{"name", "image", "environment", "command", "ports"}
	resKeys     = []string{"pool", "count", "labels"}
	whenKeys    = []string{"branch", "event", "tag", "paths"}
	limitKeys   = []string{"cpus", "memory"}
	reportKeys  = []string{"junit", "coverage", "type", "paths"}
)

// The syntax of names: reName ^[A-Za-z0-9][A-Za-z0-9_.-]*$ and reVar
// ^[A-Za-z_][A-Za-z0-9_]*$, checked by hand: a regexp compiled at package
// level costs every forge command its start-up.
var (
	reName = charSyntax{first: isAlnum, rest: isNameChar}
	reVar  = charSyntax{first: isVarStart, rest: isVarChar}
)

// charSyntax matches a non-empty ASCII string whose first byte satisfies
// first and every other byte rest.
type charSyntax struct{ first, rest func(c byte) bool }

// MatchString reports whether s has the syntax.
func (c charSyntax) MatchString(s string) bool {
	if s == "" || !c.first(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !c.rest(s[i]) {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
func isNameChar(c byte) bool { return isAlnum(c) || c == '_' || c == '.' || c == '-' }
func isVarStart(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' }
func isVarChar(c byte) bool  { return isVarStart(c) || c >= '0' && c <= '9' }

// IsVarName reports whether s can name an environment variable: letters,
// digits and _, not starting with a digit.
func IsVarName(s string) bool { return reVar.MatchString(s) }

// Load reads and parses the spec at path. A missing or unreadable file is
// an error with code ENOTFOUND or EINVALID, not an *Errors; a file that is
// too large is a problem in an *Errors, like any other.
func Load(path string) (*File, error) {
	fh, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, forge.Errorf(forge.ENOTFOUND, "cannot read %s: no such file", path)
		}
		return nil, forge.WrapError(forge.EINVALID, err, "cannot read "+path)
	}
	defer fh.Close()
	if info, err := fh.Stat(); err == nil && info.IsDir() {
		return nil, forge.Errorf(forge.EINVALID, "%s is a directory, not a spec file", path)
	}
	// One byte more than allowed is enough for Parse to say it is too big.
	data, err := io.ReadAll(io.LimitReader(fh, maxFileSize+1))
	if err != nil {
		return nil, forge.WrapError(forge.EINVALID, err, "cannot read "+path)
	}
	return Parse(path, data)
}

// Parse parses a .forge.yml. name is used in error positions. It checks
// everything that does not depend on what is built (the action, the
// event, the branch): a file Parse accepts compiles for each of its
// actions. Problems are returned together as an *Errors.
func Parse(name string, data []byte) (*File, error) {
	// Editors on Windows may start a file with a byte order mark.
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	if len(data) > maxFileSize {
		ps := newProblems(name, nil)
		ps.add(1, 1, "the file has more than %d bytes (512 KiB), the most a spec may have", maxFileSize)
		return nil, ps.err()
	}
	ps := newProblems(name, data)
	f := &File{Name: name, ps: ps}
	body := parseYAML(ps, data)
	if len(ps.list) > 0 {
		return nil, ps.err()
	}
	if body == nil {
		ps.add(1, 1, "the file is empty: add an `execute:` list of commands, or `jobs:`")
		return nil, ps.err()
	}
	r := &reader{ps: ps}
	r.collectAnchors(body)
	r.file(f, body)
	f.check(r, posOf(body), len(ps.list) == 0)
	if err := ps.err(); err != nil {
		return nil, err
	}
	return f, nil
}

// Actions lists the file's actions (execute, deploy, ...), in file order.
func (f *File) Actions() []string { return slices.Clone(f.actions) }

// HasOn reports whether the file has an on: section.
func (f *File) HasOn() bool { return f.hasOn }

// file reads the top level.
func (r *reader) file(f *File, body ast.Node) {
	entries, ok := r.mapping(body, "the top level of a spec", "duplicate key `%s`: it is already set at line %d")
	if !ok {
		return
	}
	var jobsEntry, onEntry *entry
	for _, e := range entries {
		switch e.key {
		case "image":
			s, p, ok := r.str(e.value, "`image`")
			if ok {
				f.image = strAt{s, p}
			}
		case "environment":
			f.env = r.environment(e.value, "`environment`")
		case "ports":
			f.ports = r.ports(e.value, "`ports`")
		case "jobs":
			jobsEntry = &e
		case "on":
			onEntry = &e
		default:
			if strings.HasPrefix(e.key, "x-") {
				continue // an extension key, e.g. to hold anchors
			}
			r.topLevelAction(f, e)
		}
	}
	if jobsEntry != nil {
		r.jobs(f, *jobsEntry)
	}
	if onEntry != nil {
		f.hasOn = true
		f.on = r.on(onEntry.value)
	}
}

// topLevelAction reads `NAME: [commands]`, the original single-job form.
func (r *reader) topLevelAction(f *File, e entry) {
	v := r.resolve(e.value)
	if v == nil {
		return
	}
	if _, isSeq := v.(*ast.SequenceNode); !isSeq {
		if _, isNull := v.(*ast.NullNode); !isNull {
			// Not a command list: most likely a misspelt key.
			if e.key == DefaultAction {
				r.ps.at(posOf(e.value), "action `%s` must be a list of commands, not %s", e.key, kind(v))
				return
			}
			if slices.Contains(jobKeys, e.key) {
				r.ps.at(e.keyPos, "`%s` belongs to a job: move it under a job in `jobs:`", e.key)
				return
			}
			hint := suggest(e.key, topKeys)
			if hint == "" {
				hint = " a top-level key is `image`, `environment`, `ports`, `jobs`, `on`, or an action: a list of commands"
			}
			r.ps.at(e.keyPos, "unknown key `%s`:%s", e.key, hint)
			return
		}
	}
	if slices.Contains(jobKeys, e.key) {
		r.ps.at(e.keyPos, "`%s` belongs to a job: move it under a job in `jobs:`", e.key)
		return
	}
	if e.key != DefaultAction && editDistance(e.key, DefaultAction) <= 2 {
		r.ps.at(e.keyPos, "unknown key `%s`: did you mean `%s`?", e.key, DefaultAction)
		return
	}
	if !reName.MatchString(e.key) {
		r.ps.at(e.keyPos, "bad action name `%s`: use letters, digits, `-`, `_` and `.`", e.key)
		return
	}
	j := &jobSpec{name: e.key, p: e.keyPos, topLevel: true, action: e.key}
	what := fmt.Sprintf("action `%s`", e.key)
	j.steps = r.commands(e.value, what, "command", what, e.keyPos)
	f.noteAction(e.key)
	f.jobs = append(f.jobs, j)
}

func (f *File) noteAction(a string) {
	if !slices.Contains(f.actions, a) {
		f.actions = append(f.actions, a)
	}
}

// commands reads a list of steps, each a command string or a step
// mapping: an action's list (item "command") or a job's steps (item
// "step"). what names the list, owner what it belongs to.
func (r *reader) commands(n ast.Node, what, item, owner string, at pos) []forge.Step {
	items, ok := r.list(n, what, false)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		r.ps.at(at, "%s has no commands: give it a list of shell commands", what)
		return nil
	}
	steps := make([]forge.Step, 0, len(items))
	for i, it := range items {
		if s, ok := r.step(it, fmt.Sprintf("%s %d of %s", item, i+1, owner)); ok {
			steps = append(steps, s)
		}
	}
	return steps
}

// step reads one step: a command string or {name, run, timeout,
// continue_on_error}.
func (r *reader) step(n ast.Node, what string) (forge.Step, bool) {
	v := r.resolve(n)
	if v == nil {
		return forge.Step{}, false
	}
	if s, ok := scalarText(v); ok {
		if strings.TrimSpace(s) == "" {
			r.ps.at(posOf(n), "%s is empty", what)
			return forge.Step{}, false
		}
		return forge.Step{Name: stepName(s), Run: s}, true
	}
	switch v.(type) {
	case *ast.MappingNode, *ast.MappingValueNode:
	default:
		r.ps.at(posOf(n), "%s must be a command (a string), not %s", what, kind(v))
		return forge.Step{}, false
	}
	entries, ok := r.mapping(v, what, "duplicate key `%s` in "+what+" (first at line %d)")
	if !ok {
		return forge.Step{}, false
	}
	known := false
	for _, e := range entries {
		if slices.Contains(stepKeys, e.key) {
			known = true
		}
	}
	if !known && len(entries) == 1 {
		// `- echo: hi` is a command with ": " in it, read as a mapping.
		r.ps.at(posOf(n), "%s is a mapping (`%s: ...`), not a command: quote the command if it contains \": \", or write {name, run}", what, entries[0].key)
		return forge.Step{}, false
	}
	var st forge.Step
	hasRun := false
	for _, e := range entries {
		switch e.key {
		case "name":
			st.Name, _, _ = r.str(e.value, "`name` of "+what)
		case "run":
			if _, isSeq := r.resolve(e.value).(*ast.SequenceNode); isSeq {
				// A program and its arguments, run without a shell.
				args := r.strs(e.value, "`run` of "+what)
				switch {
				case len(args) == 0:
					r.ps.at(posOf(e.value), "`run` of %s is an empty list: give the program and its arguments", what)
				case strings.TrimSpace(args[0].s) == "":
					r.ps.at(args[0].p, "the program of `run` of %s is empty", what)
				default:
					for _, a := range args {
						st.Args = append(st.Args, a.s)
					}
					hasRun = true
				}
				continue
			}
			s, p, ok := r.str(e.value, "`run` of "+what)
			if ok && strings.TrimSpace(s) == "" {
				r.ps.at(p, "`run` of %s is empty", what)
			} else if ok {
				st.Run, hasRun = s, true
			}
		case "timeout":
			st.Timeout = r.duration(e.value, "`timeout` of "+what)
		case "continue_on_error":
			st.ContinueOnError = r.boolean(e.value, "`continue_on_error` of "+what)
		default:
			r.unknownKey(e, what, stepKeys)
		}
	}
	if !hasRun {
		if _, has := find(entries, "run"); !has {
			r.ps.at(posOf(n), "%s has no `run`: give the command to run", what)
		}
		return forge.Step{}, false
	}
	if st.Name == "" && st.Args != nil {
		st.Name = stepName(strings.Join(st.Args, " "))
	} else if st.Name == "" {
		st.Name = stepName(st.Run)
	}
	return st, true
}

func find(entries []entry, key string) (entry, bool) {
	for _, e := range entries {
		if e.key == key {
			return e, true
		}
	}
	return entry{}, false
}

// stepName names an unnamed step after its command's first line.
func stepName(cmd string) string {
	s := forge.FirstLine(cmd)
	if r := []rune(s); len(r) > 60 {
		s = string(r[:59]) + "…"
	}
	return s
}

func (r *reader) unknownKey(e entry, what string, valid []string) {
	hint := suggest(e.key, valid)
	if hint == "" {
		hint = " valid keys are `" + strings.Join(valid, "`, `") + "`"
	}
	r.ps.at(e.keyPos, "unknown key `%s` in %s:%s", e.key, what, hint)
}

// environment reads a mapping of variable names to scalar values.
func (r *reader) environment(n ast.Node, what string) []envVar {
	if r.isNull(r.resolve(n)) {
		return nil
	}
	entries, ok := r.mapping(n, what, "duplicate variable `%s` in "+what+" (first at line %d)")
	if !ok {
		return nil
	}
	out := make([]envVar, 0, len(entries))
	for _, e := range entries {
		if !reVar.MatchString(e.key) {
			r.ps.at(e.keyPos, "bad variable name `%s` in %s: use letters, digits and `_`, not starting with a digit", e.key, what)
			continue
		}
		v := r.resolve(e.value)
		if v == nil && r.overBudget {
			return out
		}
		val := ""
		if s, ok := scalarText(v); ok {
			val = s
		} else if !r.isNull(v) {
			r.ps.at(posOf(e.value), "variable `%s` must be a single value, not %s", e.key, kind(v))
			continue
		}
		out = append(out, envVar{name: e.key, value: val, p: e.keyPos})
	}
	return out
}

// boolean reads true or false.
func (r *reader) boolean(n ast.Node, what string) bool {
	v := r.resolve(n)
	if b, ok := v.(*ast.BoolNode); ok {
		return b.Value
	}
	if v != nil {
		r.ps.at(posOf(n), "%s must be true or false, not %s", what, kind(v))
	}
	return false
}

// integer reads a whole number in [lo, hi].
func (r *reader) integer(n ast.Node, what string, lo, hi int) (int, bool) {
	v := r.resolve(n)
	if v == nil {
		return 0, false
	}
	in, ok := v.(*ast.IntegerNode)
	if !ok {
		r.ps.at(posOf(n), "%s must be a whole number, not %s", what, kind(v))
		return 0, false
	}
	var x int64
	switch val := in.Value.(type) {
	case int64:
		x = val
	case uint64:
		if val > uint64(hi) {
			x = int64(hi) + 1
		} else {
			x = int64(val)
		}
	default:
		r.ps.at(posOf(n), "%s must be a whole number", what)
		return 0, false
	}
	if x < int64(lo) || x > int64(hi) {
		r.ps.at(posOf(n), "%s must be between %d and %d, not %s", what, lo, hi, in.GetToken().Value)
		return 0, false
	}
	return int(x), true
}

// duration reads a Go-style duration such as 90s, 10m or 1h30m.
func (r *reader) duration(n ast.Node, what string) time.Duration {
	s, p, ok := r.str(n, what)
	if !ok {
		return 0
	}
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		if _, numErr := strconv.Atoi(strings.TrimSpace(s)); numErr == nil {
			r.ps.at(p, "bad duration `%s` for %s: give a unit, e.g. %ss or %sm", s, what, s, s)
		} else {
			r.ps.at(p, "bad duration `%s` for %s: write it like 90s, 10m or 1h30m", s, what)
		}
		return 0
	}
	if d <= 0 {
		r.ps.at(p, "%s must be positive, not `%s`", what, s)
		return 0
	}
	return d
}
