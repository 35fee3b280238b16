package spec

import (
	"errors"
	"strings"
	"testing"

	"github.com/forgeci/forge"
)

// TestParseProblems asserts the exact FILE:LINE:COL: message of every kind
// of problem Parse reports.
func TestParseProblems(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // each FILE:LINE:COL: message, in order
	}{
		{"unknown top-level key", "image: x\nenviroment:\n  A: b\nexecute: [true]\n",
			[]string{"f.yml:2:1: unknown key `enviroment`: did you mean `environment`?"}},
		{"unknown top-level key far from any", "execute: [true]\nfoo: {a: b}\n",
			[]string{"f.yml:2:1: unknown key `foo`: a top-level key is `image`, `environment`, `ports`, `jobs`, `on`, or an action: a list of commands"}},
		{"misspelt execute", "exectue:\n  - true\n",
			[]string{"f.yml:1:1: unknown key `exectue`: did you mean `execute`?"}},
		{"job key at the top level", "timeout: 5m\nexecute: [true]\n",
			[]string{"f.yml:1:1: `timeout` belongs to a job: move it under a job in `jobs:`"}},
		{"unknown job key", "jobs:\n  build:\n    stpes: [true]\n",
			[]string{
				"f.yml:2:3: job `build` has no `steps`: give it a list of commands",
				"f.yml:3:5: unknown key `stpes` in job `build`: did you mean `steps`?",
			}},
		{"unknown step key", "jobs:\n  a:\n    steps:\n      - run: x\n        nmae: y\n",
			[]string{"f.yml:5:9: unknown key `nmae` in step 1 of job `a`: did you mean `name`?"}},
		{"unknown when key", "jobs:\n  a:\n    when: {brnach: main}\n    steps: [x]\n",
			[]string{"f.yml:3:12: unknown key `brnach` in `when` of job `a`: did you mean `branch`?"}},
		{"unknown key with no near match lists the valid ones", "jobs:\n  a:\n    limits: {gpus: 1}\n    steps: [x]\n",
			[]string{"f.yml:3:14: unknown key `gpus` in `limits` of job `a`: did you mean `cpus`?"}},
		{"image is a list", "image: [debian]\nexecute: [true]\n",
			[]string{"f.yml:1:8: `image` must be a single value, not a list"}},
		{"environment is a list", "environment: [A=b]\nexecute: [true]\n",
			[]string{"f.yml:1:14: `environment` must be a mapping of keys to values, not a list"}},
		{"environment value is a mapping", "environment:\n  A: {b: c}\nexecute: [true]\n",
			[]string{"f.yml:2:6: variable `A` must be a single value, not a mapping"}},
		{"bad variable name", "environment:\n  1A: b\nexecute: [true]\n",
			[]string{"f.yml:2:3: bad variable name `1A` in `environment`: use letters, digits and `_`, not starting with a digit"}},
		{"execute is a mapping", "execute: {a: b}\n",
			[]string{"f.yml:1:10: action `execute` must be a list of commands, not a mapping"}},
		{"columns count characters", "execute: [\"ééé\", [x]]\n",
			[]string{"f.yml:1:18: command 2 of action `execute` must be a command (a string), not a list"}},
		{"windows line ends", "jobs:\r\n  a:\r\n    stepz: [x]\r\n    steps: [y]\r\n",
			[]string{"f.yml:3:5: unknown key `stepz` in job `a`: did you mean `steps`?"}},
		{"steps is a string", "jobs:\n  a:\n    steps: make\n",
			[]string{"f.yml:3:12: `steps` of job `a` must be a list, not a string"}},
		{"retries is a word", "jobs:\n  a:\n    retries: many\n    steps: [x]\n",
			[]string{"f.yml:3:14: `retries` of job `a` must be a whole number, not a string"}},
		{"retries out of range", "jobs:\n  a:\n    retries: 99\n    steps: [x]\n",
			[]string{"f.yml:3:14: `retries` of job `a` must be between 0 and 10, not 99"}},
		{"continue_on_error not a boolean", "jobs:\n  a:\n    steps:\n      - run: x\n        continue_on_error: maybe\n",
			[]string{"f.yml:5:28: `continue_on_error` of step 1 of job `a` must be true or false, not a string"}},
		{"empty command list", "execute: []\n",
			[]string{"f.yml:1:1: action `execute` has no commands: give it a list of shell commands"}},
		{"null command list", "deploy:\nexecute: [true]\n",
			[]string{"f.yml:1:1: action `deploy` has no commands: give it a list of shell commands"}},
		{"empty steps", "jobs:\n  a:\n    steps: []\n",
			[]string{"f.yml:3:5: `steps` of job `a` has no commands: give it a list of shell commands"}},
		{"empty command", "execute:\n  - ''\n",
			[]string{"f.yml:2:5: command 1 of action `execute` is empty"}},
		{"command read as a mapping", "execute:\n  - echo: hi\n",
			[]string{"f.yml:2:5: command 1 of action `execute` is a mapping (`echo: ...`), not a command: quote the command if it contains \": \", or write {name, run}"}},
		{"step without run", "jobs:\n  a:\n    steps:\n      - name: build\n        timeout: 1m\n",
			[]string{"f.yml:4:9: step 1 of job `a` has no `run`: give the command to run"}},
		{"no action", "image: debian\nenvironment: {A: b}\n",
			[]string{"f.yml:1:1: no action: add an `execute:` list of commands, or `jobs:`"}},
		{"empty file", "",
			[]string{"f.yml:1:1: the file is empty: add an `execute:` list of commands, or `jobs:`"}},
		{"only comments", "# nothing\n",
			[]string{"f.yml:1:1: the file is empty: add an `execute:` list of commands, or `jobs:`"}},
		{"top level is a list", "- echo hi\n",
			[]string{"f.yml:1:1: the top level of a spec must be a mapping of keys to values, not a list"}},
		{"empty jobs", "jobs:\n",
			[]string{"f.yml:1:1: `jobs` is empty: add at least one job"}},
		{"empty job", "jobs:\n  a:\n",
			[]string{"f.yml:2:3: job `a` is empty: give it `steps`"}},
		{"duplicate job", "jobs:\n  a:\n    steps: [x]\n  a:\n    steps: [y]\n",
			[]string{"f.yml:4:3: duplicate job `a`: a job of that name is already defined at line 2"}},
		{"job named like a top-level action", "deploy: [x]\njobs:\n  deploy:\n    action: deploy\n    steps: [y]\n",
			[]string{"f.yml:3:3: duplicate job `deploy`: the top-level `deploy` list at line 1 is a job of that name"}},
		{"duplicate top-level key", "execute: [a]\nexecute: [b]\n",
			[]string{"f.yml:2:1: duplicate key `execute`: it is already set at line 1"}},
		{"duplicate variable", "environment:\n  A: 1\n  A: 2\nexecute: [x]\n",
			[]string{"f.yml:3:3: duplicate variable `A` in `environment` (first at line 2)"}},
		{"bad job name", "jobs:\n  'my job':\n    steps: [x]\n",
			[]string{"f.yml:2:3: bad job name `my job`: use letters, digits, `-`, `_` and `.`, starting with a letter or digit"}},
		{"cycle", "jobs:\n  a:\n    needs: c\n    steps: [x]\n  b:\n    needs: a\n    steps: [x]\n  c:\n    needs: [b]\n    steps: [x]\n",
			[]string{"f.yml:6:12: cycle in `needs`: a → c → b → a"}},
		{"needs itself", "jobs:\n  a:\n    needs: a\n    steps: [x]\n",
			[]string{"f.yml:3:12: cycle in `needs`: a → a"}},
		{"unknown needs", "jobs:\n  build:\n    steps: [x]\n  test:\n    needs: [biuld]\n    steps: [x]\n",
			[]string{"f.yml:5:13: job `test` needs `biuld`, which is not a job of this file: did you mean `build`?"}},
		{"unknown needs far from any", "jobs:\n  build:\n    steps: [x]\n  test:\n    needs: zzz\n    steps: [x]\n",
			[]string{"f.yml:5:12: job `test` needs `zzz`, which is not a job of this file: the choices are `build`, `test`"}},
		{"needs across actions", "deploy: [x]\njobs:\n  a:\n    needs: deploy\n    steps: [x]\n",
			[]string{"f.yml:4:12: job `a` (action `execute`) needs `deploy`, a job of action `deploy`: needs must stay within one action"}},
		{"needs twice", "jobs:\n  a:\n    steps: [x]\n  b:\n    needs: [a, a]\n    steps: [x]\n",
			[]string{"f.yml:5:16: job `b` needs `a` twice"}},
		{"bad duration", "jobs:\n  a:\n    timeout: 5 minutes\n    steps: [x]\n",
			[]string{"f.yml:3:14: bad duration `5 minutes` for `timeout` of job `a`: write it like 90s, 10m or 1h30m"}},
		{"duration without unit", "jobs:\n  a:\n    timeout: 30\n    steps: [x]\n",
			[]string{"f.yml:3:14: bad duration `30` for `timeout` of job `a`: give a unit, e.g. 30s or 30m"}},
		{"negative step timeout", "jobs:\n  a:\n    steps:\n      - run: x\n        timeout: -1s\n",
			[]string{"f.yml:5:18: `timeout` of step 1 of job `a` must be positive, not `-1s`"}},
		{"tab in indentation", "execute:\n\t- true\n",
			[]string{"f.yml:2:1: tab character in indentation: YAML indents with spaces only"}},
		{"tab after spaces", "jobs:\n  a:\n  \tsteps: [x]\n",
			[]string{"f.yml:3:3: tab character in indentation: YAML indents with spaces only"}},
		{"several tab-indented lines", "jobs:\n\ta:\n\t\tsteps: [x]\n",
			[]string{
				"f.yml:2:1: tab character in indentation: YAML indents with spaces only",
				"f.yml:3:1: tab character in indentation: YAML indents with spaces only",
			}},
		{"a syntax error beside tabs in a block scalar", "execute:\n  - |\n    all:\n    \tmake\n  - [x\n",
			[]string{"f.yml:5:5: invalid YAML: sequence end token ']' not found"}},
		{"unclosed flow list", "execute: [true\n",
			[]string{"f.yml:1:10: invalid YAML: sequence end token ']' not found"}},
		{"unclosed quote", "execute:\n  - 'echo\n",
			[]string{"f.yml:2:5: invalid YAML: could not find end character of single-quoted text"}},
		{"two documents", "execute: [a]\n---\ndeploy: [b]\n",
			[]string{"f.yml:3:1: a second YAML document: a spec is one document, remove the `---` before this line or move it to another file"}},
		{"unknown alias in a value", "image: *nope\nexecute: [x]\n",
			[]string{"f.yml:1:8: unknown alias `*nope`: no anchor `&nope` in this file"}},
		{"unknown alias", "execute: *nope\n",
			[]string{"f.yml:1:10: unknown alias `*nope`: no anchor `&nope` in this file"}},
		{"bad port", "ports:\n  8080: 99999\nexecute: [x]\n",
			[]string{"f.yml:2:9: bad port `99999` in `ports`: a port is a number from 1 to 65535"}},
		{"bad published port", "ports:\n  0: 80\nexecute: [x]\n",
			[]string{"f.yml:2:3: bad port `0` in `ports`: a port is a number from 1 to 65535"}},
		{"bad port protocol", "ports: ['53:53/sctp']\nexecute: [x]\n",
			[]string{"f.yml:1:9: bad port protocol `sctp` in `ports`: use tcp or udp"}},
		{"service without image", "jobs:\n  a:\n    services:\n      - name: db\n    steps: [x]\n",
			[]string{"f.yml:4:9: service 1 of `services` of job `a` has no `image`"}},
		{"duplicate service", "jobs:\n  a:\n    services:\n      - {name: db, image: pg}\n      - {name: db, image: pg}\n    steps: [x]\n",
			[]string{"f.yml:5:16: duplicate service `db` in `services` of job `a` (first at line 4)"}},
		{"resource without pool", "jobs:\n  a:\n    resources:\n      - count: 2\n    steps: [x]\n",
			[]string{"f.yml:4:9: resource 1 of `resources` of job `a` has no `pool`"}},
		{"bad resource count", "jobs:\n  a:\n    resources: ['devices:0']\n    steps: [x]\n",
			[]string{"f.yml:3:17: bad count `0` in resource 1 of `resources` of job `a`: write `pool` or `pool:N` with N from 1 to 1000"}},
		{"bad memory", "jobs:\n  a:\n    limits: {memory: lots}\n    steps: [x]\n",
			[]string{"f.yml:3:22: bad `memory` of `limits` of job `a` `lots`: write a size such as 512M or 2G"}},
		{"bad placement", "jobs:\n  a:\n    placement: [zone-lab]\n    steps: [x]\n",
			[]string{"f.yml:3:17: bad placement constraint `zone-lab`: write it like `node.labels.zone == lab` or `node.role != manager`"}},
		{"bad report type", "jobs:\n  a:\n    reports:\n      - {type: tap, paths: [x]}\n    steps: [x]\n",
			[]string{"f.yml:4:16: unknown report type `tap`: forge reads `junit` and `coverage`"}},
		{"matrix without values", "jobs:\n  a:\n    matrix: {go: []}\n    steps: [x]\n",
			[]string{"f.yml:3:14: matrix key `go` has no values"}},
		{"matrix duplicate value", "jobs:\n  a:\n    matrix: {go: [1, 1]}\n    steps: [x]\n",
			[]string{"f.yml:3:22: duplicate value `1` for matrix key `go`"}},
		{"matrix too large", "jobs:\n  a:\n    matrix:\n      x: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]\n      y: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]\n    steps: [x]\n",
			[]string{"f.yml:5:7: `matrix` of job `a` expands into more than 256 jobs"}},
		{"bad when pattern", "jobs:\n  a:\n    when: {branch: 'feat/[x'}\n    steps: [x]\n",
			[]string{"f.yml:3:20: bad pattern `feat/[x` in `branch` of `when` of job `a`: `[` without `]`"}},
		{"unknown on event", "on:\n  pull_reqest: execute\nexecute: [x]\n",
			[]string{"f.yml:2:3: unknown event `pull_reqest` in `on`: did you mean `pull_request`?"}},
		{"on runs an unknown action", "on:\n  push: {branches: main, run: deploi}\nexecute: [x]\ndeploy: [y]\n",
			[]string{"f.yml:2:31: `on.push` runs action `deploi`, which this file does not have: did you mean `deploy`?"}},
		{"on filter key of another event", "on:\n  tag: {branches: main}\nexecute: [x]\n",
			[]string{"f.yml:2:9: unknown key `branches` in `on.tag`: valid keys are `run`, `tags`"}},
		{"reserved action name", "jobs:\n  a:\n    action: steps\n    steps: [x]\n",
			[]string{"f.yml:3:13: `steps` cannot name an action: it is a key of the format"}},
		{"several problems at once", "image: [x]\njobs:\n  a:\n    timeout: soon\n    retries: -1\n    steps: [x]\n  b:\n    needs: c\n    steps: [y]\n",
			[]string{
				"f.yml:1:8: `image` must be a single value, not a list",
				"f.yml:4:14: bad duration `soon` for `timeout` of job `a`: write it like 90s, 10m or 1h30m",
				"f.yml:5:14: `retries` of job `a` must be between 0 and 10, not -1",
				"f.yml:8:12: job `b` needs `c`, which is not a job of this file: the choices are `a`, `b`",
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse("f.yml", []byte(tc.src))
			if err == nil {
				t.Fatalf("Parse accepted it (actions %v); want %q", f.Actions(), tc.want)
			}
			var errs *Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is %T, want *Errors: %v", err, err)
			}
			if got, want := err.Error(), strings.Join(tc.want, "\n"); got != want {
				t.Errorf("problems:\ngot\n%s\nwant\n%s", got, want)
			}
			if code := forge.ErrorCode(err); code != forge.EINVALID {
				t.Errorf("forge.ErrorCode: got %q, want %q", code, forge.EINVALID)
			}
			lines := strings.Split(tc.src, "\n")
			for _, p := range errs.Problems {
				if p.Line <= len(lines) && p.Source != strings.TrimSuffix(lines[p.Line-1], "\r") {
					t.Errorf("Source of %s: got %q, want line %d %q", p, p.Source, p.Line, lines[p.Line-1])
				}
			}
		})
	}
}

// TestParseAccepts covers valid files in less common YAML shapes.
func TestParseAccepts(t *testing.T) {
	tests := []struct{ name, src, wantRun string }{
		{"byte order mark", "\ufeffexecute: [true]\n", "true"},
		{"directive", "%YAML 1.2\n---\nexecute: [x]\n", "x"},
		{"document markers", "---\nexecute: [x]\n...\n", "x"},
		{"windows line ends", "execute:\r\n  - echo hi\r\n", "echo hi"},
		{"literal block", "execute:\n  - |\n    echo a\n    echo b\n", "echo a\necho b\n"},
		{"folded block", "execute:\n  - >\n    echo a\n    b\n", "echo a b\n"},
		{"flow style", "{jobs: {a: {steps: [x]}}}\n", "x"},
		{"number and boolean commands", "execute: [true, 1.10]\n", "true"},
		{"escaped tab inside a value", "execute: [\"printf 'a\\tb'\"]\n", "printf 'a\tb'"},
		{"tab after a value", "execute: [x]\t# comment\n", "x"},
		{"tab in a block scalar", "execute:\n  - |\n    printf 'x\\n'\n    \techo indented\n", "printf 'x\\n'\n\techo indented\n"},
		{"explicit string tag", "execute: [!!str 5]\n", "5"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse("f.yml", []byte(tc.src))
			if err != nil {
				t.Fatalf("Parse:\n%s", Report(err))
			}
			p, err := Compile(f, Options{})
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			if got := p.Jobs[0].Steps[0].Run; got != tc.wantRun {
				t.Errorf("first step: got %q, want %q", got, tc.wantRun)
			}
		})
	}
}

func TestReportShowsSourceAndCaret(t *testing.T) {
	_, err := Parse("f.yml", []byte("jobs:\n  a:\n    timeout: 5 minutes\n    steps: [x]\n"))
	got := Report(err)
	want := "f.yml:3:14: bad duration `5 minutes` for `timeout` of job `a`: write it like 90s, 10m or 1h30m\n" +
		"        timeout: 5 minutes\n" +
		"                 ^\n"
	if got != want {
		t.Errorf("Report:\ngot\n%s\nwant\n%s", got, want)
	}
	if got, want := Report(errors.New("boom")), "boom\n"; got != want {
		t.Errorf("Report of a plain error: got %q, want %q", got, want)
	}
}

func TestSuggest(t *testing.T) {
	keys := []string{"environment", "execute", "image", "jobs", "ports"}
	tests := []struct{ word, want string }{
		{"enviroment", " did you mean `environment`?"},
		{"environmnet", " did you mean `environment`?"},
		{"imgae", " did you mean `image`?"},
		{"Image", " did you mean `image`?"},
		{"job", " did you mean `jobs`?"},
		{"xyz", ""},
		{"deploy", ""},
	}
	for _, tc := range tests {
		if got := suggest(tc.word, keys); got != tc.want {
			t.Errorf("suggest(%q): got %q, want %q", tc.word, got, tc.want)
		}
	}
}
