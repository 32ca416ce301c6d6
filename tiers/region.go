package tiers

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// regionAlign is the alignment of every layer buffer inside a region, so a
// client (or a device copy engine) can map or address each layer separately.
const regionAlign = 4096

// MaxSlots bounds the slots of one region.
const MaxSlots = 1 << 20

// LeaseID names a set of pinned slots. The daemon chooses the values (one per
// cycle reply, one for an in-flight recall); the region only counts pins.
type LeaseID uint64

// RegionConfig describes one session's reserve region.
type RegionConfig struct {
	Session uint64
	Layout  Layout
	Slots   int
	// Backend creates the memory; nil means MemfdBackend.
	Backend Backend
}

// Allocation is the outcome of Region.Allocate.
type Allocation struct {
	Slot int
	// Hit: the page was already bound to Slot; Gen is what the slot holds
	// (0 = bound but not loaded yet).
	Hit bool
	Gen uint64
	// Evicted: Slot previously held EvictedPage, which is no longer resident.
	Evicted     bool
	EvictedPage uint32
}

type lease struct {
	slots  []int32
	handed bool
}

type slotState struct {
	page    uint32
	bound   bool
	gen     uint64 // 0 = no valid contents
	pins    int32  // leases holding the slot (no eviction, no Free)
	live    int32  // of those, leases handed to the client (no overwrite)
	readers int32
	writing bool
	// exclWait counts goroutines waiting for the slot with no readers (whole
	// page writers, Free). While it is non-zero new readers wait too, so a
	// steady stream of overlapping reads cannot starve them.
	exclWait int32
	stale    bool // holds bytes of a page it was bound to before

	prev, next int32 // LRU links among bound slots; -1 = none
}

// Region is one session's reserve: one buffer per layer, [slots, row_bytes],
// each at a 4096-aligned offset, a resident page occupying the same slot in every
// layer's buffer (chunk cell = slot·ChunksPerPage + chunk). It tracks which page
// each slot holds and at which generation, evicts least-recently-allocated
// unpinned slots, and pins slots by lease. The GPU reserve has exactly these
// semantics; only the memory behind it differs.
//
// Copies run outside the region lock. A slot being written excludes readers and
// other writers of that slot; a slot being copied is never evicted.
type Region struct {
	session  uint64
	geo      *pageGeometry
	nslots   int
	layerOff []int64
	stride   []int64 // per layer, bytes from one slot's row to the next
	mem      regionMemory

	mu       sync.Mutex
	cond     *sync.Cond
	closed   bool
	slots    []slotState
	pageSlot map[uint32]int32
	free     []int32
	head     int32 // most recently used
	tail     int32 // least recently used
	leases   map[LeaseID]*lease
	loaded   int64
	counters tierCounters

	// Slots [0, used) have been allocated at least once, [0, populated)
	// are populated or being populated by the prefaulter (prefault.go).
	used, populated int32
	prefaulting     bool
	prefaultWG      sync.WaitGroup
}

var _ Tier = (*Region)(nil)

// NewRegion creates a region and its memory.
func NewRegion(cfg RegionConfig) (*Region, error) {
	geo, err := newGeometry(cfg.Layout)
	if err != nil {
		return nil, fmt.Errorf("region for session %d: %w", cfg.Session, err)
	}
	if cfg.Slots <= 0 || cfg.Slots > MaxSlots {
		return nil, fmt.Errorf("region for session %d: %d slots outside 1..%d: %w", cfg.Session, cfg.Slots, MaxSlots, ErrLayout)
	}
	size, offs, strides := regionLayout(geo.layout, cfg.Slots)
	backend := cfg.Backend
	if backend == nil {
		backend = MemfdBackend()
	}
	mem, err := backend.newMemory(fmt.Sprintf("flashmem-reserve-%d", cfg.Session), size)
	if err != nil {
		return nil, fmt.Errorf("region for session %d: %w", cfg.Session, err)
	}
	r := &Region{
		session:  cfg.Session,
		geo:      geo,
		nslots:   cfg.Slots,
		layerOff: offs,
		stride:   strides,
		mem:      mem,
		slots:    make([]slotState, cfg.Slots),
		pageSlot: make(map[uint32]int32),
		free:     make([]int32, 0, cfg.Slots),
		head:     -1,
		tail:     -1,
		leases:   make(map[LeaseID]*lease),
	}
	r.cond = sync.NewCond(&r.mu)
	for i := cfg.Slots - 1; i >= 0; i-- {
		r.slots[i].prev, r.slots[i].next = -1, -1
		r.free = append(r.free, int32(i))
	}
	r.mu.Lock()
	r.prefaultLocked()
	r.mu.Unlock()
	return r, nil
}

// RegionSize is the byte size NewRegion would map for a layout and slot count,
// so budgets can be checked before allocating.
func RegionSize(l Layout, slots int) (int64, error) {
	if err := l.Validate(); err != nil {
		return 0, err
	}
	if slots <= 0 || slots > MaxSlots {
		return 0, fmt.Errorf("%d slots outside 1..%d: %w", slots, MaxSlots, ErrLayout)
	}
	size, _, _ := regionLayout(l, slots)
	return size, nil
}

// pageMajorAlign aligns a page-major slot (GPU copies move 16-byte vectors and
// read whole 128-byte lines best).
const pageMajorAlign = 256

// regionLayout places the layer buffers: per layer (each at a regionAlign
// offset, stride RowBytes) or page-major (slot s at s·stride, stride the page
// rounded up to pageMajorAlign, layer l at its offset inside the page).
func regionLayout(l Layout, slots int) (size int64, offs, strides []int64) {
	offs = make([]int64, len(l.Layers))
	strides = make([]int64, len(l.Layers))
	var off int64
	if l.PageMajor {
		for i, ly := range l.Layers {
			offs[i] = off
			off += int64(ly.RowBytes)
		}
		stride := alignUp(off, pageMajorAlign)
		for i := range strides {
			strides[i] = stride
		}
		return alignUp(int64(slots)*stride, regionAlign), offs, strides
	}
	for i, ly := range l.Layers {
		offs[i] = off
		strides[i] = int64(ly.RowBytes)
		off += alignUp(int64(slots)*int64(ly.RowBytes), regionAlign)
	}
	return off, offs, strides
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

// Session is the session the region belongs to.
func (r *Region) Session() uint64 { return r.session }

// Layout returns a copy of the region's layout.
func (r *Region) Layout() Layout { return r.geo.layout.clone() }

// FD is the file descriptor to pass to the owning client with SCM_RIGHTS. It
// stays owned by the region: send it, do not close it. -1 if the backend has no
// fd.
func (r *Region) FD() int { return r.mem.fd() }

// Size is the region's size in bytes.
func (r *Region) Size() int64 { return r.mem.size() }

// Slots is the number of page slots.
func (r *Region) Slots() int { return r.nslots }

// LayerOffsets returns each layer buffer's byte offset in the region; layer l's
// row for slot s starts at LayerOffsets()[l] + s·RowStrides()[l].
func (r *Region) LayerOffsets() []int64 { return append([]int64(nil), r.layerOff...) }

// RowStrides returns, per layer, the bytes from one slot's row to the next:
// RowBytes in the per-layer arrangement, the page stride when page-major.
func (r *Region) RowStrides() []int64 { return append([]int64(nil), r.stride...) }

// CellOffset is the region offset of segment seg of chunk chunk of the page in
// slot, in layer layer — what the decoder's kernels address.
func (r *Region) CellOffset(layer, slot, chunk, seg int) (int64, error) {
	l := r.geo.layout
	if layer < 0 || layer >= len(l.Layers) || slot < 0 || slot >= r.nslots || chunk < 0 || chunk >= l.ChunksPerPage ||
		seg < 0 || seg >= len(l.Layers[layer].Segments) {
		return 0, fmt.Errorf("cell (layer %d, slot %d, chunk %d, segment %d): %w", layer, slot, chunk, seg, ErrRange)
	}
	ly := l.Layers[layer]
	segBase := 0
	for t := 0; t < seg; t++ {
		segBase += l.ChunksPerPage * ly.Segments[t]
	}
	return r.layerOff[layer] + int64(slot)*r.stride[layer] + int64(segBase+chunk*ly.Segments[seg]), nil
}

// pageSpans are the copies of a whole page between the mirror layout and slot:
// one per layer row, merged where rows are adjacent on both sides (all of them
// when page-major: one contiguous copy per page).
func (r *Region) pageSpans(slot int) []span {
	sp := make([]span, 0, len(r.geo.layout.Layers))
	for l, ly := range r.geo.layout.Layers {
		s := span{regionOff: r.layerOff[l] + int64(slot)*r.stride[l], bufOff: r.geo.rowOff[l], n: ly.RowBytes}
		if k := len(sp) - 1; k >= 0 && sp[k].regionOff+int64(sp[k].n) == s.regionOff && sp[k].bufOff+sp[k].n == s.bufOff {
			sp[k].n += s.n
			continue
		}
		sp = append(sp, s)
	}
	return sp
}

func (r *Region) chunkSpans(slot, chunk int) []span {
	sp := make([]span, len(r.geo.cells))
	for i, c := range r.geo.cells {
		sp[i] = span{regionOff: r.layerOff[c.layer] + int64(slot)*r.stride[c.layer] + int64(c.rowOff+chunk*c.n), bufOff: c.chunkOff, n: c.n}
	}
	return sp
}

// LRU list helpers; caller holds mu.
func (r *Region) unlink(i int32) {
	s := &r.slots[i]
	if s.prev >= 0 {
		r.slots[s.prev].next = s.next
	} else if r.head == i {
		r.head = s.next
	}
	if s.next >= 0 {
		r.slots[s.next].prev = s.prev
	} else if r.tail == i {
		r.tail = s.prev
	}
	s.prev, s.next = -1, -1
}

func (r *Region) pushFront(i int32) {
	s := &r.slots[i]
	s.prev, s.next = -1, r.head
	if r.head >= 0 {
		r.slots[r.head].prev = i
	}
	r.head = i
	if r.tail < 0 {
		r.tail = i
	}
}

func (r *Region) unbind(i int32) {
	s := &r.slots[i]
	r.unlink(i)
	delete(r.pageSlot, s.page)
	if s.gen != 0 {
		r.loaded--
	}
	s.bound, s.gen, s.page, s.stale = false, 0, 0, true
	r.free = append(r.free, i)
}

func (r *Region) checkSlot(slot int) error {
	if slot < 0 || slot >= r.nslots {
		return fmt.Errorf("session %d: slot %d outside 0..%d: %w", r.session, slot, r.nslots-1, ErrRange)
	}
	return nil
}

// boundTo checks, under mu, that slot holds page.
func (r *Region) boundTo(slot int, page uint32) error {
	if r.closed {
		return fmt.Errorf("region of session %d: %w", r.session, ErrClosed)
	}
	s := &r.slots[slot]
	if !s.bound || s.page != page {
		return fmt.Errorf("session %d: slot %d no longer holds page %d: %w", r.session, slot, page, ErrStale)
	}
	return nil
}

// Lookup reports the slot bound to page and the generation it holds (0: bound
// but not loaded). It does not count as a use for LRU.
func (r *Region) Lookup(page uint32) (slot int, gen uint64, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, ok := r.pageSlot[page]
	if !ok || r.closed {
		return -1, 0, false
	}
	return int(i), r.slots[i].gen, true
}

// Allocate binds page to a slot: its current slot if it has one (a use for
// LRU), else a free slot, else the least recently used slot that no lease pins
// and no copy is using. ErrNoSpace if there is none.
func (r *Region) Allocate(page uint32) (Allocation, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.allocate(page)
}

func (r *Region) allocate(page uint32) (Allocation, error) {
	if r.closed {
		return Allocation{}, fmt.Errorf("region of session %d: %w", r.session, ErrClosed)
	}
	if i, ok := r.pageSlot[page]; ok {
		r.unlink(i)
		r.pushFront(i)
		return Allocation{Slot: int(i), Hit: true, Gen: r.slots[i].gen}, nil
	}
	var a Allocation
	if len(r.free) == 0 {
		victim := int32(-1)
		for i := r.tail; i >= 0; i = r.slots[i].prev {
			s := &r.slots[i]
			if s.pins == 0 && s.readers == 0 && !s.writing {
				victim = i
				break
			}
		}
		if victim < 0 {
			return Allocation{}, fmt.Errorf("session %d: page %d: all %d slots pinned or busy: %w", r.session, page, r.nslots, ErrNoSpace)
		}
		a.Evicted, a.EvictedPage = true, r.slots[victim].page
		r.unbind(victim)
		r.counters.evictions.Add(1)
	}
	i := r.free[len(r.free)-1]
	r.free = r.free[:len(r.free)-1]
	if i >= r.used {
		r.used = i + 1
		r.prefaultLocked()
	}
	s := &r.slots[i]
	s.page, s.bound, s.gen = page, true, 0
	r.pageSlot[page] = i
	r.pushFront(i)
	a.Slot = int(i)
	return a, nil
}

// zeroSlot clears every row of slot; the caller holds the slot for writing.
func (r *Region) zeroSlot(slot int) error {
	if z, ok := r.mem.(zeroer); ok {
		return z.zero(r.pageSpans(slot))
	}
	return r.mem.write(r.pageSpans(slot), make([]byte, r.geo.pageBytes))
}

// AllocateZeroed is Allocate for a page whose cells the decoder will write
// directly (the tail allocation): a newly bound slot is cleared, so cells not
// written yet read as zeros rather than an evicted page's bytes.
func (r *Region) AllocateZeroed(page uint32) (Allocation, error) {
	r.mu.Lock()
	a, err := r.allocate(page)
	if err != nil || a.Hit || !r.slots[a.Slot].stale {
		r.mu.Unlock()
		return a, err
	}
	if err := r.beginWrite(a.Slot, page, false); err != nil {
		r.mu.Unlock()
		return Allocation{}, err
	}
	r.mu.Unlock()
	zerr := r.zeroSlot(a.Slot)
	r.mu.Lock()
	s := &r.slots[a.Slot]
	s.writing = false
	if zerr == nil {
		s.stale = false
	}
	r.cond.Broadcast()
	r.mu.Unlock()
	if zerr != nil {
		return Allocation{}, fmt.Errorf("session %d page %d slot %d: %w", r.session, page, a.Slot, zerr)
	}
	return a, nil
}

// Free unbinds page's slot. ErrNotFound if the page has no slot, ErrPinned if
// a lease pins it. It waits for copies of the slot in progress.
func (r *Region) Free(page uint32) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		if r.closed {
			return fmt.Errorf("region of session %d: %w", r.session, ErrClosed)
		}
		i, ok := r.pageSlot[page]
		if !ok {
			return fmt.Errorf("session %d page %d: %w", r.session, page, ErrNotFound)
		}
		s := &r.slots[i]
		if s.pins > 0 {
			return fmt.Errorf("session %d page %d slot %d: %w", r.session, page, i, ErrPinned)
		}
		if s.readers == 0 && !s.writing {
			r.unbind(i)
			return nil
		}
		s.exclWait++
		r.cond.Wait()
		r.slots[i].exclWait--
		r.cond.Broadcast()
	}
}

// Pin adds slots to a lease that the client holds (creating it if needed):
// the slots are never evicted, freed or rewritten by WritePage until every
// lease holding them is released. Slots must be bound to a page; pinning a
// slot twice needs one Release.
func (r *Region) Pin(id LeaseID, slots []int) error { return r.pin(id, slots, true) }

// PinLoading adds slots to a pending lease: the daemon protects the slots a
// recall is filling from eviction, while the recall may still (re)load them.
// HandOut turns it into a client lease when the page table goes out.
func (r *Region) PinLoading(id LeaseID, slots []int) error { return r.pin(id, slots, false) }

func (r *Region) pin(id LeaseID, slots []int, handed bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("region of session %d: %w", r.session, ErrClosed)
	}
	for _, slot := range slots {
		if err := r.checkSlot(slot); err != nil {
			return fmt.Errorf("lease %d: %w", id, err)
		}
		if !r.slots[slot].bound {
			return fmt.Errorf("lease %d: session %d slot %d holds no page: %w", id, r.session, slot, ErrNotFound)
		}
	}
	l := r.leases[id]
	if l == nil {
		l = &lease{handed: handed}
		r.leases[id] = l
	} else if handed && !l.handed {
		r.handOut(l)
	}
	for _, slot := range slots {
		s := &r.slots[slot]
		s.pins++
		if l.handed {
			s.live++
		}
		l.slots = append(l.slots, int32(slot))
	}
	return nil
}

// PinBound is Allocate plus PinLoading for the pages that already have a
// slot, all in one critical section: each such page counts as a use for LRU
// and its slot is pinned under the pending lease id; slots[i] and gens[i]
// get its slot and the generation the slot holds (0: bound, not loaded),
// slots[i] = -1 for a page with no slot (for the caller to Allocate). It
// returns how many pages had none. The cycle path binds a table whose pages
// the previous cycle's background recall already bound: one lock and no
// allocation per page keep that bookkeeping to microseconds on the
// decoder's path (docs/benchmarks.md, "SSD as a capacity tier").
func (r *Region) PinBound(id LeaseID, pages []uint32, slots []int32, gens []uint64) (int, error) {
	if len(slots) < len(pages) || len(gens) < len(pages) {
		return 0, fmt.Errorf("session %d: %d pages, room for %d slots and %d generations: %w", r.session, len(pages), len(slots), len(gens), ErrSize)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, fmt.Errorf("region of session %d: %w", r.session, ErrClosed)
	}
	l := r.leases[id]
	if l == nil {
		l = &lease{slots: make([]int32, 0, len(pages))}
		r.leases[id] = l
	}
	missing := 0
	for k, p := range pages {
		i, ok := r.pageSlot[p]
		if !ok {
			slots[k], gens[k] = -1, 0
			missing++
			continue
		}
		r.unlink(i)
		r.pushFront(i)
		s := &r.slots[i]
		s.pins++
		if l.handed {
			s.live++
		}
		l.slots = append(l.slots, i)
		slots[k], gens[k] = i, s.gen
	}
	return missing, nil
}

// HandOut marks a lease as delivered to the client: its slots now hold bytes
// the client may be reading, so WritePage refuses them (ErrPinned).
func (r *Region) HandOut(id LeaseID) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.leases[id]
	if l == nil {
		return fmt.Errorf("session %d lease %d: %w", r.session, id, ErrNotFound)
	}
	r.handOut(l)
	return nil
}

func (r *Region) handOut(l *lease) {
	if !l.handed {
		l.handed = true
		for _, i := range l.slots {
			r.slots[i].live++
		}
	}
}

func (r *Region) dropLease(id LeaseID, l *lease) {
	for _, i := range l.slots {
		r.slots[i].pins--
		if l.handed {
			r.slots[i].live--
		}
	}
	delete(r.leases, id)
}

// Release ends a lease, unpinning its slots. ErrNotFound for an unknown lease.
func (r *Region) Release(id LeaseID) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	l, ok := r.leases[id]
	if !ok {
		return fmt.Errorf("session %d lease %d: %w", r.session, id, ErrNotFound)
	}
	r.dropLease(id, l)
	r.cond.Broadcast()
	return nil
}

// ReleaseAll ends every lease (the owning connection died).
func (r *Region) ReleaseAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, l := range r.leases {
		r.dropLease(id, l)
	}
	r.cond.Broadcast()
}

// Pins reports how many leases pin slot.
func (r *Region) Pins(slot int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if slot < 0 || slot >= r.nslots {
		return 0
	}
	return int(r.slots[slot].pins)
}

// Leases is the number of live leases.
func (r *Region) Leases() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.leases)
}

// beginWrite waits until slot may be written exclusively; full says whether
// the write replaces the whole page (refused on a leased, loaded slot).
//
// A whole-page writer that has to wait for readers registers in exclWait, which
// holds back readers that arrive after it: without that, readers whose copies
// overlap (tens of µs each on a GPU) keep the count above zero forever.
func (r *Region) beginWrite(slot int, page uint32, full bool) error {
	for {
		if err := r.boundTo(slot, page); err != nil {
			return err
		}
		s := &r.slots[slot]
		if full && s.live > 0 && s.gen != 0 {
			return fmt.Errorf("session %d page %d slot %d: %w", r.session, page, slot, ErrPinned)
		}
		if !s.writing && (s.readers == 0 || !full) {
			s.writing = true
			return nil
		}
		if full {
			s.exclWait++
		}
		r.cond.Wait()
		if full {
			r.slots[slot].exclWait--
			// Readers held back for this writer must re-check if it gives up.
			r.cond.Broadcast()
		}
	}
}

// beginRead waits while the slot is being written or a whole-page writer (or
// Free) is queued for it.
func (r *Region) beginRead(slot int, page uint32) error {
	for {
		if err := r.boundTo(slot, page); err != nil {
			return err
		}
		if s := &r.slots[slot]; !s.writing && s.exclWait == 0 {
			s.readers++
			return nil
		}
		r.cond.Wait()
	}
}

func (r *Region) setGen(s *slotState, gen uint64) {
	if s.gen == 0 && gen != 0 {
		r.loaded++
	} else if s.gen != 0 && gen == 0 {
		r.loaded--
	}
	s.gen = gen
}

// WritePage copies a whole page (rows of all layers concatenated) into slot,
// which must be bound to page, and records gen. A slot in a handed-out lease
// is refused (ErrPinned) once it holds a page: the client may be reading it.
func (r *Region) WritePage(slot int, page uint32, gen uint64, src []byte) error {
	if err := r.checkWrite(SlotWrite{Slot: slot, Page: page, Gen: gen, Src: src}); err != nil {
		return err
	}
	r.mu.Lock()
	if err := r.beginWrite(slot, page, true); err != nil {
		r.mu.Unlock()
		return err
	}
	r.mu.Unlock()
	err := r.mem.write(r.pageSpans(slot), src)
	r.mu.Lock()
	s := &r.slots[slot]
	s.writing = false
	if err == nil {
		r.setGen(s, gen)
		s.stale = false
		r.counters.puts.Add(1)
		r.counters.bytesIn.Add(uint64(len(src)))
	} else {
		r.setGen(s, 0)
	}
	r.cond.Broadcast()
	r.mu.Unlock()
	if err != nil {
		return fmt.Errorf("session %d page %d slot %d: %w", r.session, page, slot, err)
	}
	return nil
}

// SlotWrite is one page of Region.WritePages.
type SlotWrite struct {
	Slot int
	Page uint32
	Gen  uint64
	Src  []byte
}

// errSlotBusy marks a WritePages entry whose slot was being read or written
// when the batch started; the caller writes it alone with WritePage (which
// waits). Waiting inside a batch for one slot while holding others could
// deadlock against another batch.
var errSlotBusy = errors.New("slot busy")

// WritePages is WritePage for many pages in one transfer where the memory
// supports it (the GPU backend: one launch, one completion wait). errs[i] is
// ws[i]'s outcome; an entry whose slot was busy gets an error wrapping
// errSlotBusy and is not written.
func (r *Region) WritePages(ws []SlotWrite, errs []error) {
	jobs := make([]writeJob, 0, len(ws))
	idx := make([]int, 0, len(ws))
	r.mu.Lock()
	for i, w := range ws {
		errs[i] = r.checkWrite(w)
		if errs[i] != nil {
			continue
		}
		if err := r.boundTo(w.Slot, w.Page); err != nil {
			errs[i] = err
			continue
		}
		s := &r.slots[w.Slot]
		switch {
		case s.live > 0 && s.gen != 0:
			errs[i] = fmt.Errorf("session %d page %d slot %d: %w", r.session, w.Page, w.Slot, ErrPinned)
		case s.writing || s.readers > 0:
			errs[i] = fmt.Errorf("session %d page %d slot %d: %w", r.session, w.Page, w.Slot, errSlotBusy)
		default:
			s.writing = true
			jobs = append(jobs, writeJob{spans: r.pageSpans(w.Slot), src: w.Src})
			idx = append(idx, i)
		}
	}
	r.mu.Unlock()
	if len(jobs) == 0 {
		return
	}
	var err error
	if bw, ok := r.mem.(batchWriter); ok {
		err = bw.writeMany(jobs)
	} else {
		for _, j := range jobs {
			if err = r.mem.write(j.spans, j.src); err != nil {
				break
			}
		}
	}
	r.mu.Lock()
	for _, i := range idx {
		w := ws[i]
		s := &r.slots[w.Slot]
		s.writing = false
		if err == nil {
			r.setGen(s, w.Gen)
			s.stale = false
			r.counters.puts.Add(1)
			r.counters.bytesIn.Add(uint64(len(w.Src)))
		} else {
			r.setGen(s, 0)
			errs[i] = fmt.Errorf("session %d page %d slot %d: %w", r.session, w.Page, w.Slot, err)
		}
	}
	r.cond.Broadcast()
	r.mu.Unlock()
}

// checkWrite validates a whole-page write before any lock wait.
func (r *Region) checkWrite(w SlotWrite) error {
	if err := r.checkSlot(w.Slot); err != nil {
		return err
	}
	if len(w.Src) != r.geo.pageBytes {
		return fmt.Errorf("session %d page %d: %d B, layout needs %d: %w", r.session, w.Page, len(w.Src), r.geo.pageBytes, ErrSize)
	}
	if w.Gen == 0 {
		return fmt.Errorf("session %d page %d: generation 0: %w", r.session, w.Page, ErrStale)
	}
	return nil
}

// ReadPage copies slot's page into dst and returns its generation.
func (r *Region) ReadPage(slot int, page uint32, dst []byte) (uint64, error) {
	if err := r.checkSlot(slot); err != nil {
		return 0, err
	}
	if len(dst) != r.geo.pageBytes {
		return 0, fmt.Errorf("session %d page %d: buffer %d B, page is %d: %w", r.session, page, len(dst), r.geo.pageBytes, ErrSize)
	}
	r.mu.Lock()
	if err := r.beginRead(slot, page); err != nil {
		r.mu.Unlock()
		return 0, err
	}
	gen := r.slots[slot].gen
	if gen == 0 {
		r.slots[slot].readers--
		r.mu.Unlock()
		return 0, fmt.Errorf("session %d page %d slot %d not loaded: %w", r.session, page, slot, ErrNotFound)
	}
	r.mu.Unlock()
	err := r.mem.read(r.pageSpans(slot), dst)
	r.mu.Lock()
	r.slots[slot].readers--
	r.cond.Broadcast()
	r.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("session %d page %d slot %d: %w", r.session, page, slot, err)
	}
	r.counters.bytesOut.Add(uint64(len(dst)))
	return gen, nil
}

// WriteChunk writes one chunk's payload (all layers) into slot's cells: the
// prefill append into a resident page. If the slot held baseGen, the slot now
// matches the mirror's page at newGen and records it; otherwise the slot keeps
// its older generation and the next recall copies the page again. Pinned slots
// may be written: a chunk that did not exist when a lease was handed out cannot
// be in use by the client.
func (r *Region) WriteChunk(slot int, page uint32, baseGen, newGen uint64, chunk int, payload []byte) error {
	if err := r.checkSlot(slot); err != nil {
		return err
	}
	if err := r.geo.checkChunk(r.geo.pageBytes, chunk, len(payload)); err != nil {
		return fmt.Errorf("session %d page %d: %w", r.session, page, err)
	}
	return r.writeCells(slot, page, baseGen, newGen, r.chunkSpans(slot, chunk), payload)
}

// WriteChunkRun is WriteChunk for a run of consecutive chunks taken from an
// APPEND payload: one copy per layer segment.
func (r *Region) WriteChunkRun(slot int, page uint32, baseGen, newGen uint64, run ChunkRun) error {
	if err := r.checkSlot(slot); err != nil {
		return err
	}
	if err := r.geo.checkRun(r.geo.pageBytes, run); err != nil {
		return fmt.Errorf("session %d page %d: %w", r.session, page, err)
	}
	var sp []span
	r.geo.eachRunCopy(run, func(pageOff, payOff, n int) {
		sp = append(sp, span{regionOff: r.pageToRegion(slot, pageOff), bufOff: payOff, n: n})
	})
	return r.writeCells(slot, page, baseGen, newGen, sp, run.Payload)
}

// pageToRegion maps an offset inside a mirror-layout page to the region
// offset of the same byte in slot.
func (r *Region) pageToRegion(slot, pageOff int) int64 {
	l := len(r.geo.rowOff) - 1
	for l > 0 && r.geo.rowOff[l] > pageOff {
		l--
	}
	return r.layerOff[l] + int64(slot)*r.stride[l] + int64(pageOff-r.geo.rowOff[l])
}

func (r *Region) writeCells(slot int, page uint32, baseGen, newGen uint64, sp []span, src []byte) error {
	r.mu.Lock()
	if err := r.beginWrite(slot, page, false); err != nil {
		r.mu.Unlock()
		return err
	}
	// A new page's first cells: the rest of the slot must read as zeros, like
	// the mirror's fresh page, not as the previous page's bytes.
	zero := r.slots[slot].gen == 0 && r.slots[slot].stale
	r.mu.Unlock()
	var err error
	if zero {
		if err = r.zeroSlot(slot); err == nil {
			r.mu.Lock()
			r.slots[slot].stale = false
			r.mu.Unlock()
		}
	}
	if err == nil {
		err = r.mem.write(sp, src)
	}
	r.mu.Lock()
	s := &r.slots[slot]
	s.writing = false
	if err == nil && s.gen == baseGen {
		r.setGen(s, newGen)
	}
	r.cond.Broadcast()
	r.mu.Unlock()
	if err != nil {
		return fmt.Errorf("session %d page %d slot %d: %w", r.session, page, slot, err)
	}
	n := 0
	for _, x := range sp {
		n += x.n
	}
	r.counters.bytesIn.Add(uint64(n))
	return nil
}

// ReadChunk copies one chunk's cells out of slot (the decode commit: the
// decoder wrote them, the daemon moves them to the mirror). It works on slots
// that are pinned or not loaded yet, and returns the slot's generation.
func (r *Region) ReadChunk(slot int, page uint32, chunk int, dst []byte) (uint64, error) {
	if err := r.checkSlot(slot); err != nil {
		return 0, err
	}
	if err := r.geo.checkChunk(r.geo.pageBytes, chunk, len(dst)); err != nil {
		return 0, fmt.Errorf("session %d page %d: %w", r.session, page, err)
	}
	r.mu.Lock()
	if err := r.beginRead(slot, page); err != nil {
		r.mu.Unlock()
		return 0, err
	}
	gen := r.slots[slot].gen
	r.mu.Unlock()
	err := r.mem.read(r.chunkSpans(slot, chunk), dst)
	r.mu.Lock()
	r.slots[slot].readers--
	r.cond.Broadcast()
	r.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("session %d page %d slot %d chunk %d: %w", r.session, page, slot, chunk, err)
	}
	r.counters.bytesOut.Add(uint64(len(dst)))
	return gen, nil
}

// SetGeneration records that slot now holds page at gen, after the decoder
// wrote cells directly and the daemon committed them to the mirror at gen.
func (r *Region) SetGeneration(slot int, page uint32, gen uint64) error {
	if err := r.checkSlot(slot); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.boundTo(slot, page); err != nil {
		return err
	}
	r.setGen(&r.slots[slot], gen)
	return nil
}

// Put implements Tier: allocate (possibly evicting) and write.
func (r *Region) Put(ctx context.Context, id PageID, gen uint64, page []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if id.Session != r.session {
		return fmt.Errorf("page %v: region belongs to session %d: %w", id, r.session, ErrNotFound)
	}
	if len(page) != r.geo.pageBytes {
		return fmt.Errorf("page %v: %d B, layout needs %d: %w", id, len(page), r.geo.pageBytes, ErrSize)
	}
	if gen == 0 {
		return fmt.Errorf("page %v: generation 0: %w", id, ErrStale)
	}
	// Allocate and claim the slot under one lock hold, so no other Put can
	// evict it between the two.
	r.mu.Lock()
	var a Allocation
	for {
		var err error
		if a, err = r.allocate(id.Page); err != nil {
			r.mu.Unlock()
			return err
		}
		err = r.beginWrite(a.Slot, id.Page, true)
		if err == nil {
			break
		}
		if !isErr(err, ErrStale) {
			r.mu.Unlock()
			return err
		}
	}
	r.mu.Unlock()
	werr := r.mem.write(r.pageSpans(a.Slot), page)
	r.mu.Lock()
	s := &r.slots[a.Slot]
	s.writing = false
	if werr == nil {
		r.setGen(s, gen)
		s.stale = false
		r.counters.puts.Add(1)
		r.counters.bytesIn.Add(uint64(len(page)))
	} else {
		r.setGen(s, 0)
	}
	r.cond.Broadcast()
	r.mu.Unlock()
	if werr != nil {
		return fmt.Errorf("page %v slot %d: %w", id, a.Slot, werr)
	}
	return nil
}

// Get implements Tier.
func (r *Region) Get(ctx context.Context, id PageID, dst []byte) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	r.counters.gets.Add(1)
	if r.isClosed() {
		return 0, fmt.Errorf("region of session %d: %w", r.session, ErrClosed)
	}
	if len(dst) != r.geo.pageBytes {
		return 0, fmt.Errorf("page %v: buffer %d B, page is %d: %w", id, len(dst), r.geo.pageBytes, ErrSize)
	}
	slot, gen, ok := r.Lookup(id.Page)
	if id.Session != r.session || !ok || gen == 0 {
		r.counters.misses.Add(1)
		return 0, fmt.Errorf("page %v: %w", id, ErrNotFound)
	}
	gen, err := r.ReadPage(slot, id.Page, dst)
	if err != nil {
		r.counters.misses.Add(1)
		if isErr(err, ErrStale) {
			return 0, fmt.Errorf("page %v evicted: %w", id, ErrNotFound)
		}
		return 0, err
	}
	r.counters.hits.Add(1)
	return gen, nil
}

// Delete implements Tier (Free with a PageID).
func (r *Region) Delete(ctx context.Context, id PageID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if id.Session != r.session {
		return fmt.Errorf("page %v: %w", id, ErrNotFound)
	}
	return r.Free(id.Page)
}

// DeleteSession implements Tier: for the region's own session it ends every
// lease and unbinds every slot.
func (r *Region) DeleteSession(ctx context.Context, session uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if session != r.session {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("region of session %d: %w", r.session, ErrClosed)
	}
	for id, l := range r.leases {
		r.dropLease(id, l)
	}
	for {
		busy := false
		for i := range r.slots {
			s := &r.slots[i]
			if !s.bound {
				continue
			}
			if s.readers > 0 || s.writing {
				busy = true
				continue
			}
			r.unbind(int32(i))
		}
		if !busy {
			return nil
		}
		r.cond.Wait()
	}
}

func (r *Region) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// Stats implements Tier.
func (r *Region) Stats() TierStats {
	r.mu.Lock()
	loaded := r.loaded
	r.mu.Unlock()
	s := TierStats{Pages: loaded, Bytes: loaded * int64(r.geo.pageBytes), Capacity: int64(r.nslots) * int64(r.geo.pageBytes)}
	r.counters.fill(&s)
	return s
}

// Close waits for copies in progress and unmaps the region. The client's own
// mapping stays valid until the client unmaps it.
func (r *Region) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	for {
		busy := false
		for i := range r.slots {
			if r.slots[i].readers > 0 || r.slots[i].writing {
				busy = true
				break
			}
		}
		if !busy {
			break
		}
		r.cond.Wait()
	}
	r.mu.Unlock()
	err := r.mem.close()
	r.prefaultWG.Wait() // it stops at its next chunk: the memory is gone
	return err
}
