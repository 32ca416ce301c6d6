package tiers

import (
	"context"
	"fmt"
	"sync/atomic"
)

// MaxPageBytes bounds one page (all layers' rows). It keeps a single value well
// inside one Badger value-log file and bounds what a corrupt length field can
// make a reader allocate.
const MaxPageBytes = 256 << 20

// PageID names one logical page of one session.
type PageID struct {
	Session uint64
	Page    uint32
}

func (id PageID) String() string { return fmt.Sprintf("%d/%d", id.Session, id.Page) }

// Tier is the contract every page store implements: the reserve (a region per
// session), the host mirror and the SSD. Pages are opaque byte strings whose
// length is fixed per session by its Layout; every write carries a generation
// that the tier returns on read so callers can tell stale copies apart.
//
// All methods are safe for concurrent use. A Get that races a Put of the same
// page returns either the old or the new page, never a mix, together with the
// generation of the bytes it returned.
type Tier interface {
	// Put stores page under id at generation gen. Tiers that enforce
	// monotonic generations return ErrStale for gen below the stored one.
	Put(ctx context.Context, id PageID, gen uint64, page []byte) error
	// Get copies the page into dst, which must have exactly the page's
	// length (ErrSize otherwise), and returns its generation. A missing page
	// is ErrNotFound; a corrupt one ErrIntegrity.
	Get(ctx context.Context, id PageID, dst []byte) (gen uint64, err error)
	// Delete removes one page; ErrNotFound if it is absent.
	Delete(ctx context.Context, id PageID) error
	// DeleteSession removes every page of a session; absent sessions are not
	// an error.
	DeleteSession(ctx context.Context, session uint64) error
	// Stats returns a snapshot of the tier's counters.
	Stats() TierStats
	// Close releases the tier's resources; later calls return ErrClosed.
	// Closing twice is not an error.
	Close() error
}

// PageWrite is one element of a batched write.
type PageWrite struct {
	ID   PageID
	Gen  uint64
	Page []byte
}

// BatchPutter is implemented by tiers that can make a batch of writes durable
// together (one sync for the batch instead of one per page).
type BatchPutter interface {
	PutBatch(ctx context.Context, pages []PageWrite) error
}

// PageLister is implemented by tiers that can enumerate a session's pages,
// which resuming a persisted session needs.
type PageLister interface {
	Pages(ctx context.Context, session uint64) ([]uint32, error)
}

// TierStats is a snapshot of one tier's counters. Counters only grow; Pages,
// Bytes and Capacity are gauges.
type TierStats struct {
	Pages    int64 // pages currently held
	Bytes    int64 // bytes of those pages
	Capacity int64 // byte budget or size (0 = unbounded)

	Puts            uint64
	Gets            uint64
	Hits            uint64 // Gets served
	Misses          uint64 // Gets answered ErrNotFound or ErrIntegrity
	BytesIn         uint64 // bytes written into the tier
	BytesOut        uint64 // bytes read out of the tier
	Evictions       uint64 // pages dropped to make room
	IntegrityErrors uint64 // reads that failed verification
}

// tierCounters is the lock-free half of TierStats shared by the implementations.
type tierCounters struct {
	puts, gets, hits, misses     atomic.Uint64
	bytesIn, bytesOut, evictions atomic.Uint64
	integrityErrors              atomic.Uint64
}

func (c *tierCounters) fill(s *TierStats) {
	s.Puts = c.puts.Load()
	s.Gets = c.gets.Load()
	s.Hits = c.hits.Load()
	s.Misses = c.misses.Load()
	s.BytesIn = c.bytesIn.Load()
	s.BytesOut = c.bytesOut.Load()
	s.Evictions = c.evictions.Load()
	s.IntegrityErrors = c.integrityErrors.Load()
}

func checkPageLen(id PageID, n int) error {
	if n <= 0 || n > MaxPageBytes {
		return fmt.Errorf("page %v: length %d outside 1..%d: %w", id, n, MaxPageBytes, ErrSize)
	}
	return nil
}
