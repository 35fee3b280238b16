package shell

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/glob"
)

// Limits of CollectReports: a report larger than MaxReportSize is not
// read (its event says so), and at most MaxReports files are read per job.
const (
	MaxReportSize = 16 << 20
	MaxReports    = 200
)

// CollectReports reads the test report files of a job that ran in dir,
// those matching the paths of reports (globs relative to dir: `*` within a
// directory, `**` across directories), and reports each as an EventReport,
// in path order. Files outside dir (through `..` or a symbolic link) are
// not read. It runs after the steps, whatever their outcome: a failing
// test run is when the report matters most.
func CollectReports(dir string, reports []forge.Report, rep forge.Reporter) {
	if len(reports) == 0 || rep == nil {
		return
	}
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return
	}
	seen := map[string]bool{}
	n := 0
	for _, r := range reports {
		typ := r.Type
		if typ == "" {
			typ = "junit"
		}
		for _, pattern := range r.Paths {
			matches, err := matchFiles(root, pattern)
			if err != nil || len(matches) == 0 {
				msg := "no file matches " + pattern
				if err != nil {
					msg = pattern + ": " + err.Error()
				}
				rep.Report(forge.Event{Type: forge.EventReport, Time: time.Now().UTC(),
					Report: &forge.ReportFile{Type: typ, Path: pattern, Root: dir, Error: msg}})
				continue
			}
			for _, rel := range matches {
				if seen[rel] {
					continue
				}
				seen[rel] = true
				if n++; n > MaxReports {
					return
				}
				f := &forge.ReportFile{Type: typ, Path: rel, Root: dir}
				f.Data, err = readReport(root, rel)
				if err != nil {
					f.Error = err.Error()
				}
				rep.Report(forge.Event{Type: forge.EventReport, Time: time.Now().UTC(), Report: f})
			}
		}
	}
}

// readReport reads root/rel unless it is too large or leads outside root.
func readReport(root, rel string) ([]byte, error) {
	p, err := filepath.EvalSymlinks(filepath.Join(root, rel))
	if err != nil {
		return nil, err
	}
	if p != root && !strings.HasPrefix(p, root+string(filepath.Separator)) {
		return nil, &fs.PathError{Op: "read", Path: rel, Err: errOutside}
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxReportSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxReportSize {
		return nil, &fs.PathError{Op: "read", Path: rel, Err: errTooLarge}
	}
	return data, nil
}

type reportError string

func (e reportError) Error() string { return string(e) }

const (
	errOutside  reportError = "the file is outside the workspace"
	errTooLarge reportError = "the file is larger than 16 MiB"
)

// matchFiles lists the regular files under root matching pattern, as
// slash-separated paths relative to root, sorted.
func matchFiles(root, pattern string) ([]string, error) {
	pattern = strings.TrimPrefix(filepath.ToSlash(pattern), "./")
	if pattern == "" || strings.HasPrefix(pattern, "/") || pattern == ".." || strings.HasPrefix(pattern, "../") || strings.Contains(pattern, "/../") {
		return nil, reportError("a report path must be relative to the workspace, without ..")
	}
	if !strings.ContainsAny(pattern, "*?[") {
		fi, err := os.Stat(filepath.Join(root, pattern))
		if err != nil || !fi.Mode().IsRegular() {
			return nil, nil
		}
		return []string{pattern}, nil
	}
	re, err := glob.Regexp(pattern)
	if err != nil {
		return nil, err
	}
	// Walk only below the pattern's fixed leading directories.
	base := ""
	if parts := strings.Split(pattern, "/"); len(parts) > 1 {
		for _, p := range parts[:len(parts)-1] {
			if strings.ContainsAny(p, "*?[") {
				break
			}
			base += p + "/"
		}
	}
	var out []string
	start := filepath.Join(root, filepath.FromSlash(base))
	filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && d.Name() == ".git" {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return nil
		}
		rel = filepath.ToSlash(rel)
		if re.MatchString(rel) {
			out = append(out, rel)
		}
		if len(out) > MaxReports {
			return filepath.SkipAll
		}
		return nil
	})
	sort.Strings(out)
	return out, nil
}
