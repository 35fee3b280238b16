package spec

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/forgeci/forge"
)

// Problem is one thing wrong with a spec, at a position a person can go to.
type Problem struct {
	File string
	// Line and Col count from 1; Col counts characters, not bytes.
	Line, Col int
	Message   string
	// Source is the offending line of the file, without its newline; empty
	// when the position is past the end of the file.
	Source string
}

// String formats p as FILE:LINE:COL: message.
func (p Problem) String() string {
	return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Line, p.Col, p.Message)
}

// Errors lists every problem found in a spec. Parse, Load and Compile return
// it as their error; forge.ErrorCode reports it as forge.EINVALID.
type Errors struct {
	Problems []Problem
}

// Error returns one FILE:LINE:COL: message line per problem.
func (e *Errors) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns a *forge.Error with code EINVALID, so that the CLI exits 2
// and the HTTP layer answers 4xx for an invalid spec.
func (e *Errors) Unwrap() error {
	return &forge.Error{Code: forge.EINVALID, Message: e.Error()}
}

// Report formats every problem for a person: the FILE:LINE:COL: message
// line, then the offending source line and a caret under the column. It is
// what `forge lint` prints and what `forge exec` prints before refusing to
// run an invalid file.
func (e *Errors) Report() string {
	var b strings.Builder
	for _, p := range e.Problems {
		b.WriteString(p.String())
		b.WriteByte('\n')
		if p.Source == "" {
			continue
		}
		src := strings.ReplaceAll(p.Source, "\t", " ")
		b.WriteString("    ")
		b.WriteString(src)
		b.WriteString("\n    ")
		if p.Col >= 1 {
			b.WriteString(strings.Repeat(" ", min(p.Col-1, len([]rune(src)))))
			b.WriteString("^\n")
		}
	}
	return b.String()
}

// Report formats err for a person: the detailed listing of a *Errors (see
// Errors.Report), or err's text followed by a newline for any other error.
func Report(err error) string {
	var errs *Errors
	if errors.As(err, &errs) {
		return errs.Report()
	}
	return err.Error() + "\n"
}

// problems collects problems while a file is read, with the file's lines to
// quote the source.
type problems struct {
	file  string
	lines []string
	list  []Problem
	more  int // problems not listed, past maxProblems
}

func newProblems(file string, data []byte) *problems {
	return &problems{file: file, lines: strings.Split(string(data), "\n")}
}

// maxProblems is how many problems one file reports; past that the rest
// are counted, not listed.
const maxProblems = 50

// add records a problem at line:col.
func (ps *problems) add(line, col int, format string, args ...any) {
	if len(ps.list) >= maxProblems {
		ps.more++
		return
	}
	if line < 1 {
		line = 1
	}
	if col < 1 {
		col = 1
	}
	p := Problem{File: ps.file, Line: line, Col: col, Message: fmt.Sprintf(format, args...)}
	if line <= len(ps.lines) {
		p.Source = strings.TrimRight(ps.lines[line-1], "\r")
	}
	ps.list = append(ps.list, p)
}

// at records a problem at a position.
func (ps *problems) at(p pos, format string, args ...any) {
	ps.add(p.line, p.col, format, args...)
}

// err returns the collected problems sorted by position, duplicates
// removed, as an *Errors; nil when there are none.
func (ps *problems) err() error {
	if len(ps.list) == 0 {
		return nil
	}
	list := append([]Problem(nil), ps.list...)
	sort.SliceStable(list, func(i, j int) bool {
		if list[i].Line != list[j].Line {
			return list[i].Line < list[j].Line
		}
		return list[i].Col < list[j].Col
	})
	out := list[:0]
	for i, p := range list {
		if i > 0 && p == list[i-1] {
			continue
		}
		out = append(out, p)
	}
	if ps.more > 0 {
		last := out[len(out)-1]
		out = append(out, Problem{File: ps.file, Line: last.Line, Col: last.Col,
			Message: fmt.Sprintf("and %d more problems; fix these first", ps.more)})
	}
	return &Errors{Problems: out}
}

// pos is a position in the spec file.
type pos struct{ line, col int }

// suggest returns " did you mean `x`?" for the candidate nearest to word,
// or "" when none is near enough to be a likely typo.
func suggest(word string, candidates []string) string {
	best, bestDist := "", -1
	for _, c := range candidates {
		d := editDistance(strings.ToLower(word), strings.ToLower(c))
		if bestDist < 0 || d < bestDist {
			best, bestDist = c, d
		}
	}
	// Allow about one edit per three characters, at least one and at most
	// three, so `enviroment` finds `environment` but `foo` finds nothing.
	// Words of one or two characters only match ignoring case.
	limit := max(1, min(3, len(word)/3))
	if len([]rune(word)) < 3 {
		limit = 0
	}
	if best == "" || bestDist > limit {
		return ""
	}
	return fmt.Sprintf(" did you mean `%s`?", best)
}

// editDistance is the Levenshtein distance between a and b, counting
// runes, with adjacent transpositions as one edit (a common typo).
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	if len(ra) > 64 || len(rb) > 64 {
		// Keys that long are not typos of ours; avoid quadratic work.
		return max(len(ra), len(rb))
	}
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}
