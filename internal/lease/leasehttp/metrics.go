package leasehttp

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/forgeci/forge/internal/lease"
)

// collector reads the Manager's stats at scrape time, so grants cost no
// metric updates.
type collector struct{ s *Server }

var (
	descSize = prometheus.NewDesc("forge_lease_pool_resources",
		"Resources in the pool (enabled or not; not counting ones leaving it).", []string{"pool"}, nil)
	descInUse = prometheus.NewDesc("forge_lease_pool_in_use",
		"Resources of the pool held by a lease.", []string{"pool"}, nil)
	descDisabled = prometheus.NewDesc("forge_lease_pool_disabled",
		"Resources of the pool disabled for maintenance.", []string{"pool"}, nil)
	descWaiters = prometheus.NewDesc("forge_lease_pool_waiters",
		"Requests waiting in the pool's queue.", []string{"pool"}, nil)
	descGrants = prometheus.NewDesc("forge_lease_grants_total",
		"Leases granted that include the pool.", []string{"pool"}, nil)
	descReleases = prometheus.NewDesc("forge_lease_releases_total",
		"Leases that included the pool ended, by reason (released, disconnected, revoked).", []string{"pool", "reason"}, nil)
	descWait = prometheus.NewDesc("forge_lease_wait_seconds",
		"Time from acquire to grant.", []string{"pool"}, nil)
	descConns = prometheus.NewDesc("forge_lease_connections",
		"Open lease WebSocket connections.", nil, nil)
	descSlow = prometheus.NewDesc("forge_lease_slow_connections_dropped_total",
		"Connections dropped because the client did not keep up: it did not read its messages (send queue full) or answered nothing within the keepalive.", nil, nil)
	descDropped = prometheus.NewDesc("forge_lease_connections_dropped_total",
		"Connections the server dropped, releasing their leases, by reason (keepalive, send_queue_full, message_too_large, shutdown_deadline).", []string{"reason"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSize, descInUse, descDisabled, descWaiters, descGrants, descReleases, descWait, descConns, descSlow, descDropped} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(c.s.connCount.Load()))
	slow := c.s.dropped[DropKeepalive].Load() + c.s.dropped[DropSendQueue].Load()
	ch <- prometheus.MustNewConstMetric(descSlow, prometheus.CounterValue, float64(slow))
	for _, reason := range dropReasons {
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(c.s.dropped[reason].Load()), reason)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stats, err := c.s.m.Stats(ctx)
	if err != nil {
		c.s.log.Warn("lease metrics unavailable", "err", err)
		return
	}
	for _, st := range stats {
		ch <- prometheus.MustNewConstMetric(descSize, prometheus.GaugeValue, float64(st.Size), st.Pool)
		ch <- prometheus.MustNewConstMetric(descInUse, prometheus.GaugeValue, float64(st.InUse), st.Pool)
		ch <- prometheus.MustNewConstMetric(descDisabled, prometheus.GaugeValue, float64(st.Disabled), st.Pool)
		ch <- prometheus.MustNewConstMetric(descWaiters, prometheus.GaugeValue, float64(st.Waiters), st.Pool)
		ch <- prometheus.MustNewConstMetric(descGrants, prometheus.CounterValue, float64(st.Grants), st.Pool)
		for _, reason := range []string{lease.ReasonReleased, lease.ReasonDisconnected, lease.ReasonRevoked} {
			ch <- prometheus.MustNewConstMetric(descReleases, prometheus.CounterValue, float64(st.Releases[reason]), st.Pool, reason)
		}
		buckets := make(map[float64]uint64, len(lease.WaitBuckets))
		var cum uint64
		for i, ub := range lease.WaitBuckets {
			cum += st.WaitCounts[i]
			buckets[ub] = cum
		}
		count := cum + st.WaitCounts[len(lease.WaitBuckets)]
		ch <- prometheus.MustNewConstHistogram(descWait, count, st.WaitSum, buckets, st.Pool)
	}
}
