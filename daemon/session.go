package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// defaultReserveSlots is used when a session's layout asks for none.
const defaultReserveSlots = 512

// session is one decoder request's KV history. mu guards every mutable
// field; a CYCLE holds it from scoring until its reply is built (see
// conn.cycle), so the session's operations apply in the order the client
// sent them.
type session struct {
	id      uint64
	name    string
	persist bool
	owner   Cred
	model   string
	layout  proto.Layout
	policy  proto.Policy
	geom    *tiers.Geometry
	scorer  indexer.Scorer

	mu     sync.Mutex
	conn   *conn // nil while detached
	req    *indexer.Request
	ckpt   indexer.SelectionState // before the cycle in flight (runCycle)
	region *tiers.Region
	want   reserveWant  // the device OPEN named for the region
	place  reservePlace // where region lives (GPU reserve or host)
	chunks uint64
	gens   []uint64 // generation per page; 0 = never written
	// damaged lists persisted pages found damaged on RESUME (the store
	// holds an older generation than the metadata, or none): reported per
	// page in CYCLE replies, never served, until a write replaces them.
	damaged map[uint32]error
	// epoch is the cluster ownership epoch this node holds for the session
	// (0: never claimed; cluster.go).
	epoch   uint64
	pending []*tiers.Ticket // background recalls of the last selection
	// deferred is the rest of the last selection's background recall that
	// found no evictable slot: the decoder's previous lease still pinned its
	// pages. The client's RELEASE of that lease starts it (resumeRecall), so
	// the reserve needs room for two selections, not three.
	deferred []uint32
	// meta is what the store's metadata chain for the session holds (the
	// next PERSIST writes a delta from it); zero: write a full record.
	meta     metaSaved
	cycles   uint64
	last     *indexer.Cycle
	lastUsed time.Time
	buf      []byte // one chunk's payload, reused

	// leaseMu guards leases apart from mu, so RELEASE never waits for a
	// cycle in flight.
	leaseMu sync.Mutex
	leases  map[uint64]*lease
}

// lease pins the reserve slots of one cycle's reply until RELEASE or until
// the connection ends.
type lease struct {
	id      uint64
	s       *session
	c       *conn
	created time.Time
}

func (s *session) pageID(p uint32) tiers.PageID { return tiers.PageID{Session: s.id, Page: p} }

func (s *session) pages() uint32 {
	cpp := uint64(s.layout.ChunksPerPage)
	return uint32((s.chunks + cpp - 1) / cpp)
}

func (s *session) info() proto.SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := proto.SessionInfo{
		ID: s.id, Name: s.name, Model: s.model, Persist: s.persist, OwnerUID: s.owner.UID,
		Attached: s.conn != nil, Chunks: s.chunks, Pages: uint64(s.pages()), Cycles: s.cycles,
		Bytes: uint64(s.pages()) * s.layout.PageBytes(),
	}
	in.State, in.LastUsed = "detached", s.lastUsed.UTC()
	if s.conn != nil {
		in.Client = s.conn.name
		in.State = "attached"
	}
	if s.req != nil {
		in.Fallback = s.req.Fallback()
	}
	if s.last != nil {
		in.ResidentPages = uint64(len(s.last.Use))
	}
	return in
}

// tiersLayout converts the wire layout into the tiers' one.
func tiersLayout(l proto.Layout) tiers.Layout {
	tl := tiers.Layout{ChunksPerPage: int(l.ChunksPerPage), Layers: make([]tiers.LayerLayout, len(l.Layers)), PageMajor: l.PageMajor}
	for i, ly := range l.Layers {
		segs := make([]int, len(ly.Segments))
		for j, s := range ly.Segments {
			segs[j] = int(s)
		}
		tl.Layers[i] = tiers.LayerLayout{RowBytes: int(ly.RowBytes), Segments: segs}
	}
	return tl
}

// policyFor merges a session's overrides over the daemon's defaults.
func (d *Daemon) policyFor(p proto.Policy) (indexer.Policy, proto.Policy) {
	ic := d.cfg.Indexer
	eff := proto.Policy{
		FirstKeep: uint32(ic.FirstKeep), LastKeep: uint32(ic.LastKeep), KMax: uint32(ic.KMax),
		KMaxRatio: ic.KMaxRatio, FallbackRatio: ic.FallbackRatio, Lookahead: uint32(ic.Lookahead),
	}
	if p.FirstKeep != 0 {
		eff.FirstKeep = p.FirstKeep
	}
	if p.LastKeep != 0 {
		eff.LastKeep = p.LastKeep
	}
	if p.KMax != 0 {
		eff.KMax = p.KMax
		eff.KMaxRatio = 0
	}
	if p.KMaxRatio != 0 {
		eff.KMaxRatio = p.KMaxRatio
		if p.KMax == 0 {
			eff.KMax = 0
		}
	}
	if p.FallbackRatio != 0 {
		eff.FallbackRatio = p.FallbackRatio
	}
	if p.Lookahead != 0 {
		eff.Lookahead = p.Lookahead
	}
	ip := indexer.DefaultPolicy()
	ip.FirstKeep = int(eff.FirstKeep)
	ip.LastKeep = int(eff.LastKeep)
	ip.KMax = int(eff.KMax)
	ip.KMaxRatio = eff.KMaxRatio
	ip.FallbackRatio = eff.FallbackRatio
	ip.Lookahead = int(eff.Lookahead)
	ip.Expand, _ = indexer.ParseExpansion(ic.Expand) // validated with the configuration
	return ip, eff
}

// checkLayout applies the daemon's limits to a layout the protocol already
// found consistent.
func (d *Daemon) checkLayout(l *proto.Layout, sc indexer.Scorer) error {
	lim := d.cfg.Limits
	if len(l.Layers) > lim.MaxLayers {
		return proto.CodeLimitExceeded.Errorf("%d layers, limit %d (limits.max_layers): open the session with fewer layers, or raise the limit in the daemon's config", len(l.Layers), lim.MaxLayers)
	}
	for i, ly := range l.Layers {
		if ly.RowBytes > lim.MaxRowBytes {
			return proto.CodeLimitExceeded.Errorf("layer %d: row of %d B, limit %d (limits.max_row_bytes): raise the limit in the daemon's config", i, ly.RowBytes, lim.MaxRowBytes)
		}
	}
	if int(l.KeyBytes) != sc.KeyBytes() {
		return proto.CodeBadLayout.Errorf("key_bytes %d, but the model's keys are %d B", l.KeyBytes, sc.KeyBytes())
	}
	if int(l.TargetLayers) != len(sc.Layers()) {
		return proto.CodeBadLayout.Errorf("target_layers %d, but the model has %d", l.TargetLayers, len(sc.Layers()))
	}
	if l.ReserveSlots == 0 {
		l.ReserveSlots = defaultReserveSlots
	}
	if l.ReserveSlots > tiers.MaxSlots {
		return proto.CodeLimitExceeded.Errorf("reserve of %d slots, limit %d", l.ReserveSlots, tiers.MaxSlots)
	}
	if need := int64(l.ReserveSlots) * int64(l.PageBytes()); need > lim.MaxReserveBytes {
		return proto.CodeLimitExceeded.Errorf("reserve of %d slots × %d B = %d B, limit %d (limits.max_reserve_bytes): ask for fewer reserve_slots (at most %d; protocol.md 15.5 sizes them), or raise the limit", l.ReserveSlots, l.PageBytes(), need, lim.MaxReserveBytes, lim.MaxReserveBytes/int64(l.PageBytes()))
	}
	return nil
}

func (d *Daemon) scorer(name string) (string, indexer.Scorer, error) {
	if name == "" {
		name = d.cfg.Indexer.DefaultModel
	}
	sc, ok := d.models[name]
	if !ok {
		return name, nil, proto.CodeUnknownModel.Errorf("model %q is not registered; this daemon has: %s (MODELS lists them with their sizes; an empty name means %q)", name, d.modelNames(), d.cfg.Indexer.DefaultModel)
	}
	return name, sc, nil
}

func (c *conn) open(m *proto.Open) (proto.Message, []int, error) {
	if err := m.Validate(); err != nil {
		return nil, nil, err
	}
	d := c.d
	name, sc, err := d.scorer(m.Model)
	if err != nil {
		return nil, nil, err
	}
	if err := d.checkLayout(&m.Layout, sc); err != nil {
		return nil, nil, err
	}
	if m.Persist && m.Name == "" {
		return nil, nil, proto.CodeBadRequest.Errorf("a persisted session needs a name")
	}
	ip, eff := d.policyFor(m.Policy)
	ip.ChunksPerPage = int(m.Layout.ChunksPerPage)
	req, err := indexer.NewRequest(sc, ip)
	if err != nil {
		return nil, nil, proto.CodeBadRequest.Errorf("policy: %v", err)
	}
	geom, err := tiers.NewGeometry(tiersLayout(m.Layout))
	if err != nil {
		return nil, nil, proto.CodeBadLayout.Errorf("%v", err)
	}
	s := &session{
		name: m.Name, persist: m.Persist, owner: c.cred, model: name, layout: m.Layout,
		policy: eff, geom: geom, scorer: sc, conn: c, req: req, leases: map[uint64]*lease{},
		lastUsed: time.Now(), want: wantDevice(m.Device),
	}
	// s is locked until its region exists and the fd for the reply is
	// taken: an EVICT of the (already listed) session waits for both.
	s.mu.Lock()
	if err := d.register(c, s, m.Name != ""); err != nil {
		s.mu.Unlock()
		return nil, nil, err
	}
	if err := d.createRegion(s); err != nil {
		d.unregisterLocked(s)
		s.mu.Unlock()
		return nil, nil, err
	}
	// A session whose reserve is on a GPU scores there: its index keys go to
	// that GPU's memory as they arrive (the request is still empty).
	if s.place.kind == proto.RegionCUDA {
		if dsc, ok := d.gpu.scorerOn(name, s.place.device); ok && dsc != sc {
			if dreq, err := indexer.NewRequest(dsc, ip); err == nil {
				_ = s.req.Close()
				s.scorer, s.req = dsc, dreq
			}
		}
	}
	if s.persist {
		// Written at once so a crash before the first PERSIST still leaves a
		// resumable (empty) session rather than a name nobody can reuse.
		if err := d.writeMetaLocked(context.Background(), s); err != nil {
			s.mu.Unlock()
			_ = d.dropSession(s, true)
			return nil, nil, err
		}
	}
	fd, err := dupFD(s.region.FD())
	desc := regionDesc(s.region)
	s.mu.Unlock()
	if err != nil {
		_ = d.dropSession(s, true)
		return nil, nil, err
	}
	d.log.Info("session opened", "session", s.id, "name", s.name, "model", name, "persist", m.Persist,
		"layers", len(m.Layout.Layers), "page_bytes", m.Layout.PageBytes(), "slots", m.Layout.ReserveSlots)
	return &proto.OpenReply{Session: s.id, Region: proto.Region{RegionDesc: desc}}, []int{fd}, nil
}

// dupFD duplicates a region's fd for a reply: the region may be destroyed
// (its fd closed, the number reused) before the reply is written; handle
// closes the copy once it is sent.
func dupFD(fd int) (int, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("duplicating region fd: %w", err)
	}
	return nfd, nil
}

// register gives s an id and enters it in the daemon's and the connection's
// tables, enforcing the session limits and name uniqueness.
func (d *Daemon) register(c *conn, s *session, named bool) error {
	c.mu.Lock()
	n := len(c.sessions)
	c.mu.Unlock()
	if n >= d.cfg.Limits.MaxSessionsPerConn {
		return proto.CodeLimitExceeded.Errorf("connection holds %d sessions, limit %d (limits.max_sessions_per_conn): CLOSE one, or open it on another connection", n, d.cfg.Limits.MaxSessionsPerConn)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.sessions) >= d.cfg.Limits.MaxSessions {
		return proto.CodeLimitExceeded.Errorf("daemon holds %d sessions, limit %d (limits.max_sessions); close or evict some", len(d.sessions), d.cfg.Limits.MaxSessions)
	}
	if s.id == 0 || d.sessions[s.id] == nil {
		n := 0
		for _, o := range d.sessions {
			if o.owner.UID == s.owner.UID {
				n++
			}
		}
		if n >= d.cfg.Limits.MaxSessionsPerUID {
			return proto.CodeLimitExceeded.Errorf("uid %d holds %d sessions, limit %d (limits.max_sessions_per_uid); close some", s.owner.UID, n, d.cfg.Limits.MaxSessionsPerUID)
		}
	}
	if named {
		if o, ok := d.byName[s.name]; ok {
			return sessionExists(s.name, false, sameOwner(o.owner, s.owner))
		}
		if _, ok := d.store.SSD().MetaSession(s.name); ok {
			// The owner is in the metadata: read on this refusal path only.
			m, err := d.readMeta(s.name)
			return sessionExists(s.name, true, err == nil && sameOwner(Cred{UID: m.OwnerUID}, s.owner))
		}
	}
	if s.id == 0 {
		d.nextID++
		s.id = d.nextID
	} else if _, dup := d.sessions[s.id]; dup {
		// A persisted session loaded twice (two RESUMEs racing past the
		// by-name lookup): the live one stays.
		return proto.CodeNotOwner.Errorf("session %q was resumed by another connection meanwhile", s.name)
	}
	d.sessions[s.id] = s
	if named {
		d.byName[s.name] = s
		delete(d.lost, s.name) // the name lives again
	}
	if c != nil {
		c.mu.Lock()
		c.sessions[s.id] = s
		c.mu.Unlock()
	}
	return nil
}

func (d *Daemon) unregister(s *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d.unregisterLocked(s)
}

// unregisterLocked removes s from the daemon's and its connection's
// tables; s.mu is held (lock order: session, then daemon, then connection).
func (d *Daemon) unregisterLocked(s *session) {
	d.mu.Lock()
	if d.sessions[s.id] == s {
		delete(d.sessions, s.id)
	}
	if s.name != "" && d.byName[s.name] == s {
		delete(d.byName, s.name)
	}
	d.mu.Unlock()
	if c := s.conn; c != nil {
		c.mu.Lock()
		if c.sessions[s.id] == s {
			delete(c.sessions, s.id)
		}
		c.mu.Unlock()
	}
}

// createRegion gives s its reserve region where the session asked (see
// gpuSubsystem.candidates): the first candidate with budget left wins. A
// region the decoder could not import (no fd) is refused rather than sent.
func (d *Daemon) createRegion(s *session) error {
	places, err := d.gpu.candidates(s.want)
	if err != nil {
		return err
	}
	var full []string
	for _, p := range places {
		r, err := p.reserve.Create(s.id, tiersLayout(s.layout), int(s.layout.ReserveSlots))
		if errors.Is(err, tiers.ErrBudget) {
			full = append(full, fmt.Sprintf("%s: %v", placeName(p), err))
			continue
		}
		if err != nil {
			return fmt.Errorf("reserve region for session %d on %s: %w", s.id, placeName(p), err)
		}
		if r.FD() < 0 {
			_ = p.reserve.Destroy(s.id)
			return fmt.Errorf("reserve region for session %d on %s has no file descriptor to send (legacy IPC memory is not served yet)", s.id, placeName(p))
		}
		regionPlaces.Store(r, p)
		s.region, s.place = r, p
		return nil
	}
	return proto.CodeLimitExceeded.Errorf("reserve: %s", strings.Join(full, "; "))
}

func placeName(p reservePlace) string {
	if p.kind == proto.RegionCUDA {
		return fmt.Sprintf("GPU %d", p.device)
	}
	return "host memory"
}

func (s *session) destroyRegion(d *Daemon) {
	s.leaseMu.Lock()
	r := s.region
	s.region = nil
	s.leaseMu.Unlock()
	if r != nil {
		r.ReleaseAll()
		regionPlaces.Delete(r)
		_ = s.place.reserve.Destroy(s.id)
	}
}

// regionDesc tells the client how to map r: the layer buffers, and what the
// fd is (memfd, or a CUDA VMM fd on a device).
func regionDesc(r *tiers.Region) proto.RegionDesc {
	offs := r.LayerOffsets()
	l := r.Layout()
	desc := proto.RegionDesc{Size: uint64(r.Size()), Slots: uint32(r.Slots()), Kind: proto.RegionMemfd, Device: proto.NoDevice,
		Layers: make([]proto.RegionLayer, len(offs))}
	if v, ok := regionPlaces.Load(r); ok {
		p := v.(reservePlace)
		desc.Kind, desc.Device = p.kind, p.device
	}
	for i, o := range offs {
		desc.Layers[i] = proto.RegionLayer{Offset: uint64(o), RowBytes: uint32(l.Layers[i].RowBytes)}
	}
	if l.PageMajor {
		for _, st := range r.RowStrides() {
			desc.Strides = append(desc.Strides, uint64(st))
		}
	}
	return desc
}

// dropSession forgets a session: leases released, reserve region destroyed,
// pages dropped from the mirror. With purge its pages and metadata leave SSD
// too; without, every page and the metadata are first flushed to SSD under
// the same lock hold, so no write can slip in between and the session stays
// resumable. A failed flush keeps the session as it was.
func (d *Daemon) dropSession(s *session, purge bool) error {
	return d.dropSessionIf(s, purge, nil)
}

// dropSessionIf is dropSession when cond, checked under the session lock,
// holds (nil: always).
func (d *Daemon) dropSessionIf(s *session, purge bool, cond func() bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.req == nil || (cond != nil && !cond()) {
		return nil // dropped already, or no longer eligible
	}
	s.waitPending()
	ctx := context.Background()
	if !purge {
		if err := d.store.Flush(ctx, s.id); err != nil {
			return fmt.Errorf("session %d: %w", s.id, err)
		}
		if err := d.writeMetaLocked(ctx, s); err != nil {
			return err
		}
	}
	d.unregisterLocked(s)
	s.leaseMu.Lock()
	for _, l := range s.leases {
		if l.c != nil {
			l.c.mu.Lock()
			delete(l.c.leases, l.id)
			l.c.mu.Unlock()
		}
	}
	s.leases = map[uint64]*lease{}
	s.leaseMu.Unlock()
	s.destroyRegion(d)
	if purge {
		// The metadata first (as DELETE of a session on SSD only does): a
		// crash between the two deletions then leaves pages no metadata
		// names, which the next start deletes — never a persisted session
		// that RESUMEs with every page gone.
		if s.name != "" && s.persist {
			if err := d.store.SSD().DeleteMeta(ctx, s.name); err != nil && !errors.Is(err, tiers.ErrNotFound) {
				d.log.Warn("deleting session metadata", "session", s.id, "name", s.name, "err", err)
			}
		}
		if f := purgeMidpoint.Load(); f != nil {
			(*f)(s)
		}
		if err := d.store.Drop(ctx, s.id); err != nil {
			d.log.Warn("dropping session pages", "session", s.id, "err", err)
		}
	} else if err := d.store.Mirror().DeleteSession(ctx, s.id); err != nil {
		d.log.Warn("dropping session from the mirror", "session", s.id, "err", err)
	}
	if err := s.req.Close(); err != nil {
		d.log.Warn("releasing the session's index keys", "session", s.id, "err", err)
	}
	s.req = nil
	return nil
}

// persisted reads persist under the session lock: SAVE from another
// connection may set it at any time.
func (s *session) persisted() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.persist
}

// detach keeps a persisted session after its connection ended, resumable
// by name.
func (s *session) detach() {
	s.mu.Lock()
	s.conn = nil
	s.lastUsed = time.Now()
	s.mu.Unlock()
}

func (c *conn) closeSession(m *proto.Close) error {
	s, err := c.owned(m.Session)
	if err != nil {
		return err
	}
	persist := s.persisted()
	keep := persist && !m.Delete
	if !keep && persist {
		if err := c.d.clusterOwns(s); err != nil {
			return err
		}
		// The catalog first: a delete it refused leaves the session intact.
		if err := c.d.clusterDelete(s.name, s.epoch); err != nil {
			return err
		}
	}
	if err := c.d.dropSession(s, !keep); err != nil {
		return err
	}
	if keep {
		c.d.log.Info("session closed, kept on SSD", "session", s.id, "name", s.name)
	} else {
		c.d.log.Info("session closed and deleted", "session", s.id, "name", s.name)
	}
	return nil
}

func (c *conn) persist(m *proto.Persist) error {
	s, err := c.owned(m.Session)
	if err != nil {
		return err
	}
	if !s.persisted() {
		return proto.CodeBadRequest.Errorf("session %d was opened without persist (SAVE it by name, or OPEN it with persist)", s.id)
	}
	if m.Durability != proto.DurabilityCluster {
		return c.d.persistSession(context.Background(), s)
	}
	if c.d.cl == nil {
		return proto.CodeBadRequest.Errorf("this daemon has no [cluster] table: PERSIST with durability local, or configure a cluster (docs/cluster.md)")
	}
	// One lock hold from the local flush to the commit: the replicas get
	// exactly the pages and metadata persisted here.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.req == nil {
		return proto.CodeUnknownSession.Errorf("session %d was closed while being persisted", s.id)
	}
	if err := c.d.store.Flush(context.Background(), s.id); err != nil {
		return fmt.Errorf("persist session %d: %w", s.id, err)
	}
	if err := c.d.writeMetaLocked(context.Background(), s); err != nil {
		return err
	}
	return c.d.clusterPersist(context.Background(), s)
}

// persistSession writes every page and the metadata (layout, indexer state,
// generations) to SSD and syncs.
func (d *Daemon) persistSession(ctx context.Context, s *session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.req == nil {
		return nil
	}
	if err := d.store.Flush(ctx, s.id); err != nil {
		return fmt.Errorf("persist session %d: %w", s.id, err)
	}
	return d.writeMetaLocked(ctx, s)
}

func (d *Daemon) writeMeta(ctx context.Context, s *session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return d.writeMetaLocked(ctx, s)
}

// sessionExists is SESSION_EXISTS for an OPEN of a name in use. Only the
// session's owner (or root) can RESUME, CLOSE or delete it; anyone else can
// only choose another name or ask the owner (names are daemon-wide).
func sessionExists(name string, persisted, owner bool) error {
	switch {
	case owner && persisted:
		return proto.CodeSessionExists.Errorf("session %q is persisted: RESUME it, or delete it first (flashmemctl delete %s), or choose another name", name, name)
	case owner:
		return proto.CodeSessionExists.Errorf("session %q is open: use it, CLOSE it first, or choose another name", name)
	case persisted:
		return proto.CodeSessionExists.Errorf("session name %q is taken by another user's persisted session: choose another name (only its owner can delete it)", name)
	default:
		return proto.CodeSessionExists.Errorf("session name %q is taken by another user's session: choose another name", name)
	}
}

// purgeMidpoint, set by tests, runs between a purge's two deletions: what a
// crash there would leave on disk.
var purgeMidpoint atomic.Pointer[func(s *session)]
