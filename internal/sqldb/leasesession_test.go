package sqldb

import (
	"context"
	"database/sql"
	"fmt"
	"testing"

	"github.com/forgeci/forge"
)

// TestLeaseSessions: rows upserted and deleted in one transaction come
// back as written, across more rows than one statement takes.
func TestLeaseSessions(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		db := newTestDB(t, kind)
		ctx := context.Background()
		s := &LeaseSessionStore{DB: db}
		first := map[string][]byte{}
		for i := range 450 {
			first[fmt.Sprintf("S%04d", i)] = []byte(fmt.Sprintf(`{"n":%d}`, i))
		}
		if err := s.WriteLeaseSessions(ctx, first); err != nil {
			t.Fatal(err)
		}
		second := map[string][]byte{"S0000": []byte(`{"n":"changed"}`), "S0001": nil, "Sgone": nil}
		for i := 100; i < 350; i++ {
			second[fmt.Sprintf("S%04d", i)] = nil
		}
		if err := s.WriteLeaseSessions(ctx, second); err != nil {
			t.Fatal(err)
		}
		got, err := s.LeaseSessions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 450-1-250 {
			t.Fatalf("got %d sessions, want %d", len(got), 450-1-250)
		}
		if string(got["S0000"]) != `{"n":"changed"}` || string(got["S0449"]) != `{"n":449}` || got["S0001"] != nil || got["S0100"] != nil {
			t.Fatalf("rows not as written: S0000=%s S0449=%s S0001=%s", got["S0000"], got["S0449"], got["S0001"])
		}
		wantCode(t, s.WriteLeaseSessions(ctx, map[string][]byte{"": []byte("{}")}), forge.EINVALID)
	})
}

// TestLeaseSessionsFence: a fence that refuses rolls the whole
// transaction back and its error comes back as is.
func TestLeaseSessionsFence(t *testing.T) {
	eachDialect(t, func(t *testing.T, kind string) {
		db := newTestDB(t, kind)
		ctx := context.Background()
		calls := 0
		s := &LeaseSessionStore{DB: db, Fence: func(ctx context.Context, tx *sql.Tx) error {
			calls++
			if calls > 1 {
				return forge.Errorf(forge.ECONFLICT, "not the leader")
			}
			return nil
		}}
		if err := s.WriteLeaseSessions(ctx, map[string][]byte{"S1": []byte(`1`)}); err != nil {
			t.Fatal(err)
		}
		err := s.WriteLeaseSessions(ctx, map[string][]byte{"S1": nil, "S2": []byte(`2`)})
		wantCode(t, err, forge.ECONFLICT)
		got, _ := s.LeaseSessions(ctx)
		if len(got) != 1 || string(got["S1"]) != "1" {
			t.Fatalf("a fenced write changed rows: %v", got)
		}
	})
}
