package tiers

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// The journal: every change to the SSD tier is one self-describing record
// appended to a segment file (Dir/pages/NNNNNNNN.seg). Records are the source
// of truth; the Badger index (ssd_index.go) only says where the latest record
// of each key is, and is rebuilt from the segments when it is missing,
// damaged or older than them (ssd_recover.go).
//
// Record header, 48 bytes, little-endian (the page header of format version 1
// with the eight reserved bytes now holding the journal sequence number):
//
//	0  magic   [4]  record kind: "FMPG" page, "FMMR" session metadata,
//	                "FMDP" page deleted, "FMDS" session's pages deleted,
//	                "FMDM" metadata deleted, "FMSG" segment start,
//	                "FMMD" session metadata delta
//	4  version u16  2 (1: a page record written before the journal, seq 0)
//	6  hdrlen  u16  48
//	8  session u64
//	16 page    u32  page number; for FMMR, FMMD and FMDM the name's length
//	20 length  u32  body bytes
//	24 gen     u64  page generation; for FMMD the seq of the record it
//	                follows (its chain's full record or previous delta);
//	                0 for the other kinds
//	32 bodycrc u32  CRC32C of the body
//	36 seq     u64  journal sequence number: orders records of one key and
//	                tells which records a deletion covers (FMSG: the first
//	                sequence number the segment was opened with)
//	44 hdrcrc  u32  CRC32C of bytes 0..44
//
// Bodies: FMPG the page bytes; FMMR and FMMD the name, then the blob (FMMD:
// what changed since the record it follows, opaque here); FMDM the name;
// the others none. Page records start on 4 KiB boundaries (so a body can be
// mapped and copied page-aligned), all others on 512-byte boundaries; the
// gaps are zeros. A writer writes the body before the header, so a record cut
// short by a crash has no header and reads as a gap.
const (
	recordVersion     = 2
	legacyVersion     = 1
	smallAlign        = 512
	maxMetaNameBytes  = maxMetaName
	segStartRecordLen = pageHeaderSize
)

// recordKind says what a journal record is.
type recordKind uint8

const (
	kindNone recordKind = iota
	kindPage
	kindMeta
	kindDelPage
	kindDelSession
	kindDelMeta
	kindSegment
	kindMetaDelta // after kindSegment: index entries store kinds by number
)

var kindMagic = [...]string{
	kindPage:       "FMPG",
	kindMeta:       "FMMR",
	kindDelPage:    "FMDP",
	kindDelSession: "FMDS",
	kindDelMeta:    "FMDM",
	kindSegment:    "FMSG",
	kindMetaDelta:  "FMMD",
}

func (k recordKind) String() string {
	switch k {
	case kindPage:
		return "page"
	case kindMeta:
		return "metadata"
	case kindDelPage:
		return "page deletion"
	case kindDelSession:
		return "session deletion"
	case kindDelMeta:
		return "metadata deletion"
	case kindSegment:
		return "segment start"
	case kindMetaDelta:
		return "metadata delta"
	}
	return "unknown"
}

func kindOf(magic []byte) recordKind {
	for k := kindPage; k <= kindMetaDelta; k++ {
		if string(magic) == kindMagic[k] {
			return k
		}
	}
	return kindNone
}

// alignFor is where a record of kind k may start.
func alignFor(k recordKind) int64 {
	if k == kindPage {
		return recordAlign
	}
	return smallAlign
}

// recHeader is a decoded record header.
type recHeader struct {
	kind    recordKind
	version uint16
	session uint64
	page    uint32
	length  uint32
	gen     uint64
	crc     uint32
	seq     uint64
}

func (h recHeader) recordLen() int64 { return pageHeaderSize + int64(h.length) }

func (h recHeader) pageID() PageID { return PageID{Session: h.session, Page: h.page} }

func putRecHeader(dst []byte, h recHeader) {
	_ = dst[pageHeaderSize-1]
	copy(dst[0:4], kindMagic[h.kind])
	binary.LittleEndian.PutUint16(dst[4:], recordVersion)
	binary.LittleEndian.PutUint16(dst[6:], pageHeaderSize)
	binary.LittleEndian.PutUint64(dst[8:], h.session)
	binary.LittleEndian.PutUint32(dst[16:], h.page)
	binary.LittleEndian.PutUint32(dst[20:], h.length)
	binary.LittleEndian.PutUint64(dst[24:], h.gen)
	binary.LittleEndian.PutUint32(dst[32:], h.crc)
	binary.LittleEndian.PutUint64(dst[36:], h.seq)
	binary.LittleEndian.PutUint32(dst[44:], crc32.Checksum(dst[:44], castagnoli))
}

// isZeroHeader reports a gap: no record was ever written here.
func isZeroHeader(b []byte) bool {
	for _, c := range b[:pageHeaderSize] {
		if c != 0 {
			return false
		}
	}
	return true
}

// parseRecHeader decodes and checks a record header read from a segment. It
// never allocates beyond the error; the bytes may be anything.
func parseRecHeader(b []byte) (recHeader, error) {
	var h recHeader
	if len(b) < pageHeaderSize {
		return h, fmt.Errorf("record header of %d B: %w", len(b), ErrIntegrity)
	}
	h.kind = kindOf(b[0:4])
	if h.kind == kindNone {
		return h, fmt.Errorf("record magic %q: %w", b[0:4], ErrIntegrity)
	}
	if got, want := crc32.Checksum(b[:44], castagnoli), binary.LittleEndian.Uint32(b[44:]); got != want {
		return h, fmt.Errorf("%s record header checksum %08x, stored %08x: %w", h.kind, got, want, ErrIntegrity)
	}
	h.version = binary.LittleEndian.Uint16(b[4:])
	if h.version != recordVersion && !(h.version == legacyVersion && h.kind == kindPage) {
		return h, fmt.Errorf("%s record format version %d unsupported: %w", h.kind, h.version, ErrIntegrity)
	}
	if hl := binary.LittleEndian.Uint16(b[6:]); hl != pageHeaderSize {
		return h, fmt.Errorf("%s record header length %d: %w", h.kind, hl, ErrIntegrity)
	}
	h.session = binary.LittleEndian.Uint64(b[8:])
	h.page = binary.LittleEndian.Uint32(b[16:])
	h.length = binary.LittleEndian.Uint32(b[20:])
	h.gen = binary.LittleEndian.Uint64(b[24:])
	h.crc = binary.LittleEndian.Uint32(b[32:])
	if h.version == recordVersion {
		h.seq = binary.LittleEndian.Uint64(b[36:])
	}
	switch h.kind {
	case kindPage:
		if h.length == 0 || h.length > MaxPageBytes || h.gen == 0 {
			return h, fmt.Errorf("page %v record: %d B, generation %d: %w", h.pageID(), h.length, h.gen, ErrIntegrity)
		}
	case kindMeta, kindMetaDelta:
		if h.page == 0 || h.page > maxMetaNameBytes || int64(h.length) < int64(h.page) || int64(h.length) > int64(h.page)+MaxMetaBytes {
			return h, fmt.Errorf("%s record: name %d B, body %d B: %w", h.kind, h.page, h.length, ErrIntegrity)
		}
		if h.kind == kindMetaDelta && h.gen >= h.seq && h.version == recordVersion {
			return h, fmt.Errorf("metadata delta record seq %d follows seq %d: %w", h.seq, h.gen, ErrIntegrity)
		}
	case kindDelMeta:
		if h.page == 0 || h.page > maxMetaNameBytes || h.length != h.page {
			return h, fmt.Errorf("metadata deletion record: name %d B, body %d B: %w", h.page, h.length, ErrIntegrity)
		}
	default:
		if h.length != 0 {
			return h, fmt.Errorf("%s record with a %d B body: %w", h.kind, h.length, ErrIntegrity)
		}
	}
	return h, nil
}

// checkBody verifies a record's body against its header.
func checkBody(h recHeader, body []byte) error {
	if int64(len(body)) != int64(h.length) {
		return fmt.Errorf("%s record: body %d B, header says %d: %w", h.kind, len(body), h.length, ErrIntegrity)
	}
	if c := crc32.Checksum(body, castagnoli); c != h.crc {
		return fmt.Errorf("%s record seq %d: body checksum %08x, stored %08x: %w", h.kind, h.seq, c, h.crc, ErrIntegrity)
	}
	return nil
}

// encodeRecord returns a whole small record (header and body), for the kinds
// other than pages. body is name || blob for metadata records.
func encodeRecord(h recHeader, body []byte) []byte {
	out := make([]byte, pageHeaderSize+len(body))
	copy(out[pageHeaderSize:], body)
	h.length = uint32(len(body))
	h.crc = crc32.Checksum(body, castagnoli)
	putRecHeader(out, h)
	return out
}

// decodeRecord verifies a whole record (header, then body) and returns its
// header and body (aliasing v). It is the decoder every record read from disk
// goes through, and the one the fuzz target drives.
func decodeRecord(v []byte) (recHeader, []byte, error) {
	h, err := parseRecHeader(v)
	if err != nil {
		return h, nil, err
	}
	if int64(len(v)) < h.recordLen() {
		return h, nil, fmt.Errorf("%s record of %d B cut to %d: %w", h.kind, h.recordLen(), len(v), ErrIntegrity)
	}
	body := v[pageHeaderSize:h.recordLen()]
	if err := checkBody(h, body); err != nil {
		return h, nil, err
	}
	return h, body, nil
}

// metaBody splits a metadata record's body into name and blob.
func metaBody(h recHeader, body []byte) (string, []byte) {
	return string(body[:h.page]), body[h.page:]
}
