package tiers

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ReserveConfig configures the set of reserve regions of a daemon.
type ReserveConfig struct {
	// Budget bounds the total bytes of all regions (0 = unbounded).
	Budget int64
	// MaxRegions bounds the number of regions (0 = unbounded).
	MaxRegions int
	// Backend creates region memory; nil means MemfdBackend.
	Backend Backend
}

// Reserve owns every session's region under one byte budget. As a Tier it
// routes each page to its session's region; a page of a session without a
// region is ErrNotFound.
type Reserve struct {
	cfg     ReserveConfig
	mu      sync.Mutex
	closed  bool
	used    int64
	regions map[uint64]*Region
	gone    TierStats // counters of closed regions, so Stats stays monotonic
}

var _ Tier = (*Reserve)(nil)

// NewReserve creates an empty reserve.
func NewReserve(cfg ReserveConfig) *Reserve {
	if cfg.Backend == nil {
		cfg.Backend = MemfdBackend()
	}
	return &Reserve{cfg: cfg, regions: make(map[uint64]*Region)}
}

// Create makes the region of a session. ErrExists if it has one, ErrBudget if
// the reserve budget or region count would be exceeded.
func (rs *Reserve) Create(session uint64, layout Layout, slots int) (*Region, error) {
	size, err := RegionSize(layout, slots)
	if err != nil {
		return nil, fmt.Errorf("session %d: %w", session, err)
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.closed {
		return nil, fmt.Errorf("reserve: %w", ErrClosed)
	}
	if _, ok := rs.regions[session]; ok {
		return nil, fmt.Errorf("session %d: region %w", session, ErrExists)
	}
	if rs.cfg.Budget > 0 && rs.used+size > rs.cfg.Budget {
		return nil, fmt.Errorf("session %d: region of %d B, %d of %d B in use: %w", session, size, rs.used, rs.cfg.Budget, ErrBudget)
	}
	if rs.cfg.MaxRegions > 0 && len(rs.regions) >= rs.cfg.MaxRegions {
		return nil, fmt.Errorf("session %d: %d regions already: %w", session, len(rs.regions), ErrBudget)
	}
	r, err := NewRegion(RegionConfig{Session: session, Layout: layout, Slots: slots, Backend: rs.cfg.Backend})
	if err != nil {
		return nil, err
	}
	rs.regions[session] = r
	rs.used += r.Size()
	return r, nil
}

// Region returns a session's region or ErrNotFound.
func (rs *Reserve) Region(session uint64) (*Region, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.closed {
		return nil, fmt.Errorf("reserve: %w", ErrClosed)
	}
	r, ok := rs.regions[session]
	if !ok {
		return nil, fmt.Errorf("session %d: region %w", session, ErrNotFound)
	}
	return r, nil
}

// Destroy closes and forgets a session's region (leases included).
func (rs *Reserve) Destroy(session uint64) error {
	rs.mu.Lock()
	r, ok := rs.regions[session]
	if ok {
		delete(rs.regions, session)
		rs.used -= r.Size()
		st := r.Stats()
		rs.gone.AddCounters(st)
	}
	rs.mu.Unlock()
	if !ok {
		return fmt.Errorf("session %d: region %w", session, ErrNotFound)
	}
	return r.Close()
}

// AddCounters adds o's event counters (not its gauges: pages, bytes,
// capacity) to s, to sum tiers of one kind.
func (s *TierStats) AddCounters(o TierStats) {
	s.Puts += o.Puts
	s.Gets += o.Gets
	s.Hits += o.Hits
	s.Misses += o.Misses
	s.BytesIn += o.BytesIn
	s.BytesOut += o.BytesOut
	s.Evictions += o.Evictions
	s.IntegrityErrors += o.IntegrityErrors
}

func (rs *Reserve) route(id PageID) (*Region, error) {
	r, err := rs.Region(id.Session)
	if err != nil {
		return nil, fmt.Errorf("page %v: %w", id, err)
	}
	return r, nil
}

// Put implements Tier.
func (rs *Reserve) Put(ctx context.Context, id PageID, gen uint64, page []byte) error {
	r, err := rs.route(id)
	if err != nil {
		return err
	}
	return r.Put(ctx, id, gen, page)
}

// Get implements Tier.
func (rs *Reserve) Get(ctx context.Context, id PageID, dst []byte) (uint64, error) {
	r, err := rs.route(id)
	if err != nil {
		if errors.Is(err, ErrClosed) {
			return 0, err
		}
		if cerr := ctx.Err(); cerr != nil {
			return 0, cerr
		}
		return 0, err
	}
	return r.Get(ctx, id, dst)
}

// Delete implements Tier.
func (rs *Reserve) Delete(ctx context.Context, id PageID) error {
	r, err := rs.route(id)
	if err != nil {
		return err
	}
	return r.Delete(ctx, id)
}

// DeleteSession implements Tier: it empties the session's region but keeps it;
// Destroy removes the region itself.
func (rs *Reserve) DeleteSession(ctx context.Context, session uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r, err := rs.Region(session)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return r.DeleteSession(ctx, session)
}

// Stats implements Tier; Capacity is the budget, Bytes the loaded pages.
func (rs *Reserve) Stats() TierStats {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	s := rs.gone
	s.Pages, s.Bytes = 0, 0
	for _, r := range rs.regions {
		st := r.Stats()
		s.Pages += st.Pages
		s.Bytes += st.Bytes
		s.AddCounters(st)
	}
	s.Capacity = rs.cfg.Budget
	return s
}

// Used is the bytes of all regions.
func (rs *Reserve) Used() int64 {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.used
}

// Close closes every region.
func (rs *Reserve) Close() error {
	rs.mu.Lock()
	if rs.closed {
		rs.mu.Unlock()
		return nil
	}
	rs.closed = true
	regions := rs.regions
	rs.regions = map[uint64]*Region{}
	rs.mu.Unlock()
	var errs []error
	for _, r := range regions {
		errs = append(errs, r.Close())
	}
	return errors.Join(errs...)
}
