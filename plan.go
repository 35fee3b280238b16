package forge

import "time"

// Plan is a compiled build spec: what to run for one action, independent of
// YAML and of any backend. Backends never see the spec itself.
type Plan struct {
	// Action is the action this plan runs ("execute", "deploy", ...).
	Action string `json:"action"`
	// Jobs in a topological order: every job comes after the jobs it needs.
	Jobs []*Job `json:"jobs"`
}

// Job returns the job named name, or nil.
func (p *Plan) Job(name string) *Job {
	for _, j := range p.Jobs {
		if j.Name == name {
			return j
		}
	}
	return nil
}

// Job is one job of a plan: steps run in order in one workspace.
type Job struct {
	// Name is unique in the plan. Matrix jobs carry their values in it,
	// e.g. "test (go=1.22, os=linux)".
	Name string `json:"name"`
	// Image is the container image; the local backend ignores it.
	Image string `json:"image,omitempty"`
	// Environment is the job's variables after ${} expansion.
	Environment map[string]string `json:"environment,omitempty"`
	Ports       []Port            `json:"ports,omitempty"`
	// Needs names the jobs that must pass before this one starts.
	Needs     []string          `json:"needs,omitempty"`
	Services  []Service         `json:"services,omitempty"`
	Resources []ResourceRequest `json:"resources,omitempty"`
	// Timeout bounds one attempt of the whole job; zero means no bound.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Retries is how many times a failed job is run again.
	Retries   int               `json:"retries,omitempty"`
	Matrix    map[string]string `json:"matrix,omitempty"`
	Steps     []Step            `json:"steps"`
	Artifacts []string          `json:"artifacts,omitempty"`
	Reports   []Report          `json:"reports,omitempty"`
	// Skip, when not empty, says why the job is not run (its when:
	// condition excluded it); the engine reports it skipped.
	Skip string `json:"skip,omitempty"`
	// Limits and Placement are for container backends.
	Limits    Limits   `json:"limits,omitempty"`
	Placement []string `json:"placement,omitempty"`
	// User runs the steps in a container ("uid", "uid:gid" or a name the
	// image knows); "" means the backend's default.
	User string `json:"user,omitempty"`
}

// Step is one command of a job: a shell script (Run) or a program and
// its arguments (Args), exactly one of them.
type Step struct {
	Name string `json:"name"`
	// Run is the shell script, run with /bin/sh -e -c.
	Run string `json:"run"`
	// Args is a program and its arguments, run without a shell (for
	// images that have none); the program is looked up in the step's PATH.
	Args []string `json:"args,omitempty"`
	// Timeout bounds the step; zero means only the job's timeout applies.
	Timeout time.Duration `json:"timeout,omitempty"`
	// ContinueOnError: a failure of this step does not fail the job.
	ContinueOnError bool `json:"continue_on_error,omitempty"`
}

// Port publishes a container port.
type Port struct {
	Published int    `json:"published"`
	Target    int    `json:"target"`
	Protocol  string `json:"protocol,omitempty"` // "tcp" (default) or "udp"
}

// Service is a sidecar container that runs beside a job.
type Service struct {
	Name        string            `json:"name"`
	Image       string            `json:"image"`
	Environment map[string]string `json:"environment,omitempty"`
	Command     []string          `json:"command,omitempty"`
	Ports       []Port            `json:"ports,omitempty"`
}

// ResourceRequest asks for Count resources of Pool, optionally only those
// whose labels include every one of Labels.
type ResourceRequest struct {
	Pool   string            `json:"pool"`
	Count  int               `json:"count"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Report is a test report a job produces.
type Report struct {
	Type  string   `json:"type"` // "junit"
	Paths []string `json:"paths"`
}

// Limits are resource limits and reservations for container backends.
type Limits struct {
	CPUs   float64 `json:"cpus,omitempty"`
	Memory int64   `json:"memory,omitempty"` // bytes
}
