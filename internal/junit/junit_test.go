package junit_test

import (
	"strings"
	"testing"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/junit"
)

func TestAdd(t *testing.T) {
	var sum forge.TestSummary
	pytest := `<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4">
<testcase classname="tests.test_calc" name="test_add" file="tests/test_calc.py" line="3" time="0.001"/>
<testcase classname="tests.test_calc" name="test_div" file="/tmp/ws/tests/test_calc.py" line="9"><failure message="ZeroDivisionError: division by zero">def test_div():
&gt;   1/0</failure></testcase>
<testcase classname="tests.test_net" name="test_get"><error message="">ConnectionError: refused
more</error></testcase>
<testcase classname="tests.test_calc" name="test_skip"><skipped message="later"/></testcase>
</testsuite></testsuites>`
	if err := junit.Add(&sum, "reports/pytest.xml", "/tmp/ws", []byte(pytest)); err != nil {
		t.Fatal(err)
	}
	// go-junit-report: a lone testsuite, a suite-level file.
	gotest := `<testsuite name="pkg/x" tests="1" failures="1" file="pkg/x/x_test.go"><testcase name="TestX"><failure message="Failed">x_test.go:12: boom</failure></testcase></testsuite>`
	if err := junit.Add(&sum, "go.xml", "", []byte(gotest)); err != nil {
		t.Fatal(err)
	}
	if sum.Total != 5 || sum.Failed != 3 || sum.Skipped != 1 || len(sum.Reports) != 2 {
		t.Fatalf("summary %+v, want 5 tests, 3 failed, 1 skipped, 2 reports", sum)
	}
	want := []forge.TestFailure{
		{Suite: "tests.test_calc", Name: "test_div", File: "tests/test_calc.py", Line: 9, Message: "ZeroDivisionError: division by zero", Report: "reports/pytest.xml"},
		{Suite: "tests.test_net", Name: "test_get", Message: "ConnectionError: refused", Report: "reports/pytest.xml"},
		{Suite: "pkg/x", Name: "TestX", File: "pkg/x/x_test.go", Message: "Failed", Report: "go.xml"},
	}
	for i, w := range want {
		got := sum.Failures[i]
		got.Details = ""
		if got != w {
			t.Errorf("failure %d:\ngot  %+v\nwant %+v", i, got, w)
		}
	}
	if !strings.Contains(sum.Failures[0].Details, "1/0") {
		t.Errorf("details %q lack the failure's text", sum.Failures[0].Details)
	}
}

func TestAddRejects(t *testing.T) {
	for name, data := range map[string]string{
		"not xml":      "PASS ok 0.1s",
		"another root": "<html><body/></html>",
		"empty":        "",
	} {
		var sum forge.TestSummary
		err := junit.Add(&sum, "r.xml", "", []byte(data))
		if err == nil || !strings.Contains(err.Error(), "r.xml") {
			t.Errorf("%s: error %v, want one naming the file", name, err)
		}
		if sum.Total != 0 || len(sum.Reports) != 0 {
			t.Errorf("%s: summary changed: %+v", name, sum)
		}
	}
}

// FuzzAdd: a report is written by the job, so by whoever wrote the pull
// request: any bytes give a summary or an error, never a panic, and the
// counts add up.
func FuzzAdd(f *testing.F) {
	f.Add([]byte(`<testsuite><testcase name="a"><failure message="x"/></testcase></testsuite>`))
	f.Add([]byte(`<testsuites><testsuite file="a.go"><testsuite><testcase line="-3"/></testsuite></testsuite></testsuites>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var sum forge.TestSummary
		if err := junit.Add(&sum, "r.xml", "/ws", data); err != nil {
			return
		}
		if sum.Failed+sum.Skipped > sum.Total || len(sum.Failures) > sum.Failed || len(sum.Failures) > forge.MaxTestFailures {
			t.Fatalf("summary does not add up: %+v", sum)
		}
		for _, f := range sum.Failures {
			if f.Line < 0 {
				t.Fatalf("negative line %d", f.Line)
			}
		}
	})
}
