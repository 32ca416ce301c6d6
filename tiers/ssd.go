package tiers

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// Key prefixes. Page keys are 'p' + session (u64 BE) + page (u32 BE), so a
// session's pages are one contiguous key range.
const (
	pagePrefix    = 'p'
	metaPrefix    = 'm'
	pageKeySize   = 13
	maxMetaName   = 1024
	ssdValueLimit = 1 << 10 // values above go to the value log: only large metadata blobs
)

// SSDConfig configures the SSD tier.
type SSDConfig struct {
	// Dir holds the Badger files (the index and metadata blobs) and, under
	// Dir/pages, the page segment files (created if missing).
	Dir string
	// SyncWrites makes every Put (and every PutBatch as a whole) durable
	// before it returns: the bodies' segments are fdatasynced, then the index
	// entries are committed with a Badger sync (concurrent commits share it).
	// Without it nothing is synced until Sync or Close (which sync the
	// segments first, then the index); after a machine crash a page whose
	// index entry reached the disk before its body reads as ErrIntegrity,
	// never as wrong bytes.
	SyncWrites bool
	// GCInterval is how often space is reclaimed (default 1 minute; negative
	// disables it): segments whose live bytes fell to 1-GCDiscardRatio of
	// their size are compacted, and Badger's value log is collected.
	GCInterval time.Duration
	// GCDiscardRatio is the fraction of garbage a segment or value-log file
	// needs before GC rewrites it (default 0.5).
	GCDiscardRatio float64
	// SegmentBytes is the size of one page segment file, preallocated when it
	// is created (default 256 MiB; a page larger than that gets a segment of
	// its own).
	SegmentBytes int64
	// ValueLogFileSize is the size of one Badger value-log file (default 1
	// GiB); only metadata blobs over 1 KiB go there.
	ValueLogFileSize int64
	// MemTableSize (default 64 MiB) and BlockCacheSize (default 32 MiB) size
	// the LSM part, which holds the page index and metadata.
	MemTableSize   int64
	BlockCacheSize int64
	// Logger receives Badger's warnings and errors (default slog.Default()).
	Logger *slog.Logger
}

// SSD is the disk tier. Page bodies live in append-only segment files
// (ssd_segments.go), written with pwrite from the calling goroutines and
// synced once per segment per batch; Badger holds the index, one 40-byte
// entry per page naming segment, offset, length, generation and CRC32C
// (ssd_index.go), and the session metadata blobs. A page that fails
// verification is never served: the read returns ErrIntegrity and is counted.
//
// Durable order: bodies are synced before the index entries that point at
// them are committed, so a crash in between loses the batch (no entry names
// it) and a committed entry always finds its bytes.
type SSD struct {
	cfg  SSDConfig
	db   *badger.DB
	segs *segStore

	mu     sync.RWMutex // held shared by operations, exclusively by Close
	closed bool

	// idx is held shared by index commits of writes and deletes, and
	// exclusively by compaction's check-and-move commit, so a move never
	// overwrites an entry a concurrent write has just committed.
	idx  sync.RWMutex
	gcMu sync.Mutex // one GC round at a time

	// cache mirrors every valid index entry in memory (about 80 B per page),
	// so a read costs no Badger transaction. It is updated right after each
	// index commit, under idx, so it never runs ahead of Badger; a reader
	// that sees the previous entry gets the previous generation, which a
	// read racing a write may return anyway.
	cacheMu sync.RWMutex
	// uncached is set when the index holds pages the cache does not (values
	// of the earlier format, corrupt entries): then only a lookup in Badger
	// can say a page is absent.
	uncached atomic.Bool
	cache    map[PageID]indexEntry

	stop   chan struct{}
	gcDone chan struct{}

	pages     atomic.Int64
	bytes     atomic.Int64
	gcRuns    atomic.Uint64
	compacted atomic.Uint64
	counters  tierCounters
}

var (
	_ Tier        = (*SSD)(nil)
	_ BatchPutter = (*SSD)(nil)
	_ PageLister  = (*SSD)(nil)
)

type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Error(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}

func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}

// Infof and Debugf are dropped: Badger logs every compaction at info level.
func (badgerLogger) Infof(string, ...any)  {}
func (badgerLogger) Debugf(string, ...any) {}

// OpenSSD opens (or creates) the tier in cfg.Dir.
func OpenSSD(cfg SSDConfig) (*SSD, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("ssd: empty directory: %w", ErrName)
	}
	if cfg.GCInterval == 0 {
		cfg.GCInterval = time.Minute
	}
	if cfg.GCDiscardRatio <= 0 || cfg.GCDiscardRatio >= 1 {
		cfg.GCDiscardRatio = 0.5
	}
	if cfg.SegmentBytes <= 0 {
		cfg.SegmentBytes = defaultSegmentBytes
	}
	cfg.SegmentBytes = min(alignRecord(cfg.SegmentBytes), maxSegmentBytes)
	if cfg.ValueLogFileSize <= 0 {
		cfg.ValueLogFileSize = 1 << 30
	}
	if cfg.MemTableSize <= 0 {
		cfg.MemTableSize = 64 << 20
	}
	if cfg.BlockCacheSize <= 0 {
		cfg.BlockCacheSize = 32 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	opts := badger.DefaultOptions(cfg.Dir).
		WithLogger(badgerLogger{cfg.Logger}).
		WithSyncWrites(cfg.SyncWrites).
		WithValueThreshold(ssdValueLimit).
		WithValueLogFileSize(cfg.ValueLogFileSize).
		WithMemTableSize(cfg.MemTableSize).
		WithBlockCacheSize(cfg.BlockCacheSize).
		WithNumVersionsToKeep(1).
		// Index entries are checksummed 40-byte records: compression buys
		// nothing and costs CPU.
		WithCompression(options.None).
		// No transaction reads and then writes the same key for a decision
		// (compaction's check-and-move is guarded by SSD.idx instead), so
		// conflict tracking is pure overhead.
		WithDetectConflicts(false)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("ssd: open %s: %w", cfg.Dir, err)
	}
	segs, err := openSegStore(filepath.Join(cfg.Dir, segDirName), cfg.SegmentBytes)
	if err != nil {
		db.Close()
		return nil, err
	}
	s := &SSD{cfg: cfg, db: db, segs: segs, cache: map[PageID]indexEntry{}, stop: make(chan struct{}), gcDone: make(chan struct{})}
	if err := s.countPages(); err != nil {
		segs.close()
		db.Close()
		return nil, err
	}
	go s.gcLoop()
	return s, nil
}

// countPages sets the gauges and each segment's live bytes from the index.
func (s *SSD) countPages() error {
	live, end := map[uint32]int64{}, map[uint32]int64{}
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pagePrefix}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			s.pages.Add(1)
			_ = it.Item().Value(func(v []byte) error {
				if !isIndexValue(v) {
					s.bytes.Add(legacyLen(v))
					s.uncached.Store(true)
					return nil
				}
				// A corrupt entry still counts as a page (reads of it
				// report ErrIntegrity); it just claims no segment space.
				id := pageIDOf(it.Item().Key())
				if e, err := decodeIndex(v, id); err != nil {
					s.uncached.Store(true)
				} else {
					s.cache[id] = e
					s.bytes.Add(int64(e.length))
					live[e.seg] += e.recordLen()
					end[e.seg] = max(end[e.seg], e.off+e.recordLen())
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ssd: read index: %w", err)
	}
	return s.segs.adopt(live, end)
}

func pageIDOf(key []byte) PageID {
	if len(key) != pageKeySize {
		return PageID{}
	}
	return PageID{Session: binary.BigEndian.Uint64(key[1:]), Page: binary.BigEndian.Uint32(key[9:])}
}

// legacyLen is the body length of a page value of the earlier format (header
// and body in Badger).
func legacyLen(v []byte) int64 {
	if len(v) >= pageHeaderSize && string(v[:4]) == pageMagic {
		return int64(binary.LittleEndian.Uint32(v[20:]))
	}
	return 0
}

// stored describes what the index holds for a page, for the gauges and the
// segments' live bytes.
type stored struct {
	ok    bool
	seg   uint32
	rec   int64 // record bytes in seg (0: none, e.g. a legacy value)
	bytes int64 // body bytes
}

func storedOf(item *badger.Item) stored {
	st := stored{ok: true}
	_ = item.Value(func(v []byte) error {
		if !isIndexValue(v) {
			st.bytes = legacyLen(v)
			return nil
		}
		if e, err := decodeIndex(v, pageIDOf(item.Key())); err == nil {
			st.seg, st.rec, st.bytes = e.seg, e.recordLen(), int64(e.length)
		}
		return nil
	})
	return st
}

func (s *SSD) gcLoop() {
	defer close(s.gcDone)
	if s.cfg.GCInterval < 0 {
		<-s.stop
		return
	}
	t := time.NewTicker(s.cfg.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.RunGC()
		}
	}
}

// RunGC compacts page segments whose live bytes fell to 1-GCDiscardRatio of
// their size (moving live pages to the active segment, then deleting the
// file), and runs Badger's value-log GC until no file qualifies (at most 16
// rewrites per call so it cannot monopolise the disk).
func (s *SSD) RunGC() {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return
	}
	if err := s.compact(); err != nil {
		s.cfg.Logger.Warn("page segment compaction", "err", err)
	}
	for i := 0; i < 16; i++ {
		err := s.db.RunValueLogGC(s.cfg.GCDiscardRatio)
		if err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				s.cfg.Logger.Warn("value log GC", "err", err)
			}
			return
		}
		s.gcRuns.Add(1)
	}
}

func pageKey(id PageID) []byte {
	k := make([]byte, pageKeySize)
	k[0] = pagePrefix
	binary.BigEndian.PutUint64(k[1:], id.Session)
	binary.BigEndian.PutUint32(k[9:], id.Page)
	return k
}

func sessionPrefix(session uint64) []byte {
	k := make([]byte, 9)
	k[0] = pagePrefix
	binary.BigEndian.PutUint64(k[1:], session)
	return k
}

func metaKey(name string) ([]byte, error) {
	if name == "" || len(name) > maxMetaName || !utf8.ValidString(name) {
		return nil, fmt.Errorf("meta name %q: %w", name, ErrName)
	}
	return append([]byte{metaPrefix}, name...), nil
}

func (s *SSD) begin() error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return fmt.Errorf("ssd: %w", ErrClosed)
	}
	return nil
}

func (s *SSD) end() { s.mu.RUnlock() }

// Put implements Tier.
func (s *SSD) Put(ctx context.Context, id PageID, gen uint64, page []byte) error {
	return s.PutBatch(ctx, []PageWrite{{ID: id, Gen: gen, Page: page}})
}

// PutBatch writes the bodies into the active segment from up to 8 goroutines
// at reserved offsets, fdatasyncs each segment it touched once (SyncWrites),
// then commits every index entry in one Badger transaction where the size
// limit allows. With SyncWrites the batch is durable when it returns.
func (s *SSD) PutBatch(ctx context.Context, pages []PageWrite) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, w := range pages {
		if err := checkPageLen(w.ID, len(w.Page)); err != nil {
			return err
		}
		if w.Gen == 0 {
			return fmt.Errorf("page %v: generation 0: %w", w.ID, ErrStale)
		}
	}
	if len(pages) == 0 {
		return nil
	}
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	lens := make([]int64, len(pages))
	for i, w := range pages {
		lens[i] = pageHeaderSize + int64(len(w.Page))
	}
	locs := make([]loc, len(pages))
	if err := s.segs.reserve(lens, locs); err != nil {
		return err
	}
	entries := make([]indexEntry, len(pages))
	err := s.writeBodies(pages, locs, entries)
	if err == nil && s.cfg.SyncWrites {
		err = syncSegments(locs)
	}
	if err != nil {
		s.segs.settle(locs, lens, false, nil)
		return err
	}
	return s.commitIndex(pages, locs, lens, entries)
}

// writeBodies writes every record of a batch, spread over the cores: the
// checksum and the kernel's copy into the page cache are the CPU part of a
// write, and they run per page with no shared state.
func (s *SSD) writeBodies(pages []PageWrite, locs []loc, entries []indexEntry) error {
	errs := make([]error, len(pages))
	one := func(i int) {
		w, l := pages[i], locs[i]
		c, err := writeRecord(l, w.ID, w.Gen, w.Page)
		errs[i] = err
		entries[i] = indexEntry{seg: l.seg.id, length: uint32(len(w.Page)), off: l.off, gen: w.Gen, crc: c}
	}
	workers := min(runtime.GOMAXPROCS(0), len(pages), 8)
	if workers <= 1 {
		for i := range pages {
			one(i)
		}
		return errors.Join(errs...)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(pages); i = int(next.Add(1) - 1) {
				one(i)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// commitIndex commits the entries of written (and, with SyncWrites, synced)
// records and moves the segments' live bytes accordingly.
func (s *SSD) commitIndex(pages []PageWrite, locs []loc, lens []int64, entries []indexEntry) error {
	s.idx.RLock()
	defer s.idx.RUnlock()
	for i := 0; i < len(pages); {
		var added, bytes int64
		dead := map[uint32]int64{}
		txn := s.db.NewTransaction(true)
		start := i
		var err error
		for ; i < len(pages); i++ {
			key := pageKey(pages[i].ID)
			item, gerr := txn.Get(key)
			var old stored
			switch {
			case gerr == nil:
				old = storedOf(item)
			case errors.Is(gerr, badger.ErrKeyNotFound):
			default:
				err = gerr
			}
			if err == nil {
				err = txn.SetEntry(badger.NewEntry(key, encodeIndex(entries[i])))
			}
			if errors.Is(err, badger.ErrTxnTooBig) && i > start {
				// Page i goes first into the next transaction.
				err = nil
				break
			}
			if err != nil {
				break
			}
			if !old.ok {
				added++
			} else if old.rec > 0 {
				dead[old.seg] += old.rec
			}
			bytes += int64(entries[i].length) - old.bytes
		}
		if err == nil {
			err = txn.Commit()
		} else {
			txn.Discard()
		}
		if err != nil {
			s.segs.settle(locs[start:], lens[start:], false, nil)
			return fmt.Errorf("ssd: commit index of %d pages from %v: %w", len(pages)-start, pages[start].ID, err)
		}
		s.cacheMu.Lock()
		for j := start; j < i; j++ {
			s.cache[pages[j].ID] = entries[j]
		}
		s.cacheMu.Unlock()
		s.segs.settle(locs[start:i], lens[start:i], true, dead)
		s.pages.Add(added)
		s.bytes.Add(bytes)
		for _, w := range pages[start:i] {
			s.counters.puts.Add(1)
			s.counters.bytesIn.Add(uint64(len(w.Page)))
		}
	}
	return nil
}

// copyChecked copies body into dst (same length) and returns the CRC32C of
// what it copied, in one pass over memory.
func copyChecked(dst, body []byte) uint32 {
	var c uint32
	for off := 0; off < len(body); off += fusedBlock {
		end := min(off+fusedBlock, len(body))
		copy(dst[off:end], body[off:end])
		c = crc32.Update(c, castagnoli, dst[off:end])
	}
	return c
}

// fusedBlock is the unit of the copy-then-checksum loops: small enough that
// the checksum finds the block in cache right after the copy touched it.
const fusedBlock = 128 << 10

// mayHave reports whether id may be stored, without counting a read: false
// means the page was certainly never written (or was deleted).
func (s *SSD) mayHave(id PageID) bool {
	if s.uncached.Load() {
		return true
	}
	s.cacheMu.RLock()
	_, ok := s.cache[id]
	s.cacheMu.RUnlock()
	return ok
}

// lookup returns the index entry of id, or for a page of the earlier format
// copies and verifies it straight out of Badger into the buffer alloc gives
// (legacy reports whether that happened).
func (s *SSD) lookup(id PageID, alloc func(n int) ([]byte, error)) (e indexEntry, legacy bool, gen uint64, err error) {
	s.cacheMu.RLock()
	e, ok := s.cache[id]
	s.cacheMu.RUnlock()
	if ok {
		return e, false, 0, nil
	}
	// Not cached: absent, a page of the earlier format, or a corrupt entry.
	err = s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(pageKey(id))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("page %v: %w", id, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("ssd: get page %v: %w", id, err)
		}
		return item.Value(func(v []byte) error {
			if isIndexValue(v) {
				e, err = decodeIndex(v, id)
				return err
			}
			legacy = true
			h, err := decodePageHeader(v, id)
			if err != nil {
				return err
			}
			dst, err := alloc(int(h.length))
			if err != nil {
				return err
			}
			if got := copyChecked(dst, v[pageHeaderSize:]); got != h.crc {
				return fmt.Errorf("page %v gen %d: body checksum %08x, stored %08x: %w", id, h.gen, got, h.crc, ErrIntegrity)
			}
			gen = h.gen
			return nil
		})
	})
	return e, legacy, gen, err
}

// read copies a verified page into the buffer alloc returns for its length
// (alloc is called at most once). On ErrIntegrity the buffer holds unverified
// bytes and must not be used.
func (s *SSD) read(ctx context.Context, id PageID, alloc func(n int) ([]byte, error)) (uint64, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	if err := s.begin(); err != nil {
		return 0, nil, err
	}
	defer s.end()
	s.counters.gets.Add(1)
	var dst []byte
	once := func(n int) ([]byte, error) {
		if dst != nil && len(dst) == n {
			return dst, nil
		}
		if dst != nil {
			return nil, fmt.Errorf("page %v: length changed from %d to %d B while reading: %w", id, len(dst), n, ErrStale)
		}
		b, err := alloc(n)
		dst = b
		return b, err
	}
	gen, err := s.readOnce(id, once)
	// A record moved by compaction between the index lookup and the read:
	// the index already names its new place.
	for try := 0; errors.Is(err, errMoved) && try < 8; try++ {
		gen, err = s.readOnce(id, once)
	}
	if errors.Is(err, errMoved) {
		err = fmt.Errorf("page %v: segment keeps disappearing under the reader: %w", id, ErrIntegrity)
	}
	switch {
	case err == nil:
		s.counters.hits.Add(1)
		s.counters.bytesOut.Add(uint64(len(dst)))
	case errors.Is(err, ErrIntegrity):
		s.counters.integrityErrors.Add(1)
		s.counters.misses.Add(1)
	case errors.Is(err, ErrNotFound):
		s.counters.misses.Add(1)
	}
	return gen, dst, err
}

func (s *SSD) readOnce(id PageID, alloc func(n int) ([]byte, error)) (uint64, error) {
	e, legacy, gen, err := s.lookup(id, alloc)
	if err != nil || legacy {
		return gen, err
	}
	seg := s.segs.get(e.seg)
	if seg == nil {
		// Either compaction just removed it (the next lookup sees the new
		// place) or the file is gone; the caller retries a bounded number
		// of times.
		return 0, errMoved
	}
	if e.off+e.recordLen() > seg.size {
		return 0, fmt.Errorf("page %v: record at offset %d (%d B) past segment %d's %d B: %w", id, e.off, e.recordLen(), e.seg, seg.size, ErrIntegrity)
	}
	dst, err := alloc(int(e.length))
	if err != nil {
		return 0, err
	}
	if err := readRecord(seg, e, id, dst); err != nil {
		return 0, err
	}
	return e.gen, nil
}

// Get implements Tier.
func (s *SSD) Get(ctx context.Context, id PageID, dst []byte) (uint64, error) {
	gen, _, err := s.read(ctx, id, func(n int) ([]byte, error) {
		if n != len(dst) {
			return nil, fmt.Errorf("page %v: buffer %d B, page is %d: %w", id, len(dst), n, ErrSize)
		}
		return dst, nil
	})
	return gen, err
}

// Delete implements Tier. The record's bytes stay in their segment until
// compaction reclaims it.
func (s *SSD) Delete(ctx context.Context, id PageID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	s.idx.RLock()
	defer s.idx.RUnlock()
	key := pageKey(id)
	var old stored
	err := s.db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(key)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("page %v: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		old = storedOf(item)
		return txn.Delete(key)
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return err
		}
		return fmt.Errorf("ssd: delete page %v: %w", id, err)
	}
	s.cacheMu.Lock()
	delete(s.cache, id)
	s.cacheMu.Unlock()
	if old.rec > 0 {
		s.segs.release(map[uint32]int64{old.seg: old.rec})
	}
	s.pages.Add(-1)
	s.bytes.Add(-old.bytes)
	return nil
}

// DeleteSession implements Tier. It deletes the session's key range with
// tombstones in one write batch rather than Badger's DropPrefix, which stalls
// every writer of the database (all other sessions) while it runs.
func (s *SSD) DeleteSession(ctx context.Context, session uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	s.idx.RLock()
	defer s.idx.RUnlock()
	var keys [][]byte
	var size int64
	dead := map[uint32]int64{}
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: sessionPrefix(session)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
			old := storedOf(it.Item())
			size += old.bytes
			if old.rec > 0 {
				dead[old.seg] += old.rec
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ssd: list session %d: %w", session, err)
	}
	if len(keys) == 0 {
		return nil
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return fmt.Errorf("ssd: delete session %d: %w", session, err)
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("ssd: delete session %d: %w", session, err)
	}
	s.cacheMu.Lock()
	for _, k := range keys {
		delete(s.cache, pageIDOf(k))
	}
	s.cacheMu.Unlock()
	s.segs.release(dead)
	s.pages.Add(-int64(len(keys)))
	s.bytes.Add(-size)
	return nil
}

// Pages lists a session's stored pages in order.
func (s *SSD) Pages(ctx context.Context, session uint64) ([]uint32, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.begin(); err != nil {
		return nil, err
	}
	defer s.end()
	var out []uint32
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: sessionPrefix(session)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) == pageKeySize {
				out = append(out, binary.BigEndian.Uint32(k[9:]))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ssd: list session %d: %w", session, err)
	}
	return out, nil
}

// Sessions lists the sessions that have pages on SSD, so a restarted daemon
// can find pages no metadata blob refers to any more.
func (s *SSD) Sessions(ctx context.Context) ([]uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.begin(); err != nil {
		return nil, err
	}
	defer s.end()
	var out []uint64
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pagePrefix}})
		defer it.Close()
		for it.Rewind(); it.Valid(); {
			k := it.Item().Key()
			if len(k) != pageKeySize {
				it.Next()
				continue
			}
			sess := binary.BigEndian.Uint64(k[1:])
			out = append(out, sess)
			if sess == ^uint64(0) {
				break
			}
			it.Seek(sessionPrefix(sess + 1))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ssd: list sessions: %w", err)
	}
	return out, nil
}

// PutMeta stores a session metadata blob under name (durably if SyncWrites).
func (s *SSD) PutMeta(ctx context.Context, name string, blob []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	key, err := metaKey(name)
	if err != nil {
		return err
	}
	if len(blob) > MaxMetaBytes {
		return fmt.Errorf("meta %q: %d B over %d: %w", name, len(blob), MaxMetaBytes, ErrSize)
	}
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(key, encodeMeta(blob)) }); err != nil {
		return fmt.Errorf("ssd: put meta %q: %w", name, err)
	}
	return nil
}

// GetMeta returns a copy of the blob stored under name.
func (s *SSD) GetMeta(ctx context.Context, name string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	key, err := metaKey(name)
	if err != nil {
		return nil, err
	}
	if err := s.begin(); err != nil {
		return nil, err
	}
	defer s.end()
	var out []byte
	err = s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("meta %q: %w", name, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("ssd: get meta %q: %w", name, err)
		}
		return item.Value(func(v []byte) error {
			blob, err := decodeMeta(v, name)
			if err != nil {
				return err
			}
			out = append([]byte{}, blob...)
			return nil
		})
	})
	if errors.Is(err, ErrIntegrity) {
		s.counters.integrityErrors.Add(1)
	}
	return out, err
}

// DeleteMeta removes a metadata blob; ErrNotFound if absent.
func (s *SSD) DeleteMeta(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	key, err := metaKey(name)
	if err != nil {
		return err
	}
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	return s.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get(key); errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("meta %q: %w", name, ErrNotFound)
		} else if err != nil {
			return fmt.Errorf("ssd: delete meta %q: %w", name, err)
		}
		return txn.Delete(key)
	})
}

// ListMeta returns every metadata name in sorted order.
func (s *SSD) ListMeta(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.begin(); err != nil {
		return nil, err
	}
	defer s.end()
	var out []string
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{metaPrefix}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			out = append(out, string(it.Item().Key()[1:]))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ssd: list meta: %w", err)
	}
	return out, nil
}

// Sync makes every write so far durable (for callers running without
// SyncWrites that want a checkpoint, e.g. on shutdown).
func (s *SSD) Sync() error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	// Bodies before the index entries that point at them.
	if err := s.segs.syncDirty(); err != nil {
		return err
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("ssd: sync: %w", err)
	}
	return nil
}

// Stats implements Tier. Pages and Bytes are kept from Put and Delete and
// counted afresh on open; concurrent writes of one new page may count it twice
// until the next open.
func (s *SSD) Stats() TierStats {
	st := TierStats{Pages: s.pages.Load(), Bytes: s.bytes.Load()}
	s.counters.fill(&st)
	return st
}

// GCRuns is the number of value-log files GC has rewritten.
func (s *SSD) GCRuns() uint64 { return s.gcRuns.Load() }

// Close stops GC, syncs the segments written since their last sync and closes
// Badger (which syncs the index) and the segment files, waiting for
// operations in flight.
func (s *SSD) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	<-s.gcDone
	// Badger syncs the index on close; the bodies it points at go first.
	err := s.segs.syncDirty()
	if cerr := s.db.Close(); err == nil {
		err = cerr
	}
	if serr := s.segs.close(); err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("ssd: close: %w", err)
	}
	return nil
}
