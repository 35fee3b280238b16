package spec

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

func mustParse(t *testing.T, src string) *File {
	t.Helper()
	f, err := Parse("f.yml", []byte(src))
	if err != nil {
		t.Fatalf("Parse:\n%s", Report(err))
	}
	return f
}

func mustCompile(t *testing.T, src string, opts Options) *forge.Plan {
	t.Helper()
	p, err := Compile(mustParse(t, src), opts)
	if err != nil {
		t.Fatalf("Compile:\n%s", Report(err))
	}
	checkPlan(t, p)
	return p
}

func jobNames(p *forge.Plan) []string {
	var out []string
	for _, j := range p.Jobs {
		out = append(out, j.Name)
	}
	return out
}

func TestCompileSingleJobForm(t *testing.T) {
	src := "image: python:3.12-slim\nenvironment:\n  APP_ENV: test\nports:\n  8080: 80\n  '5353': 53/udp\nexecute:\n  - pip install -r requirements.txt\n  - pytest -q\ndeploy:\n  - ./deploy.sh\n"
	f := mustParse(t, src)
	if got, want := f.Actions(), []string{"execute", "deploy"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Actions: got %v, want %v", got, want)
	}
	p := mustCompile(t, src, Options{})
	want := &forge.Plan{Action: "execute", Jobs: []*forge.Job{{
		Name:        "execute",
		Image:       "python:3.12-slim",
		Environment: map[string]string{"APP_ENV": "test"},
		Ports:       []forge.Port{{Published: 8080, Target: 80, Protocol: "tcp"}, {Published: 5353, Target: 53, Protocol: "udp"}},
		Steps: []forge.Step{
			{Name: "pip install -r requirements.txt", Run: "pip install -r requirements.txt"},
			{Name: "pytest -q", Run: "pytest -q"},
		},
	}}}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("plan:\ngot  %+v\nwant %+v", p.Jobs[0], want.Jobs[0])
	}
	d := mustCompile(t, src, Options{Action: "deploy"})
	if got := jobNames(d); !reflect.DeepEqual(got, []string{"deploy"}) || d.Action != "deploy" || d.Jobs[0].Steps[0].Run != "./deploy.sh" {
		t.Errorf("deploy plan: got %v %+v", got, d.Jobs[0])
	}
}

func TestCompileLocalRunNeedsNoImage(t *testing.T) {
	src := "execute: [true]\njobs:\n  a:\n    steps: [x]\n  b:\n    image: alpine\n    steps: [y]\n"
	if _, err := Compile(mustParse(t, "execute: [true]\n"), Options{}); err != nil {
		t.Fatalf("without RequireImage: %v", err)
	}
	_, err := Compile(mustParse(t, strings.Replace(src, "execute: [true]\n", "", 1)), Options{RequireImage: true})
	want := "f.yml:2:3: job `a` has no `image`: a container backend needs one (set `image:` on the job or at the top level)"
	if err == nil || err.Error() != want {
		t.Fatalf("RequireImage: got %v, want %s", err, want)
	}
	if _, err := Compile(mustParse(t, "image: debian\njobs:\n  a:\n    steps: [x]\n"), Options{RequireImage: true}); err != nil {
		t.Fatalf("top-level image is every job's default: %v", err)
	}
}

func TestCompileDAGOrderAndFields(t *testing.T) {
	src := `image: debian
environment:
  A: top
  B: top
jobs:
  package:
    needs: [test, lint]
    steps: [echo package]
  test:
    needs: build
    image: golang:1.22
    environment:
      B: job
      C: ${A}-${B}
    timeout: 1h30m
    retries: 2
    steps:
      - name: unit
        run: go test ./...
        timeout: 10m
        continue_on_error: true
    artifacts: [out/*.log]
    reports:
      - junit: report.xml
    limits: {cpus: 1.5, memory: 512M}
    placement: ["node.role == worker"]
    resources: [devices, {pool: ports, count: 2, labels: {zone: lab}}]
    services:
      - name: db
        image: postgres:16
        environment: {POSTGRES_PASSWORD: x}
        command: postgres -c fsync=off
        ports: ["5432:5432"]
  lint:
    needs: build
    steps: [echo lint]
  build:
    steps: [echo build]
`
	p := mustCompile(t, src, Options{})
	if got, want := jobNames(p), []string{"build", "test", "lint", "package"}; !reflect.DeepEqual(got, want) {
		t.Errorf("order: got %v, want %v", got, want)
	}
	test := p.Job("test")
	want := &forge.Job{
		Name:        "test",
		Image:       "golang:1.22",
		Environment: map[string]string{"A": "top", "B": "job", "C": "top-job"},
		Needs:       []string{"build"},
		Services: []forge.Service{{Name: "db", Image: "postgres:16", Environment: map[string]string{"POSTGRES_PASSWORD": "x"},
			Command: []string{"postgres", "-c", "fsync=off"}, Ports: []forge.Port{{Published: 5432, Target: 5432, Protocol: "tcp"}}}},
		Resources: []forge.ResourceRequest{{Pool: "devices", Count: 1}, {Pool: "ports", Count: 2, Labels: map[string]string{"zone": "lab"}}},
		Timeout:   90 * time.Minute,
		Retries:   2,
		Steps:     []forge.Step{{Name: "unit", Run: "go test ./...", Timeout: 10 * time.Minute, ContinueOnError: true}},
		Artifacts: []string{"out/*.log"},
		Reports:   []forge.Report{{Type: "junit", Paths: []string{"report.xml"}}},
		Limits:    forge.Limits{CPUs: 1.5, Memory: 512 << 20},
		Placement: []string{"node.role == worker"},
	}
	if !reflect.DeepEqual(test, want) {
		t.Errorf("job test:\ngot  %+v\nwant %+v", test, want)
	}
	if got := p.Job("package").Needs; !reflect.DeepEqual(got, []string{"test", "lint"}) {
		t.Errorf("package needs: got %v", got)
	}
	if got := p.Job("build").Image; got != "debian" {
		t.Errorf("build inherits the top-level image: got %q", got)
	}
}

func TestCompileMatrix(t *testing.T) {
	src := `jobs:
  test:
    matrix:
      go: [1.21, "1.22"]
      os: [linux, darwin]
    image: golang:${go}
    environment:
      TARGET: ${os}/${go}
    steps:
      - echo ${go} ${os} ${TARGET} ${HOME} $${go} $$HOME
  report:
    needs: test
    steps: [echo done]
`
	p := mustCompile(t, src, Options{})
	wantNames := []string{"test (go=1.21, os=linux)", "test (go=1.21, os=darwin)", "test (go=1.22, os=linux)", "test (go=1.22, os=darwin)", "report"}
	if got := jobNames(p); !reflect.DeepEqual(got, wantNames) {
		t.Fatalf("names: got %q, want %q", got, wantNames)
	}
	j := p.Jobs[1]
	if j.Image != "golang:1.21" || j.Environment["TARGET"] != "darwin/1.21" || !reflect.DeepEqual(j.Matrix, map[string]string{"go": "1.21", "os": "darwin"}) {
		t.Errorf("variant: got image %q env %v matrix %v", j.Image, j.Environment, j.Matrix)
	}
	if got, want := j.Steps[0].Run, "echo 1.21 darwin darwin/1.21 ${HOME} ${go} $HOME"; got != want {
		t.Errorf("command: got %q, want %q", got, want)
	}
	if got := p.Job("report").Needs; !reflect.DeepEqual(got, wantNames[:4]) {
		t.Errorf("report needs every variant: got %q", got)
	}
}

func TestCompileWhen(t *testing.T) {
	src := `jobs:
  always:
    steps: [x]
  main-only:
    when: {branch: main}
    steps: [x]
  not-main:
    when: {branch: "!main"}
    steps: [x]
  releases:
    when: {branch: ["release/**"], event: push}
    steps: [x]
  on-tag:
    when: {tag: "v*"}
    steps: [x]
  docs:
    when: {paths: ["docs/**", "*.md"]}
    steps: [x]
  after-docs:
    needs: docs
    steps: [x]
`
	tests := []struct {
		name string
		opts Options
		skip map[string]string // job → Skip; others empty
	}{
		{"local run, nothing known", Options{}, nil},
		{"push to main", Options{Event: "push", Branch: "main"}, map[string]string{
			"not-main": "when: branch \"main\" does not match !main",
			"releases": "when: branch \"main\" does not match release/**",
			"on-tag":   "when: the build has no tag to match v*",
		}},
		{"push to a release branch, docs changed", Options{Event: "push", Branch: "release/1.2/rc", Paths: []string{"docs/a/b.md"}}, map[string]string{
			"main-only": "when: branch \"release/1.2/rc\" does not match main",
			"on-tag":    "when: the build has no tag to match v*",
		}},
		{"pull request changing code only", Options{Event: "pull_request", Branch: "feature", Paths: []string{"cmd/main.go", "sub/README.md"}}, map[string]string{
			"main-only": "when: branch \"feature\" does not match main",
			"releases":  "when: event \"pull_request\" does not match push",
			"on-tag":    "when: the build has no tag to match v*",
			"docs":      "when: no changed file matches paths docs/**, *.md",
		}},
		{"tag", Options{Event: "tag", Tag: "v1.0", Paths: []string{"README.md"}}, map[string]string{
			"main-only": "when: the build has no branch to match main",
			"releases":  "when: event \"tag\" does not match push",
		}},
	}
	f := mustParse(t, src)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compile(f, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			for _, j := range p.Jobs {
				if got, want := j.Skip, tc.skip[j.Name]; got != want {
					t.Errorf("job %s: Skip got %q, want %q", j.Name, got, want)
				}
			}
		})
	}
}

func TestCompileActionsOfJobs(t *testing.T) {
	src := "jobs:\n  check:\n    steps: [x]\n  smoke:\n    action: deploy\n    needs: deploy\n    steps: [y]\ndeploy:\n  - ./deploy.sh\n"
	f := mustParse(t, src)
	if got, want := f.Actions(), []string{"deploy", "execute"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Actions (in file order): got %v, want %v", got, want)
	}
	if got := jobNames(mustCompile(t, src, Options{})); !reflect.DeepEqual(got, []string{"check"}) {
		t.Errorf("execute: got %v", got)
	}
	if got := jobNames(mustCompile(t, src, Options{Action: "deploy"})); !reflect.DeepEqual(got, []string{"deploy", "smoke"}) {
		t.Errorf("deploy: got %v", got)
	}
	_, err := Compile(f, Options{Action: "deploi"})
	if want := "f.yml:1:1: no action `deploi` in this file: did you mean `deploy`?"; err == nil || err.Error() != want {
		t.Errorf("unknown action: got %v, want %s", err, want)
	}
	if _, err := Compile(nil, Options{}); forge.ErrorCode(err) != forge.EINVALID {
		t.Errorf("Compile(nil): got %v", err)
	}
}

func TestCompileAnchorsAndMerge(t *testing.T) {
	src := "x-common: &common\n  image: alpine\n  timeout: 5m\njobs:\n  a:\n    <<: *common\n    timeout: 1m\n    steps: &steps [echo a]\n  b:\n    <<: *common\n    steps: *steps\n"
	p := mustCompile(t, src, Options{})
	a, b := p.Job("a"), p.Job("b")
	if a.Image != "alpine" || a.Timeout != time.Minute || b.Timeout != 5*time.Minute || b.Steps[0].Run != "echo a" {
		t.Errorf("got a=%+v b=%+v", a, b)
	}
}

func TestAliasBombIsBounded(t *testing.T) {
	// Each level merges the previous one ten times: 10^9 visits unbounded.
	var b strings.Builder
	b.WriteString("x-0: &a0 {k: v}\n")
	for i := 1; i <= 9; i++ {
		prev := fmt.Sprintf("*a%d", i-1)
		fmt.Fprintf(&b, "x-%d: &a%d {<<: [%s]}\n", i, i, strings.TrimSuffix(strings.Repeat(prev+", ", 10), ", "))
	}
	b.WriteString("jobs:\n  j:\n    <<: *a9\n    steps: [x]\n")
	start := time.Now()
	_, err := Parse("f.yml", []byte(b.String()))
	if err == nil || !strings.Contains(err.Error(), "more than 200000 values") {
		t.Fatalf("got %v, want the expansion refused", err)
	}
	if d := time.Since(start); d > 10*time.Second { // unbounded, it would take hours
		t.Fatalf("took %v", d)
	}
}

func TestProblemsAreCapped(t *testing.T) {
	src := "execute:\n" + strings.Repeat("  - [x]\n", 80)
	_, err := Parse("f.yml", []byte(src))
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("got %v", err)
	}
	if got := len(errs.Problems); got != maxProblems+1 {
		t.Fatalf("got %d problems, want %d", got, maxProblems+1)
	}
	if got, want := errs.Problems[maxProblems].Message, "and 30 more problems; fix these first"; got != want {
		t.Errorf("last problem: got %q, want %q", got, want)
	}
}

// TestCompileConcurrently compiles one File from several goroutines and
// changes the plans; run with -race it shows plans share no memory.
func TestCompileConcurrently(t *testing.T) {
	f := mustParse(t, string(spec200())+"    resources: [{pool: p, labels: {a: b}}]\n")
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			p, err := Compile(f, Options{Event: "push", Branch: "main"})
			if err != nil {
				t.Error(err)
				return
			}
			for _, j := range p.Jobs {
				j.Environment["X"] = "y"
				j.Steps[0].Run = "changed"
				for _, r := range j.Resources {
					r.Labels["a"] = "changed"
				}
			}
		})
	}
	wg.Wait()
	p, _ := Compile(f, Options{})
	if got := p.Jobs[199].Resources[0].Labels["a"]; got != "b" {
		t.Errorf("a plan's change reached the File: label a = %q", got)
	}
}

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "1", "B_2": "two", "EMPTY": ""}
	lookup := func(n string) (string, bool) { v, ok := vars[n]; return v, ok }
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"${A}", "1"},
		{"x${A}y${B_2}z", "x1ytwoz"},
		{"${EMPTY}.", "."},
		{"${HOME} stays", "${HOME} stays"},
		{"$A stays", "$A stays"},
		{"$$", "$"},
		{"$${A}", "${A}"},
		{"$$$${A}", "$${A}"},
		{"$$${A}", "$1"},
		{"${A", "${A"},
		{"${1A}", "${1A}"},
		{"${}", "${}"},
		{"trailing $", "trailing $"},
		{"é${A}é", "é1é"},
	}
	for _, tc := range tests {
		if got := expand(tc.in, lookup); got != tc.want {
			t.Errorf("expand(%q): got %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestGlob(t *testing.T) {
	tests := []struct {
		patterns []string
		name     string
		want     bool
	}{
		{[]string{"main"}, "main", true},
		{[]string{"main"}, "main2", false},
		{[]string{"release/*"}, "release/1.0", true},
		{[]string{"release/*"}, "release/1.0/rc", false},
		{[]string{"release/**"}, "release/1.0/rc", true},
		{[]string{"**/*.go"}, "main.go", true},
		{[]string{"**/*.go"}, "a/b/c.go", true},
		{[]string{"*.md"}, "docs/a.md", false},
		{[]string{"v?.*"}, "v1.2", true},
		{[]string{"v[0-9]*"}, "v1", true},
		{[]string{"v[!0-9]*"}, "v1", false},
		{[]string{"!main"}, "dev", true},
		{[]string{"!main"}, "main", false},
		{[]string{"*", "!wip-*"}, "wip-x", false},
		{[]string{"*", "!wip-*"}, "feature", true},
		{[]string{"a.b"}, "axb", false},
		{[]string{"(x)+"}, "(x)+", true},
	}
	for _, tc := range tests {
		var gs globs
		for _, p := range tc.patterns {
			g, err := compileGlob(p)
			if err != nil {
				t.Fatalf("compileGlob(%q): %v", p, err)
			}
			gs = append(gs, g)
		}
		if got := gs.match(tc.name); got != tc.want {
			t.Errorf("%q match %q: got %v, want %v", tc.patterns, tc.name, got, tc.want)
		}
	}
	for _, bad := range []string{"", "!", "[", "a[]", "[z-a]"} {
		if _, err := compileGlob(bad); err == nil {
			t.Errorf("compileGlob(%q) accepted it", bad)
		}
	}
}

func TestCompileStepArgs(t *testing.T) {
	src := "environment: {WHO: world}\njobs:\n  a:\n    steps:\n      - run: [/bin/echo, 'hello ${WHO}', '', 3]\n      - name: named\n        run: [ls]\n"
	p := mustCompile(t, src, Options{})
	want := []forge.Step{
		{Name: "/bin/echo hello world  3", Args: []string{"/bin/echo", "hello world", "", "3"}},
		{Name: "named", Args: []string{"ls"}},
	}
	if got := p.Jobs[0].Steps; !reflect.DeepEqual(got, want) {
		t.Errorf("steps:\ngot  %#v\nwant %#v", got, want)
	}
	for src, want := range map[string]string{
		"execute:\n  - run: []\n":       "`run` of command 1 of action `execute` is an empty list",
		"execute:\n  - run: ['', a]\n":  "the program of `run` of command 1 of action `execute` is empty",
		"execute:\n  - run: [a, [b]]\n": "item 2 of `run` of command 1 of action `execute`",
	} {
		_, err := Parse("f.yml", []byte(src))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error containing %q", src, err, want)
		}
	}
}

func TestCompileUser(t *testing.T) {
	p := mustCompile(t, "environment: {UID: \"1000\"}\njobs:\n  a:\n    user: ${UID}:1000\n    steps: [id]\n", Options{})
	if got := p.Jobs[0].User; got != "1000:1000" {
		t.Errorf("user: got %q, want 1000:1000", got)
	}
	if _, err := Parse("f.yml", []byte("user: [x]\n")); err == nil || !strings.Contains(err.Error(), "`user` belongs to a job") {
		t.Errorf("top-level user: got %v", err)
	}
}
