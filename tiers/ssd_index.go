package tiers

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Index entry: a Badger value naming where a record lives in the journal.
// Little-endian, 52 bytes (version 2):
//
//	0  magic   "FMIX"
//	4  version u16 (2)
//	6  entlen  u16 (52)
//	8  segment u32  segment file number
//	12 length  u32  body bytes
//	16 offset  u64  record offset in the segment
//	24 gen     u64  page generation; for metadata entries the session id;
//	                for metadata deltas the seq of the record they follow
//	32 bodycrc u32  CRC32C of the body
//	36 kind    u8   record kind (journal.go), then 3 zero bytes
//	40 seq     u64  the record's journal sequence number
//	48 crc     u32  CRC32C of bytes 0..48
//
// Version 1 entries (40 bytes: no kind, no seq, crc at 36) are page entries
// of stores written before the journal; an index holding any is rebuilt.
//
// Keys: 'p' session page → page entry; 'm' name → the name's metadata
// chains (metaRef); 't' session → session
// deletion; 'd' session page → page deletion; 'e' name → metadata deletion;
// 'c' → checkpoint.
const (
	indexMagic       = "FMIX"
	indexEntrySize   = 52
	indexEntrySizeV1 = 40
	recordAlign      = 4096
	checkpointMagic  = "FMCP"
	checkpointSize   = 36
)

// indexEntry locates one record.
type indexEntry struct {
	seg    uint32
	length uint32
	off    int64
	gen    uint64
	crc    uint32
	kind   recordKind
	seq    uint64
}

// recordLen is the record's size in its segment (header and body, not the
// alignment padding).
func (e indexEntry) recordLen() int64 { return pageHeaderSize + int64(e.length) }

func (e indexEntry) at(seg uint32, off int64) bool { return e.seg == seg && e.off == off }

func encodeIndex(e indexEntry) []byte {
	return appendIndex(make([]byte, 0, indexEntrySize), e)
}

func appendIndex(b []byte, e indexEntry) []byte {
	v := make([]byte, indexEntrySize)
	copy(v[0:4], indexMagic)
	binary.LittleEndian.PutUint16(v[4:], recordVersion)
	binary.LittleEndian.PutUint16(v[6:], indexEntrySize)
	binary.LittleEndian.PutUint32(v[8:], e.seg)
	binary.LittleEndian.PutUint32(v[12:], e.length)
	binary.LittleEndian.PutUint64(v[16:], uint64(e.off))
	binary.LittleEndian.PutUint64(v[24:], e.gen)
	binary.LittleEndian.PutUint32(v[32:], e.crc)
	v[36] = byte(e.kind)
	binary.LittleEndian.PutUint64(v[40:], e.seq)
	binary.LittleEndian.PutUint32(v[48:], crc32.Checksum(v[:48], castagnoli))
	return append(b, v...)
}

// decodeIndex verifies one index entry read from Badger (key names the entry
// in errors). It never allocates beyond the error; the value comes from disk
// and may be anything.
func decodeIndex(v []byte, key string) (indexEntry, error) {
	var e indexEntry
	if len(v) == indexEntrySizeV1 && string(v[0:4]) == indexMagic && binary.LittleEndian.Uint16(v[4:]) == legacyVersion {
		return e, fmt.Errorf("%s: index entry of format version 1: %w", key, errOldIndex)
	}
	if len(v) != indexEntrySize {
		return e, fmt.Errorf("%s: index entry of %d B, want %d: %w", key, len(v), indexEntrySize, ErrIntegrity)
	}
	if string(v[0:4]) != indexMagic {
		return e, fmt.Errorf("%s: index entry magic %q: %w", key, v[0:4], ErrIntegrity)
	}
	if got, want := crc32.Checksum(v[:48], castagnoli), binary.LittleEndian.Uint32(v[48:]); got != want {
		return e, fmt.Errorf("%s: index entry checksum %08x, stored %08x: %w", key, got, want, ErrIntegrity)
	}
	if ver := binary.LittleEndian.Uint16(v[4:]); ver != recordVersion {
		return e, fmt.Errorf("%s: index format version %d unsupported: %w", key, ver, ErrIntegrity)
	}
	if n := binary.LittleEndian.Uint16(v[6:]); n != indexEntrySize {
		return e, fmt.Errorf("%s: index entry length %d: %w", key, n, ErrIntegrity)
	}
	e.seg = binary.LittleEndian.Uint32(v[8:])
	e.length = binary.LittleEndian.Uint32(v[12:])
	off := binary.LittleEndian.Uint64(v[16:])
	e.gen = binary.LittleEndian.Uint64(v[24:])
	e.crc = binary.LittleEndian.Uint32(v[32:])
	e.kind = recordKind(v[36])
	e.seq = binary.LittleEndian.Uint64(v[40:])
	if v[37] != 0 || v[38] != 0 || v[39] != 0 || e.kind == kindNone || e.kind == kindSegment || e.kind > kindMetaDelta {
		return e, fmt.Errorf("%s: index entry kind %d: %w", key, v[36], ErrIntegrity)
	}
	if e.kind == kindPage && (e.length == 0 || e.length > MaxPageBytes || e.gen == 0) {
		return e, fmt.Errorf("%s: page entry of %d B, generation %d: %w", key, e.length, e.gen, ErrIntegrity)
	}
	if int64(e.length) > MaxPageBytes+maxMetaNameBytes {
		return e, fmt.Errorf("%s: index entry length %d: %w", key, e.length, ErrIntegrity)
	}
	if off%uint64(alignFor(e.kind)) != 0 || off > maxSegmentBytes {
		return e, fmt.Errorf("%s: index entry offset %d: %w", key, off, ErrIntegrity)
	}
	e.off = int64(off)
	return e, nil
}

// metaRef is what the index keeps per metadata name: its records in seq
// order — the previous full record (FMMR) and the deltas (FMMD) that follow
// it, which a read falls back to when the current chain's full record is
// damaged, then the current full record and its deltas. Each delta's entry
// gen is the seq of the record before it, so the chain is checked whole.
// The value is the entries concatenated, oldest first; a value of format 2
// before deltas existed (latest, then previous) is read too.
type metaRef struct {
	ents []indexEntry // never modified in place: readers hold copies
}

// maxMetaRefEntries bounds a name's index value: two chains of a full
// record and MaxMetaDeltas deltas, within Badger's value threshold.
const maxMetaRefEntries = 2 * (1 + MaxMetaDeltas)

func newMetaRef(ents ...indexEntry) metaRef { return metaRef{ents: ents} }

// baseIdx is the index of the current chain's full record.
func (m metaRef) baseIdx() int {
	for i := len(m.ents) - 1; i > 0; i-- {
		if m.ents[i].kind == kindMeta {
			return i
		}
	}
	return 0
}

// cur is the current chain: its full record, then its deltas.
func (m metaRef) cur() []indexEntry { return m.ents[m.baseIdx():] }

// prev is the previous chain (the fallback), possibly empty.
func (m metaRef) prev() []indexEntry { return m.ents[:m.baseIdx()] }

// last is the newest record: what the next delta follows.
func (m metaRef) last() indexEntry { return m.ents[len(m.ents)-1] }

func (m metaRef) session() uint64 { return m.ents[m.baseIdx()].gen }

// find is the index of entry e in m, -1 if m does not hold it.
func (m metaRef) find(e indexEntry) int {
	for i, x := range m.ents {
		if x == e {
			return i
		}
	}
	return -1
}

func isMetaKind(k recordKind) bool { return k == kindMeta || k == kindMetaDelta }

// with returns m with entry i replaced (a copy).
func (m metaRef) with(i int, e indexEntry) metaRef {
	ents := append([]indexEntry(nil), m.ents...)
	ents[i] = e
	return metaRef{ents: ents}
}

func encodeMetaRef(m metaRef) []byte {
	b := make([]byte, 0, len(m.ents)*indexEntrySize)
	for _, e := range m.ents {
		b = appendIndex(b, e)
	}
	return b
}

func decodeMetaRef(v []byte, key string) (metaRef, error) {
	var m metaRef
	if len(v) == 0 || len(v)%indexEntrySize != 0 || len(v)/indexEntrySize > maxMetaRefEntries {
		return m, fmt.Errorf("%s: metadata index value of %d B: %w", key, len(v), ErrIntegrity)
	}
	ents := make([]indexEntry, len(v)/indexEntrySize)
	for i := range ents {
		e, err := decodeIndex(v[i*indexEntrySize:(i+1)*indexEntrySize], key)
		if err != nil {
			return m, err
		}
		ents[i] = e
	}
	if len(ents) == 2 && ents[0].kind == kindMeta && ents[1].kind == kindMeta && ents[0].seq > ents[1].seq {
		ents[0], ents[1] = ents[1], ents[0] // format 2 before deltas: latest first
	}
	if err := checkMetaChain(ents); err != nil {
		return m, fmt.Errorf("%s: %w", key, err)
	}
	return metaRef{ents: ents}, nil
}

// checkMetaChain verifies a name's entries: a full record first, at most two
// full records, seqs ascending, each delta following the record before it.
func checkMetaChain(ents []indexEntry) error {
	bases := 0
	for i, e := range ents {
		switch {
		case e.kind == kindMeta:
			bases++
		case e.kind != kindMetaDelta || i == 0:
			return fmt.Errorf("metadata index names a %s record at position %d: %w", e.kind, i, ErrIntegrity)
		case e.gen != ents[i-1].seq:
			return fmt.Errorf("metadata delta seq %d follows seq %d, the index has seq %d before it: %w", e.seq, e.gen, ents[i-1].seq, ErrIntegrity)
		}
		if i > 0 && e.seq <= ents[i-1].seq {
			return fmt.Errorf("metadata index seqs %d, %d out of order: %w", ents[i-1].seq, e.seq, ErrIntegrity)
		}
	}
	if bases > 2 {
		return fmt.Errorf("metadata index with %d full records: %w", bases, ErrIntegrity)
	}
	return nil
}

// checkpoint says how far the index is known to reflect the journal: every
// record before (seg, off) has been applied, and no record before it carries
// a sequence number at or above nextSeq.
type checkpoint struct {
	seg     uint32
	off     int64
	nextSeq uint64
}

func encodeCheckpoint(c checkpoint) []byte {
	v := make([]byte, checkpointSize)
	copy(v[0:4], checkpointMagic)
	binary.LittleEndian.PutUint16(v[4:], recordVersion)
	binary.LittleEndian.PutUint32(v[8:], c.seg)
	binary.LittleEndian.PutUint64(v[16:], uint64(c.off))
	binary.LittleEndian.PutUint64(v[24:], c.nextSeq)
	binary.LittleEndian.PutUint32(v[32:], crc32.Checksum(v[:32], castagnoli))
	return v
}

func decodeCheckpoint(v []byte) (checkpoint, error) {
	var c checkpoint
	if len(v) != checkpointSize || string(v[0:4]) != checkpointMagic {
		return c, fmt.Errorf("index checkpoint of %d B: %w", len(v), ErrIntegrity)
	}
	if crc32.Checksum(v[:32], castagnoli) != binary.LittleEndian.Uint32(v[32:]) || binary.LittleEndian.Uint16(v[4:]) != recordVersion {
		return c, fmt.Errorf("index checkpoint checksum or version: %w", ErrIntegrity)
	}
	c.seg = binary.LittleEndian.Uint32(v[8:])
	off := binary.LittleEndian.Uint64(v[16:])
	if off > maxSegmentBytes {
		return c, fmt.Errorf("index checkpoint offset %d: %w", off, ErrIntegrity)
	}
	c.off = int64(off)
	c.nextSeq = binary.LittleEndian.Uint64(v[24:])
	return c, nil
}
