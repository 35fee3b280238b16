package sqldb

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// The store suite: every test runs against SQLite and PostgreSQL.

func TestRepos(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)

		wantCode(t, db.UpsertRepo(ctx, &forge.Repo{Owner: "acme"}), forge.EINVALID)

		r := &forge.Repo{Owner: "acme", Name: "rocket", CloneURL: "https://x/acme/rocket.git", DefaultBranch: "main", Private: true}
		if err := db.UpsertRepo(ctx, r); err != nil {
			t.Fatal(err)
		}
		if r.ID == 0 || r.Created.IsZero() || !r.Created.Equal(r.Updated) {
			t.Fatalf("after create: got id %d created %v updated %v, want an id and created = updated", r.ID, r.Created, r.Updated)
		}
		time.Sleep(2 * time.Millisecond)
		again := &forge.Repo{Owner: "acme", Name: "rocket", CloneURL: "https://y/acme/rocket.git", DefaultBranch: "trunk"}
		if err := db.UpsertRepo(ctx, again); err != nil {
			t.Fatal(err)
		}
		if again.ID != r.ID || !again.Created.Equal(r.Created) || !again.Updated.After(r.Updated) {
			t.Fatalf("upsert of an existing repo: got id %d created %v updated %v, want id %d created %v and a later update",
				again.ID, again.Created, again.Updated, r.ID, r.Created)
		}
		mustRepo(t, db, "acme", "anvil")
		mustRepo(t, db, "beta", "anvil")

		got, err := db.Repo(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, again) {
			t.Fatalf("Repo: got %+v, want %+v", got, again)
		}
		got, err = db.RepoByName(ctx, "acme", "rocket")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, again) {
			t.Fatalf("RepoByName: got %+v, want %+v", got, again)
		}
		_, err = db.Repo(ctx, 999)
		wantCode(t, err, forge.ENOTFOUND)
		_, err = db.RepoByName(ctx, "acme", "nope")
		wantCode(t, err, forge.ENOTFOUND)

		list, err := db.ListRepos(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, r := range list {
			names = append(names, r.FullName())
		}
		if want := []string{"acme/anvil", "acme/rocket", "beta/anvil"}; !reflect.DeepEqual(names, want) {
			t.Fatalf("ListRepos: got %v, want %v", names, want)
		}
	})
}

func TestDeliveries(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)

		wantCode(t, db.CreateDelivery(ctx, &forge.Delivery{ID: "x"}), forge.EINVALID)
		for i, id := range []string{"d-3", "d-1", "d-2"} {
			d := &forge.Delivery{ID: id, Event: "push", Payload: []byte(`{"n":` + fmt.Sprint(i) + `}`), Received: at(i)}
			if err := db.CreateDelivery(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
		wantCode(t, db.CreateDelivery(ctx, &forge.Delivery{ID: "d-1", Event: "push"}), forge.ECONFLICT)
		// Received defaults to now.
		d4 := &forge.Delivery{ID: "d-4", Event: "ping", Action: "", Payload: nil}
		if err := db.CreateDelivery(ctx, d4); err != nil {
			t.Fatal(err)
		}
		if d4.Received.IsZero() {
			t.Fatal("CreateDelivery left Received zero")
		}

		// A batch stores new ids and reports old ones and repeats as conflicts.
		batch := []*forge.Delivery{
			{ID: "b-1", Event: "push", Received: at(10)},
			{ID: "d-1", Event: "push"},
			{ID: "b-2", Event: "pull_request", Action: "opened", Received: at(11)},
			{ID: "b-1", Event: "push"},
			{ID: "", Event: "push"},
		}
		wantCodes := []string{"", forge.ECONFLICT, "", forge.ECONFLICT, forge.EINVALID}
		for i, err := range db.CreateDeliveries(ctx, batch) {
			if got := forge.ErrorCode(err); got != wantCodes[i] {
				t.Errorf("CreateDeliveries[%d] (%s): got code %q, want %q (%v)", i, batch[i].ID, got, wantCodes[i], err)
			}
		}
		for _, id := range []string{"b-1", "b-2"} {
			if _, err := db.Delivery(ctx, id); err != nil {
				t.Errorf("delivery %s from a batch: %v", id, err)
			}
			if err := db.FinishDelivery(ctx, id, "checked"); err != nil {
				t.Fatal(err)
			}
		}

		pending, err := db.PendingDeliveries(ctx, 2)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(pending); !reflect.DeepEqual(got, []string{"d-3", "d-1"}) {
			t.Fatalf("PendingDeliveries(2): got %v, want [d-3 d-1] (oldest first)", got)
		}
		if string(pending[0].Payload) != `{"n":0}` || !pending[0].Received.Equal(at(0)) || !pending[0].Processed.IsZero() {
			t.Fatalf("pending delivery: got %+v", pending[0])
		}

		if err := db.FinishDelivery(ctx, "d-1", "builds created: 1"); err != nil {
			t.Fatal(err)
		}
		wantCode(t, db.FinishDelivery(ctx, "nope", "x"), forge.ENOTFOUND)
		pending, err = db.PendingDeliveries(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(pending); !reflect.DeepEqual(got, []string{"d-3", "d-2", "d-4"}) {
			t.Fatalf("PendingDeliveries after finishing d-1: got %v, want [d-3 d-2 d-4]", got)
		}
		d, err := db.Delivery(ctx, "d-1")
		if err != nil {
			t.Fatal(err)
		}
		if d.Processed.IsZero() || d.Result != "builds created: 1" || d.Event != "push" {
			t.Fatalf("finished delivery: got %+v", d)
		}
		_, err = db.Delivery(ctx, "nope")
		wantCode(t, err, forge.ENOTFOUND)
	})
}

func ids(ds []*forge.Delivery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.ID)
	}
	return out
}

func TestTokens(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)

		wantCode(t, db.CreateToken(ctx, &forge.Token{Name: "x"}), forge.EINVALID)
		tok := &forge.Token{Name: "ci", Hash: strings.Repeat("ab", 32), Admin: true}
		if err := db.CreateToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
		if tok.ID == 0 || tok.Created.IsZero() {
			t.Fatalf("CreateToken: got %+v, want an ID and a creation time", tok)
		}
		wantCode(t, db.CreateToken(ctx, &forge.Token{Name: "other", Hash: tok.Hash}), forge.ECONFLICT)
		second := &forge.Token{Name: "bot", Hash: strings.Repeat("cd", 32)}
		if err := db.CreateToken(ctx, second); err != nil {
			t.Fatal(err)
		}

		got, err := db.TokenByHash(ctx, tok.Hash)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, tok) {
			t.Fatalf("TokenByHash: got %+v, want %+v", got, tok)
		}
		_, err = db.TokenByHash(ctx, "ffff")
		wantCode(t, err, forge.ENOTFOUND)

		list, err := db.ListTokens(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 2 || list[0].Name != "ci" || list[1].Name != "bot" || list[1].Admin {
			t.Fatalf("ListTokens: got %+v", list)
		}
		if err := db.DeleteToken(ctx, tok.ID); err != nil {
			t.Fatal(err)
		}
		wantCode(t, db.DeleteToken(ctx, tok.ID), forge.ENOTFOUND)
		_, err = db.TokenByHash(ctx, tok.Hash)
		wantCode(t, err, forge.ENOTFOUND)
	})
}

func TestCreateBuild(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)
		rocket := mustRepo(t, db, "acme", "rocket")
		anvil := mustRepo(t, db, "acme", "anvil")

		hook := forge.Hook{Event: "pull_request", Action: "opened", Ref: "refs/pull/7/head", Branch: "feature",
			Target: "main", SHA: "abc123", PullRequest: 7, Paths: []string{"a.go", "b/c.go"}, Message: "fix \x00 it"}
		b := &forge.Build{RepoID: rocket.ID, Action: "execute", Hook: hook, DeliveryID: "del-1"}
		jobs := []*forge.BuildJob{
			{Name: "build", Steps: []*forge.BuildStep{{Index: 0, Name: "compile"}, {Index: 1, Name: "vet"}}},
			{Name: "test", Needs: []string{"build"}, Status: forge.StatusWaiting},
		}
		if err := db.CreateBuild(ctx, b, jobs); err != nil {
			t.Fatal(err)
		}
		if b.ID == 0 || b.Number != 1 || b.Version != 1 || b.Status != forge.StatusQueued || b.Created.IsZero() {
			t.Fatalf("CreateBuild: got id %d number %d version %d status %q created %v, want number 1, version 1, queued",
				b.ID, b.Number, b.Version, b.Status, b.Created)
		}
		for _, j := range jobs {
			if j.ID == 0 || j.BuildID != b.ID {
				t.Fatalf("job %s: got id %d build %d, want an id and build %d", j.Name, j.ID, j.BuildID, b.ID)
			}
		}
		if jobs[0].Status != forge.StatusPending || jobs[1].Status != forge.StatusWaiting {
			t.Fatalf("job statuses: got %q %q, want pending (default) and waiting", jobs[0].Status, jobs[1].Status)
		}

		got, err := db.Build(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, b) {
			t.Fatalf("Build: got\n%+v\nwant\n%+v", got, b)
		}
		if got.Hook.PullRequest != 7 || !reflect.DeepEqual(got.Hook.Paths, hook.Paths) || got.Hook.Message != hook.Message {
			t.Fatalf("stored hook: got %+v, want %+v", got.Hook, hook)
		}
		got, err = db.BuildByNumber(ctx, rocket.ID, 1)
		if err != nil || got.ID != b.ID {
			t.Fatalf("BuildByNumber(1): got %+v, %v; want build %d", got, err, b.ID)
		}
		_, err = db.BuildByNumber(ctx, anvil.ID, 1)
		wantCode(t, err, forge.ENOTFOUND)
		_, err = db.Build(ctx, 12345)
		wantCode(t, err, forge.ENOTFOUND)

		// The same delivery cannot build the same action twice, but may
		// build another action; builds without a delivery never conflict.
		dup := &forge.Build{RepoID: rocket.ID, Action: "execute", Hook: hook, DeliveryID: "del-1"}
		dupJobs := []*forge.BuildJob{{Name: "build"}}
		wantCode(t, db.CreateBuild(ctx, dup, dupJobs), forge.ECONFLICT)
		if dup.ID != 0 || dup.Number != 0 || dupJobs[0].ID != 0 {
			t.Fatalf("failed CreateBuild assigned ids: build %+v job %+v", dup, dupJobs[0])
		}
		for _, nb := range []*forge.Build{
			{RepoID: rocket.ID, Action: "deploy", Hook: hook, DeliveryID: "del-1"},
			{RepoID: rocket.ID, Action: "execute", Hook: hook},
			{RepoID: rocket.ID, Action: "execute", Hook: hook},
			{RepoID: anvil.ID, Action: "execute", Hook: hook, DeliveryID: "del-2"},
		} {
			if err := db.CreateBuild(ctx, nb, nil); err != nil {
				t.Fatalf("CreateBuild %+v: %v", nb, err)
			}
		}
		// Delivery IDs are global: another repository cannot reuse one either.
		wantCode(t, db.CreateBuild(ctx, &forge.Build{RepoID: anvil.ID, Action: "execute", DeliveryID: "del-1"}, nil), forge.ECONFLICT)
		// Numbers count per repository, without the gap of the failed create.
		list, err := db.ListBuilds(ctx, forge.BuildFilter{RepoID: rocket.ID, Ascending: true})
		if err != nil {
			t.Fatal(err)
		}
		var numbers []int64
		for _, b := range list {
			numbers = append(numbers, b.Number)
		}
		if want := []int64{1, 2, 3, 4}; !reflect.DeepEqual(numbers, want) {
			t.Fatalf("rocket's build numbers: got %v, want %v", numbers, want)
		}
		if b, err := db.BuildByNumber(ctx, anvil.ID, 1); err != nil || b.RepoID != anvil.ID {
			t.Fatalf("anvil's first build: got %+v, %v", b, err)
		}

		// A big matrix: past the 500-job and 1,000-step statement chunks.
		var many []*forge.BuildJob
		for i := range 620 {
			many = append(many, &forge.BuildJob{Name: fmt.Sprintf("test (shard=%03d)", i), Needs: []string{"build"},
				Steps: []*forge.BuildStep{{Index: 0, Name: "setup"}, {Index: 1, Name: fmt.Sprintf("run %d", i)}}})
		}
		big := &forge.Build{RepoID: anvil.ID, Action: "execute"}
		if err := db.CreateBuild(ctx, big, many); err != nil {
			t.Fatal(err)
		}
		stored, err := db.Jobs(ctx, big.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(stored) != len(many) {
			t.Fatalf("big build: got %d jobs, want %d", len(stored), len(many))
		}
		for i, j := range stored {
			if j.ID != many[i].ID || j.Name != many[i].Name || j.BuildID != big.ID || len(j.Steps) != 2 ||
				j.Steps[1].Name != fmt.Sprintf("run %d", i) || j.Steps[1].JobID != j.ID {
				t.Fatalf("big build job %d: got %+v (steps %+v), want %+v in creation order", i, j, j.Steps, many[i])
			}
		}
		wantCode(t, db.CreateBuild(ctx, &forge.Build{RepoID: anvil.ID, Action: "execute"},
			[]*forge.BuildJob{{Name: "a", Steps: []*forge.BuildStep{{Index: 0}, {Index: 0}}}}), forge.EINVALID)

		wantCode(t, db.CreateBuild(ctx, &forge.Build{RepoID: 9999, Action: "execute"}, nil), forge.ENOTFOUND)
		wantCode(t, db.CreateBuild(ctx, &forge.Build{RepoID: rocket.ID}, nil), forge.EINVALID)
		wantCode(t, db.CreateBuild(ctx, &forge.Build{RepoID: rocket.ID, Action: "execute"},
			[]*forge.BuildJob{{Name: "a"}, {Name: "a"}}), forge.EINVALID)
	})
}

func TestListBuilds(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)
		r1 := mustRepo(t, db, "acme", "one")
		r2 := mustRepo(t, db, "acme", "two")
		// Ten builds alternating between the repositories.
		var all []*forge.Build
		for i := range 10 {
			repo := r1
			if i%2 == 1 {
				repo = r2
			}
			hook := forge.Hook{Event: "push", Branch: "main", SHA: fmt.Sprintf("sha%d", i%3)}
			if i >= 6 {
				hook = forge.Hook{Event: "pull_request", Branch: "feat", PullRequest: 40 + i%2, SHA: "shapr"}
			}
			b := &forge.Build{RepoID: repo.ID, Action: "execute", Hook: hook, DeliveryID: fmt.Sprintf("d%d", i)}
			if i == 9 {
				// One delivery, two actions (build 4 is its execute).
				b.Action, b.DeliveryID, b.RepoID = "deploy", "d4", r2.ID
			}
			if err := db.CreateBuild(ctx, b, nil); err != nil {
				t.Fatal(err)
			}
			all = append(all, b)
		}
		set := func(i int, s forge.Status) {
			all[i].Status = s
			if err := db.UpdateBuild(ctx, all[i]); err != nil {
				t.Fatal(err)
			}
		}
		set(1, forge.StatusRunning)
		set(2, forge.StatusRunning)
		set(3, forge.StatusSuccess)
		set(4, forge.StatusFailure)

		idx := func(is ...int) []int64 {
			var out []int64
			for _, i := range is {
				out = append(out, all[i].ID)
			}
			return out
		}
		tests := []struct {
			name string
			f    forge.BuildFilter
			want []int64
		}{
			{"everything newest first", forge.BuildFilter{}, idx(9, 8, 7, 6, 5, 4, 3, 2, 1, 0)},
			{"ascending", forge.BuildFilter{Ascending: true}, idx(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)},
			{"repo", forge.BuildFilter{RepoID: r2.ID}, idx(9, 7, 5, 3, 1)},
			{"status", forge.BuildFilter{Status: forge.StatusRunning}, idx(2, 1)},
			{"statuses", forge.BuildFilter{Statuses: []forge.Status{forge.StatusRunning, forge.StatusSuccess}, Ascending: true}, idx(1, 2, 3)},
			{"status and statuses", forge.BuildFilter{Status: forge.StatusRunning, Statuses: []forge.Status{forge.StatusRunning, forge.StatusSuccess}}, idx(2, 1)},
			{"branch", forge.BuildFilter{Branch: "feat"}, idx(9, 8, 7, 6)},
			{"pull request", forge.BuildFilter{PullRequest: 41}, idx(9, 7)},
			{"action", forge.BuildFilter{Action: "deploy"}, idx(9)},
			{"sha", forge.BuildFilter{SHA: "sha1"}, idx(4, 1)},
			{"delivery", forge.BuildFilter{DeliveryID: "d4"}, idx(9, 4)},
			{"delivery and action", forge.BuildFilter{DeliveryID: "d4", Action: "deploy"}, idx(9)},
			{"repo and branch", forge.BuildFilter{RepoID: r1.ID, Branch: "main"}, idx(4, 2, 0)},
			{"limit", forge.BuildFilter{Limit: 3}, idx(9, 8, 7)},
			{"page before", forge.BuildFilter{Before: all[7].ID, Limit: 3}, idx(6, 5, 4)},
			{"page after", forge.BuildFilter{After: all[7].ID, Ascending: true}, idx(8, 9)},
			{"before and after", forge.BuildFilter{After: all[2].ID, Before: all[5].ID}, idx(4, 3)},
			{"no match", forge.BuildFilter{Branch: "nope"}, nil},
		}
		for _, tt := range tests {
			got, err := db.ListBuilds(ctx, tt.f)
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			var gotIDs []int64
			for _, b := range got {
				gotIDs = append(gotIDs, b.ID)
			}
			if !reflect.DeepEqual(gotIDs, tt.want) {
				t.Errorf("%s: got %v, want %v", tt.name, gotIDs, tt.want)
			}
		}
		got, err := db.ListBuilds(ctx, forge.BuildFilter{Status: forge.StatusFailure})
		if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], all[4]) {
			t.Fatalf("listed build: got %+v (%v), want %+v", got, err, all[4])
		}
	})
}

func TestListBuildsLimits(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)
		r := mustRepo(t, db, "acme", "many")
		// Insert past the maximum in one statement; CreateBuild's own
		// behaviour is covered elsewhere.
		n := forge.MaxBuildLimit + 5
		_, err := db.sqlDB().ExecContext(ctx, db.q(`WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?)
			INSERT INTO builds (repo_id, number, action, status, hook, created, version)
			SELECT ?, i, 'execute', 'queued', '{}', 1, 1 FROM seq`), n, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct {
			limit, want int
		}{{0, forge.DefaultBuildLimit}, {-1, forge.DefaultBuildLimit}, {7, 7}, {forge.MaxBuildLimit + 100, forge.MaxBuildLimit}} {
			got, err := db.ListBuilds(ctx, forge.BuildFilter{Limit: tt.limit})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tt.want {
				t.Errorf("Limit %d: got %d builds, want %d", tt.limit, len(got), tt.want)
			}
		}
		// Paging with Before visits every build once.
		seen := map[int64]bool{}
		var before int64
		for {
			page, err := db.ListBuilds(ctx, forge.BuildFilter{Before: before, Limit: 300})
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			for _, b := range page {
				if seen[b.ID] {
					t.Fatalf("build %d listed twice", b.ID)
				}
				seen[b.ID] = true
			}
			before = page[len(page)-1].ID
		}
		if len(seen) != n {
			t.Fatalf("paging saw %d builds, want %d", len(seen), n)
		}
	})
}

func TestUpdateBuildOptimisticLocking(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)
		r := mustRepo(t, db, "acme", "rocket")
		b, _ := mustBuild(t, db, r, forge.Hook{Event: "push"}, "build")

		a, err := db.Build(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		c, err := db.Build(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		a.Status, a.Started = forge.StatusRunning, at(1)
		if err := db.UpdateBuild(ctx, a); err != nil {
			t.Fatal(err)
		}
		if a.Version != 2 {
			t.Fatalf("version after update: got %d, want 2", a.Version)
		}
		c.Status = forge.StatusCanceled
		err = db.UpdateBuild(ctx, c)
		wantCode(t, err, forge.ECONFLICT)
		if c.Version != 1 {
			t.Fatalf("version after a conflict: got %d, want 1 (unchanged)", c.Version)
		}
		got, err := db.Build(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != forge.StatusRunning || got.Version != 2 || !got.Started.Equal(at(1)) {
			t.Fatalf("stored build after conflict: got %+v, want running, version 2", got)
		}
		got.Status, got.Finished, got.Error = forge.StatusError, at(5), "server restarted \x00\xff"
		if err := db.UpdateBuild(ctx, got); err != nil {
			t.Fatal(err)
		}
		again, err := db.Build(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Error != "server restarted \uFFFD\uFFFD" {
			t.Fatalf("UpdateBuild stored error %q, want NUL and bad UTF-8 replaced", got.Error)
		}
		if !reflect.DeepEqual(again, got) {
			t.Fatalf("after second update: got %+v, want %+v", again, got)
		}
		wantCode(t, db.UpdateBuild(ctx, &forge.Build{ID: 999, Status: forge.StatusRunning, Version: 1}), forge.ENOTFOUND)
		wantCode(t, db.UpdateBuild(ctx, &forge.Build{ID: b.ID, Version: again.Version}), forge.EINVALID)

		// Racing updaters of one version: exactly one wins.
		base, err := db.Build(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Go(func() {
				mine := *base
				mine.Status = forge.StatusQueued
				errs[i] = db.UpdateBuild(ctx, &mine)
			})
		}
		wg.Wait()
		wins := 0
		for _, err := range errs {
			switch forge.ErrorCode(err) {
			case "":
				wins++
			case forge.ECONFLICT:
			default:
				t.Fatalf("racing UpdateBuild: %v", err)
			}
		}
		if wins != 1 {
			t.Fatalf("racing UpdateBuild: %d won, want exactly 1", wins)
		}
	})
}

func TestJobsAndSteps(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)
		r := mustRepo(t, db, "acme", "rocket")
		b, jobs := mustBuild(t, db, r, forge.Hook{Event: "push"}, "build", "test", "lint")
		empty, _ := mustBuild(t, db, r, forge.Hook{Event: "push"})

		got, err := db.Jobs(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 || got[0].Name != "build" || got[1].Name != "test" || got[2].Name != "lint" {
			t.Fatalf("Jobs: got %+v, want build, test, lint", got)
		}
		none, err := db.Jobs(ctx, empty.ID)
		if err != nil || len(none) != 0 {
			t.Fatalf("Jobs of a build without jobs: got %v, %v; want none", none, err)
		}
		_, err = db.Jobs(ctx, 9999)
		wantCode(t, err, forge.ENOTFOUND)

		test := jobs[1]
		for _, s := range []*forge.BuildStep{
			{JobID: test.ID, Index: 1, Name: "unit", Status: forge.StatusPending},
			{JobID: test.ID, Index: 0, Name: "setup", Status: forge.StatusRunning, Started: at(1)},
		} {
			if err := db.SaveStep(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
		// Updating a step replaces it.
		setup := &forge.BuildStep{JobID: test.ID, Index: 0, Name: "setup", Status: forge.StatusSuccess, Started: at(1), Finished: at(2),
			FirstLine: 3, LastLine: 70}
		if err := db.SaveStep(ctx, setup); err != nil {
			t.Fatal(err)
		}
		wantCode(t, db.SaveStep(ctx, &forge.BuildStep{JobID: 9999, Index: 0, Name: "x"}), forge.ENOTFOUND)
		wantCode(t, db.SaveStep(ctx, &forge.BuildStep{JobID: test.ID, Index: -1, Name: "x"}), forge.EINVALID)
		wantCode(t, db.SaveStep(ctx, &forge.BuildStep{JobID: test.ID, Index: 2, Name: "x", FirstLine: -1}), forge.EINVALID)

		test.Status, test.Attempt, test.ExitCode, test.Error = forge.StatusFailure, 2, 3, "exit status 3"
		test.Started, test.Finished, test.Backend, test.Handle = at(1), at(9), "docker", []byte(`{"container":"c1"}`)
		if err := db.UpdateJob(ctx, test); err != nil {
			t.Fatal(err)
		}
		wantCode(t, db.UpdateJob(ctx, &forge.BuildJob{ID: 9999, Status: forge.StatusRunning}), forge.ENOTFOUND)
		wantCode(t, db.UpdateJob(ctx, &forge.BuildJob{ID: test.ID}), forge.EINVALID)

		one, err := db.Job(ctx, test.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := *test
		want.Steps = []*forge.BuildStep{
			setup,
			{JobID: test.ID, Index: 1, Name: "unit", Status: forge.StatusPending},
		}
		if !reflect.DeepEqual(one, &want) {
			t.Fatalf("Job: got\n%+v\nwant\n%+v", one, &want)
		}
		if !reflect.DeepEqual(one.Steps[0], setup) {
			t.Fatalf("step 0: got %+v, want %+v", one.Steps[0], setup)
		}
		_, err = db.Job(ctx, 9999)
		wantCode(t, err, forge.ENOTFOUND)

		got, err = db.Jobs(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got[1], &want) || len(got[0].Steps) != 0 || len(got[2].Steps) != 0 {
			t.Fatalf("Jobs after updates: got %+v / %+v / %+v", got[0], got[1], got[2])
		}

		// Needs survive, and steps given to CreateBuild are stored.
		b2 := &forge.Build{RepoID: r.ID, Action: "execute"}
		j2 := []*forge.BuildJob{{Name: "deploy", Needs: []string{"build", "test"},
			Steps: []*forge.BuildStep{{Index: 0, Name: "push", FirstLine: 5, LastLine: 4}}}}
		if err := db.CreateBuild(ctx, b2, j2); err != nil {
			t.Fatal(err)
		}
		d, err := db.Job(ctx, j2[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(d.Needs, []string{"build", "test"}) || len(d.Steps) != 1 || d.Steps[0].Name != "push" || d.Steps[0].Status != forge.StatusPending ||
			d.Steps[0].FirstLine != 5 || d.Steps[0].LastLine != 4 {
			t.Fatalf("created job: got %+v with steps %+v", d, d.Steps)
		}

		// JobsByStatus, paged by ID.
		jobs[0].Status = forge.StatusRunning
		jobs[2].Status = forge.StatusWaiting
		for _, j := range []*forge.BuildJob{jobs[0], jobs[2]} {
			if err := db.UpdateJob(ctx, j); err != nil {
				t.Fatal(err)
			}
		}
		active, err := db.JobsByStatus(ctx, 0, forge.StatusRunning, forge.StatusWaiting)
		if err != nil {
			t.Fatal(err)
		}
		if len(active) != 2 || active[0].ID != jobs[0].ID || active[1].ID != jobs[2].ID {
			t.Fatalf("JobsByStatus(running, waiting): got %+v", active)
		}
		later, err := db.JobsByStatus(ctx, jobs[0].ID, forge.StatusRunning, forge.StatusWaiting)
		if err != nil || len(later) != 1 || later[0].ID != jobs[2].ID {
			t.Fatalf("JobsByStatus after %d: got %+v, %v", jobs[0].ID, later, err)
		}
		_, err = db.JobsByStatus(ctx, 0)
		wantCode(t, err, forge.EINVALID)
	})
}

func TestLogs(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)
		r := mustRepo(t, db, "acme", "rocket")
		_, jobs := mustBuild(t, db, r, forge.Hook{Event: "push"}, "build", "test")
		job := jobs[0].ID

		if n, err := db.LogLen(ctx, job); err != nil || n != 0 {
			t.Fatalf("LogLen of an empty log: got %d, %v; want 0", n, err)
		}
		if got, err := db.Lines(ctx, job, 1, 0); err != nil || len(got) != 0 {
			t.Fatalf("Lines of an empty log: got %v, %v; want none", got, err)
		}
		// A batch big enough for PostgreSQL's COPY path, then small ones.
		const total = 1000
		var lines []forge.LogLine
		for i := 1; i <= total; i++ {
			stream := forge.Stream("stdout")
			if i%10 == 0 {
				stream = "stderr"
			}
			lines = append(lines, forge.LogLine{Number: i, Time: at(i % 60), Stream: stream, Text: fmt.Sprintf("line %d", i)})
		}
		if err := db.Append(ctx, job, lines[:700]); err != nil {
			t.Fatal(err)
		}
		for start := 700; start < total; start += 7 {
			if err := db.Append(ctx, job, lines[start:min(start+7, total)]); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := db.LogLen(ctx, job); err != nil || n != total {
			t.Fatalf("LogLen: got %d, %v; want %d", n, err, total)
		}

		tests := []struct {
			from, limit  int
			first, count int
		}{
			{1, 0, 1, total},
			{0, 10, 1, 9}, // from < 1 starts at the first line; the range is [0, 10)
			{-5, 0, 1, total},
			{500, 100, 500, 100},
			{995, 100, 995, 6},
			{1001, 10, 0, 0},
			{250, 1, 250, 1},
		}
		for _, tt := range tests {
			got, err := db.Lines(ctx, job, tt.from, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tt.count {
				t.Fatalf("Lines(%d, %d): got %d lines, want %d", tt.from, tt.limit, len(got), tt.count)
			}
			for i, l := range got {
				if want := lines[tt.first-1+i]; !reflect.DeepEqual(l, want) {
					t.Fatalf("Lines(%d, %d)[%d]: got %+v, want %+v", tt.from, tt.limit, i, l, want)
				}
			}
		}

		// A batch overlapping stored lines fails whole.
		overlap := []forge.LogLine{{Number: 1001, Text: "new"}, {Number: 1000, Text: "again"}}
		wantCode(t, db.Append(ctx, job, overlap), forge.ECONFLICT)
		big := make([]forge.LogLine, 100) // the COPY path on PostgreSQL
		for i := range big {
			big[i] = forge.LogLine{Number: 1001 + i, Text: "x"}
		}
		big[99].Number = 5
		wantCode(t, db.Append(ctx, job, big), forge.ECONFLICT)
		if n, _ := db.LogLen(ctx, job); n != total {
			t.Fatalf("LogLen after failed appends: got %d, want %d (nothing stored)", n, total)
		}
		wantCode(t, db.Append(ctx, 9999, lines[:1]), forge.ENOTFOUND)
		wantCode(t, db.Append(ctx, 9999, big[:80]), forge.ENOTFOUND)
		wantCode(t, db.Append(ctx, job, []forge.LogLine{{Number: 0, Text: "x"}}), forge.EINVALID)
		_, err := db.Lines(ctx, 9999, 1, 0)
		wantCode(t, err, forge.ENOTFOUND)
		_, err = db.LogLen(ctx, 9999)
		wantCode(t, err, forge.ENOTFOUND)
		if err := db.Append(ctx, job, nil); err != nil {
			t.Fatalf("Append of no lines: %v", err)
		}

		// Text PostgreSQL cannot hold comes back the same from both.
		other := jobs[1].ID
		odd := []forge.LogLine{
			{Number: 1, Text: "nul\x00byte"},
			{Number: 2, Text: "bad \xff\xfe utf8"},
			{Number: 3, Text: "\x1b[31mred\x1b[0m ünïcode ✓"},
			{Number: 4, Text: ""},
		}
		if err := db.Append(ctx, other, odd); err != nil {
			t.Fatal(err)
		}
		if odd[0].Text != "nul\x00byte" || !odd[0].Time.IsZero() {
			t.Fatalf("Append changed the caller's line: %+v", odd[0])
		}
		got, err := db.Lines(ctx, other, 1, 0)
		if err != nil {
			t.Fatal(err)
		}
		wantTexts := []string{"nul\uFFFDbyte", "bad \uFFFD utf8", "\x1b[31mred\x1b[0m ünïcode ✓", ""}
		for i, l := range got {
			if l.Text != wantTexts[i] || l.Time.IsZero() {
				t.Errorf("odd line %d: got %q at %v, want %q and a time", i+1, l.Text, l.Time, wantTexts[i])
			}
		}
	})
}

// TestConcurrentBuildNumbers creates builds of one repository from many
// goroutines over two separate handles (two pools, as two server replicas
// or processes would have): numbers are unique and contiguous, and no
// writer sees SQLITE_BUSY or a serialization error.
func TestConcurrentBuildNumbers(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		cfg := testConfig(t, kind)
		a := openTest(t, cfg)
		if _, err := a.Migrate(ctx, "up"); err != nil {
			t.Fatal(err)
		}
		b := openTest(t, cfg)
		repo := mustRepo(t, a, "acme", "busy")
		const workers, each = 8, 15
		var mu sync.Mutex
		var numbers []int64
		var wg sync.WaitGroup
		errs := make(chan error, workers*each)
		for w := range workers {
			db := a
			if w%2 == 1 {
				db = b
			}
			wg.Go(func() {
				for i := range each {
					build := &forge.Build{RepoID: repo.ID, Action: "execute", DeliveryID: fmt.Sprintf("w%d-%d", w, i)}
					jobs := []*forge.BuildJob{{Name: "build"}}
					if err := db.CreateBuild(ctx, build, jobs); err != nil {
						errs <- err
						return
					}
					// Mixed writers: logs and updates beside the creates.
					if err := db.Append(ctx, jobs[0].ID, []forge.LogLine{{Number: 1, Text: "hi"}}); err != nil {
						errs <- err
						return
					}
					build.Status = forge.StatusRunning
					if err := db.UpdateBuild(ctx, build); err != nil {
						errs <- err
						return
					}
					mu.Lock()
					numbers = append(numbers, build.Number)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("concurrent writer: %v", err)
		}
		sort.Slice(numbers, func(i, k int) bool { return numbers[i] < numbers[k] })
		for i, n := range numbers {
			if n != int64(i+1) {
				t.Fatalf("build numbers: got %v, want 1..%d each once", numbers, workers*each)
			}
		}
		if len(numbers) != workers*each {
			t.Fatalf("got %d builds, want %d", len(numbers), workers*each)
		}
	})
}

func TestCanceledContext(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		db := newTestDB(t, kind)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := db.ListRepos(ctx)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("ListRepos with a canceled context: got %v, want context.Canceled in the chain", err)
		}
		wantCode(t, err, forge.ECANCELED)
		wantCode(t, db.UpsertRepo(ctx, &forge.Repo{Owner: "a", Name: "b"}), forge.ECANCELED)
	})
}

// TestSQLiteWaitsForOtherWriters: while another connection (as another
// process would) holds SQLite's write lock, writers wait for it instead of
// failing with SQLITE_BUSY.
func TestSQLiteWaitsForOtherWriters(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, "sqlite")
	db := openTest(t, cfg)
	if _, err := db.Migrate(ctx, "up"); err != nil {
		t.Fatal(err)
	}
	other := openTest(t, cfg)
	repo := mustRepo(t, db, "acme", "locked")

	tx, err := other.sqlDB().BeginTx(ctx, nil) // BEGIN IMMEDIATE: takes the write lock
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE repos SET clone_url = 'held' WHERE id = ?", repo.ID); err != nil {
		t.Fatal(err)
	}
	const hold = 300 * time.Millisecond
	released := make(chan time.Time, 1)
	go func() {
		time.Sleep(hold)
		released <- time.Now()
		tx.Commit()
	}()
	began := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			errs[i] = db.CreateBuild(ctx, &forge.Build{RepoID: repo.ID, Action: "execute"}, []*forge.BuildJob{{Name: "build"}})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("writer during another connection's write lock: %v", err)
		}
	}
	finished := time.Now()
	if at := <-released; finished.Before(at) {
		t.Fatalf("writers finished %v after starting, before the lock was released", finished.Sub(began))
	}
	got, err := db.Repo(ctx, repo.ID)
	if err != nil || got.CloneURL != "held" {
		t.Fatalf("the other connection's write: got %+v, %v", got, err)
	}
}

// TestRunnerAndHeartbeat: a build's Runner and Heartbeat are stored by
// CreateBuild and UpdateBuild, read by Build and ListBuilds, and
// TouchBuilds refreshes only running builds of the named runner, forward
// only, without changing their version.
func TestRunnerAndHeartbeat(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		ctx := context.Background()
		db := newTestDB(t, kind)
		r := mustRepo(t, db, "acme", "rocket")
		pre := &forge.Build{RepoID: r.ID, Action: "execute", Status: forge.StatusRunning, Runner: "host-a:1", Heartbeat: at(1)}
		if err := db.CreateBuild(ctx, pre, nil); err != nil {
			t.Fatal(err)
		}
		if got, err := db.Build(ctx, pre.ID); err != nil || got.Runner != "host-a:1" || !got.Heartbeat.Equal(at(1)) {
			t.Fatalf("created build: got %+v, %v; want runner host-a:1, heartbeat %v", got, err, at(1))
		}
		mine, _ := mustBuild(t, db, r, forge.Hook{Event: "push"}, "build")
		theirs, _ := mustBuild(t, db, r, forge.Hook{Event: "push"}, "build")
		done, _ := mustBuild(t, db, r, forge.Hook{Event: "push"}, "build")
		if !mine.Heartbeat.IsZero() || mine.Runner != "" {
			t.Fatalf("new build: runner %q heartbeat %v, want none", mine.Runner, mine.Heartbeat)
		}
		for _, c := range []struct {
			b      *forge.Build
			runner string
			status forge.Status
		}{{mine, "host-a:1", forge.StatusRunning}, {theirs, "host-b:2", forge.StatusRunning}, {done, "host-a:1", forge.StatusSuccess}} {
			c.b.Status, c.b.Runner, c.b.Heartbeat = c.status, c.runner, at(2)
			if err := db.UpdateBuild(ctx, c.b); err != nil {
				t.Fatal(err)
			}
		}
		list, err := db.ListBuilds(ctx, forge.BuildFilter{RepoID: r.ID, Ascending: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 4 || !reflect.DeepEqual(list[1], mine) || !reflect.DeepEqual(list[2], theirs) {
			t.Fatalf("ListBuilds: got %+v, want the stored runners and heartbeats of %+v and %+v", list, mine, theirs)
		}

		if err := db.TouchBuilds(ctx, "host-a:1", []int64{mine.ID, theirs.ID, done.ID, pre.ID, 99999}, at(9)); err != nil {
			t.Fatal(err)
		}
		want := map[int64]time.Time{pre.ID: at(9), mine.ID: at(9), theirs.ID: at(2), done.ID: at(2)}
		versions := map[int64]int64{pre.ID: pre.Version, mine.ID: mine.Version, theirs.ID: theirs.Version, done.ID: done.Version}
		check := func(when string) {
			t.Helper()
			for id, beat := range want {
				got, err := db.Build(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				if !got.Heartbeat.Equal(beat) || got.Version != versions[id] {
					t.Errorf("%s: build %d heartbeat %v version %d, want %v, version %d (unchanged)", when, id, got.Heartbeat, got.Version, beat, versions[id])
				}
			}
		}
		check("after TouchBuilds")
		// Never backwards; nothing to touch is no error.
		if err := db.TouchBuilds(ctx, "host-a:1", []int64{mine.ID}, at(5)); err != nil {
			t.Fatal(err)
		}
		if err := db.TouchBuilds(ctx, "host-a:1", nil, at(5)); err != nil {
			t.Fatal(err)
		}
		check("after an older TouchBuilds")
		// A touch leaves the optimistic lock alone: the runner's own
		// update of the version it read still succeeds.
		mine.Status, mine.Finished = forge.StatusSuccess, at(10)
		if err := db.UpdateBuild(ctx, mine); err != nil {
			t.Fatalf("UpdateBuild after TouchBuilds: %v", err)
		}
		wantCode(t, db.TouchBuilds(ctx, "", []int64{mine.ID}, at(5)), forge.EINVALID)
		wantCode(t, db.TouchBuilds(ctx, "host-a:1", []int64{mine.ID}, time.Time{}), forge.EINVALID)

		// Past one statement's chunk of ids.
		var many []int64
		for i := range 1200 {
			many = append(many, int64(100000+i))
		}
		many = append(many, pre.ID)
		if err := db.TouchBuilds(ctx, "host-a:1", many, at(20)); err != nil {
			t.Fatal(err)
		}
		if got, _ := db.Build(ctx, pre.ID); !got.Heartbeat.Equal(at(20)) {
			t.Errorf("TouchBuilds of 1201 ids: heartbeat %v, want %v", got.Heartbeat, at(20))
		}
	})
}
