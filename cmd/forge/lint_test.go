package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// lintRun runs `forge lint args...` in dir and returns its exit status and
// output.
func lintRun(t *testing.T, dir, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	if dir != "" {
		t.Chdir(dir)
	}
	var out, errOut bytes.Buffer
	code = run(context.Background(), append([]string{"forge", "lint"}, args...), strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestLintSchema(t *testing.T) {
	code, stdout, stderr := lintRun(t, "", "", "--schema")
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	want, err := os.ReadFile("../../docs/forge.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	if stdout != string(want) {
		t.Errorf("--schema does not print docs/forge.schema.json")
	}
}

func TestLint(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return name
	}
	good := write("good.yml", "execute:\n  - echo hi\n")
	bad := write("bad.yml", "jobs:\n  build:\n    enviroment: {A: b}\n    steps: [true]\n  test:\n    needs: biuld\n    steps: [true]\n")
	write(".forge.yml", "image: x\nexecute: []\n")
	big := write("big.yml", "execute: [true]\n"+strings.Repeat("# padding\n", 60_000))
	examples, err := filepath.Glob("../../examples/*.yml")
	if err != nil || len(examples) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for i, e := range examples {
		examples[i], _ = filepath.Abs(e)
	}

	tests := []struct {
		name       string
		args       []string
		stdin      string
		wantCode   int
		wantStdout string // exact
		wantStderr string // substring
	}{
		{"valid file prints nothing", []string{good}, "", 0, "", ""},
		{"examples lint clean", examples, "", 0, "", ""},
		{"every problem with its line and a caret", []string{bad}, "", 1,
			"bad.yml:3:5: unknown key `enviroment` in job `build`: did you mean `environment`?\n" +
				"        enviroment: {A: b}\n" +
				"        ^\n" +
				"bad.yml:6:12: job `test` needs `biuld`, which is not a job of this file: did you mean `build`?\n" +
				"        needs: biuld\n" +
				"               ^\n", ""},
		{"default file is .forge.yml", nil, "", 1,
			".forge.yml:2:1: action `execute` has no commands: give it a list of shell commands\n" +
				"    execute: []\n" +
				"    ^\n", ""},
		{"a bad file among good ones fails", []string{good, bad, good}, "", 1, "", ""},
		{"missing file is a usage error", []string{"nope.yml"}, "", 2, "", "cannot read nope.yml: no such file"},
		{"missing file wins over problems", []string{bad, "nope.yml"}, "", 2, "", "nope.yml"},
		{"a directory is not a spec", []string{"."}, "", 2, "", "is a directory"},
		{"a file too large is a problem", []string{big}, "", 1,
			"big.yml:1:1: the file has more than 524288 bytes (512 KiB), the most a spec may have\n", ""},
		{"stdin", []string{"-"}, "execute:\n  - echo: hi\n", 1,
			"<stdin>:2:5: command 1 of action `execute` is a mapping (`echo: ...`), not a command: quote the command if it contains \": \", or write {name, run}\n" +
				"      - echo: hi\n" +
				"        ^\n", ""},
		{"stdin valid", []string{"-"}, "execute: [true]\n", 0, "", ""},
		{"schema with a file is a usage error", []string{"--schema", good}, "", 2, "", "--schema takes no files"},
		{"unknown flag", []string{"--nope"}, "", 2, "", "unknown flag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := lintRun(t, dir, tc.stdin, tc.args...)
			if code != tc.wantCode {
				t.Errorf("exit status: got %d, want %d (stdout %q, stderr %q)", code, tc.wantCode, stdout, stderr)
			}
			if tc.wantStdout != "" || tc.wantCode == 0 {
				if stdout != tc.wantStdout {
					t.Errorf("stdout:\ngot\n%s\nwant\n%s", stdout, tc.wantStdout)
				}
			}
			if tc.wantCode == 1 && stdout == "" {
				t.Errorf("exit 1 with nothing on stdout")
			}
			if !strings.Contains(stderr, tc.wantStderr) {
				t.Errorf("stderr: got %q, want it to contain %q", stderr, tc.wantStderr)
			}
			if tc.wantStderr == "" && stderr != "" {
				t.Errorf("stderr: got %q, want nothing", stderr)
			}
		})
	}
}
