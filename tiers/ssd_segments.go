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
	// defaultSegmentBytes is one segment file: large enough that creating,
	// preallocating and syncing the directory for a new file is rare (once
	// per ~340 DeepSeek-V4 pages), small enough that a daemon with a few
	// spilled pages does not preallocate gigabytes and that compacting one
	// segment moves at most a few hundred MB.
	defaultSegmentBytes = 256 << 20
)

// segment is one append-only page file. Records are written once, at offsets
// reserved under segStore.mu, and never modified; space comes back only when
// compaction has moved every live record out and the file is deleted.
type segment struct {
	id   uint32
	f    *os.File
	size int64 // bytes allocated

	// Guarded by segStore.mu.
	next    int64 // next free record offset (the active segment)
	live    int64 // record bytes (header + body) the index points at
	pending int   // reserved records whose index entries are not committed yet

	dirty atomic.Bool // written since the last fdatasync

	// data maps the whole file read-only: a read copies the body out of the
	// page cache and checksums it block by block in the same pass
	// (copyChecked), with no syscall. Held shared by readers, exclusively by
	// unmap, so removing a segment never pulls the mapping from under a
	// copy.
	rmu  sync.RWMutex
	data []byte
}

func newSegment(id uint32, f *os.File, size int64) (*segment, error) {
	seg := &segment{id: id, f: f, size: size}
	if size == 0 {
		return seg, nil
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("ssd: map segment %d (%d B): %w", id, size, err)
	}
	seg.data = data
	return seg, nil
}

// unmap ends reads of the segment and closes its file.
func (seg *segment) unmap() error {
	seg.rmu.Lock()
	defer seg.rmu.Unlock()
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
	dir  string
	size int64 // bytes of a new segment

	mu     sync.Mutex
	segs   map[uint32]*segment
	active *segment
	nextID uint32
}

// loc is where a record was reserved.
type loc struct {
	seg *segment
	off int64
}

func alignRecord(n int64) int64 { return (n + recordAlign - 1) &^ (recordAlign - 1) }

func segName(id uint32) string { return fmt.Sprintf("%08d%s", id, segSuffix) }

// openSegStore opens every segment in dir (created if missing). Which one is
// active and how much of each is live is decided by adopt, once the index has
// been read.
func openSegStore(dir string, size int64) (*segStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ssd: page segments %s: %w", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("ssd: page segments %s: %w", dir, err)
	}
	ss := &segStore{dir: dir, size: size, segs: map[uint32]*segment{}}
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || !strings.HasSuffix(name, segSuffix) {
			continue
		}
		id, err := strconv.ParseUint(strings.TrimSuffix(name, segSuffix), 10, 32)
		if err != nil {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR, 0)
		if err != nil {
			ss.close()
			return nil, fmt.Errorf("ssd: open segment %s: %w", name, err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			ss.close()
			return nil, fmt.Errorf("ssd: stat segment %s: %w", name, err)
		}
		seg, err := newSegment(uint32(id), f, st.Size())
		if err != nil {
			f.Close()
			ss.close()
			return nil, err
		}
		ss.segs[uint32(id)] = seg
		ss.nextID = max(ss.nextID, uint32(id)+1)
	}
	return ss, nil
}

// adopt takes the live bytes and highest record end per segment found in the
// index at open. Segments nothing points at are deleted (records of batches
// whose index commit never happened); the newest segment keeps taking
// records after its last live one.
func (ss *segStore) adopt(live, end map[uint32]int64) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ids := make([]uint32, 0, len(ss.segs))
	for id := range ss.segs {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for i, id := range ids {
		seg := ss.segs[id]
		seg.live = live[id]
		seg.next = alignRecord(end[id])
		if i == len(ids)-1 && seg.next < seg.size {
			ss.active = seg
			continue
		}
		if seg.live == 0 {
			if err := ss.removeLocked(seg); err != nil {
				return err
			}
		}
	}
	return nil
}

// create makes, preallocates and registers a new segment of at least n
// bytes. The directory is synced so a durable record never sits in a file
// whose name a crash lost.
func (ss *segStore) createLocked(n int64) (*segment, error) {
	size := max(ss.size, alignRecord(n))
	id := ss.nextID
	path := filepath.Join(ss.dir, segName(id))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ssd: create segment %s: %w", path, err)
	}
	if err := fallocate(f, size); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("ssd: preallocate segment %s (%d B): %w", path, size, err)
	}
	if err := syncDir(ss.dir); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	ss.nextID++
	seg, err := newSegment(id, f, size)
	if err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	ss.segs[id] = seg
	return seg, nil
}

func fallocate(f *os.File, size int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = unix.Fallocate(int(fd), 0, 0, size) }); err != nil {
		return err
	}
	if errors.Is(ferr, unix.EOPNOTSUPP) || errors.Is(ferr, unix.ENOSYS) {
		// Filesystems without fallocate get a sparse file of the same size.
		return f.Truncate(size)
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

// reserve places records of the given lengths (header + body) in the active
// segment, starting a new one when it is full. Every reservation must be
// ended by settle.
func (ss *segStore) reserve(lens []int64, out []loc) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for i, n := range lens {
		a := ss.active
		if a == nil || a.next+n > a.size {
			seg, err := ss.createLocked(n)
			if err != nil {
				for _, l := range out[:i] {
					l.seg.pending--
				}
				return err
			}
			ss.active, a = seg, seg
		}
		out[i] = loc{seg: a, off: a.next}
		a.next += alignRecord(n)
		a.pending++
	}
	return nil
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

func syncSegment(seg *segment) error {
	seg.dirty.Store(false)
	if err := fdatasync(seg.f); err != nil {
		seg.dirty.Store(true)
		return fmt.Errorf("ssd: sync segment %d: %w", seg.id, err)
	}
	return nil
}

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
		if seg.dirty.Load() {
			locs = append(locs, loc{seg: seg})
		}
	}
	ss.mu.Unlock()
	if len(locs) == 0 {
		return nil
	}
	return syncSegments(locs)
}

// writeRecord writes header and body at l and returns the body's CRC32C.
// The checksum runs block by block just ahead of the write of the same block,
// so the kernel's copy reads the block from cache.
func writeRecord(l loc, id PageID, gen uint64, body []byte) (uint32, error) {
	var c uint32
	for o := 0; o < len(body); o += fusedBlock {
		end := min(o+fusedBlock, len(body))
		c = crc32.Update(c, castagnoli, body[o:end])
		if _, err := l.seg.f.WriteAt(body[o:end], l.off+pageHeaderSize+int64(o)); err != nil {
			return 0, fmt.Errorf("ssd: write page %v to segment %d: %w", id, l.seg.id, err)
		}
	}
	var hdr [pageHeaderSize]byte
	writePageHeader(hdr[:], id, gen, len(body), c)
	if _, err := l.seg.f.WriteAt(hdr[:], l.off); err != nil {
		return 0, fmt.Errorf("ssd: write page %v to segment %d: %w", id, l.seg.id, err)
	}
	l.seg.dirty.Store(true)
	return c, nil
}

// errMoved means a read found its segment gone or closed: compaction moved
// the record meanwhile, and the reader looks the page up again.
var errMoved = errors.New("segment removed")

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
	h, err := parsePageHeader(rec, id)
	if err != nil {
		return fmt.Errorf("segment %d offset %d: %w", seg.id, e.off, err)
	}
	if h.gen != e.gen || h.length != e.length || h.crc != e.crc {
		return fmt.Errorf("page %v: record at segment %d offset %d has gen %d, %d B, crc %08x; index says gen %d, %d B, crc %08x: %w",
			id, seg.id, e.off, h.gen, h.length, h.crc, e.gen, e.length, e.crc, ErrIntegrity)
	}
	if c := copyChecked(dst, rec[pageHeaderSize:]); c != e.crc {
		return fmt.Errorf("page %v gen %d: body checksum %08x, stored %08x: %w", id, e.gen, c, e.crc, ErrIntegrity)
	}
	return nil
}

func readFull(seg *segment, dst []byte, off int64, id PageID) error {
	_, err := seg.f.ReadAt(dst, off)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, os.ErrClosed):
		return errMoved
	case errors.Is(err, io.EOF):
		return fmt.Errorf("page %v: record at segment %d offset %d runs past the file's %d B: %w", id, seg.id, off, seg.size, ErrIntegrity)
	}
	return fmt.Errorf("ssd: read page %v from segment %d: %w", id, seg.id, err)
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
		if float64(max(seg.live, 0)) <= keep*float64(seg.size) {
			out[id] = seg
		}
	}
	return out
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
