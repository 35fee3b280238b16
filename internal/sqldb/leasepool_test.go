package sqldb

import (
	"context"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// TestLeasePools: pools saved, replaced and deleted come back as kept,
// deletions as tombstones that a later save clears.
func TestLeasePools(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		db := newTestDB(t, kind)
		ctx := context.Background()
		dut := &forge.Pool{Name: "dut", Order: "fifo", Resources: []*forge.Resource{
			{ID: "d1", Attributes: map[string]string{"host": "10.0.0.5"}, Labels: map[string]string{"arch": "arm64"}},
			{ID: "d2", Disabled: true},
		}}
		if err := db.SaveLeasePool(ctx, dut); err != nil {
			t.Fatal(err)
		}
		if err := db.SaveLeasePool(ctx, &forge.Pool{Name: "ports", Order: "fill", Resources: []*forge.Resource{{ID: "1"}}}); err != nil {
			t.Fatal(err)
		}
		dut.Resources[1].Disabled = false
		if err := db.SaveLeasePool(ctx, dut); err != nil {
			t.Fatal(err)
		}
		if err := db.DeleteLeasePool(ctx, "ports"); err != nil {
			t.Fatal(err)
		}
		pools, deleted, err := db.LeasePools(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(pools) != 1 || pools[0].Name != "dut" || len(pools[0].Resources) != 2 ||
			pools[0].Resources[0].Attributes["host"] != "10.0.0.5" || pools[0].Resources[0].Labels["arch"] != "arm64" ||
			pools[0].Resources[1].Disabled {
			t.Fatalf("pools: got %+v, want dut as saved last", pools)
		}
		if len(deleted) != 1 || deleted[0] != "ports" {
			t.Fatalf("deleted: got %v, want [ports]", deleted)
		}
		if err := db.SaveLeasePool(ctx, &forge.Pool{Name: "ports", Order: "fifo"}); err != nil {
			t.Fatal(err)
		}
		pools, deleted, _ = db.LeasePools(ctx)
		if len(pools) != 2 || len(deleted) != 0 {
			t.Fatalf("after saving a deleted pool again: got %d pools, deleted %v", len(pools), deleted)
		}
		wantCode(t, db.SaveLeasePool(ctx, &forge.Pool{}), forge.EINVALID)
	})
}

// TestLeaseState: a kept state is taken once.
func TestLeaseState(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		db := newTestDB(t, kind)
		ctx := context.Background()
		if got, err := db.TakeLeaseState(ctx); err != nil || got != nil {
			t.Fatalf("empty: got %q %v, want nothing", got, err)
		}
		db.SaveLeaseState(ctx, []byte(`{"a":1}`))
		if err := db.SaveLeaseState(ctx, []byte(`{"a":2}`)); err != nil {
			t.Fatal(err)
		}
		if got, err := db.TakeLeaseState(ctx); err != nil || string(got) != `{"a":2}` {
			t.Fatalf("take: got %q %v, want the last saved", got, err)
		}
		if got, _ := db.TakeLeaseState(ctx); got != nil {
			t.Fatalf("second take: got %q, want nothing", got)
		}
	})
}

// TestLeasePoolCheckAndFaults: a pool's health check and its resources'
// faults (a failed check, a holder's report) are kept with the pool.
func TestLeasePoolCheckAndFaults(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		db := newTestDB(t, kind)
		ctx := context.Background()
		since := time.Date(2026, 12, 3, 12, 0, 0, 123456789, time.UTC)
		check := &forge.PoolCheck{Command: "ping -c1 $FORGE_RESOURCE_HOST", Interval: 10 * time.Minute, Timeout: 30 * time.Second, Retry: 30 * time.Second}
		dut := &forge.Pool{Name: "dut", Order: "fifo", Check: check, Resources: []*forge.Resource{
			{ID: "d1", Fault: &forge.ResourceFault{Source: forge.FaultCheck, Reason: "no answer", Since: since}},
			{ID: "d2", Fault: &forge.ResourceFault{Source: forge.FaultHolder, Reason: "fan stuck", Since: since}},
			{ID: "d3"},
		}}
		if err := db.SaveLeasePool(ctx, dut); err != nil {
			t.Fatal(err)
		}
		pools, _, err := db.LeasePools(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := pools[0]
		if got.Check == nil || *got.Check != *check {
			t.Fatalf("check: got %+v, want %+v", got.Check, check)
		}
		for i, want := range dut.Resources {
			if f := got.Resources[i].Fault; (f == nil) != (want.Fault == nil) || f != nil && (*f != *want.Fault || !f.Since.Equal(since)) {
				t.Errorf("%s: fault %+v, want %+v", want.ID, f, want.Fault)
			}
		}
	})
}
