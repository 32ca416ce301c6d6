package tiers

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	badger "github.com/dgraph-io/badger/v4"
)

// Index key prefixes. Page keys are 'p' + session (u64 BE) + page (u32 BE),
// so a session's pages are one contiguous key range; page deletions use the
// same layout under 'd'.
const (
	pagePrefix    = 'p'
	metaPrefix    = 'm'
	tombSPrefix   = 't'
	tombPPrefix   = 'd'
	tombMPrefix   = 'e'
	ckptKeyByte   = 'c'
	pageKeySize   = 13
	maxMetaName   = 1024
	ssdValueLimit = 16 << 10 // every index value is below (a metadata chain's at most 13.4 KiB): nothing goes to Badger's value log
)

// MaxMetaDeltas bounds the deltas that may follow one full metadata record
// (PutMetaDelta refuses more with ErrStale: write a full record then).
const MaxMetaDeltas = 128

// SSDConfig configures the SSD tier.
type SSDConfig struct {
	// Dir holds the Badger index and, under Dir/pages, the journal's segment
	// files (created if missing, mode 0700; every file 0600).
	Dir string
	// SyncWrites makes every Put (and every PutBatch as a whole) durable
	// before it returns: the records' segments are fdatasynced. The index is
	// never synced on the write path: it is rebuilt from the journal after a
	// crash (replay from its last checkpoint).
	SyncWrites bool
	// GCInterval is how often space is reclaimed (default 1 minute; negative
	// disables the timer): segments whose live bytes fell to
	// 1-GCDiscardRatio of their size are compacted. Writes also start a
	// round when the garbage they left behind passes a segment's worth.
	GCInterval time.Duration
	// GCDiscardRatio is the fraction of garbage a segment needs before GC
	// rewrites it (default 0.4: with growth steps of at most an eighth of a
	// segment, the files stay within 1/0.6 × 1.125 < 2× the live records).
	GCDiscardRatio float64
	// SegmentBytes is the most one segment file grows to (default 256 MiB;
	// a page larger than that gets a segment of its own). Files grow in
	// steps of 8 MiB as records arrive.
	SegmentBytes int64
	// MinFreeBytes is the free space the filesystem must keep: a write that
	// would leave less fails with ErrDiskFull (default 4 × MemTableSize + 16
	// MiB, so Badger's memory-mapped files always find room).
	MinFreeBytes int64
	// CheckpointInterval is how often the index is synced and its replay
	// start recorded (default 5 s), which bounds the journal a restart
	// replays.
	CheckpointInterval time.Duration
	// ValueLogFileSize is the size of one Badger value-log file (default 16
	// MiB; nothing is written there, index values are small).
	ValueLogFileSize int64
	// MemTableSize (default 4 MiB) and BlockCacheSize (default 16 MiB) size
	// the LSM part, which holds the index.
	MemTableSize   int64
	BlockCacheSize int64
	// Logger receives recovery reports and Badger's warnings and errors
	// (default slog.Default()).
	Logger *slog.Logger
	// ReadMode is how page records are read (ssd_direct.go): ReadDirect
	// (default, O_DIRECT, falling back to buffered with one log line where
	// the filesystem refuses it) or ReadBuffered. Writes are the same either
	// way.
	ReadMode string
	// ReadQueueDepth bounds O_DIRECT reads in flight (default
	// DefaultReadQueueDepth); ReadPiece is the size a page read is split
	// into (default DefaultReadPiece).
	ReadQueueDepth int
	ReadPiece      int64
	// MergeMeta assembles a metadata name's blob from its full record and
	// the deltas written after it (PutMetaDelta), in order: GetMeta returns
	// its result. It returns the blob of base and deltas[:used]; when used <
	// len(deltas), err says why the rest did not apply (the blob is then the
	// last intact state, and GetMeta logs it as damage). Nil: a name with
	// deltas cannot be read whole (ReadMetaChain still can).
	MergeMeta func(base []byte, deltas [][]byte) (blob []byte, used int, err error)
}

// SSD is the disk tier. The journal (journal.go) is the truth: page records,
// session-metadata records and deletion records appended to segment files
// with pwrite, synced once per segment per batch. Badger is an index of the
// latest record of each key, committed without a sync after the records it
// names; in memory a copy of it answers reads with no Badger transaction. A
// record that fails verification is never served: the read returns
// ErrIntegrity and is counted.
//
// On open the index is checked and brought up to date from the journal
// (ssd_recover.go): replayed from its checkpoint, or rebuilt from every
// segment when it is missing, damaged or names records the journal does not
// have. Damaged records are copied to Dir/quarantine and reported, never
// deleted for being unreadable.
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

	// The in-memory index: updated right after each Badger commit, under
	// idx, so it never runs ahead of Badger.
	cacheMu sync.RWMutex
	cache   map[PageID]indexEntry
	metas   map[string]metaRef
	tombS   map[uint64]indexEntry
	tombP   map[PageID]indexEntry
	tombM   map[string]indexEntry

	lock        *os.File // flock: one process per directory
	report      RecoveryReport
	legacyMetas map[string][]byte // format-1 metadata found in the index, carried into the journal

	// lostFrom is the intact index of a start that found the journal
	// lacking records it names (a segment deleted or cut short): what the
	// rebuild cannot know, it can (see carryOver).
	lostFrom *oldIndex

	changed atomic.Bool // index changed since the last checkpoint
	garbage atomic.Int64
	kickGC  chan struct{}
	metaMu  [16]sync.Mutex // metaLock: one writer per metadata name

	// The index committer (commitPages): page entries reach Badger off the
	// write path, in the order the in-memory index took them.
	commitMu          sync.Mutex // orders memory updates with their queueing
	qMu               sync.Mutex
	qCond             *sync.Cond
	queue             []*indexJob
	queued, committed uint64
	qKick             chan struct{}
	qStop, qDone      chan struct{}
	indexErr          atomic.Bool // a background commit failed: no checkpoint past it

	stop   chan struct{}
	gcDone chan struct{}

	pages     atomic.Int64
	bytes     atomic.Int64
	gcRuns    atomic.Uint64
	compacted atomic.Uint64
	counters  tierCounters

	direct *directReader // page reads (ssd_direct.go)
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

func (cfg *SSDConfig) defaults() {
	if cfg.GCInterval == 0 {
		cfg.GCInterval = time.Minute
	}
	if cfg.GCDiscardRatio <= 0 || cfg.GCDiscardRatio >= 1 {
		cfg.GCDiscardRatio = 0.4
	}
	if cfg.SegmentBytes <= 0 {
		cfg.SegmentBytes = defaultSegmentBytes
	}
	cfg.SegmentBytes = min(alignRecord(cfg.SegmentBytes), maxSegmentBytes)
	if cfg.ValueLogFileSize <= 0 {
		cfg.ValueLogFileSize = 16 << 20
	}
	if cfg.MemTableSize <= 0 {
		cfg.MemTableSize = 4 << 20
	}
	if cfg.BlockCacheSize <= 0 {
		cfg.BlockCacheSize = 16 << 20
	}
	if cfg.MinFreeBytes <= 0 {
		cfg.MinFreeBytes = 4*cfg.MemTableSize + 16<<20
	}
	if cfg.CheckpointInterval <= 0 {
		cfg.CheckpointInterval = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
}

// OpenSSD opens (or creates) the tier in cfg.Dir, checking the index against
// the journal and repairing it first (Recovery reports what was found).
func OpenSSD(cfg SSDConfig) (*SSD, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("ssd: empty directory: %w", ErrName)
	}
	cfg.defaults()
	if cfg.ReadMode != "" && cfg.ReadMode != ReadDirect && cfg.ReadMode != ReadBuffered {
		return nil, fmt.Errorf("ssd: read mode %q is not %q or %q: %w", cfg.ReadMode, ReadDirect, ReadBuffered, ErrName)
	}
	s := &SSD{
		cfg: cfg, stop: make(chan struct{}), gcDone: make(chan struct{}), kickGC: make(chan struct{}, 1),
		direct: newDirectReader(&cfg),
	}
	s.resetMaps()
	s.qCond = sync.NewCond(&s.qMu)
	s.qKick, s.qStop, s.qDone = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	go s.indexCommitter()
	s.legacyMetas = map[string][]byte{}
	if err := s.recover(); err != nil {
		close(s.qStop)
		<-s.qDone
		if s.db != nil {
			s.db.Close()
		}
		if s.segs != nil {
			s.segs.close()
		}
		if s.lock != nil {
			s.lock.Close()
		}
		return nil, err
	}
	if s.lostFrom != nil {
		if err := s.carryOver(s.lostFrom); err != nil {
			s.Close()
			return nil, err
		}
		s.lostFrom = nil
	}
	go s.gcLoop()
	// A round right after start: a daemon restarted every few seconds
	// would otherwise never reach the timer.
	s.kickGC <- struct{}{}
	for name, blob := range s.legacyMetas {
		if _, ok := s.metas[name]; ok {
			continue
		}
		if err := s.PutMeta(context.Background(), name, blob); err != nil {
			s.Close()
			return nil, fmt.Errorf("ssd: carrying metadata %q into the journal: %w", name, err)
		}
		cfg.Logger.Info("metadata of format 1 carried into the journal", "name", name)
	}
	s.legacyMetas = nil
	tightenModes(cfg.Dir)
	if err := s.Sync(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *SSD) resetMaps() {
	s.cache = map[PageID]indexEntry{}
	s.metas = map[string]metaRef{}
	s.tombS = map[uint64]indexEntry{}
	s.tombP = map[PageID]indexEntry{}
	s.tombM = map[string]indexEntry{}
}

func (s *SSD) gcLoop() {
	defer close(s.gcDone)
	ck := time.NewTicker(s.cfg.CheckpointInterval)
	defer ck.Stop()
	var gc <-chan time.Time
	if s.cfg.GCInterval > 0 {
		t := time.NewTicker(s.cfg.GCInterval)
		defer t.Stop()
		gc = t.C
	}
	for {
		select {
		case <-s.stop:
			return
		case <-gc:
			s.RunGC()
		case <-s.kickGC:
			if s.cfg.GCInterval > 0 {
				s.RunGC()
			}
		case <-ck.C:
			if s.changed.Load() {
				if err := s.Checkpoint(); err != nil && !errors.Is(err, ErrClosed) {
					s.cfg.Logger.Warn("index checkpoint", "err", err)
				}
			}
			tightenModes(s.cfg.Dir)
		}
	}
}

// RunGC compacts journal segments whose live bytes fell to 1-GCDiscardRatio
// of their size (moving live records to the active segment, then deleting
// the file), and lets Badger drop what its compactions left.
func (s *SSD) RunGC() {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return
	}
	if err := s.compact(); err != nil {
		s.cfg.Logger.Warn("journal compaction", "err", err)
	}
	for i := 0; i < 4; i++ {
		if err := s.db.RunValueLogGC(s.cfg.GCDiscardRatio); err != nil {
			break
		}
		s.gcRuns.Add(1)
	}
}

// KickGC starts a GC round soon (if GC is enabled), without waiting for the
// timer: the daemon calls it after deleting the pages of sessions a crash
// left behind.
func (s *SSD) KickGC() {
	select {
	case s.kickGC <- struct{}{}:
	default:
	}
}

// noteGarbage counts record bytes that became dead and starts a GC round
// once they add up to half a segment, so space comes back with the writes
// that free it, not only on the timer.
func (s *SSD) noteGarbage(n int64) {
	if n <= 0 {
		return
	}
	if s.garbage.Add(n) >= min(s.cfg.SegmentBytes/2, garbageKick) || s.segs.pressed.Swap(false) {
		s.garbage.Store(0)
		select {
		case s.kickGC <- struct{}{}:
		default:
		}
	}
}

func pageKey(id PageID) []byte { return idKey(pagePrefix, id) }

func idKey(prefix byte, id PageID) []byte {
	k := make([]byte, pageKeySize)
	k[0] = prefix
	binary.BigEndian.PutUint64(k[1:], id.Session)
	binary.BigEndian.PutUint32(k[9:], id.Page)
	return k
}

func sessionKey(prefix byte, session uint64) []byte {
	k := make([]byte, 9)
	k[0] = prefix
	binary.BigEndian.PutUint64(k[1:], session)
	return k
}

func checkMetaName(name string) error {
	if name == "" || len(name) > maxMetaName || !utf8.ValidString(name) {
		return fmt.Errorf("meta name %q: %w", name, ErrName)
	}
	return nil
}

func metaKey(name string) []byte { return append([]byte{metaPrefix}, name...) }

func tombMKey(name string) []byte { return append([]byte{tombMPrefix}, name...) }

var ckptKey = []byte{ckptKeyByte}

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

// PutBatch writes the records into the active segment from up to 8
// goroutines at reserved offsets, fdatasyncs each segment it touched once
// (SyncWrites), then commits the index entries. A page whose index already
// holds a newer generation keeps it (the record written is dead on arrival),
// exactly as a rebuild from the journal would decide. With SyncWrites the
// batch is durable when it returns.
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
	kinds := make([]recordKind, len(pages))
	for i, w := range pages {
		lens[i] = pageHeaderSize + int64(len(w.Page))
		kinds[i] = kindPage
	}
	locs := make([]loc, len(pages))
	if err := s.segs.reserve(kinds, lens, locs, true); err != nil {
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
	return s.commitPages(pages, locs, lens, entries)
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
		entries[i] = indexEntry{seg: l.seg.id, length: uint32(len(w.Page)), off: l.off, gen: w.Gen, crc: c, kind: kindPage, seq: l.seq}
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

// newerPage is the journal's rule for which of two records of one page is
// current: the higher generation, then the higher sequence number.
func newerPage(a, b indexEntry) bool {
	return a.gen > b.gen || (a.gen == b.gen && a.seq > b.seq)
}

// commitPages makes the entries of written (and, with SyncWrites, synced)
// records current: the in-memory index at once (reads find them from here
// on), Badger through the index committer, off the write's path. The
// journal is the truth and Badger only its index: a crash before the commit
// lands loses nothing, since the records stay "in flight" (their segment's
// pending count) until it does, so the checkpoint stays before them and the
// next start replays them.
func (s *SSD) commitPages(pages []PageWrite, locs []loc, lens []int64, entries []indexEntry) error {
	job := &indexJob{}
	var added, bytes int64
	dead := map[uint32]int64{}
	var drop []loc
	var dropLens []int64
	// idx shared, as every index change: compaction's check-and-move holds
	// it exclusively, so it never re-points a page this write replaces.
	s.idx.RLock()
	s.commitMu.Lock()
	s.cacheMu.Lock()
	for j := range pages {
		id := pages[j].ID
		old, had := s.cache[id]
		if had && !newerPage(entries[j], old) {
			// A newer generation is stored: this record is dead.
			drop, dropLens = append(drop, locs[j]), append(dropLens, lens[j])
			continue
		}
		if had {
			dead[old.seg] += old.recordLen()
			bytes -= int64(old.length)
		} else {
			added++
		}
		s.cache[id] = entries[j]
		bytes += int64(entries[j].length)
		s.counters.puts.Add(1)
		s.counters.bytesIn.Add(uint64(len(pages[j].Page)))
		job.keys = append(job.keys, pageKey(id))
		job.vals = append(job.vals, encodeIndex(entries[j]))
		job.locs, job.lens = append(job.locs, locs[j]), append(job.lens, lens[j])
	}
	s.cacheMu.Unlock()
	job.dead = dead
	s.enqueueIndex(job)
	s.commitMu.Unlock()
	s.idx.RUnlock()
	s.segs.settle(drop, dropLens, false, nil)
	s.pages.Add(added)
	s.bytes.Add(bytes)
	s.changed.Store(true)
	var g int64
	for _, n := range dead {
		g += n
	}
	for _, n := range dropLens {
		g += n
	}
	s.noteGarbage(g)
	return nil
}

// indexJob is one batch of page entries for the index committer: set keys
// to vals in Badger, then count the records live (locs) and the records they
// replace dead.
type indexJob struct {
	keys, vals [][]byte
	locs       []loc
	lens       []int64
	dead       map[uint32]int64
}

// enqueueIndex hands a job to the committer (commitMu held, so jobs queue
// in the order the in-memory index changed).
func (s *SSD) enqueueIndex(job *indexJob) {
	s.qMu.Lock()
	s.queue = append(s.queue, job)
	s.queued++
	s.qMu.Unlock()
	select {
	case s.qKick <- struct{}{}:
	default:
	}
}

// indexCommitter commits queued page entries to Badger, coalescing what
// queued meanwhile into one write batch, in queue order.
func (s *SSD) indexCommitter() {
	defer close(s.qDone)
	for {
		select {
		case <-s.qKick:
		case <-s.qStop:
			s.commitQueued()
			return
		}
		s.commitQueued()
	}
}

// commitQueued commits every job queued so far, oldest first.
func (s *SSD) commitQueued() {
	for {
		s.qMu.Lock()
		jobs := s.queue
		s.queue = nil
		s.qMu.Unlock()
		if len(jobs) == 0 {
			return
		}
		err := s.commitJobs(jobs)
		for _, job := range jobs {
			// On an error the records stay in flight: the checkpoint
			// stays before them and the next start replays them.
			if err == nil {
				s.segs.settle(job.locs, job.lens, true, job.dead)
			}
		}
		if err != nil {
			s.indexErr.Store(true)
			s.cfg.Logger.Error("SSD index commit failed; the journal holds the pages and the next start replays them into the index", "err", err)
		}
		s.qMu.Lock()
		s.committed += uint64(len(jobs))
		s.qCond.Broadcast()
		s.qMu.Unlock()
	}
}

func (s *SSD) commitJobs(jobs []*indexJob) error {
	s.idx.RLock()
	defer s.idx.RUnlock()
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, job := range jobs {
		for i, k := range job.keys {
			if err := wb.Set(k, job.vals[i]); err != nil {
				return fmt.Errorf("ssd: commit index of page %x: %w", k, err)
			}
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("ssd: commit index: %w", err)
	}
	return nil
}

// flushIndex waits until every job queued before the call is in Badger. An
// index write of a page key (a deletion, a checkpoint) flushes first, so
// Badger sees the page's changes in the order memory did. Never called with
// idx held: the committer takes it.
func (s *SSD) flushIndex() {
	s.qMu.Lock()
	defer s.qMu.Unlock()
	want := s.queued
	for s.committed < want {
		select {
		case s.qKick <- struct{}{}:
		default:
		}
		s.qCond.Wait()
	}
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
	s.cacheMu.RLock()
	_, ok := s.cache[id]
	s.cacheMu.RUnlock()
	return ok
}

// Generation returns the generation of the page the index holds (false: no
// page). A restarted daemon continues a session's generations from here, so
// a page written to SSD after the session's last PERSIST never sees its
// generation reused.
func (s *SSD) Generation(id PageID) (uint64, bool) {
	s.cacheMu.RLock()
	e, ok := s.cache[id]
	s.cacheMu.RUnlock()
	return e.gen, ok
}

func (s *SSD) lookup(id PageID) (indexEntry, error) {
	s.cacheMu.RLock()
	e, ok := s.cache[id]
	s.cacheMu.RUnlock()
	if !ok {
		return e, fmt.Errorf("page %v: %w", id, ErrNotFound)
	}
	return e, nil
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
	gen, err := s.readOnce(ctx, id, once)
	// A record moved by compaction between the index lookup and the read:
	// the index already names its new place.
	for try := 0; errors.Is(err, errMoved) && try < 8; try++ {
		gen, err = s.readOnce(ctx, id, once)
	}
	if errors.Is(err, errMoved) {
		err = fmt.Errorf("page %v: its segment is gone (run flashmemd fsck): %w", id, ErrIntegrity)
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

func (s *SSD) readOnce(ctx context.Context, id PageID, alloc func(n int) ([]byte, error)) (uint64, error) {
	e, err := s.lookup(id)
	if err != nil {
		return 0, err
	}
	seg := s.segs.get(e.seg)
	if seg == nil {
		// Either compaction just removed it (the next lookup sees the new
		// place) or the file is gone; the caller retries a bounded number
		// of times.
		return 0, errMoved
	}
	dst, err := alloc(int(e.length))
	if err != nil {
		return 0, err
	}
	if err := s.readPage(ctx, seg, e, id, dst); err != nil {
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

// appendSmall reserves, writes and (if sync) syncs one small record: a
// deletion or a metadata record. Deletions may use the space above half the
// floor, since they are how space is freed.
func (s *SSD) appendSmall(h recHeader, body []byte, sync bool) (indexEntry, loc, int64, error) {
	rec := encodeRecord(h, body)
	n := int64(len(rec))
	locs := make([]loc, 1)
	floor := s.segs.floor
	if h.kind != kindMeta && h.kind != kindMetaDelta {
		floor /= 2 // deletions free space
	}
	if err := s.segs.reserveFloor([]recordKind{h.kind}, []int64{n}, locs, true, floor); err != nil {
		return indexEntry{}, loc{}, 0, err
	}
	l := locs[0]
	binary.LittleEndian.PutUint64(rec[36:], l.seq)
	binary.LittleEndian.PutUint32(rec[44:], crc32.Checksum(rec[:44], castagnoli))
	err := writeSmall(l, rec)
	if err == nil && sync {
		err = syncSegments(locs)
	}
	if err != nil {
		s.segs.settle(locs, []int64{n}, false, nil)
		return indexEntry{}, loc{}, 0, err
	}
	gen := h.gen
	if h.kind == kindMeta || h.kind == kindDelMeta {
		gen = h.session
	}
	e := indexEntry{seg: l.seg.id, length: uint32(len(body)), off: l.off, gen: gen, crc: crc32.Checksum(body, castagnoli), kind: h.kind, seq: l.seq}
	return e, l, n, nil
}

// Delete implements Tier: a page-deletion record, then the index. The page
// record's bytes stay in their segment until compaction reclaims them.
func (s *SSD) Delete(ctx context.Context, id PageID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	if !s.mayHave(id) {
		return fmt.Errorf("page %v: %w", id, ErrNotFound)
	}
	s.flushIndex()
	e, l, n, err := s.appendSmall(recHeader{kind: kindDelPage, session: id.Session, page: id.Page}, nil, s.cfg.SyncWrites)
	if err != nil {
		return fmt.Errorf("ssd: delete page %v: %w", id, err)
	}
	s.idx.RLock()
	defer s.idx.RUnlock()
	s.cacheMu.RLock()
	old, had := s.cache[id]
	oldT, hadT := s.tombP[id]
	s.cacheMu.RUnlock()
	err = s.db.Update(func(txn *badger.Txn) error {
		if had && old.seq < e.seq {
			if err := txn.Delete(pageKey(id)); err != nil {
				return err
			}
		}
		return txn.Set(idKey(tombPPrefix, id), encodeIndex(e))
	})
	if err != nil {
		s.segs.settle([]loc{l}, []int64{n}, false, nil)
		return fmt.Errorf("ssd: delete page %v: %w", id, err)
	}
	dead := map[uint32]int64{}
	s.cacheMu.Lock()
	if cur, ok := s.cache[id]; ok && cur.seq < e.seq {
		delete(s.cache, id)
		dead[cur.seg] += cur.recordLen()
		s.pages.Add(-1)
		s.bytes.Add(-int64(cur.length))
	}
	s.tombP[id] = e
	s.cacheMu.Unlock()
	if hadT {
		dead[oldT.seg] += oldT.recordLen()
	}
	s.segs.settle([]loc{l}, []int64{n}, true, dead)
	s.changed.Store(true)
	s.noteGarbage(old.recordLen())
	if !had {
		return fmt.Errorf("page %v: %w", id, ErrNotFound)
	}
	return nil
}

// DeleteSession implements Tier: one session-deletion record covers every
// page of the session written before it. The index drops the session's key
// range with tombstones in one write batch rather than Badger's DropPrefix,
// which stalls every writer of the database while it runs.
func (s *SSD) DeleteSession(ctx context.Context, session uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	var ids []PageID
	var tps []PageID
	s.cacheMu.RLock()
	for id := range s.cache {
		if id.Session == session {
			ids = append(ids, id)
		}
	}
	for id := range s.tombP {
		if id.Session == session {
			tps = append(tps, id)
		}
	}
	s.cacheMu.RUnlock()
	if len(ids) == 0 {
		return nil
	}
	s.flushIndex()
	e, l, n, err := s.appendSmall(recHeader{kind: kindDelSession, session: session}, nil, s.cfg.SyncWrites)
	if err != nil {
		return fmt.Errorf("ssd: delete session %d: %w", session, err)
	}
	s.idx.RLock()
	defer s.idx.RUnlock()
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, id := range ids {
		err = errors.Join(err, wb.Delete(pageKey(id)))
	}
	for _, id := range tps {
		err = errors.Join(err, wb.Delete(idKey(tombPPrefix, id)))
	}
	err = errors.Join(err, wb.Set(sessionKey(tombSPrefix, session), encodeIndex(e)))
	if err == nil {
		err = wb.Flush()
	}
	if err != nil {
		s.segs.settle([]loc{l}, []int64{n}, false, nil)
		return fmt.Errorf("ssd: delete session %d: %w", session, err)
	}
	dead := map[uint32]int64{}
	var g int64
	s.cacheMu.Lock()
	for _, id := range ids {
		if cur, ok := s.cache[id]; ok && cur.seq < e.seq {
			delete(s.cache, id)
			dead[cur.seg] += cur.recordLen()
			g += cur.recordLen()
			s.pages.Add(-1)
			s.bytes.Add(-int64(cur.length))
		}
	}
	for _, id := range tps {
		if t, ok := s.tombP[id]; ok {
			delete(s.tombP, id)
			dead[t.seg] += t.recordLen()
		}
	}
	if old, ok := s.tombS[session]; ok {
		dead[old.seg] += old.recordLen()
	}
	s.tombS[session] = e
	s.cacheMu.Unlock()
	s.segs.settle([]loc{l}, []int64{n}, true, dead)
	s.changed.Store(true)
	s.noteGarbage(g)
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
	s.cacheMu.RLock()
	for id := range s.cache {
		if id.Session == session {
			out = append(out, id.Page)
		}
	}
	s.cacheMu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// Sessions lists the sessions that have pages on SSD, so a restarted daemon
// can find pages no metadata refers to any more.
func (s *SSD) Sessions(ctx context.Context) ([]uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.begin(); err != nil {
		return nil, err
	}
	defer s.end()
	seen := map[uint64]bool{}
	s.cacheMu.RLock()
	for id := range s.cache {
		seen[id.Session] = true
	}
	s.cacheMu.RUnlock()
	out := make([]uint64, 0, len(seen))
	for id := range seen {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// PutMeta stores a metadata blob under name, for no particular session.
func (s *SSD) PutMeta(ctx context.Context, name string, blob []byte) error {
	return s.PutSessionMeta(ctx, name, 0, blob)
}

// PutSessionMeta appends a full metadata record for session's blob under
// name (durably if SyncWrites; Sync makes it durable otherwise). The chain
// before it (its full record and deltas) stays readable as the fallback for
// a damaged latest one; the chain before that becomes garbage.
func (s *SSD) PutSessionMeta(ctx context.Context, name string, session uint64, blob []byte) error {
	_, err := s.PutMetaBase(ctx, name, session, blob)
	return err
}

// MetaPos says where a metadata name's current chain stands.
type MetaPos struct {
	// Seq is the journal sequence number of the chain's newest record (the
	// one read last, for a read): a delta must name it to follow it.
	Seq uint64
	// BaseBytes is the full record's blob size, DeltaBytes the sum of the
	// deltas' after it, Deltas their number: what a writer weighs when it
	// decides to write a full record again.
	BaseBytes, DeltaBytes int64
	Deltas                int
}

// posOf is where chain (a full record and its deltas) stands.
func posOf(chain []indexEntry, name string) MetaPos {
	p := MetaPos{Seq: chain[len(chain)-1].seq, BaseBytes: int64(chain[0].length) - int64(len(name)), Deltas: len(chain) - 1}
	for _, e := range chain[1:] {
		p.DeltaBytes += int64(e.length) - int64(len(name))
	}
	return p
}

// metaLock serializes the writes of one name (striped), so a delta's check
// of the record it follows and its index commit see no other write between.
func (s *SSD) metaLock(name string) *sync.Mutex {
	h := crc32.Checksum([]byte(name), castagnoli)
	return &s.metaMu[h%uint32(len(s.metaMu))]
}

// PutMetaBase is PutSessionMeta returning where the new chain stands.
func (s *SSD) PutMetaBase(ctx context.Context, name string, session uint64, blob []byte) (MetaPos, error) {
	return s.putMeta(ctx, name, session, blob, false, 0)
}

// PutMetaDelta appends a delta record to name's current chain: blob is what
// changed since the record of sequence number after, which must be the
// chain's newest (MetaPos.Seq of the write or read before); otherwise, or
// when the chain already has MaxMetaDeltas deltas or no record, it fails
// with ErrStale and the caller writes a full record (PutMetaBase). The delta
// is opaque here; MergeMeta applies it.
func (s *SSD) PutMetaDelta(ctx context.Context, name string, session, after uint64, delta []byte) (MetaPos, error) {
	return s.putMeta(ctx, name, session, delta, true, after)
}

func (s *SSD) putMeta(ctx context.Context, name string, session uint64, blob []byte, delta bool, after uint64) (MetaPos, error) {
	if err := ctx.Err(); err != nil {
		return MetaPos{}, err
	}
	if err := checkMetaName(name); err != nil {
		return MetaPos{}, err
	}
	if len(blob) > MaxMetaBytes {
		return MetaPos{}, fmt.Errorf("meta %q: %d B over %d: %w", name, len(blob), MaxMetaBytes, ErrSize)
	}
	if err := s.begin(); err != nil {
		return MetaPos{}, err
	}
	defer s.end()
	mu := s.metaLock(name)
	mu.Lock()
	defer mu.Unlock()
	s.cacheMu.RLock()
	old, had := s.metas[name]
	s.cacheMu.RUnlock()
	h := recHeader{kind: kindMeta, session: session, page: uint32(len(name))}
	if delta {
		switch {
		case !had:
			return MetaPos{}, fmt.Errorf("meta %q: no full record to follow: %w", name, ErrStale)
		case old.last().seq != after:
			return MetaPos{}, fmt.Errorf("meta %q: the chain ends at seq %d, not %d: %w", name, old.last().seq, after, ErrStale)
		case len(old.cur()) > MaxMetaDeltas:
			return MetaPos{}, fmt.Errorf("meta %q: %d deltas already: %w", name, MaxMetaDeltas, ErrStale)
		}
		h.kind, h.gen = kindMetaDelta, after
	}
	body := make([]byte, 0, len(name)+len(blob))
	body = append(append(body, name...), blob...)
	e, l, n, err := s.appendSmall(h, body, s.cfg.SyncWrites)
	if err != nil {
		return MetaPos{}, fmt.Errorf("ssd: put meta %q: %w", name, err)
	}
	// The chain is read again under idx: compaction (which holds idx
	// exclusively) may have moved its records since the check above, and an
	// index value built from that first read would name the segment it is
	// about to delete. (metaLock keeps every other writer of the name out,
	// so only the records' places can have changed, never which they are.)
	s.idx.RLock()
	defer s.idx.RUnlock()
	s.cacheMu.RLock()
	old, had = s.metas[name]
	s.cacheMu.RUnlock()
	var ref metaRef
	var dead []indexEntry
	switch {
	case delta:
		ref = newMetaRef(append(append([]indexEntry(nil), old.ents...), e)...)
	case had:
		dead = old.prev()
		ref = newMetaRef(append(append([]indexEntry(nil), old.cur()...), e)...)
	default:
		ref = newMetaRef(e)
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(metaKey(name), encodeMetaRef(ref)) }); err != nil {
		s.segs.settle([]loc{l}, []int64{n}, false, nil)
		return MetaPos{}, fmt.Errorf("ssd: put meta %q: %w", name, err)
	}
	garbage := map[uint32]int64{}
	s.cacheMu.Lock()
	for _, d := range dead {
		garbage[d.seg] += d.recordLen()
		s.noteGarbage(d.recordLen())
	}
	s.metas[name] = ref
	s.cacheMu.Unlock()
	s.segs.settle([]loc{l}, []int64{n}, true, garbage)
	s.changed.Store(true)
	return posOf(ref.cur(), name), nil
}

// readMetaRecord reads and verifies the metadata record e names.
func (s *SSD) readMetaRecord(name string, e indexEntry) ([]byte, error) {
	seg := s.segs.get(e.seg)
	if seg == nil {
		// As for pages: compaction removed it after the caller read the
		// chain (the next read of the index names the new place), or the
		// file is gone; ReadMetaChain retries a bounded number of times.
		// Taking it for damage would silently resume an older state.
		return nil, errMoved
	}
	buf := make([]byte, e.recordLen())
	if err := readAt(seg, buf, e.off); err != nil {
		if errors.Is(err, errMoved) {
			return nil, err
		}
		return nil, fmt.Errorf("meta %q: %w", name, err)
	}
	h, body, err := decodeRecord(buf)
	if err != nil {
		return nil, fmt.Errorf("meta %q (segment %d offset %d): %w", name, e.seg, e.off, err)
	}
	if err := checkEntry(h, e, "meta "+name, e.seg); err != nil {
		return nil, err
	}
	n, blob := metaBody(h, body)
	if n != name {
		return nil, fmt.Errorf("meta %q: record at segment %d offset %d is %q's: %w", name, e.seg, e.off, n, ErrIntegrity)
	}
	return blob, nil
}

// segmentGone turns a read that kept finding its segment removed (errMoved
// after every retry) into what it then is: a record whose file is missing.
func segmentGone(name string, err error) error {
	if err == nil || !errors.Is(err, errMoved) {
		return err
	}
	return fmt.Errorf("meta %q: its segment is gone (run flashmemd fsck): %w", name, ErrIntegrity)
}

// MetaChain is a metadata name's records as read: the full record's blob and
// the deltas after it that read intact, in order.
type MetaChain struct {
	Base   []byte
	Deltas [][]byte
	Pos    MetaPos // Seq: the newest record read; Deltas, DeltaBytes: those read
	// Damaged says why the chain read is older than the newest written (a
	// damaged full record: the previous chain; a damaged delta: the deltas
	// before it); nil when the chain read whole.
	Damaged error
	ents    []indexEntry // the records read
}

// readChain reads chain (a full record and its deltas): the full record
// must read, the deltas are read up to the first that does not.
// A record whose segment is gone is errMoved (the caller reads the index
// again) unless final, when it is damage.
func (s *SSD) readChain(name string, chain []indexEntry, final bool) (MetaChain, error) {
	base, err := s.readMetaRecord(name, chain[0])
	if err != nil {
		if final {
			err = segmentGone(name, err)
		}
		return MetaChain{}, err
	}
	c := MetaChain{Base: base, Pos: posOf(chain[:1], name), ents: chain[:1]}
	for i, e := range chain[1:] {
		d, err := s.readMetaRecord(name, e)
		if err != nil {
			if errors.Is(err, errMoved) && !final {
				return MetaChain{}, err
			}
			err = segmentGone(name, err)
			c.Damaged = fmt.Errorf("delta %d of %d (seq %d): %w", i+1, len(chain)-1, e.seq, err)
			break
		}
		c.Deltas = append(c.Deltas, d)
		c.ents = chain[:i+2]
		c.Pos = posOf(c.ents, name)
	}
	return c, nil
}

// ReadMetaChain returns name's current chain: its full record and the deltas
// after it (what a replica copies). When the full record is damaged it
// returns the previous chain, when a delta is damaged the deltas before it
// (Damaged says which; logged and counted as an integrity error);
// ErrIntegrity only if no full record is readable.
func (s *SSD) ReadMetaChain(ctx context.Context, name string) (MetaChain, error) {
	if err := ctx.Err(); err != nil {
		return MetaChain{}, err
	}
	if err := checkMetaName(name); err != nil {
		return MetaChain{}, err
	}
	if err := s.begin(); err != nil {
		return MetaChain{}, err
	}
	defer s.end()
	for try := 0; ; try++ {
		s.cacheMu.RLock()
		ref, ok := s.metas[name]
		s.cacheMu.RUnlock()
		if !ok {
			return MetaChain{}, fmt.Errorf("meta %q: %w", name, ErrNotFound)
		}
		final := try >= 8
		c, err := s.readChain(name, ref.cur(), final)
		if errors.Is(err, errMoved) {
			continue
		}
		if err == nil {
			if c.Damaged != nil {
				s.counters.integrityErrors.Add(1)
				s.cfg.Logger.Warn("metadata delta damaged; using the records before it", "name", name, "err", c.Damaged)
			}
			return c, nil
		}
		s.counters.integrityErrors.Add(1)
		prev := ref.prev()
		if len(prev) == 0 {
			return MetaChain{}, err
		}
		p, perr := s.readChain(name, prev, final)
		if errors.Is(perr, errMoved) {
			continue
		}
		if perr != nil {
			return MetaChain{}, fmt.Errorf("%w; the record before it: %w", err, perr)
		}
		p.Damaged = errors.Join(err, p.Damaged)
		s.cfg.Logger.Warn("latest metadata record damaged; using the one before it", "name", name, "err", err, "seq", p.Pos.Seq)
		return p, nil
	}
}

// GetMeta returns name's blob: its full record with the deltas after it
// applied (MergeMeta). When the latest record is damaged it returns the
// state before it (logged and counted as an integrity error); ErrIntegrity
// only if no full record is readable.
func (s *SSD) GetMeta(ctx context.Context, name string) ([]byte, error) {
	blob, _, err := s.GetMetaPos(ctx, name)
	return blob, err
}

// GetMetaPos is GetMeta, also saying which record the blob is as of (a
// delta written next must follow pos.Seq).
func (s *SSD) GetMetaPos(ctx context.Context, name string) ([]byte, MetaPos, error) {
	c, err := s.ReadMetaChain(ctx, name)
	if err != nil {
		return nil, MetaPos{}, err
	}
	if len(c.Deltas) == 0 {
		return c.Base, c.Pos, nil
	}
	if s.cfg.MergeMeta == nil {
		return nil, MetaPos{}, fmt.Errorf("meta %q: %d deltas and no MergeMeta to apply them: %w", name, len(c.Deltas), ErrIntegrity)
	}
	blob, used, err := s.cfg.MergeMeta(c.Base, c.Deltas)
	if blob == nil {
		return nil, MetaPos{}, fmt.Errorf("meta %q: %w: %w", name, ErrIntegrity, err)
	}
	if used < len(c.Deltas) {
		// A delta that verified but does not apply: as damaged as a
		// record that fails its checksum.
		s.counters.integrityErrors.Add(1)
		s.cfg.Logger.Warn("metadata delta does not apply; using the records before it", "name", name, "delta", used+1, "err", err)
		return blob, posOf(c.ents[:used+1], name), nil
	}
	return blob, c.Pos, nil
}

// MetaSession returns the session id the latest metadata record of name was
// written for (false: no such name).
func (s *SSD) MetaSession(name string) (uint64, bool) {
	s.cacheMu.RLock()
	defer s.cacheMu.RUnlock()
	ref, ok := s.metas[name]
	if !ok {
		return 0, false
	}
	return ref.session(), ok
}

// DeleteMeta removes a metadata name (a deletion record, synced);
// ErrNotFound if absent.
func (s *SSD) DeleteMeta(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkMetaName(name); err != nil {
		return err
	}
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	mu := s.metaLock(name)
	mu.Lock()
	defer mu.Unlock()
	s.cacheMu.RLock()
	ref, ok := s.metas[name]
	s.cacheMu.RUnlock()
	if !ok {
		return fmt.Errorf("meta %q: %w", name, ErrNotFound)
	}
	e, l, n, err := s.appendSmall(recHeader{kind: kindDelMeta, session: ref.session(), page: uint32(len(name))}, []byte(name), true)
	if err != nil {
		return fmt.Errorf("ssd: delete meta %q: %w", name, err)
	}
	s.idx.RLock()
	defer s.idx.RUnlock()
	err = s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Delete(metaKey(name)); err != nil {
			return err
		}
		return txn.Set(tombMKey(name), encodeIndex(e))
	})
	if err != nil {
		s.segs.settle([]loc{l}, []int64{n}, false, nil)
		return fmt.Errorf("ssd: delete meta %q: %w", name, err)
	}
	dead := map[uint32]int64{}
	s.cacheMu.Lock()
	if cur, ok := s.metas[name]; ok {
		for _, e := range cur.ents {
			dead[e.seg] += e.recordLen()
		}
		delete(s.metas, name)
	}
	if old, ok := s.tombM[name]; ok {
		dead[old.seg] += old.recordLen()
	}
	s.tombM[name] = e
	s.cacheMu.Unlock()
	for _, n := range dead {
		s.noteGarbage(n)
	}
	s.segs.settle([]loc{l}, []int64{n}, true, dead)
	s.changed.Store(true)
	return nil
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
	s.cacheMu.RLock()
	out := make([]string, 0, len(s.metas))
	for n := range s.metas {
		out = append(out, n)
	}
	s.cacheMu.RUnlock()
	sort.Strings(out)
	return out, nil
}

// Sync makes every write so far durable: it syncs the journal's segments
// written since their last sync. The index needs no sync (the journal is
// replayed into it after a crash).
func (s *SSD) Sync() error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	return s.segs.syncDirty()
}

// Checkpoint syncs the journal and then the index, and records where a
// replay after a crash must start. It runs every CheckpointInterval when the
// index changed, at open and at Close.
func (s *SSD) Checkpoint() error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	return s.checkpointLocked()
}

func (s *SSD) checkpointLocked() error {
	s.flushIndex()
	if s.indexErr.Load() {
		return fmt.Errorf("ssd: checkpoint: an index commit failed (the next start replays the journal into the index)")
	}
	s.changed.Store(false)
	// Everything before the checkpoint is committed to the index; the
	// records themselves reach the disk first.
	c := s.segs.checkpoint()
	if err := s.segs.syncDirty(); err != nil {
		s.changed.Store(true)
		return err
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(ckptKey, encodeCheckpoint(c)) }); err != nil {
		s.changed.Store(true)
		return fmt.Errorf("ssd: checkpoint: %w", err)
	}
	if err := s.db.Sync(); err != nil {
		s.changed.Store(true)
		return fmt.Errorf("ssd: checkpoint: sync index: %w", err)
	}
	return nil
}

// Stats implements Tier. Pages and Bytes are kept from Put and Delete and
// counted afresh on open.
func (s *SSD) Stats() TierStats {
	st := TierStats{Pages: s.pages.Load(), Bytes: s.bytes.Load()}
	s.counters.fill(&st)
	return st
}

// GCRuns is the number of Badger value-log files GC has rewritten.
func (s *SSD) GCRuns() uint64 { return s.gcRuns.Load() }

// Recovery reports what the last open found and did.
func (s *SSD) Recovery() RecoveryReport { return s.report }

// Close stops GC, writes a final checkpoint (journal synced, then the index)
// and closes Badger and the segment files, waiting for operations in flight.
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
	err := s.checkpointLocked()
	close(s.qStop)
	<-s.qDone
	if cerr := s.db.Close(); err == nil {
		err = cerr
	}
	if serr := s.segs.close(); err == nil {
		err = serr
	}
	tightenModes(s.cfg.Dir)
	s.lock.Close()
	if err != nil {
		return fmt.Errorf("ssd: close: %w", err)
	}
	return nil
}

// badgerDir is where the index lives: the tier's directory itself (the
// layout of every earlier version), beside pages/ and quarantine/.
func badgerDir(dir string) string { return filepath.Clean(dir) }
