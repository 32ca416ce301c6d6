package tiers

import (
	"context"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// DefaultExtentBytes is the default size of one host-mirror arena extent.
const DefaultExtentBytes = 64 << 20

const mirrorAlign = 4096

// Allocator maps the large extents the mirror carves page slots from. The CPU
// build uses anonymous mmap (MmapAllocator); the CUDA build (issue 4) adds one
// that registers each extent as pinned memory (cuMemHostRegister) so recalls
// run at DMA speed. Extents are few and large on purpose: registration is
// expensive per call. Implementations live in this package.
type Allocator interface {
	alloc(n int) ([]byte, error)
	free(b []byte) error
}

// MmapAllocator returns the CPU allocator: private anonymous mappings.
func MmapAllocator() Allocator { return mmapAllocator{} }

type mmapAllocator struct{}

func (mmapAllocator) alloc(n int) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap %d B: %w", n, err)
	}
	return b, nil
}

func (mmapAllocator) free(b []byte) error { return unix.Munmap(b) }

// MirrorConfig configures a HostMirror.
type MirrorConfig struct {
	// Budget bounds the bytes of page slots in use (0 = unbounded).
	Budget int64
	// ExtentBytes is the size of the arena extents slots are carved from
	// (default DefaultExtentBytes); an extent holds at least one slot.
	ExtentBytes int64
	// Allocator maps extents; nil means MmapAllocator.
	Allocator Allocator
}

// sizeClass holds the extents of one slot size. Sessions with the same layout
// share a class, so a spilled page's slot is reused by any session's next page.
type sizeClass struct {
	slotBytes int
	extents   []*extent
}

type extent struct {
	class  *sizeClass
	mem    []byte
	free   []int32
	used   int32
	nslots int32
}

// mbuf is one page slot. Readers hold a reference while they copy; a write
// fills a fresh slot and swaps it in, retiring the old one, so a reader never
// sees a torn page and never blocks a writer.
type mbuf struct {
	ext     *extent
	idx     int32
	data    []byte // len = page length
	refs    int32
	retired bool
}

type mpage struct {
	id        PageID
	gen       uint64
	buf       *mbuf
	persisted uint64 // generation known to be on SSD (0 = none)
	staged    bool   // brought in by Stage and not read since
	spilling  bool
	prev      *mpage
	next      *mpage
}

// HostMirror keeps every page of every live session in page-aligned slots
// carved from large mmap'ed extents, grouped by slot size (page length rounded
// up to 4096). The budget counts slots in use, including a page's old slot
// while readers still copy from it after a rewrite. An extent that empties is
// unmapped unless it is its class's last, so mapped memory stays within the
// budget plus about one extent per size class.
//
// As a standalone Tier it answers ErrBudget when full; the Store spills the
// least recently used pages to SSD instead.
type HostMirror struct {
	cfg   MirrorConfig
	alloc Allocator

	mu       sync.Mutex
	cond     *sync.Cond
	closed   bool
	used     int64
	mapped   int64
	bytes    int64
	refs     int64 // outstanding slot references (Close waits for them)
	classes  map[int]*sizeClass
	pages    map[PageID]*mpage
	sessions map[uint64]map[uint32]*mpage
	head     *mpage // most recently used
	tail     *mpage

	counters     tierCounters
	stagedUnused uint64 // staged pages dropped without a read (guarded by mu)
	unsaved      int64  // pages never written to SSD (persisted == 0)
	unsavedBytes int64
}

var _ Tier = (*HostMirror)(nil)

// NewHostMirror creates an empty mirror; arenas are mapped on demand.
func NewHostMirror(cfg MirrorConfig) *HostMirror {
	if cfg.ExtentBytes <= 0 {
		cfg.ExtentBytes = DefaultExtentBytes
	}
	a := cfg.Allocator
	if a == nil {
		a = MmapAllocator()
	}
	m := &HostMirror{
		cfg:      cfg,
		alloc:    a,
		classes:  make(map[int]*sizeClass),
		pages:    make(map[PageID]*mpage),
		sessions: make(map[uint64]map[uint32]*mpage),
	}
	m.cond = sync.NewCond(&m.mu)
	return m
}

// LRU helpers; caller holds mu.
func (m *HostMirror) unlink(p *mpage) {
	if p.prev != nil {
		p.prev.next = p.next
	} else if m.head == p {
		m.head = p.next
	}
	if p.next != nil {
		p.next.prev = p.prev
	} else if m.tail == p {
		m.tail = p.prev
	}
	p.prev, p.next = nil, nil
}

func (m *HostMirror) pushFront(p *mpage) {
	p.prev, p.next = nil, m.head
	if m.head != nil {
		m.head.prev = p
	}
	m.head = p
	if m.tail == nil {
		m.tail = p
	}
}

func (m *HostMirror) touch(p *mpage) {
	if m.head != p {
		m.unlink(p)
		m.pushFront(p)
	}
}

// allocBuf carves a slot for a page of n bytes; caller holds mu.
func (m *HostMirror) allocBuf(id PageID, n int) (*mbuf, error) {
	slotBytes := int(alignUp(int64(n), mirrorAlign))
	if !m.fits(int64(slotBytes)) {
		return nil, fmt.Errorf("page %v: slot of %d B, %d of %d B in use: %w", id, slotBytes, m.used, m.cfg.Budget, ErrBudget)
	}
	c := m.classes[slotBytes]
	if c == nil {
		c = &sizeClass{slotBytes: slotBytes}
		m.classes[slotBytes] = c
	}
	var e *extent
	for _, x := range c.extents {
		if len(x.free) > 0 {
			e = x
			break
		}
	}
	if e == nil {
		nslots := m.cfg.ExtentBytes / int64(slotBytes)
		if m.cfg.Budget > 0 {
			// Do not map (and, on GPU hosts, pin) far beyond the budget.
			if room := (m.cfg.Budget - m.used) / int64(slotBytes); nslots > room {
				nslots = room
			}
		}
		if nslots < 1 {
			nslots = 1
		}
		mem, err := m.alloc.alloc(int(nslots) * slotBytes)
		if err != nil {
			return nil, fmt.Errorf("page %v: mirror extent: %w", id, err)
		}
		e = &extent{class: c, mem: mem, nslots: int32(nslots), free: make([]int32, 0, nslots)}
		for i := int32(nslots) - 1; i >= 0; i-- {
			e.free = append(e.free, i)
		}
		c.extents = append(c.extents, e)
		m.mapped += int64(len(mem))
	}
	idx := e.free[len(e.free)-1]
	e.free = e.free[:len(e.free)-1]
	e.used++
	m.used += int64(slotBytes)
	off := int(idx) * slotBytes
	return &mbuf{ext: e, idx: idx, data: e.mem[off : off+n : off+slotBytes]}, nil
}

// hasRoom reports whether a page of n bytes fits in the budget now.
func (m *HostMirror) hasRoom(n int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fits(alignUp(int64(n), mirrorAlign))
}

// fits reports whether slotBytes more fit in the budget; caller holds mu.
func (m *HostMirror) fits(slotBytes int64) bool {
	return m.cfg.Budget <= 0 || m.used+slotBytes <= m.cfg.Budget
}

// freeBuf returns a slot once nobody reads it; caller holds mu.
func (m *HostMirror) freeBuf(b *mbuf) {
	b.retired = true
	if b.refs > 0 {
		return
	}
	e := b.ext
	if e == nil {
		return
	}
	b.ext = nil
	e.free = append(e.free, b.idx)
	e.used--
	m.used -= int64(e.class.slotBytes)
	if e.used == 0 && len(e.class.extents) > 1 {
		c := e.class
		for i, x := range c.extents {
			if x == e {
				c.extents = append(c.extents[:i], c.extents[i+1:]...)
				break
			}
		}
		m.mapped -= int64(len(e.mem))
		// munmap of our own mapping only fails on a programming error; the
		// bytes are unreachable from here on either way.
		_ = m.alloc.free(e.mem)
		e.mem = nil
	}
}

func (m *HostMirror) ref(b *mbuf) {
	b.refs++
	m.refs++
}

func (m *HostMirror) unref(b *mbuf) {
	b.refs--
	m.refs--
	if b.refs == 0 && b.retired {
		m.freeBuf(b)
	}
	if m.refs == 0 {
		m.cond.Broadcast()
	}
}

// removePage drops p from every index; caller holds mu.
func (m *HostMirror) removePage(p *mpage) {
	m.unlink(p)
	delete(m.pages, p.id)
	if s := m.sessions[p.id.Session]; s != nil {
		delete(s, p.id.Page)
		if len(s) == 0 {
			delete(m.sessions, p.id.Session)
		}
	}
	if p.staged {
		m.stagedUnused++
	}
	if p.persisted == 0 {
		m.unsaved--
		m.unsavedBytes -= int64(len(p.buf.data))
	}
	m.bytes -= int64(len(p.buf.data))
	m.freeBuf(p.buf)
	p.buf = nil
}

// setPersisted records that gen reached SSD; caller holds mu.
func (m *HostMirror) setPersisted(p *mpage, gen uint64) {
	if p.persisted == 0 && gen != 0 {
		m.unsaved--
		m.unsavedBytes -= int64(len(p.buf.data))
	}
	p.persisted = gen
}

type putOpts struct {
	persisted   bool // the bytes are on SSD at this generation already
	staged      bool // a lookahead prefetch, not a use
	onlyIfNewer bool // skip (errSkip) unless strictly newer than what is held
}

// errSkip is internal: a conditional insert found newer data already present.
var errSkip = fmt.Errorf("tiers: newer page present: %w", ErrStale)

func (m *HostMirror) put(ctx context.Context, id PageID, gen uint64, page []byte, o putOpts) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkPageLen(id, len(page)); err != nil {
		return err
	}
	if gen == 0 {
		return fmt.Errorf("page %v: generation 0: %w", id, ErrStale)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("mirror: %w", ErrClosed)
	}
	if err := m.checkGen(id, gen, o); err != nil {
		m.mu.Unlock()
		return err
	}
	b, err := m.allocBuf(id, len(page))
	if err != nil {
		m.mu.Unlock()
		return err
	}
	m.ref(b)
	m.mu.Unlock()

	copy(b.data, page)
	return m.commitBuf(id, gen, b, o)
}

// reserveBuf carves and references a slot for a page of n bytes that the
// caller fills outside the lock (an SSD read straight into it), then
// installs with commitBuf or drops with abortBuf. Nobody sees the slot
// before commitBuf.
func (m *HostMirror) reserveBuf(id PageID, n int) (*mbuf, error) {
	if err := checkPageLen(id, n); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("mirror: %w", ErrClosed)
	}
	b, err := m.allocBuf(id, n)
	if err != nil {
		return nil, err
	}
	m.ref(b)
	return b, nil
}

// commitBuf installs a filled slot (from reserveBuf, or put's own) as the
// page's bytes at gen; on any error the slot is freed.
func (m *HostMirror) commitBuf(id PageID, gen uint64, b *mbuf, o putOpts) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.unref(b)
	if m.closed {
		m.freeBuf(b)
		return fmt.Errorf("mirror: %w", ErrClosed)
	}
	if gen == 0 {
		m.freeBuf(b)
		return fmt.Errorf("page %v: generation 0: %w", id, ErrStale)
	}
	if err := m.checkGen(id, gen, o); err != nil {
		m.freeBuf(b)
		return err
	}
	m.install(id, gen, b, o)
	m.counters.puts.Add(1)
	m.counters.bytesIn.Add(uint64(len(b.data)))
	return nil
}

// abortBuf frees a slot from reserveBuf that was not committed.
func (m *HostMirror) abortBuf(b *mbuf) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.unref(b)
	m.freeBuf(b)
}

func (m *HostMirror) checkGen(id PageID, gen uint64, o putOpts) error {
	p := m.pages[id]
	if p == nil {
		return nil
	}
	if o.onlyIfNewer && gen <= p.gen {
		return errSkip
	}
	if gen < p.gen {
		return fmt.Errorf("page %v: generation %d older than held %d: %w", id, gen, p.gen, ErrStale)
	}
	return nil
}

// install makes b the page's bytes at gen; caller holds mu.
func (m *HostMirror) install(id PageID, gen uint64, b *mbuf, o putOpts) {
	p := m.pages[id]
	if p == nil {
		p = &mpage{id: id}
		m.pages[id] = p
		s := m.sessions[id.Session]
		if s == nil {
			s = make(map[uint32]*mpage)
			m.sessions[id.Session] = s
		}
		s[id.Page] = p
		m.pushFront(p)
		m.unsaved++
		m.unsavedBytes += int64(len(b.data))
	} else {
		m.bytes -= int64(len(p.buf.data))
		if p.persisted == 0 {
			m.unsavedBytes -= int64(len(p.buf.data))
		}
		m.freeBuf(p.buf)
		if p.staged {
			m.stagedUnused++
		}
		m.touch(p)
		if p.persisted == 0 {
			m.unsavedBytes += int64(len(b.data))
		}
	}
	p.buf = b
	p.gen = gen
	p.staged = o.staged
	if o.persisted {
		m.setPersisted(p, gen)
	}
	m.bytes += int64(len(b.data))
}

// Put implements Tier. Generations must not go backwards (ErrStale).
func (m *HostMirror) Put(ctx context.Context, id PageID, gen uint64, page []byte) error {
	return m.put(ctx, id, gen, page, putOpts{})
}

// errMiss marks a view that found no page, as opposed to fn failing (whose
// error may wrap anything, ErrNotFound included).
var errMiss = fmt.Errorf("mirror miss: %w", ErrNotFound)

// view runs fn on the page's bytes without copying them out. fn must not keep
// data. staged reports whether this is the first read of a staged page. A
// missing page is an error wrapping errMiss.
func (m *HostMirror) view(id PageID, fn func(gen uint64, data []byte) error) (staged bool, err error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return false, fmt.Errorf("mirror: %w", ErrClosed)
	}
	m.counters.gets.Add(1)
	p := m.pages[id]
	if p == nil {
		m.mu.Unlock()
		m.counters.misses.Add(1)
		return false, fmt.Errorf("page %v: %w", id, errMiss)
	}
	b, gen := p.buf, p.gen
	staged, p.staged = p.staged, false
	m.ref(b)
	m.touch(p)
	m.mu.Unlock()

	err = fn(gen, b.data)

	m.mu.Lock()
	m.unref(b)
	m.mu.Unlock()
	if err == nil {
		m.counters.hits.Add(1)
		m.counters.bytesOut.Add(uint64(len(b.data)))
	}
	return staged, err
}

// mirrorRef is one page of viewMany: ok says whether the mirror had it.
type mirrorRef struct {
	ok     bool
	staged bool // first read of a staged page
	gen    uint64
	data   []byte
	buf    *mbuf
}

// viewMany is view for many pages at once: it references every page of ids
// the mirror holds, runs fn once with refs[i] describing ids[i], then drops
// the references. Missing pages are not counted as misses: the caller reads
// them through view, which counts them.
func (m *HostMirror) viewMany(ids []PageID, refs []mirrorRef, fn func(refs []mirrorRef)) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("mirror: %w", ErrClosed)
	}
	for i, id := range ids {
		p := m.pages[id]
		if p == nil {
			refs[i] = mirrorRef{}
			continue
		}
		m.counters.gets.Add(1)
		refs[i] = mirrorRef{ok: true, staged: p.staged, gen: p.gen, data: p.buf.data, buf: p.buf}
		p.staged = false
		m.ref(p.buf)
		m.touch(p)
	}
	m.mu.Unlock()

	fn(refs)

	m.mu.Lock()
	for i := range refs {
		if refs[i].ok {
			m.unref(refs[i].buf)
			m.counters.hits.Add(1)
			m.counters.bytesOut.Add(uint64(len(refs[i].data)))
			refs[i].buf, refs[i].data = nil, nil
		}
	}
	m.mu.Unlock()
	return nil
}

// Get implements Tier.
func (m *HostMirror) Get(ctx context.Context, id PageID, dst []byte) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var gen uint64
	_, err := m.view(id, func(g uint64, data []byte) error {
		if len(dst) != len(data) {
			return fmt.Errorf("page %v: buffer %d B, page is %d: %w", id, len(dst), len(data), ErrSize)
		}
		copy(dst, data)
		gen = g
		return nil
	})
	return gen, err
}

// Generation reports the generation held for a page without reading it.
func (m *HostMirror) Generation(id PageID) (uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.pages[id]; p != nil {
		return p.gen, true
	}
	return 0, false
}

// WriteChunk writes one chunk's payload into a page in place (the append
// path) and moves the page to generation gen, returning the generation it had
// before (0 if the page was created here, zero-filled). The caller serialises
// writes to one page (the session's goroutine does); concurrent readers may see
// the chunk or not and report the generation they started with, so a reserve
// copy made meanwhile is recopied. ErrStale if gen is not newer.
func (m *HostMirror) WriteChunk(id PageID, gen uint64, layout *Geometry, chunk int, payload []byte) (uint64, error) {
	g := layout.g
	if err := g.checkChunk(g.pageBytes, chunk, len(payload)); err != nil {
		return 0, fmt.Errorf("page %v: %w", id, err)
	}
	return m.writeInPlace(id, gen, g.pageBytes, len(payload), true, func(page []byte) {
		_ = g.scatterChunk(page, chunk, payload) // sizes checked above
	})
}

// WriteChunkRun is WriteChunk for a run of consecutive chunks of one page
// taken from an APPEND payload: one copy per layer segment instead of one per
// segment per chunk.
func (m *HostMirror) WriteChunkRun(id PageID, gen uint64, layout *Geometry, run ChunkRun) (uint64, error) {
	g := layout.g
	if err := g.checkRun(g.pageBytes, run); err != nil {
		return 0, fmt.Errorf("page %v: %w", id, err)
	}
	return m.writeInPlace(id, gen, g.pageBytes, run.Count*g.chunkBytes, true, func(page []byte) {
		g.eachRunCopy(run, func(pageOff, payOff, n int) {
			copy(page[pageOff:pageOff+n], run.Payload[payOff:payOff+n])
		})
	})
}

// writeInPlace runs fill on the page's bytes and moves the page to gen. An
// absent page is created zeroed if create is set, else the call fails with
// errMiss.
func (m *HostMirror) writeInPlace(id PageID, gen uint64, pageBytes, nbytes int, create bool, fill func(page []byte)) (uint64, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return 0, fmt.Errorf("mirror: %w", ErrClosed)
	}
	p := m.pages[id]
	// A page on its way to SSD must not change under the spill: wait for it
	// to finish (it may leave the mirror, then the caller brings it back).
	for p != nil && p.spilling && !m.closed {
		m.cond.Wait()
		p = m.pages[id]
	}
	if m.closed {
		m.mu.Unlock()
		return 0, fmt.Errorf("mirror: %w", ErrClosed)
	}
	if p == nil && !create {
		m.mu.Unlock()
		return 0, fmt.Errorf("page %v: %w", id, errMiss)
	}
	if p != nil && gen <= p.gen {
		m.mu.Unlock()
		return 0, fmt.Errorf("page %v: generation %d not newer than %d: %w", id, gen, p.gen, ErrStale)
	}
	if p != nil && len(p.buf.data) != pageBytes {
		m.mu.Unlock()
		return 0, fmt.Errorf("page %v: held page %d B, layout needs %d: %w", id, len(p.buf.data), pageBytes, ErrSize)
	}
	var b *mbuf
	fresh := p == nil
	if fresh {
		var err error
		if b, err = m.allocBuf(id, pageBytes); err != nil {
			m.mu.Unlock()
			return 0, err
		}
	} else {
		b = p.buf
	}
	m.ref(b)
	m.mu.Unlock()

	if fresh {
		clear(b.data) // slots are reused; a new page starts zeroed
	}
	fill(b.data)

	m.mu.Lock()
	defer m.mu.Unlock()
	m.unref(b)
	if m.closed {
		return 0, fmt.Errorf("mirror: %w", ErrClosed)
	}
	p = m.pages[id]
	var prev uint64
	switch {
	case fresh && p == nil:
		m.install(id, gen, b, putOpts{})
	case fresh:
		m.freeBuf(b) // someone created the page meanwhile; the caller serialises, so this is a misuse
		return 0, fmt.Errorf("page %v: created concurrently: %w", id, ErrStale)
	case p == nil || p.buf != b:
		return 0, fmt.Errorf("page %v: replaced during chunk write: %w", id, ErrStale)
	default:
		prev = p.gen
		p.gen = gen
		if p.staged {
			p.staged = false
		}
		m.touch(p)
	}
	m.counters.bytesIn.Add(uint64(nbytes))
	return prev, nil
}

// ReadChunk copies one chunk of a page out of the mirror.
func (m *HostMirror) ReadChunk(id PageID, layout *Geometry, chunk int, dst []byte) (uint64, error) {
	var gen uint64
	_, err := m.view(id, func(g uint64, data []byte) error {
		gen = g
		return layout.g.gatherChunk(data, chunk, dst)
	})
	return gen, err
}

// Delete implements Tier.
func (m *HostMirror) Delete(ctx context.Context, id PageID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("mirror: %w", ErrClosed)
	}
	p := m.pages[id]
	if p == nil {
		return fmt.Errorf("page %v: %w", id, ErrNotFound)
	}
	m.removePage(p)
	return nil
}

// DeleteSession implements Tier.
func (m *HostMirror) DeleteSession(ctx context.Context, session uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("mirror: %w", ErrClosed)
	}
	for _, p := range m.sessions[session] {
		p.staged = false // dropped with its session, not a prefetch miss
		m.removePage(p)
	}
	return nil
}

// SessionPages lists the pages the mirror holds for a session.
func (m *HostMirror) SessionPages(session uint64) []uint32 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]uint32, 0, len(m.sessions[session]))
	for pg := range m.sessions[session] {
		out = append(out, pg)
	}
	return out
}

// Stats implements Tier.
func (m *HostMirror) Stats() TierStats {
	m.mu.Lock()
	s := TierStats{Pages: int64(len(m.pages)), Bytes: m.bytes, Capacity: m.cfg.Budget}
	m.mu.Unlock()
	m.counters.fill(&s)
	return s
}

// Footprint reports the bytes of slots in use and of extents mapped.
func (m *HostMirror) Footprint() (used, mapped int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.used, m.mapped
}

// Close waits for in-flight copies and unmaps every extent.
func (m *HostMirror) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	for m.refs > 0 {
		m.cond.Wait()
	}
	var first error
	for _, c := range m.classes {
		for _, e := range c.extents {
			if err := m.alloc.free(e.mem); err != nil && first == nil {
				first = err
			}
			e.mem = nil
		}
	}
	m.classes = nil
	m.pages = map[PageID]*mpage{}
	m.sessions = map[uint64]map[uint32]*mpage{}
	m.head, m.tail = nil, nil
	m.used, m.mapped, m.bytes, m.unsaved, m.unsavedBytes = 0, 0, 0, 0, 0
	return first
}

// spillCandidates marks up to n of the least recently used pages (and, if
// maxBytes > 0, only as many as free maxBytes of slots) as spilling and returns
// them with a reference to their current slot; caller finishes each with
// endSpill. cleanOnly limits the choice to pages already on SSD.
func (m *HostMirror) spillCandidates(n int, cleanOnly bool, maxBytes int64) []spillItem {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []spillItem
	var bytes int64
	for p := m.tail; p != nil && len(out) < n && (maxBytes <= 0 || bytes < maxBytes); p = p.prev {
		if p.spilling || p.buf.refs > 0 {
			continue
		}
		if cleanOnly && p.persisted != p.gen {
			continue
		}
		p.spilling = true
		bytes += int64(cap(p.buf.data))
		m.ref(p.buf)
		out = append(out, spillItem{p: p, buf: p.buf, gen: p.gen, dirty: p.persisted != p.gen})
	}
	return out
}

type spillItem struct {
	p      *mpage
	buf    *mbuf
	gen    uint64
	dirty  bool
	marked bool // set p.spilling; endFlush clears it
}

// endSpill drops the page if it still holds the spilled bytes and the spill
// reached SSD (ok); it reports whether the page left the mirror.
func (m *HostMirror) endSpill(it spillItem, ok bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.unref(it.buf)
	p := it.p
	p.spilling = false
	m.cond.Broadcast() // writeInPlace waits for spills of its page
	if ok && p.buf == it.buf && p.gen == it.gen && m.pages[p.id] == p {
		m.setPersisted(p, it.gen)
		m.removePage(p)
		m.counters.evictions.Add(1)
		return true
	}
	return false
}

// cleanCandidates returns references to up to n of the least recently used
// pages not yet on SSD at their generation, leaving them in the mirror;
// caller ends each with endFlush.
func (m *HostMirror) cleanCandidates(n int) []spillItem {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []spillItem
	for p := m.tail; p != nil && len(out) < n; p = p.prev {
		// A referenced page may be under a chunk write that started before
		// the mark (it does not wait); spillCandidates skips these too.
		if p.spilling || p.persisted == p.gen || p.buf.refs > 0 {
			continue
		}
		// Marked like a spill: no spill takes it meanwhile, and writers wait
		// (the bytes and their checksum go to SSD as one).
		p.spilling = true
		m.ref(p.buf)
		out = append(out, spillItem{p: p, buf: p.buf, gen: p.gen, dirty: true, marked: true})
	}
	return out
}

// dirtyPages returns references to the session's pages not yet on SSD at
// their current generation; caller ends each with endFlush.
func (m *HostMirror) dirtyPages(session uint64) []spillItem {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []spillItem
	for _, p := range m.sessions[session] {
		if p.persisted == p.gen {
			continue
		}
		m.ref(p.buf)
		out = append(out, spillItem{p: p, buf: p.buf, gen: p.gen, dirty: true})
	}
	return out
}

func (m *HostMirror) endFlush(it spillItem, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.unref(it.buf)
	if it.marked {
		it.p.spilling = false
		m.cond.Broadcast()
	}
	if ok && m.pages[it.p.id] == it.p && it.p.persisted < it.gen {
		m.setPersisted(it.p, it.gen)
	}
}

func (m *HostMirror) stagedUnusedCount() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stagedUnused
}

// unsavedPages reports the pages (and bytes) that exist only in the mirror.
func (m *HostMirror) unsavedPages() (int64, int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.unsaved, m.unsavedBytes
}
