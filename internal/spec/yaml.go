package spec

import (
	"errors"
	"fmt"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"

	"github.com/forgeci/forge"
)

// maxNodes bounds how many nodes reading a file may visit, counting every
// visit through an alias, so that a few lines of nested aliases (the
// "billion laughs") cannot make a spec take forever to read.
const maxNodes = 200_000

// reader walks the YAML syntax tree of one file. Every value it hands out
// comes with the position of its token; every problem it meets is recorded
// in ps and reading goes on, so one run reports as much as it can.
type reader struct {
	ps      *problems
	anchors map[string]ast.Node
	visits  int
	// overBudget is set once maxNodes is exceeded; readers then stop.
	overBudget bool
	globs      map[string]glob // compiled patterns by source
}

// parseYAML parses data into its document body, or records why it cannot.
// A nil node with no problem recorded means the file is empty.
func parseYAML(ps *problems, data []byte) (body ast.Node) {
	defer func() {
		// The YAML library is third-party code reading a stranger's
		// input: a panic in it is a bad file, not a reason to crash.
		if v := recover(); v != nil {
			body = nil
			ps.add(1, 1, "cannot read this YAML (the parser failed: %v)", v)
		}
	}()
	if tooDeep(ps, data) || tooManyKeys(ps) {
		return nil
	}
	f, err := parser.ParseBytes(data, 0, parser.AllowDuplicateMapKey())
	if err != nil {
		line, col, msg := 1, 1, forge.FirstLine(err.Error())
		var ye yaml.Error
		if errors.As(err, &ye) && ye.GetToken() != nil && ye.GetToken().Position != nil {
			tk := ye.GetToken()
			line, col, msg = tk.Position.Line, tk.Position.Column, ye.GetMessage()
		}
		// Tabs are the usual cause; then name every tab-indented line,
		// the way an editor that inserted them would have.
		if strings.Contains(msg, "\t") || tabIndented(ps, line) {
			tabProblems(ps)
			return nil
		}
		ps.add(line, col, "invalid YAML: %s", msg)
		return nil
	}
	var docs []ast.Node
	for _, d := range f.Docs {
		if d == nil || d.Body == nil {
			continue
		}
		if _, directive := d.Body.(*ast.DirectiveNode); directive {
			continue // %YAML or %TAG before the document
		}
		docs = append(docs, d.Body)
	}
	if len(docs) == 0 {
		return nil
	}
	for _, d := range docs[1:] {
		ps.at(posOf(d), "a second YAML document: a spec is one document, remove the `---` before this line or move it to another file")
	}
	return docs[0]
}

// maxFlowDepth bounds the nesting of flow collections ([...] and {...}).
// The YAML library takes quadratic time in it (100,000 unclosed `[` take
// minutes), and no spec needs more than a few levels.
const maxFlowDepth = 64

// tooDeep records a problem and returns true when data nests flow
// collections deeper than maxFlowDepth. It follows YAML's quoting closely
// enough for that: brackets inside quoted scalars and comments do not
// count, and a quote opens a scalar only where a scalar can start. Block
// scalars are not recognised, so their brackets count; a shell script
// would need 64 unbalanced `[` on end to trip it.
func tooDeep(ps *problems, data []byte) bool {
	depth, line, col := 0, 1, 0
	var quote byte
	prev := byte('\n')
	for i := 0; i < len(data); i++ {
		c := data[i]
		col++
		if c == '\n' {
			line, col = line+1, 0
		}
		switch {
		case quote == '"' && c == '\\':
			i++ // an escape: skip the next byte
			col++
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '#' && (prev == ' ' || prev == '\t' || prev == '\n'):
			for i+1 < len(data) && data[i+1] != '\n' {
				i++
			}
		case (c == '\'' || c == '"') && strings.IndexByte(" \t\n[{,:-?", prev) >= 0:
			quote = c
		case c == '[' || c == '{':
			depth++
			if depth > maxFlowDepth {
				ps.add(line, col, "lists and mappings nested more than %d deep: simplify this", maxFlowDepth)
				return true
			}
		case c == ']' || c == '}':
			depth = max(depth-1, 0)
		}
		prev = c
	}
	return false
}

// maxKeys bounds the lines that look like `key:`. The YAML library takes
// quadratic time in the keys of one block mapping (10,000 keys take about
// half a second, 50,000 half a minute); the 200-job spec of the benchmark
// has about 2,400.
const maxKeys = 10_000

// tooManyKeys records a problem and returns true when data has more than
// maxKeys lines that look like a mapping key, or a line that opens more
// than maxFlowDepth block collections at once (`- - - - x`), which the
// library also handles in quadratic time.
func tooManyKeys(ps *problems) bool {
	keys := 0
	for i, line := range ps.lines {
		rest := strings.TrimLeft(line, " ")
		indicators := 0
		for len(rest) >= 2 && (rest[0] == '-' || rest[0] == '?' || rest[0] == ':') && (rest[1] == ' ' || rest[1] == '\t') {
			rest = strings.TrimLeft(rest[2:], " \t")
			indicators++
		}
		if indicators > maxFlowDepth {
			ps.add(i+1, 1, "lists and mappings nested more than %d deep: simplify this", maxFlowDepth)
			return true
		}
		if rest == "" || rest[0] == '#' {
			continue
		}
		rest = strings.TrimRight(rest, " \t\r")
		if strings.Contains(rest, ": ") || strings.HasSuffix(rest, ":") {
			keys++
			if keys > maxKeys {
				ps.add(i+1, 1, "more than %d keys: a spec this large is not supported, split it or simplify it", maxKeys)
				return true
			}
		}
	}
	return false
}

// tabColumn returns the column of the first tab in line's indentation,
// or 0 when it is indented with spaces only.
func tabColumn(line string) int {
	for i := 0; i < len(line); i++ {
		switch line[i] {
		case '\t':
			return i + 1 // only spaces before it: bytes are characters
		case ' ':
		default:
			return 0
		}
	}
	return 0
}

// tabIndented reports whether line n (from 1) is indented with a tab.
func tabIndented(ps *problems, n int) bool {
	return n >= 1 && n <= len(ps.lines) && tabColumn(ps.lines[n-1]) > 0
}

// tabProblems records a problem for every line indented with a tab. It
// runs only when the YAML did not parse because of a tab, since tabs
// inside block scalars and after values are allowed.
func tabProblems(ps *problems) {
	for i, line := range ps.lines {
		if col := tabColumn(line); col > 0 {
			ps.add(i+1, col, "tab character in indentation: YAML indents with spaces only")
		}
	}
}

// collectAnchors records every anchor by name; a later anchor of the same
// name replaces an earlier one, as in YAML.
func (r *reader) collectAnchors(n ast.Node) {
	r.anchors = map[string]ast.Node{}
	depth := 0
	var walk func(n ast.Node)
	walk = func(n ast.Node) {
		if n == nil || depth > 1000 {
			return
		}
		depth++
		defer func() { depth-- }()
		switch v := n.(type) {
		case *ast.AnchorNode:
			if v.Name != nil && v.Name.GetToken() != nil {
				r.anchors[v.Name.GetToken().Value] = v.Value
			}
			walk(v.Value)
		case *ast.MappingNode:
			for _, mv := range v.Values {
				walk(mv.Key)
				walk(mv.Value)
			}
		case *ast.MappingValueNode:
			walk(v.Key)
			walk(v.Value)
		case *ast.SequenceNode:
			for _, e := range v.Values {
				walk(e)
			}
		case *ast.TagNode:
			walk(v.Value)
		case *ast.MappingKeyNode:
			walk(v.Value)
		}
	}
	walk(n)
}

// resolve follows anchors, aliases and tags to the value a node stands for.
// It returns nil for an unknown alias (recorded as a problem) and when the
// file has used up its node budget.
func (r *reader) resolve(n ast.Node) ast.Node {
	for range 100 {
		if r.overBudget {
			return nil
		}
		r.visits++
		if r.visits > maxNodes {
			r.overBudget = true
			r.ps.at(posOf(n), "this file has, or expands to through aliases, more than %d values: simplify it", maxNodes)
			return nil
		}
		switch v := n.(type) {
		case *ast.AnchorNode:
			n = v.Value
		case *ast.TagNode:
			n = v.Value
		case *ast.AliasNode:
			name := ""
			if v.Value != nil && v.Value.GetToken() != nil {
				name = v.Value.GetToken().Value
			}
			target, ok := r.anchors[name]
			if !ok {
				r.ps.at(posOf(v), "unknown alias `*%s`: no anchor `&%s` in this file", name, name)
				return nil
			}
			n = target
		default:
			return n
		}
	}
	r.ps.at(posOf(n), "aliases nested too deeply")
	return nil
}

// posOf returns where n starts.
func posOf(n ast.Node) pos {
	switch v := n.(type) {
	case nil:
		return pos{1, 1}
	case *ast.MappingNode:
		if !v.IsFlowStyle && len(v.Values) > 0 {
			return posOf(v.Values[0])
		}
	case *ast.MappingValueNode:
		if v.Key != nil {
			return posOf(v.Key)
		}
	case *ast.LiteralNode:
		if v.Start != nil {
			return tokenPos(v.Start.Position.Line, v.Start.Position.Column)
		}
	}
	tk := n.GetToken()
	if tk == nil || tk.Position == nil {
		return pos{1, 1}
	}
	return tokenPos(tk.Position.Line, tk.Position.Column)
}

func tokenPos(line, col int) pos {
	return pos{max(line, 1), max(col, 1)}
}

// kind names what n is, for messages: "a mapping", "a list", ...
func kind(n ast.Node) string {
	switch n.(type) {
	case *ast.MappingNode, *ast.MappingValueNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.StringNode, *ast.LiteralNode:
		return "a string"
	case *ast.IntegerNode, *ast.FloatNode, *ast.InfinityNode, *ast.NanNode:
		return "a number"
	case *ast.BoolNode:
		return "a boolean"
	case *ast.NullNode, nil:
		return "empty"
	}
	return "a " + strings.ToLower(n.Type().String())
}

// entry is one key: value pair of a mapping.
type entry struct {
	key    string
	keyPos pos
	value  ast.Node // unresolved
}

// mapping returns the entries of n, which must be a mapping; what names it
// in messages ("job `test`"). Merge keys (<<: *anchor) are applied: their
// entries come first, and keys written in n override them. Duplicate keys
// are recorded as problems using dup, formatted with the key and the line
// of its first occurrence, and only the first is kept.
func (r *reader) mapping(n ast.Node, what, dup string) ([]entry, bool) {
	n = r.resolve(n)
	if n == nil {
		return nil, false
	}
	var values []*ast.MappingValueNode
	switch v := n.(type) {
	case *ast.MappingNode:
		values = v.Values
	case *ast.MappingValueNode:
		values = []*ast.MappingValueNode{v}
	default:
		r.ps.at(posOf(n), "%s must be a mapping of keys to values, not %s", what, kind(n))
		return nil, false
	}
	var merged, own []entry
	first := map[string]pos{}
	for _, mv := range values {
		if mv == nil {
			continue
		}
		if _, ok := mv.Key.(*ast.MergeKeyNode); ok {
			merged = append(merged, r.mergeEntries(mv.Value, what)...)
			continue
		}
		key, ok := r.keyText(mv.Key)
		if !ok {
			continue
		}
		kp := posOf(mv.Key)
		if p, seen := first[key]; seen {
			r.ps.at(kp, dup, key, p.line)
			continue
		}
		first[key] = kp
		own = append(own, entry{key: key, keyPos: kp, value: mv.Value})
	}
	if len(merged) == 0 {
		return own, true
	}
	out := make([]entry, 0, len(merged)+len(own))
	for _, e := range merged {
		if _, written := first[e.key]; !written {
			first[e.key] = e.keyPos
			out = append(out, e)
		}
	}
	return append(out, own...), true
}

// mergeEntries returns the entries a merge key brings in: one mapping or a
// list of mappings, earlier ones winning.
func (r *reader) mergeEntries(n ast.Node, what string) []entry {
	n = r.resolve(n)
	if seq, ok := n.(*ast.SequenceNode); ok {
		var out []entry
		seen := map[string]bool{}
		for _, item := range seq.Values {
			if _, nested := r.resolve(item).(*ast.SequenceNode); nested {
				r.ps.at(posOf(item), "a merge (<<) in %s takes a mapping or a list of mappings, not a list of lists", what)
				continue
			}
			for _, e := range r.mergeEntries(item, what) {
				if !seen[e.key] {
					seen[e.key] = true
					out = append(out, e)
				}
			}
		}
		return out
	}
	if n == nil {
		return nil
	}
	es, _ := r.mapping(n, "a merge (<<) in "+what, "duplicate key `%s` (first at line %d)")
	return es
}

// keyText returns a mapping key's text; keys must be scalars.
func (r *reader) keyText(k ast.Node) (string, bool) {
	if mk, ok := k.(*ast.MappingKeyNode); ok {
		k = mk.Value
	}
	n := r.resolve(k)
	if n == nil {
		return "", false
	}
	s, ok := scalarText(n)
	if !ok {
		r.ps.at(posOf(k), "a key must be a plain word, not %s", kind(n))
		return "", false
	}
	return s, true
}

// scalarText returns the text of a scalar as written (so 1.20 stays
// "1.20" and yes stays "yes"); ok is false for mappings, lists and null.
func scalarText(n ast.Node) (string, bool) {
	switch v := n.(type) {
	case *ast.StringNode:
		return v.Value, true
	case *ast.LiteralNode:
		if v.Value == nil {
			return "", true
		}
		return v.Value.Value, true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.InfinityNode, *ast.NanNode:
		return n.GetToken().Value, true
	}
	return "", false
}

// str reads a scalar as a string; what names it in problems. Null, a
// mapping or a list is a problem.
func (r *reader) str(n ast.Node, what string) (string, pos, bool) {
	p := posOf(n)
	v := r.resolve(n)
	if v == nil {
		return "", p, false // resolve said why
	}
	if s, ok := scalarText(v); ok {
		return s, p, true
	}
	if _, isNull := v.(*ast.NullNode); isNull {
		r.ps.at(p, "%s is empty: give it a value", what)
		return "", p, false
	}
	r.ps.at(p, "%s must be a single value, not %s", what, kind(v))
	return "", p, false
}

// list returns the items of a sequence. A single scalar is taken as a
// one-item list when allowOne is set (e.g. `needs: build`).
func (r *reader) list(n ast.Node, what string, allowOne bool) ([]ast.Node, bool) {
	v := r.resolve(n)
	switch s := v.(type) {
	case *ast.SequenceNode:
		out := make([]ast.Node, 0, len(s.Values))
		for _, item := range s.Values {
			if item != nil {
				out = append(out, item)
			}
		}
		return out, true
	case nil:
		return nil, false
	}
	if _, ok := scalarText(v); ok && allowOne {
		return []ast.Node{n}, true
	}
	if _, isNull := v.(*ast.NullNode); isNull {
		return nil, true
	}
	if allowOne {
		r.ps.at(posOf(v), "%s must be a value or a list of values, not %s", what, kind(v))
	} else {
		r.ps.at(posOf(v), "%s must be a list, not %s", what, kind(v))
	}
	return nil, false
}

// strs reads a string or a list of strings.
func (r *reader) strs(n ast.Node, what string) []strAt {
	items, ok := r.list(n, what, true)
	if !ok {
		return nil
	}
	out := make([]strAt, 0, len(items))
	for i, item := range items {
		s, p, ok := r.str(item, fmt.Sprintf("item %d of %s", i+1, what))
		if ok {
			out = append(out, strAt{s, p})
		}
	}
	return out
}

// isEmpty reports whether n is null or an empty list.
func (r *reader) isEmpty(n ast.Node) bool {
	v := r.resolve(n)
	if seq, ok := v.(*ast.SequenceNode); ok {
		return len(seq.Values) == 0
	}
	return r.isNull(v)
}

// isNull reports whether n stands for an empty value.
func (r *reader) isNull(n ast.Node) bool {
	if n == nil {
		return true
	}
	_, ok := n.(*ast.NullNode)
	return ok
}

// strAt is a string with the position it was read from.
type strAt struct {
	s string
	p pos
}
