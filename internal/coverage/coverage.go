// Package coverage reads code coverage reports: Go cover profiles (go test
// -coverprofile) and Cobertura XML (coverage.py, JaCoCo converters, gcovr,
// and most other tools' common format).
package coverage

import (
	"bufio"
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Counts are what a report covers: statements (Go) or lines (Cobertura).
type Counts struct {
	Covered int64
	Total   int64
}

// Percent is the share covered, 0 to 100; 0 when there is nothing.
func (c Counts) Percent() float64 {
	if c.Total == 0 {
		return 0
	}
	return 100 * float64(c.Covered) / float64(c.Total)
}

// Add sums two reports' counts (several packages' or modules' reports).
func (c Counts) Add(o Counts) Counts {
	return Counts{Covered: c.Covered + o.Covered, Total: c.Total + o.Total}
}

// Parse reads a report, a Go cover profile (it starts with "mode:") or
// Cobertura XML, and errors naming what is wrong with one that is
// neither.
func Parse(data []byte) (Counts, error) {
	trimmed := bytes.TrimLeft(data, " \t\r\n\ufeff")
	switch {
	case bytes.HasPrefix(trimmed, []byte("mode:")):
		return parseGo(trimmed)
	case bytes.HasPrefix(trimmed, []byte("<")):
		return parseCobertura(trimmed)
	}
	return Counts{}, errors.New("not a coverage report: want a Go cover profile (mode: ...) or Cobertura XML")
}

// parseGo reads a Go cover profile: after the mode line, one line per
// block, "file:start.col,end.col statements count". A block listed several
// times (profiles of several test binaries appended) counts once, covered
// when any count is above zero.
func parseGo(data []byte) (Counts, error) {
	type block struct {
		stmts   int64
		covered bool
	}
	blocks := map[string]*block{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "mode:") {
			continue
		}
		// The file name may hold spaces: the two numbers are the last
		// fields.
		i := strings.LastIndexByte(text, ' ')
		j := strings.LastIndexByte(text[:max(i, 0)], ' ')
		if i < 0 || j < 0 {
			return Counts{}, fmt.Errorf("cover profile line %d: want FILE:POS STATEMENTS COUNT, got %q", line, text)
		}
		stmts, err1 := strconv.ParseInt(text[j+1:i], 10, 64)
		count, err2 := strconv.ParseInt(text[i+1:], 10, 64)
		if err1 != nil || err2 != nil || stmts < 0 || count < 0 {
			return Counts{}, fmt.Errorf("cover profile line %d: bad counts in %q", line, text)
		}
		key := text[:j]
		b := blocks[key]
		if b == nil {
			b = &block{stmts: stmts}
			blocks[key] = b
		}
		b.covered = b.covered || count > 0
	}
	if err := sc.Err(); err != nil {
		return Counts{}, fmt.Errorf("cover profile: %w", err)
	}
	var c Counts
	for _, b := range blocks {
		c.Total += b.stmts
		if b.covered {
			c.Covered += b.stmts
		}
	}
	return c, nil
}

// parseCobertura reads the root element of Cobertura XML: lines-covered
// and lines-valid, or line-rate alone (then per mille of one line).
func parseCobertura(data []byte) (Counts, error) {
	dec := xml.NewDecoder(bytes.NewReader(data))
	dec.Strict = false
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return Counts{}, errors.New("Cobertura XML: no <coverage> element")
		}
		if err != nil {
			return Counts{}, fmt.Errorf("Cobertura XML: %w", err)
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if start.Name.Local != "coverage" {
			return Counts{}, fmt.Errorf("Cobertura XML: the root element is <%s>, want <coverage>", start.Name.Local)
		}
		attr := map[string]string{}
		for _, a := range start.Attr {
			attr[a.Name.Local] = a.Value
		}
		covered, err1 := strconv.ParseInt(attr["lines-covered"], 10, 64)
		valid, err2 := strconv.ParseInt(attr["lines-valid"], 10, 64)
		if err1 == nil && err2 == nil && valid >= 0 && covered >= 0 && covered <= valid {
			return Counts{Covered: covered, Total: valid}, nil
		}
		rate, err := strconv.ParseFloat(attr["line-rate"], 64)
		if err != nil || rate < 0 || rate > 1 {
			return Counts{}, errors.New("Cobertura XML: <coverage> has neither lines-covered and lines-valid nor a line-rate from 0 to 1")
		}
		return Counts{Covered: int64(rate*1000 + 0.5), Total: 1000}, nil
	}
}
