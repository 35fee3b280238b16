package spec

import (
	"fmt"
	"strings"
	"testing"
)

// spec200 returns a spec of 200 jobs, each with environment, a timeout, a
// when: condition, three steps using ${} variables, and needs forming a
// DAG (each job needs the previous one and the one at half its index).
func spec200() []byte {
	var b strings.Builder
	b.WriteString("image: debian:12-slim\nenvironment:\n  ROOT: /srv\n  MODE: ci\njobs:\n")
	for i := range 200 {
		fmt.Fprintf(&b, "  job-%03d:\n", i)
		if i > 0 {
			fmt.Fprintf(&b, "    needs: [job-%03d", i-1)
			if i/2 != i-1 {
				fmt.Fprintf(&b, ", job-%03d", i/2)
			}
			b.WriteString("]\n")
		}
		fmt.Fprintf(&b, "    environment:\n      INDEX: %d\n      DIR: ${ROOT}/job-%03d\n", i, i)
		b.WriteString("    timeout: 10m\n    when:\n      branch: [main, \"release/**\"]\n")
		b.WriteString("    steps:\n")
		b.WriteString("      - echo \"job ${INDEX} in ${DIR} (${MODE})\"\n")
		b.WriteString("      - name: build\n        run: make -C ${DIR} build\n        timeout: 5m\n")
		b.WriteString("      - test -d \"$$HOME\"\n")
	}
	return []byte(b.String())
}

func TestSpec200Compiles(t *testing.T) {
	p := mustCompile(t, string(spec200()), Options{Event: "push", Branch: "main"})
	if got := len(p.Jobs); got != 200 {
		t.Fatalf("got %d jobs, want 200", got)
	}
	if got, want := p.Job("job-007").Steps[0].Run, `echo "job 7 in /srv/job-007 (ci)"`; got != want {
		t.Errorf("step: got %q, want %q", got, want)
	}
}

// BenchmarkParseCompile200 measures reading and compiling a 200-job spec;
// the target is under 20 ms.
func BenchmarkParseCompile200(b *testing.B) {
	data := spec200()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		f, err := Parse("bench.yml", data)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Compile(f, Options{Event: "push", Branch: "main"}); err != nil {
			b.Fatal(err)
		}
	}
}
