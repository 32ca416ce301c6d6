package tiers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Read modes of the SSD tier's page reads (SSDConfig.ReadMode).
const (
	// ReadDirect reads page records with O_DIRECT into aligned buffers, so a
	// read costs what the disk costs and the page cache never holds a copy
	// of the tier (the host mirror is the tier's cache). The default.
	ReadDirect = "direct"
	// ReadBuffered copies page records out of a read-only mapping of the
	// segment, through the page cache.
	ReadBuffered = "buffered"
)

const (
	// directAlign is the alignment of O_DIRECT offsets, lengths and buffers:
	// the largest logical block size in use (4 KiB sectors), so it suits
	// every device.
	directAlign = 4096
	// DefaultReadQueueDepth is how many O_DIRECT reads the tier keeps in
	// flight at most, foreground and background reads each (staging holds
	// half of it while foreground reads happen, bgShare).
	// Measured on the 2-core VM's virtio disk (BenchmarkSSDReadQD,
	// docs/benchmarks.md "SSD as a capacity tier"): random 146 KiB pages
	// went from 106 MB/s at depth 1 to 571 at 4, 794 at 16 and 815 at 32;
	// fio's random reads of the same size peak at 32 as well.
	DefaultReadQueueDepth = 32
	// DefaultReadPiece is the size each page read is split into, so one
	// large page is read as several requests in flight at once; smaller
	// pieces cost syscalls and CPU (a 146 KiB page in 128 KiB pieces staged
	// at 0.6 of the rate it does in one read).
	DefaultReadPiece = 512 << 10
)

// directFiles holds each segment's O_DIRECT descriptor, opened on the first
// direct read of the segment and closed when the segment is (dropDirect).
var directFiles sync.Map // *segment → *os.File

// directReader is the O_DIRECT page-read path of one SSD tier.
type directReader struct {
	on    atomic.Bool   // false: O_DIRECT refused here, buffered reads from now on
	sem   chan struct{} // one token per foreground read in flight
	bg    bgShare       // background (staging) reads in flight
	piece int64
	log   *slog.Logger
	once  sync.Once // the fallback is logged once
	reads atomic.Uint64
	bytes atomic.Uint64
	qd    qdMeter
}

// qdMeter measures the queue depth the tier's O_DIRECT reads achieve: the
// time-weighted mean of reads in flight (all readers, staging included)
// over the time at least one was. It is what fio's iodepth is compared
// with (docs/benchmarks.md, "SSD as a capacity tier").
type qdMeter struct {
	mu       sync.Mutex
	inflight int
	last     time.Time
	area     float64 // Σ in-flight × seconds
	busy     float64 // seconds with ≥ 1 in flight
}

func (q *qdMeter) add(d int) {
	now := time.Now()
	q.mu.Lock()
	if q.inflight > 0 {
		dt := now.Sub(q.last).Seconds()
		q.area += float64(q.inflight) * dt
		q.busy += dt
	}
	q.inflight += d
	q.last = now
	q.mu.Unlock()
}

// read returns the accumulated Σ in-flight × seconds and busy seconds.
func (q *qdMeter) read() (area, busy float64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.area, q.busy
}

func newDirectReader(cfg *SSDConfig) *directReader {
	qd := cfg.ReadQueueDepth
	if qd <= 0 {
		qd = DefaultReadQueueDepth
	}
	piece := cfg.ReadPiece
	if piece <= 0 {
		piece = DefaultReadPiece
	}
	r := &directReader{sem: make(chan struct{}, qd), piece: alignUp(piece, directAlign), log: cfg.Logger}
	r.bg.init(qd)
	r.on.Store(cfg.ReadMode != ReadBuffered)
	return r
}

// fgQuiet is how long after the last foreground read (one a caller waits
// for: a recall, a load) background reads may fill the whole queue depth.
const fgQuiet = 200 * time.Millisecond

// bgShare bounds background reads in flight: the whole queue depth while no
// foreground read is in flight and none ended within fgQuiet, half of it
// otherwise. With as many stagers as the queue depth, staging alone then
// keeps the disk as busy as fio at iodepth 32 does (a fixed half held it
// at 16), and a read the decoder waits for never queues behind more than
// half the depth for longer than the reads already in flight take
// (docs/benchmarks.md "SSD as a capacity tier", staging follow-up: the
// default stagers stay 16). Foreground reads have their own tokens
// (directReader.sem), so they never wait for a staging read to finish
// before they are issued.
type bgShare struct {
	mu       sync.Mutex
	cond     sync.Cond
	qd       int
	bg, fg   int       // reads in flight
	lastFg   time.Time // when the last foreground read started or ended
	narrowed atomic.Uint64
}

func (b *bgShare) init(qd int) {
	b.qd = qd
	b.cond.L = &b.mu
}

// limit is the background reads allowed in flight now. Called with b.mu.
func (b *bgShare) limit(now time.Time) int {
	if b.fg == 0 && now.Sub(b.lastFg) > fgQuiet {
		return b.qd
	}
	return max(1, b.qd/2)
}

func (b *bgShare) acquireBg() {
	b.mu.Lock()
	// A waiter always has background reads in flight to wake it (bg ≥
	// limit ≥ 1): a quiet period that begins while it waits is seen at
	// the next release.
	for b.bg >= b.limit(time.Now()) {
		b.narrowed.Add(1)
		b.cond.Wait()
	}
	b.bg++
	b.mu.Unlock()
}

func (b *bgShare) releaseBg() {
	b.mu.Lock()
	b.bg--
	b.mu.Unlock()
	b.cond.Signal()
}

func (b *bgShare) fgStart() {
	b.mu.Lock()
	b.fg++
	b.lastFg = time.Now()
	b.mu.Unlock()
}

func (b *bgShare) fgEnd() {
	b.mu.Lock()
	b.fg--
	b.lastFg = time.Now()
	b.mu.Unlock()
}

// fallback switches the tier to buffered reads for good, saying why once.
func (r *directReader) fallback(why error) {
	r.on.Store(false)
	r.once.Do(func() {
		r.log.Warn("the filesystem refuses O_DIRECT; SSD page reads go through the page cache from now on (set [ssd] read_mode = \"buffered\" to silence this)", "err", why)
	})
}

// dropDirect closes the segment's O_DIRECT descriptor, if any. unmap calls
// it with the segment's write lock held, so no direct read is in flight.
func dropDirect(seg *segment) {
	if f, ok := directFiles.LoadAndDelete(seg); ok {
		f.(*os.File).Close()
	}
}

// directFile returns seg's O_DIRECT descriptor, opening it through
// /proc/self/fd (the same inode, whatever its path) on first use. The caller
// holds seg.rmu shared, so the segment's own descriptor is open.
func directFile(seg *segment) (*os.File, error) {
	if f, ok := directFiles.Load(seg); ok {
		return f.(*os.File), nil
	}
	path := "/proc/self/fd/" + strconv.Itoa(int(seg.f.Fd()))
	fd, err := openDirect(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open O_DIRECT", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	if prev, loaded := directFiles.LoadOrStore(seg, f); loaded {
		f.Close()
		return prev.(*os.File), nil
	}
	return f, nil
}

// openDirect is unix.Open; tests replace it to play a filesystem that
// refuses O_DIRECT (tmpfs accepts it since Linux 6.6).
var openDirect = unix.Open

// alignedPool recycles O_DIRECT buffers, 4 KiB aligned, by size class
// (multiples of 64 KiB).
var alignedPool sync.Map // class (int) → *sync.Pool

const alignedClass = 64 << 10

func getAligned(n int) []byte {
	class := (n + alignedClass - 1) / alignedClass
	p, _ := alignedPool.LoadOrStore(class, &sync.Pool{})
	if b, ok := p.(*sync.Pool).Get().(*[]byte); ok {
		return (*b)[:n]
	}
	raw := make([]byte, class*alignedClass+directAlign)
	off := int(-uintptr(unsafe.Pointer(&raw[0])) & (directAlign - 1))
	return raw[off : off+n : off+class*alignedClass]
}

func putAligned(b []byte) {
	class := cap(b) / alignedClass
	p, _ := alignedPool.LoadOrStore(class, &sync.Pool{})
	b = b[:cap(b)]
	p.(*sync.Pool).Put(&b)
}

// readRecordDirect is readRecord through an O_DIRECT descriptor: the record's
// 4 KiB-aligned span is read into an aligned buffer in pieces of r.piece, up
// to the queue depth in flight (all readers together), then header and body
// are verified against e exactly as readRecord does. errDirectRefused means
// this filesystem cannot do O_DIRECT; the caller reads buffered instead.
func (r *directReader) readRecord(seg *segment, e indexEntry, id PageID, dst []byte, background bool) error {
	seg.rmu.RLock()
	defer seg.rmu.RUnlock()
	if seg.data == nil {
		return errMoved
	}
	f, err := directFile(seg)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("%w: %v", errDirectRefused, err)
		}
		return fmt.Errorf("page %v: segment %d: %v: %w", id, seg.id, err, ErrIntegrity)
	}
	end := e.off + e.recordLen()
	if end > int64(len(seg.data)) {
		return fmt.Errorf("page %v: record at segment %d offset %d runs past the file's %d B: %w", id, seg.id, e.off, len(seg.data), ErrIntegrity)
	}
	start := e.off &^ (directAlign - 1)
	span := alignUp(end, directAlign) - start
	buf := getAligned(int(span))
	defer putAligned(buf)
	got, err := r.readSpan(f, buf, start, background)
	if err != nil {
		if errors.Is(err, unix.EINVAL) && got == 0 {
			return fmt.Errorf("%w: %v", errDirectRefused, err)
		}
		return fmt.Errorf("page %v: segment %d offset %d unreadable: %v: %w", id, seg.id, e.off, err, ErrIntegrity)
	}
	rel := e.off - start
	if got < rel+e.recordLen() {
		return fmt.Errorf("page %v: record at segment %d offset %d runs past the file's end: %w", id, seg.id, e.off, ErrIntegrity)
	}
	rec := buf[rel : rel+e.recordLen()]
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
	r.reads.Add(1)
	r.bytes.Add(uint64(span))
	return nil
}

type backgroundKey struct{}

// Background marks ctx's SSD reads as background work (staging): they
// use the background share of the queue depth (bgShare), which shrinks to
// half while reads someone waits for are happening.
func Background(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundKey{}, true)
}

func isBackground(ctx context.Context) bool {
	b, _ := ctx.Value(backgroundKey{}).(bool)
	return b
}

// errDirectRefused: the filesystem refused an O_DIRECT open or read (tmpfs,
// some FUSE and network filesystems).
var errDirectRefused = errors.New("O_DIRECT refused")

// readSpan reads len(buf) bytes at off (both aligned) in pieces, each
// holding one queue-depth token while in flight. It returns how many bytes
// arrived before the file's end: the last record of a segment may end
// within its final 4 KiB block.
func (r *directReader) readSpan(f *os.File, buf []byte, off int64, background bool) (int64, error) {
	// One token per piece in flight: a background read (staging) from the
	// background share, a foreground read from the queue depth's tokens.
	acquire := func() {
		if background {
			r.bg.acquireBg()
		} else {
			r.sem <- struct{}{}
			r.bg.fgStart()
		}
		r.qd.add(1)
	}
	release := func() {
		r.qd.add(-1)
		if background {
			r.bg.releaseBg()
		} else {
			r.bg.fgEnd()
			<-r.sem
		}
	}
	n := int64(len(buf))
	pieces := int((n + r.piece - 1) / r.piece)
	if pieces == 1 {
		acquire()
		got, err := preadFull(f, buf, off)
		release()
		return got, err
	}
	var wg sync.WaitGroup
	gots := make([]int64, pieces)
	errs := make([]error, pieces)
	for i := range pieces {
		lo := int64(i) * r.piece
		hi := min(lo+r.piece, n)
		acquire()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer release()
			gots[i], errs[i] = preadFull(f, buf[lo:hi], off+lo)
		}()
	}
	wg.Wait()
	var total int64
	for i := range pieces {
		if errs[i] != nil {
			return total, errs[i]
		}
		total += gots[i]
		if gots[i] < min(r.piece, n-int64(i)*r.piece) {
			break // the file ends inside this piece
		}
	}
	return total, nil
}

// preadFull reads until buf is full or the file ends.
func preadFull(f *os.File, buf []byte, off int64) (int64, error) {
	var got int64
	fd := int(f.Fd())
	for got < int64(len(buf)) {
		n, err := unix.Pread(fd, buf[got:], off+got)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return got, err
		}
		if n == 0 {
			break
		}
		got += int64(n)
	}
	return got, nil
}

// readPage reads a page record with O_DIRECT when the tier is set to, and
// through the segment's mapping otherwise (or once the filesystem refused
// O_DIRECT).
func (s *SSD) readPage(ctx context.Context, seg *segment, e indexEntry, id PageID, dst []byte) error {
	if s.direct.on.Load() {
		err := s.direct.readRecord(seg, e, id, dst, isBackground(ctx))
		if !errors.Is(err, errDirectRefused) {
			return err
		}
		s.direct.fallback(err)
	}
	return readRecord(seg, e, id, dst)
}

// ReadMode reports how page reads are done now: ReadDirect, or ReadBuffered
// (configured, or the filesystem refused O_DIRECT).
func (s *SSD) ReadMode() string {
	if s.direct.on.Load() {
		return ReadDirect
	}
	return ReadBuffered
}
