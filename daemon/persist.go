package daemon

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// ErrBadMeta means a persisted session's metadata blob cannot be decoded.
var ErrBadMeta = errors.New("bad session metadata")

// maxUncountedPages bounds the pages past the chunk count that a metadata
// blob may carry generations for (pages a failed APPEND wrote): one frame's
// worth at most, far below this.
const maxUncountedPages = 1 << 16

// metaMagic starts every session metadata blob; the digit is its version.
var metaMagic = []byte("FMS1")

// sessionMeta is what a restarted daemon needs to resume a session; the
// pages themselves are on SSD under the same session id.
type sessionMeta struct {
	ID       uint64       `json:"id"`
	Name     string       `json:"name"`
	Model    string       `json:"model"`
	OwnerUID uint32       `json:"owner_uid"`
	OwnerGID uint32       `json:"owner_gid"`
	Layout   proto.Layout `json:"layout"`
	Policy   proto.Policy `json:"policy"`
	Chunks   uint64       `json:"chunks"`
	Gens     []uint64     `json:"gens"`
	Cycles   uint64       `json:"cycles"`
	// Device is what OPEN asked for (an ordinal, proto.DeviceAny or
	// proto.DeviceHostOnly); absent in blobs written before it existed.
	Device *uint32   `json:"device,omitempty"`
	Saved  time.Time `json:"saved"`
}

// encodeMeta lays a blob out as magic, JSON length (u32 LE), JSON, then the
// indexer's own binary state.
func encodeMeta(m *sessionMeta, state []byte) ([]byte, error) {
	js, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(metaMagic)+4+len(js)+len(state))
	out = append(out, metaMagic...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(js)))
	out = append(out, js...)
	return append(out, state...), nil
}

func decodeMeta(b []byte) (*sessionMeta, []byte, error) {
	if len(b) < len(metaMagic)+4 || !bytes.Equal(b[:len(metaMagic)], metaMagic) {
		return nil, nil, fmt.Errorf("%w: no %q header", ErrBadMeta, metaMagic)
	}
	n := uint64(binary.LittleEndian.Uint32(b[len(metaMagic):]))
	rest := b[len(metaMagic)+4:]
	if n > uint64(len(rest)) {
		return nil, nil, fmt.Errorf("%w: JSON length %d past the end (%d B)", ErrBadMeta, n, len(rest))
	}
	var m sessionMeta
	if err := json.Unmarshal(rest[:n], &m); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadMeta, err)
	}
	if err := m.Layout.Validate(); err != nil {
		return nil, nil, fmt.Errorf("%w: layout: %v", ErrBadMeta, err)
	}
	cpp := uint64(m.Layout.ChunksPerPage)
	if need := (m.Chunks + cpp - 1) / cpp; uint64(len(m.Gens)) < need || uint64(len(m.Gens)) > need+maxUncountedPages {
		return nil, nil, fmt.Errorf("%w: %d generations for %d chunks", ErrBadMeta, len(m.Gens), m.Chunks)
	}
	return &m, rest[n:], nil
}

// metaDeltaMagic starts a metadata delta: what changed since the record it
// follows in the store's chain (tiers.SSD.PutMetaDelta). Layout: magic, JSON
// length (u32 LE), JSON (metaDelta), then the indexer's delta
// (indexer.Request.MarshalDelta).
var metaDeltaMagic = []byte("FMD1")

// metaDelta is a session's metadata as of a PERSIST, less the generations
// that did not change: the small fields whole, the generations as the
// page count and the (page, generation) pairs that changed.
type metaDelta struct {
	sessionMeta
	GensLen uint64      `json:"gens_len"`
	GenSet  [][2]uint64 `json:"gen_set,omitempty"`
}

// metaFullEvery bounds the chain: a full record is written again once the
// deltas after it would pass this fraction of it, so a read merges at most
// about 1.5× the state's size and the chain's garbage stays bounded.
const metaFullEvery = 0.5

// metaSaved is what a session's newest metadata record in the store holds:
// the next PERSIST writes only what changed since.
type metaSaved struct {
	pos    tiers.MetaPos
	chunks uint64
	gens   []uint64
}

func encodeMetaDelta(m *metaDelta, state []byte) ([]byte, error) {
	js, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(metaDeltaMagic)+4+len(js)+len(state))
	out = append(out, metaDeltaMagic...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(js)))
	out = append(out, js...)
	return append(out, state...), nil
}

// decodeMetaDelta verifies a delta's own fields; whether it applies to a
// state is mergeMeta's check.
func decodeMetaDelta(b []byte) (*metaDelta, []byte, error) {
	if len(b) < len(metaDeltaMagic)+4 || !bytes.Equal(b[:len(metaDeltaMagic)], metaDeltaMagic) {
		return nil, nil, fmt.Errorf("%w: no %q header", ErrBadMeta, metaDeltaMagic)
	}
	n := uint64(binary.LittleEndian.Uint32(b[len(metaDeltaMagic):]))
	rest := b[len(metaDeltaMagic)+4:]
	if n > uint64(len(rest)) {
		return nil, nil, fmt.Errorf("%w: delta JSON length %d past the end (%d B)", ErrBadMeta, n, len(rest))
	}
	var m metaDelta
	if err := json.Unmarshal(rest[:n], &m); err != nil {
		return nil, nil, fmt.Errorf("%w: delta: %v", ErrBadMeta, err)
	}
	if err := m.Layout.Validate(); err != nil {
		return nil, nil, fmt.Errorf("%w: delta layout: %v", ErrBadMeta, err)
	}
	cpp := uint64(m.Layout.ChunksPerPage)
	need := m.Chunks / cpp
	if m.Chunks%cpp != 0 {
		need++
	}
	if m.GensLen < need || m.GensLen > need+maxUncountedPages {
		return nil, nil, fmt.Errorf("%w: delta: %d generations for %d chunks", ErrBadMeta, m.GensLen, m.Chunks)
	}
	if uint64(len(m.GenSet)) > m.GensLen {
		return nil, nil, fmt.Errorf("%w: delta: %d generations changed of %d", ErrBadMeta, len(m.GenSet), m.GensLen)
	}
	for _, g := range m.GenSet {
		if g[0] >= m.GensLen {
			return nil, nil, fmt.Errorf("%w: delta: generation of page %d past %d pages", ErrBadMeta, g[0], m.GensLen)
		}
	}
	return &m, rest[n:], nil
}

// mergeMeta is the store's MergeMeta: a full blob (encodeMeta) with the
// deltas after it applied, as encodeMeta would have written the state they
// describe. It stops at the first delta that does not decode or apply (the
// blob is then the state before it).
func mergeMeta(base []byte, deltas [][]byte) ([]byte, int, error) {
	m, state, err := decodeMeta(base)
	if err != nil {
		return nil, 0, err
	}
	var stop error
	ds := make([]*metaDelta, 0, len(deltas))
	states := make([][]byte, 0, len(deltas))
	for i, raw := range deltas {
		d, st, err := decodeMetaDelta(raw)
		if err == nil && (d.ID != m.ID || d.Name != m.Name || !reflect.DeepEqual(d.Layout, m.Layout)) {
			err = fmt.Errorf("%w: delta for session %d %q, the record before it is %d %q", ErrBadMeta, d.ID, d.Name, m.ID, m.Name)
		}
		if err != nil {
			stop = fmt.Errorf("delta %d: %w", i, err)
			break
		}
		ds, states = append(ds, d), append(states, st)
	}
	merged, used, err := indexer.MergeState(state, states...)
	if merged == nil {
		return nil, 0, fmt.Errorf("%w: indexer state: %w", ErrBadMeta, err)
	}
	if used < len(states) {
		stop = fmt.Errorf("delta %d: indexer state: %w", used, err)
	}
	gens := m.Gens
	for _, d := range ds[:used] {
		g := make([]uint64, d.GensLen)
		copy(g, gens)
		for _, c := range d.GenSet {
			g[c[0]] = c[1]
		}
		gens = g
		*m = d.sessionMeta
	}
	m.Gens = gens
	blob, err := encodeMeta(m, merged)
	if err != nil {
		return nil, 0, err
	}
	if _, _, err := decodeMeta(blob); err != nil {
		// Each delta verified alone, but not what they add up to.
		return base, 0, fmt.Errorf("merged deltas: %w", err)
	}
	return blob, used, stop
}

// writeMetaLocked stores s's metadata and indexer state; s.mu is held. It
// writes a delta of what changed since the session's newest record in the
// store when there is one and the chain is short, else a full record.
func (d *Daemon) writeMetaLocked(ctx context.Context, s *session) error {
	if err := d.clusterOwns(s); err != nil {
		return err // a stale owner's metadata must not overwrite the cluster's
	}
	// Every generation the store has seen, also of pages an APPEND wrote
	// before failing (its chunks uncounted): the next write to such a page
	// must continue from the generation the store holds.
	gens := make([]uint64, max(int(s.pages()), len(s.gens)))
	copy(gens, s.gens)
	meta := &sessionMeta{
		ID: s.id, Name: s.name, Model: s.model, OwnerUID: s.owner.UID, OwnerGID: s.owner.GID,
		Layout: s.layout, Policy: s.policy, Chunks: s.chunks, Gens: gens, Cycles: s.cycles, Saved: time.Now(),
		Device: wantedDevice(s.want),
	}
	ssd := d.store.SSD()
	saved := s.meta
	s.meta = metaSaved{} // until this write is known to be durable
	var pos tiers.MetaPos
	written := false
	if saved.pos.Seq != 0 {
		blob, err := encodeSessionDelta(s, meta, saved)
		if err != nil {
			return fmt.Errorf("session %d indexer state: %w", s.id, err)
		}
		if float64(saved.pos.DeltaBytes+int64(len(blob))) <= metaFullEvery*float64(saved.pos.BaseBytes) {
			pos, err = ssd.PutMetaDelta(ctx, s.name, s.id, saved.pos.Seq, blob)
			switch {
			case err == nil:
				written = true
			case !errors.Is(err, tiers.ErrStale):
				return fmt.Errorf("session %q metadata: %w", s.name, err)
			}
			// ErrStale: another record (a cluster copy, a deletion) came
			// after the one the delta would follow: a full record.
		}
	}
	if !written {
		state, err := s.req.MarshalBinary()
		if err != nil {
			return fmt.Errorf("session %d indexer state: %w", s.id, err)
		}
		blob, err := encodeMeta(meta, state)
		if err != nil {
			return err
		}
		if pos, err = ssd.PutMetaBase(ctx, s.name, s.id, blob); err != nil {
			return fmt.Errorf("session %q metadata: %w", s.name, err)
		}
	}
	if err := ssd.Sync(); err != nil {
		return err
	}
	s.meta = metaSaved{pos: pos, chunks: s.chunks, gens: gens}
	return nil
}

// encodeSessionDelta is the delta from what saved holds to meta and s's
// indexer state.
func encodeSessionDelta(s *session, meta *sessionMeta, saved metaSaved) ([]byte, error) {
	state, err := s.req.MarshalDelta(min(int(saved.chunks), s.req.Len()))
	if err != nil {
		return nil, err
	}
	return encodeSessionDeltaFor(meta, saved.gens, state)
}

// encodeSessionDeltaFor is the delta to meta from a record whose
// generations were old, with the indexer's delta state.
func encodeSessionDeltaFor(meta *sessionMeta, old []uint64, state []byte) ([]byte, error) {
	dm := &metaDelta{sessionMeta: *meta, GensLen: uint64(len(meta.Gens))}
	dm.Gens = nil
	for p, g := range meta.Gens {
		if p >= len(old) || old[p] != g {
			dm.GenSet = append(dm.GenSet, [2]uint64{uint64(p), g})
		}
	}
	return encodeMetaDelta(dm, state)
}

// restoreIDs runs at start: session ids continue above every id the store
// knows (pages are keyed by id), and pages of sessions nobody can resume
// (ephemeral sessions of a daemon that crashed) are deleted — but only when
// the journal gives no reason to doubt that: a session some metadata record
// names (readable or not) keeps its pages, and so does every session while
// the journal holds damaged records whose header is unreadable (they might be
// that session's metadata). Damage never turns into deletion.
func (d *Daemon) restoreIDs() error {
	ctx := context.Background()
	ssd := d.store.SSD()
	rep := ssd.Recovery()
	d.mu.Lock()
	d.lost = map[string]bool{}
	for _, n := range rep.LostMetas {
		d.lost[n] = true
	}
	d.mu.Unlock()
	names, err := ssd.ListMeta(ctx)
	if err != nil {
		return fmt.Errorf("listing persisted sessions: %w", err)
	}
	keep := map[uint64]bool{}
	for _, id := range rep.DamagedSessions {
		keep[id] = true
		d.nextID = max(d.nextID, id)
	}
	for _, n := range names {
		if id, ok := ssd.MetaSession(n); ok && id != 0 {
			keep[id] = true
			d.nextID = max(d.nextID, id)
		}
		blob, err := ssd.GetMeta(ctx, n)
		if err != nil {
			d.log.Error("persisted session unreadable; its pages are kept (run flashmemd fsck)", "name", n, "err", err)
			continue
		}
		m, _, err := decodeMeta(blob)
		if err != nil {
			d.log.Error("persisted session unreadable; its pages are kept (run flashmemd fsck)", "name", n, "err", err)
			continue
		}
		keep[m.ID] = true
		d.nextID = max(d.nextID, m.ID)
	}
	ids, err := ssd.Sessions(ctx)
	if err != nil {
		return fmt.Errorf("listing sessions on SSD: %w", err)
	}
	for _, id := range ids {
		d.nextID = max(d.nextID, id)
		switch {
		case keep[id]:
		case rep.Unattributed > 0:
			d.log.Warn("pages of a session no metadata names are kept: the journal has damaged records that may be its metadata (run flashmemd fsck)", "session", id)
		default:
			if err := ssd.DeleteSession(ctx, id); err != nil {
				d.log.Warn("deleting orphan pages", "session", id, "err", err)
			} else {
				d.log.Info("deleted pages of a session that was not persisted", "session", id)
			}
		}
	}
	if len(names) > 0 {
		d.log.Info("persisted sessions found", "count", len(names))
	}
	// What a crash left behind comes back now, not at the GC timer: a
	// daemon restarted every few seconds would never reach it.
	ssd.KickGC()
	return nil
}

// journalGens continues a resumed session's page generations from what the
// store holds: a page written to SSD after the last PERSIST (spilled, then
// the daemon was killed) has a newer generation than the metadata's, and
// reusing it would make every later write of the page stale. A persisted
// page the store holds at an older generation than the metadata's (or not
// at all) lost its newest record: it is reported as damaged, never served.
func (d *Daemon) journalGens(id uint64, gens []uint64) ([]uint64, map[uint32]error) {
	ssd := d.store.SSD()
	out := append([]uint64(nil), gens...)
	damaged := map[uint32]error{}
	pages, _ := ssd.Pages(context.Background(), id)
	for _, p := range pages {
		for uint32(len(out)) <= p {
			out = append(out, 0)
		}
	}
	for p := range out {
		g, ok := ssd.Generation(tiers.PageID{Session: id, Page: uint32(p)})
		want := uint64(0)
		if p < len(gens) {
			want = gens[p]
		}
		switch {
		case ok && g >= want:
			out[p] = g
		case want > 0:
			if ok {
				damaged[uint32(p)] = fmt.Errorf("page %d: the store holds generation %d, the session's metadata %d: its newest record is damaged or lost (run flashmemd fsck): %w", p, g, want, tiers.ErrIntegrity)
			} else {
				damaged[uint32(p)] = fmt.Errorf("page %d (generation %d) is not in the store: its record is damaged or lost (run flashmemd fsck): %w", p, want, tiers.ErrIntegrity)
			}
		}
	}
	return out, damaged
}

// resume is RESUME: attach a persisted session by name, from memory if it
// is detached there, else from SSD. Only a peer with the owner's uid (or
// root) may resume.
func (c *conn) resume(m *proto.Resume) (proto.Message, []int, error) {
	d := c.d
	if m.Name == "" {
		return nil, nil, proto.CodeBadRequest.Errorf("RESUME needs a session name")
	}
	if err := d.clusterResume(m.Name, c); err != nil {
		return nil, nil, err
	}
	d.mu.Lock()
	s := d.byName[m.Name]
	d.mu.Unlock()
	if s != nil {
		s.mu.Lock()
		if s.req == nil {
			// Dropped since the lookup (moved to SSD by detached_ttl,
			// evicted, closed): its region is gone; resume from SSD.
			s.mu.Unlock()
			s = nil
		}
	}
	if s == nil {
		var err error
		if s, err = d.loadSession(m.Name, c); err != nil {
			return nil, nil, err
		}
	} else {
		switch {
		case !sameOwner(s.owner, c.cred):
			s.mu.Unlock()
			return nil, nil, proto.CodeNotOwner.Errorf("session %q belongs to uid %d", m.Name, s.owner.UID)
		case s.conn != nil && s.conn != c:
			s.mu.Unlock()
			return nil, nil, proto.CodeNotOwner.Errorf("session %q is attached to another connection", m.Name)
		}
		c.mu.Lock()
		_, mine := c.sessions[s.id]
		if n := len(c.sessions); !mine && n >= d.cfg.Limits.MaxSessionsPerConn {
			c.mu.Unlock()
			s.mu.Unlock()
			return nil, nil, proto.CodeLimitExceeded.Errorf("connection holds %d sessions, limit %d (limits.max_sessions_per_conn): CLOSE one, or resume it on another connection", n, d.cfg.Limits.MaxSessionsPerConn)
		}
		c.mu.Unlock()
		s.conn = c
		s.mu.Unlock()
		c.mu.Lock()
		c.sessions[s.id] = s
		c.mu.Unlock()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.req == nil || s.region == nil {
		// Evicted or closed by another connection of the owner meanwhile.
		return nil, nil, proto.CodeUnknownSession.Errorf("session %q was closed while being resumed", m.Name)
	}
	fd, err := dupFD(s.region.FD())
	if err != nil {
		return nil, nil, err
	}
	d.log.Info("session resumed", "session", s.id, "name", s.name, "chunks", s.chunks)
	return &proto.ResumeReply{
		Session: s.id, Chunks: s.chunks, Persist: s.persist, Model: s.model,
		Layout: s.layout, Policy: s.policy, Region: proto.Region{RegionDesc: regionDesc(s.region)},
	}, []int{fd}, nil
}

// loadSession rebuilds a persisted session from its SSD metadata.
func (d *Daemon) loadSession(name string, c *conn) (*session, error) {
	ctx := context.Background()
	blob, pos, err := d.store.SSD().GetMetaPos(ctx, name)
	if err != nil {
		if errors.Is(err, tiers.ErrNotFound) {
			d.mu.Lock()
			lost := d.lost[name]
			d.mu.Unlock()
			if lost {
				return nil, proto.CodeUnknownSession.Errorf("no session named %q: its records were lost from the SSD journal (a segment file deleted or cut short, found at this daemon's start); "+
					"run `flashmemd fsck --data-dir %s` (daemon stopped) for what was lost, and restore the session from a replica or a backup", name, d.cfg.DataDir)
			}
			return nil, proto.CodeUnknownSession.Errorf("no session named %q", name)
		}
		return nil, fmt.Errorf("session %q: %w", name, err)
	}
	meta, state, err := decodeMeta(blob)
	if err != nil {
		return nil, fmt.Errorf("session %q: %w", name, err)
	}
	if !sameOwner(Cred{UID: meta.OwnerUID}, c.cred) {
		return nil, proto.CodeNotOwner.Errorf("session %q belongs to uid %d", name, meta.OwnerUID)
	}
	model, sc, err := d.scorer(meta.Model)
	if err != nil {
		return nil, err
	}
	ip, eff := d.policyFor(meta.Policy)
	ip.ChunksPerPage = int(meta.Layout.ChunksPerPage)
	req, err := indexer.NewRequest(sc, ip)
	if err != nil {
		return nil, fmt.Errorf("session %q: %w", name, err)
	}
	if err := req.UnmarshalBinary(state); err != nil {
		return nil, fmt.Errorf("session %q indexer state: %w", name, err)
	}
	if uint64(req.Len()) != meta.Chunks {
		return nil, fmt.Errorf("%w: session %q has %d chunks but %d index keys", ErrBadMeta, name, meta.Chunks, req.Len())
	}
	geom, err := tiers.NewGeometry(tiersLayout(meta.Layout))
	if err != nil {
		return nil, fmt.Errorf("session %q: %w", name, err)
	}
	gens, damaged := d.journalGens(meta.ID, meta.Gens)
	for p, err := range damaged {
		d.log.Error("persisted page damaged; it is reported, never served", "session", meta.ID, "name", name, "page", p, "err", err)
	}
	s := &session{
		id: meta.ID, name: name, persist: true, owner: Cred{UID: meta.OwnerUID, GID: meta.OwnerGID},
		model: model, layout: meta.Layout, policy: eff, geom: geom, scorer: sc, conn: c, req: req,
		chunks: meta.Chunks, gens: gens, cycles: meta.Cycles, leases: map[uint64]*lease{}, lastUsed: time.Now(),
		damaged: damaged, epoch: d.clusterEpoch(name),
		meta: metaSaved{pos: pos, chunks: meta.Chunks, gens: meta.Gens},
	}
	if meta.Device != nil {
		s.want = wantDevice(*meta.Device) // resume on the device the session was opened for
	}
	// Locked until the region exists: an EVICT of the (already listed)
	// session waits, and then destroys the region it finds.
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := d.register(c, s, false); err != nil {
		return nil, err
	}
	d.mu.Lock()
	if _, dup := d.byName[name]; dup {
		d.mu.Unlock()
		d.unregisterLocked(s)
		return nil, proto.CodeNotOwner.Errorf("session %q was resumed by another connection meanwhile", name)
	}
	d.byName[name] = s
	d.mu.Unlock()
	if err := d.createRegion(s); err != nil {
		d.unregisterLocked(s)
		return nil, err
	}
	return s, nil
}

// wantedDevice is the device request to persist with a session (nil: the
// daemon chose).
func wantedDevice(w reserveWant) *uint32 {
	if !w.named {
		return nil
	}
	d := w.device
	return &d
}
