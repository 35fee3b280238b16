package sqldb

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// TestDeliveryClaims: a repository's deliveries are claimed by one server
// at a time; its own claim is extended, an expired one is taken over, a
// released one is free at once.
func TestDeliveryClaims(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		db := newTestDB(t, kind)
		ctx := context.Background()
		now := at(0)
		got, err := db.ClaimDeliveries(ctx, "a", "", []string{"acme/app", "acme/lib", ""}, now, now.Add(time.Minute))
		if err != nil || !slices.Equal(got, []string{"acme/app", "acme/lib", ""}) {
			t.Fatalf("a claims free keys: %q, %v", got, err)
		}
		got, err = db.ClaimDeliveries(ctx, "b", "", []string{"acme/lib", "acme/web"}, now.Add(time.Second), now.Add(time.Minute))
		if err != nil || !slices.Equal(got, []string{"acme/web"}) {
			t.Fatalf("b claims while a holds acme/lib: %q, %v; want only acme/web", got, err)
		}
		// a's own claim is extended.
		got, err = db.ClaimDeliveries(ctx, "a", "", []string{"acme/lib"}, now.Add(2*time.Second), now.Add(2*time.Minute))
		if err != nil || !slices.Equal(got, []string{"acme/lib"}) {
			t.Fatalf("a claims again: %q, %v", got, err)
		}
		// After a's last expiry (2 minutes), b takes acme/lib over; before, not.
		if got, _ := db.ClaimDeliveries(ctx, "b", "", []string{"acme/lib"}, now.Add(90*time.Second), now.Add(3*time.Minute)); len(got) != 0 {
			t.Errorf("b took over a live claim: %q", got)
		}
		if got, _ := db.ClaimDeliveries(ctx, "b", "", []string{"acme/lib"}, now.Add(121*time.Second), now.Add(3*time.Minute)); !slices.Equal(got, []string{"acme/lib"}) {
			t.Errorf("b did not take over an expired claim: %q", got)
		}
		// a no longer holds it: touching skips it.
		if n, err := db.TouchDeliveryClaims(ctx, "a", []string{"acme/lib", "acme/app"}, now.Add(5*time.Minute)); err != nil || n != 1 {
			t.Errorf("Touch by a = %d, %v; want 1 (acme/app only)", n, err)
		}
		if got, _ := db.ClaimDeliveries(ctx, "b", "", []string{"acme/app"}, now.Add(4*time.Minute), now.Add(6*time.Minute)); len(got) != 0 {
			t.Errorf("b claimed acme/app whose claim a extended: %q", got)
		}
		if err := db.ReleaseDeliveryClaims(ctx, "a", []string{"acme/app", "acme/web"}); err != nil {
			t.Fatal(err)
		}
		if got, _ := db.ClaimDeliveries(ctx, "b", "", []string{"acme/app", "acme/web"}, now.Add(4*time.Minute), now.Add(6*time.Minute)); !slices.Equal(got, []string{"acme/app", "acme/web"}) {
			t.Errorf("b after a released acme/app: %q (a's release must not free b's acme/web either)", got)
		}
		if _, err := db.ClaimDeliveries(ctx, "", "", []string{"x"}, now, now.Add(time.Minute)); forge.ErrorCode(err) != forge.EINVALID {
			t.Errorf("claim without owner: %v", err)
		}
		// A later process of the same server (same home) takes over the
		// claims of an earlier one at once; another server does not.
		if got, _ := db.ClaimDeliveries(ctx, "host:abc:1:x", "host:abc:", []string{"k"}, now, now.Add(time.Hour)); len(got) != 1 {
			t.Fatalf("first process: %q", got)
		}
		if got, _ := db.ClaimDeliveries(ctx, "host:abd:2:y", "host:abd:", []string{"k"}, now, now.Add(time.Hour)); len(got) != 0 {
			t.Errorf("another server took a live claim: %q", got)
		}
		if got, _ := db.ClaimDeliveries(ctx, "host:abc:3:z", "host:abc:", []string{"k"}, now, now.Add(time.Hour)); len(got) != 1 {
			t.Errorf("a later process of the same server did not take over: %q", got)
		}
		if _, err := db.ClaimDeliveries(ctx, "b", "a", []string{"x"}, now, now.Add(time.Minute)); forge.ErrorCode(err) != forge.EINVALID {
			t.Errorf("claim with a home that is not a prefix of the owner: %v", err)
		}

		// Servers racing for the same keys: each key goes to exactly one.
		keys := []string{"r/1", "r/2", "r/3", "r/4", "r/5", "r/6"}
		held := make([][]string, 4)
		var wg sync.WaitGroup
		for i := range held {
			wg.Go(func() {
				order := slices.Clone(keys)
				if i%2 == 1 {
					slices.Reverse(order)
				}
				var err error
				if held[i], err = db.ClaimDeliveries(ctx, fmt.Sprint("racer-", i), "", order, now, now.Add(time.Minute)); err != nil {
					t.Errorf("racer %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		owners := map[string]int{}
		for _, h := range held {
			for _, k := range h {
				owners[k]++
			}
		}
		for _, k := range keys {
			if owners[k] != 1 {
				t.Errorf("key %s held by %d racers, want 1 (%q)", k, owners[k], held)
			}
		}
	})
}

// TestDeliveryBatches: the backlog counts what is pending, and
// FinishDeliveries finishes many deliveries in one go.
func TestDeliveryBatches(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		db := newTestDB(t, kind)
		ctx := context.Background()
		if n, oldest, err := db.DeliveryBacklog(ctx); err != nil || n != 0 || !oldest.IsZero() {
			t.Fatalf("empty backlog = %d, %v, %v", n, oldest, err)
		}
		for i := range 5 {
			if err := db.CreateDelivery(ctx, &forge.Delivery{ID: fmt.Sprint("d", i), Event: "push", Received: at(10 + i)}); err != nil {
				t.Fatal(err)
			}
		}
		if n, oldest, err := db.DeliveryBacklog(ctx); err != nil || n != 5 || !oldest.Equal(at(10)) {
			t.Fatalf("backlog = %d, %v, %v; want 5, %v", n, oldest, err, at(10))
		}
		ds := []*forge.Delivery{{ID: "d0", Result: "ignored: a"}, {ID: "d1", Result: "builds created: execute #1"}, {ID: "nope", Result: "x"}}
		if err := db.FinishDeliveries(ctx, ds); err != nil {
			t.Fatal(err)
		}
		for _, d := range ds[:2] {
			got, err := db.Delivery(ctx, d.ID)
			if err != nil || got.Processed.IsZero() || got.Result != d.Result {
				t.Errorf("delivery %s = %+v, %v; want processed with %q", d.ID, got, err, d.Result)
			}
		}
		if n, oldest, _ := db.DeliveryBacklog(ctx); n != 3 || !oldest.Equal(at(12)) {
			t.Errorf("backlog after finishing two = %d, %v; want 3, %v", n, oldest, at(12))
		}
	})
}

// TestCreateBuilds: a batch numbers builds in order, refuses per build a
// second build of a delivery and action without losing a number, and
// stores the rest.
func TestCreateBuilds(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		db := newTestDB(t, kind)
		ctx := context.Background()
		repo := mustRepo(t, db, "acme", "app")
		other := mustRepo(t, db, "acme", "lib")
		first := &forge.Build{RepoID: repo.ID, Action: "execute", DeliveryID: "d1", Hook: forge.Hook{Event: "push"}}
		if err := db.CreateBuild(ctx, first, []*forge.BuildJob{{Name: "test"}}); err != nil {
			t.Fatal(err)
		}
		builds := []*forge.Build{
			{RepoID: repo.ID, Action: "execute", DeliveryID: "d2", Hook: forge.Hook{Event: "push"}},
			{RepoID: repo.ID, Action: "execute", DeliveryID: "d1", Hook: forge.Hook{Event: "push"}}, // built before
			{RepoID: other.ID, Action: "execute", DeliveryID: "d3", Hook: forge.Hook{Event: "push"}},
			{RepoID: repo.ID, Action: "deploy", DeliveryID: "d2", Hook: forge.Hook{Event: "push"}},
			{RepoID: repo.ID, Action: ""}, // invalid
			{RepoID: 99999, Action: "execute"},
			{RepoID: repo.ID, Action: "execute", DeliveryID: "d2", Hook: forge.Hook{Event: "push"}}, // earlier in the batch
		}
		jobs := make([][]*forge.BuildJob, len(builds))
		for i := range jobs {
			jobs[i] = []*forge.BuildJob{{Name: "test"}, {Name: "lint", Needs: []string{"test"}}}
		}
		errs := db.CreateBuilds(ctx, builds, jobs)
		want := []string{"", forge.ECONFLICT, "", "", forge.EINVALID, forge.ENOTFOUND, forge.ECONFLICT}
		for i, err := range errs {
			if forge.ErrorCode(err) != want[i] {
				t.Errorf("build %d: error %v, want code %q", i, err, want[i])
			}
		}
		for i, n := range map[int]int64{0: 2, 2: 1, 3: 3} {
			b := builds[i]
			got, err := db.Build(ctx, b.ID)
			if err != nil || b.Number != n || got.Number != n || got.DeliveryID != b.DeliveryID || b.Version != 1 {
				t.Errorf("build %d: %+v number %d, %v; want number %d", i, got, b.Number, err, n)
				continue
			}
			js, _ := db.Jobs(ctx, b.ID)
			if len(js) != 2 || jobs[i][0].ID != js[0].ID || !slices.Equal(js[1].Needs, []string{"test"}) {
				t.Errorf("build %d jobs = %+v", i, js)
			}
		}
		if builds[1].ID != 0 || jobs[1][0].ID != 0 {
			t.Errorf("refused build got IDs: build %d job %d", builds[1].ID, jobs[1][0].ID)
		}
		// No number was lost to the refused builds.
		next := &forge.Build{RepoID: repo.ID, Action: "execute"}
		if err := db.CreateBuild(ctx, next, nil); err != nil || next.Number != 4 {
			t.Errorf("next build number %d, %v; want 4", next.Number, err)
		}
	})
}
