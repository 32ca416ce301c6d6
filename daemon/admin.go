package daemon

import (
	"context"
	"encoding/hex"
	"fmt"
	"sort"
	"time"

	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// admin answers STATUS, SESSIONS, INSPECT and EVICT (flashmemctl). A peer
// sees, inspects and evicts only sessions of its own uid; root and members
// of admin_groups may act on all. EVICT never breaks a session a connection
// holds: an attached session only has its pages moved out of host memory.
func (c *conn) admin(op proto.Op, t *proto.AdminTarget) (proto.Message, error) {
	d := c.d
	switch op {
	case proto.OpStatus:
		return d.status(), nil
	case proto.OpModels:
		return d.listModels(), nil
	case proto.OpSessions:
		var out proto.SessionsReply
		for _, s := range d.visible(c.cred) {
			out.Sessions = append(out.Sessions, s.info())
		}
		sort.Slice(out.Sessions, func(i, j int) bool { return out.Sessions[i].ID < out.Sessions[j].ID })
		return &out, nil
	case proto.OpInspect:
		s, err := d.target(c.cred, t)
		if err != nil {
			return nil, err
		}
		return d.inspect(s), nil
	case proto.OpEvict:
		s, err := d.target(c.cred, t)
		if err != nil {
			return nil, err
		}
		return d.evict(s, c)
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
		return nil, proto.CodeUnknownSession.Errorf("no live session %d %q", t.Session, t.Name)
	}
	if !d.access.mayActOn(s.owner, cred) {
		// Indistinguishable from a missing session: ids and names of other
		// users' sessions are not disclosed.
		return nil, proto.CodeUnknownSession.Errorf("no live session %d %q of uid %d (only root and admin_groups see other users' sessions)", t.Session, t.Name, cred.UID)
	}
	return s, nil
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
		if err := d.dropSessionIf(s, !s.persist, func() bool { return s.conn == nil }); err != nil {
			return nil, err
		}
		d.log.Info("session evicted", "session", s.id, "name", s.name, "kept_on_ssd", s.persist, "by_uid", by.cred.UID)
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
	r := &proto.InspectReply{Session: info, Layout: s.layout, Policy: s.policy, TierPages: map[string]uint64{}}
	s.leaseMu.Lock()
	r.Leases = len(s.leases)
	s.leaseMu.Unlock()
	if s.last != nil {
		r.AboveFraction = s.last.CumAboveFraction()
		r.Resident = append([]uint32(nil), s.last.Use...)
	}
	mirror := d.store.Mirror()
	for p := uint32(0); p < s.pages(); p++ {
		if _, ok := mirror.Generation(s.pageID(p)); ok {
			r.TierPages["host"]++
		} else {
			r.TierPages["ssd"]++
		}
		if s.region != nil {
			if _, g, ok := s.region.Lookup(p); ok && g == s.genOf(p) && g > 0 {
				r.TierPages["reserve"]++
			}
		}
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
