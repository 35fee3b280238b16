package spec

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml/ast"

	"github.com/forgeci/forge"
)

// Limits on sizes a person would never need, so that a hostile or broken
// file cannot make compiling expensive.
const (
	maxMatrixJobs = 256 // jobs one matrix may expand into
	maxRetries    = 10
)

// jobs reads the jobs: mapping.
func (r *reader) jobs(f *File, je entry) {
	n := je.value
	if r.isNull(r.resolve(n)) {
		r.ps.at(je.keyPos, "`jobs` is empty: add at least one job")
		return
	}
	entries, ok := r.mapping(n, "`jobs`", "duplicate job `%s`: a job of that name is already defined at line %d")
	if !ok {
		return
	}
	if len(entries) == 0 {
		r.ps.at(je.keyPos, "`jobs` is empty: add at least one job")
	}
	for _, e := range entries {
		if r.overBudget {
			return
		}
		if !reName.MatchString(e.key) {
			r.ps.at(e.keyPos, "bad job name `%s`: use letters, digits, `-`, `_` and `.`, starting with a letter or digit", e.key)
			continue
		}
		j := r.job(e)
		if j == nil {
			continue
		}
		f.noteAction(j.action)
		f.jobs = append(f.jobs, j)
	}
}

// job reads one entry of jobs:.
func (r *reader) job(je entry) *jobSpec {
	what := fmt.Sprintf("job `%s`", je.key)
	j := &jobSpec{name: je.key, p: je.keyPos, action: DefaultAction}
	if r.isNull(r.resolve(je.value)) {
		r.ps.at(je.keyPos, "%s is empty: give it `steps`", what)
		return nil
	}
	entries, ok := r.mapping(je.value, what, "duplicate key `%s` in "+what+" (first at line %d)")
	if !ok {
		return nil
	}
	hasSteps := false
	for _, e := range entries {
		in := fmt.Sprintf("`%s` of %s", e.key, what)
		switch e.key {
		case "action":
			s, p, ok := r.str(e.value, in)
			if ok {
				switch {
				case !reName.MatchString(s):
					r.ps.at(p, "bad action name `%s`: use letters, digits, `-`, `_` and `.`", s)
				case slices.Contains(topKeys, s) && s != DefaultAction, slices.Contains(jobKeys, s):
					r.ps.at(p, "`%s` cannot name an action: it is a key of the format", s)
				default:
					j.action = s
				}
			}
		case "image":
			s, p, ok := r.str(e.value, in)
			if ok {
				j.image = strAt{s, p}
			}
		case "environment":
			j.env = r.environment(e.value, in)
		case "ports":
			j.ports = r.ports(e.value, in)
		case "needs":
			j.needs = r.strs(e.value, in)
		case "services":
			j.services = r.services(e.value, in)
		case "resources":
			j.res = r.resources(e.value, in)
		case "timeout":
			j.timeout = r.duration(e.value, in)
		case "retries":
			j.retries, _ = r.integer(e.value, in, 0, maxRetries)
		case "when":
			j.when = r.when(e.value, in)
		case "matrix":
			j.matrix = r.matrix(e.value, in)
		case "steps":
			hasSteps = true
			j.steps = r.commands(e.value, in, "step", what, e.keyPos)
		case "artifacts":
			for _, s := range r.strs(e.value, in) {
				if strings.TrimSpace(s.s) == "" {
					r.ps.at(s.p, "an artifact path of %s is empty", what)
					continue
				}
				j.artifacts = append(j.artifacts, s.s)
			}
		case "reports":
			j.reports = r.reports(e.value, in)
		case "limits":
			j.limits = r.limits(e.value, in)
		case "placement":
			for _, s := range r.strs(e.value, in) {
				if !strings.Contains(s.s, "==") && !strings.Contains(s.s, "!=") {
					r.ps.at(s.p, "bad placement constraint `%s`: write it like `node.labels.zone == lab` or `node.role != manager`", s.s)
					continue
				}
				j.placement = append(j.placement, s.s)
			}
		case "user":
			if s, p, ok := r.str(e.value, in); ok {
				j.user = strAt{strings.TrimSpace(s), p}
			}
		default:
			r.unknownKey(e, what, jobKeys)
		}
	}
	if !hasSteps {
		r.ps.at(je.keyPos, "%s has no `steps`: give it a list of commands", what)
	}
	return j
}

// ports reads `published: target` mappings (8080: 80, 5353: 53/udp) or a
// list of "published:target[/proto]" strings.
func (r *reader) ports(n ast.Node, what string) []forge.Port {
	v := r.resolve(n)
	if r.isNull(v) {
		return nil
	}
	var out []forge.Port
	if _, isSeq := v.(*ast.SequenceNode); isSeq {
		for _, s := range r.strs(v, what) {
			pub, target, ok := strings.Cut(s.s, ":")
			if !ok {
				target = pub
			}
			if p, ok := r.port(pub, target, s.p, s.p, what); ok {
				out = append(out, p)
			}
		}
		return out
	}
	entries, ok := r.mapping(v, what, "duplicate published port `%s` in "+what+" (first at line %d)")
	if !ok {
		return nil
	}
	for _, e := range entries {
		target, tp, ok := r.str(e.value, fmt.Sprintf("port %s of %s", e.key, what))
		if !ok {
			continue
		}
		if port, ok := r.port(e.key, target, e.keyPos, tp, what); ok {
			out = append(out, port)
		}
	}
	return out
}

// port builds a Port from its published and target texts; the protocol
// suffix (/tcp, /udp) may be on either.
func (r *reader) port(pub, target string, pubPos, targetPos pos, what string) (forge.Port, bool) {
	proto := "tcp"
	texts := []*string{&pub, &target}
	at := []pos{pubPos, targetPos}
	for i, s := range texts {
		if num, pr, ok := strings.Cut(*s, "/"); ok {
			if pr != "tcp" && pr != "udp" {
				r.ps.at(at[i], "bad port protocol `%s` in %s: use tcp or udp", pr, what)
				return forge.Port{}, false
			}
			*s, proto = num, pr
		}
	}
	var nums [2]int
	for i, s := range texts {
		x, err := strconv.Atoi(strings.TrimSpace(*s))
		if err != nil || x < 1 || x > 65535 {
			r.ps.at(at[i], "bad port `%s` in %s: a port is a number from 1 to 65535", *s, what)
			return forge.Port{}, false
		}
		nums[i] = x
	}
	return forge.Port{Published: nums[0], Target: nums[1], Protocol: proto}, true
}

// services reads a job's sidecar containers.
func (r *reader) services(n ast.Node, what string) []forge.Service {
	items, ok := r.list(n, what, false)
	if !ok {
		return nil
	}
	var out []forge.Service
	names := map[string]pos{}
	for i, item := range items {
		sw := fmt.Sprintf("service %d of %s", i+1, what)
		entries, ok := r.mapping(item, sw, "duplicate key `%s` in "+sw+" (first at line %d)")
		if !ok {
			continue
		}
		var s forge.Service
		for _, e := range entries {
			in := fmt.Sprintf("`%s` of %s", e.key, sw)
			switch e.key {
			case "name":
				name, p, ok := r.str(e.value, in)
				if !ok {
					continue
				}
				if !reName.MatchString(name) {
					r.ps.at(p, "bad service name `%s`: it is a host name, use letters, digits, `-`, `_` and `.`", name)
					continue
				}
				if first, dup := names[name]; dup {
					r.ps.at(p, "duplicate service `%s` in %s (first at line %d)", name, what, first.line)
					continue
				}
				names[name] = p
				s.Name = name
			case "image":
				s.Image, _, _ = r.str(e.value, in)
			case "environment":
				for _, v := range r.environment(e.value, in) {
					if s.Environment == nil {
						s.Environment = map[string]string{}
					}
					s.Environment[v.name] = v.value
				}
			case "command":
				v := r.resolve(e.value)
				if text, ok := scalarText(v); ok {
					s.Command = strings.Fields(text)
				} else {
					for _, c := range r.strs(e.value, in) {
						s.Command = append(s.Command, c.s)
					}
				}
			case "ports":
				s.Ports = r.ports(e.value, in)
			default:
				r.unknownKey(e, sw, serviceKeys)
			}
		}
		if _, has := find(entries, "name"); !has && len(entries) > 0 {
			r.ps.at(posOf(item), "%s has no `name`: the job reaches it by that host name", sw)
		}
		if _, has := find(entries, "image"); !has && len(entries) > 0 {
			r.ps.at(posOf(item), "%s has no `image`", sw)
		}
		out = append(out, s)
	}
	return out
}

// resources reads lease requests: {pool, count, labels} or "pool[:count]".
func (r *reader) resources(n ast.Node, what string) []forge.ResourceRequest {
	items, ok := r.list(n, what, true)
	if !ok {
		return nil
	}
	var out []forge.ResourceRequest
	for i, item := range items {
		rw := fmt.Sprintf("resource %d of %s", i+1, what)
		v := r.resolve(item)
		if text, ok := scalarText(v); ok {
			pool, count, hasCount := strings.Cut(text, ":")
			req := forge.ResourceRequest{Pool: pool, Count: 1}
			if hasCount {
				c, err := strconv.Atoi(count)
				if err != nil || c < 1 || c > 1000 {
					r.ps.at(posOf(item), "bad count `%s` in %s: write `pool` or `pool:N` with N from 1 to 1000", count, rw)
					continue
				}
				req.Count = c
			}
			if !reName.MatchString(pool) {
				r.ps.at(posOf(item), "bad pool name `%s` in %s", pool, rw)
				continue
			}
			out = append(out, req)
			continue
		}
		entries, ok := r.mapping(item, rw, "duplicate key `%s` in "+rw+" (first at line %d)")
		if !ok {
			continue
		}
		req := forge.ResourceRequest{Count: 1}
		for _, e := range entries {
			in := fmt.Sprintf("`%s` of %s", e.key, rw)
			switch e.key {
			case "pool":
				s, p, ok := r.str(e.value, in)
				if ok && !reName.MatchString(s) {
					r.ps.at(p, "bad pool name `%s` in %s", s, rw)
				} else if ok {
					req.Pool = s
				}
			case "count":
				if c, ok := r.integer(e.value, in, 1, 1000); ok {
					req.Count = c
				}
			case "labels":
				for _, l := range r.environmentLike(e.value, in) {
					if req.Labels == nil {
						req.Labels = map[string]string{}
					}
					req.Labels[l.name] = l.value
				}
			default:
				r.unknownKey(e, rw, resKeys)
			}
		}
		if _, has := find(entries, "pool"); !has {
			r.ps.at(posOf(item), "%s has no `pool`", rw)
			continue
		}
		out = append(out, req)
	}
	return out
}

// environmentLike reads a mapping of free-form keys to scalar values.
func (r *reader) environmentLike(n ast.Node, what string) []envVar {
	entries, ok := r.mapping(n, what, "duplicate key `%s` in "+what+" (first at line %d)")
	if !ok {
		return nil
	}
	var out []envVar
	for _, e := range entries {
		s, _, ok := r.str(e.value, fmt.Sprintf("`%s` of %s", e.key, what))
		if ok {
			out = append(out, envVar{name: e.key, value: s, p: e.keyPos})
		}
	}
	return out
}

// matrix reads `key: [values]` axes.
func (r *reader) matrix(n ast.Node, what string) []matrixAxis {
	entries, ok := r.mapping(n, what, "duplicate matrix key `%s` (first at line %d)")
	if !ok {
		return nil
	}
	if len(entries) == 0 {
		r.ps.at(posOf(n), "%s is empty: give it keys with lists of values", what)
		return nil
	}
	var out []matrixAxis
	total := 1
	for _, e := range entries {
		if !reVar.MatchString(e.key) {
			r.ps.at(e.keyPos, "bad matrix key `%s`: use letters, digits and `_`, not starting with a digit (it is used as ${%s})", e.key, e.key)
			continue
		}
		in := fmt.Sprintf("matrix key `%s`", e.key)
		vals := r.strs(e.value, in)
		if len(vals) == 0 {
			r.ps.at(e.keyPos, "%s has no values", in)
			continue
		}
		ax := matrixAxis{key: e.key}
		seen := map[string]bool{}
		for _, v := range vals {
			if seen[v.s] {
				r.ps.at(v.p, "duplicate value `%s` for %s", v.s, in)
				continue
			}
			if strings.ContainsAny(v.s, "\n(),=") {
				r.ps.at(v.p, "bad value `%s` for %s: it names a job, so it cannot hold a newline or any of ( ) , =", forge.FirstLine(v.s), in)
				continue
			}
			seen[v.s] = true
			ax.values = append(ax.values, v.s)
		}
		total *= max(len(ax.values), 1)
		if total > maxMatrixJobs {
			r.ps.at(e.keyPos, "%s expands into more than %d jobs", what, maxMatrixJobs)
			return nil
		}
		out = append(out, ax)
	}
	return out
}

// reports reads {junit: paths}, {coverage: paths} or {type: junit|coverage,
// paths: [...]} items.
func (r *reader) reports(n ast.Node, what string) []forge.Report {
	items, ok := r.list(n, what, false)
	if !ok {
		return nil
	}
	var out []forge.Report
	for i, item := range items {
		rw := fmt.Sprintf("report %d of %s", i+1, what)
		entries, ok := r.mapping(item, rw, "duplicate key `%s` in "+rw+" (first at line %d)")
		if !ok {
			continue
		}
		var rep forge.Report
		for _, e := range entries {
			in := fmt.Sprintf("`%s` of %s", e.key, rw)
			switch e.key {
			case "junit", "coverage":
				rep.Type = e.key
				for _, s := range r.strs(e.value, in) {
					rep.Paths = append(rep.Paths, s.s)
				}
			case "type":
				s, p, ok := r.str(e.value, in)
				if ok && s != "junit" && s != "coverage" {
					r.ps.at(p, "unknown report type `%s`: forge reads `junit` and `coverage`", s)
				} else if ok {
					rep.Type = s
				}
			case "paths":
				for _, s := range r.strs(e.value, in) {
					rep.Paths = append(rep.Paths, s.s)
				}
			default:
				r.unknownKey(e, rw, reportKeys)
			}
		}
		_, hasJunit := find(entries, "junit")
		if _, hasCov := find(entries, "coverage"); hasCov {
			if hasJunit {
				r.ps.at(posOf(item), "%s: write `junit: PATH` and `coverage: PATH` as two reports", rw)
				continue
			}
			hasJunit = true // the same rules: a shorthand
		}
		_, hasType := find(entries, "type")
		_, hasPaths := find(entries, "paths")
		switch {
		case hasJunit && (hasType || hasPaths):
			r.ps.at(posOf(item), "%s: write either `junit: PATH` (or `coverage: PATH`) or `type` with `paths`, not both", rw)
			continue
		case !hasJunit && !hasType:
			r.ps.at(posOf(item), "%s has no type: write `junit: PATH` or `coverage: PATH`", rw)
			continue
		case hasType && !hasPaths:
			r.ps.at(posOf(item), "%s has no `paths`", rw)
			continue
		}
		if len(rep.Paths) == 0 {
			continue
		}
		out = append(out, rep)
	}
	return out
}

// limits reads {cpus, memory}.
func (r *reader) limits(n ast.Node, what string) forge.Limits {
	var l forge.Limits
	entries, ok := r.mapping(n, what, "duplicate key `%s` in "+what+" (first at line %d)")
	if !ok {
		return l
	}
	for _, e := range entries {
		in := fmt.Sprintf("`%s` of %s", e.key, what)
		switch e.key {
		case "cpus":
			s, p, ok := r.str(e.value, in)
			if !ok {
				continue
			}
			x, err := strconv.ParseFloat(s, 64)
			if err != nil || x <= 0 || x > 1024 || math.IsNaN(x) {
				r.ps.at(p, "bad %s `%s`: give a number of CPUs such as 0.5 or 2", in, s)
				continue
			}
			l.CPUs = x
		case "memory":
			s, p, ok := r.str(e.value, in)
			if !ok {
				continue
			}
			b, err := parseBytes(s)
			if err != nil {
				r.ps.at(p, "bad %s `%s`: %v", in, s, err)
				continue
			}
			l.Memory = b
		default:
			r.unknownKey(e, what, limitKeys)
		}
	}
	return l
}

// parseBytes reads sizes such as 512M, 1.5G, 256Mi, 1GB or 1048576, with
// K, M, G and T as powers of 1024 as Docker reads them.
func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "b")
	t = strings.TrimSuffix(t, "i")
	mult := float64(1)
	if t != "" {
		switch unit := strings.ToUpper(t[len(t)-1:]); unit {
		case "K", "M", "G", "T":
			mult = math.Pow(1024, float64(strings.Index("KMGT", unit)+1))
			t = t[:len(t)-1]
		}
	}
	x, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || x <= 0 || math.IsNaN(x) || math.IsInf(x, 0) {
		return 0, fmt.Errorf("write a size such as 512M or 2G")
	}
	b := x * mult
	if b > 1<<50 {
		return 0, fmt.Errorf("more than a petabyte")
	}
	if b < 4<<20 {
		return 0, fmt.Errorf("less than 4M, too little to run anything")
	}
	return int64(b), nil
}
