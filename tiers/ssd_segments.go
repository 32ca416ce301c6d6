package tiers

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

const (
	segDirName = "pages"
	segSuffix  = ".seg"
	// maxSegmentBytes bounds a segment (and so any offset an index entry may
	// name); a corrupt entry cannot make a reader seek past it.
	maxSegmentBytes = 1 << 40
	// defaultSegmentBytes is the most a segment file grows to before the
	// next one starts: large enough that creating a file and syncing the
	// directory is rare (once per ~340 DeepSeek-V4 pages), small enough that
	// compacting one segment moves at most a few hundred MB.
	defaultSegmentBytes = 256 << 20
	// growStep is the most a segment's file is extended (fallocate) at a
	// time: space is taken as records arrive, not 256 MiB up front, and
	// running out of it is an error at the fallocate, never a fault under a
	// mapping. Smaller segments grow by an eighth of their size (growStepFor),
	// from minGrowStep, so a small store's files are at most 1.125× what it
	// wrote.
	growStep    = 8 << 20
	minGrowStep = 64 << 10
	// minSealBytes is the least an active segment must hold before GC seals
	// it for being half garbage: a daemon restarted every few seconds never
	// fills a segment, and its garbage must still come back.
	minSealBytes = 1 << 20
)

// growStepFor is how much a segment of size bytes grows by: an eighth of its
// size, between minGrowStep and growStep (a logarithmic number of
// fallocates until the steps are 8 MiB, at 64 MiB).
func growStepFor(size int64) int64 {
	return min(growStep, max(minGrowStep, alignUp(size/8, minGrowStep)))
}

// segment is one append-only journal file. Records are written once, at
// offsets reserved under segStore.mu, and never modified (compaction writes a
// moved record's header after its body, then never touches it again); space
// comes back only when compaction has moved every live record out and the
// file is deleted.
type segment struct {
	id    uint32
	f     *os.File
	birth uint64 // first sequence number of the segment (0: unknown, a segment of format 1)

	// Guarded by segStore.mu.
	size    int64 // bytes allocated to the file
	next    int64 // next free record offset (the active segment); the used part
	live    int64 // record bytes (header + body) the index points at
	pending int   // reserved records whose index entries are not committed yet

	// written counts the writes finished in this segment; synced is the value
	// written had when the last successful fdatasync started, so every write
	// counted up to synced is durable. A segment is dirty while written >
	// synced. syncMu lets one fdatasync run at a time: a caller that waited for
	// it usually finds its writes covered and returns without another (group
	// commit), and none returns while the fdatasync covering its writes is
	// still running.
	written, synced atomic.Uint64
	syncMu          sync.Mutex

	// data maps the file read-only, up to the most the segment may grow to,
	// so a growing file needs no remapping: a read copies the body out of
	// the page cache and checksums it block by block in the same pass
	// (copyChecked), with no syscall. Bytes past the file's end are never
	// touched by a correct index, and a fault there (a truncated file)
	// becomes ErrIntegrity. Held shared by readers, exclusively by unmap.
	rmu  sync.RWMutex
	data []byte
}

func newSegment(id uint32, f *os.File, size, mapLen int64) (*segment, error) {
	seg := &segment{id: id, f: f, size: size}
	if mapLen == 0 {
		return seg, nil
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(mapLen), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("ssd: map segment %d (%d B): %w", id, mapLen, err)
	}
	seg.data = data
	return seg, nil
}

// unmap ends reads of the segment and closes its file.
func (seg *segment) unmap() error {
	seg.rmu.Lock()
	defer seg.rmu.Unlock()
	dropDirect(seg)
	var err error
	if seg.data != nil {
		err = unix.Munmap(seg.data)
		seg.data = nil
	}
	if cerr := seg.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// segStore owns the segment files of one SSD tier.
type segStore struct {
	dir   string
	size  int64 // most bytes of one segment
	floor int64 // free bytes the filesystem must keep (statfs)

	// pressed is set when a write was refused for space: the next garbage
	// starts a GC round at once, so writes resume as soon as space is freed.
	pressed atomic.Bool

	mu      sync.Mutex
	segs    map[uint32]*segment
	active  *segment
	nextID  uint32
	nextSeq uint64
}

// loc is where a record was reserved, and its sequence number.
type loc struct {
	seg *segment
	off int64
	seq uint64
}

func alignRecord(n int64) int64 { return alignUp(n, recordAlign) }

func segName(id uint32) string { return fmt.Sprintf("%08d%s", id, segSuffix) }

// openSegStore opens every segment in dir (created if missing). Which one is
// active and how much of each is live is decided by recovery, once the index
// and the journal's tail have been read.
func openSegStore(dir string, size, floor int64) (*segStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ssd: page segments %s: %w", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("ssd: page segments %s: %w", dir, err)
	}
	ss := &segStore{dir: dir, size: size, floor: floor, segs: map[uint32]*segment{}, nextSeq: 1}
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || !strings.HasSuffix(name, segSuffix) {
			continue
		}
		id, err := strconv.ParseUint(strings.TrimSuffix(name, segSuffix), 10, 32)
		if err != nil {
			continue
		}
		path := filepath.Join(dir, name)
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			ss.close()
			return nil, fmt.Errorf("ssd: open segment %s: %w (check the file's owner and mode, or move it out of %s)", path, err, dir)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			ss.close()
			return nil, fmt.Errorf("ssd: stat segment %s: %w", path, err)
		}
		seg, err := newSegment(uint32(id), f, st.Size(), max(st.Size(), size))
		if err != nil {
			f.Close()
			ss.close()
			return nil, err
		}
		seg.next = st.Size()
		var hdr [pageHeaderSize]byte
		if _, err := f.ReadAt(hdr[:], 0); err == nil {
			if h, err := parseRecHeader(hdr[:]); err == nil && h.kind == kindSegment {
				seg.birth = h.seq
			}
		}
		ss.segs[uint32(id)] = seg
		ss.nextID = max(ss.nextID, uint32(id)+1)
	}
	return ss, nil
}

// ids returns the segment numbers in journal order.
func (ss *segStore) ids() []uint32 {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ids := make([]uint32, 0, len(ss.segs))
	for id := range ss.segs {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// createLocked makes and registers a new segment able to take a record of n
// bytes after its start record. The directory is synced so a durable record
// never sits in a file whose name a crash lost.
func (ss *segStore) createLocked(n, floor int64) (*segment, error) {
	capacity := max(ss.size, smallAlign+alignRecord(n))
	first := min(capacity, alignUp(smallAlign+alignRecord(n), minGrowStep))
	if err := ss.roomLocked(first, floor); err != nil {
		return nil, err
	}
	if a := ss.active; a != nil {
		// Sealed: the unused part of its last step goes back.
		if a.next < a.size && a.f.Truncate(a.next) == nil {
			a.size = a.next
		}
	}
	id := ss.nextID
	path := filepath.Join(ss.dir, segName(id))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ssd: create segment %s: %w", path, err)
	}
	fail := func(err error) (*segment, error) {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	if err := fallocate(f, 0, first); err != nil {
		return fail(fmt.Errorf("ssd: allocate segment %s (%d B): %w", path, first, diskErr(err)))
	}
	var hdr [pageHeaderSize]byte
	putRecHeader(hdr[:], recHeader{kind: kindSegment, seq: ss.nextSeq})
	if _, err := f.WriteAt(hdr[:], 0); err != nil {
		return fail(fmt.Errorf("ssd: start segment %s: %w", path, diskErr(err)))
	}
	if err := fdatasync(f); err != nil {
		return fail(fmt.Errorf("ssd: start segment %s: %w", path, diskErr(err)))
	}
	if err := syncDir(ss.dir); err != nil {
		return fail(err)
	}
	seg, err := newSegment(id, f, first, capacity)
	if err != nil {
		return fail(err)
	}
	ss.nextID++
	seg.birth = ss.nextSeq
	seg.next = smallAlign
	ss.segs[id] = seg
	return seg, nil
}

// roomLocked refuses to take n more bytes of the filesystem when that would
// leave less than the floor free: Badger's memory-mapped files (its memtable
// log, new tables) must always find room, or a write under a mapping faults.
func (ss *segStore) roomLocked(n, floor int64) error {
	free, err := freeBytes(ss.dir)
	if err != nil {
		return nil // unknown: let the write itself fail if it must
	}
	if free-n < floor {
		ss.pressed.Store(true)
		return fmt.Errorf("ssd: %s has %d B free; %d B more would leave less than the %d B floor (free space on that filesystem, or lower [ssd] min_free_bytes): %w",
			ss.dir, free, n, floor, ErrDiskFull)
	}
	return nil
}

// freeBytes is what an unprivileged writer may still take of dir's
// filesystem.
func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// diskErr gives ENOSPC and EDQUOT the tier's sentinel.
func diskErr(err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("%w (%w)", ErrDiskFull, err)
	}
	return err
}

// growLocked extends seg's file so that end fits, a step at a time.
func (ss *segStore) growLocked(seg *segment, end, floor int64) error {
	if end <= seg.size {
		return nil
	}
	capacity := max(ss.size, seg.size)
	want := min(capacity, alignUp(end, growStepFor(seg.size)))
	if want < end {
		want = end
	}
	if err := ss.roomLocked(want-seg.size, floor); err != nil {
		return err
	}
	if err := fallocate(seg.f, seg.size, want-seg.size); err != nil {
		return fmt.Errorf("ssd: grow segment %d to %d B: %w", seg.id, want, diskErr(err))
	}
	seg.size = want
	return nil
}

func fallocate(f *os.File, off, n int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = unix.Fallocate(int(fd), 0, off, n) }); err != nil {
		return err
	}
	if errors.Is(ferr, unix.EOPNOTSUPP) || errors.Is(ferr, unix.ENOSYS) {
		// Filesystems without fallocate get a sparse file of the same size;
		// a full disk then shows at the write, as ENOSPC.
		return f.Truncate(off + n)
	}
	return ferr
}

func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fdatasync(int(fd)) }); err != nil {
		return err
	}
	return serr
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("ssd: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("ssd: sync %s: %w", dir, err)
	}
	return nil
}

// reserve places records of the given kinds and lengths (header + body) in
// the active segment, starting a new one when it is full, and gives each the
// next sequence number (withSeq; compaction assigns its own later). Every
// reservation must be ended by settle.
func (ss *segStore) reserve(kinds []recordKind, lens []int64, out []loc, withSeq bool) error {
	return ss.reserveFloor(kinds, lens, out, withSeq, ss.floor)
}

// reserveFloor is reserve keeping floor bytes free: deletions and compaction
// may go down to half the floor, since they are how space comes back.
func (ss *segStore) reserveFloor(kinds []recordKind, lens []int64, out []loc, withSeq bool, floor int64) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	undo := func(i int) {
		for _, l := range out[:i] {
			l.seg.pending--
		}
	}
	for i, n := range lens {
		a := ss.active
		var off int64
		if a != nil {
			off = alignUp(a.next, alignFor(kinds[i]))
		}
		if a == nil || off+n > max(ss.size, a.size) {
			seg, err := ss.createLocked(n, floor)
			if err != nil {
				undo(i)
				return err
			}
			ss.active, a = seg, seg
			off = alignUp(a.next, alignFor(kinds[i]))
		}
		if err := ss.growLocked(a, off+n, floor); err != nil {
			undo(i)
			return err
		}
		out[i] = loc{seg: a, off: off}
		if withSeq {
			out[i].seq = ss.nextSeq
			ss.nextSeq++
		}
		a.next = off + n
		a.pending++
	}
	return nil
}

// takeSeq hands out sequence numbers to records compaction moves (assigned
// when the move commits, so they order after every write the move raced).
func (ss *segStore) takeSeq(n int) uint64 {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s := ss.nextSeq
	ss.nextSeq += uint64(n)
	return s
}

// settle ends reservations: committed ones become live bytes of their
// segment; dead lists bytes the committed index entries replaced or removed.
func (ss *segStore) settle(locs []loc, lens []int64, committed bool, dead map[uint32]int64) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for i, l := range locs {
		if l.seg == nil {
			continue
		}
		l.seg.pending--
		if committed {
			l.seg.live += lens[i]
		}
	}
	for id, n := range dead {
		if seg := ss.segs[id]; seg != nil {
			seg.live -= n
		}
	}
}

// release counts records the index no longer points at.
func (ss *segStore) release(dead map[uint32]int64) { ss.settle(nil, nil, false, dead) }

func (ss *segStore) get(id uint32) *segment {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.segs[id]
}

// checkpointLocked is where a replay after a crash must start: the start of
// the oldest segment with a write in flight, else the end of the journal.
func (ss *segStore) checkpoint() checkpoint {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	c := checkpoint{nextSeq: ss.nextSeq}
	var oldest *segment
	for _, seg := range ss.segs {
		if seg.pending > 0 && (oldest == nil || seg.id < oldest.id) {
			oldest = seg
		}
	}
	switch {
	case oldest != nil:
		c.seg, c.off = oldest.id, 0
	case ss.active != nil:
		c.seg, c.off = ss.active.id, ss.active.next
	default:
		c.seg = ss.nextID
	}
	return c
}

// syncSegments fdatasyncs each distinct segment of locs, in parallel.
func syncSegments(locs []loc) error {
	var segs []*segment
	for _, l := range locs {
		if l.seg != nil && !containsSeg(segs, l.seg) {
			segs = append(segs, l.seg)
		}
	}
	if len(segs) == 1 {
		return syncSegment(segs[0])
	}
	errs := make([]error, len(segs))
	var wg sync.WaitGroup
	for i, seg := range segs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = syncSegment(seg)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// syncSegment returns once every write finished in seg before the call is
// durable.
func syncSegment(seg *segment) error {
	target := seg.written.Load()
	if seg.synced.Load() >= target {
		return nil
	}
	seg.syncMu.Lock()
	defer seg.syncMu.Unlock()
	if seg.synced.Load() >= target {
		return nil // the fdatasync this call waited for covered its writes
	}
	upto := seg.written.Load()
	if err := syncFile(seg.f); err != nil {
		return fmt.Errorf("ssd: sync segment %d: %w", seg.id, err)
	}
	seg.synced.Store(upto)
	return nil
}

// syncFile is fdatasync; a variable so a test can hold a sync in flight.
var syncFile = fdatasync

func containsSeg(segs []*segment, s *segment) bool {
	for _, x := range segs {
		if x == s {
			return true
		}
	}
	return false
}

// syncDirty fdatasyncs every segment written since its last sync.
func (ss *segStore) syncDirty() error {
	ss.mu.Lock()
	var locs []loc
	for _, seg := range ss.segs {
		if seg.written.Load() > seg.synced.Load() {
			locs = append(locs, loc{seg: seg})
		}
	}
	ss.mu.Unlock()
	if len(locs) == 0 {
		return nil
	}
	return syncSegments(locs)
}

// writeRecord writes a page record at l, header and body in one pwritev,
// and returns the body's CRC32C. A write cut short by a crash leaves a header
// whose body does not verify: replay skips it as torn.
func writeRecord(l loc, id PageID, gen uint64, body []byte) (uint32, error) {
	c := crc32.Checksum(body, castagnoli)
	var hdr [pageHeaderSize]byte
	putRecHeader(hdr[:], recHeader{kind: kindPage, session: id.Session, page: id.Page, length: uint32(len(body)), gen: gen, crc: c, seq: l.seq})
	if err := pwritev(l.seg.f, [][]byte{hdr[:], body}, l.off); err != nil {
		return 0, fmt.Errorf("ssd: write page %v to segment %d: %w", id, l.seg.id, diskErr(err))
	}
	l.seg.written.Add(1)
	return c, nil
}

// writeSmall writes a whole record (header and body in one buffer).
func writeSmall(l loc, rec []byte) error {
	if _, err := l.seg.f.WriteAt(rec, l.off); err != nil {
		return fmt.Errorf("ssd: write record to segment %d: %w", l.seg.id, diskErr(err))
	}
	l.seg.written.Add(1)
	return nil
}

func pwritev(f *os.File, bufs [][]byte, off int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	cerr := rc.Write(func(fd uintptr) bool {
		for len(bufs) > 0 {
			n, err := unix.Pwritev(int(fd), bufs, off)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				werr = err
				return true
			}
			if n == 0 {
				werr = io.ErrShortWrite
				return true
			}
			off += int64(n)
			for n > 0 && len(bufs) > 0 {
				if n >= len(bufs[0]) {
					n -= len(bufs[0])
					bufs = bufs[1:]
				} else {
					bufs[0] = bufs[0][n:]
					n = 0
				}
			}
			for len(bufs) > 0 && len(bufs[0]) == 0 {
				bufs = bufs[1:]
			}
		}
		return true
	})
	if cerr != nil {
		return cerr
	}
	return werr
}

// errMoved means a read found its segment gone or closed: compaction moved
// the record meanwhile, and the reader looks the page up again.
var errMoved = errors.New("segment removed")

// checkEntry compares a record header with the index entry naming it.
func checkEntry(h recHeader, e indexEntry, what string, seg uint32) error {
	if h.kind != e.kind || h.seq != e.seq || h.length != e.length || h.crc != e.crc || (h.kind == kindPage && h.gen != e.gen) {
		return fmt.Errorf("%s: record at segment %d offset %d is a %s record (seq %d, gen %d, %d B, crc %08x); the index says %s (seq %d, gen %d, %d B, crc %08x): %w",
			what, seg, e.off, h.kind, h.seq, h.gen, h.length, h.crc, e.kind, e.seq, e.gen, e.length, e.crc, ErrIntegrity)
	}
	return nil
}

// readRecord copies the body of the record e names into dst (len e.length)
// out of the segment's mapping and verifies header and body against e,
// checksumming each block right after copying it. An I/O error under the
// mapping (SIGBUS) becomes an error, not a crash.
func readRecord(seg *segment, e indexEntry, id PageID, dst []byte) (err error) {
	seg.rmu.RLock()
	defer seg.rmu.RUnlock()
	if seg.data == nil {
		return errMoved
	}
	end := e.off + e.recordLen()
	if end > int64(len(seg.data)) {
		return fmt.Errorf("page %v: record at segment %d offset %d runs past the file's %d B: %w", id, seg.id, e.off, len(seg.data), ErrIntegrity)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("page %v: segment %d offset %d unreadable (%v): %w", id, seg.id, e.off, r, ErrIntegrity)
		}
	}()
	rec := seg.data[e.off:end]
	h, err := parseRecHeader(rec)
	if err != nil {
		return fmt.Errorf("page %v: segment %d offset %d: %w", id, seg.id, e.off, err)
	}
	if h.kind == kindPage && h.pageID() != id {
		return fmt.Errorf("page %v: record at segment %d offset %d is page %v's: %w", id, seg.id, e.off, h.pageID(), ErrIntegrity)
	}
	if err := checkEntry(h, e, "page "+id.String(), seg.id); err != nil {
		return err
	}
	if c := copyChecked(dst, rec[pageHeaderSize:]); c != e.crc {
		return fmt.Errorf("page %v gen %d: body checksum %08x, stored %08x (segment %d offset %d): %w", id, e.gen, c, e.crc, seg.id, e.off, ErrIntegrity)
	}
	return nil
}

// readAt reads len(dst) bytes of seg at off with pread.
func readAt(seg *segment, dst []byte, off int64) error {
	_, err := seg.f.ReadAt(dst, off)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, os.ErrClosed):
		return errMoved
	case errors.Is(err, io.EOF):
		return fmt.Errorf("record at segment %d offset %d runs past the file's end: %w", seg.id, off, ErrIntegrity)
	}
	return fmt.Errorf("ssd: read segment %d offset %d: %w", seg.id, off, err)
}

// candidates lists sealed segments with no write in flight whose live bytes
// are at most keep of their size.
func (ss *segStore) candidates(keep float64) map[uint32]*segment {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := map[uint32]*segment{}
	for id, seg := range ss.segs {
		if seg == ss.active || seg.pending > 0 {
			continue
		}
		if float64(max(seg.live, 0)) <= keep*float64(seg.next) {
			out[id] = seg
		}
	}
	return out
}

// sealIfGarbage ends the active segment when it is at least minUsed bytes
// long and its live bytes fell to keep of them, so compaction can take it:
// a daemon restarted every few seconds may never fill a segment, and its
// garbage must still come back.
func (ss *segStore) sealIfGarbage(keep float64, minUsed int64) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	a := ss.active
	if a == nil || a.pending > 0 || a.next < minUsed || float64(max(a.live, 0)) > keep*float64(a.next) {
		return
	}
	if a.next < a.size && a.f.Truncate(a.next) == nil {
		a.size = a.next
	}
	ss.active = nil
}

// remove deletes a segment nothing points at any more. A reader still
// holding it gets os.ErrClosed and looks the page up again.
func (ss *segStore) remove(seg *segment) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.removeLocked(seg)
}

func (ss *segStore) removeLocked(seg *segment) error {
	delete(ss.segs, seg.id)
	if ss.active == seg {
		ss.active = nil
	}
	seg.unmap()
	if err := os.Remove(filepath.Join(ss.dir, segName(seg.id))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ssd: remove segment %d: %w", seg.id, err)
	}
	return nil
}

// usage reports the number of segment files and their allocated bytes.
func (ss *segStore) usage() (files int, bytes, live int64) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for _, seg := range ss.segs {
		files++
		bytes += seg.size
		live += seg.live
	}
	return files, bytes, live
}

func (ss *segStore) close() error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var errs []error
	for _, seg := range ss.segs {
		if err := seg.unmap(); err != nil {
			errs = append(errs, err)
		}
	}
	ss.segs = map[uint32]*segment{}
	ss.active = nil
	return errors.Join(errs...)
}
