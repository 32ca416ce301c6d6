package daemon

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// maxDamage bounds the bad pages VERIFY lists by number (all are counted).
const maxDamage = 64

// admin answers STATUS, MODELS, SESSIONS, INSPECT, EVICT, VERIFY, DELETE and
// SAVE (flashmemctl). A peer sees and acts on sessions of its own uid only,
// live or persisted on SSD; root and members of admin_groups may act on all. EVICT never breaks a session a connection
// holds: an attached session only has its pages moved out of host memory.
func (c *conn) admin(op proto.Op, t *proto.AdminTarget) (proto.Message, error) {
	d := c.d
	switch op {
	case proto.OpStatus:
		return d.status(), nil
	case proto.OpModels:
		return d.listModels(), nil
	case proto.OpSessions:
		return d.listSessions(c.cred)
	case proto.OpInspect:
		s, meta, err := d.anyTarget(c.cred, t)
		if err != nil {
			return nil, err
		}
		if s == nil {
			return &proto.InspectReply{Session: meta.info(), Layout: meta.Layout, Policy: meta.Policy,
				TierPages: map[string]uint64{"ssd": meta.pages()}}, nil
		}
		return d.inspect(s), nil
	case proto.OpEvict:
		s, meta, err := d.anyTarget(c.cred, t)
		if err != nil {
			return nil, err
		}
		if s == nil {
			return &proto.EvictReply{Sessions: []uint64{meta.ID}, OnSSDOnly: true}, nil
		}
		return d.evict(s, c)
	case proto.OpDelete:
		return d.deleteSession(c, t)
	case proto.OpSave:
		s, meta, err := d.anyTarget(c.cred, t)
		if err != nil {
			return nil, err
		}
		if s == nil {
			return &proto.EvictReply{Sessions: []uint64{meta.ID}, OnSSDOnly: true}, nil
		}
		return d.saveSession(s)
	case proto.OpVerify:
		cv, err := d.clusterVerify(c, t)
		if err != nil {
			return nil, err
		}
		s, meta, err := d.anyTarget(c.cred, t)
		if err != nil {
			return nil, err
		}
		r, err := d.verify(s, meta)
		if r != nil {
			r.Cluster = cv
		}
		return r, err
	}
	return nil, proto.CodeUnknownOp.Errorf("op %s is not an admin op", op)
}

func (d *Daemon) visible(cred Cred) []*session {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*session
	for _, s := range d.sessions {
		if d.access.mayActOn(s.owner, cred) {
			out = append(out, s)
		}
	}
	return out
}

func (d *Daemon) target(cred Cred, t *proto.AdminTarget) (*session, error) {
	d.mu.Lock()
	var s *session
	if t.Name != "" {
		s = d.byName[t.Name]
	} else {
		s = d.sessions[t.Session]
	}
	d.mu.Unlock()
	if s == nil {
		return nil, unknownSession(*t)
	}
	if !d.access.mayActOn(s.owner, cred) {
		// Indistinguishable from a missing session: ids and names of other
		// users' sessions are not disclosed.
		return nil, notYours(*t, cred)
	}
	return s, nil
}

// quoted is ` "name"` for a named session, "" for an unnamed one.
func quoted(name string) string {
	if name == "" {
		return ""
	}
	return fmt.Sprintf(" %q", name)
}

func unknownSession(t proto.AdminTarget) error {
	return proto.CodeUnknownSession.Errorf("%s", noSession(t))
}

func noSession(t proto.AdminTarget) string {
	if t.Name != "" {
		return fmt.Sprintf("no session named %q, live or persisted", t.Name)
	}
	return fmt.Sprintf("no session with id %d, live or persisted", t.Session)
}

// notYours answers for another user's session as for a missing one: ids and
// names of other users' sessions are not disclosed.
func notYours(t proto.AdminTarget, cred Cred) error {
	return proto.CodeUnknownSession.Errorf("%s of uid %d (only root and admin_groups see other users' sessions)", noSession(t), cred.UID)
}

// evict frees a session's memory. A detached session leaves memory
// entirely (a persisted one stays resumable from SSD; an ephemeral detached
// one cannot exist). An attached session stays usable by its connection:
// its pages are written to SSD and dropped from the host mirror; its reserve
// region, leases and page table are untouched, and later cycles read the
// pages back from SSD as needed.
func (d *Daemon) evict(s *session, by *conn) (proto.Message, error) {
	s.mu.Lock()
	attached, live := s.conn != nil, s.req != nil
	s.mu.Unlock()
	if !live {
		return nil, proto.CodeUnknownSession.Errorf("session %d was closed meanwhile", s.id)
	}
	if !attached {
		bytes := s.info().Bytes
		persist := s.persisted()
		if err := d.dropSessionIf(s, !persist, func() bool { return s.conn == nil }); err != nil {
			return nil, err
		}
		d.log.Info("session evicted", "session", s.id, "name", s.name, "kept_on_ssd", persist, "by_uid", by.cred.UID)
		return &proto.EvictReply{Sessions: []uint64{s.id}, Bytes: bytes}, nil
	}
	bytes, err := d.demote(s)
	if err != nil {
		return nil, err
	}
	d.log.Info("session demoted to SSD", "session", s.id, "name", s.name, "bytes", bytes, "by_uid", by.cred.UID)
	return &proto.EvictReply{Sessions: []uint64{s.id}, Bytes: bytes, Demoted: true}, nil
}

// demote writes every page of s to SSD and drops its host-mirror copies,
// under the session lock (no append or cycle runs meanwhile).
func (d *Daemon) demote(s *session) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.req == nil {
		return 0, proto.CodeUnknownSession.Errorf("session %d was closed meanwhile", s.id)
	}
	s.waitPending()
	ctx := context.Background()
	mirror := d.store.Mirror()
	var pages uint64
	for p := uint32(0); p < s.pages(); p++ {
		if _, ok := mirror.Generation(s.pageID(p)); ok {
			pages++
		}
	}
	if err := d.store.Flush(ctx, s.id); err != nil {
		return 0, fmt.Errorf("session %d: %w", s.id, err)
	}
	if err := mirror.DeleteSession(ctx, s.id); err != nil {
		return 0, fmt.Errorf("session %d: dropping its pages from host memory: %w", s.id, err)
	}
	return pages * s.layout.PageBytes(), nil
}

func (d *Daemon) inspect(s *session) *proto.InspectReply {
	info := s.info()
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &proto.InspectReply{Session: info, Layout: s.layout, Policy: s.policy}
	r.TierPages = d.tierPagesLocked(s)
	r.Session.TierPages = r.TierPages
	s.leaseMu.Lock()
	r.Leases = len(s.leases)
	s.leaseMu.Unlock()
	if s.last != nil {
		r.AboveFraction = s.last.CumAboveFraction()
		r.Resident = append([]uint32(nil), s.last.Use...)
	}
	return r
}

func (d *Daemon) status() *proto.StatusReply {
	d.mu.Lock()
	r := &proto.StatusReply{
		Instance: hex.EncodeToString(d.instance[:]), Server: Version, Protocol: proto.MaxVersion,
		UptimeSeconds: time.Since(d.started).Seconds(), Connections: len(d.conns), Sessions: len(d.sessions),
	}
	for c := range d.conns {
		c.mu.Lock()
		r.Leases += len(c.leases)
		c.mu.Unlock()
	}
	d.mu.Unlock()
	st := d.store.Snapshot()
	r.Tiers = []proto.TierStatus{
		tierStatus("reserve", d.reserveStats()),
		tierStatus("host", st.Mirror),
		tierStatus("ssd", st.SSD),
	}
	resident, total := d.footprint()
	r.Counters = map[string]float64{
		"resident_bytes": float64(resident), "total_bytes": float64(total),
		"spills": float64(st.Spills), "staged": float64(st.Staged), "staged_used": float64(st.StagedUsed),
		"staged_unused": float64(st.StagedUnused), "brought_back": float64(st.BroughtBack),
	}
	d.gpu.status(r)
	return r
}

func tierStatus(name string, s tiers.TierStats) proto.TierStatus {
	return proto.TierStatus{
		Name: name, UsedBytes: uint64(s.Bytes), CapacityBytes: uint64(s.Capacity), Pages: uint64(s.Pages),
		Hits: s.Hits, Misses: s.Misses, ReadBytes: s.BytesOut, WrittenBytes: s.BytesIn,
	}
}

// footprint sums, over live sessions, the bytes of the pages the decoder
// uses this cycle and the bytes of the whole history.
func (d *Daemon) footprint() (resident, total int64) {
	d.mu.Lock()
	all := make([]*session, 0, len(d.sessions))
	for _, s := range d.sessions {
		all = append(all, s)
	}
	d.mu.Unlock()
	for _, s := range all {
		in := s.info()
		pb := int64(s.layout.PageBytes())
		resident += int64(in.ResidentPages) * pb
		total += int64(in.Pages) * pb
	}
	return resident, total
}

// listSessions is SESSIONS: the live sessions, then the persisted ones that
// are on SSD only, each with its pages per tier.
func (d *Daemon) listSessions(cred Cred) (*proto.SessionsReply, error) {
	out := proto.SessionsReply{Sessions: []proto.SessionInfo{}}
	live := map[string]bool{}
	for _, s := range d.visible(cred) {
		in := s.info()
		s.mu.Lock()
		in.TierPages = d.tierPagesLocked(s)
		s.mu.Unlock()
		if in.Name != "" {
			live[in.Name] = true
		}
		out.Sessions = append(out.Sessions, in)
	}
	metas, err := d.persistedMetas(cred)
	if err != nil {
		return nil, err
	}
	for _, m := range metas {
		if !live[m.Name] {
			out.Sessions = append(out.Sessions, m.info())
		}
	}
	sort.Slice(out.Sessions, func(i, j int) bool { return out.Sessions[i].ID < out.Sessions[j].ID })
	return &out, nil
}

// persistedMetas reads the metadata of every persisted session cred may
// see. Unreadable blobs are logged and left out (VERIFY names them).
func (d *Daemon) persistedMetas(cred Cred) ([]*sessionMeta, error) {
	ctx := context.Background()
	ssd := d.store.SSD()
	names, err := ssd.ListMeta(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing persisted sessions: %w", err)
	}
	var out []*sessionMeta
	for _, n := range names {
		m, err := d.readMeta(n)
		if err != nil {
			d.log.Warn("persisted session unreadable", "name", n, "err", err)
			continue
		}
		if d.access.mayActOn(Cred{UID: m.OwnerUID, GID: m.OwnerGID}, cred) {
			out = append(out, m)
		}
	}
	return out, nil
}

// readMeta reads and decodes one persisted session's metadata.
func (d *Daemon) readMeta(name string) (*sessionMeta, error) {
	blob, err := d.store.SSD().GetMeta(context.Background(), name)
	if err != nil {
		if errors.Is(err, tiers.ErrNotFound) {
			return nil, unknownSession(proto.AdminTarget{Name: name})
		}
		return nil, fmt.Errorf("session %q: %w", name, err)
	}
	m, _, err := decodeMeta(blob)
	if err != nil {
		return nil, fmt.Errorf("session %q: %w", name, err)
	}
	return m, nil
}

func (m *sessionMeta) pages() uint64 {
	cpp := uint64(m.Layout.ChunksPerPage)
	return (m.Chunks + cpp - 1) / cpp
}

// info describes a session that is on SSD only.
func (m *sessionMeta) info() proto.SessionInfo {
	return proto.SessionInfo{
		ID: m.ID, Name: m.Name, Model: m.Model, Persist: true, OwnerUID: m.OwnerUID, State: "on-ssd",
		Chunks: m.Chunks, Pages: m.pages(), Cycles: m.Cycles, Bytes: m.pages() * m.Layout.PageBytes(),
		LastUsed: m.Saved.UTC(), TierPages: map[string]uint64{"ssd": m.pages()},
	}
}

// anyTarget finds a session live in memory (s) or else persisted on SSD
// only (meta), by id or name, and checks that cred owns it.
func (d *Daemon) anyTarget(cred Cred, t *proto.AdminTarget) (*session, *sessionMeta, error) {
	s, err := d.target(cred, t)
	if err == nil || proto.CodeOf(err) != proto.CodeUnknownSession {
		return s, nil, err
	}
	var m *sessionMeta
	if t.Name != "" {
		if m, err = d.readMeta(t.Name); err != nil {
			return nil, nil, err
		}
	} else {
		metas, err := d.persistedMetas(Cred{UID: 0})
		if err != nil {
			return nil, nil, err
		}
		for _, x := range metas {
			if x.ID == t.Session {
				m = x
			}
		}
		if m == nil {
			return nil, nil, unknownSession(*t)
		}
	}
	if !d.access.mayActOn(Cred{UID: m.OwnerUID, GID: m.OwnerGID}, cred) {
		return nil, nil, notYours(*t, cred)
	}
	return nil, m, nil
}

// deleteSession is DELETE: a live session is dropped with its pages and
// metadata (as CLOSE with delete); one on SSD only loses its pages and
// metadata there. Leases of a live session end with it. A session another
// live connection holds is refused, whoever asks: that connection's decoder
// is mid-request, and only it (CLOSE) or its end may let go of it.
func (d *Daemon) deleteSession(by *conn, t *proto.AdminTarget) (*proto.EvictReply, error) {
	s, m, err := d.anyTarget(by.cred, t)
	if err != nil {
		return nil, err
	}
	if s != nil {
		bytes := s.info().Bytes
		var (
			holder *conn
			stale  error
		)
		free := func() bool { // under s.mu: a RESUME cannot attach it meanwhile
			holder = s.conn
			if s.persist {
				stale = d.clusterOwns(s) // a stale copy must not delete what the cluster holds
			}
			if (holder != nil && holder != by) || stale != nil {
				return false
			}
			if s.persist {
				// The catalog first: a delete it refused leaves the session intact.
				stale = d.clusterDelete(s.name, s.epoch)
			}
			return stale == nil
		}
		if err := d.dropSessionIf(s, true, free); err != nil {
			return nil, err
		}
		if holder != nil && holder != by {
			return nil, proto.CodeNotOwner.Errorf("session %d%s is attached to another connection (client %q): that connection must CLOSE it first (or end), then DELETE it",
				s.id, quoted(s.name), holder.name)
		}
		if stale != nil {
			return nil, stale
		}
		d.log.Info("session deleted", "session", s.id, "name", s.name)
		return &proto.EvictReply{Sessions: []uint64{s.id}, Bytes: bytes}, nil
	}
	// With a cluster, the session goes from its catalog too (else RESUME on
	// another node brings it back from a replica); only its owner node may.
	var epoch uint64
	if d.cl != nil {
		if owner, e, ok := d.cl.node.Owner(m.Name); ok {
			if owner != d.cl.node.ID() {
				return nil, proto.CodeNotOwner.Errorf("session %q is owned by cluster node %s: DELETE it there, or RESUME it here first", m.Name, owner)
			}
			epoch = e
		}
	}
	if err := d.clusterDelete(m.Name, epoch); err != nil {
		return nil, err // the catalog first: a delete it refused leaves the session intact
	}
	ctx := context.Background()
	ssd := d.store.SSD()
	// The metadata goes first: a RESUME that races with the delete then
	// finds no session rather than one with missing pages.
	if err := ssd.DeleteMeta(ctx, m.Name); err != nil && !errors.Is(err, tiers.ErrNotFound) {
		return nil, fmt.Errorf("session %q: %w", m.Name, err)
	}
	if err := ssd.DeleteSession(ctx, m.ID); err != nil && !errors.Is(err, tiers.ErrNotFound) {
		return nil, fmt.Errorf("session %q pages: %w", m.Name, err)
	}
	if err := ssd.Sync(); err != nil {
		return nil, err
	}
	d.log.Info("persisted session deleted", "session", m.ID, "name", m.Name)
	return &proto.EvictReply{Sessions: []uint64{m.ID}, Bytes: m.pages() * m.Layout.PageBytes(), OnSSDOnly: true}, nil
}

// saveSession is SAVE: persist a live named session, as its own
// connection's PERSIST would; a session opened without persist becomes
// persisted.
func (d *Daemon) saveSession(s *session) (*proto.EvictReply, error) {
	if s.name == "" {
		return nil, proto.CodeBadRequest.Errorf("session %d has no name, and only named sessions can be persisted (OPEN it with a name)", s.id)
	}
	s.mu.Lock()
	s.persist = true
	s.mu.Unlock()
	if err := d.persistSession(context.Background(), s); err != nil {
		return nil, err
	}
	in := s.info()
	d.log.Info("session persisted", "session", s.id, "name", s.name)
	return &proto.EvictReply{Sessions: []uint64{s.id}, Bytes: in.Bytes}, nil
}

// verify is VERIFY: every page of the session is read back, from SSD with
// its checksum, or from the host mirror where it holds a newer generation
// than SSD (written since the last flush). A page neither tier can give is
// bad; so is one whose SSD copy fails its checksum, wherever a newer one is.
func (d *Daemon) verify(s *session, m *sessionMeta) (*proto.VerifyReply, error) {
	var (
		id     uint64
		name   string
		gens   []uint64
		pages  uint64
		layout proto.Layout
	)
	if s != nil {
		s.mu.Lock()
		id, name, layout, pages = s.id, s.name, s.layout, uint64(s.pages())
		gens = append([]uint64(nil), s.gens...)
		s.mu.Unlock()
	} else {
		id, name, layout, pages, gens = m.ID, m.Name, m.Layout, m.pages(), m.Gens
	}
	r := &proto.VerifyReply{Session: id, Name: name, Pages: pages}
	bad := func(p uint32, why string) {
		r.Bad++
		if len(r.Damage) < maxDamage {
			r.Damage = append(r.Damage, proto.PageDamage{Page: p, Reason: why})
		}
	}
	ctx := context.Background()
	ssd, mirror := d.store.SSD(), d.store.Mirror()
	buf := make([]byte, layout.PageBytes())
	for p := uint32(0); uint64(p) < pages; p++ {
		pid := tiers.PageID{Session: id, Page: p}
		want := uint64(0)
		if int(p) < len(gens) {
			want = gens[p]
		}
		gen, err := ssd.Get(ctx, pid, buf)
		switch {
		case errors.Is(err, tiers.ErrIntegrity):
			bad(p, "checksum: "+err.Error())
			continue
		case err != nil && !errors.Is(err, tiers.ErrNotFound):
			return nil, fmt.Errorf("verify session %d page %d: %w", id, p, err)
		case err == nil && gen >= want:
			r.Verified++
			r.Bytes += uint64(len(buf))
			continue
		}
		// Not on SSD, or an older generation there: the mirror must hold it.
		if s != nil {
			if mg, ok := mirror.Generation(pid); ok && mg >= want {
				r.Verified++
				r.InMemory++
				continue
			}
		}
		if err != nil {
			bad(p, "missing: on no tier")
		} else {
			bad(p, fmt.Sprintf("stale: generation %d on SSD, %d expected", gen, want))
		}
	}
	d.log.Info("session verified", "session", id, "name", name, "pages", pages, "bad", r.Bad)
	return r, nil
}

// tierPagesLocked counts s's pages per tier; s.mu is held.
func (d *Daemon) tierPagesLocked(s *session) map[string]uint64 {
	tp := map[string]uint64{"reserve": 0, "host": 0, "ssd": 0}
	mirror := d.store.Mirror()
	for p := uint32(0); p < s.pages(); p++ {
		if _, ok := mirror.Generation(s.pageID(p)); ok {
			tp["host"]++
		} else {
			tp["ssd"]++
		}
		if s.region != nil {
			if _, g, ok := s.region.Lookup(p); ok && g == s.genOf(p) && g > 0 {
				tp["reserve"]++
			}
		}
	}
	return tp
}
