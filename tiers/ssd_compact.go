package tiers

import (
	"errors"
	"fmt"
	"sort"

	badger "github.com/dgraph-io/badger/v4"
)

// compactBatch bounds one move step: records read into memory, written to the
// active segment, synced and re-pointed in one index commit (while writers'
// index commits wait).
const (
	// garbageKick is how much garbage written records leave behind before
	// a GC round starts without waiting for the timer. (An active segment
	// of at least one growth step that is half garbage is sealed by a
	// round, so it can be compacted.)
	garbageKick         = 16 << 20
	compactBatchRecords = 64
	compactBatchBytes   = 16 << 20
)

// ref is one live record compaction moves: which index entry names it.
type ref struct {
	key  []byte // index key
	id   PageID // pages and page deletions
	name string // metadata and metadata deletions
	sess uint64 // session deletions
	e    indexEntry
}

// current reports whether the in-memory index still names r's record
// (cacheMu held).
func (s *SSD) current(r ref) bool {
	var e indexEntry
	ok := false
	switch r.e.kind {
	case kindPage:
		e, ok = s.cache[r.id]
	case kindDelPage:
		e, ok = s.tombP[r.id]
	case kindDelSession:
		e, ok = s.tombS[r.sess]
	case kindDelMeta:
		e, ok = s.tombM[r.name]
	case kindMeta, kindMetaDelta:
		return s.metas[r.name].find(r.e) >= 0
	}
	return ok && e == r.e
}

// setRef points r's index entry at e (cacheMu held).
func (s *SSD) setRef(r ref, e indexEntry) {
	switch r.e.kind {
	case kindPage:
		s.cache[r.id] = e
	case kindDelPage:
		s.tombP[r.id] = e
	case kindDelSession:
		s.tombS[r.sess] = e
	case kindDelMeta:
		s.tombM[r.name] = e
	case kindMeta, kindMetaDelta:
		m := s.metas[r.name]
		if i := m.find(r.e); i >= 0 {
			s.metas[r.name] = m.with(i, e)
		}
	}
}

// dropRef removes a deletion record's entry (cacheMu held).
func (s *SSD) dropRef(r ref) {
	switch r.e.kind {
	case kindDelPage:
		delete(s.tombP, r.id)
	case kindDelSession:
		delete(s.tombS, r.sess)
	case kindDelMeta:
		delete(s.tombM, r.name)
	}
}

// refsIn lists the live records in segment id.
func (s *SSD) refsIn(id uint32) []ref {
	s.cacheMu.RLock()
	defer s.cacheMu.RUnlock()
	var out []ref
	for pid, e := range s.cache {
		if e.seg == id {
			out = append(out, ref{key: pageKey(pid), id: pid, e: e})
		}
	}
	for pid, e := range s.tombP {
		if e.seg == id {
			out = append(out, ref{key: idKey(tombPPrefix, pid), id: pid, e: e})
		}
	}
	for sess, e := range s.tombS {
		if e.seg == id {
			out = append(out, ref{key: sessionKey(tombSPrefix, sess), sess: sess, e: e})
		}
	}
	for n, e := range s.tombM {
		if e.seg == id {
			out = append(out, ref{key: tombMKey(n), name: n, e: e})
		}
	}
	for n, m := range s.metas {
		for _, e := range m.ents {
			if e.seg == id {
				out = append(out, ref{key: metaKey(n), name: n, e: e})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].e.off < out[j].e.off })
	return out
}

// compact moves the live records out of every sealed segment whose live
// bytes are at most 1-GCDiscardRatio of its used size and deletes the file.
// Records are copied verbatim (header and body, the body unverified), so a
// damaged body stays detectably damaged at its new place; a record whose
// header no longer verifies keeps its segment from being deleted.
func (s *SSD) compact() error {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	s.flushIndex() // records whose index commit is queued count as in flight
	s.segs.sealIfGarbage(1-s.cfg.GCDiscardRatio, min(s.cfg.SegmentBytes, minSealBytes))
	cands := s.segs.candidates(1 - s.cfg.GCDiscardRatio)
	ids := make([]uint32, 0, len(cands))
	for id := range cands {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var errs []error
	for _, id := range ids {
		if err := s.compactSegment(cands[id]); err != nil {
			errs = append(errs, fmt.Errorf("ssd: compact segment %d: %w", id, err))
			continue
		}
		s.compacted.Add(1)
	}
	return errors.Join(errs...)
}

// droppable reports whether a deletion record of sequence number seq in
// segment own covers nothing any more: every record it covers has a lower
// sequence number and was written (or moved, while still live) into a
// segment started before it, so once no other segment that old exists, it
// has nothing left to cover.
func (s *SSD) droppable(seq uint64, own uint32) bool {
	s.segs.mu.Lock()
	defer s.segs.mu.Unlock()
	for id, seg := range s.segs.segs {
		if id != own && seg.birth <= seq {
			return false
		}
	}
	return true
}

func (s *SSD) compactSegment(seg *segment) error {
	refs := s.refsIn(seg.id)
	var moves, drops []ref
	for _, r := range refs {
		switch r.e.kind {
		case kindDelPage, kindDelSession, kindDelMeta:
			if s.droppable(r.e.seq, seg.id) {
				drops = append(drops, r)
				continue
			}
		}
		moves = append(moves, r)
	}
	for len(moves) > 0 {
		n, bytes := 0, int64(0)
		for n < len(moves) && n < compactBatchRecords && (n == 0 || bytes+moves[n].e.recordLen() <= compactBatchBytes) {
			bytes += moves[n].e.recordLen()
			n++
		}
		if err := s.moveBatch(seg, moves[:n]); err != nil {
			return err
		}
		moves = moves[n:]
	}
	if len(drops) > 0 {
		if err := s.dropDeletions(seg, drops); err != nil {
			return err
		}
	}
	// The index entries that no longer name this segment must be on disk
	// before it goes, or a restart would find entries naming a missing
	// file (and rebuild).
	if err := s.checkpointLocked(); err != nil {
		return err
	}
	if rest := s.refsIn(seg.id); len(rest) > 0 {
		return fmt.Errorf("%d live records still there (moved in by a race); next round", len(rest))
	}
	return s.segs.remove(seg)
}

// moveBatch copies the records of batch out of seg into the active segment
// and re-points the entries still naming them, holding idx exclusively so no
// write commits in between. A record changed meanwhile is not copied at all:
// a copy nothing points at would be a valid-looking record a rebuild could
// mistake for live.
func (s *SSD) moveBatch(seg *segment, batch []ref) error {
	bufs := make([][]byte, len(batch))
	for i, r := range batch {
		bufs[i] = make([]byte, r.e.recordLen())
		if err := readAt(seg, bufs[i], r.e.off); err != nil {
			return err
		}
		h, err := parseRecHeader(bufs[i])
		if err == nil {
			err = checkEntry(h, r.e, fmt.Sprintf("%s record", r.e.kind), seg.id)
		}
		if err != nil {
			// Never deleted: the segment stays until fsck or an operator
			// decides; reads of the record report it.
			return fmt.Errorf("keeping the segment: %w", err)
		}
	}
	s.idx.Lock()
	defer s.idx.Unlock()
	var keep []int
	s.cacheMu.RLock()
	for i, r := range batch {
		if s.current(r) {
			keep = append(keep, i)
		}
	}
	s.cacheMu.RUnlock()
	if len(keep) == 0 {
		return nil
	}
	kinds := make([]recordKind, len(keep))
	lens := make([]int64, len(keep))
	for j, i := range keep {
		kinds[j], lens[j] = batch[i].e.kind, batch[i].e.recordLen()
	}
	locs := make([]loc, len(keep))
	if err := s.segs.reserveFloor(kinds, lens, locs, false, s.segs.floor/2); err != nil {
		return err
	}
	var err error
	for j, i := range keep {
		if err = writeSmall(locs[j], bufs[i]); err != nil {
			break
		}
	}
	if err == nil {
		err = syncSegments(locs)
	}
	if err != nil {
		s.segs.settle(locs, lens, false, nil)
		return err
	}
	moved := make([]indexEntry, len(keep))
	// Several records of one name may move in one batch: its index value
	// is built from all their moves.
	metas := map[string]metaRef{}
	s.cacheMu.RLock()
	for j, i := range keep {
		r := batch[i]
		ne := r.e
		ne.seg, ne.off = locs[j].seg.id, locs[j].off
		moved[j] = ne
		if isMetaKind(r.e.kind) {
			m, ok := metas[r.name]
			if !ok {
				m = s.metas[r.name]
			}
			if i := m.find(r.e); i >= 0 { // current: checked under idx, held since
				m = m.with(i, ne)
			}
			metas[r.name] = m
		}
	}
	s.cacheMu.RUnlock()
	err = s.db.Update(func(txn *badger.Txn) error {
		for j, i := range keep {
			r := batch[i]
			v := encodeIndex(moved[j])
			if isMetaKind(r.e.kind) {
				v = encodeMetaRef(metas[r.name])
			}
			if err := txn.Set(r.key, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.segs.settle(locs, lens, false, nil)
		return fmt.Errorf("re-point index: %w", err)
	}
	var gone int64
	s.cacheMu.Lock()
	for j, i := range keep {
		s.setRef(batch[i], moved[j])
		gone += lens[j]
	}
	s.cacheMu.Unlock()
	s.segs.settle(locs, lens, true, map[uint32]int64{seg.id: gone})
	s.changed.Store(true)
	return nil
}

// dropDeletions removes deletion records that cover nothing any more.
func (s *SSD) dropDeletions(seg *segment, drops []ref) error {
	s.idx.Lock()
	defer s.idx.Unlock()
	var gone int64
	err := s.db.Update(func(txn *badger.Txn) error {
		s.cacheMu.RLock()
		defer s.cacheMu.RUnlock()
		for _, r := range drops {
			if s.current(r) {
				if err := txn.Delete(r.key); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("drop deletion records: %w", err)
	}
	s.cacheMu.Lock()
	for _, r := range drops {
		if s.current(r) {
			s.dropRef(r)
			gone += r.e.recordLen()
		}
	}
	s.cacheMu.Unlock()
	s.segs.release(map[uint32]int64{seg.id: gone})
	s.changed.Store(true)
	return nil
}

// Compactions is the number of journal segments GC has emptied and deleted.
func (s *SSD) Compactions() uint64 { return s.compacted.Load() }

// SegmentUsage reports the journal's segment files: how many, the bytes
// allocated to them on disk, and the bytes of records the index points at
// (the rest is garbage or not yet written).
func (s *SSD) SegmentUsage() (files int, allocated, live int64) {
	s.flushIndex() // live bytes move when the index commits
	return s.segs.usage()
}
