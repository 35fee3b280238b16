package github

import (
	"fmt"

	"github.com/forgeci/forge/internal/prometheus"
)

// outboxMetrics are the Outbox's Prometheus metrics.
type outboxMetrics struct {
	deliveries *prometheus.CounterVec
	seconds    *prometheus.HistogramVec
	pending    prometheus.GaugeFunc
}

func newOutboxMetrics(reg prometheus.Registerer, pending func() float64) (*outboxMetrics, error) {
	m := &outboxMetrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forge_github_reports_total",
			Help: "Deliveries of reports to GitHub, by kind (github_status, github_check_run, ...) and outcome (delivered, retry, given_up).",
		}, []string{"kind", "outcome"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "forge_github_report_seconds",
			Help:    "How long one delivery to GitHub took, by kind.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}, []string{"kind"}),
		pending: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "forge_github_reports_in_flight",
			Help: "Reports this server is delivering or about to (those waiting for a retry are in the database only).",
		}, pending),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.deliveries, m.seconds, m.pending} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("github: registering metrics: %w", err)
			}
		}
	}
	return m, nil
}
