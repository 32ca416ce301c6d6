package daemon

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// OPEN with Layout.PageMajor gets a page-major reserve: the reply's strides are the slot
// size, each resident page lies in its slot as one contiguous block (every layer's row back
// to back, as appended), and the decoder's per-layer views (RegionDesc.Row) read the bytes
// appended — through cycles with recall.
func TestOpenPageMajorReserve(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	rd := start(t, cfg)
	defer rd.shutdown(t)
	c := dial(t, cfg.Socket)
	ctx := context.Background()
	l := testLayout(40)
	l.PageMajor = true
	op, err := c.Open(ctx, &proto.Open{Layout: l, Policy: proto.Policy{KMax: 16}})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	desc := &op.Region.RegionDesc
	page := l.PageBytes()
	if len(desc.Strides) != len(l.Layers) {
		t.Fatalf("reply has %d strides for %d layers", len(desc.Strides), len(l.Layers))
	}
	var off uint64
	for i, ly := range l.Layers {
		if desc.Layers[i].Offset != off || desc.Strides[i] < page || desc.Strides[i] != desc.Strides[0] {
			t.Fatalf("layer %d at %d stride %d, want offset %d and one stride ≥ %d", i, desc.Layers[i].Offset, desc.Strides[i], off, page)
		}
		off += uint64(ly.RowBytes)
	}
	if size, err := tiers.RegionSize(tiersLayout(l), int(l.ReserveSlots)); err != nil || uint64(size) != desc.Size {
		t.Fatalf("region size %d, tiers.RegionSize %d (%v)", desc.Size, size, err)
	}
	mem, err := op.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem)
	r := rand.New(rand.NewPCG(8, 9))
	const seed, chunks = 41, 4096
	appendAll(t, c, op.Session, &l, seed, 0, chunks, r)
	var lease uint64
	for cyc := range 3 {
		res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Step: uint64(cyc * 64), Position: chunks * 4, Queries: queries(r, 64, 3)}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("Cycle: %v %v", err, res[0].Err)
		}
		checkPages(t, &l, desc, mem, seed, chunks, res[0].Pages)
		for _, ps := range res[0].Pages {
			// The slot is the page, contiguous: layer 1's row follows layer 0's.
			start := uint64(ps.Slot) * desc.Strides[0]
			if !bytes.Equal(mem[start:start+uint64(l.Layers[0].RowBytes)], desc.Row(mem, 0, ps.Slot)) ||
				&desc.Row(mem, 1, ps.Slot)[0] != &mem[start+uint64(l.Layers[0].RowBytes)] {
				t.Fatalf("page %d slot %d is not one contiguous block", ps.Page, ps.Slot)
			}
		}
		if lease != 0 {
			if err := c.Release(ctx, lease); err != nil {
				t.Fatal(err)
			}
		}
		lease = res[0].Lease
	}
}
