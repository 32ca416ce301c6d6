package tiers

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"golang.org/x/sys/unix"
)

// dsLayout is DeepSeek-V4's: 21 layers of 37,440 B rows, segments [576, 8].
func dsLayout() Layout {
	l := Layout{ChunksPerPage: 64}
	for i := 0; i < 21; i++ {
		l.Layers = append(l.Layers, LayerLayout{RowBytes: 37440, Segments: []int{576, 8}})
	}
	return l
}

var smallLayout = Layout{
	ChunksPerPage: 4,
	Layers: []LayerLayout{
		{RowBytes: 4*72 + 12, Segments: []int{64, 8}},
		{RowBytes: 4 * 132, Segments: []int{132}},
	},
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func newRegion(t testing.TB, l Layout, slots int) *Region {
	t.Helper()
	r, err := NewRegion(RegionConfig{Session: 1, Layout: l, Slots: slots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestLayoutValidate(t *testing.T) {
	tests := []struct {
		name string
		l    Layout
		ok   bool
	}{
		{"deepseek", dsLayout(), true},
		{"small", smallLayout, true},
		{"no layers", Layout{ChunksPerPage: 64}, false},
		{"zero chunks", Layout{ChunksPerPage: 0, Layers: []LayerLayout{{RowBytes: 8, Segments: []int{1}}}}, false},
		{"too many chunks", Layout{ChunksPerPage: MaxChunksPerPage + 1, Layers: []LayerLayout{{RowBytes: 1 << 20, Segments: []int{1}}}}, false},
		{"segments overflow row", Layout{ChunksPerPage: 64, Layers: []LayerLayout{{RowBytes: 37439 - 512, Segments: []int{576, 8}}}}, false},
		{"no segments", Layout{ChunksPerPage: 1, Layers: []LayerLayout{{RowBytes: 8}}}, false},
		{"negative segment", Layout{ChunksPerPage: 1, Layers: []LayerLayout{{RowBytes: 8, Segments: []int{-1}}}}, false},
		{"huge row", Layout{ChunksPerPage: 1, Layers: []LayerLayout{{RowBytes: MaxRowBytes + 1, Segments: []int{1}}}}, false},
		{"page too big", Layout{ChunksPerPage: 1, Layers: func() []LayerLayout {
			var ls []LayerLayout
			for i := 0; i < 5; i++ {
				ls = append(ls, LayerLayout{RowBytes: MaxRowBytes, Segments: []int{1}})
			}
			return ls
		}()}, false},
	}
	for _, tc := range tests {
		err := tc.l.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrLayout) {
			t.Errorf("%s: error %v is not ErrLayout", tc.name, err)
		}
	}
	if got := dsLayout().PageBytes(); got != 786240 {
		t.Errorf("DeepSeek page bytes = %d, want 786240", got)
	}
}

func TestScatterGatherChunk(t *testing.T) {
	g, err := NewGeometry(smallLayout)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	page := make([]byte, g.PageBytes())
	chunks := make([][]byte, smallLayout.ChunksPerPage)
	for c := range chunks {
		chunks[c] = randBytes(r, g.ChunkBytes())
		if err := g.ScatterChunk(page, c, chunks[c]); err != nil {
			t.Fatal(err)
		}
	}
	// Spot-check the documented formula: layer 0, segment 1 (scales) of
	// chunk 2 is at 4·64 + 2·8.
	if !bytes.Equal(page[4*64+2*8:4*64+3*8], chunks[2][64:72]) {
		t.Error("layer 0 segment 1 of chunk 2 not at ChunksPerPage·64 + 2·8")
	}
	// Layer 1 starts after layer 0's padded row.
	if off := smallLayout.RowOffset(1) + 3*132; !bytes.Equal(page[off:off+132], chunks[3][72:]) {
		t.Error("layer 1 of chunk 3 misplaced")
	}
	for c := range chunks {
		dst := make([]byte, g.ChunkBytes())
		if err := g.GatherChunk(page, c, dst); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(dst, chunks[c]) {
			t.Errorf("chunk %d round trip differs", c)
		}
	}
	if err := g.ScatterChunk(page, 4, chunks[0]); !errors.Is(err, ErrRange) {
		t.Errorf("chunk out of range: %v", err)
	}
	if err := g.ScatterChunk(page, 0, chunks[0][1:]); !errors.Is(err, ErrSize) {
		t.Errorf("short payload: %v", err)
	}
}

// TestRegionMappedLayout maps the region's fd as a client would and checks that
// a written page lands at the same slot of every layer buffer, and that chunk
// cells are where CellOffset says.
func TestRegionMappedLayout(t *testing.T) {
	reg := newRegion(t, smallLayout, 5)
	mem, err := unix.Mmap(reg.FD(), 0, int(reg.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	for l, off := range reg.LayerOffsets() {
		if off%4096 != 0 {
			t.Errorf("layer %d offset %d not 4096-aligned", l, off)
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	page := randBytes(r, smallLayout.PageBytes())
	a, err := reg.Allocate(77)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.WritePage(a.Slot, 77, 3, page); err != nil {
		t.Fatal(err)
	}
	offs := reg.LayerOffsets()
	for l, ly := range smallLayout.Layers {
		row := offs[l] + int64(a.Slot*ly.RowBytes)
		want := page[smallLayout.RowOffset(l) : smallLayout.RowOffset(l)+ly.RowBytes]
		if !bytes.Equal(mem[row:row+int64(ly.RowBytes)], want) {
			t.Errorf("layer %d row of slot %d differs in the client mapping", l, a.Slot)
		}
	}
	// The decoder writes chunk 1 of the page straight into its cells.
	g, _ := NewGeometry(smallLayout)
	chunk := randBytes(r, g.ChunkBytes())
	src := 0
	for l, ly := range smallLayout.Layers {
		for s, n := range ly.Segments {
			off, err := reg.CellOffset(l, a.Slot, 1, s)
			if err != nil {
				t.Fatal(err)
			}
			copy(mem[off:off+int64(n)], chunk[src:src+n])
			src += n
		}
	}
	got := make([]byte, g.ChunkBytes())
	if _, err := reg.ReadChunk(a.Slot, 77, 1, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, chunk) {
		t.Error("ReadChunk does not return what the client wrote at CellOffset")
	}
	// A sealed memfd cannot be shrunk by the client.
	if err := unix.Ftruncate(reg.FD(), 4096); err == nil {
		t.Error("client could shrink the region")
	}
}

func TestRegionLRUNeverEvictsPinned(t *testing.T) {
	tests := []struct {
		name   string
		slots  int
		pinned []uint32 // pages pinned after filling
		next   []uint32 // pages allocated afterwards
		evict  []uint32 // expected victims in order
		noRoom bool     // the last allocation fails with ErrNoSpace
	}{
		{"plain LRU", 3, nil, []uint32{10, 11}, []uint32{0, 1}, false},
		{"skip pinned oldest", 3, []uint32{0}, []uint32{10, 11}, []uint32{1, 2}, false},
		{"skip two pinned", 3, []uint32{0, 1}, []uint32{10, 11}, []uint32{2, 10}, false},
		{"all pinned", 2, []uint32{0, 1}, []uint32{10}, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegion(t, smallLayout, tc.slots)
			page := make([]byte, smallLayout.PageBytes())
			for p := 0; p < tc.slots; p++ {
				a, err := reg.Allocate(uint32(p))
				if err != nil {
					t.Fatal(err)
				}
				if err := reg.WritePage(a.Slot, uint32(p), 1, page); err != nil {
					t.Fatal(err)
				}
			}
			var pinSlots []int
			for _, p := range tc.pinned {
				s, _, _ := reg.Lookup(p)
				pinSlots = append(pinSlots, s)
			}
			if err := reg.Pin(7, pinSlots); err != nil {
				t.Fatal(err)
			}
			var evicted []uint32
			for i, p := range tc.next {
				a, err := reg.Allocate(p)
				if tc.noRoom && i == len(tc.next)-1 {
					if !errors.Is(err, ErrNoSpace) {
						t.Fatalf("Allocate(%d) with every slot pinned: %v, want ErrNoSpace", p, err)
					}
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if a.Evicted {
					evicted = append(evicted, a.EvictedPage)
				}
			}
			if len(evicted) != len(tc.evict) {
				t.Fatalf("evicted %v, want %v", evicted, tc.evict)
			}
			for i := range evicted {
				if evicted[i] != tc.evict[i] {
					t.Fatalf("evicted %v, want %v", evicted, tc.evict)
				}
			}
			for _, p := range tc.pinned {
				if _, gen, ok := reg.Lookup(p); !ok || gen != 1 {
					t.Errorf("pinned page %d lost (ok=%v gen=%d)", p, ok, gen)
				}
			}
			// After release the pinned pages are evictable again.
			if err := reg.Release(7); err != nil {
				t.Fatal(err)
			}
			if tc.noRoom {
				if _, err := reg.Allocate(99); err != nil {
					t.Errorf("Allocate after Release: %v", err)
				}
			}
		})
	}
}

func TestRegionLeaseRules(t *testing.T) {
	reg := newRegion(t, smallLayout, 4)
	page := make([]byte, smallLayout.PageBytes())
	a, _ := reg.Allocate(5)
	// A slot pinned while it is still being loaded may be written.
	if err := reg.PinLoading(1, []int{a.Slot}); err != nil {
		t.Fatal(err)
	}
	if err := reg.WritePage(a.Slot, 5, 1, page); err != nil {
		t.Fatalf("loading a pinned, empty slot: %v", err)
	}
	// Still pending (not handed to the client): a recall may reload it.
	if err := reg.WritePage(a.Slot, 5, 2, page); err != nil {
		t.Fatalf("reloading a slot of a pending lease: %v", err)
	}
	if err := reg.HandOut(1); err != nil {
		t.Fatal(err)
	}
	// Once loaded and leased it is never overwritten or freed.
	if err := reg.WritePage(a.Slot, 5, 3, page); !errors.Is(err, ErrPinned) {
		t.Errorf("overwrite of leased slot: %v, want ErrPinned", err)
	}
	if err := reg.Free(5); !errors.Is(err, ErrPinned) {
		t.Errorf("Free of leased slot: %v, want ErrPinned", err)
	}
	// A second lease on the same slot keeps it pinned after the first ends.
	if err := reg.PinLoading(2, []int{a.Slot}); err != nil {
		t.Fatal(err)
	}
	if err := reg.Release(1); err != nil {
		t.Fatal(err)
	}
	if reg.Pins(a.Slot) != 1 {
		t.Errorf("pins = %d, want 1", reg.Pins(a.Slot))
	}
	// Only a pending lease is left: a recall may reload the slot.
	if err := reg.WritePage(a.Slot, 5, 3, page); err != nil {
		t.Errorf("write with only a pending lease: %v", err)
	}
	// Pin (a client lease) refuses overwrites at once.
	if err := reg.Pin(4, []int{a.Slot}); err != nil {
		t.Fatal(err)
	}
	if err := reg.WritePage(a.Slot, 5, 4, page); !errors.Is(err, ErrPinned) {
		t.Errorf("overwrite under Pin: %v, want ErrPinned", err)
	}
	if err := reg.Release(1); !errors.Is(err, ErrNotFound) {
		t.Errorf("double Release: %v, want ErrNotFound", err)
	}
	reg.ReleaseAll()
	if reg.Leases() != 0 || reg.Pins(a.Slot) != 0 {
		t.Errorf("ReleaseAll left %d leases, %d pins", reg.Leases(), reg.Pins(a.Slot))
	}
	if err := reg.WritePage(a.Slot, 5, 4, page); err != nil {
		t.Errorf("write after release: %v", err)
	}
	// Writes naming the wrong page are refused.
	if err := reg.WritePage(a.Slot, 6, 3, page); !errors.Is(err, ErrStale) {
		t.Errorf("write to a slot bound to another page: %v, want ErrStale", err)
	}
	if err := reg.Pin(3, []int{99}); !errors.Is(err, ErrRange) {
		t.Errorf("pin out of range: %v", err)
	}
	free := (a.Slot + 1) % 4
	if err := reg.Pin(3, []int{free}); !errors.Is(err, ErrNotFound) {
		t.Errorf("pin of an unbound slot: %v", err)
	}
}

func TestRegionWriteChunkGenerations(t *testing.T) {
	reg := newRegion(t, smallLayout, 2)
	g, _ := NewGeometry(smallLayout)
	r := rand.New(rand.NewPCG(5, 6))
	a, _ := reg.Allocate(0)
	// Tail page: fresh slot (gen 0), chunks appended one by one.
	want := make([]byte, g.PageBytes())
	var gen uint64
	for c := 0; c < smallLayout.ChunksPerPage; c++ {
		p := randBytes(r, g.ChunkBytes())
		_ = g.ScatterChunk(want, c, p)
		if err := reg.WriteChunk(a.Slot, 0, gen, gen+1, c, p); err != nil {
			t.Fatal(err)
		}
		gen++
	}
	if _, got, _ := reg.Lookup(0); got != gen {
		t.Fatalf("slot generation %d, want %d", got, gen)
	}
	dst := make([]byte, g.PageBytes())
	if _, err := reg.ReadPage(a.Slot, 0, dst); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst, want) {
		t.Error("page assembled from chunks differs")
	}
	// A chunk written on top of a stale slot does not make it current.
	if err := reg.WriteChunk(a.Slot, 0, gen+5, gen+6, 0, make([]byte, g.ChunkBytes())); err != nil {
		t.Fatal(err)
	}
	if _, got, _ := reg.Lookup(0); got != gen {
		t.Errorf("stale slot moved to generation %d", got)
	}
}

func TestRegionConcurrentEvictionAndCopies(t *testing.T) {
	reg := newRegion(t, smallLayout, 8)
	done := make(chan error, 4)
	for w := 0; w < 4; w++ {
		go func(w int) {
			r := rand.New(rand.NewPCG(uint64(w), 9))
			dst := make([]byte, smallLayout.PageBytes())
			ctx := context.Background()
			for i := 0; i < 300; i++ {
				p := uint32(r.IntN(20))
				id := PageID{Session: 1, Page: p}
				gen := uint64(i + 1)
				page := bytes.Repeat([]byte{byte(p)}, smallLayout.PageBytes())
				if err := reg.Put(ctx, id, gen, page); err != nil && !errors.Is(err, ErrNoSpace) {
					done <- err
					return
				}
				if _, err := reg.Get(ctx, id, dst); err == nil {
					if dst[0] != byte(p) || dst[len(dst)-1] != byte(p) {
						done <- errors.New("read another page's bytes")
						return
					}
				} else if !errors.Is(err, ErrNotFound) {
					done <- err
					return
				}
			}
			done <- nil
		}(w)
	}
	for w := 0; w < 4; w++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// TestRegionReusedSlotReadsZero: a slot reused for a new page must not show
// the evicted page's bytes in cells the new page has not written yet.
func TestRegionReusedSlotReadsZero(t *testing.T) {
	g, _ := NewGeometry(smallLayout)
	for _, zeroed := range []bool{false, true} {
		reg := newRegion(t, smallLayout, 1)
		a, _ := reg.Allocate(1)
		if err := reg.WritePage(a.Slot, 1, 1, bytes.Repeat([]byte{0xff}, g.PageBytes())); err != nil {
			t.Fatal(err)
		}
		var b Allocation
		var err error
		if zeroed {
			b, err = reg.AllocateZeroed(2)
		} else {
			b, err = reg.Allocate(2)
		}
		if err != nil || !b.Evicted || b.EvictedPage != 1 {
			t.Fatalf("allocation %+v, %v", b, err)
		}
		chunk := bytes.Repeat([]byte{7}, g.ChunkBytes())
		if err := reg.WriteChunk(b.Slot, 2, 0, 1, 0, chunk); err != nil {
			t.Fatal(err)
		}
		want := make([]byte, g.PageBytes())
		_ = g.ScatterChunk(want, 0, chunk)
		got := make([]byte, g.PageBytes())
		if _, err := reg.ReadPage(b.Slot, 2, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("zeroed=%v: reused slot shows the evicted page's bytes", zeroed)
		}
	}
}
