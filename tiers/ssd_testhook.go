package tiers

import (
	"context"
	"fmt"
)

// CorruptForTest is for tests only (of this package and of the daemon): it
// flips one bit of the stored record of id, at byte off of the record (0..47
// the 48-byte header, 48.. the body; a negative off counts back from the
// record's end), in the segment file itself, and syncs it. The next Get of the
// page must return ErrIntegrity. It refuses offsets outside the record.
func (s *SSD) CorruptForTest(ctx context.Context, id PageID, off int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	e, err := s.lookup(id)
	if err != nil {
		return err
	}
	if off < 0 {
		off += int(e.recordLen())
	}
	if off < 0 || int64(off) >= e.recordLen() {
		return fmt.Errorf("page %v: offset %d outside its %d-byte record: %w", id, off, e.recordLen(), ErrRange)
	}
	seg := s.segs.get(e.seg)
	if seg == nil {
		return fmt.Errorf("page %v: segment %d: %w", id, e.seg, ErrNotFound)
	}
	var b [1]byte
	if _, err := seg.f.ReadAt(b[:], e.off+int64(off)); err != nil {
		return fmt.Errorf("page %v: %w", id, err)
	}
	b[0] ^= 0x40
	if _, err := seg.f.WriteAt(b[:], e.off+int64(off)); err != nil {
		return fmt.Errorf("page %v: %w", id, err)
	}
	return fdatasync(seg.f)
}
