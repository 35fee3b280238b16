// Package prometheus exposes forge's metrics in the Prometheus text format
// (version 0.0.4): counters, gauges and histograms, alone or by label
// values, gauges read when scraped, collectors that make their metrics at
// scrape time, a registry and its HTTP handler, and the go_* and process_*
// metrics of the process.
//
// Its API is the part of github.com/prometheus/client_golang forge uses,
// with the same names and meanings, so code written for that library
// reads the same here. It exists because that library, linked into the
// one forge binary, set up its default registry, runtime collectors and
// protocol buffer descriptors every time any forge command started: about
// 1.4 ms of a `forge exec` or `forge version` that has no metrics at all.
// Nothing here does work before it is used.
package prometheus

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Labels are label names and their values.
type Labels map[string]string

// Desc describes a metric: its name, help, constant labels and the names
// of the labels each of its series sets. It is immutable.
type Desc struct {
	fqName      string
	help        string
	constLabels []LabelPair // sorted by name
	varLabels   []string
	id          string // fqName and constant label values: unique in a registry
	dims        string // help and label names: the same for every Desc of a name
	err         error  // why the Desc is invalid, reported by Register
}

// NewDesc returns the Desc of the metric fqName. variableLabels are the
// labels whose values each series gives; constLabels are the same for
// every series. An invalid name is reported when the Desc is registered.
func NewDesc(fqName, help string, variableLabels []string, constLabels Labels) *Desc {
	d := &Desc{fqName: fqName, help: help, varLabels: variableLabels}
	if !validMetricName(fqName) {
		d.err = fmt.Errorf("%q is not a valid metric name", fqName)
	}
	seen := map[string]bool{}
	for name, value := range constLabels {
		d.constLabels = append(d.constLabels, LabelPair{Name: name, Value: value})
	}
	slices.SortFunc(d.constLabels, func(a, b LabelPair) int { return strings.Compare(a.Name, b.Name) })
	names := make([]string, 0, len(d.constLabels)+len(variableLabels))
	for _, l := range d.constLabels {
		names = append(names, l.Name)
	}
	names = append(names, variableLabels...)
	for _, name := range names {
		if !validLabelName(name) && d.err == nil {
			d.err = fmt.Errorf("%q is not a valid label name of %s", name, fqName)
		}
		if seen[name] && d.err == nil {
			d.err = fmt.Errorf("label %q appears twice in %s", name, fqName)
		}
		seen[name] = true
	}
	var id, dims strings.Builder
	id.WriteString(fqName)
	for _, l := range d.constLabels {
		id.WriteString("\xff" + l.Value)
	}
	dims.WriteString(help)
	for _, l := range d.constLabels {
		dims.WriteString("\xff" + l.Name)
	}
	dims.WriteString("\xfe")
	sorted := slices.Clone(variableLabels)
	slices.Sort(sorted)
	for _, name := range sorted {
		dims.WriteString("\xff" + name)
	}
	d.id, d.dims = id.String(), dims.String()
	return d
}

func (d *Desc) String() string {
	return fmt.Sprintf("Desc{fqName: %q, help: %q, constLabels: %v, variableLabels: %v}", d.fqName, d.help, d.constLabels, d.varLabels)
}

// validMetricName: [a-zA-Z_:][a-zA-Z0-9_:]*, checked without a regexp.
func validMetricName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == ':' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return s != ""
}

// validLabelName: [a-zA-Z_][a-zA-Z0-9_]*, and not reserved (__ prefix).
func validLabelName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return s != "" && !strings.HasPrefix(s, "__")
}

// Metric is one series: a value (or a histogram) with its label values.
// The package's own types implement it.
type Metric interface {
	// Desc returns the metric's descriptor.
	Desc() *Desc
	// write fills s with the value and the labels.
	write(s *Sample) error
}

// Collector makes metrics. Describe sends the descriptors of every metric
// Collect may send; both may be called concurrently, from any goroutine,
// and Collect at every scrape.
type Collector interface {
	Describe(ch chan<- *Desc)
	Collect(ch chan<- Metric)
}

// Registerer accepts collectors.
type Registerer interface {
	// Register adds c, or returns why it cannot: an invalid descriptor,
	// a name already registered with other labels or help, or
	// AlreadyRegisteredError when an equal collector is registered.
	Register(c Collector) error
	// MustRegister registers each collector and panics on an error.
	MustRegister(cs ...Collector)
	// Unregister removes c and reports whether it was registered.
	Unregister(c Collector) bool
}

// Gatherer gathers the metrics of its collectors.
type Gatherer interface {
	// Gather collects every metric, grouped into families sorted by
	// name. On errors it returns what it could gather and the errors.
	Gather() ([]*MetricFamily, error)
}

// AlreadyRegisteredError says that a collector with the same descriptors
// is registered: ExistingCollector, which the caller may use instead.
type AlreadyRegisteredError struct {
	ExistingCollector, NewCollector Collector
}

func (e AlreadyRegisteredError) Error() string {
	return "duplicate metrics collector registration attempted"
}

// Registry is a Registerer and Gatherer. It is safe for concurrent use.
type Registry struct {
	mu         sync.RWMutex
	collectors map[string]Collector // by the sorted IDs of their descriptors
	descIDs    map[string]bool
	dims       map[string]string // metric name → Desc.dims
}

var (
	_ Registerer = (*Registry)(nil)
	_ Gatherer   = (*Registry)(nil)
)

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{collectors: map[string]Collector{}, descIDs: map[string]bool{}, dims: map[string]string{}}
}

// describe returns c's descriptors.
func describe(c Collector) []*Desc {
	ch := make(chan *Desc, 16)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	var descs []*Desc
	for d := range ch {
		descs = append(descs, d)
	}
	return descs
}

// collectorID identifies a collector by its descriptors; a collector may
// describe one descriptor twice.
func collectorID(descs []*Desc) []string {
	ids := make([]string, 0, len(descs))
	for _, d := range descs {
		ids = append(ids, d.id)
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// Register implements Registerer.
func (r *Registry) Register(c Collector) error {
	descs := describe(c)
	if len(descs) == 0 {
		return errors.New("prometheus: a collector must describe its metrics")
	}
	newDims := map[string]string{}
	for _, d := range descs {
		if d.err != nil {
			return fmt.Errorf("descriptor %s is invalid: %w", d, d.err)
		}
		if dims, ok := newDims[d.fqName]; ok && dims != d.dims {
			return fmt.Errorf("the collector describes %s twice, with different label names or help", d.fqName)
		}
		newDims[d.fqName] = d.dims
	}
	ids := collectorID(descs)
	key := strings.Join(ids, "\x00")
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, dims := range newDims {
		if old, ok := r.dims[name]; ok && old != dims {
			return fmt.Errorf("%s is already registered with other label names or help", name)
		}
	}
	if existing, ok := r.collectors[key]; ok {
		return AlreadyRegisteredError{ExistingCollector: existing, NewCollector: c}
	}
	for _, id := range ids {
		if r.descIDs[id] {
			return fmt.Errorf("a metric named %s with the same constant labels is already registered", strings.SplitN(id, "\xff", 2)[0])
		}
	}
	r.collectors[key] = c
	for _, id := range ids {
		r.descIDs[id] = true
	}
	for name, dims := range newDims {
		r.dims[name] = dims
	}
	return nil
}

// MustRegister implements Registerer.
func (r *Registry) MustRegister(cs ...Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// Unregister implements Registerer. The names of its metrics stay
// reserved for their label names and help.
func (r *Registry) Unregister(c Collector) bool {
	ids := collectorID(describe(c))
	key := strings.Join(ids, "\x00")
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.collectors[key]; !ok {
		return false
	}
	delete(r.collectors, key)
	for _, id := range ids {
		delete(r.descIDs, id)
	}
	return true
}

// Gather implements Gatherer. Collectors run one after another; a metric
// whose descriptor was not registered, whose labels do not match it, or
// that repeats a series is left out and reported.
func (r *Registry) Gather() ([]*MetricFamily, error) {
	// Held while collecting: a Register waits for the scrape.
	r.mu.RLock()
	defer r.mu.RUnlock()
	cs := make([]Collector, 0, len(r.collectors))
	for _, c := range r.collectors {
		cs = append(cs, c)
	}
	descIDs := r.descIDs

	families := map[string]*MetricFamily{}
	series := map[string]bool{}
	var errs []error
	for _, c := range cs {
		ch := make(chan Metric, 64)
		go func() {
			c.Collect(ch)
			close(ch)
		}()
		for m := range ch {
			if err := r.add(families, series, descIDs, m); err != nil {
				errs = append(errs, err)
			}
		}
	}
	out := make([]*MetricFamily, 0, len(families))
	for _, f := range families {
		slices.SortFunc(f.Metric, compareSamples)
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b *MetricFamily) int { return strings.Compare(a.Name, b.Name) })
	return out, errors.Join(errs...)
}

// add puts m into its family.
func (r *Registry) add(families map[string]*MetricFamily, series, descIDs map[string]bool, m Metric) error {
	d := m.Desc()
	if d.err != nil {
		return fmt.Errorf("collected a metric with an invalid descriptor %s: %w", d, d.err)
	}
	if !descIDs[d.id] {
		return fmt.Errorf("collected metric %s was not described by its collector", d.fqName)
	}
	s := &Sample{}
	if err := m.write(s); err != nil {
		return fmt.Errorf("collecting %s: %w", d.fqName, err)
	}
	typ := s.kind()
	f := families[d.fqName]
	if f == nil {
		f = &MetricFamily{Name: d.fqName, Help: d.help, Type: typ}
		families[d.fqName] = f
	} else if f.Type != typ {
		return fmt.Errorf("%s is collected both as %s and as %s", d.fqName, f.Type, typ)
	}
	var key strings.Builder
	key.WriteString(d.fqName)
	for _, l := range s.Label {
		key.WriteString("\xff" + l.Name + "\xfe" + l.Value)
	}
	if series[key.String()] {
		return fmt.Errorf("%s was collected twice with the same labels %v", d.fqName, s.Label)
	}
	series[key.String()] = true
	f.Metric = append(f.Metric, s)
	return nil
}

// labelPairs returns the sorted labels of a series of d with values.
func (d *Desc) labelPairs(values []string) ([]*LabelPair, error) {
	if len(values) != len(d.varLabels) {
		return nil, fmt.Errorf("%s has %d variable labels (%s), got %d values", d.fqName, len(d.varLabels), strings.Join(d.varLabels, ", "), len(values))
	}
	pairs := make([]*LabelPair, 0, len(d.constLabels)+len(values))
	for i := range d.constLabels {
		pairs = append(pairs, &d.constLabels[i])
	}
	for i, v := range values {
		pairs = append(pairs, &LabelPair{Name: d.varLabels[i], Value: v})
	}
	slices.SortFunc(pairs, func(a, b *LabelPair) int { return strings.Compare(a.Name, b.Name) })
	return pairs, nil
}

// compareSamples orders the series of a family by their label values.
func compareSamples(a, b *Sample) int {
	for i := 0; i < len(a.Label) && i < len(b.Label); i++ {
		if c := strings.Compare(a.Label[i].Value, b.Label[i].Value); c != 0 {
			return c
		}
	}
	return len(a.Label) - len(b.Label)
}
