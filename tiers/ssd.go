package tiers

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
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
	ssdValueLimit = 1 << 10 // values above go to the value log: every page does
)

// SSDConfig configures the Badger-backed SSD tier.
type SSDConfig struct {
	// Dir holds the Badger files (created if missing).
	Dir string
	// SyncWrites makes every Put (and every PutBatch as a whole) durable
	// before it returns: Badger fsyncs its value log per commit, batching
	// concurrent commits into one sync.
	SyncWrites bool
	// GCInterval is how often value-log garbage collection runs (default 1
	// minute; negative disables it). Rewritten and deleted pages leave garbage
	// in the value log until GC rewrites the file.
	GCInterval time.Duration
	// GCDiscardRatio is the fraction of garbage a value-log file needs before
	// GC rewrites it (default 0.5).
	GCDiscardRatio float64
	// ValueLogFileSize is the size of one value-log file (default 1 GiB).
	ValueLogFileSize int64
	// MemTableSize (default 64 MiB) and BlockCacheSize (default 32 MiB) size
	// the LSM part, which holds only keys, value pointers and metadata.
	MemTableSize   int64
	BlockCacheSize int64
	// Logger receives Badger's warnings and errors (default slog.Default()).
	Logger *slog.Logger
}

// SSD is the Badger tier: one value per page (header + body, see codec.go) and
// session metadata blobs. A value that fails verification is never served: the
// read returns ErrIntegrity and is counted.
type SSD struct {
	cfg SSDConfig
	db  *badger.DB

	mu     sync.RWMutex // held shared by operations, exclusively by Close
	closed bool

	stop   chan struct{}
	gcDone chan struct{}

	pages    atomic.Int64
	bytes    atomic.Int64
	gcRuns   atomic.Uint64
	counters tierCounters
	bufs     sync.Pool
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
		// Pages are fp8/bf16 KV: compression buys nothing and costs CPU.
		WithCompression(options.None).
		// No transaction reads and then writes the same key for a decision,
		// so conflict tracking is pure overhead.
		WithDetectConflicts(false)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("ssd: open %s: %w", cfg.Dir, err)
	}
	s := &SSD{cfg: cfg, db: db, stop: make(chan struct{}), gcDone: make(chan struct{})}
	if err := s.countPages(); err != nil {
		db.Close()
		return nil, err
	}
	go s.gcLoop()
	return s, nil
}

func (s *SSD) countPages() error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pagePrefix}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			s.pages.Add(1)
			s.bytes.Add(storedLen(it.Item()))
		}
		return nil
	})
}

// storedLen is the body length a page value's header records; it reads only
// the header (Badger's ValueSize is an estimate for value-log entries).
func storedLen(item *badger.Item) int64 {
	var n int64
	err := item.Value(func(v []byte) error {
		if len(v) >= pageHeaderSize && string(v[:4]) == pageMagic {
			n = int64(binary.LittleEndian.Uint32(v[20:]))
		}
		return nil
	})
	if err != nil {
		return 0
	}
	return n
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

// RunGC runs value-log garbage collection until no file qualifies (at most 16
// rewrites per call so it cannot monopolise the disk).
func (s *SSD) RunGC() {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return
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

func (s *SSD) getBuf(n int) *[]byte {
	if b, ok := s.bufs.Get().(*[]byte); ok && cap(*b) >= n {
		return b
	}
	b := make([]byte, 0, n)
	return &b
}

// setPage stages one page in txn and keeps the gauges; the value must stay
// untouched until the transaction commits.
func (s *SSD) setPage(txn *badger.Txn, id PageID, val []byte, delta *[2]int64) error {
	key := pageKey(id)
	if item, err := txn.Get(key); err == nil {
		delta[1] -= storedLen(item)
	} else if errors.Is(err, badger.ErrKeyNotFound) {
		delta[0]++
	} else {
		return err
	}
	delta[1] += int64(len(val) - pageHeaderSize)
	return txn.SetEntry(badger.NewEntry(key, val))
}

// Put implements Tier.
func (s *SSD) Put(ctx context.Context, id PageID, gen uint64, page []byte) error {
	return s.PutBatch(ctx, []PageWrite{{ID: id, Gen: gen, Page: page}})
}

// PutBatch writes pages in as few commits as Badger allows; with SyncWrites the
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
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	bufs := make([]*[]byte, len(pages))
	defer func() {
		for _, b := range bufs {
			if b != nil {
				s.bufs.Put(b)
			}
		}
	}()
	s.encodeAll(pages, bufs)
	for i := 0; i < len(pages); {
		var delta [2]int64
		txn := s.db.NewTransaction(true)
		start := i
		for ; i < len(pages); i++ {
			w := pages[i]
			err := s.setPage(txn, w.ID, *bufs[i], &delta)
			if errors.Is(err, badger.ErrTxnTooBig) && i > start {
				break
			}
			if err != nil {
				txn.Discard()
				return fmt.Errorf("ssd: put page %v: %w", w.ID, err)
			}
		}
		if err := txn.Commit(); err != nil {
			return fmt.Errorf("ssd: commit %d pages from %v: %w", i-start, pages[start].ID, err)
		}
		s.pages.Add(delta[0])
		s.bytes.Add(delta[1])
		for _, w := range pages[start:i] {
			s.counters.puts.Add(1)
			s.counters.bytesIn.Add(uint64(len(w.Page)))
		}
	}
	return nil
}

// encodeAll builds every page value of a batch (copy plus CRC32C), spread over
// the cores: Badger's single write goroutine and the fsync are the serial part
// of a commit, so the encoding should not add to it more than it must.
func (s *SSD) encodeAll(pages []PageWrite, bufs []*[]byte) {
	enc := func(i int) {
		w := pages[i]
		bufs[i] = s.getBuf(pageHeaderSize + len(w.Page))
		*bufs[i] = encodePage(*bufs[i], w.ID, w.Gen, w.Page)
	}
	workers := min(runtime.GOMAXPROCS(0), len(pages), 8)
	if workers <= 1 {
		for i := range pages {
			enc(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(pages); i = int(next.Add(1) - 1) {
				enc(i)
			}
		}()
	}
	wg.Wait()
}

// fusedBlock is the unit of the copy-then-checksum loop: small enough that the
// checksum reads the block back from cache right after the copy wrote it.
const fusedBlock = 128 << 10

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

// read copies a verified page into the buffer alloc returns for its length.
// On ErrIntegrity the buffer holds unverified bytes and must not be used.
func (s *SSD) read(ctx context.Context, id PageID, alloc func(n int) ([]byte, error)) (uint64, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	if err := s.begin(); err != nil {
		return 0, nil, err
	}
	defer s.end()
	s.counters.gets.Add(1)
	var gen uint64
	var out []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(pageKey(id))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("page %v: %w", id, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("ssd: get page %v: %w", id, err)
		}
		return item.Value(func(v []byte) error {
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
			gen, out = h.gen, dst
			return nil
		})
	})
	switch {
	case err == nil:
		s.counters.hits.Add(1)
		s.counters.bytesOut.Add(uint64(len(out)))
	case errors.Is(err, ErrIntegrity):
		s.counters.integrityErrors.Add(1)
		s.counters.misses.Add(1)
	case errors.Is(err, ErrNotFound):
		s.counters.misses.Add(1)
	}
	return gen, out, err
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

// Delete implements Tier.
func (s *SSD) Delete(ctx context.Context, id PageID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	key := pageKey(id)
	var size int64
	err := s.db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(key)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("page %v: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		size = storedLen(item)
		return txn.Delete(key)
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return err
		}
		return fmt.Errorf("ssd: delete page %v: %w", id, err)
	}
	s.pages.Add(-1)
	s.bytes.Add(-size)
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
	var keys [][]byte
	var size int64
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: sessionPrefix(session)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
			size += storedLen(it.Item())
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

// Close stops GC and closes Badger, waiting for operations in flight.
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
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("ssd: close: %w", err)
	}
	return nil
}
