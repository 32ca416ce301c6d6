package daemon

import (
	"context"
	"errors"
	"math"
	"slices"
	"time"

	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// waitPending waits for the session's background recalls and drops the
// deferred rest (whoever waits loads what it needs itself); s.mu is held.
// It returns how long it was blocked on a recall still copying: a recall
// that had finished costs no wait.
func (s *session) waitPending() time.Duration {
	s.deferred = nil
	var waited time.Duration
	for _, p := range s.pending {
		select {
		case <-p.Done():
			continue
		default:
		}
		t := time.Now()
		<-p.Done()
		waited += time.Since(t)
	}
	s.pending = nil
	return waited
}

// cycleItem is one entry of a CYCLE frame on its way through.
type cycleItem struct {
	idx   int
	s     *session
	query indexer.Query
	cy    *indexer.Cycle
}

// cycle answers CYCLE. Entries are validated and their sessions locked on
// the read loop (so the session's next frames queue behind this cycle);
// scoring, the wait for the previous recall and the reply happen on a
// goroutine, so the read loop keeps serving other frames.
func (c *conn) cycle(h proto.Header, m *proto.Cycle) {
	t0 := time.Now()
	d := c.d
	results := make([]proto.CycleResult, len(m.Entries))
	var items []*cycleItem
	seen := map[uint64]bool{}
	for i, e := range m.Entries {
		s, err := c.owned(e.Session)
		if err == nil && seen[e.Session] {
			err = proto.CodeBadRequest.Errorf("session %d appears twice in one CYCLE", e.Session)
		}
		if err == nil {
			err = checkQuery(d, s, e)
		}
		if err != nil {
			results[i].Err = wireError(err)
			continue
		}
		seen[e.Session] = true
		q := indexer.Query{Position: int64(e.Position), Layers: e.Queries}
		items = append(items, &cycleItem{idx: i, s: s, query: q})
	}
	// Bound the cycles in flight before taking any lock: a client that does
	// not read its replies stalls only its own read loop.
	c.cycleSem <- struct{}{}
	// Lock in id order: two frames naming the same sessions cannot deadlock.
	slices.SortFunc(items, func(a, b *cycleItem) int { return cmpU64(a.s.id, b.s.id) })
	for _, it := range items {
		it.s.mu.Lock()
	}
	c.async.Add(1)
	go func() {
		defer c.async.Done()
		defer func() { <-c.cycleSem }()
		d.runCycle(c, items, results)
		// The locks go before the reply is written: a client that does not
		// read must not hold its sessions' locks (STATUS, the lease janitor
		// and shutdown take them).
		for _, it := range items {
			it.s.mu.Unlock()
		}
		d.m.cycleSeconds.Observe(time.Since(t0).Seconds())
		d.m.cycleSessions.Observe(float64(len(m.Entries)))
		if err := c.pc.Reply(h, &proto.CycleReply{Results: results}); err != nil {
			d.log.Debug("cycle reply failed", "err", err)
		}
	}()
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// checkQuery validates one entry against its session before any state
// changes. The session lock is not needed: layout and scorer are immutable
// and the chunk count is re-checked under the lock.
func checkQuery(d *Daemon, s *session, e proto.CycleEntry) error {
	if e.Position > math.MaxInt64 {
		return proto.CodeBadRequest.Errorf("session %d: position %d is above 2^63-1, the largest position the indexer takes", s.id, e.Position)
	}
	if len(e.Queries) != int(s.layout.TargetLayers) {
		return proto.CodeBadRequest.Errorf("session %d: %d queries, the model has %d target layers", s.id, len(e.Queries), s.layout.TargetLayers)
	}
	if qb := s.scorer.QueryBytes(); qb > 0 {
		for l, q := range e.Queries {
			if len(q) != qb {
				return proto.CodePayloadSize.Errorf("session %d: query of target layer %d is %d B, want %d", s.id, l, len(q), qb)
			}
		}
	}
	for l, q := range e.Queries {
		if err := checkFiniteQuery(d.kinds[s.model], l, q); err != nil {
			return err
		}
	}
	return nil
}

// runCycle scores every item in one batch, then makes each session's
// decoder-visible set resident, pins it under a new lease and starts the
// background recall of the new selection. Session locks are held.
func (d *Daemon) runCycle(c *conn, items []*cycleItem, results []proto.CycleResult) {
	var reqs []*indexer.Request
	var queries []indexer.Query
	var live []*cycleItem
	for _, it := range items {
		switch {
		case it.s.req == nil:
			results[it.idx].Err = proto.CodeUnknownSession.Errorf("session %d is closed", it.s.id)
		case it.s.chunks == 0:
			results[it.idx].Err = proto.CodeNoChunks.Errorf("session %d has no chunks yet: APPEND before CYCLE", it.s.id)
		default:
			reqs = append(reqs, it.s.req)
			queries = append(queries, it.query)
			live = append(live, it)
		}
	}
	if len(live) == 0 {
		return
	}
	// A session whose cycle then fails (no room in its reserve, say) gets
	// its selection state back: the client saw an error, not a cycle.
	for _, it := range live {
		it.s.req.Checkpoint(&it.s.ckpt)
	}
	ts := time.Now()
	cycles, err := indexer.ScoreBatch(reqs, queries)
	score := time.Since(ts)
	d.m.scoreSeconds.Observe(score.Seconds())
	if err != nil && len(live) > 1 {
		// One entry's bad query must not fail its batch mates: ScoreBatch
		// changed no state, so score each entry alone and keep the error
		// with the entry that caused it.
		cycles = make([]*indexer.Cycle, len(live))
		for i, it := range live {
			one, oerr := indexer.ScoreBatch(reqs[i:i+1], queries[i:i+1])
			if oerr != nil {
				results[it.idx].Err = wireError(indexerError(oerr))
				continue
			}
			cycles[i] = one[0]
		}
		score = time.Since(ts)
		err = nil
	}
	if err != nil {
		results[live[0].idx].Err = wireError(indexerError(err))
		return
	}
	for i, it := range live {
		if cycles[i] == nil {
			continue // failed alone above
		}
		it.cy = cycles[i]
		r, err := d.applyCycle(c, it.s, it.cy)
		if err != nil {
			it.s.req.Rollback(&it.s.ckpt)
			results[it.idx].Err = wireError(err)
			continue
		}
		r.Counters.ScoreMicros = uint64(score.Microseconds())
		results[it.idx] = r
	}
}

// applyCycle turns one session's selection into a reply: wait for the
// previous recall, load whatever of Use and the tail is still missing, pin
// it, and start recalling the new selection. The reply's WaitMicros is the
// time spent waiting for page data: blocked on the previous recall while it
// was still copying, plus the synchronous loads (docs/protocol.md, CYCLE).
// The bookkeeping between (binding ~55 pages to slots: 10–100 µs of CPU) is
// not in it: on a loaded host the scheduler stretched that to milliseconds
// of wall time with no page moving, so the counter reported the host's CPU
// contention, not the tiers (docs/benchmarks.md, "SSD as a capacity tier").
// The decoder sees the whole reply delay; clients measure it as the round
// trip (flashmemctl sim reports it per mode).
func (d *Daemon) applyCycle(c *conn, s *session, cy *indexer.Cycle) (proto.CycleResult, error) {
	wait := s.waitPending()
	cpp := uint64(s.layout.ChunksPerPage)
	first := s.chunks / cpp
	last := (s.chunks + uint64(max(s.layout.CycleSteps, 1)) - 1) / cpp
	if n := last - first + 1; n > uint64(s.region.Slots()) {
		// τ is the client's: it must not make the daemon build (or loop
		// over) a tail of billions of pages.
		return proto.CycleResult{}, proto.CodeNoSpace.Errorf("session %d: a cycle of %d steps needs %d tail pages, the reserve has %d slots", s.id, s.layout.CycleSteps, n, s.region.Slots())
	}
	var tail []uint32
	for p := first; p <= last; p++ {
		tail = append(tail, uint32(p))
	}
	need := mergeSorted(cy.Use, tail)
	lid := d.nextLease.Add(1)
	slots, loaded, late, loadWait, damaged, err := d.loadPages(s, need, tiers.LeaseID(lid))
	wait += loadWait
	d.m.waitSeconds.Observe(wait.Seconds())
	if err == nil {
		// The page table goes out now: from here the slots hold bytes the
		// client may be reading, and recall must not rewrite them.
		err = s.region.HandOut(tiers.LeaseID(lid))
	}
	if err != nil {
		_ = s.region.Release(tiers.LeaseID(lid))
		return proto.CycleResult{}, err
	}
	l := &lease{id: lid, s: s, c: c, created: time.Now()}
	s.leaseMu.Lock()
	s.leases[lid] = l
	s.leaseMu.Unlock()
	c.mu.Lock()
	c.leases[lid] = l
	c.mu.Unlock()

	// Background recall of the new selection; pages already loaded above
	// are skipped by the generation check.
	var recall []uint32
	for _, p := range cy.Recall {
		if _, ok := slots.slot(p); !ok && p < uint32(len(s.gens)) && s.gens[p] > 0 && s.damaged[p] == nil {
			recall = append(recall, p)
		}
	}
	if len(recall) > 0 && d.cfg.Mover.backgroundRecall() {
		var t *tiers.Ticket
		t, s.deferred = d.startRecall(s, recall)
		if t != nil {
			s.pending = append(s.pending, t)
		}
	}
	if len(cy.Lookahead) > 0 && d.cfg.Mover.staging() {
		d.stage(s, cy.Lookahead)
	}
	s.cycles++
	s.last = cy
	s.lastUsed = time.Now()
	d.m.recalledPages.Add(float64(loaded + len(recall)))

	r := proto.CycleResult{Lease: lid, Cycle: cy.Cycle}
	r.Pages = make([]proto.PageSlot, 0, len(cy.Use))
	for _, p := range cy.Use {
		if err := damaged[p]; err != nil {
			// Left out of the table, reported with its error: the
			// session's other pages are still served.
			r.Damaged = append(r.Damaged, proto.DamagedPage{Page: p, Err: proto.CodeIntegrity.Errorf("session %d page %d: %v", s.id, p, err)})
			continue
		}
		slot, _ := slots.slot(p)
		r.Pages = append(r.Pages, proto.PageSlot{Page: p, Slot: uint32(slot)})
	}
	if len(r.Damaged) > proto.MaxCycleDamaged {
		r.Damaged = r.Damaged[:proto.MaxCycleDamaged]
	}
	r.Tail = make([]proto.PageSlot, 0, len(tail))
	for _, p := range tail {
		slot, _ := slots.slot(p)
		r.Tail = append(r.Tail, proto.PageSlot{Page: p, Slot: uint32(slot)})
	}
	r.Counters = proto.CycleCounters{
		Chunks:        s.chunks,
		TotalPages:    uint32(cy.Pages),
		ResidentPages: uint32(len(cy.Use)),
		ForcedPages:   uint32(cy.ForcedPages),
		RecalledPages: uint32(loaded), // copied for this reply's table; background pages are not
		Fallback:      cy.Fallback,
		AboveFraction: cy.CumAboveFraction(), // the running fraction the fallback watches, as INSPECT reports
		WaitMicros:    uint64(wait.Microseconds()),
	}
	_ = late // counted by the mover (NeededLate)
	return r, nil
}

// boundSet is a cycle's table: its pages, sorted, and the reserve slot each
// one is bound to.
type boundSet struct {
	pages []uint32
	slots []int32
}

// slot is the slot page p is bound to.
func (b boundSet) slot(p uint32) (int, bool) {
	i, ok := slices.BinarySearch(b.pages, p)
	if !ok {
		return -1, false
	}
	return int(b.slots[i]), true
}

// loadPages binds every page of need (sorted) to a reserve slot and has the
// mover copy in the pages whose slot does not hold their current generation,
// waiting for them: this is the decoder-visible part of a recall. It returns
// the pages' slots, how many pages were copied, how many of those had to
// come from SSD, how long it waited for those copies, and the pages that could not be served because their stored
// bytes are damaged (known since RESUME, or found now: remembered, so they
// are never read again).
//
// The pages the previous cycle's background recall bound (the usual table)
// are pinned in one Region call, with no allocation per page: this runs
// inside the decoder-visible wait, and on a loaded host every microsecond of
// CPU there is a chance for the scheduler to take the thread away for a
// whole time slice (docs/benchmarks.md, "SSD as a capacity tier").
func (d *Daemon) loadPages(s *session, need []uint32, lease tiers.LeaseID) (boundSet, int, int, time.Duration, map[uint32]error, error) {
	var damaged map[uint32]error
	bind := need
	if len(s.damaged) > 0 {
		bind = make([]uint32, 0, len(need))
		for _, p := range need {
			if err := s.damaged[p]; err != nil {
				if damaged == nil {
					damaged = map[uint32]error{}
				}
				damaged[p] = err
				continue
			}
			bind = append(bind, p)
		}
	}
	b := boundSet{pages: bind, slots: make([]int32, len(bind))}
	gens := make([]uint64, len(bind))
	missing, err := s.region.PinBound(lease, bind, b.slots, gens)
	if err != nil {
		return boundSet{}, 0, 0, 0, nil, err
	}
	for k, p := range bind {
		if missing == 0 {
			break
		}
		if b.slots[k] >= 0 {
			continue
		}
		missing--
		alloc := s.region.Allocate
		if s.genOf(p) == 0 {
			// A tail page never written: the decoder writes its cells in
			// place, the rest must read as zeros, not as an evicted page.
			alloc = s.region.AllocateZeroed
		}
		a, err := alloc(p)
		if err == nil {
			// Pinned while loading, so allocating the next page of the set
			// cannot evict this one.
			err = s.region.PinLoading(lease, []int{a.Slot})
		}
		if err != nil {
			if errors.Is(err, tiers.ErrNoSpace) {
				return boundSet{}, 0, 0, 0, nil, proto.CodeNoSpace.Errorf("session %d: reserve of %d slots cannot hold the %d pages this cycle needs (release earlier leases or open with more reserve_slots)", s.id, s.region.Slots(), len(need))
			}
			return boundSet{}, 0, 0, 0, nil, err
		}
		b.slots[k], gens[k] = int32(a.Slot), a.Gen
	}
	var items []tiers.RecallItem
	for k, p := range bind {
		if g := s.genOf(p); g > 0 && gens[k] != g {
			items = append(items, tiers.RecallItem{ID: s.pageID(p), Slot: int(b.slots[k]), Gen: g})
		}
	}
	d.reserveHits.Add(uint64(len(need) - len(items)))
	d.reserveMisses.Add(uint64(len(items)))
	if len(items) == 0 {
		return b, 0, 0, 0, damaged, nil
	}
	tl := time.Now()
	t, err := d.mover.Recall(s.region, items)
	if err != nil {
		return boundSet{}, 0, 0, 0, nil, err
	}
	<-t.Done()
	late := 0
	results := t.Results()
	// Self-healing reads: a page whose stored bytes fail their checksum is
	// fetched from a cluster replica (when the manifest holds this very
	// generation), written back, and recalled again.
	if healed := d.healPages(s, results); len(healed) > 0 {
		if t2, err := d.mover.Recall(s.region, healed); err == nil {
			<-t2.Done()
			again := map[tiers.PageID]tiers.RecallResult{}
			for _, r := range t2.Results() {
				again[r.ID] = r
			}
			for i, r := range results {
				if a, ok := again[r.ID]; ok {
					results[i] = a
				}
			}
		}
	}
	waited := time.Since(tl)
	for _, r := range results {
		if r.Err != nil {
			if errors.Is(r.Err, tiers.ErrIntegrity) {
				if s.damaged == nil {
					s.damaged = map[uint32]error{}
				}
				if damaged == nil {
					damaged = map[uint32]error{}
				}
				s.damaged[r.ID.Page] = r.Err
				damaged[r.ID.Page] = r.Err
				d.log.Error("page damaged on SSD; reported in the CYCLE reply, never served", "session", s.id, "page", r.ID.Page, "err", r.Err)
				continue
			}
			return boundSet{}, 0, 0, 0, nil, r.Err
		}
		if r.Source == tiers.SourceSSD {
			late++
		}
	}
	return b, len(items), late, waited, damaged, nil
}

func (s *session) genOf(p uint32) uint64 {
	if p < uint32(len(s.gens)) {
		return s.gens[p]
	}
	return 0
}

// startRecall binds slots for the new selection and queues its copies on
// the mover; the next cycle waits for the ticket. It returns the pages that
// found no evictable slot: at a CYCLE both the decoder's previous lease and
// the new one are pinned, so a reserve sized for two selections can run out
// when the selection moves far; the client's RELEASE of the previous lease
// makes room and starts them (resumeRecall), and whatever is still missing
// at the next cycle is loaded there.
func (d *Daemon) startRecall(s *session, pages []uint32) (*tiers.Ticket, []uint32) {
	if !d.cfg.Mover.backgroundRecallSSD() {
		// SSD on demand: a page only on SSD is read when a cycle hands it
		// out (loadPages), the decoder waiting for it.
		mirror := d.store.Mirror()
		var inHost []uint32
		for _, p := range pages {
			if _, ok := mirror.Generation(s.pageID(p)); ok {
				inHost = append(inHost, p)
			}
		}
		pages = inHost
	}
	items := make([]tiers.RecallItem, 0, len(pages))
	var rest []uint32
	// Each slot is held while the rest are bound: otherwise, with no older
	// evictable slot left, Allocate would evict the pages this very recall
	// bound a moment ago (the least recently used that no lease pins), and
	// the next cycle would find them missing and copy them itself.
	hold := tiers.LeaseID(d.nextLease.Add(1))
	defer func() { _ = s.region.Release(hold) }()
	for i, p := range pages {
		a, err := s.region.Allocate(p)
		if err == nil {
			err = s.region.PinLoading(hold, []int{a.Slot})
		}
		if err != nil {
			// The reserve is full of pinned slots; later pages would fail too.
			rest = slices.Clone(pages[i:])
			d.m.recallDeferred.Add(float64(len(rest)))
			d.log.Debug("background recall waits for a RELEASE", "session", s.id, "pages", len(pages), "deferred", len(rest))
			break
		}
		if g := s.genOf(p); !a.Hit || a.Gen != g {
			items = append(items, tiers.RecallItem{ID: s.pageID(p), Slot: a.Slot, Gen: g})
		}
	}
	if len(items) == 0 {
		return nil, rest
	}
	t, err := d.mover.Recall(s.region, items)
	if err != nil {
		d.log.Warn("background recall not queued", "session", s.id, "pages", len(items), "err", err)
		return nil, nil
	}
	return t, rest
}

// resumeRecall starts the deferred rest of s's background recall after a
// RELEASE unpinned slots. It never waits for the session: when a CYCLE or
// another operation holds it, that one loads what it needs itself.
func (d *Daemon) resumeRecall(s *session) {
	if !s.mu.TryLock() {
		return
	}
	defer s.mu.Unlock()
	if len(s.deferred) == 0 || s.req == nil || s.region == nil {
		return
	}
	pages := make([]uint32, 0, len(s.deferred))
	for _, p := range s.deferred {
		if p < uint32(len(s.gens)) && s.gens[p] > 0 && s.damaged[p] == nil {
			pages = append(pages, p)
		}
	}
	s.deferred = nil
	t, rest := d.startRecall(s, pages)
	if t != nil {
		s.pending = append(s.pending, t)
	}
	s.deferred = rest
	d.m.recallResumed.Add(float64(len(pages) - len(rest)))
}

// stage queues a session's lookahead candidates (best first, as the
// indexer ranks them) to be brought from SSD into the mirror, ranked and
// sized so the mover serves the most likely pages first within its byte
// bound. Candidates already in host memory are dropped here: queuing them
// would only wake the stagers for nothing, on every cycle; the rest keep
// their rank.
func (d *Daemon) stage(s *session, pages []uint32) {
	mirror := d.store.Mirror()
	size := int64(s.layout.PageBytes())
	items := make([]tiers.StageItem, 0, len(pages))
	for rank, p := range pages {
		id := s.pageID(p)
		if _, ok := mirror.Generation(id); !ok {
			items = append(items, tiers.StageItem{ID: id, Rank: rank, Bytes: size})
		}
	}
	if len(items) > 0 {
		d.mover.StageRanked(items)
	}
}

// mergeSorted returns the sorted union of two sorted page lists.
func mergeSorted(a, b []uint32) []uint32 {
	out := make([]uint32, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			out = append(out, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
}

// release is RELEASE: end leases this connection holds.
// Every known lease is released; the first unknown one is reported.
func (c *conn) release(ids []uint64) error {
	var unknown error
	for _, id := range ids {
		c.mu.Lock()
		l := c.leases[id]
		delete(c.leases, id)
		c.mu.Unlock()
		if l == nil {
			if unknown == nil {
				unknown = proto.CodeUnknownLease.Errorf("lease %d is not held by this connection", id)
			}
			continue
		}
		l.s.releaseLease(l)
		c.d.resumeRecall(l.s)
	}
	return unknown
}

// releaseLease unpins a lease's slots. It does not take s.mu: a lease ends
// even while a cycle of the same session is in flight.
func (s *session) releaseLease(l *lease) {
	s.leaseMu.Lock()
	delete(s.leases, l.id)
	r := s.region
	s.leaseMu.Unlock()
	if r != nil {
		_ = r.Release(tiers.LeaseID(l.id))
	}
}

// leaseJanitor reclaims leases a connected client kept past the lease
// timeout (a hung decoder must not pin the reserve forever).
func (d *Daemon) leaseJanitor(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.expireDetached()
		limit := time.Duration(d.cfg.Limits.LeaseTimeout)
		if limit <= 0 {
			continue
		}
		d.mu.Lock()
		conns := make([]*conn, 0, len(d.conns))
		for c := range d.conns {
			conns = append(conns, c)
		}
		d.mu.Unlock()
		for _, c := range conns {
			c.mu.Lock()
			var old []*lease
			for id, l := range c.leases {
				if time.Since(l.created) > limit {
					old = append(old, l)
					delete(c.leases, id)
				}
			}
			c.mu.Unlock()
			for _, l := range old {
				l.s.releaseLease(l)
				d.m.leasesReclaim.Inc()
				d.log.Warn("lease reclaimed after timeout", "lease", l.id, "session", l.s.id)
			}
		}
	}
}

// expireDetached moves persisted sessions nobody resumed within
// detached_ttl out of host memory; they stay resumable from SSD.
func (d *Daemon) expireDetached() {
	ttl := time.Duration(d.cfg.Limits.DetachedTTL)
	if ttl <= 0 {
		return
	}
	d.mu.Lock()
	var idle []*session
	for _, s := range d.sessions {
		idle = append(idle, s)
	}
	d.mu.Unlock()
	for _, s := range idle {
		expired := false
		err := d.dropSessionIf(s, false, func() bool {
			expired = s.conn == nil && s.persist && time.Since(s.lastUsed) > ttl
			return expired
		})
		if !expired {
			continue
		}
		if err != nil {
			d.log.Warn("detached session stays in memory", "session", s.id, "name", s.name, "err", err)
			continue
		}
		d.log.Info("detached session moved to SSD", "session", s.id, "name", s.name, "idle", ttl)
	}
}
