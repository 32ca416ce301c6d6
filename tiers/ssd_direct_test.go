package tiers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func openModeSSD(t testing.TB, dir, mode string, qd int) *SSD {
	t.Helper()
	s, err := OpenSSD(SSDConfig{Dir: dir, GCInterval: -1, MemTableSize: 4 << 20, ReadMode: mode, ReadQueueDepth: qd})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Both read modes serve the same bytes, refuse the same damage, and the
// direct mode really reads with O_DIRECT (its own counters move).
func TestSSDReadModes(t *testing.T) {
	for _, mode := range []string{ReadDirect, ReadBuffered} {
		for _, n := range []int{1, 4096 - pageHeaderSize, 4096, 149760, 786240} {
			t.Run(fmt.Sprintf("%s/%d", mode, n), func(t *testing.T) {
				dir := t.TempDir()
				s := openModeSSD(t, dir, mode, 4)
				defer s.Close()
				ctx := context.Background()
				r := rand.New(rand.NewPCG(uint64(n), 7))
				pages := make([][]byte, 5)
				for i := range pages {
					pages[i] = randBytes(r, n)
					if err := s.Put(ctx, PageID{Session: 3, Page: uint32(i)}, uint64(i+1), pages[i]); err != nil {
						t.Fatal(err)
					}
				}
				dst := make([]byte, n)
				for i := range pages {
					gen, err := s.Get(ctx, PageID{Session: 3, Page: uint32(i)}, dst)
					if err != nil || gen != uint64(i+1) || !bytes.Equal(dst, pages[i]) {
						t.Fatalf("page %d: gen %d err %v equal %v", i, gen, err, bytes.Equal(dst, pages[i]))
					}
				}
				if got := s.ReadMode(); got != mode {
					t.Fatalf("read mode %s, want %s", got, mode)
				}
				direct := s.direct.reads.Load()
				if mode == ReadDirect && direct != uint64(len(pages)) {
					t.Errorf("%d O_DIRECT reads, want %d", direct, len(pages))
				}
				if mode == ReadBuffered && direct != 0 {
					t.Errorf("%d O_DIRECT reads in buffered mode", direct)
				}
				// A flipped body byte, header byte or checksum is refused
				// in either mode; the neighbour is still served.
				for _, off := range []int{0, 24, pageHeaderSize, pageHeaderSize + n - 1} {
					id := PageID{Session: 3, Page: 1}
					if err := s.Put(ctx, id, uint64(10+off), pages[1]); err != nil {
						t.Fatal(err)
					}
					if err := s.CorruptForTest(ctx, id, off); err != nil {
						t.Fatal(err)
					}
					if _, err := s.Get(ctx, id, dst); !errors.Is(err, ErrIntegrity) {
						t.Fatalf("damaged at %d: %v, want ErrIntegrity", off, err)
					}
				}
				if gen, err := s.Get(ctx, PageID{Session: 3, Page: 2}, dst); err != nil || gen != 3 || !bytes.Equal(dst, pages[2]) {
					t.Fatalf("neighbour: gen %d err %v", gen, err)
				}
			})
		}
	}
}

// On a filesystem that refuses O_DIRECT (open fails with EINVAL) the tier
// falls back to buffered reads, says so once, and keeps serving.
func TestSSDDirectFallsBack(t *testing.T) {
	orig := openDirect
	openDirect = func(string, int, uint32) (int, error) { return -1, unix.EINVAL }
	defer func() { openDirect = orig }()
	var logs bytes.Buffer
	s, err := OpenSSD(SSDConfig{Dir: t.TempDir(), GCInterval: -1, MemTableSize: 4 << 20,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	page := bytes.Repeat([]byte{9}, 20000)
	for p := uint32(0); p < 3; p++ {
		if err := s.Put(ctx, PageID{Session: 1, Page: p}, 1, page); err != nil {
			t.Fatal(err)
		}
	}
	dst := make([]byte, len(page))
	for p := uint32(0); p < 3; p++ {
		if gen, err := s.Get(ctx, PageID{Session: 1, Page: p}, dst); err != nil || gen != 1 || !bytes.Equal(dst, page) {
			t.Fatalf("gen %d err %v", gen, err)
		}
	}
	if s.ReadMode() != ReadBuffered || s.direct.reads.Load() != 0 {
		t.Fatalf("read mode %s after a refused O_DIRECT open, %d direct reads", s.ReadMode(), s.direct.reads.Load())
	}
	if n := strings.Count(logs.String(), "refuses O_DIRECT"); n != 1 {
		t.Fatalf("fallback logged %d times, want once:\n%s", n, logs.String())
	}
}

func TestSSDDirectConcurrentWithCompaction(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSSD(SSDConfig{Dir: dir, GCInterval: -1, SegmentBytes: 1 << 20, MemTableSize: 4 << 20, ReadQueueDepth: 3, ReadPiece: 8192})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	const n = 30000
	page := func(p uint32, gen uint64) []byte { return bytes.Repeat([]byte{byte(p), byte(gen)}, n/2) }
	for p := uint32(0); p < 40; p++ {
		if err := s.Put(ctx, PageID{Session: 1, Page: p}, 1, page(p, 1)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst := make([]byte, n)
			for i := 0; time.Now().Before(deadline); i++ {
				p := uint32((i*7 + w) % 40)
				gen, err := s.Get(ctx, PageID{Session: 1, Page: p}, dst)
				if err != nil {
					errc <- err
					return
				}
				if !bytes.Equal(dst, page(p, gen)) {
					errc <- fmt.Errorf("page %d gen %d: wrong bytes", p, gen)
					return
				}
			}
		}()
	}
	// Rewrites leave garbage; GC moves records and removes segments under
	// the readers.
	for gen := uint64(2); time.Now().Before(deadline); gen++ {
		for p := uint32(0); p < 40; p += 2 {
			if err := s.Put(ctx, PageID{Session: 1, Page: p}, gen, page(p, gen)); err != nil {
				t.Fatal(err)
			}
		}
		s.RunGC()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}

// BenchmarkSSDReadQD reads random pages of a set four times larger than
// the tier's segments with O_DIRECT from several readers at a time, per
// queue depth. The set is written once per page size; each run then reads
// with the page cache out of the way. This is the queue-depth measurement
// behind DefaultReadQueueDepth (docs/benchmarks.md).
func BenchmarkSSDReadQD(b *testing.B) {
	sizes := []int{149760, 786240}
	if v, err := strconv.Atoi(os.Getenv("FM_QD_PAGE")); err == nil && v > 0 {
		sizes = []int{v} // scripts/capacity-bench.sh: the page size it measures
	}
	for _, n := range sizes {
		dir := b.TempDir()
		s := openModeSSD(b, dir, ReadDirect, 1)
		ctx := context.Background()
		r := rand.New(rand.NewPCG(1, 2))
		const pages = 1024
		body := randBytes(r, n)
		for p := 0; p < pages; p += 32 {
			var ws []PageWrite
			for q := p; q < p+32; q++ {
				ws = append(ws, PageWrite{ID: PageID{Session: 1, Page: uint32(q)}, Gen: 1, Page: body})
			}
			if err := s.PutBatch(ctx, ws); err != nil {
				b.Fatal(err)
			}
		}
		for _, qd := range []int{1, 2, 4, 8, 16, 32} {
			b.Run(fmt.Sprintf("page=%d/qd=%d", n, qd), func(b *testing.B) {
				s.direct.sem = make(chan struct{}, qd)
				b.SetBytes(int64(n))
				var next sync.Mutex
				i := 0
				b.ResetTimer()
				var wg sync.WaitGroup
				for range qd {
					wg.Add(1)
					go func() {
						defer wg.Done()
						dst := make([]byte, n)
						rr := rand.New(rand.NewPCG(uint64(qd), 3))
						for {
							next.Lock()
							if i >= b.N {
								next.Unlock()
								return
							}
							i++
							next.Unlock()
							if _, err := s.Get(ctx, PageID{Session: 1, Page: uint32(rr.IntN(pages))}, dst); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
			})
		}
		s.Close()
	}
}

// Background reads fill the whole queue depth while no foreground read
// happens, half of it while one is in flight or ended within fgQuiet; a
// waiting background read goes ahead at the next release that finds room.
func TestBackgroundShare(t *testing.T) {
	var b bgShare
	b.init(8)
	acquired := make(chan struct{}, 16)
	acq := func() { b.acquireBg(); acquired <- struct{}{} }
	got := func(n int) {
		t.Helper()
		for i := range n {
			select {
			case <-acquired:
			case <-time.After(5 * time.Second):
				t.Fatalf("%d of %d background reads started", i, n)
			}
		}
	}
	none := func() {
		t.Helper()
		select {
		case <-acquired:
			t.Fatal("a background read started past its share")
		case <-time.After(50 * time.Millisecond):
		}
	}
	for range 8 {
		go acq()
	}
	got(8) // quiet: the whole depth
	go acq()
	none()
	for range 8 {
		b.releaseBg()
	}
	got(1)
	b.releaseBg()

	b.fgStart() // a recall reads: half
	for range 5 {
		go acq()
	}
	got(4)
	none()
	b.fgEnd()
	b.releaseBg() // 3 in flight, the last foreground read just ended: room for one
	got(1)
	b.mu.Lock()
	b.lastFg = time.Now().Add(-2 * fgQuiet) // quiet again
	b.mu.Unlock()
	for range 4 {
		go acq()
	}
	got(4)
	go acq()
	none()
	b.releaseBg()
	got(1)
	if b.bg != 8 {
		t.Fatalf("%d background reads in flight, want 8", b.bg)
	}
}
