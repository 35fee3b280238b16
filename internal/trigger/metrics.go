package trigger

import (
	"context"
	"fmt"
	"time"

	"github.com/forgeci/forge/internal/prometheus"
)

// backlogCollector reports the delivery backlog, counted in the store when
// scraped: the deliveries are the queue.
type backlogCollector struct {
	store   backlogger
	now     func() time.Time
	pending *prometheus.Desc
	oldest  *prometheus.Desc
}

func (c *backlogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pending
	ch <- c.oldest
}

func (c *backlogCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, oldest, err := c.store.DeliveryBacklog(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.pending, err)
		ch <- prometheus.NewInvalidMetric(c.oldest, err)
		return
	}
	age := 0.0
	if !oldest.IsZero() {
		age = max(c.now().Sub(oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age)
}

// registerMetrics registers the backlog metrics with reg, when the
// delivery store can count its backlog.
func (p *Processor) registerMetrics(reg prometheus.Registerer) error {
	store, ok := p.opts.Deliveries.(backlogger)
	if reg == nil || !ok {
		return nil
	}
	c := &backlogCollector{
		store: store,
		now:   p.opts.Now,
		pending: prometheus.NewDesc("forge_deliveries_pending",
			"Webhook deliveries received and not yet turned into builds (or ignored).", nil, nil),
		oldest: prometheus.NewDesc("forge_deliveries_oldest_pending_seconds",
			"Age of the oldest delivery not yet processed; 0 when none waits.", nil, nil),
	}
	if err := reg.Register(c); err != nil {
		return fmt.Errorf("trigger: registering metrics: %w", err)
	}
	return nil
}
