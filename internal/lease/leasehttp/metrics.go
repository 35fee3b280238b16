package leasehttp

import (
	"context"
	"time"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/lease"
	"github.com/forgeci/forge/internal/prometheus"
)

// collector reads the Manager's stats at scrape time, so grants cost no
// metric updates. Its descriptors are made with it, when a server that
// exports metrics starts, never when the program does.
type collector struct {
	s *Server

	size, inUse, disabled, waiters, grants, releases, wait *prometheus.Desc
	conns, slow, dropped                                   *prometheus.Desc
	disabledBy, checking, checks                           *prometheus.Desc
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
			"Resources of the pool out of service: disabled by an operator, by a failed health check or by a holder's report.", pool, nil),
		disabledBy: prometheus.NewDesc("forge_lease_pool_disabled_by",
			"Resources of the pool out of service, by who took them out (operator, check, holder).", []string{"pool", "by"}, nil),
		checking: prometheus.NewDesc("forge_lease_pool_checking",
			"Resources of the pool waiting for their health check to pass before they are granted again.", pool, nil),
		checks: prometheus.NewDesc("forge_lease_checks_total",
			"Health checks run on the pool's resources, by result (passed, failed).", []string{"pool", "result"}, nil),
		waiters: prometheus.NewDesc("forge_lease_pool_waiters",
			"Requests waiting in the pool's queue.", pool, nil),
		grants: prometheus.NewDesc("forge_lease_grants_total",
			"Leases granted that include the pool.", pool, nil),
		releases: prometheus.NewDesc("forge_lease_releases_total",
			"Leases that included the pool ended, by reason (released, broken, disconnected, revoked, expired).", []string{"pool", "reason"}, nil),
		wait: prometheus.NewDesc("forge_lease_wait_seconds",
			"Time from acquire to grant.", pool, nil),
		conns: prometheus.NewDesc("forge_lease_connections",
			"Open lease WebSocket connections.", nil, nil),
		slow: prometheus.NewDesc("forge_lease_slow_connections_dropped_total",
			"Connections dropped because the client did not keep up: it did not read its messages (send queue full) or answered nothing within the keepalive.", nil, nil),
		dropped: prometheus.NewDesc("forge_lease_connections_dropped_total",
			"Connections the server dropped, releasing their leases, by reason (keepalive, send_queue_full, message_too_large, shutdown_deadline).", []string{"reason"}, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.size, c.inUse, c.disabled, c.waiters, c.grants, c.releases, c.wait, c.conns, c.slow, c.dropped,
		c.disabledBy, c.checking, c.checks} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(c.s.connCount.Load()))
	slow := c.s.dropped[DropKeepalive].Load() + c.s.dropped[DropSendQueue].Load()
	ch <- prometheus.MustNewConstMetric(c.slow, prometheus.CounterValue, float64(slow))
	for _, reason := range dropReasons {
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(c.s.dropped[reason].Load()), reason)
	}
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
		for _, by := range []string{lease.DisabledOperator, forge.FaultCheck, forge.FaultHolder} {
			ch <- prometheus.MustNewConstMetric(c.disabledBy, prometheus.GaugeValue, float64(st.DisabledBy[by]), st.Pool, by)
		}
		ch <- prometheus.MustNewConstMetric(c.checking, prometheus.GaugeValue, float64(st.Checking), st.Pool)
		for _, result := range []string{lease.CheckPassed, lease.CheckFailed} {
			ch <- prometheus.MustNewConstMetric(c.checks, prometheus.CounterValue, float64(st.Checks[result]), st.Pool, result)
		}
		for _, reason := range []string{lease.ReasonReleased, lease.ReasonBroken, lease.ReasonDisconnected, lease.ReasonRevoked, lease.ReasonExpired} {
			ch <- prometheus.MustNewConstMetric(c.releases, prometheus.CounterValue, float64(st.Releases[reason]), st.Pool, reason)
		}
		buckets := make(map[float64]uint64, len(lease.WaitBuckets))
		var cum uint64
		for i, ub := range lease.WaitBuckets {
			cum += st.WaitCounts[i]
			buckets[ub] = cum
		}
		count := cum + st.WaitCounts[len(lease.WaitBuckets)]
		ch <- prometheus.MustNewConstHistogram(c.wait, count, st.WaitSum, buckets, st.Pool)
	}
}
