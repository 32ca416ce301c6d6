package tiers

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Format 1 values kept in Badger itself, read only to carry an old store
// over into the journal (journal.go has the current format). Page records of
// format 1 ("FMPG", version 1) are journal records with sequence number 0.
//
// Metadata value: 16-byte header, then the blob.
//
//	0  magic   "FMMD"
//	4  version u16 (1)
//	6  hdrlen  u16 (16)
//	8  length  u32
//	12 crc     u32  CRC32C of bytes 0..12 followed by the blob
const (
	pageMagic      = "FMPG"
	metaMagic      = "FMMD"
	codecVersion   = 1
	pageHeaderSize = 48
	metaHeaderSize = 16
	// MaxMetaBytes bounds one session metadata blob.
	MaxMetaBytes = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func encodeMeta(blob []byte) []byte {
	v := make([]byte, metaHeaderSize+len(blob))
	copy(v[0:4], metaMagic)
	binary.LittleEndian.PutUint16(v[4:], codecVersion)
	binary.LittleEndian.PutUint16(v[6:], metaHeaderSize)
	binary.LittleEndian.PutUint32(v[8:], uint32(len(blob)))
	copy(v[metaHeaderSize:], blob)
	c := crc32.Update(crc32.Checksum(v[:12], castagnoli), castagnoli, blob)
	binary.LittleEndian.PutUint32(v[12:], c)
	return v
}

// decodeMeta verifies a metadata value and returns its blob (aliasing v).
func decodeMeta(v []byte, name string) ([]byte, error) {
	if len(v) < metaHeaderSize {
		return nil, fmt.Errorf("meta %q: value of %d B shorter than header: %w", name, len(v), ErrIntegrity)
	}
	if string(v[0:4]) != metaMagic {
		return nil, fmt.Errorf("meta %q: bad magic: %w", name, ErrIntegrity)
	}
	if ver := binary.LittleEndian.Uint16(v[4:]); ver != codecVersion {
		return nil, fmt.Errorf("meta %q: format version %d unsupported: %w", name, ver, ErrIntegrity)
	}
	if hl := binary.LittleEndian.Uint16(v[6:]); hl != metaHeaderSize {
		return nil, fmt.Errorf("meta %q: header length %d: %w", name, hl, ErrIntegrity)
	}
	n := binary.LittleEndian.Uint32(v[8:])
	if int64(n) != int64(len(v)-metaHeaderSize) || n > MaxMetaBytes {
		return nil, fmt.Errorf("meta %q: header says %d B, value has %d: %w", name, n, len(v)-metaHeaderSize, ErrIntegrity)
	}
	blob := v[metaHeaderSize:]
	c := crc32.Update(crc32.Checksum(v[:12], castagnoli), castagnoli, blob)
	if c != binary.LittleEndian.Uint32(v[12:]) {
		return nil, fmt.Errorf("meta %q: checksum mismatch: %w", name, ErrIntegrity)
	}
	return blob, nil
}
