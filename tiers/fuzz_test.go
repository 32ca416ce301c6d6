package tiers

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
)

// FuzzDecodeRecord feeds arbitrary bytes to the journal record decoder (what
// recovery and every read run over segment bytes): it must never panic, and
// accept only records whose header and body checksums verify and whose
// fields are in range.
func FuzzDecodeRecord(f *testing.F) {
	page := bytes.Repeat([]byte{1, 2, 3}, 100)
	good := encodeRecord(recHeader{kind: kindPage, session: 7, page: 3, gen: 42, seq: 9}, page)
	f.Add(good)
	f.Add(good[:pageHeaderSize])
	f.Add(good[:pageHeaderSize-1])
	f.Add(encodeRecord(recHeader{kind: kindMeta, session: 7, page: 4, seq: 10}, []byte("name{json}")))
	f.Add(encodeRecord(recHeader{kind: kindDelMeta, session: 7, page: 4, seq: 11}, []byte("name")))
	f.Add(encodeRecord(recHeader{kind: kindDelSession, session: 7, seq: 12}, nil))
	f.Add(encodeRecord(recHeader{kind: kindDelPage, session: 7, page: 1, seq: 13}, nil))
	f.Add(encodeRecord(recHeader{kind: kindSegment, seq: 1}, nil))
	f.Add(encodeRecord(recHeader{kind: kindMeta, session: 7, page: 40, seq: 10}, []byte("short")))
	f.Add(encodeRecord(recHeader{kind: kindMetaDelta, session: 7, page: 4, gen: 10, seq: 14}, []byte("name{delta}")))
	f.Add(encodeRecord(recHeader{kind: kindMetaDelta, session: 7, page: 4, gen: 14, seq: 14}, []byte("name{delta}")))
	f.Add([]byte("FMPG"))
	f.Add([]byte{})
	bad := append([]byte(nil), good...)
	binary.LittleEndian.PutUint32(bad[20:], 1<<31)
	f.Add(bad)
	f.Fuzz(func(t *testing.T, v []byte) {
		h, body, err := decodeRecord(v)
		if err != nil {
			if !errors.Is(err, ErrIntegrity) {
				t.Fatalf("error %v is not ErrIntegrity", err)
			}
			return
		}
		if int64(len(body)) != int64(h.length) || h.recordLen() > int64(len(v)) {
			t.Fatalf("accepted inconsistent record: %+v, body %d of %d", h, len(body), len(v))
		}
		switch h.kind {
		case kindPage:
			if h.gen == 0 || h.length == 0 {
				t.Fatalf("accepted page record %+v", h)
			}
		case kindMeta, kindDelMeta, kindMetaDelta:
			if h.kind == kindMetaDelta && h.gen >= h.seq {
				t.Fatalf("accepted a delta (seq %d) following seq %d", h.seq, h.gen)
			}
			name, _ := metaBody(h, body)
			if len(name) == 0 || len(name) > maxMetaName {
				t.Fatalf("accepted metadata name of %d B", len(name))
			}
		}
		// Re-encoding an accepted record reproduces it byte for byte
		// (version 1 page records have no seq field to reproduce).
		if h.version == recordVersion && !bytes.Equal(encodeRecord(h, body), v[:h.recordLen()]) {
			t.Fatal("accepted record does not re-encode to itself")
		}
	})
}

// FuzzDecodeMetaRef drives the decoder of a metadata name's index value (the
// latest record and the one before it).
func FuzzDecodeMetaRef(f *testing.F) {
	e := indexEntry{seg: 2, length: 300, off: 7 * smallAlign, gen: 5, crc: 1, kind: kindMeta, seq: 3}
	f.Add(encodeMetaRef(newMetaRef(e)))
	e2 := e
	e2.seq, e2.off = 2, smallAlign
	f.Add(encodeMetaRef(newMetaRef(e2, e)))
	f.Add(append(encodeIndex(e), encodeIndex(e2)...)) // format 2 before deltas: latest first
	d := e
	d.kind, d.gen, d.seq, d.off = kindMetaDelta, 3, 4, 8*smallAlign
	f.Add(encodeMetaRef(newMetaRef(e2, e, d)))
	f.Add(encodeCheckpoint(checkpoint{seg: 1, off: 4096, nextSeq: 9}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		m, err := decodeMetaRef(v, "x")
		if err == nil {
			again, err := decodeMetaRef(encodeMetaRef(m), "x")
			if err != nil || !slices.Equal(again.ents, m.ents) {
				t.Fatalf("accepted value does not re-encode to itself: %v", err)
			}
			if len(m.ents) != 2 && !bytes.Equal(encodeMetaRef(m), v) {
				t.Fatal("accepted value does not re-encode to the same bytes")
			}
		} else if !errors.Is(err, ErrIntegrity) {
			t.Fatalf("error %v is not ErrIntegrity", err)
		}
		c, err := decodeCheckpoint(v)
		if err == nil {
			if !bytes.Equal(encodeCheckpoint(c), v) {
				t.Fatal("accepted checkpoint does not re-encode to itself")
			}
		} else if !errors.Is(err, ErrIntegrity) {
			t.Fatalf("checkpoint error %v is not ErrIntegrity", err)
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
	good := encodeIndex(indexEntry{seg: 3, length: 786240, off: 7 * recordAlign, gen: 42, crc: 0xdeadbeef, kind: kindPage, seq: 5})
	f.Add(good)
	f.Add(good[:indexEntrySize-1])
	f.Add(append(append([]byte(nil), good...), 0))
	f.Add(encodeIndex(indexEntry{seg: 0, length: MaxPageBytes + 1, off: 0, gen: 1, kind: kindPage}))
	f.Add(encodeIndex(indexEntry{seg: 1, length: 1, off: 100, gen: 1, kind: kindPage}))
	f.Add(encodeIndex(indexEntry{seg: 1, length: 1, off: 0, gen: 0, kind: kindPage}))
	f.Add(encodeIndex(indexEntry{seg: 1, length: 0, off: 512, kind: kindDelSession, seq: 3}))
	f.Add([]byte("FMIX"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		e, err := decodeIndex(v, "k")
		if err != nil {
			if !errors.Is(err, ErrIntegrity) && !errors.Is(err, errOldIndex) {
				t.Fatalf("error %v is not ErrIntegrity", err)
			}
			return
		}
		if e.kind == kindNone || e.kind >= kindSegment || e.off%alignFor(e.kind) != 0 || e.off > maxSegmentBytes {
			t.Fatalf("accepted out-of-range entry %+v", e)
		}
		if e.kind == kindPage && (e.length == 0 || e.length > MaxPageBytes || e.gen == 0) {
			t.Fatalf("accepted out-of-range page entry %+v", e)
		}
		if !bytes.Equal(encodeIndex(e), v) {
			t.Fatal("accepted entry does not re-encode to itself")
		}
	})
}
