package shell_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/shell"
)

// TestCollectReports: globs (with **) find report files in the
// workspace, in path order, once each (symbolic links are not followed by
// a glob); a missing file, one outside the workspace and one too large
// are reported with the reason.
func TestCollectReports(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "secret.xml")
	write := func(p, s string) {
		full := filepath.Join(dir, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("out/a/unit.xml", "<testsuite/>")
	write("out/b/c/int.xml", "<testsuites/>")
	write("out/notes.txt", "x")
	write("junit.xml", "<testsuite/>")
	os.WriteFile(outside, []byte("<testsuite/>"), 0o644)
	os.Symlink(outside, filepath.Join(dir, "out", "link.xml"))
	big, _ := os.Create(filepath.Join(dir, "big.xml"))
	big.Truncate(shell.MaxReportSize + 1)
	big.Close()

	var got []string
	rep := forge.ReporterFunc(func(e forge.Event) {
		if e.Type != forge.EventReport || e.Report == nil {
			t.Errorf("event %+v, want a report", e)
			return
		}
		r := e.Report
		s := r.Path + " " + string(r.Data)
		if r.Error != "" {
			s = r.Path + " ! " + r.Error
		}
		if r.Root != dir {
			t.Errorf("root %q, want %q", r.Root, dir)
		}
		got = append(got, s)
	})
	shell.CollectReports(dir, []forge.Report{
		{Type: "junit", Paths: []string{"out/**/*.xml", "junit.xml"}},
		{Type: "junit", Paths: []string{"out/a/unit.xml", "out/link.xml", "missing/*.xml", "big.xml", "../x.xml"}},
	}, rep)
	want := []string{
		"out/a/unit.xml <testsuite/>",
		"out/b/c/int.xml <testsuites/>",
		"junit.xml <testsuite/>",
		"out/link.xml ! read out/link.xml: the file is outside the workspace",
		"missing/*.xml ! no file matches missing/*.xml",
		"big.xml ! read big.xml: the file is larger than 16 MiB",
		"../x.xml ! ../x.xml: a report path must be relative to the workspace, without ..",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("reports:\ngot\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
