package lease

import (
	"context"
	"time"

	"github.com/forgeci/forge/internal/prometheus"
)

// collector reads the Manager's stats at scrape time, so grants cost no
// metric updates. Its descriptors are made with it, when a server that
// exports metrics starts, never when the program does.
type collector struct {
	s *Server

	size, inUse, disabled, waiters, grants, releases, wait *prometheus.Desc
	conns, drop                                            *prometheus.Desc
}

func newCollector(s *Server) *collector {
	pool := []string{"pool"}
	return &collector{
		s: s,
		size: prometheus.NewDesc("forge_lease_pool_resources",
			"Resources in the pool (enabled or not; not counting ones leaving it).", pool, nil),
		inUse: prometheus.NewDesc("forge_lease_pool_in_use",
			"Resources of the pool held by a lease.", pool, nil),
		disabled: prometheus.NewDesc("forge_lease_pool_disabled",
			"Resources of the pool disabled for maintenance.", pool, nil),
		waiters: prometheus.NewDesc("forge_lease_pool_waiters",
			"Requests waiting in the pool's queue.", pool, nil),
		grants: prometheus.NewDesc("forge_lease_grants_total",
			"Leases granted that include the pool.", pool, nil),
		releases: prometheus.NewDesc("forge_lease_releases_total",
			"Leases that included the pool ended, by reason (released, disconnected, revoked).", []string{"pool", "reason"}, nil),
		wait: prometheus.NewDesc("forge_lease_wait_seconds",
			"Time from acquire to grant.", pool, nil),
		conns: prometheus.NewDesc("forge_lease_connections",
			"Open lease WebSocket connections.", nil, nil),
		drop: prometheus.NewDesc("forge_lease_slow_connections_dropped_total",
			"Connections dropped because they did not read their messages.", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.size, c.inUse, c.disabled, c.waiters, c.grants, c.releases, c.wait, c.conns, c.drop} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(c.s.connCount.Load()))
	ch <- prometheus.MustNewConstMetric(c.drop, prometheus.CounterValue, float64(c.s.dropped.Load()))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stats, err := c.s.m.Stats(ctx)
	if err != nil {
		c.s.log.Warn("lease metrics unavailable", "err", err)
		return
	}
	for _, st := range stats {
		ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(st.Size), st.Pool)
		ch <- prometheus.MustNewConstMetric(c.inUse, prometheus.GaugeValue, float64(st.InUse), st.Pool)
		ch <- prometheus.MustNewConstMetric(c.disabled, prometheus.GaugeValue, float64(st.Disabled), st.Pool)
		ch <- prometheus.MustNewConstMetric(c.waiters, prometheus.GaugeValue, float64(st.Waiters), st.Pool)
		ch <- prometheus.MustNewConstMetric(c.grants, prometheus.CounterValue, float64(st.Grants), st.Pool)
		for _, reason := range []string{ReasonReleased, ReasonDisconnected, ReasonRevoked} {
			ch <- prometheus.MustNewConstMetric(c.releases, prometheus.CounterValue, float64(st.Releases[reason]), st.Pool, reason)
		}
		buckets := make(map[float64]uint64, len(WaitBuckets))
		var cum uint64
		for i, ub := range WaitBuckets {
			cum += st.WaitCounts[i]
			buckets[ub] = cum
		}
		count := cum + st.WaitCounts[len(WaitBuckets)]
		ch <- prometheus.MustNewConstHistogram(c.wait, count, st.WaitSum, buckets, st.Pool)
	}
}
