package lease

import (
	"context"
	"sync"
	"time"

	"github.com/forgeci/forge"
)

// PoolStore keeps pool definitions across restarts (pools as data); the
// SQL store implements it. Deleted pools are kept as tombstones, so that a
// pool deleted through the API stays deleted when the configuration file
// still declares it.
type PoolStore interface {
	// LeasePools returns the kept pools and the names of deleted ones.
	LeasePools(ctx context.Context) (pools []*forge.Pool, deleted []string, err error)
	// SaveLeasePool keeps p, replacing what was kept of it.
	SaveLeasePool(ctx context.Context, p *forge.Pool) error
	// DeleteLeasePool records that the pool was deleted.
	DeleteLeasePool(ctx context.Context, name string) error
}

// Which side wins when the configuration file and the store both define
// a pool (Config.PoolPrecedence).
const (
	// PrecedenceStore: the store's version (edits made through the API,
	// deletions included) wins; the file only seeds pools the store has
	// never had. The default.
	PrecedenceStore = "store"
	// PrecedenceConfig: the file's version replaces the store's at every
	// start; pools created through the API and absent from the file stay.
	PrecedenceConfig = "config"
)

// SeedPools merges the configuration's pools with the store's, as
// precedence says, writes the configuration's pools that win to the
// store, and returns the pools to serve, by name.
func SeedPools(ctx context.Context, store PoolStore, config []*forge.Pool, precedence string) ([]*forge.Pool, error) {
	if precedence == "" {
		precedence = PrecedenceStore
	}
	if precedence != PrecedenceStore && precedence != PrecedenceConfig {
		return nil, forge.Errorf(forge.EINVALID, "lease.pool_precedence %q: want %q or %q", precedence, PrecedenceStore, PrecedenceConfig)
	}
	stored, deleted, err := store.LeasePools(ctx)
	if err != nil {
		return nil, err
	}
	byName := map[string]*forge.Pool{}
	for _, p := range stored {
		if err := checkPool(p); err != nil {
			return nil, forge.Errorf(forge.EINVALID, "stored pool %q: %s", p.Name, forge.ErrorMessage(err))
		}
		byName[p.Name] = p
	}
	gone := map[string]bool{}
	for _, n := range deleted {
		gone[n] = true
	}
	for _, p := range config {
		_, have := byName[p.Name]
		if precedence == PrecedenceStore && (have || gone[p.Name]) {
			continue
		}
		if old := byName[p.Name]; old != nil {
			p = withFaults(p, old)
		}
		if err := store.SaveLeasePool(ctx, p); err != nil {
			return nil, err
		}
		byName[p.Name] = p
	}
	out := make([]*forge.Pool, 0, len(byName))
	for _, n := range sortedKeys(byName) {
		out = append(out, byName[n])
	}
	return out, nil
}

// StoredPools is a Manager whose pool edits (PutPool, DeletePool,
// SetDisabled) are also kept in a PoolStore, so that they survive a
// restart. An edit is made in the Manager first; when keeping it fails
// the error says so (EINTERNAL or the store's code) and the edit stays in
// force until the restart.
type StoredPools struct {
	Manager
	store PoolStore
	mu    sync.Mutex // edits of the store happen in the Manager's order
}

// NewStoredPools wraps m.
func NewStoredPools(m Manager, store PoolStore) *StoredPools {
	return &StoredPools{Manager: m, store: store}
}

// PutPool implements Admin.
func (s *StoredPools) PutPool(ctx context.Context, p *forge.Pool) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	created, err := s.Manager.PutPool(ctx, p)
	if err != nil {
		return created, err
	}
	return created, s.keep(ctx, p.Name)
}

// DeletePool implements Admin.
func (s *StoredPools) DeletePool(ctx context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.Manager.DeletePool(ctx, name); err != nil {
		return err
	}
	return s.kept(s.store.DeleteLeasePool(ctx, name), name)
}

// SetDisabled implements Admin.
func (s *StoredPools) SetDisabled(ctx context.Context, pool, resource string, disabled bool, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.Manager.SetDisabled(ctx, pool, resource, disabled, reason); err != nil {
		return err
	}
	return s.keep(ctx, pool)
}

// ReleaseBroken implements Health: the faults it makes are kept.
func (s *StoredPools) ReleaseBroken(ctx context.Context, owner, leaseID, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// The lease's pools, read before it ends (a lease of a session may
	// move, but only its owner can release it: no race that matters).
	var pools []string
	if ls, err := s.Manager.Leases(ctx); err == nil {
		for _, l := range ls {
			if l.ID == leaseID {
				pools = sortedKeys(l.Resources)
			}
		}
	}
	if err := s.Manager.ReleaseBroken(ctx, owner, leaseID, reason); err != nil {
		return err
	}
	for _, p := range pools {
		if err := s.keep(ctx, p); err != nil && forge.ErrorCode(err) != forge.ENOTFOUND {
			return err
		}
	}
	return nil
}

// FinishCheck implements Health: a fault a check makes or ends is kept.
func (s *StoredPools) FinishCheck(ctx context.Context, job *CheckJob, result *CheckResult) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed, err := s.Manager.FinishCheck(ctx, job, result)
	if err != nil || !changed {
		return changed, err
	}
	if err := s.keep(ctx, job.Pool); err != nil && forge.ErrorCode(err) != forge.ENOTFOUND {
		return changed, err
	}
	return changed, nil
}

// keep saves pool name as the Manager now defines it.
func (s *StoredPools) keep(ctx context.Context, name string) error {
	st, err := s.Manager.Pool(ctx, name)
	if err != nil {
		return err
	}
	p := &forge.Pool{Name: st.Name, Order: st.Order}
	if st.MaxGrace != "" {
		d, err := time.ParseDuration(st.MaxGrace)
		if err != nil {
			return forge.Errorf(forge.EINTERNAL, "pool %q: max_grace %q: %v", name, st.MaxGrace, err)
		}
		p.MaxGrace = d
	}
	check, err := st.Check.poolCheck(st.Name)
	if err != nil {
		return err
	}
	p.Check = check
	for _, r := range st.Resources {
		if r.Removing {
			continue
		}
		kept := &forge.Resource{ID: r.ID, Attributes: r.Attributes, Labels: r.Labels, Disabled: r.Disabled, Fault: r.Fault}
		if r.Disabled {
			kept.DisabledReason = r.DisabledReason
			if r.DisabledSince != nil {
				kept.DisabledSince = *r.DisabledSince
			}
		}
		p.Resources = append(p.Resources, kept)
	}
	return s.kept(s.store.SaveLeasePool(ctx, p), name)
}

func (s *StoredPools) kept(err error, name string) error {
	if err == nil {
		return nil
	}
	code := forge.ErrorCode(err)
	return forge.WrapError(code, err, "pool "+name+" was changed, but keeping the change in the store failed (it is lost at the next restart): "+forge.ErrorMessage(err))
}

// withFaults is p with the faults old's resources of the same ids have (a
// holder's report or a failed check outlives a reset to the file's
// definition; the check, if any, decides again).
func withFaults(p, old *forge.Pool) *forge.Pool {
	faults := map[string]*forge.ResourceFault{}
	for _, r := range old.Resources {
		if r.Fault != nil {
			faults[r.ID] = r.Fault
		}
	}
	if len(faults) == 0 {
		return p
	}
	c := *p
	c.Resources = make([]*forge.Resource, len(p.Resources))
	for i, r := range p.Resources {
		c.Resources[i] = r
		if f := faults[r.ID]; f != nil && r.Fault == nil {
			rc := *r
			rc.Fault = f
			c.Resources[i] = &rc
		}
	}
	return &c
}
