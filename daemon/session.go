package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

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

	mu       sync.Mutex
	conn     *conn // nil while detached
	req      *indexer.Request
	region   *tiers.Region
	chunks   uint64
	gens     []uint64      // generation per page; 0 = never written
	pending  *tiers.Ticket // background recall of the last selection
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
	if s.conn != nil {
		in.Client = s.conn.name
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
	tl := tiers.Layout{ChunksPerPage: int(l.ChunksPerPage), Layers: make([]tiers.LayerLayout, len(l.Layers))}
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
	return ip, eff
}

// checkLayout applies the daemon's limits to a layout the protocol already
// found consistent.
func (d *Daemon) checkLayout(l *proto.Layout, sc indexer.Scorer) error {
	lim := d.cfg.Limits
	if len(l.Layers) > lim.MaxLayers {
		return proto.CodeLimitExceeded.Errorf("%d layers, limit %d", len(l.Layers), lim.MaxLayers)
	}
	for i, ly := range l.Layers {
		if ly.RowBytes > lim.MaxRowBytes {
			return proto.CodeLimitExceeded.Errorf("layer %d: row of %d B, limit %d", i, ly.RowBytes, lim.MaxRowBytes)
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
	if need := int64(l.ReserveSlots) * int64(l.PageBytes()); need > lim.MaxReserveBytes {
		return proto.CodeLimitExceeded.Errorf("reserve of %d slots × %d B = %d B, limit %d", l.ReserveSlots, l.PageBytes(), need, lim.MaxReserveBytes)
	}
	return nil
}

func (d *Daemon) scorer(name string) (string, indexer.Scorer, error) {
	if name == "" {
		name = d.cfg.Indexer.DefaultModel
	}
	sc, ok := d.models[name]
	if !ok {
		return name, nil, proto.CodeUnknownModel.Errorf("model %q is not registered", name)
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
		lastUsed: time.Now(),
	}
	if err := d.register(c, s, m.Name != ""); err != nil {
		return nil, nil, err
	}
	if err := d.createRegion(s); err != nil {
		d.unregister(s)
		return nil, nil, err
	}
	if s.persist {
		// Written at once so a crash before the first PERSIST still leaves a
		// resumable (empty) session rather than a name nobody can reuse.
		if err := d.writeMeta(context.Background(), s); err != nil {
			_ = d.dropSession(s, true)
			return nil, nil, err
		}
	}
	d.log.Info("session opened", "session", s.id, "name", s.name, "model", name, "persist", s.persist,
		"layers", len(m.Layout.Layers), "page_bytes", m.Layout.PageBytes(), "slots", m.Layout.ReserveSlots)
	return &proto.OpenReply{Session: s.id, Region: proto.Region{RegionDesc: regionDesc(s.region)}}, []int{s.region.FD()}, nil
}

// register gives s an id and enters it in the daemon's and the connection's
// tables, enforcing the session limits and name uniqueness.
func (d *Daemon) register(c *conn, s *session, named bool) error {
	c.mu.Lock()
	n := len(c.sessions)
	c.mu.Unlock()
	if n >= d.cfg.Limits.MaxSessionsPerConn {
		return proto.CodeLimitExceeded.Errorf("connection holds %d sessions, limit %d", n, d.cfg.Limits.MaxSessionsPerConn)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.sessions) >= d.cfg.Limits.MaxSessions {
		return proto.CodeLimitExceeded.Errorf("daemon holds %d sessions, limit %d", len(d.sessions), d.cfg.Limits.MaxSessions)
	}
	if named {
		if _, ok := d.byName[s.name]; ok {
			return proto.CodeSessionExists.Errorf("session %q exists", s.name)
		}
		if _, err := d.store.SSD().GetMeta(context.Background(), s.name); err == nil {
			return proto.CodeSessionExists.Errorf("session %q is persisted; RESUME it or CLOSE it with delete", s.name)
		}
	}
	if s.id == 0 {
		d.nextID++
		s.id = d.nextID
	}
	d.sessions[s.id] = s
	if named {
		d.byName[s.name] = s
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
	delete(d.sessions, s.id)
	if s.name != "" && d.byName[s.name] == s {
		delete(d.byName, s.name)
	}
	d.mu.Unlock()
	if c := s.conn; c != nil {
		c.mu.Lock()
		delete(c.sessions, s.id)
		c.mu.Unlock()
	}
}

func (d *Daemon) createRegion(s *session) error {
	r, err := d.reserve.Create(s.id, tiersLayout(s.layout), int(s.layout.ReserveSlots))
	if err != nil {
		if errors.Is(err, tiers.ErrBudget) {
			return proto.CodeLimitExceeded.Errorf("reserve: %v", err)
		}
		return fmt.Errorf("reserve region for session %d: %w", s.id, err)
	}
	s.region = r
	return nil
}

func (s *session) destroyRegion(d *Daemon) {
	s.leaseMu.Lock()
	r := s.region
	s.region = nil
	s.leaseMu.Unlock()
	if r != nil {
		r.ReleaseAll()
		_ = d.reserve.Destroy(s.id)
	}
}

func regionDesc(r *tiers.Region) proto.RegionDesc {
	offs := r.LayerOffsets()
	l := r.Layout()
	desc := proto.RegionDesc{Size: uint64(r.Size()), Slots: uint32(r.Slots()), Layers: make([]proto.RegionLayer, len(offs))}
	for i, o := range offs {
		desc.Layers[i] = proto.RegionLayer{Offset: uint64(o), RowBytes: uint32(l.Layers[i].RowBytes)}
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
		if err := d.store.Drop(ctx, s.id); err != nil {
			d.log.Warn("dropping session pages", "session", s.id, "err", err)
		}
		if s.name != "" && s.persist {
			_ = d.store.SSD().DeleteMeta(ctx, s.name)
		}
	} else if err := d.store.Mirror().DeleteSession(ctx, s.id); err != nil {
		d.log.Warn("dropping session from the mirror", "session", s.id, "err", err)
	}
	s.req = nil
	return nil
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
	keep := s.persist && !m.Delete
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
	if !s.persist {
		return proto.CodeBadRequest.Errorf("session %d was opened without persist", s.id)
	}
	return c.d.persistSession(context.Background(), s)
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

// appendChunks is APPEND: prefill chunks from the staging region or inline.
func (c *conn) appendChunks(m *proto.Append) (proto.Message, error) {
	s, err := c.owned(m.Session)
	if err != nil {
		return nil, err
	}
	payload := m.Payload
	if !m.Inline {
		if m.Offset > uint64(len(c.staging)) || m.Length > uint64(len(c.staging))-m.Offset {
			return nil, proto.CodeBadRequest.Errorf("payload [%d, +%d) is outside the %d-byte staging region", m.Offset, m.Length, len(c.staging))
		}
		payload = c.staging[m.Offset : m.Offset+m.Length]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkAppend(c.d, m.FirstChunk, m.Count, m.Keys); err != nil {
		return nil, err
	}
	want, _ := s.layout.PayloadBytes(uint64(m.Count))
	if uint64(len(payload)) != want {
		return nil, proto.CodePayloadSize.Errorf("payload of %d chunks must be %d B, got %d", m.Count, want, len(payload))
	}
	n := uint64(m.Count)
	cb := int(s.layout.ChunkBytes())
	if cap(s.buf) < cb {
		s.buf = make([]byte, cb)
	}
	buf := s.buf[:cb]
	for i := uint64(0); i < n; i++ {
		// Gather chunk i from the layer-major, segment-major payload.
		o := 0
		for ly, l := range s.layout.Layers {
			for sg, sz := range l.Segments {
				off := s.layout.PayloadOffset(n, ly, sg, i)
				o += copy(buf[o:o+int(sz)], payload[off:off+uint64(sz)])
			}
		}
		if err := c.d.writeChunk(s, m.FirstChunk+i, buf, -1); err != nil {
			return nil, err
		}
	}
	if err := s.appendKeys(m.FirstChunk, n, m.Keys); err != nil {
		return nil, err
	}
	c.d.m.appendBytes.Add(float64(len(payload)))
	s.lastUsed = time.Now()
	return &proto.ChunksReply{Chunks: s.chunks}, nil
}

// commit is COMMIT: decode chunks the decoder already wrote into reserve
// cells of the session's tail allocation.
func (c *conn) commit(m *proto.Commit) (proto.Message, error) {
	s, err := c.owned(m.Session)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkAppend(c.d, m.FirstChunk, m.Count, m.Keys); err != nil {
		return nil, err
	}
	n := uint64(m.Count)
	cpp := uint64(s.layout.ChunksPerPage)
	// Every chunk must have a cell before anything is written.
	for i := uint64(0); i < n; i++ {
		p := uint32((m.FirstChunk + i) / cpp)
		if _, _, ok := s.region.Lookup(p); !ok {
			return nil, proto.CodeBadRequest.Errorf("chunk %d: page %d has no reserve cell; commit only into the tail allocation of the last CYCLE reply", m.FirstChunk+i, p)
		}
	}
	cb := int(s.layout.ChunkBytes())
	if cap(s.buf) < cb {
		s.buf = make([]byte, cb)
	}
	buf := s.buf[:cb]
	for i := uint64(0); i < n; i++ {
		ch := m.FirstChunk + i
		p := uint32(ch / cpp)
		slot, _, _ := s.region.Lookup(p)
		if _, err := s.region.ReadChunk(slot, p, int(ch%cpp), buf); err != nil {
			return nil, fmt.Errorf("commit chunk %d: %w", ch, err)
		}
		if err := c.d.writeChunk(s, ch, buf, slot); err != nil {
			return nil, err
		}
	}
	if err := s.appendKeys(m.FirstChunk, n, m.Keys); err != nil {
		return nil, err
	}
	c.d.m.commitChunks.Add(float64(n))
	s.lastUsed = time.Now()
	return &proto.ChunksReply{Chunks: s.chunks}, nil
}

// checkAppend validates an APPEND or COMMIT against the session before any
// byte is written.
func (s *session) checkAppend(d *Daemon, first uint64, count uint32, keys []byte) error {
	if s.req == nil {
		return proto.CodeUnknownSession.Errorf("session %d is closed", s.id)
	}
	switch {
	case first < s.chunks:
		return proto.CodeDuplicateChunk.Errorf("chunk %d already stored (session has %d chunks)", first, s.chunks)
	case first > s.chunks:
		return proto.CodeChunkGap.Errorf("chunk %d would leave a gap (session has %d chunks)", first, s.chunks)
	case count == 0:
		return proto.CodeBadRequest.Errorf("chunk count is 0")
	}
	if wantKeys, ok := s.layout.KeysBytes(uint64(count)); !ok || uint64(len(keys)) != wantKeys {
		return proto.CodePayloadSize.Errorf("index keys of %d chunks must be %d B, got %d", count, wantKeys, len(keys))
	}
	cpp := uint64(s.layout.ChunksPerPage)
	pages := (s.chunks + uint64(count) + cpp - 1) / cpp
	if bytes := pages * s.layout.PageBytes(); int64(bytes) > d.cfg.Limits.MaxSessionBytes {
		return proto.CodeLimitExceeded.Errorf("session would hold %d B, limit %d", bytes, d.cfg.Limits.MaxSessionBytes)
	}
	return nil
}

// appendKeys feeds the index keys of chunks [first, first+n) to the indexer
// and advances the chunk count.
func (s *session) appendKeys(first, n uint64, keys []byte) error {
	t := int(s.layout.TargetLayers)
	per := make([][]byte, t)
	kb := uint64(s.layout.KeyBytes)
	for l := 0; l < t; l++ {
		off := s.layout.KeyOffset(n, uint64(l), 0)
		per[l] = keys[off : off+n*kb]
	}
	if err := s.req.AppendKeys(int(first), per); err != nil {
		return indexerError(err)
	}
	s.chunks = first + n
	return nil
}

// writeChunk stores one chunk's payload in the mirror at the page's next
// generation, and in the reserve slot when the page is resident. slot is the
// cell the decoder wrote for a COMMIT (-1 for APPEND).
func (d *Daemon) writeChunk(s *session, ch uint64, payload []byte, slot int) error {
	cpp := uint64(s.layout.ChunksPerPage)
	p := uint32(ch / cpp)
	for uint32(len(s.gens)) <= p {
		s.gens = append(s.gens, 0)
	}
	base := s.gens[p]
	gen := base + 1
	id := s.pageID(p)
	prev, err := d.store.WriteChunk(context.Background(), id, gen, s.geom, int(ch%cpp), payload)
	if err != nil {
		return fmt.Errorf("write chunk %d: %w", ch, err)
	}
	if prev != base {
		// The page left the mirror between the store bringing it back from
		// SSD and the write (a concurrent spill), so the mirror made a zero
		// page: rebuild it from the SSD copy plus this chunk.
		if gen, err = d.rebuildPage(s, id, base, ch, payload, gen); err != nil {
			return err
		}
	}
	s.gens[p] = gen
	if slot >= 0 {
		// The decoder wrote the cell in place; the slot now equals the
		// mirror page only if it held the page's previous generation.
		if _, rgen, ok := s.region.Lookup(p); ok && (rgen == base || base == 0) {
			return s.region.SetGeneration(slot, p, gen)
		}
		return nil
	}
	if rs, rgen, ok := s.region.Lookup(p); ok {
		if err := s.region.WriteChunk(rs, p, base, gen, int(ch%cpp), payload); err != nil && rgen == base {
			return fmt.Errorf("write chunk %d into the reserve: %w", ch, err)
		}
	}
	return nil
}

func (d *Daemon) rebuildPage(s *session, id tiers.PageID, base, ch uint64, payload []byte, gen uint64) (uint64, error) {
	page := make([]byte, s.layout.PageBytes())
	g, err := d.store.SSD().Get(context.Background(), id, page)
	if err == nil && g != base {
		err = tiers.ErrStale
	}
	if err != nil {
		return 0, fmt.Errorf("page %v: rebuilding a spilled page at generation %d (SSD has %d): %w", id, base, g, err)
	}
	if err := s.geom.ScatterChunk(page, int(ch%uint64(s.layout.ChunksPerPage)), payload); err != nil {
		return 0, err
	}
	gen++
	if err := d.store.Write(context.Background(), id, gen, page); err != nil {
		return 0, fmt.Errorf("page %v: %w", id, err)
	}
	return gen, nil
}
