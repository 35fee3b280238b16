// Package glob compiles forge's path patterns, shared by the spec's when:
// conditions and the backends' report collection: `*` matches within one
// path segment, `**` across segments (`**/` also matches no directory),
// `?` one character, `[a-z]` and `[!a-z]` classes.
package glob

import (
	"errors"
	"regexp"
	"strings"
)

// Regexp compiles pattern into an anchored regular expression. The error
// says what is wrong with the pattern, for a person.
func Regexp(pattern string) (*regexp.Regexp, error) {
	if pattern == "" {
		return nil, errors.New("empty pattern")
	}
	var b strings.Builder
	b.WriteString("^")
	rs := []rune(pattern)
	for i := 0; i < len(rs); i++ {
		switch c := rs[i]; c {
		case '*':
			if i+1 < len(rs) && rs[i+1] == '*' {
				i++
				if i+1 < len(rs) && rs[i+1] == '/' {
					i++
					b.WriteString("(?:.*/)?") // **/ also matches no directory
				} else {
					b.WriteString(".*")
				}
			} else {
				b.WriteString("[^/]*")
			}
		case '?':
			b.WriteString("[^/]")
		case '[':
			end := strings.IndexRune(string(rs[i+1:]), ']')
			if end < 0 {
				return nil, errors.New("`[` without `]`")
			}
			class := []rune(string(rs[i+1:])[:end])
			i += len(class) + 1
			if len(class) == 0 {
				return nil, errors.New("empty `[]`")
			}
			b.WriteString("[")
			if class[0] == '!' || class[0] == '^' {
				b.WriteString("^")
				class = class[1:]
			}
			for _, cr := range class {
				if cr == '\\' || cr == '[' || cr == ']' || cr == '^' {
					b.WriteByte('\\')
				}
				b.WriteRune(cr)
			}
			b.WriteString("]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	if err != nil {
		return nil, errors.New("bad character class")
	}
	return re, nil
}
