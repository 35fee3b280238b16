package prometheus_test

import (
	"bytes"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	client "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/forgeci/forge/internal/prometheus"
)

// metricSet registers the same metrics, with the same values, on a
// registry of ours or of client_golang; the test compares what both write.
type metricSet struct {
	counter    func(name, help string) func(float64)
	counterVec func(name, help string, labels ...string) func(v float64, values ...string)
	gauge      func(name, help string) func(float64)
	gaugeFunc  func(name, help string, fn func() float64)
	histogramV func(name, help string, buckets []float64, labels ...string) func(v float64, values ...string)
	constGauge func(name, help string, constLabels map[string]string, labels []string, v float64, values ...string)
	constHist  func(name, help string, count uint64, sum float64, buckets map[float64]uint64, labels []string, values ...string)
	writeTo    func(t *testing.T) string
}

func oursSet() metricSet {
	reg := prometheus.NewRegistry()
	var consts []prometheus.Metric
	var constDescs []*prometheus.Desc
	return metricSet{
		counter: func(name, help string) func(float64) {
			c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
			reg.MustRegister(c)
			return c.Add
		},
		counterVec: func(name, help string, labels ...string) func(float64, ...string) {
			c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
			reg.MustRegister(c)
			return func(v float64, values ...string) { c.WithLabelValues(values...).Add(v) }
		},
		gauge: func(name, help string) func(float64) {
			g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
			reg.MustRegister(g)
			return g.Set
		},
		gaugeFunc: func(name, help string, fn func() float64) {
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, fn))
		},
		histogramV: func(name, help string, buckets []float64, labels ...string) func(float64, ...string) {
			h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
			reg.MustRegister(h)
			return func(v float64, values ...string) { h.WithLabelValues(values...).Observe(v) }
		},
		constGauge: func(name, help string, constLabels map[string]string, labels []string, v float64, values ...string) {
			d := prometheus.NewDesc(name, help, labels, constLabels)
			constDescs = append(constDescs, d)
			consts = append(consts, prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, values...))
		},
		constHist: func(name, help string, count uint64, sum float64, buckets map[float64]uint64, labels []string, values ...string) {
			d := prometheus.NewDesc(name, help, labels, nil)
			constDescs = append(constDescs, d)
			consts = append(consts, prometheus.MustNewConstHistogram(d, count, sum, buckets, values...))
		},
		writeTo: func(t *testing.T) string {
			reg.MustRegister(&oursConst{constDescs, consts})
			rec := httptest.NewRecorder()
			prometheus.Handler(reg).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			if rec.Code != 200 || rec.Header().Get("Content-Type") != prometheus.ContentType {
				t.Fatalf("handler: %d %q: %s", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
			}
			return rec.Body.String()
		},
	}
}

type oursConst struct {
	descs   []*prometheus.Desc
	metrics []prometheus.Metric
}

func (c *oursConst) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *oursConst) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.metrics {
		ch <- m
	}
}

func clientSet() metricSet {
	reg := client.NewRegistry()
	var consts []client.Metric
	var constDescs []*client.Desc
	return metricSet{
		counter: func(name, help string) func(float64) {
			c := client.NewCounter(client.CounterOpts{Name: name, Help: help})
			reg.MustRegister(c)
			return c.Add
		},
		counterVec: func(name, help string, labels ...string) func(float64, ...string) {
			c := client.NewCounterVec(client.CounterOpts{Name: name, Help: help}, labels)
			reg.MustRegister(c)
			return func(v float64, values ...string) { c.WithLabelValues(values...).Add(v) }
		},
		gauge: func(name, help string) func(float64) {
			g := client.NewGauge(client.GaugeOpts{Name: name, Help: help})
			reg.MustRegister(g)
			return g.Set
		},
		gaugeFunc: func(name, help string, fn func() float64) {
			reg.MustRegister(client.NewGaugeFunc(client.GaugeOpts{Name: name, Help: help}, fn))
		},
		histogramV: func(name, help string, buckets []float64, labels ...string) func(float64, ...string) {
			h := client.NewHistogramVec(client.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
			reg.MustRegister(h)
			return func(v float64, values ...string) { h.WithLabelValues(values...).Observe(v) }
		},
		constGauge: func(name, help string, constLabels map[string]string, labels []string, v float64, values ...string) {
			d := client.NewDesc(name, help, labels, constLabels)
			constDescs = append(constDescs, d)
			consts = append(consts, client.MustNewConstMetric(d, client.GaugeValue, v, values...))
		},
		constHist: func(name, help string, count uint64, sum float64, buckets map[float64]uint64, labels []string, values ...string) {
			d := client.NewDesc(name, help, labels, nil)
			constDescs = append(constDescs, d)
			consts = append(consts, client.MustNewConstHistogram(d, count, sum, buckets, values...))
		},
		writeTo: func(t *testing.T) string {
			reg.MustRegister(&clientConst{constDescs, consts})
			families, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			for _, f := range families {
				if _, err := expfmt.MetricFamilyToText(&b, f); err != nil {
					t.Fatal(err)
				}
			}
			return b.String()
		},
	}
}

type clientConst struct {
	descs   []*client.Desc
	metrics []client.Metric
}

func (c *clientConst) Describe(ch chan<- *client.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *clientConst) Collect(ch chan<- client.Metric) {
	for _, m := range c.metrics {
		ch <- m
	}
}

// fill makes the same metrics in s.
func fill(s metricSet) {
	s.counter("forge_zero_total", "A counter never incremented.")
	s.counter("forge_c_total", "Help with a \\ backslash\nand a newline.")(2.5)
	add := s.counterVec("forge_webhooks_total", "Deliveries.", "event", "result")
	add(1, "push", "accepted")
	add(3, "pull_request", "accepted")
	add(1, "push", "duplicate")
	add(1, "a\"quote\\back\nnl", "é✓")
	s.gauge("forge_g", "")(-1)
	s.gauge("forge_big", "Big.")(1e21)
	s.gauge("forge_small", "Small.")(0.1)
	s.gauge("forge_inf", "Inf.")(math.Inf(+1))
	s.gaugeFunc("forge_queued", "Read when scraped.", func() float64 { return 7 })
	obs := s.histogramV("forge_job_duration_seconds", "Durations.", []float64{0.1, 0.5, 1, 5}, "result")
	for _, v := range []float64{0.05, 0.1, 0.3, 1, 7, 100} {
		obs(v, "success")
	}
	obs(0.5, "failure")
	s.histogramV("forge_default_buckets", "Default buckets.", nil)(0.3)
	s.constGauge("forge_lease_pool_in_use", "In use.", map[string]string{"server": "a"}, []string{"pool"}, 3, "ports")
	s.constGauge("forge_lease_pool_in_use", "In use.", map[string]string{"server": "a"}, []string{"pool"}, 1, "devices")
	s.constHist("forge_lease_wait_seconds", "Waits.", 5, 2.25, map[float64]uint64{0.1: 1, 1: 3, 30: 4}, []string{"pool"}, "ports")
}

// TestTextSameAsClientGolang: the same metrics written by this package and
// by github.com/prometheus/client_golang give the same text, byte for byte.
func TestTextSameAsClientGolang(t *testing.T) {
	ours, theirs := oursSet(), clientSet()
	fill(ours)
	fill(theirs)
	got, want := ours.writeTo(t), theirs.writeTo(t)
	if got != want {
		gl, wl := strings.Split(got, "\n"), strings.Split(want, "\n")
		for i := 0; i < len(gl) || i < len(wl); i++ {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Errorf("line %d:\ngot  %q\nwant %q", i+1, g, w)
			}
		}
	}
}

// TestRuntimeCollectorsParse: the go_* and process_* metrics parse with
// Prometheus's own text parser, and say plausible things.
func TestRuntimeCollectorsParse(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector())
	srv := httptest.NewServer(prometheus.Handler(reg))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, body)
	}
	for name, check := range map[string]func(float64) bool{
		"go_goroutines":                 func(v float64) bool { return v >= 2 },
		"go_memstats_alloc_bytes":       func(v float64) bool { return v > 0 },
		"go_sched_gomaxprocs_threads":   func(v float64) bool { return v >= 1 },
		"process_cpu_seconds_total":     func(v float64) bool { return v > 0 },
		"process_open_fds":              func(v float64) bool { return v >= 3 },
		"process_max_fds":               func(v float64) bool { return v >= 3 },
		"process_resident_memory_bytes": func(v float64) bool { return v > 1<<20 },
		"process_start_time_seconds":    func(v float64) bool { return v > 1.7e9 },
	} {
		f := families[name]
		if f == nil || len(f.Metric) != 1 {
			t.Errorf("%s: missing from\n%s", name, body)
			continue
		}
		m := f.Metric[0]
		v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
		if !check(v) {
			t.Errorf("%s = %v: implausible", name, v)
		}
	}
	if s := families["go_gc_duration_seconds"]; s == nil || s.Metric[0].GetSummary() == nil {
		t.Errorf("go_gc_duration_seconds is not a summary:\n%s", body)
	}
}

type twoDescs struct{ a, b *prometheus.Desc }

func (c twoDescs) Describe(ch chan<- *prometheus.Desc) { ch <- c.a; ch <- c.b }
func (c twoDescs) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.a, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(c.a, prometheus.GaugeValue, 2) // the same series twice
}

func TestRegistryRules(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total", Help: "X."}, []string{"a"})
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	// The same metric again: the caller gets the one registered.
	again := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total", Help: "X."}, []string{"a"})
	var are prometheus.AlreadyRegisteredError
	if err := reg.Register(again); !errors.As(err, &are) || are.ExistingCollector != c {
		t.Errorf("second registration: got %v, want AlreadyRegisteredError with the first", err)
	}
	// The same name with other labels or help is refused.
	for _, other := range []prometheus.Collector{
		prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total", Help: "X."}, []string{"b"}),
		prometheus.NewCounter(prometheus.CounterOpts{Name: "x_total", Help: "Other help."}),
	} {
		if err := reg.Register(other); err == nil || errors.As(err, &are) {
			t.Errorf("conflicting registration: got %v, want a plain error", err)
		}
	}
	for _, bad := range []prometheus.Collector{
		prometheus.NewCounter(prometheus.CounterOpts{Name: "9bad", Help: "X."}),
		prometheus.NewCounter(prometheus.CounterOpts{Name: "bad-name", Help: "X."}),
		prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ok_total", Help: "X."}, []string{"__reserved"}),
		prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ok_total", Help: "X."}, []string{"a", "a"}),
	} {
		if err := reg.Register(bad); err == nil {
			t.Errorf("%v registered", bad)
		}
	}
	if !reg.Unregister(c) || reg.Unregister(c) {
		t.Error("Unregister: want true once, then false")
	}
	if err := reg.Register(c); err != nil {
		t.Errorf("registering again after Unregister: %v", err)
	}

	// A collector sending one series twice: the scrape reports it.
	reg.MustRegister(twoDescs{prometheus.NewDesc("dup", "D.", nil, nil), prometheus.NewDesc("dup_other", "D.", nil, nil)})
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("gather with a repeated series: got %v", err)
	}
	rec := httptest.NewRecorder()
	prometheus.Handler(reg).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusInternalServerError {
		t.Errorf("handler with a broken collector: %d, want 500", rec.Code)
	}
}

func TestMisuse(t *testing.T) {
	for name, f := range map[string]func(){
		"negative counter": func() { prometheus.NewCounter(prometheus.CounterOpts{Name: "c"}).Add(-1) },
		"too few label values": func() {
			prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c"}, []string{"a", "b"}).WithLabelValues("x")
		},
		"wrong label name": func() {
			prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c"}, []string{"a"}).With(prometheus.Labels{"b": "x"})
		},
		"decreasing buckets": func() {
			prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "h", Buckets: []float64{1, 0.5}}, nil)
		},
		"const with few values": func() {
			prometheus.MustNewConstMetric(prometheus.NewDesc("g", "", []string{"a"}, nil), prometheus.GaugeValue, 1)
		},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

// TestConcurrentUse: updates and scrapes at once (run with -race).
func TestConcurrentUse(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total", Help: "C."}, []string{"k"})
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "h", Help: "H.", Buckets: []float64{1}}, []string{"k"})
	reg.MustRegister(c, h)
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 1000 {
				k := string(rune('a' + (g+i)%3))
				c.WithLabelValues(k).Inc()
				h.WithLabelValues(k).Observe(float64(i % 3))
			}
		}()
	}
	for range 20 {
		if _, err := reg.Gather(); err != nil {
			t.Fatal(err)
		}
	}
	for range 4 {
		<-done
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	var count uint64
	for _, f := range families {
		for _, m := range f.Metric {
			total += m.GetCounter().GetValue()
			count += m.GetHistogram().GetSampleCount()
		}
	}
	if total != 4000 || count != 4000 {
		t.Errorf("after 4000 updates: counter sum %v, histogram count %d", total, count)
	}
}
