package tiers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// StoreConfig configures a Store.
type StoreConfig struct {
	Mirror MirrorConfig
	SSD    SSDConfig
	// SpillBatch is how many pages a synchronous spill (a write that found
	// the mirror full) writes to SSD in one commit (default 16); the
	// background spiller writes four times as many per commit.
	SpillBatch int
	// HighWater and LowWater are fractions of the mirror budget: above
	// HighWater the background spiller writes cold pages to SSD until usage
	// is below LowWater (defaults 0.90 and 0.80). A write that finds the
	// mirror full spills synchronously.
	HighWater, LowWater float64
	// DirtyRatio bounds the bytes that exist only in the mirror, as a share
	// of the budget (default 0.25; negative: no bound). The background
	// spiller writes the coldest such pages to SSD ahead of time and keeps
	// them in the mirror, so evicting them later costs no SSD write on the
	// recall path.
	DirtyRatio float64
	// Logger receives spill failures (default slog.Default()).
	Logger *slog.Logger
}

// Source says where a page read came from.
type Source uint8

// Sources of a page read or recall.
const (
	SourceNone    Source = iota
	SourceReserve        // already in the reserve slot at the wanted generation
	SourceMirror         // host mirror
	SourceStaged         // host mirror, brought in by Stage ahead of need
	SourceSSD            // SSD: the page was needed but not in host memory (late)
)

func (s Source) String() string {
	switch s {
	case SourceReserve:
		return "reserve"
	case SourceMirror:
		return "mirror"
	case SourceStaged:
		return "staged"
	case SourceSSD:
		return "ssd"
	}
	return "none"
}

// StoreStats is a snapshot of the Store's counters for metrics.
type StoreStats struct {
	Mirror TierStats
	SSD    TierStats

	MirrorUsed   int64 // bytes of mirror slots in use
	MirrorMapped int64 // bytes of mirror extents mapped

	Spills       uint64 // pages moved out of the mirror to make room
	SpillBytes   uint64 // bytes written to SSD by spills
	Flushes      uint64 // pages written to SSD by Flush
	Cleaned      uint64 // pages written to SSD ahead of eviction (DirtyRatio), kept in the mirror
	BroughtBack  uint64 // pages read from SSD back into the mirror
	Staged       uint64 // pages brought into the mirror by Stage
	StagedUsed   uint64 // staged pages later read
	StagedUnused uint64 // staged pages evicted, overwritten or dropped unread
	StageSkipped uint64 // Stage requests skipped for lack of clean room
}

// Store is the daemon's page store for session pages: the host mirror in front
// of the SSD. Writes go to the mirror; when it passes its budget the least
// recently used pages are written to SSD (if they are not there already at
// their generation) and dropped from the mirror. A read that misses the mirror
// is served from SSD and brought back.
type Store struct {
	cfg    StoreConfig
	mirror *HostMirror
	ssd    *SSD
	log    *slog.Logger

	epochMu sync.Mutex
	epochs  map[uint64]uint64 // session → number of Drops, guards late writes

	bufs sync.Pool // *[]byte for pages read from SSD

	spillMu sync.Mutex // one spill round at a time
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	closed  atomic.Bool

	hits, misses                       atomic.Uint64
	spills, spillBytes, flushes        atomic.Uint64
	cleaned                            atomic.Uint64
	broughtBack, staged, stagedUsed    atomic.Uint64
	stageSkipped, puts, gets           atomic.Uint64
	bytesIn, bytesOut, integrityErrors atomic.Uint64
}

var _ Tier = (*Store)(nil)

// OpenStore opens the SSD tier and creates the mirror in front of it.
func OpenStore(cfg StoreConfig) (*Store, error) {
	if cfg.SpillBatch <= 0 {
		cfg.SpillBatch = 16
	}
	if cfg.HighWater <= 0 || cfg.HighWater > 1 {
		cfg.HighWater = 0.90
	}
	if cfg.LowWater <= 0 || cfg.LowWater >= cfg.HighWater {
		cfg.LowWater = cfg.HighWater - 0.10
	}
	if cfg.DirtyRatio == 0 {
		cfg.DirtyRatio = 0.25
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.SSD.Logger == nil {
		cfg.SSD.Logger = cfg.Logger
	}
	ssd, err := OpenSSD(cfg.SSD)
	if err != nil {
		return nil, err
	}
	s := &Store{
		cfg:    cfg,
		mirror: NewHostMirror(cfg.Mirror),
		ssd:    ssd,
		log:    cfg.Logger,
		epochs: make(map[uint64]uint64),
		kick:   make(chan struct{}, 1),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	go s.spiller()
	return s, nil
}

// Mirror and SSD expose the tiers for metrics and for callers that need a
// tier-specific operation (metadata, chunk writes).
func (s *Store) Mirror() *HostMirror { return s.mirror }

// SSD returns the SSD tier.
func (s *Store) SSD() *SSD { return s.ssd }

func (s *Store) epoch(session uint64) uint64 {
	s.epochMu.Lock()
	defer s.epochMu.Unlock()
	return s.epochs[session]
}

func (s *Store) checkOpen() error {
	if s.closed.Load() {
		return fmt.Errorf("store: %w", ErrClosed)
	}
	return nil
}

func (s *Store) overHighWater() bool {
	if s.cfg.Mirror.Budget <= 0 {
		return false
	}
	used, _ := s.mirror.Footprint()
	return float64(used) > s.cfg.HighWater*float64(s.cfg.Mirror.Budget)
}

func (s *Store) kickSpiller() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Write stores a page in the mirror at gen, spilling cold pages to SSD when
// the mirror is full. ErrBudget only if nothing can be spilled (every page is
// being copied) or the page alone exceeds the budget.
func (s *Store) Write(ctx context.Context, id PageID, gen uint64, page []byte) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	err := s.putMirror(ctx, id, gen, page, putOpts{}, false)
	if err == nil {
		s.puts.Add(1)
		s.bytesIn.Add(uint64(len(page)))
	}
	return err
}

// WriteChunk is the append path through the store: it writes one chunk into
// the page's mirror copy at generation gen and returns the generation the page
// had before (0 for a new page). A page that was spilled is first brought
// back from SSD, so its other chunks are kept; a full mirror spills cold pages
// as Write does. The caller serialises writes to one page.
func (s *Store) WriteChunk(ctx context.Context, id PageID, gen uint64, geo *Geometry, chunk int, payload []byte) (uint64, error) {
	g := geo.g
	if err := g.checkChunk(g.pageBytes, chunk, len(payload)); err != nil {
		return 0, fmt.Errorf("page %v: %w", id, err)
	}
	return s.writeInPlace(ctx, id, gen, g.pageBytes, len(payload), func(page []byte) {
		_ = g.scatterChunk(page, chunk, payload) // checked above
	})
}

// WriteChunkRun is WriteChunk for a run of consecutive chunks of one page
// taken from an APPEND payload (one copy per layer segment).
func (s *Store) WriteChunkRun(ctx context.Context, id PageID, gen uint64, geo *Geometry, run ChunkRun) (uint64, error) {
	g := geo.g
	if err := g.checkRun(g.pageBytes, run); err != nil {
		return 0, fmt.Errorf("page %v: %w", id, err)
	}
	return s.writeInPlace(ctx, id, gen, g.pageBytes, run.Count*g.chunkBytes, func(page []byte) {
		g.eachRunCopy(run, func(pageOff, payOff, n int) {
			copy(page[pageOff:pageOff+n], run.Payload[payOff:payOff+n])
		})
	})
}

func (s *Store) writeInPlace(ctx context.Context, id PageID, gen uint64, pageBytes, nbytes int, fill func([]byte)) (uint64, error) {
	if err := s.checkOpen(); err != nil {
		return 0, err
	}
	// A page leaves the mirror only after it is on SSD, so a page missing from
	// both is new; one missing from the mirror alone is brought back first
	// (a spill can take it again meanwhile, hence the loop).
	create := false
	for attempt := 0; ; attempt++ {
		prev, err := s.mirror.writeInPlace(id, gen, pageBytes, nbytes, create, fill)
		if err == nil {
			if s.overHighWater() {
				s.kickSpiller()
			}
			s.bytesIn.Add(uint64(nbytes))
			return prev, nil
		}
		if attempt >= 32 {
			return 0, err
		}
		switch {
		case errors.Is(err, errMiss):
			if !s.ssd.mayHave(id) {
				create = true // a new page: no SSD lookup, no miss counted
				continue
			}
			g, bp, rerr := s.readSSD(ctx, id)
			if errors.Is(rerr, ErrNotFound) {
				create = true
				continue
			}
			if rerr != nil {
				return 0, fmt.Errorf("page %v: bringing back a spilled page: %w", id, rerr)
			}
			perr := s.putMirror(ctx, id, g, *bp, putOpts{persisted: true, onlyIfNewer: true}, false)
			s.bufs.Put(bp)
			if perr != nil && !errors.Is(perr, errSkip) {
				return 0, fmt.Errorf("page %v: bringing back a spilled page: %w", id, perr)
			}
			s.broughtBack.Add(1)
		case errors.Is(err, ErrBudget):
			freed, serr := s.spillRound(ctx, false, s.cfg.SpillBatch, 0, pageBytes)
			if serr != nil {
				return 0, fmt.Errorf("page %v: making room: %w", id, serr)
			}
			if freed == 0 {
				time.Sleep(time.Duration(attempt+1) * 200 * time.Microsecond)
			}
		default:
			return 0, err
		}
	}
}

// putMirror inserts, spilling synchronously on ErrBudget. cleanOnly limits
// the room it makes to pages already on SSD (for prefetches, which must not
// cost a write).
func (s *Store) putMirror(ctx context.Context, id PageID, gen uint64, page []byte, o putOpts, cleanOnly bool) error {
	err := s.withRoom(ctx, id, len(page), cleanOnly, func() error { return s.mirror.put(ctx, id, gen, page, o) })
	if err == nil && s.overHighWater() {
		s.kickSpiller()
	}
	return err
}

// reserveMirror is reserveBuf that makes room as putMirror does with
// cleanOnly; ErrBudget when no clean page can go.
func (s *Store) reserveMirror(ctx context.Context, id PageID, n int) (b *mbuf, err error) {
	err = s.withRoom(ctx, id, n, true, func() (err error) {
		b, err = s.mirror.reserveBuf(id, n)
		return err
	})
	return b, err
}

// withRoom runs try (a mirror insert of n bytes) until it is not refused for
// ErrBudget, spilling the coldest pages between tries; cleanOnly spills
// only pages already on SSD and gives up as soon as none can go.
func (s *Store) withRoom(ctx context.Context, id PageID, n int, cleanOnly bool, try func() error) error {
	for attempt := 0; ; attempt++ {
		err := try()
		if err == nil || !errors.Is(err, ErrBudget) || attempt >= 64 {
			return err
		}
		freed, serr := s.spillRound(ctx, cleanOnly, s.cfg.SpillBatch, 0, n)
		if serr != nil {
			return fmt.Errorf("page %v: making room: %w", id, serr)
		}
		if freed == 0 {
			// Every cold page is being copied or spilled by someone else;
			// their slots come free within a copy's time.
			if cleanOnly || attempt >= 16 {
				return err
			}
			time.Sleep(time.Duration(attempt+1) * 200 * time.Microsecond)
		}
	}
}

// spillRound writes up to n of the coldest pages (at most about maxBytes of
// slots if maxBytes > 0) to SSD and drops
// them from the mirror; it returns how many left the mirror.
//
// need > 0 is a writer that found no room for a page of need bytes: if a round
// that ran while it waited for spillMu made room, nothing more is spilled (1 is
// returned, so the writer retries). Without this, every writer that hit a full
// mirror at once spilled its own batch, and pages just staged for the next
// cycle went back to SSD before their recall.
func (s *Store) spillRound(ctx context.Context, cleanOnly bool, n int, maxBytes int64, need int) (int, error) {
	s.spillMu.Lock()
	defer s.spillMu.Unlock()
	if need > 0 && s.mirror.hasRoom(need) {
		return 1, nil
	}
	items := s.mirror.spillCandidates(n, cleanOnly, maxBytes)
	if len(items) == 0 {
		return 0, nil
	}
	var writes []PageWrite
	var epochs []uint64
	for _, it := range items {
		if it.dirty {
			writes = append(writes, PageWrite{ID: it.p.id, Gen: it.gen, Page: it.buf.data})
			epochs = append(epochs, s.epoch(it.p.id.Session))
		}
	}
	var err error
	if len(writes) > 0 {
		err = s.ssd.PutBatch(ctx, writes)
	}
	freed := 0
	for _, it := range items {
		if s.mirror.endSpill(it, err == nil) {
			freed++
		}
	}
	if err != nil {
		return 0, err
	}
	for i, w := range writes {
		// A session dropped while its pages were being spilled must not keep
		// pages on SSD.
		if s.epoch(w.ID.Session) != epochs[i] {
			_ = s.ssd.Delete(context.Background(), w.ID)
		}
		s.spillBytes.Add(uint64(len(w.Page)))
	}
	s.spills.Add(uint64(freed))
	return freed, nil
}

func (s *Store) spiller() {
	defer close(s.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-s.kick:
		case <-t.C:
		}
		if s.cfg.Mirror.Budget <= 0 {
			continue
		}
		low := s.cfg.LowWater * float64(s.cfg.Mirror.Budget)
		for {
			used, _ := s.mirror.Footprint()
			if float64(used) <= low || s.closed.Load() {
				break
			}
			// Nobody waits on the background spiller, so it writes bigger
			// batches: Badger's per-commit cost (two syncs) is amortised
			// over more bytes (docs/benchmarks.md, tiers section).
			freed, err := s.spillRound(context.Background(), false, 4*s.cfg.SpillBatch, used-int64(low), 0)
			if err != nil {
				if !errors.Is(err, ErrClosed) {
					s.log.Warn("spill to SSD failed", "err", err)
				}
				break
			}
			if freed == 0 {
				break
			}
		}
		s.clean()
	}
}

// clean writes the coldest pages that exist only in the mirror to SSD,
// keeping them in the mirror, until at most DirtyRatio of the budget is
// unsaved. Spilling them later is then free, so a burst of recalls into a
// full mirror does not wait on SSD writes (docs/evaluation.md, simulator).
func (s *Store) clean() {
	if s.cfg.DirtyRatio < 0 {
		return
	}
	limit := int64(s.cfg.DirtyRatio * float64(s.cfg.Mirror.Budget))
	for !s.closed.Load() {
		if _, dirty := s.mirror.unsavedPages(); dirty <= limit {
			return
		}
		items := s.mirror.cleanCandidates(4 * s.cfg.SpillBatch)
		if len(items) == 0 {
			return
		}
		writes := make([]PageWrite, len(items))
		epochs := make([]uint64, len(items))
		for i, it := range items {
			writes[i] = PageWrite{ID: it.p.id, Gen: it.gen, Page: it.buf.data}
			epochs[i] = s.epoch(it.p.id.Session)
		}
		// Under spillMu like a spill round, so Stats never sees a page both
		// on SSD and still unsaved in the mirror.
		s.spillMu.Lock()
		err := s.ssd.PutBatch(context.Background(), writes)
		for _, it := range items {
			s.mirror.endFlush(it, err == nil)
		}
		s.spillMu.Unlock()
		if err != nil {
			if !errors.Is(err, ErrClosed) {
				s.log.Warn("cleaning pages to SSD failed", "err", err)
			}
			return
		}
		for i, w := range writes {
			if s.epoch(w.ID.Session) != epochs[i] {
				_ = s.ssd.Delete(context.Background(), w.ID)
			}
		}
		s.cleaned.Add(uint64(len(items)))
	}
}

// viewMirror is view for many pages that only looks in the mirror: fn runs
// once with the pages found (refs[i].ok) referenced; the others are for the
// caller to read through view (from SSD).
func (s *Store) viewMirror(ids []PageID, refs []mirrorRef, fn func(refs []mirrorRef)) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	return s.mirror.viewMany(ids, refs, func(refs []mirrorRef) {
		for _, r := range refs {
			if r.ok {
				s.gets.Add(1)
				s.hits.Add(1)
				if r.staged {
					s.stagedUsed.Add(1)
				}
			}
		}
		fn(refs)
	})
}

// view serves a page without copying it out of the tier that holds it: from
// the mirror, or from SSD (bringing it back into the mirror). fn must not keep
// data.
func (s *Store) view(ctx context.Context, id PageID, fn func(gen uint64, data []byte) error) (Source, error) {
	return s.viewThen(ctx, id, fn, nil)
}

// viewThen is view for a reader someone waits on (a recall): served, once fn
// has succeeded, is told where the page came from before a page read from
// SSD is brought back into the mirror, and that bring-back only takes room
// from clean pages. Making room can otherwise mean spilling dirty pages,
// i.e. an SSD write, and a decoder waited for it behind its page: 150 ms
// at the first selection of eight sessions once staging had used up the
// clean pages (docs/benchmarks.md, "SSD as a capacity tier"). The spiller
// writes dirty pages in the background anyway.
func (s *Store) viewThen(ctx context.Context, id PageID, fn func(gen uint64, data []byte) error, served func(Source)) (Source, error) {
	if err := s.checkOpen(); err != nil {
		return SourceNone, err
	}
	if err := ctx.Err(); err != nil {
		return SourceNone, err
	}
	s.gets.Add(1)
	staged, err := s.mirror.view(id, fn)
	if err == nil {
		s.hits.Add(1)
		src := SourceMirror
		if staged {
			s.stagedUsed.Add(1)
			src = SourceStaged
		}
		if served != nil {
			served(src)
		}
		return src, nil
	}
	if !errors.Is(err, errMiss) {
		return SourceNone, err
	}
	ep := s.epoch(id.Session)
	// Copy out of Badger first: making room in the mirror may write to SSD,
	// which must not happen inside the read transaction.
	gen, bp, err := s.readSSD(ctx, id)
	if err != nil {
		s.misses.Add(1)
		if errors.Is(err, ErrIntegrity) {
			s.integrityErrors.Add(1)
		}
		return SourceNone, err
	}
	defer s.bufs.Put(bp)
	if err := fn(gen, *bp); err != nil {
		return SourceNone, err
	}
	s.hits.Add(1)
	if served != nil {
		served(SourceSSD)
	}
	// Best effort: a page read from SSD is likely read again soon; if there is
	// no room it stays on SSD.
	if s.putMirror(ctx, id, gen, *bp, putOpts{persisted: true, onlyIfNewer: true}, served != nil) == nil {
		s.broughtBack.Add(1)
		if s.epoch(id.Session) != ep {
			_ = s.mirror.Delete(context.Background(), id)
		}
	}
	return SourceSSD, nil
}

// readSSD copies a verified page out of the SSD into a pooled buffer.
func (s *Store) readSSD(ctx context.Context, id PageID) (uint64, *[]byte, error) {
	var bp *[]byte
	gen, _, err := s.ssd.read(ctx, id, func(n int) ([]byte, error) {
		bp, _ = s.bufs.Get().(*[]byte)
		if bp == nil || cap(*bp) < n {
			b := make([]byte, n)
			bp = &b
		}
		*bp = (*bp)[:n]
		return *bp, nil
	})
	if err != nil {
		if bp != nil {
			s.bufs.Put(bp)
		}
		return 0, nil, err
	}
	return gen, bp, nil
}

// Read copies a page into dst (exactly the page's length) and returns its
// generation and where it came from.
func (s *Store) Read(ctx context.Context, id PageID, dst []byte) (uint64, Source, error) {
	var gen uint64
	src, err := s.view(ctx, id, func(g uint64, data []byte) error {
		if len(data) != len(dst) {
			return fmt.Errorf("page %v: buffer %d B, page is %d: %w", id, len(dst), len(data), ErrSize)
		}
		copy(dst, data)
		gen = g
		return nil
	})
	if err == nil {
		s.bytesOut.Add(uint64(len(dst)))
	}
	return gen, src, err
}

// Stage brings pages from SSD into the mirror ahead of need (lookahead
// candidates). Pages already in the mirror are left alone; room is made only
// by dropping pages already on SSD, never by writing. It returns how many
// pages it brought in. The Mover calls it from its workers; callers on the
// socket loop use Mover.Stage.
func (s *Store) Stage(ctx context.Context, ids []PageID) (int, error) {
	n := 0
	for _, id := range ids {
		if err := s.checkOpen(); err != nil {
			return n, err
		}
		if err := ctx.Err(); err != nil {
			return n, err
		}
		if _, ok := s.mirror.Generation(id); ok {
			continue
		}
		ep := s.epoch(id.Session)
		// The page is read straight into its mirror slot: one copy (out
		// of the O_DIRECT buffer, checksummed on the way) instead of two,
		// and no read at all when no clean page can make room.
		var b *mbuf
		gen, _, err := s.ssd.read(ctx, id, func(n int) ([]byte, error) {
			var err error
			if b, err = s.reserveMirror(ctx, id, n); err != nil {
				return nil, err
			}
			return b.data, nil
		})
		if err != nil && b != nil {
			s.mirror.abortBuf(b)
		}
		switch {
		case errors.Is(err, ErrNotFound):
			continue // never written or dropped: nothing to stage
		case errors.Is(err, ErrBudget):
			s.stageSkipped.Add(1)
			continue
		case errors.Is(err, ErrIntegrity):
			s.integrityErrors.Add(1)
			return n, err
		case err != nil:
			return n, err
		}
		err = s.mirror.commitBuf(id, gen, b, putOpts{persisted: true, staged: true, onlyIfNewer: true})
		if err == nil && s.overHighWater() {
			s.kickSpiller()
		}
		brought := err == nil
		if err != nil && !errors.Is(err, errSkip) {
			return n, err
		}
		if brought {
			if s.epoch(id.Session) != ep {
				_ = s.mirror.Delete(context.Background(), id)
				continue
			}
			n++
			s.staged.Add(1)
		}
	}
	return n, nil
}

// Flush writes every page of the session that is not on SSD at its current
// generation, then syncs, so a restarted daemon can resume the session.
func (s *Store) Flush(ctx context.Context, session uint64) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	items := s.mirror.dirtyPages(session)
	const batch = 32
	var err error
	for i := 0; i < len(items); i += batch {
		part := items[i:min(i+batch, len(items))]
		if err == nil {
			writes := make([]PageWrite, len(part))
			for j, it := range part {
				writes[j] = PageWrite{ID: it.p.id, Gen: it.gen, Page: it.buf.data}
			}
			err = s.ssd.PutBatch(ctx, writes)
			if err == nil {
				s.flushes.Add(uint64(len(part)))
			}
		}
		for _, it := range part {
			s.mirror.endFlush(it, err == nil)
		}
	}
	if err != nil {
		return fmt.Errorf("flush session %d: %w", session, err)
	}
	if !s.cfg.SSD.SyncWrites {
		return s.ssd.Sync()
	}
	return nil
}

// Drop forgets a session in both tiers.
func (s *Store) Drop(ctx context.Context, session uint64) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	s.epochMu.Lock()
	s.epochs[session]++
	s.epochMu.Unlock()
	err1 := s.mirror.DeleteSession(ctx, session)
	err2 := s.ssd.DeleteSession(ctx, session)
	return errors.Join(err1, err2)
}

// Put implements Tier (Write).
func (s *Store) Put(ctx context.Context, id PageID, gen uint64, page []byte) error {
	return s.Write(ctx, id, gen, page)
}

// Get implements Tier (Read).
func (s *Store) Get(ctx context.Context, id PageID, dst []byte) (uint64, error) {
	gen, _, err := s.Read(ctx, id, dst)
	return gen, err
}

// Delete implements Tier: the page leaves both tiers; ErrNotFound if neither
// had it.
func (s *Store) Delete(ctx context.Context, id PageID) error {
	if err := s.checkOpen(); err != nil {
		return err
	}
	err1 := s.mirror.Delete(ctx, id)
	err2 := s.ssd.Delete(ctx, id)
	if errors.Is(err1, ErrNotFound) && errors.Is(err2, ErrNotFound) {
		return err1
	}
	if err1 != nil && !errors.Is(err1, ErrNotFound) {
		return err1
	}
	if err2 != nil && !errors.Is(err2, ErrNotFound) {
		return err2
	}
	return nil
}

// DeleteSession implements Tier (Drop).
func (s *Store) DeleteSession(ctx context.Context, session uint64) error {
	return s.Drop(ctx, session)
}

// Stats implements Tier: Pages and Bytes count every page once, whether it is
// in the mirror, on SSD or both.
func (s *Store) Stats() TierStats {
	// Spill and clean rounds move pages between the two counts under spillMu.
	s.spillMu.Lock()
	ssd := s.ssd.Stats()
	up, ub := s.mirror.unsavedPages()
	s.spillMu.Unlock()
	st := TierStats{
		Pages:           ssd.Pages + up,
		Bytes:           ssd.Bytes + ub,
		Capacity:        s.cfg.Mirror.Budget,
		Puts:            s.puts.Load(),
		Gets:            s.gets.Load(),
		Hits:            s.hits.Load(),
		Misses:          s.misses.Load(),
		BytesIn:         s.bytesIn.Load(),
		BytesOut:        s.bytesOut.Load(),
		Evictions:       s.spills.Load(),
		IntegrityErrors: s.integrityErrors.Load(),
	}
	return st
}

// Snapshot returns every counter of the store and its tiers.
func (s *Store) Snapshot() StoreStats {
	used, mapped := s.mirror.Footprint()
	return StoreStats{
		Mirror:       s.mirror.Stats(),
		SSD:          s.ssd.Stats(),
		MirrorUsed:   used,
		MirrorMapped: mapped,
		Spills:       s.spills.Load(),
		SpillBytes:   s.spillBytes.Load(),
		Flushes:      s.flushes.Load(),
		Cleaned:      s.cleaned.Load(),
		BroughtBack:  s.broughtBack.Load(),
		Staged:       s.staged.Load(),
		StagedUsed:   s.stagedUsed.Load(),
		StagedUnused: s.mirror.stagedUnusedCount(),
		StageSkipped: s.stageSkipped.Load(),
	}
}

// Close stops the spiller and closes both tiers. Pages not flushed are lost
// with the mirror: call Flush for sessions that must survive first.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.stop)
	<-s.done
	s.spillMu.Lock() // wait for a synchronous spill in progress
	s.spillMu.Unlock()
	return errors.Join(s.mirror.Close(), s.ssd.Close())
}
