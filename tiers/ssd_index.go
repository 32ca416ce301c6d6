package tiers

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Index entry: the Badger value under a page key, naming where the page's
// record lives in the segment files. Little-endian, 40 bytes.
//
//	0  magic   "FMIX"
//	4  version u16 (1)
//	6  entlen  u16 (40)
//	8  segment u32  segment file number
//	12 length  u32  body bytes
//	16 offset  u64  record offset in the segment (header, then body)
//	24 gen     u64
//	32 bodycrc u32  CRC32C of the body
//	36 crc     u32  CRC32C of bytes 0..36
//
// A segment record is the 48-byte page header of codec.go followed by the
// body, starting at a 4096-aligned offset; the header repeats page, length,
// generation and body CRC, so a record can be checked against the entry that
// points at it and a segment can be read without the index.
const (
	indexMagic     = "FMIX"
	indexEntrySize = 40
	recordAlign    = 4096
)

// indexEntry locates one page's record.
type indexEntry struct {
	seg    uint32
	length uint32
	off    int64
	gen    uint64
	crc    uint32
}

// recordLen is the record's size in its segment (header and body, not the
// alignment padding).
func (e indexEntry) recordLen() int64 { return pageHeaderSize + int64(e.length) }

func encodeIndex(e indexEntry) []byte {
	v := make([]byte, indexEntrySize)
	copy(v[0:4], indexMagic)
	binary.LittleEndian.PutUint16(v[4:], codecVersion)
	binary.LittleEndian.PutUint16(v[6:], indexEntrySize)
	binary.LittleEndian.PutUint32(v[8:], e.seg)
	binary.LittleEndian.PutUint32(v[12:], e.length)
	binary.LittleEndian.PutUint64(v[16:], uint64(e.off))
	binary.LittleEndian.PutUint64(v[24:], e.gen)
	binary.LittleEndian.PutUint32(v[32:], e.crc)
	binary.LittleEndian.PutUint32(v[36:], crc32.Checksum(v[:36], castagnoli))
	return v
}

// isIndexValue tells an index entry from a page value of the earlier format
// (header and body stored in Badger itself), which stores keep serving.
func isIndexValue(v []byte) bool { return len(v) >= 4 && string(v[:4]) == indexMagic }

// decodeIndex verifies an index entry read from Badger. It never allocates
// beyond the error; the value comes from disk and may be anything.
func decodeIndex(v []byte, id PageID) (indexEntry, error) {
	var e indexEntry
	if len(v) != indexEntrySize {
		return e, fmt.Errorf("page %v: index entry of %d B, want %d: %w", id, len(v), indexEntrySize, ErrIntegrity)
	}
	if string(v[0:4]) != indexMagic {
		return e, fmt.Errorf("page %v: index entry magic %q: %w", id, v[0:4], ErrIntegrity)
	}
	if got, want := crc32.Checksum(v[:36], castagnoli), binary.LittleEndian.Uint32(v[36:]); got != want {
		return e, fmt.Errorf("page %v: index entry checksum %08x, stored %08x: %w", id, got, want, ErrIntegrity)
	}
	if ver := binary.LittleEndian.Uint16(v[4:]); ver != codecVersion {
		return e, fmt.Errorf("page %v: index format version %d unsupported: %w", id, ver, ErrIntegrity)
	}
	if n := binary.LittleEndian.Uint16(v[6:]); n != indexEntrySize {
		return e, fmt.Errorf("page %v: index entry length %d: %w", id, n, ErrIntegrity)
	}
	e.seg = binary.LittleEndian.Uint32(v[8:])
	e.length = binary.LittleEndian.Uint32(v[12:])
	off := binary.LittleEndian.Uint64(v[16:])
	e.gen = binary.LittleEndian.Uint64(v[24:])
	e.crc = binary.LittleEndian.Uint32(v[32:])
	if e.length == 0 || e.length > MaxPageBytes {
		return e, fmt.Errorf("page %v: index entry length %d outside 1..%d: %w", id, e.length, MaxPageBytes, ErrIntegrity)
	}
	if off%recordAlign != 0 || off > maxSegmentBytes {
		return e, fmt.Errorf("page %v: index entry offset %d: %w", id, off, ErrIntegrity)
	}
	if e.gen == 0 {
		return e, fmt.Errorf("page %v: index entry generation 0: %w", id, ErrIntegrity)
	}
	e.off = int64(off)
	return e, nil
}
