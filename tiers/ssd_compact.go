package tiers

import (
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
)

// compactBatch bounds one move step: records read into memory, written to the
// active segment, synced and re-pointed in one index commit.
const (
	compactBatchPages = 64
	compactBatchBytes = 64 << 20
)

type move struct {
	key []byte
	id  PageID
	e   indexEntry
}

// compact moves the live records out of every sealed segment whose live
// bytes are at most 1-GCDiscardRatio of its size and deletes the file.
// Records are copied verbatim (header and body, unverified), so a corrupt
// record stays detectably corrupt at its new place instead of being dropped
// or, worse, re-checksummed.
func (s *SSD) compact() error {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	cands := s.segs.candidates(1 - s.cfg.GCDiscardRatio)
	if len(cands) == 0 {
		return nil
	}
	moves := map[uint32][]move{}
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{pagePrefix}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			id := pageIDOf(item.Key())
			_ = item.Value(func(v []byte) error {
				if !isIndexValue(v) {
					return nil
				}
				if e, err := decodeIndex(v, id); err == nil && cands[e.seg] != nil {
					moves[e.seg] = append(moves[e.seg], move{key: item.KeyCopy(nil), id: id, e: e})
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ssd: compaction: scan index: %w", err)
	}
	var errs []error
	for id, seg := range cands {
		n, err := s.moveOut(seg, moves[id])
		if err != nil {
			errs = append(errs, fmt.Errorf("ssd: compact segment %d: %w", id, err))
			continue
		}
		// The entries now naming the new places must be on disk before the
		// old copies go.
		if n > 0 && !s.cfg.SyncWrites {
			if err := s.db.Sync(); err != nil {
				errs = append(errs, fmt.Errorf("ssd: compact segment %d: sync index: %w", id, err))
				continue
			}
		}
		if err := s.segs.remove(seg); err != nil {
			errs = append(errs, err)
			continue
		}
		s.compacted.Add(1)
	}
	return errors.Join(errs...)
}

// moveOut rewrites the given records of seg into the active segment and
// re-points each index entry that still names its old place; an entry a
// write or delete changed meanwhile is left alone (the newer write wins) and
// its copy is dead on arrival. It returns how many entries it re-pointed.
func (s *SSD) moveOut(seg *segment, moves []move) (int, error) {
	total := 0
	for len(moves) > 0 {
		n, bytes := 0, int64(0)
		for n < len(moves) && n < compactBatchPages && (n == 0 || bytes+moves[n].e.recordLen() <= compactBatchBytes) {
			bytes += moves[n].e.recordLen()
			n++
		}
		batch := moves[:n]
		moves = moves[n:]
		bufs := make([][]byte, n)
		lens := make([]int64, n)
		for i, m := range batch {
			lens[i] = m.e.recordLen()
			bufs[i] = make([]byte, lens[i])
			if err := readFull(seg, bufs[i], m.e.off, m.id); err != nil {
				return total, err
			}
		}
		locs := make([]loc, n)
		if err := s.segs.reserve(lens, locs); err != nil {
			return total, err
		}
		var err error
		for i, l := range locs {
			if _, werr := l.seg.f.WriteAt(bufs[i], l.off); werr != nil {
				err = fmt.Errorf("write page %v to segment %d: %w", batch[i].id, l.seg.id, werr)
				break
			}
			l.seg.dirty.Store(true)
		}
		if err == nil {
			err = syncSegments(locs)
		}
		if err != nil {
			s.segs.settle(locs, lens, false, nil)
			return total, err
		}
		moved, err := s.repoint(batch, locs)
		if err != nil {
			s.segs.settle(locs, lens, false, nil)
			return total, err
		}
		var keep, drop []loc
		var keepLens, dropLens []int64
		var gone int64
		for i, ok := range moved {
			if ok {
				keep, keepLens = append(keep, locs[i]), append(keepLens, lens[i])
				gone += lens[i]
				total++
			} else {
				drop, dropLens = append(drop, locs[i]), append(dropLens, lens[i])
			}
		}
		s.segs.settle(keep, keepLens, true, map[uint32]int64{seg.id: gone})
		s.segs.settle(drop, dropLens, false, nil)
	}
	return total, nil
}

// repoint commits new entries for the moved records whose entries are
// unchanged, holding idx exclusively so no write commits in between.
func (s *SSD) repoint(batch []move, locs []loc) ([]bool, error) {
	s.idx.Lock()
	defer s.idx.Unlock()
	moved := make([]bool, len(batch))
	err := s.db.Update(func(txn *badger.Txn) error {
		for i, m := range batch {
			item, err := txn.Get(m.key)
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			var cur indexEntry
			same := false
			_ = item.Value(func(v []byte) error {
				if isIndexValue(v) {
					var derr error
					cur, derr = decodeIndex(v, m.id)
					same = derr == nil && cur.seg == m.e.seg && cur.off == m.e.off && cur.gen == m.e.gen
				}
				return nil
			})
			if !same {
				continue
			}
			ne := m.e
			ne.seg, ne.off = locs[i].seg.id, locs[i].off
			if err := txn.Set(m.key, encodeIndex(ne)); err != nil {
				return err
			}
			moved[i] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("re-point index: %w", err)
	}
	s.cacheMu.Lock()
	for i, m := range batch {
		if moved[i] {
			ne := m.e
			ne.seg, ne.off = locs[i].seg.id, locs[i].off
			s.cache[m.id] = ne
		}
	}
	s.cacheMu.Unlock()
	return moved, nil
}

// Compactions is the number of page segments GC has emptied and deleted.
func (s *SSD) Compactions() uint64 { return s.compacted.Load() }

// SegmentUsage reports the page segment files: how many, the bytes allocated
// to them on disk, and the bytes of records the index points at (the rest is
// garbage or not yet written).
func (s *SSD) SegmentUsage() (files int, allocated, live int64) { return s.segs.usage() }
