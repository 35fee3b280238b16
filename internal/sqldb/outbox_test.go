package sqldb

import (
	"context"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

func item(key string, rank int64, payload string) *forge.OutboxItem {
	return &forge.OutboxItem{Key: key, Kind: "status", Rank: rank, Payload: []byte(payload)}
}

// TestOutbox: newer messages replace older ones, outdated ones are
// dropped, claims keep two owners apart, and settling records deliveries
// and retries (issue 10: the persistent reporting queue).
func TestOutbox(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		db := newTestDB(t, kind)
		ctx := context.Background()
		t0 := time.Now()
		lease := t0.Add(time.Minute)

		got, err := db.Enqueue(ctx, "a", lease, []*forge.OutboxItem{item("k1", 1, "queued"), item("k2", 1, "queued"), item("k1", 3, "running")})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].Key != "k2" || got[1].Key != "k1" || string(got[1].Payload) != "running" || got[1].Version != 2 {
			t.Fatalf("Enqueue: got %+v, want k2 v1 then k1 running v2", got)
		}
		// Claimed by a until the lease ends: b gets nothing, a restarted a does.
		if c, err := db.Claim(ctx, "b", t0, t0.Add(time.Minute), 10, false); err != nil || len(c) != 0 {
			t.Fatalf("Claim by b during a's lease: %d items, %v; want none", len(c), err)
		}
		c, err := db.Claim(ctx, "a", t0, t0.Add(time.Minute), 10, true)
		if err != nil || len(c) != 2 {
			t.Fatalf("reclaim by a: %d items, %v; want 2", len(c), err)
		}
		// An outdated message (rank 2 after 3) is dropped; so is a weak
		// one of equal rank, and an identical one.
		got, err = db.Enqueue(ctx, "a", lease, []*forge.OutboxItem{item("k1", 2, "queued again"), {Key: "k1", Kind: "status", Rank: 3, Weak: true, Payload: []byte("weak")}, item("k1", 3, "running")})
		if err != nil || len(got) != 0 {
			t.Fatalf("outdated Enqueue: got %+v, %v; want nothing stored", got, err)
		}
		// k1 v2 delivered; k2 fails and is tried later.
		next := t0.Add(time.Hour)
		if err := db.Settle(ctx, []forge.OutboxResult{
			{Key: "k1", Version: 2, Ref: "77", Progress: 1},
			{Key: "k2", Version: 1, Failed: "502 Bad Gateway", NextAt: next},
		}); err != nil {
			t.Fatal(err)
		}
		if c, err := db.Claim(ctx, "b", t0.Add(time.Minute), t0.Add(2*time.Minute), 10, false); err != nil || len(c) != 0 {
			t.Fatalf("Claim before k2's retry time: %+v, %v; want none", c, err)
		}
		c, err = db.Claim(ctx, "b", next, next.Add(time.Minute), 10, false)
		if err != nil || len(c) != 1 || c[0].Key != "k2" || c[0].Attempts != 1 || c[0].Error != "502 Bad Gateway" {
			t.Fatalf("Claim after retry time: %+v, %v; want k2 with 1 attempt", c, err)
		}
		// A newer version arrives while k2 v1 is in flight: settling v1
		// leaves v2 pending and claimed.
		got, err = db.Enqueue(ctx, "b", next.Add(time.Minute), []*forge.OutboxItem{item("k2", 7, "success")})
		if err != nil || len(got) != 1 || got[0].Version != 2 {
			t.Fatalf("Enqueue k2 success: %+v, %v", got, err)
		}
		if err := db.Settle(ctx, []forge.OutboxResult{{Key: "k2", Version: 1}}); err != nil {
			t.Fatal(err)
		}
		c, err = db.Claim(ctx, "b", next, next.Add(time.Minute), 10, true)
		if err != nil || len(c) != 1 || c[0].Version != 2 || c[0].Delivered != 0 || string(c[0].Payload) != "success" {
			t.Fatalf("k2 after settling the replaced version: %+v, %v; want v2 pending", c, err)
		}
		// Ref survives replacement; Progress belongs to a payload.
		got, err = db.Enqueue(ctx, "a", lease, []*forge.OutboxItem{item("k1", 9, "done")})
		if err != nil || len(got) != 1 || got[0].Ref != "77" || got[0].Progress != 0 {
			t.Fatalf("replaced k1: %+v, %v; want ref 77 kept, progress 0", got, err)
		}
		// Giving up marks the version delivered with its error.
		if err := db.Settle(ctx, []forge.OutboxResult{{Key: "k2", Version: 2, Failed: "422 Unprocessable"}, {Key: "k1", Version: 3}}); err != nil {
			t.Fatal(err)
		}
		if c, err := db.Claim(ctx, "c", next.Add(time.Hour), next.Add(2*time.Hour), 10, false); err != nil || len(c) != 0 {
			t.Fatalf("Claim after everything settled: %+v, %v; want none", c, err)
		}
		n, err := db.PurgeOutbox(ctx, time.Now().Add(time.Hour))
		if err != nil || n != 2 {
			t.Fatalf("PurgeOutbox: %d, %v; want 2", n, err)
		}
	})
}
