package daemon

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
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

// writeMetaLocked stores s's metadata and indexer state; s.mu is held.
func (d *Daemon) writeMetaLocked(ctx context.Context, s *session) error {
	if err := d.clusterOwns(s); err != nil {
		return err // a stale owner's metadata must not overwrite the cluster's
	}
	state, err := s.req.MarshalBinary()
	if err != nil {
		return fmt.Errorf("session %d indexer state: %w", s.id, err)
	}
	// Every generation the store has seen, also of pages an APPEND wrote
	// before failing (its chunks uncounted): the next write to such a page
	// must continue from the generation the store holds.
	gens := make([]uint64, max(int(s.pages()), len(s.gens)))
	copy(gens, s.gens)
	blob, err := encodeMeta(&sessionMeta{
		ID: s.id, Name: s.name, Model: s.model, OwnerUID: s.owner.UID, OwnerGID: s.owner.GID,
		Layout: s.layout, Policy: s.policy, Chunks: s.chunks, Gens: gens, Cycles: s.cycles, Saved: time.Now(),
		Device: wantedDevice(s.want),
	}, state)
	if err != nil {
		return err
	}
	if err := d.store.SSD().PutSessionMeta(ctx, s.name, s.id, blob); err != nil {
		return fmt.Errorf("session %q metadata: %w", s.name, err)
	}
	return d.store.SSD().Sync()
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
	blob, err := d.store.SSD().GetMeta(ctx, name)
	if err != nil {
		if errors.Is(err, tiers.ErrNotFound) {
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
