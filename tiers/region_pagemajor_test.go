package tiers

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"golang.org/x/sys/unix"
)

// A page-major region holds each page in its slot exactly as the mirror does (rows of all
// layers back to back), its layer views are offset + slot·stride, a whole page is one copy,
// and CellOffset, WriteChunk, ReadChunk and ReadPage agree with the client's mapping — for
// the small layout and DeepSeek-V4's, against the per-layer arrangement of the same pages.
func TestRegionPageMajorLayout(t *testing.T) {
	for _, base := range []struct {
		name string
		l    Layout
	}{{"small", smallLayout}, {"deepseek", dsLayout()}} {
		for _, pm := range []bool{false, true} {
			l := base.l.clone()
			l.PageMajor = pm
			t.Run(base.name+map[bool]string{false: "/per-layer", true: "/page-major"}[pm], func(t *testing.T) {
				const slots = 6
				reg := newRegion(t, l, slots)
				mem, err := unix.Mmap(reg.FD(), 0, int(reg.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Munmap(mem)
				offs, strides := reg.LayerOffsets(), reg.RowStrides()
				pageBytes := l.PageBytes()
				if pm {
					if size, _ := RegionSize(l, slots); size != reg.Size() || strides[0] < int64(pageBytes) || strides[0]%pageMajorAlign != 0 {
						t.Fatalf("size %d (RegionSize %d), stride %d for pages of %d B", reg.Size(), size, strides[0], pageBytes)
					}
					if n := len(reg.pageSpans(3)); n != 1 {
						t.Fatalf("a page-major page is %d copies, want 1", n)
					}
				} else if n := len(reg.pageSpans(3)); n != len(l.Layers) {
					t.Fatalf("a per-layer page is %d copies, want %d", n, len(l.Layers))
				}
				r := rand.New(rand.NewPCG(5, uint64(len(l.Layers))))
				pages := map[int][]byte{}
				for pg := uint32(10); pg < 10+slots; pg++ {
					a, err := reg.Allocate(pg)
					if err != nil {
						t.Fatal(err)
					}
					page := randBytes(r, pageBytes)
					if err := reg.WritePage(a.Slot, pg, 1, page); err != nil {
						t.Fatal(err)
					}
					pages[a.Slot] = page
				}
				for slot, page := range pages {
					if pm {
						at := int64(slot) * strides[0]
						if !bytes.Equal(mem[at:at+int64(pageBytes)], page) {
							t.Fatalf("slot %d does not hold the mirror page contiguously", slot)
						}
					}
					for li, ly := range l.Layers {
						row := offs[li] + int64(slot)*strides[li]
						if !bytes.Equal(mem[row:row+int64(ly.RowBytes)], page[l.RowOffset(li):l.RowOffset(li)+ly.RowBytes]) {
							t.Fatalf("layer %d view of slot %d differs", li, slot)
						}
					}
				}
				// A chunk written by the client at CellOffset reads back through the region,
				// and one written through the region lands at CellOffset.
				g, _ := NewGeometry(l)
				slot, page := 2, uint32(0)
				for s := range pages {
					if s == slot {
						page = uint32(10 + s) // allocation order fills slots 0…5 for pages 10…15
					}
				}
				if got, _, ok := reg.Lookup(page); !ok || got != slot {
					t.Fatalf("page %d is in slot %d (ok %v), test assumed %d", page, got, ok, slot)
				}
				chunk := randBytes(r, g.ChunkBytes())
				src := 0
				for li, ly := range l.Layers {
					for s, n := range ly.Segments {
						off, err := reg.CellOffset(li, slot, 1, s)
						if err != nil {
							t.Fatal(err)
						}
						copy(mem[off:off+int64(n)], chunk[src:src+n])
						src += n
					}
				}
				got := make([]byte, g.ChunkBytes())
				if _, err := reg.ReadChunk(slot, page, 1, got); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, chunk) {
					t.Fatal("ReadChunk differs from the bytes written at CellOffset")
				}
				chunk2 := randBytes(r, g.ChunkBytes())
				if err := reg.WriteChunk(slot, page, 1, 2, l.ChunksPerPage-1, chunk2); err != nil {
					t.Fatal(err)
				}
				src = 0
				for li, ly := range l.Layers {
					for s, n := range ly.Segments {
						off, _ := reg.CellOffset(li, slot, l.ChunksPerPage-1, s)
						if !bytes.Equal(mem[off:off+int64(n)], chunk2[src:src+n]) {
							t.Fatalf("WriteChunk: layer %d segment %d not at CellOffset", li, s)
						}
						src += n
					}
				}
				full := make([]byte, pageBytes)
				if _, err := reg.ReadPage(slot, page, full); err != nil {
					t.Fatal(err)
				}
				for li := range l.Layers {
					row := offs[li] + int64(slot)*strides[li]
					if !bytes.Equal(full[l.RowOffset(li):l.RowOffset(li)+l.Layers[li].RowBytes], mem[row:row+int64(l.Layers[li].RowBytes)]) {
						t.Fatalf("ReadPage layer %d differs from the mapping", li)
					}
				}
			})
		}
	}
}
