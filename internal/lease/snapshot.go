package lease

import (
	"context"
	"encoding/json"
	"sort"
	"time"

	"github.com/forgeci/forge"
)

// Snapshot is the sessions' part of a Memory's state — their leases and
// their requests in queue order — as a graceful restart keeps it (in the
// store) for the next process to resume. Owners without a session are not
// in it: their leases end with their connections.
type Snapshot struct {
	Saved    time.Time      `json:"saved"`
	Sessions []SavedSession `json:"sessions"`
}

// SavedSession is one session of a Snapshot.
type SavedSession struct {
	ID         string         `json:"id"`
	SecretHash []byte         `json:"secret_hash"`
	Grace      time.Duration  `json:"grace"`
	Leases     []SavedLease   `json:"leases"`
	Queued     []SavedRequest `json:"queued"`
}

// SavedLease is a lease of a SavedSession.
type SavedLease struct {
	ID        string             `json:"id"`
	RequestID string             `json:"request"`
	Holder    string             `json:"holder"`
	Granted   time.Time          `json:"granted"`
	Resources []SavedGrantedPool `json:"resources"`
}

// SavedGrantedPool is the part of a SavedLease from one pool.
type SavedGrantedPool struct {
	Pool string   `json:"pool"`
	IDs  []string `json:"ids"`
}

// SavedRequest is a queued request of a SavedSession; Seq orders the
// queue.
type SavedRequest struct {
	Seq    uint64                  `json:"seq"`
	ID     string                  `json:"id"`
	Holder string                  `json:"holder"`
	Wants  []forge.ResourceRequest `json:"wants"`
	Since  time.Time               `json:"since"`
	// Deadline is when its max_wait ends (zero: it waits forever).
	Deadline time.Time `json:"deadline,omitzero"`
}

// Snapshot returns the sessions' state, as JSON.
func (m *Memory) Snapshot(ctx context.Context) ([]byte, error) {
	m.mu.Lock()
	snap := Snapshot{Saved: time.Now().UTC()}
	for _, id := range sortedKeys(m.owners) {
		o := m.owners[id]
		if o.session == nil {
			continue
		}
		snap.Sessions = append(snap.Sessions, m.savedSession(o))
	}
	m.mu.Unlock()
	return json.Marshal(&snap)
}

// savedSession is o's state as Snapshot and the journal keep it. Called
// with m.mu held; o has a session.
func (m *Memory) savedSession(o *memOwner) SavedSession {
	ss := SavedSession{ID: o.id, SecretHash: o.session.secretHash[:], Grace: o.session.grace}
	for _, l := range o.leases {
		sl := SavedLease{ID: l.grant.ID, RequestID: l.grant.RequestID, Holder: l.grant.Holder, Granted: l.grant.Granted}
		for _, gp := range l.grant.Pools {
			p := SavedGrantedPool{Pool: gp.Pool, IDs: make([]string, 0, len(gp.Resources))}
			for _, r := range gp.Resources {
				p.IDs = append(p.IDs, r.ID)
			}
			sl.Resources = append(sl.Resources, p)
		}
		ss.Leases = append(ss.Leases, sl)
	}
	for _, r := range o.reqs {
		ss.Queued = append(ss.Queued, SavedRequest{Seq: r.seq, ID: r.id, Holder: r.holder, Wants: r.wants, Since: r.since, Deadline: r.deadline})
	}
	return ss
}

// Restore takes back the sessions of a Snapshot (as JSON) into a new
// Memory, before it serves anyone: every session starts detached, with its
// whole grace from now to be resumed, its leases on the same resources and
// its requests in their order, ahead of any new request. A lease whose
// resources are gone from the pools (or already taken) is dropped, as is a
// request the pools can no longer serve. It returns how many sessions and
// leases it restored.
func (m *Memory) Restore(ctx context.Context, data []byte) (sessions, leases int, err error) {
	var snap Snapshot
	if err := json.Unmarshal(data, &snap); err != nil {
		return 0, 0, forge.Errorf(forge.EINVALID, "lease state snapshot is not valid JSON: %v", err)
	}
	if err := m.lock(); err != nil {
		return 0, 0, err
	}
	defer m.mu.Unlock()
	sessions, leases = m.restore(&snap, false)
	return sessions, leases, nil
}

// restore is Restore, with m.mu held. fromJournal: snap is what the
// journal's store holds, so requests keep their arrival numbers and only
// the sessions restoring changed (a lease or request dropped, the grace
// cut) are written again; otherwise requests are numbered after every
// other and, with a journal, every restored session is written.
func (m *Memory) restore(snap *Snapshot, fromJournal bool) (sessions, leases int) {
	var reqs []*memReq
	var seqs []uint64
	jr := m.jr
	if fromJournal {
		m.jr = nil // no marks while loading what the store has
	}
	changed := map[*memOwner]bool{}
	for _, ss := range snap.Sessions {
		if m.owners[ss.ID] != nil || len(ss.SecretHash) != 32 {
			continue
		}
		o := &memOwner{id: ss.ID, session: &memSession{grace: min(ss.Grace, m.opts.MaxGrace)}}
		if o.session.grace <= 0 {
			o.session.grace = m.opts.Grace
		}
		copy(o.session.secretHash[:], ss.SecretHash)
		m.owners[ss.ID] = o
		changed[o] = !fromJournal || o.session.grace != ss.Grace
		keep := m.keeper(o)
		for _, sl := range ss.Leases {
			if l := m.restoreLease(o, sl, keep); l != nil {
				leases++
			} else {
				changed[o] = true
			}
		}
		for _, sr := range ss.Queued {
			r := &memReq{owner: o, id: sr.ID, holder: sr.Holder, wants: sr.Wants, notify: keep, since: sr.Since, deadline: sr.Deadline}
			if err := m.prepare(r); err != nil || m.checkCapacity(r) != nil {
				changed[o] = true
				continue
			}
			reqs = append(reqs, r)
			seqs = append(seqs, sr.Seq)
		}
		m.attachSeq++
		o.session.attachment = m.attachSeq
		o.session.detached = true
		sessions++
	}
	idx := make([]int, len(reqs))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return seqs[idx[a]] < seqs[idx[b]] })
	for _, i := range idx {
		r := reqs[i]
		if fromJournal {
			r.seq = seqs[i]
			m.seq = max(m.seq, r.seq)
		} else {
			m.seq++
			r.seq = m.seq
		}
		m.enqueue(r)
		if !r.deadline.IsZero() {
			r.timer = time.AfterFunc(max(time.Until(r.deadline), 0), func() { m.expire(r) })
		}
	}
	// The grace starts once the session's pools are known (their bounds
	// may cut it).
	now := time.Now()
	for _, ss := range snap.Sessions {
		o := m.owners[ss.ID]
		if o == nil || o.session == nil || o.session.timer != nil || !o.session.detached {
			continue
		}
		grace := m.effectiveGrace(o)
		o.session.until = now.Add(grace)
		att := o.session.attachment
		o.session.timer = time.AfterFunc(grace, func() { m.expireSession(o, att) })
	}
	m.jr = jr
	for o, ch := range changed {
		if ch {
			m.touch(o)
		}
	}
	m.schedule()
	m.positions(false) // for Resume; nobody is listening yet
	return sessions, leases
}

// keeper is the event sink of a detached session: it keeps what its
// client must hear when it resumes.
func (m *Memory) keeper(o *memOwner) func(Event) {
	s := o.session
	return func(ev Event) {
		if ev.Type != EventQueued && ev.Type != EventGranted {
			s.kept = append(s.kept, ev)
		}
	}
}

func (m *Memory) restoreLease(o *memOwner, sl SavedLease, notify func(Event)) *memLease {
	var picked []*memRes
	g := &Grant{ID: sl.ID, Owner: o.id, RequestID: sl.RequestID, Holder: sl.Holder, Granted: sl.Granted}
	for _, sp := range sl.Resources {
		p := m.pools[sp.Pool]
		if p == nil || p.deleted {
			return nil
		}
		gp := GrantedPool{Pool: sp.Pool}
		for _, id := range sp.IDs {
			res := p.byID[id]
			if res == nil || res.lease != nil || res.removed {
				return nil
			}
			picked = append(picked, res)
			gp.Resources = append(gp.Resources, res.r)
		}
		g.Pools = append(g.Pools, gp)
	}
	if m.leases[sl.ID] != nil {
		return nil
	}
	l := &memLease{grant: g, owner: o, res: picked, notify: notify}
	for _, res := range picked {
		m.change(res, func() { res.lease = l })
		res.since = sl.Granted
	}
	o.leases = append(o.leases, l)
	m.leases[g.ID] = l
	return l
}
