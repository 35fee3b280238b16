package spec

import (
	"reflect"
	"testing"

	"github.com/forgeci/forge"
)

// TestCoverageReports: `coverage: PATH` and `type: coverage` declare
// coverage reports for the coverage badge (issue 11, item 7); mixing them
// with junit in one item is a problem.
func TestCoverageReports(t *testing.T) {
	p := mustCompile(t, `
jobs:
  test:
    reports:
      - junit: report.xml
      - coverage: cover.out
      - type: coverage
        paths: [coverage.xml, "sub/**/cobertura.xml"]
    steps: [go test ./...]
`, Options{})
	want := []forge.Report{
		{Type: "junit", Paths: []string{"report.xml"}},
		{Type: "coverage", Paths: []string{"cover.out"}},
		{Type: "coverage", Paths: []string{"coverage.xml", "sub/**/cobertura.xml"}},
	}
	if got := p.Job("test").Reports; !reflect.DeepEqual(got, want) {
		t.Errorf("reports = %+v, want %+v", got, want)
	}
	_, err := Parse("f.yml", []byte("jobs:\n  a:\n    reports:\n      - {junit: a.xml, coverage: c.out}\n    steps: [x]\n"))
	if err == nil {
		t.Error("junit and coverage in one report item: no problem reported")
	}
}
