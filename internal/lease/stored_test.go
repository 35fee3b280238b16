package lease

import (
	"context"
	"encoding/json"
	"sort"
	"testing"

	"github.com/forgeci/forge"
)

// memStore is a PoolStore in memory, keeping JSON as the SQL store does.
type memStore struct {
	pools   map[string][]byte
	deleted map[string]bool
}

func newMemStore() *memStore {
	return &memStore{pools: map[string][]byte{}, deleted: map[string]bool{}}
}

func (s *memStore) LeasePools(ctx context.Context) ([]*forge.Pool, []string, error) {
	var out []*forge.Pool
	for _, data := range s.pools {
		p := new(forge.Pool)
		if err := json.Unmarshal(data, p); err != nil {
			return nil, nil, err
		}
		out = append(out, p)
	}
	var del []string
	for n := range s.deleted {
		del = append(del, n)
	}
	sort.Strings(del)
	return out, del, nil
}

func (s *memStore) SaveLeasePool(ctx context.Context, p *forge.Pool) error {
	data, _ := json.Marshal(p)
	s.pools[p.Name] = data
	delete(s.deleted, p.Name)
	return nil
}

func (s *memStore) DeleteLeasePool(ctx context.Context, name string) error {
	delete(s.pools, name)
	s.deleted[name] = true
	return nil
}

// restart builds a new manager from the store and config, as forge server
// does at start.
func restart(t *testing.T, store PoolStore, config string, precedence string) *StoredPools {
	t.Helper()
	pools, _ := poolsFromYAML(t, config)
	seeded, err := SeedPools(context.Background(), store, pools, precedence)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMemory(seeded, MemoryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return NewStoredPools(m, store)
}

// TestPoolsSurviveRestart: pools created, changed, disabled and deleted
// through the Manager are there after a restart; the configuration seeds
// pools and wins on conflict only when told to.
func TestPoolsSurviveRestart(t *testing.T) {
	ctx := context.Background()
	store := newMemStore()
	const config = "pools: {dut: {resources: [{id: d1}, {id: d2}]}, ports: {range: 1-2}}"
	m := restart(t, store, config, "")
	if _, err := m.PutPool(ctx, &forge.Pool{Name: "acct", Order: "fill", Resources: []*forge.Resource{{ID: "a1", Labels: map[string]string{"k": "v"}}}}); err != nil {
		t.Fatal(err)
	}
	if err := m.SetDisabled(ctx, "dut", "d2", true, "rack moved"); err != nil {
		t.Fatal(err)
	}
	if err := m.DeletePool(ctx, "ports"); err != nil {
		t.Fatal(err)
	}

	m = restart(t, store, config, PrecedenceStore)
	pools, _ := m.Pools(ctx)
	names := ""
	for _, p := range pools {
		names += p.Name + " "
	}
	if names != "acct dut " {
		t.Fatalf("after restart, store wins: got pools %q, want acct and dut (ports stays deleted)", names)
	}
	acct, _ := m.Pool(ctx, "acct")
	if acct.Order != OrderFill || acct.Resources[0].Labels["k"] != "v" {
		t.Fatalf("acct after restart: %+v", acct)
	}
	dut, _ := m.Pool(ctx, "dut")
	if d2 := dut.Resources[1]; d2.State != StateDisabled || d2.DisabledBy != DisabledOperator || d2.DisabledReason != "rack moved" || d2.DisabledSince == nil {
		t.Fatalf("d2 after restart: got %+v, want disabled by the operator, with the reason and since when", d2)
	}

	// The configuration wins: its pools come back as written; acct, which
	// it does not declare, stays.
	m = restart(t, store, config, PrecedenceConfig)
	pools, _ = m.Pools(ctx)
	names = ""
	for _, p := range pools {
		names += p.Name + " "
	}
	if names != "acct dut ports " {
		t.Fatalf("after restart, config wins: got pools %q", names)
	}
	dut, _ = m.Pool(ctx, "dut")
	if dut.Resources[1].State != StateFree {
		t.Fatalf("d2 with the config winning: got %+v, want free as the file says", dut.Resources[1])
	}
	if _, err := SeedPools(ctx, store, nil, "file"); forge.ErrorCode(err) != forge.EINVALID {
		t.Fatalf("bad precedence: got %v, want invalid", err)
	}
}
