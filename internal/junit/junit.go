// Package junit reads JUnit XML test reports, the format most test
// runners write (pytest --junitxml, go-junit-report, Maven Surefire,
// jest-junit, ...), into a forge.TestSummary.
//
// Both roots are read: <testsuites> holding <testsuite> elements (nested
// suites too), and a lone <testsuite>. A <testcase> with a <failure> or
// an <error> fails; one with <skipped> is skipped. Where a test is comes
// from the test case's file and line attributes, or its suite's file.
package junit

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/forgeci/forge"
)

type suite struct {
	Name   string  `xml:"name,attr"`
	File   string  `xml:"file,attr"`
	Suites []suite `xml:"testsuite"`
	Cases  []tcase `xml:"testcase"`
}

type tcase struct {
	Name      string    `xml:"name,attr"`
	Classname string    `xml:"classname,attr"`
	File      string    `xml:"file,attr"`
	Line      string    `xml:"line,attr"`
	Failures  []problem `xml:"failure"`
	Errors    []problem `xml:"error"`
	Skipped   *struct{} `xml:"skipped"`
}

type problem struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",chardata"`
}

// maxDetails bounds the text kept of one failure.
const maxDetails = 4000

// Add reads the JUnit XML report data, found at reportPath in the
// workspace whose absolute path is root (may be ""), into sum. An error
// says what is wrong with the file; sum is unchanged then.
func Add(sum *forge.TestSummary, reportPath, root string, data []byte) error {
	dir := root
	var doc struct {
		XMLName xml.Name
		suite
	}
	dec := xml.NewDecoder(bytes.NewReader(data))
	dec.Strict = false
	if err := dec.Decode(&doc); err != nil {
		return fmt.Errorf("%s is not JUnit XML: %v", reportPath, err)
	}
	switch doc.XMLName.Local {
	case "testsuites", "testsuite":
	default:
		return fmt.Errorf("%s is not JUnit XML: its root element is <%s>, want <testsuites> or <testsuite>", reportPath, doc.XMLName.Local)
	}
	var s forge.TestSummary
	walk(&s, reportPath, doc.suite, "")
	for i := range s.Failures {
		s.Failures[i].File = relative(s.Failures[i].File, dir)
	}
	sum.Total += s.Total
	sum.Failed += s.Failed
	sum.Skipped += s.Skipped
	for _, f := range s.Failures {
		if len(sum.Failures) < forge.MaxTestFailures {
			sum.Failures = append(sum.Failures, f)
		}
	}
	sum.Reports = append(sum.Reports, reportPath)
	return nil
}

func walk(sum *forge.TestSummary, report string, s suite, file string) {
	if s.File != "" {
		file = s.File
	}
	for _, c := range s.Cases {
		sum.Total++
		probs := append(append([]problem(nil), c.Failures...), c.Errors...)
		switch {
		case len(probs) > 0:
			sum.Failed++
			p := probs[0]
			f := forge.TestFailure{
				Suite:   firstNonEmpty(c.Classname, s.Name),
				Name:    c.Name,
				File:    clean(firstNonEmpty(c.File, file)),
				Message: strings.TrimSpace(firstNonEmpty(p.Message, p.Type)),
				Details: cut(strings.TrimSpace(p.Text), maxDetails),
				Report:  report,
			}
			if n, err := strconv.Atoi(strings.TrimSpace(c.Line)); err == nil && n > 0 {
				f.Line = n
			}
			if f.Message == "" {
				f.Message = firstLine(f.Details)
			}
			if len(sum.Failures) < forge.MaxTestFailures {
				sum.Failures = append(sum.Failures, f)
			}
		case c.Skipped != nil:
			sum.Skipped++
		}
	}
	for _, child := range s.Suites {
		walk(sum, report, child, file)
	}
}

// relative makes f, when it is an absolute path inside root, relative to
// root: reports written in a temporary workspace name files by absolute
// path, and GitHub wants them relative to the repository.
func relative(f, root string) string {
	root = strings.TrimRight(path.Clean(strings.ReplaceAll(root, "\\", "/")), "/")
	if root == "" || root == "." || !strings.HasPrefix(f, root+"/") {
		return f
	}
	return strings.TrimPrefix(f, root+"/")
}

// clean puts a report's file name in its clean, slash-separated form.
func clean(f string) string {
	if f == "" {
		return ""
	}
	f = path.Clean(strings.ReplaceAll(f, "\\", "/"))
	return strings.TrimPrefix(f, "./")
}

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}
