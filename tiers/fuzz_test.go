package tiers

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// FuzzDecodePage feeds arbitrary stored values to the page decoder: it must
// never panic, never allocate, and accept only values whose checksums verify.
func FuzzDecodePage(f *testing.F) {
	id := PageID{Session: 7, Page: 3}
	good := encodePage(nil, id, 42, bytes.Repeat([]byte{1, 2, 3}, 100))
	f.Add(good, uint64(7), uint32(3))
	f.Add(good[:pageHeaderSize], uint64(7), uint32(3))
	f.Add(good[:pageHeaderSize-1], uint64(7), uint32(3))
	f.Add(good, uint64(8), uint32(3))
	f.Add(encodePage(nil, id, 1, []byte{0}), uint64(7), uint32(3))
	f.Add([]byte("FMPG"), uint64(0), uint32(0))
	f.Add([]byte{}, uint64(0), uint32(0))
	bad := append([]byte(nil), good...)
	binary.LittleEndian.PutUint32(bad[20:], 1<<31)
	f.Add(bad, uint64(7), uint32(3))
	f.Fuzz(func(t *testing.T, v []byte, sess uint64, page uint32) {
		want := PageID{Session: sess, Page: page}
		var h pageHeader
		var body []byte
		var err error
		allocs := testing.AllocsPerRun(1, func() { h, body, err = decodePage(v, want) })
		if err == nil {
			if allocs != 0 {
				t.Fatalf("decoder allocated %v times on success", allocs)
			}
			if h.id != want || int(h.length) != len(body) || len(body) != len(v)-pageHeaderSize {
				t.Fatalf("accepted inconsistent value: %+v, body %d of %d", h, len(body), len(v))
			}
			// Re-encoding an accepted value reproduces it byte for byte.
			if !bytes.Equal(encodePage(nil, h.id, h.gen, body), v) {
				t.Fatal("accepted value does not re-encode to itself")
			}
		} else if !errors.Is(err, ErrIntegrity) {
			t.Fatalf("error %v is not ErrIntegrity", err)
		}
	})
}

// FuzzDecodeMeta does the same for session metadata values.
func FuzzDecodeMeta(f *testing.F) {
	f.Add(encodeMeta([]byte("layout")))
	f.Add(encodeMeta(nil))
	f.Add([]byte("FMMD\x01\x00\x10\x00\xff\xff\xff\xff\x00\x00\x00\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		blob, err := decodeMeta(v, "x")
		if err == nil {
			if !bytes.Equal(encodeMeta(blob), v) {
				t.Fatal("accepted meta does not re-encode to itself")
			}
		} else if !errors.Is(err, ErrIntegrity) {
			t.Fatalf("error %v is not ErrIntegrity", err)
		}
	})
}

// FuzzLayout builds layouts from arbitrary bytes (a client's OPEN carries
// them): Validate must reject anything whose chunks do not fit, and for every
// accepted layout scatter/gather must stay in bounds and round-trip.
func FuzzLayout(f *testing.F) {
	f.Add(uint16(64), []byte{0x40, 0x92, 0, 0, 2, 0x40, 0x02, 0x08, 0x00})
	f.Add(uint16(4), []byte{0x2c, 0x01, 0, 0, 2, 0x40, 0x00, 0x08, 0x00, 0x10, 0x02, 0, 0, 1, 0x84, 0})
	f.Add(uint16(0), []byte{})
	f.Add(uint16(65535), []byte{0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, cpp uint16, spec []byte) {
		// Each layer: row bytes (u32 LE), segment count (u8), segments (u16 LE).
		l := Layout{ChunksPerPage: int(cpp)}
		for len(spec) >= 5 && len(l.Layers) < 8 {
			row := int(binary.LittleEndian.Uint32(spec))
			n := int(spec[4])
			spec = spec[5:]
			var segs []int
			for i := 0; i < n && len(spec) >= 2; i++ {
				segs = append(segs, int(binary.LittleEndian.Uint16(spec)))
				spec = spec[2:]
			}
			l.Layers = append(l.Layers, LayerLayout{RowBytes: row, Segments: segs})
		}
		g, err := NewGeometry(l)
		if err != nil {
			if !errors.Is(err, ErrLayout) {
				t.Fatalf("error %v is not ErrLayout", err)
			}
			return
		}
		if g.PageBytes() > 4<<20 {
			return // valid but too large to exercise cheaply
		}
		page := make([]byte, g.PageBytes())
		chunk := make([]byte, g.ChunkBytes())
		for i := range chunk {
			chunk[i] = byte(i*7 + 1)
		}
		last := l.ChunksPerPage - 1
		for _, c := range []int{0, last} {
			if err := g.ScatterChunk(page, c, chunk); err != nil {
				t.Fatal(err)
			}
			out := make([]byte, len(chunk))
			if err := g.GatherChunk(page, c, out); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, chunk) {
				t.Fatalf("chunk %d does not round-trip", c)
			}
		}
		if err := g.ScatterChunk(page, l.ChunksPerPage, chunk); !errors.Is(err, ErrRange) {
			t.Fatalf("chunk past the page accepted: %v", err)
		}
	})
}

// FuzzChunkRun checks that any run an APPEND frame can describe is either
// rejected or copied within bounds.
func FuzzChunkRun(f *testing.F) {
	f.Add(3, 0, 3, 0, 0)
	f.Add(3, 2, 2, 3, 0)
	f.Add(1, 0, 1, 3, 1)
	f.Add(-1, 0, 1, 0, 0)
	f.Add(1<<40, 1<<39, 1<<39, 0, 0)
	g, err := NewGeometry(smallLayout)
	if err != nil {
		f.Fatal(err)
	}
	page := make([]byte, g.PageBytes())
	f.Fuzz(func(t *testing.T, n, from, count, pageChunk, trim int) {
		if n < 0 || n > 64 {
			n %= 65
		}
		size := max(n, 0)*g.ChunkBytes() - trim%8
		if size < 0 {
			size = 0
		}
		run := ChunkRun{Payload: make([]byte, size), N: n, From: from, Count: count, PageChunk: pageChunk}
		err := g.ScatterRun(page, run)
		if err != nil && !errors.Is(err, ErrSize) && !errors.Is(err, ErrRange) {
			t.Fatalf("unexpected error %v", err)
		}
		if err == nil && (from < 0 || count <= 0 || from+count > n || pageChunk+count > smallLayout.ChunksPerPage) {
			t.Fatalf("accepted run %+v", run)
		}
	})
}

func FuzzDecodeIndex(f *testing.F) {
	good := encodeIndex(indexEntry{seg: 3, length: 786240, off: 7 * recordAlign, gen: 42, crc: 0xdeadbeef})
	f.Add(good)
	f.Add(good[:indexEntrySize-1])
	f.Add(append(append([]byte(nil), good...), 0))
	f.Add(encodeIndex(indexEntry{seg: 0, length: MaxPageBytes + 1, off: 0, gen: 1}))
	f.Add(encodeIndex(indexEntry{seg: 1, length: 1, off: 100, gen: 1}))
	f.Add(encodeIndex(indexEntry{seg: 1, length: 1, off: 0, gen: 0}))
	f.Add([]byte("FMIX"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		id := PageID{Session: 1, Page: 2}
		e, err := decodeIndex(v, id)
		if err != nil {
			if !errors.Is(err, ErrIntegrity) {
				t.Fatalf("error %v is not ErrIntegrity", err)
			}
			return
		}
		if e.length == 0 || e.length > MaxPageBytes || e.off%recordAlign != 0 || e.off > maxSegmentBytes || e.gen == 0 {
			t.Fatalf("accepted out-of-range entry %+v", e)
		}
		if !bytes.Equal(encodeIndex(e), v) {
			t.Fatal("accepted entry does not re-encode to itself")
		}
	})
}
