package spec

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/forgeci/forge"
)

// Options select what Compile builds.
type Options struct {
	Action string // "" means "execute"
	// Event, Branch and Tag describe the build for when: conditions. With
	// an empty Event nothing is known (a plain local run) and when:
	// conditions on event, branch and tag are not checked; with an Event,
	// an empty Branch or Tag means the build has none.
	Event  string // push, pull_request, tag, manual, ... for when:
	Branch string // for when: branch
	Tag    string
	Paths  []string // changed files, for when: paths (nil = unknown = matches)
	// RequireImage makes a job without an image (its own or the top-level
	// one) an error: container backends (docker, swarm) set it; the local
	// backend runs on the host and ignores images.
	RequireImage bool
}

// Compile turns f into a backend-neutral plan for opts.Action: it keeps
// the action's jobs, expands matrices (a job needing a matrix job needs
// every variant), marks the jobs when: excludes with Skip, expands ${NAME}
// variables, and orders the jobs so each comes after those it needs.
func Compile(f *File, opts Options) (*forge.Plan, error) {
	if f == nil {
		return nil, forge.Errorf(forge.EINVALID, "no spec to compile")
	}
	ps := f.ps
	if ps == nil {
		ps = newProblems(f.Name, nil)
	}
	ps = &problems{file: ps.file, lines: ps.lines}
	action := opts.Action
	if action == "" {
		action = DefaultAction
	}
	if !slices.Contains(f.actions, action) {
		ps.add(1, 1, "no action `%s` in this file:%s", action, orList(suggest(action, f.actions), f.actions))
		return nil, ps.err()
	}

	var specs []*jobSpec
	for _, j := range f.jobs {
		if j.action == action {
			specs = append(specs, j)
		}
	}
	// variants maps a job name to the names of the jobs it compiles into.
	variants := map[string][]string{}
	var jobs []*forge.Job
	for _, js := range specs {
		for _, combo := range combinations(js.matrix) {
			job := f.compileJob(js, combo)
			if opts.RequireImage && job.Image == "" {
				ps.at(js.p, "job `%s` has no `image`: a container backend needs one (set `image:` on the job or at the top level)", js.name)
			}
			job.Skip = js.when.skip(opts)
			variants[js.name] = append(variants[js.name], job.Name)
			jobs = append(jobs, job)
		}
	}
	if err := ps.err(); err != nil {
		return nil, err
	}
	// Resolve needs to the variant names, in the order written.
	byName := map[string]*forge.Job{}
	k := 0
	for _, js := range specs {
		var needs []string
		for _, n := range js.needs {
			needs = append(needs, variants[n.s]...)
		}
		for range variants[js.name] {
			jobs[k].Needs = slices.Clone(needs)
			byName[jobs[k].Name] = jobs[k]
			k++
		}
	}
	return &forge.Plan{Action: action, Jobs: topoSort(jobs, byName)}, nil
}

// combinations returns every combination of the matrix's values, the
// first key varying slowest; one empty combination without a matrix.
func combinations(axes []matrixAxis) [][]envVar {
	out := [][]envVar{nil}
	for _, ax := range axes {
		next := make([][]envVar, 0, len(out)*len(ax.values))
		for _, c := range out {
			for _, v := range ax.values {
				next = append(next, append(slices.Clip(c), envVar{name: ax.key, value: v}))
			}
		}
		out = next
	}
	return out
}

// compileJob builds the job for one matrix combination.
func (f *File) compileJob(js *jobSpec, combo []envVar) *forge.Job {
	vars := map[string]string{}
	for _, m := range combo {
		vars[m.name] = m.value
	}
	lookup := func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
	job := &forge.Job{
		Name:      js.name,
		Timeout:   js.timeout,
		Retries:   js.retries,
		Limits:    js.limits,
		Placement: slices.Clone(js.placement),
	}
	// Plans share nothing with the File or each other, so a caller may
	// change a plan while another is compiled from the same File.
	for _, rr := range js.res {
		rr.Labels = maps.Clone(rr.Labels)
		job.Resources = append(job.Resources, rr)
	}
	if len(combo) > 0 {
		job.Matrix = map[string]string{}
		parts := make([]string, len(combo))
		for i, m := range combo {
			job.Matrix[m.name] = m.value
			parts[i] = m.name + "=" + m.value
		}
		job.Name = fmt.Sprintf("%s (%s)", js.name, strings.Join(parts, ", "))
	}
	// Environment: the top-level variables, then the job's; each value may
	// use the matrix and the variables before it.
	env := map[string]string{}
	for _, list := range [][]envVar{f.env, js.env} {
		for _, v := range list {
			val := expand(v.value, lookup)
			env[v.name] = val
			vars[v.name] = val
		}
	}
	// Matrix values win over variables of the same name in ${}.
	for _, m := range combo {
		vars[m.name] = m.value
	}
	if len(env) > 0 {
		job.Environment = env
	}
	image := f.image.s
	if js.image.s != "" {
		image = js.image.s
	}
	job.Image = expand(image, lookup)
	job.User = expand(js.user.s, lookup)
	if js.topLevel {
		job.Ports = slices.Clone(f.ports)
	}
	job.Ports = append(job.Ports, js.ports...)
	for _, n := range js.steps {
		st := forge.Step{
			Name:            expand(n.Name, lookup),
			Run:             expand(n.Run, lookup),
			Timeout:         n.Timeout,
			ContinueOnError: n.ContinueOnError,
		}
		for _, a := range n.Args {
			st.Args = append(st.Args, expand(a, lookup))
		}
		job.Steps = append(job.Steps, st)
	}
	for _, s := range js.services {
		svc := forge.Service{Name: s.Name, Image: expand(s.Image, lookup), Ports: slices.Clone(s.Ports)}
		for _, c := range s.Command {
			svc.Command = append(svc.Command, expand(c, lookup))
		}
		if s.Environment != nil {
			svc.Environment = map[string]string{}
			for k, v := range s.Environment {
				svc.Environment[k] = expand(v, lookup)
			}
		}
		job.Services = append(job.Services, svc)
	}
	for _, a := range js.artifacts {
		job.Artifacts = append(job.Artifacts, expand(a, lookup))
	}
	for _, rep := range js.reports {
		out := forge.Report{Type: rep.Type}
		for _, p := range rep.Paths {
			out.Paths = append(out.Paths, expand(p, lookup))
		}
		job.Reports = append(job.Reports, out)
	}
	return job
}

// expand replaces ${NAME} with the value lookup gives and $$ with $.
// Names lookup does not know are left as written, for the shell.
func expand(s string, lookup func(string) (string, bool)) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
			continue
		case '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end >= 0 {
				name := s[i+2 : i+2+end]
				if reVar.MatchString(name) {
					if v, ok := lookup(name); ok {
						b.WriteString(v)
						i += 2 + end
						continue
					}
				}
			}
		}
		b.WriteByte(c)
	}
	return b.String()
}

// topoSort orders jobs so that each comes after the jobs it needs, keeping
// the file order otherwise. Parse has ruled out cycles.
func topoSort(jobs []*forge.Job, byName map[string]*forge.Job) []*forge.Job {
	placed := make(map[string]bool, len(jobs))
	out := make([]*forge.Job, 0, len(jobs))
	var place func(j *forge.Job)
	place = func(j *forge.Job) {
		if placed[j.Name] {
			return
		}
		placed[j.Name] = true
		for _, n := range j.Needs {
			if dep := byName[n]; dep != nil {
				place(dep)
			}
		}
		out = append(out, j)
	}
	for _, j := range jobs {
		place(j)
	}
	return out
}
