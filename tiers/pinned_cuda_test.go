//go:build cuda

package tiers

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/internal/cuda"
)

// A mirror on PinnedAllocator feeds a GPU region without the staging copy: the mover's
// recalls of the DeepSeek-V4 layout (21 rows a page) take the direct path, land byte for
// byte in device memory, and pages spilled to SSD and read back come through the staging
// path, equally correct.
func TestCUDAPinnedMirrorRecall(t *testing.T) {
	n, err := cuda.DeviceCount()
	if err != nil || n == 0 {
		t.Skip("no CUDA device")
	}
	dev, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	l := dsLayout()
	geo, err := NewGeometry(l)
	if err != nil {
		t.Fatal(err)
	}
	pb := geo.PageBytes()
	st, err := OpenStore(StoreConfig{
		Mirror:     MirrorConfig{Budget: 24 * alignUp(int64(pb), 4096), ExtentBytes: 16 << 20, Allocator: PinnedAllocator(dev)},
		SSD:        SSDConfig{Dir: t.TempDir(), GCInterval: -1, ValueLogFileSize: 64 << 20, MemTableSize: 8 << 20},
		SpillBatch: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	region, err := NewRegion(RegionConfig{Session: 1, Layout: l, Slots: 32, Backend: CUDABackend(dev)})
	if err != nil {
		t.Fatal(err)
	}
	defer region.Close()
	mv := NewMover(st, MoverConfig{Workers: 4})
	defer mv.Close()

	ctx := context.Background()
	r := rand.New(rand.NewPCG(5, 5))
	const npages = 32 // more than the mirror budget: the first pages spill to SSD
	pages := make([][]byte, npages)
	for p := range pages {
		pages[p] = make([]byte, pb)
		for i := range pages[p] {
			pages[p][i] = byte(r.Uint32())
		}
		if err := st.Write(ctx, PageID{Session: 1, Page: uint32(p)}, 1, pages[p]); err != nil {
			t.Fatal(err)
		}
	}
	// Pages still in the mirror first, then the spilled ones: reading a spilled page back
	// brings it into the mirror, which pushes the coldest mirror pages out to SSD.
	var inMirror, spilled []uint32
	for p := range uint32(npages) {
		if _, ok := st.mirror.Generation(PageID{Session: 1, Page: p}); ok {
			inMirror = append(inMirror, p)
		} else {
			spilled = append(spilled, p)
		}
	}
	if len(inMirror) == 0 || len(spilled) == 0 {
		t.Fatalf("%d pages in the mirror, %d spilled: want both", len(inMirror), len(spilled))
	}
	m := region.mem.(*cudaMemory)
	// The background spiller may still move a page or two between the check above and
	// the recall: the counts are taken from where each page really came from.
	var fromMirror, fromSSD int
	recall := func(lease LeaseID, pages []uint32) {
		t.Helper()
		var items []RecallItem
		var slots []int
		for _, p := range pages {
			a, err := region.Allocate(p)
			if err != nil {
				t.Fatal(err)
			}
			slots = append(slots, a.Slot)
			items = append(items, RecallItem{ID: PageID{Session: 1, Page: p}, Slot: a.Slot, Gen: 1})
		}
		if err := region.PinLoading(lease, slots); err != nil {
			t.Fatal(err)
		}
		tk, err := mv.Recall(region, items)
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := tk.Wait(wctx); err != nil {
			t.Fatal(err)
		}
		for _, x := range tk.Results() {
			switch x.Source {
			case SourceMirror, SourceStaged:
				fromMirror++
			case SourceSSD:
				fromSSD++
			default:
				t.Errorf("page %d came from %v", x.ID.Page, x.Source)
			}
		}
	}
	recall(1, inMirror)
	recall(2, spilled)
	if fromMirror < len(inMirror)/2 || fromSSD < len(spilled) {
		t.Errorf("sources: %d pages from the mirror, %d from SSD; %d were in the mirror, %d spilled", fromMirror, fromSSD, len(inMirror), len(spilled))
	}
	if m.direct != fromMirror || m.staged != fromSSD {
		t.Errorf("%d pages from the pinned mirror, %d from SSD: %d writes copied directly, %d staged", fromMirror, fromSSD, m.direct, m.staged)
	}
	t.Logf("%d pages of %d B from the pinned mirror (direct), %d from SSD (staging)", fromMirror, pb, fromSSD)
	dst := make([]byte, pb)
	for p := range npages {
		slot, gen, ok := region.Lookup(uint32(p))
		if !ok || gen != 1 {
			t.Fatalf("page %d not resident (gen %d)", p, gen)
		}
		if _, err := region.ReadPage(slot, uint32(p), dst); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(dst, pages[p]) {
			t.Fatalf("page %d: device bytes differ from what was written", p)
		}
	}
}

// pinnedPtr finds addresses inside registered extents only, and forgets an extent once
// it is freed.
func TestCUDAPinnedPtr(t *testing.T) {
	n, err := cuda.DeviceCount()
	if err != nil || n == 0 {
		t.Skip("no CUDA device")
	}
	dev, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	a := PinnedAllocator(dev)
	b, err := a.alloc(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	p0, ok := pinnedPtr(b[:16], dev)
	if !ok {
		t.Fatal("start of extent not found")
	}
	if p, ok := pinnedPtr(b[4096:8192], dev); !ok || p != p0+4096 {
		t.Errorf("inner slice: %v %#x, want %#x", ok, p, p0+4096)
	}
	if _, ok := pinnedPtr(make([]byte, 64), dev); ok {
		t.Error("Go heap memory reported pinned")
	}
	// Round trip through the device: bytes written by the host are what a copy reads.
	for i := range b[:4096] {
		b[i] = byte(i * 7)
	}
	dp, err := dev.Alloc(4096)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Free(dp)
	s, err := dev.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Copy(dp, p0, 4096); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if err := dev.CopyDtoH(got, dp); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, b[:4096]) {
		t.Error("device copy of pinned mirror bytes differs")
	}
	if err := a.free(b); err != nil {
		t.Fatal(err)
	}
	pinned.mu.RLock()
	left := len(pinned.ext)
	pinned.mu.RUnlock()
	if left != 0 {
		t.Errorf("%d extents still registered after free", left)
	}
}
