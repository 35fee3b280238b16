package runner

import (
	"fmt"

	"github.com/forgeci/forge/internal/prometheus"
)

type metrics struct {
	queued     prometheus.GaugeFunc
	running    prometheus.Gauge
	finished   *prometheus.CounterVec
	jobSeconds *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer, queued func() float64) (*metrics, error) {
	m := &metrics{
		queued: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "forge_builds_queued",
			Help: "Builds waiting in the queue (counted up to 1000).",
		}, queued),
		running: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "forge_builds_running",
			Help: "Builds this server is running now.",
		}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forge_builds_finished_total",
			Help: "Builds finished, by result.",
		}, []string{"result"}),
		jobSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "forge_job_duration_seconds",
			Help:    "How long jobs ran, by result.",
			Buckets: []float64{0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600},
		}, []string{"result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.queued, m.running, m.finished, m.jobSeconds} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("runner: registering metrics: %w", err)
			}
		}
	}
	return m, nil
}
