package prometheus

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// MetricType is the type of a family.
type MetricType int

// The types of the text format.
const (
	TypeUntyped MetricType = iota
	TypeCounter
	TypeGauge
	TypeSummary
	TypeHistogram
)

func (t MetricType) String() string {
	return [...]string{"untyped", "counter", "gauge", "summary", "histogram"}[t]
}

// ValueType is the type of a const metric's value.
type ValueType int

// The value types of NewConstMetric.
const (
	_ ValueType = iota
	CounterValue
	GaugeValue
	UntypedValue
)

// MetricFamily is the gathered series of one metric name.
type MetricFamily struct {
	Name   string
	Help   string
	Type   MetricType
	Metric []*Sample // sorted by label values
}

// GetName returns f.Name.
func (f *MetricFamily) GetName() string { return f.Name }

// GetMetric returns f.Metric.
func (f *MetricFamily) GetMetric() []*Sample { return f.Metric }

// Sample is one gathered series: its labels, sorted by name, and one of
// the values, by the family's type.
type Sample struct {
	Label     []*LabelPair
	Counter   *Value
	Gauge     *Value
	Untyped   *Value
	Summary   *SummaryValue
	Histogram *HistogramValue
}

// GetLabel returns s.Label.
func (s *Sample) GetLabel() []*LabelPair { return s.Label }

// GetCounter returns s.Counter; its value reads 0 when nil.
func (s *Sample) GetCounter() *Value { return s.Counter }

// GetGauge returns s.Gauge; its value reads 0 when nil.
func (s *Sample) GetGauge() *Value { return s.Gauge }

// GetHistogram returns s.Histogram.
func (s *Sample) GetHistogram() *HistogramValue { return s.Histogram }

func (s *Sample) kind() MetricType {
	switch {
	case s.Counter != nil:
		return TypeCounter
	case s.Gauge != nil:
		return TypeGauge
	case s.Summary != nil:
		return TypeSummary
	case s.Histogram != nil:
		return TypeHistogram
	}
	return TypeUntyped
}

// LabelPair is a label of a series.
type LabelPair struct{ Name, Value string }

// GetName returns p.Name.
func (p *LabelPair) GetName() string { return p.Name }

// GetValue returns p.Value.
func (p *LabelPair) GetValue() string { return p.Value }

// Value is the value of a counter, gauge or untyped series.
type Value struct{ Value float64 }

// GetValue returns v's value, 0 for nil.
func (v *Value) GetValue() float64 {
	if v == nil {
		return 0
	}
	return v.Value
}

// HistogramValue is a histogram: Bucket holds cumulative counts by upper
// bound, in order, without the +Inf bucket (SampleCount).
type HistogramValue struct {
	SampleCount uint64
	SampleSum   float64
	Bucket      []Bucket
}

// GetSampleCount returns h.SampleCount, 0 for nil.
func (h *HistogramValue) GetSampleCount() uint64 {
	if h == nil {
		return 0
	}
	return h.SampleCount
}

// GetSampleSum returns h.SampleSum, 0 for nil.
func (h *HistogramValue) GetSampleSum() float64 {
	if h == nil {
		return 0
	}
	return h.SampleSum
}

// Bucket is a histogram bucket: how many observations were at most
// UpperBound.
type Bucket struct {
	UpperBound      float64
	CumulativeCount uint64
}

// SummaryValue is a summary: quantiles of observations, their count and
// sum.
type SummaryValue struct {
	SampleCount uint64
	SampleSum   float64
	Quantile    []Quantile
}

// Quantile is a quantile of a summary.
type Quantile struct{ Quantile, Value float64 }

// constMetric is a value made at collection time.
type constMetric struct {
	desc   *Desc
	typ    ValueType
	value  float64
	labels []*LabelPair
}

// NewConstMetric returns a series of desc with value, for a Collector.
func NewConstMetric(desc *Desc, valueType ValueType, value float64, labelValues ...string) (Metric, error) {
	if desc.err != nil {
		return nil, desc.err
	}
	if valueType < CounterValue || valueType > UntypedValue {
		return nil, fmt.Errorf("%s: unknown value type %d", desc.fqName, valueType)
	}
	labels, err := desc.labelPairs(labelValues)
	if err != nil {
		return nil, err
	}
	return &constMetric{desc: desc, typ: valueType, value: value, labels: labels}, nil
}

// MustNewConstMetric is NewConstMetric, panicking on an error.
func MustNewConstMetric(desc *Desc, valueType ValueType, value float64, labelValues ...string) Metric {
	m, err := NewConstMetric(desc, valueType, value, labelValues...)
	if err != nil {
		panic(err)
	}
	return m
}

func (m *constMetric) Desc() *Desc { return m.desc }

func (m *constMetric) write(s *Sample) error {
	s.Label = m.labels
	v := &Value{Value: m.value}
	switch m.typ {
	case CounterValue:
		s.Counter = v
	case GaugeValue:
		s.Gauge = v
	default:
		s.Untyped = v
	}
	return nil
}

// constHistogram is a histogram made at collection time.
type constHistogram struct {
	desc   *Desc
	value  HistogramValue
	labels []*LabelPair
}

// NewConstHistogram returns a histogram series of desc: count
// observations summing to sum, and buckets, the cumulative count of each
// upper bound.
func NewConstHistogram(desc *Desc, count uint64, sum float64, buckets map[float64]uint64, labelValues ...string) (Metric, error) {
	if desc.err != nil {
		return nil, desc.err
	}
	labels, err := desc.labelPairs(labelValues)
	if err != nil {
		return nil, err
	}
	h := &constHistogram{desc: desc, labels: labels, value: HistogramValue{SampleCount: count, SampleSum: sum}}
	for ub, n := range buckets {
		if !math.IsInf(ub, +1) {
			h.value.Bucket = append(h.value.Bucket, Bucket{UpperBound: ub, CumulativeCount: n})
		}
	}
	slices.SortFunc(h.value.Bucket, func(a, b Bucket) int { return compareFloat(a.UpperBound, b.UpperBound) })
	return h, nil
}

// MustNewConstHistogram is NewConstHistogram, panicking on an error.
func MustNewConstHistogram(desc *Desc, count uint64, sum float64, buckets map[float64]uint64, labelValues ...string) Metric {
	m, err := NewConstHistogram(desc, count, sum, buckets, labelValues...)
	if err != nil {
		panic(err)
	}
	return m
}

func (h *constHistogram) Desc() *Desc { return h.desc }

func (h *constHistogram) write(s *Sample) error {
	s.Label = h.labels
	v := h.value
	s.Histogram = &v
	return nil
}

// constSummary is a summary made at collection time.
type constSummary struct {
	desc   *Desc
	value  SummaryValue
	labels []*LabelPair
}

// NewConstSummary returns a summary series of desc: count observations
// summing to sum, and their quantiles (quantile → value).
func NewConstSummary(desc *Desc, count uint64, sum float64, quantiles map[float64]float64, labelValues ...string) (Metric, error) {
	if desc.err != nil {
		return nil, desc.err
	}
	labels, err := desc.labelPairs(labelValues)
	if err != nil {
		return nil, err
	}
	m := &constSummary{desc: desc, labels: labels, value: SummaryValue{SampleCount: count, SampleSum: sum}}
	for q, v := range quantiles {
		m.value.Quantile = append(m.value.Quantile, Quantile{Quantile: q, Value: v})
	}
	slices.SortFunc(m.value.Quantile, func(a, b Quantile) int { return compareFloat(a.Quantile, b.Quantile) })
	return m, nil
}

func (m *constSummary) Desc() *Desc { return m.desc }

func (m *constSummary) write(s *Sample) error {
	s.Label = m.labels
	v := m.value
	s.Summary = &v
	return nil
}

func compareFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Opts name a metric: Namespace_Subsystem_Name, with Help and ConstLabels.
type Opts struct {
	Namespace   string
	Subsystem   string
	Name        string
	Help        string
	ConstLabels Labels
}

// CounterOpts are the Opts of a counter.
type CounterOpts Opts

// GaugeOpts are the Opts of a gauge.
type GaugeOpts Opts

// HistogramOpts are the Opts of a histogram and its bucket upper bounds,
// increasing (DefBuckets when empty; +Inf is implied).
type HistogramOpts struct {
	Namespace   string
	Subsystem   string
	Name        string
	Help        string
	ConstLabels Labels
	Buckets     []float64
}

// DefBuckets are the default histogram buckets, in seconds.
var DefBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// BuildFQName joins the non-empty parts of a metric name with "_".
func BuildFQName(namespace, subsystem, name string) string {
	if name == "" {
		return ""
	}
	parts := make([]string, 0, 3)
	for _, p := range []string{namespace, subsystem, name} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, "_")
}

func (o Opts) desc(labels []string) *Desc {
	return NewDesc(BuildFQName(o.Namespace, o.Subsystem, o.Name), o.Help, labels, o.ConstLabels)
}

// atomicFloat is a float64 updated without locks.
type atomicFloat struct{ bits atomic.Uint64 }

func (f *atomicFloat) load() float64 { return math.Float64frombits(f.bits.Load()) }

func (f *atomicFloat) store(v float64) { f.bits.Store(math.Float64bits(v)) }

func (f *atomicFloat) add(v float64) {
	for {
		old := f.bits.Load()
		if f.bits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// selfCollector makes a single metric its own collector.
type selfCollector struct{ self Metric }

func (c selfCollector) Describe(ch chan<- *Desc) { ch <- c.self.Desc() }

func (c selfCollector) Collect(ch chan<- Metric) { ch <- c.self }

// Counter is a value that only goes up.
type Counter interface {
	Metric
	Collector
	// Inc adds 1.
	Inc()
	// Add adds v; it panics when v is negative.
	Add(v float64)
}

type counter struct {
	selfCollector
	desc   *Desc
	v      atomicFloat
	labels []*LabelPair
}

// NewCounter returns a counter at 0.
func NewCounter(opts CounterOpts) Counter {
	c := &counter{desc: Opts(opts).desc(nil)}
	c.selfCollector = selfCollector{c}
	return c
}

func (c *counter) Desc() *Desc { return c.desc }
func (c *counter) Inc()        { c.v.add(1) }

func (c *counter) Add(v float64) {
	if v < 0 {
		panic(errors.New("counter cannot decrease in value"))
	}
	c.v.add(v)
}

func (c *counter) write(s *Sample) error {
	s.Label, s.Counter = c.labels, &Value{Value: c.v.load()}
	return nil
}

// Gauge is a value that goes up and down.
type Gauge interface {
	Metric
	Collector
	Set(v float64)
	Inc()
	Dec()
	Add(v float64)
	Sub(v float64)
}

type gauge struct {
	selfCollector
	desc   *Desc
	v      atomicFloat
	labels []*LabelPair
}

// NewGauge returns a gauge at 0.
func NewGauge(opts GaugeOpts) Gauge {
	g := &gauge{desc: Opts(opts).desc(nil)}
	g.selfCollector = selfCollector{g}
	return g
}

func (g *gauge) Desc() *Desc   { return g.desc }
func (g *gauge) Set(v float64) { g.v.store(v) }
func (g *gauge) Inc()          { g.v.add(1) }
func (g *gauge) Dec()          { g.v.add(-1) }
func (g *gauge) Add(v float64) { g.v.add(v) }
func (g *gauge) Sub(v float64) { g.v.add(-v) }
func (g *gauge) write(s *Sample) error {
	s.Label, s.Gauge = g.labels, &Value{Value: g.v.load()}
	return nil
}

// GaugeFunc is a gauge whose value a function gives at each scrape.
type GaugeFunc interface {
	Metric
	Collector
}

type gaugeFunc struct {
	selfCollector
	desc *Desc
	fn   func() float64
}

// NewGaugeFunc returns a gauge reading fn when scraped; fn must be safe
// to call concurrently.
func NewGaugeFunc(opts GaugeOpts, fn func() float64) GaugeFunc {
	g := &gaugeFunc{desc: Opts(opts).desc(nil), fn: fn}
	g.selfCollector = selfCollector{g}
	return g
}

func (g *gaugeFunc) Desc() *Desc { return g.desc }

func (g *gaugeFunc) write(s *Sample) error {
	s.Gauge = &Value{Value: g.fn()}
	return nil
}

// Observer takes observations.
type Observer interface {
	Observe(v float64)
}

// Histogram counts observations in buckets.
type Histogram interface {
	Metric
	Collector
	Observer
}

type histogram struct {
	selfCollector
	desc   *Desc
	upper  []float64       // bucket upper bounds, without +Inf
	counts []atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	count  atomic.Uint64
	sum    atomicFloat
	labels []*LabelPair
}

// NewHistogram returns an empty histogram. It panics when the buckets do
// not increase.
func NewHistogram(opts HistogramOpts) Histogram {
	h := newHistogram(opts.desc(nil), opts.Buckets, nil)
	h.selfCollector = selfCollector{h}
	return h
}

func (o HistogramOpts) desc(labels []string) *Desc {
	return NewDesc(BuildFQName(o.Namespace, o.Subsystem, o.Name), o.Help, labels, o.ConstLabels)
}

func newHistogram(desc *Desc, buckets []float64, labels []*LabelPair) *histogram {
	if len(buckets) == 0 {
		buckets = DefBuckets
	}
	upper := slices.Clone(buckets)
	if math.IsInf(upper[len(upper)-1], +1) {
		upper = upper[:len(upper)-1]
	}
	for i := 1; i < len(upper); i++ {
		if upper[i] <= upper[i-1] {
			panic(fmt.Errorf("histogram %s: buckets must increase, got %v", desc.fqName, buckets))
		}
	}
	return &histogram{desc: desc, upper: upper, counts: make([]atomic.Uint64, len(upper)+1), labels: labels}
}

func (h *histogram) Desc() *Desc { return h.desc }

// Observe counts v in the first bucket whose upper bound is at least v.
func (h *histogram) Observe(v float64) {
	h.counts[sort.SearchFloat64s(h.upper, v)].Add(1)
	h.sum.add(v)
	h.count.Add(1)
}

func (h *histogram) write(s *Sample) error {
	v := &HistogramValue{SampleSum: h.sum.load(), Bucket: make([]Bucket, len(h.upper))}
	var cum uint64
	for i, ub := range h.upper {
		cum += h.counts[i].Load()
		v.Bucket[i] = Bucket{UpperBound: ub, CumulativeCount: cum}
	}
	// The count is the sum of the buckets, so that a scrape during an
	// Observe stays consistent.
	v.SampleCount = cum + h.counts[len(h.upper)].Load()
	s.Label, s.Histogram = h.labels, v
	return nil
}

// vec holds the series of one metric by label values.
type vec[T Metric] struct {
	desc     *Desc
	newChild func(labels []*LabelPair) T
	mu       sync.RWMutex
	children map[string]T
	order    []T
}

func (v *vec[T]) with(values []string) T {
	key := strings.Join(values, "\xff")
	v.mu.RLock()
	c, ok := v.children[key]
	v.mu.RUnlock()
	if ok {
		return c
	}
	labels, err := v.desc.labelPairs(values)
	if err != nil {
		panic(err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if c, ok := v.children[key]; ok {
		return c
	}
	c = v.newChild(labels)
	v.children[key] = c
	v.order = append(v.order, c)
	return c
}

func (v *vec[T]) values(l Labels) []string {
	if len(l) != len(v.desc.varLabels) {
		panic(fmt.Errorf("%s has labels %v, got %v", v.desc.fqName, v.desc.varLabels, l))
	}
	values := make([]string, len(v.desc.varLabels))
	for i, name := range v.desc.varLabels {
		value, ok := l[name]
		if !ok {
			panic(fmt.Errorf("%s has labels %v, got %v", v.desc.fqName, v.desc.varLabels, l))
		}
		values[i] = value
	}
	return values
}

// Describe implements Collector.
func (v *vec[T]) Describe(ch chan<- *Desc) { ch <- v.desc }

// Collect implements Collector.
func (v *vec[T]) Collect(ch chan<- Metric) {
	v.mu.RLock()
	children := slices.Clone(v.order)
	v.mu.RUnlock()
	for _, c := range children {
		ch <- c
	}
}

func newVec[T Metric](desc *Desc, newChild func(labels []*LabelPair) T) vec[T] {
	return vec[T]{desc: desc, newChild: newChild, children: map[string]T{}}
}

// CounterVec is a counter by label values.
type CounterVec struct{ vec[Counter] }

// NewCounterVec returns a counter with the variable labels labelNames.
func NewCounterVec(opts CounterOpts, labelNames []string) *CounterVec {
	d := Opts(opts).desc(labelNames)
	return &CounterVec{newVec(d, func(l []*LabelPair) Counter {
		c := &counter{desc: d, labels: l}
		c.selfCollector = selfCollector{c}
		return c
	})}
}

// WithLabelValues returns the counter of these label values, in the order
// of the label names; it panics on a wrong number of values.
func (v *CounterVec) WithLabelValues(values ...string) Counter { return v.with(values) }

// With returns the counter of these labels; it panics on wrong names.
func (v *CounterVec) With(l Labels) Counter { return v.with(v.values(l)) }

// GaugeVec is a gauge by label values.
type GaugeVec struct{ vec[Gauge] }

// NewGaugeVec returns a gauge with the variable labels labelNames.
func NewGaugeVec(opts GaugeOpts, labelNames []string) *GaugeVec {
	d := Opts(opts).desc(labelNames)
	return &GaugeVec{newVec(d, func(l []*LabelPair) Gauge {
		g := &gauge{desc: d, labels: l}
		g.selfCollector = selfCollector{g}
		return g
	})}
}

// WithLabelValues returns the gauge of these label values.
func (v *GaugeVec) WithLabelValues(values ...string) Gauge { return v.with(values) }

// With returns the gauge of these labels.
func (v *GaugeVec) With(l Labels) Gauge { return v.with(v.values(l)) }

// HistogramVec is a histogram by label values.
type HistogramVec struct{ vec[Histogram] }

// NewHistogramVec returns a histogram with the variable labels
// labelNames. It panics when the buckets do not increase.
func NewHistogramVec(opts HistogramOpts, labelNames []string) *HistogramVec {
	d := opts.desc(labelNames)
	newHistogram(d, opts.Buckets, nil) // check the buckets now
	return &HistogramVec{newVec(d, func(l []*LabelPair) Histogram {
		h := newHistogram(d, opts.Buckets, l)
		h.selfCollector = selfCollector{h}
		return h
	})}
}

// WithLabelValues returns the histogram of these label values.
func (v *HistogramVec) WithLabelValues(values ...string) Observer { return v.with(values) }

// With returns the histogram of these labels.
func (v *HistogramVec) With(l Labels) Observer { return v.with(v.values(l)) }

// invalidMetric is a series that could not be collected: writing it fails
// the gathering with err, as client_golang's NewInvalidMetric does.
type invalidMetric struct {
	desc *Desc
	err  error
}

// NewInvalidMetric returns a metric of desc whose collection fails with err.
func NewInvalidMetric(desc *Desc, err error) Metric { return &invalidMetric{desc: desc, err: err} }

func (m *invalidMetric) Desc() *Desc { return m.desc }

func (m *invalidMetric) write(*Sample) error { return m.err }
