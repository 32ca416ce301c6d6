package tiers

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// On-SSD value formats. Integers are little-endian; keys (see ssd.go) are
// big-endian so they sort by (session, page).
//
// Page value: 48-byte header, then the page body.
//
//	0  magic   "FMPG"
//	4  version u16 (1)
//	6  hdrlen  u16 (48)
//	8  session u64
//	16 page    u32
//	20 length  u32  body bytes
//	24 gen     u64
//	32 bodycrc u32  CRC32C of the body
//	36 zero    [8]byte
//	44 hdrcrc  u32  CRC32C of bytes 0..44
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

// pageHeader is a decoded page value header.
type pageHeader struct {
	id     PageID
	gen    uint64
	length uint32
	crc    uint32
}

func writePageHeader(dst []byte, id PageID, gen uint64, n int, bodyCRC uint32) {
	_ = dst[pageHeaderSize-1]
	copy(dst[0:4], pageMagic)
	binary.LittleEndian.PutUint16(dst[4:], codecVersion)
	binary.LittleEndian.PutUint16(dst[6:], pageHeaderSize)
	binary.LittleEndian.PutUint64(dst[8:], id.Session)
	binary.LittleEndian.PutUint32(dst[16:], id.Page)
	binary.LittleEndian.PutUint32(dst[20:], uint32(n))
	binary.LittleEndian.PutUint64(dst[24:], gen)
	binary.LittleEndian.PutUint32(dst[32:], bodyCRC)
	clear(dst[36:44])
	binary.LittleEndian.PutUint32(dst[44:], crc32.Checksum(dst[:44], castagnoli))
}

// encodePage returns header+body in buf (grown if needed).
func encodePage(buf []byte, id PageID, gen uint64, body []byte) []byte {
	n := pageHeaderSize + len(body)
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	c := copyChecked(buf[pageHeaderSize:], body)
	writePageHeader(buf, id, gen, len(body), c)
	return buf
}

// decodePageHeader checks a stored value's header against the key it was
// stored under. It never allocates; the value comes from disk and may be
// anything.
func decodePageHeader(v []byte, want PageID) (pageHeader, error) {
	h, err := parsePageHeader(v, want)
	if err != nil {
		return h, err
	}
	if int64(h.length) != int64(len(v)-pageHeaderSize) {
		return h, fmt.Errorf("page %v: header says %d B, value has %d: %w", want, h.length, len(v)-pageHeaderSize, ErrIntegrity)
	}
	return h, nil
}

// parsePageHeader checks the header at the start of v (a Badger value or a
// segment record's first bytes) without looking at the body.
func parsePageHeader(v []byte, want PageID) (pageHeader, error) {
	var h pageHeader
	if len(v) < pageHeaderSize {
		return h, fmt.Errorf("page %v: value of %d B shorter than header: %w", want, len(v), ErrIntegrity)
	}
	if string(v[0:4]) != pageMagic {
		return h, fmt.Errorf("page %v: bad magic %q: %w", want, v[0:4], ErrIntegrity)
	}
	if got := crc32.Checksum(v[:44], castagnoli); got != binary.LittleEndian.Uint32(v[44:]) {
		return h, fmt.Errorf("page %v: header checksum %08x, stored %08x: %w", want, got, binary.LittleEndian.Uint32(v[44:]), ErrIntegrity)
	}
	if ver := binary.LittleEndian.Uint16(v[4:]); ver != codecVersion {
		return h, fmt.Errorf("page %v: format version %d unsupported: %w", want, ver, ErrIntegrity)
	}
	if hl := binary.LittleEndian.Uint16(v[6:]); hl != pageHeaderSize {
		return h, fmt.Errorf("page %v: header length %d: %w", want, hl, ErrIntegrity)
	}
	h.id = PageID{Session: binary.LittleEndian.Uint64(v[8:]), Page: binary.LittleEndian.Uint32(v[16:])}
	h.length = binary.LittleEndian.Uint32(v[20:])
	h.gen = binary.LittleEndian.Uint64(v[24:])
	h.crc = binary.LittleEndian.Uint32(v[32:])
	if h.id != want {
		return h, fmt.Errorf("page %v: value names page %v: %w", want, h.id, ErrIntegrity)
	}
	if h.length > MaxPageBytes {
		return h, fmt.Errorf("page %v: header says %d B, over %d: %w", want, h.length, MaxPageBytes, ErrIntegrity)
	}
	return h, nil
}

// decodePage verifies a whole page value and returns its body (aliasing v).
func decodePage(v []byte, want PageID) (pageHeader, []byte, error) {
	h, err := decodePageHeader(v, want)
	if err != nil {
		return h, nil, err
	}
	body := v[pageHeaderSize:]
	if got := crc32.Checksum(body, castagnoli); got != h.crc {
		return h, nil, fmt.Errorf("page %v gen %d: body checksum %08x, stored %08x: %w", want, h.gen, got, h.crc, ErrIntegrity)
	}
	return h, body, nil
}

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
