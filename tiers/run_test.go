package tiers

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
)

// appendPayload lays n chunk payloads (each in ScatterChunk's per-chunk order:
// layer, then segment) out in the APPEND order of docs/protocol.md, computing
// every offset from the protocol's formula independently of eachRunCopy.
func appendPayload(l Layout, chunks [][]byte) []byte {
	n := len(chunks)
	total := 0
	for _, ly := range l.Layers {
		for _, s := range ly.Segments {
			total += n * s
		}
	}
	out := make([]byte, total)
	for i, c := range chunks {
		src := 0
		for li, ly := range l.Layers {
			before := 0
			for _, x := range l.Layers[:li] {
				for _, s := range x.Segments {
					before += s
				}
			}
			for si, s := range ly.Segments {
				segBefore := 0
				for _, t := range ly.Segments[:si] {
					segBefore += t
				}
				off := n*before + n*segBefore + i*s
				copy(out[off:off+s], c[src:src+s])
				src += s
			}
		}
	}
	return out
}

func TestChunkRunMatchesChunks(t *testing.T) {
	for _, l := range []Layout{smallLayout, dsLayout()} {
		g, err := NewGeometry(l)
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(21, 21))
		const n = 7
		chunks := make([][]byte, n)
		for i := range chunks {
			chunks[i] = randBytes(r, g.ChunkBytes())
		}
		payload := appendPayload(l, chunks)
		cpp := l.ChunksPerPage
		tests := []struct{ from, count, pageChunk int }{
			{0, 1, 0}, {0, min(n, cpp), 0}, {2, 2, cpp - 2}, {n - 1, 1, cpp - 1}, {1, min(3, cpp-1), 1},
		}
		for _, tc := range tests {
			run := ChunkRun{Payload: payload, N: n, From: tc.from, Count: tc.count, PageChunk: tc.pageChunk}
			got := make([]byte, g.PageBytes())
			want := make([]byte, g.PageBytes())
			if err := g.ScatterRun(got, run); err != nil {
				t.Fatalf("%+v: %v", tc, err)
			}
			for k := 0; k < tc.count; k++ {
				_ = g.ScatterChunk(want, tc.pageChunk+k, chunks[tc.from+k])
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("layout %d layers, run %+v: page differs from chunk-by-chunk", len(l.Layers), tc)
			}
			back := ChunkRun{Payload: make([]byte, len(payload)), N: n, From: tc.from, Count: tc.count, PageChunk: tc.pageChunk}
			if err := g.GatherRun(got, back); err != nil {
				t.Fatal(err)
			}
			again := make([]byte, g.PageBytes())
			_ = g.ScatterRun(again, back)
			if !bytes.Equal(again, want) {
				t.Fatalf("run %+v does not gather back", tc)
			}
		}
	}
}

func TestChunkRunErrors(t *testing.T) {
	g, _ := NewGeometry(smallLayout)
	page := make([]byte, g.PageBytes())
	pay := make([]byte, 3*g.ChunkBytes())
	tests := []struct {
		name string
		run  ChunkRun
		want error
	}{
		{"short payload", ChunkRun{Payload: pay[1:], N: 3, Count: 1}, ErrSize},
		{"zero chunks", ChunkRun{Payload: nil, N: 0, Count: 1}, ErrSize},
		{"count zero", ChunkRun{Payload: pay, N: 3, Count: 0}, ErrRange},
		{"past payload", ChunkRun{Payload: pay, N: 3, From: 2, Count: 2}, ErrRange},
		{"negative from", ChunkRun{Payload: pay, N: 3, From: -1, Count: 1}, ErrRange},
		{"past page", ChunkRun{Payload: pay, N: 3, Count: 2, PageChunk: 3}, ErrRange},
		{"negative page chunk", ChunkRun{Payload: pay, N: 3, Count: 1, PageChunk: -1}, ErrRange},
	}
	for _, tc := range tests {
		if err := g.ScatterRun(page, tc.run); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestChunkRunThroughTiers appends a session as runs through the store and
// the reserve, and checks both against pages built chunk by chunk.
func TestChunkRunThroughTiers(t *testing.T) {
	l := smallLayout
	g, _ := NewGeometry(l)
	s := openTestStore(t, t.TempDir(), 2, g.PageBytes())
	defer s.Close()
	reg := newRegion(t, l, 4)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(22, 22))
	const total = 22 // 5.5 pages of 4 chunks, in APPENDs of 5 chunks
	want := map[uint32][]byte{}
	gens := map[uint32]uint64{}
	for first := 0; first < total; first += 5 {
		n := min(5, total-first)
		chunks := make([][]byte, n)
		for i := range chunks {
			chunks[i] = randBytes(r, g.ChunkBytes())
			ch := first + i
			p := uint32(ch / l.ChunksPerPage)
			if want[p] == nil {
				want[p] = make([]byte, g.PageBytes())
			}
			_ = g.ScatterChunk(want[p], ch%l.ChunksPerPage, chunks[i])
		}
		payload := appendPayload(l, chunks)
		for i := 0; i < n; {
			ch := first + i
			p := uint32(ch / l.ChunksPerPage)
			cnt := min(n-i, l.ChunksPerPage-ch%l.ChunksPerPage)
			run := ChunkRun{Payload: payload, N: n, From: i, Count: cnt, PageChunk: ch % l.ChunksPerPage}
			id := PageID{Session: 1, Page: p}
			prev, err := s.WriteChunkRun(ctx, id, gens[p]+1, g, run)
			if err != nil || prev != gens[p] {
				t.Fatalf("run at chunk %d: prev %d err %v", ch, prev, err)
			}
			a, err := reg.Allocate(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := reg.WriteChunkRun(a.Slot, p, gens[p], gens[p]+1, run); err != nil {
				t.Fatal(err)
			}
			gens[p]++
			i += cnt
		}
	}
	dst := make([]byte, g.PageBytes())
	for p, w := range want {
		gen, _, err := s.Read(ctx, PageID{Session: 1, Page: p}, dst)
		if err != nil || gen != gens[p] || !bytes.Equal(dst, w) {
			t.Errorf("store page %d: gen %d err %v equal %v", p, gen, err, bytes.Equal(dst, w))
		}
		if slot, rgen, ok := reg.Lookup(p); ok && rgen == gens[p] {
			if _, err := reg.ReadPage(slot, p, dst); err != nil || !bytes.Equal(dst, w) {
				t.Errorf("reserve page %d differs", p)
			}
		}
	}
}
