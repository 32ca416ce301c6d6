package tiers

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/table"
	"golang.org/x/sys/unix"
)

// RecoveryReport says what opening the SSD tier found and did: the check
// flashmemd runs at every start and `flashmemd fsck` runs offline.
type RecoveryReport struct {
	Segments int // journal segment files
	Records  int // records read from the journal (replayed tail, or all on a rebuild)
	Pages    int // pages the index holds
	Sessions int // sessions with pages
	Metas    int // metadata names

	// Damaged counts records (or regions of a segment) that failed
	// verification; each was copied to Quarantine and never applied.
	Damaged    int
	Quarantine []string // files under Dir/quarantine written by this open
	// DamagedSessions are sessions a damaged record's (intact) header
	// names; Unattributed counts damaged regions whose header is
	// unreadable, so they may belong to any session.
	DamagedSessions []uint64
	Unattributed    int

	// LostMetas are metadata names an intact index held whose records the
	// journal no longer has (a segment deleted or cut short): lost, not
	// guessed. OlderMetas read older than the index said was written.
	// LostPages counts pages likewise gone or older; Redeleted counts
	// deletions whose records were lost, written again so nothing they
	// deleted comes back.
	LostMetas, OlderMetas []string
	LostPages, Redeleted  int

	IndexRebuilt bool   // the index was rebuilt from the journal
	Reason       string // why (empty when replayed)
	MovedAside   string // where the old index files went
	Replayed     int    // records applied to the index from the journal's tail
	Torn         int    // records the crash cut short (after the checkpoint): skipped
	Took         time.Duration
	// Verified is set by VerifyAll: page bodies checked, and how many failed.
	Verified, BadBodies int
}

func (r RecoveryReport) String() string {
	idx := "index ok, replayed " + fmt.Sprint(r.Replayed) + " records"
	if r.IndexRebuilt {
		idx = "index rebuilt (" + r.Reason + ")"
	}
	return fmt.Sprintf("%d segments, %d records read, %d pages in %d sessions, %d metadata names, %d damaged (%d unattributed), %s in %v",
		r.Segments, r.Records, r.Pages, r.Sessions, r.Metas, r.Damaged, r.Unattributed, idx, r.Took.Round(time.Millisecond))
}

// recover opens the journal and the index and brings the index up to date.
func (s *SSD) recover() error {
	start := time.Now()
	cfg := s.cfg
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("ssd: %s: %w", cfg.Dir, err)
	}
	// One process at a time: a second one must not take a live index for a
	// damaged one and rebuild it.
	lock, err := os.OpenFile(filepath.Join(cfg.Dir, "journal.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("ssd: %s: %w", cfg.Dir, err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return fmt.Errorf("ssd: %s is in use by another process (stop that flashmemd first): %w", cfg.Dir, ErrBusy)
	}
	s.lock = lock
	segs, err := openSegStore(filepath.Join(cfg.Dir, segDirName), cfg.SegmentBytes, cfg.MinFreeBytes)
	if err != nil {
		return err
	}
	s.segs = segs
	s.report.Segments = len(segs.segs)
	reason := ""
	if err := preflightTables(badgerDir(cfg.Dir)); err != nil {
		// Badger would verify the table in a goroutine of its own, where a
		// damaged table can crash the process instead of failing the open.
		reason = "index table damaged: " + err.Error()
	} else if p := manifestProblem(badgerDir(cfg.Dir)); p != "" {
		reason = "index tables lost: " + p
	} else if s.db, err = openBadger(cfg); err != nil {
		reason = "index unreadable: " + err.Error()
	} else {
		reason = s.loadIndex()
	}
	var ck checkpoint
	if reason == "" {
		if ck, reason = s.checkCheckpoint(); reason != "" {
			s.keepOldIndex()
		}
	}
	if reason != "" {
		if err := s.rebuild(reason); err != nil {
			return err
		}
	} else if err := s.replay(ck); err != nil {
		return err
	}
	s.finishRecovery()
	if err := s.checkpointLocked(); err != nil {
		return err
	}
	s.report.Took = time.Since(start)
	lg := cfg.Logger.With("dir", cfg.Dir)
	if s.report.IndexRebuilt {
		lg.Warn("SSD index rebuilt from the journal", "reason", s.report.Reason, "moved_aside", s.report.MovedAside,
			"records", s.report.Records, "pages", s.report.Pages, "metas", s.report.Metas, "took", s.report.Took)
	}
	if s.report.Damaged > 0 {
		lg.Error("damaged journal records quarantined (never served); see `flashmemd fsck`", "damaged", s.report.Damaged,
			"unattributed", s.report.Unattributed, "sessions", s.report.DamagedSessions, "files", s.report.Quarantine)
	}
	if s.report.Segments > 0 {
		lg.Info("SSD tier recovered", "report", s.report.String())
	}
	return nil
}

func openBadger(cfg SSDConfig) (db *badger.DB, err error) {
	// Badger creates its files with the process umask and has no option
	// for their mode; the index is private.
	defer unix.Umask(unix.Umask(0o077))
	opts := badger.DefaultOptions(badgerDir(cfg.Dir)).
		WithLogger(badgerLogger{cfg.Logger}).
		WithSyncWrites(false).
		WithValueThreshold(ssdValueLimit).
		WithValueLogFileSize(cfg.ValueLogFileSize).
		WithMemTableSize(cfg.MemTableSize).
		WithBlockCacheSize(cfg.BlockCacheSize).
		WithNumVersionsToKeep(1).
		// A flipped byte in a table is found when the table is opened
		// (preflightTables has already checked each one), not by a panic in
		// an iterator. (OnTableAndBlockRead dereferences a nil block when a
		// check fails, badger v4.9.6 table.go:711.)
		WithChecksumVerificationMode(options.OnTableRead).
		WithCompression(options.None).
		// No transaction reads and then writes the same key for a decision
		// (compaction's check-and-move is guarded by SSD.idx instead), so
		// conflict tracking is pure overhead.
		WithDetectConflicts(false)
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("badger panicked opening the index: %v", r)
		}
	}()
	db, err = badger.Open(opts)
	if err != nil {
		return nil, err // Badger may hand back a half-made DB with its error
	}
	return db, nil
}

// preflightTables verifies every Badger table's checksums before Badger
// opens them, in this goroutine, so a damaged table is an error here.
func preflightTables(dir string) error {
	paths, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	for _, p := range paths {
		id, ok := table.ParseFileID(filepath.Base(p))
		if !ok {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(p), err)
		}
		err = func() (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("unreadable (%v)", r)
				}
			}()
			t, err := table.OpenInMemoryTable(data, id, &table.Options{ChkMode: options.OnTableRead})
			if err != nil {
				return err
			}
			return t.VerifyChecksum()
		}()
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(p), err)
		}
	}
	return nil
}

// manifestProblem checks Badger's MANIFEST against the tables on disk before
// Badger opens: Badger opens without the tables a lost or cut MANIFEST no
// longer lists (deleting them, even reusing their numbers), and the index
// silently misses their keys.
func manifestProblem(dir string) string {
	paths, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	if len(paths) == 0 {
		return ""
	}
	f, err := os.Open(filepath.Join(dir, badger.ManifestFilename))
	if err != nil {
		return fmt.Sprintf("%d tables but no readable MANIFEST (%v)", len(paths), err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	var m badger.Manifest
	var end int64
	err = func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("unreadable (%v)", r)
			}
		}()
		m, end, err = badger.ReplayManifestFile(f, 0, badger.DefaultOptions(dir))
		return err
	}()
	if err != nil {
		return "MANIFEST: " + err.Error()
	}
	if end < st.Size() {
		return fmt.Sprintf("MANIFEST cut at %d of %d B", end, st.Size())
	}
	for _, p := range paths {
		if id, ok := table.ParseFileID(filepath.Base(p)); ok {
			if _, listed := m.Tables[id]; !listed {
				return fmt.Sprintf("table %s is not in the MANIFEST", filepath.Base(p))
			}
		}
	}
	return ""
}

// loadIndex reads every index entry into memory. Any entry that does not
// decode, or names a record the journal cannot have, makes the whole index
// suspect: the returned reason is non-empty and the index is rebuilt.
func (s *SSD) loadIndex() (reason string) {
	defer func() {
		if r := recover(); r != nil {
			reason = fmt.Sprintf("reading the index panicked: %v", r)
		}
	}()
	bad := func(format string, a ...any) error { return fmt.Errorf(format, a...) }
	legacy := false
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			k := item.KeyCopy(nil)
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			key := fmt.Sprintf("%q", k)
			switch {
			case len(k) == pageKeySize && (k[0] == pagePrefix || k[0] == tombPPrefix):
				e, err := decodeIndex(v, key)
				if errors.Is(err, errOldIndex) || (err != nil && bytes.HasPrefix(v, []byte(pageMagic))) {
					legacy = true // rebuilt from the journal's records
					continue
				}
				if err != nil {
					return err
				}
				id := pageIDOf(k)
				if k[0] == pagePrefix && e.kind == kindPage {
					s.cache[id] = e
				} else if k[0] == tombPPrefix && e.kind == kindDelPage {
					s.tombP[id] = e
				} else {
					return bad("%s: entry names a %s record", key, e.kind)
				}
			case len(k) == 9 && k[0] == tombSPrefix:
				e, err := decodeIndex(v, key)
				if err != nil {
					return err
				}
				if e.kind != kindDelSession {
					return bad("%s: entry names a %s record", key, e.kind)
				}
				s.tombS[beUint64(k[1:])] = e
			case len(k) > 1 && k[0] == metaPrefix:
				if bytes.HasPrefix(v, []byte(metaMagic)) {
					// Format 1 kept metadata blobs in the index itself:
					// carried over into the journal after the rebuild.
					blob, err := decodeMeta(v, string(k[1:]))
					if err != nil {
						return err
					}
					s.legacyMetas[string(k[1:])] = blob
					legacy = true
					continue
				}
				m, err := decodeMetaRef(v, key)
				if err != nil {
					return err
				}
				s.metas[string(k[1:])] = m
			case len(k) > 1 && k[0] == tombMPrefix:
				e, err := decodeIndex(v, key)
				if err != nil {
					return err
				}
				if e.kind != kindDelMeta {
					return bad("%s: entry names a %s record", key, e.kind)
				}
				s.tombM[string(k[1:])] = e
			case bytes.Equal(k, ckptKey):
			default:
				return bad("unexpected index key %s", key)
			}
		}
		return nil
	})
	if err == nil && legacy {
		err = errors.New("index of format 1 (before the journal)")
	}
	if err != nil {
		s.resetMaps()
		return err.Error()
	}
	// Every entry must name a record inside an existing segment.
	check := func(what string, e indexEntry) error {
		seg := s.segs.segs[e.seg]
		if seg == nil {
			return fmt.Errorf("%s names segment %d, which is missing", what, e.seg)
		}
		if e.off+e.recordLen() > seg.size {
			return fmt.Errorf("%s names segment %d offset %d, past its %d B", what, e.seg, e.off, seg.size)
		}
		return nil
	}
	for id, e := range s.cache {
		err = errors.Join(err, check("page "+id.String(), e))
	}
	for n, m := range s.metas {
		for _, e := range m.ents {
			err = errors.Join(err, check("meta "+n, e))
		}
	}
	for _, e := range s.tombS {
		err = errors.Join(err, check("session deletion", e))
	}
	for _, e := range s.tombP {
		err = errors.Join(err, check("page deletion", e))
	}
	for _, e := range s.tombM {
		err = errors.Join(err, check("meta deletion", e))
	}
	if err != nil {
		s.keepOldIndex()
		s.resetMaps()
		first, _, _ := strings.Cut(err.Error(), "\n")
		return "index is newer than the journal: " + first
	}
	return ""
}

func beUint64(b []byte) uint64 {
	var v uint64
	for _, c := range b[:8] {
		v = v<<8 | uint64(c)
	}
	return v
}

func pageIDOf(key []byte) PageID {
	if len(key) != pageKeySize {
		return PageID{}
	}
	return PageID{Session: beUint64(key[1:]), Page: uint32(key[9])<<24 | uint32(key[10])<<16 | uint32(key[11])<<8 | uint32(key[12])}
}

// checkCheckpoint returns where the replay starts, or a reason to rebuild.
func (s *SSD) checkCheckpoint() (checkpoint, string) {
	var ck checkpoint
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(ckptKey)
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			ck, err = decodeCheckpoint(v)
			return err
		})
	})
	ids := s.segs.ids()
	if errors.Is(err, badger.ErrKeyNotFound) {
		if len(ids) == 0 && len(s.cache)+len(s.metas) == 0 {
			return checkpoint{seg: 0}, "" // a new store
		}
		return ck, "index has no checkpoint (missing or recreated)"
	}
	if err != nil {
		return ck, "index checkpoint unreadable: " + err.Error()
	}
	if seg := s.segs.segs[ck.seg]; seg != nil && ck.off > seg.size {
		return ck, fmt.Sprintf("index checkpoint at segment %d offset %d is past the file's %d B", ck.seg, ck.off, seg.size)
	}
	if len(ids) > 0 && ck.seg > ids[len(ids)-1]+1 {
		return ck, fmt.Sprintf("index checkpoint names segment %d; the journal ends at %d", ck.seg, ids[len(ids)-1])
	}
	if len(ids) > 0 && s.segs.segs[ck.seg] == nil && ck.seg <= ids[len(ids)-1] {
		return ck, fmt.Sprintf("index checkpoint names segment %d, which is missing", ck.seg)
	}
	return ck, ""
}

// scanned is one record (or damaged region) found by scanSegment.
type scanned struct {
	off  int64
	h    recHeader
	body []byte // the body of small records, and of pages when verifying
	err  error  // damaged: header or body failed verification
	end  int64  // end of the record or damaged region
}

// scanSegment walks seg's records from off to the end of the file: a zero
// header is a gap (skipped at 512-byte steps), a valid header a record, any
// other bytes a damaged region that ends at the next valid header. Bodies of
// small records are read and verified; page bodies only if pageBodies.
func scanSegment(seg *segment, from int64, pageBodies bool, fn func(scanned)) {
	size := seg.size
	var hdr [pageHeaderSize]byte
	off := alignUp(from, smallAlign)
	var damagedAt int64 = -1
	flush := func(end int64) {
		if damagedAt >= 0 {
			fn(scanned{off: damagedAt, end: end, err: fmt.Errorf("segment %d offset %d: %d B that are neither a record nor a gap: %w", seg.id, damagedAt, end-damagedAt, ErrIntegrity)})
			damagedAt = -1
		}
	}
	var h recHeader
	for off+pageHeaderSize <= size {
		if _, err := seg.f.ReadAt(hdr[:], off); err != nil {
			break
		}
		if isZeroHeader(hdr[:]) {
			off += smallAlign
			continue
		}
		var err error
		if h, err = parseRecHeader(hdr[:]); err != nil {
			if damagedAt < 0 {
				damagedAt = off
			}
			off += smallAlign
			continue
		}
		flush(off)
		end := off + h.recordLen()
		sc := scanned{off: off, h: h, end: end}
		if end > size {
			sc.err = fmt.Errorf("segment %d offset %d: %s record of %d B runs past the file's %d B: %w", seg.id, off, h.kind, h.recordLen(), size, ErrIntegrity)
			sc.end = size
			fn(sc)
			return
		}
		if h.kind != kindPage || pageBodies {
			body := make([]byte, h.length)
			if _, err := seg.f.ReadAt(body, off+pageHeaderSize); err != nil {
				sc.err = fmt.Errorf("segment %d offset %d: %v: %w", seg.id, off, err, ErrIntegrity)
			} else if err := checkBody(h, body); err != nil {
				sc.err = fmt.Errorf("segment %d offset %d: %w", seg.id, off, err)
			} else {
				sc.body = body
			}
		}
		fn(sc)
		off = alignUp(end, smallAlign)
	}
	flush(min(size, max(off, damagedAt)))
}

// journalState applies records to the in-memory index by the journal's
// rules, in any order: a page's current record is its highest (generation,
// seq) not covered by a later deletion; a metadata name's are its two highest
// seqs not covered by a later deletion.
type journalState struct {
	s        *SSD
	dirty    map[string]bool // index keys to rewrite
	n        int
	metaRecs map[string][]indexEntry // metadata records applied, resolved by finish
}

func newJournalState(s *SSD) *journalState {
	return &journalState{s: s, dirty: map[string]bool{}, metaRecs: map[string][]indexEntry{}}
}

// finish resolves the metadata names the applied records touched: from the
// records the index held and those applied, not covered by a deletion, the
// current chain is the highest-seq full record and the deltas linked after
// it (each naming the seq of the one before; of two naming the same, the
// later — the earlier was a write that failed and was never acknowledged),
// and the fallback chain the same from the full record before it. A delta
// no chain reaches (its predecessor damaged or gone) is not indexed.
func (j *journalState) finish() {
	s := j.s
	for name, recs := range j.metaRecs {
		old, had := s.metas[name]
		var cands []indexEntry
		seen := map[uint64]bool{}
		tomb, dead := s.tombM[name]
		for _, e := range append(append([]indexEntry(nil), old.ents...), recs...) {
			if seen[e.seq] || (dead && tomb.seq > e.seq) {
				continue
			}
			seen[e.seq] = true
			cands = append(cands, e)
		}
		ents := resolveMetaChain(cands)
		switch {
		case len(ents) == 0 && had:
			delete(s.metas, name)
		case len(ents) == 0:
			continue
		case had && slices.Equal(ents, old.ents):
			continue
		default:
			s.metas[name] = newMetaRef(ents...)
		}
		j.mark(metaKey(name))
	}
	j.metaRecs = map[string][]indexEntry{}
}

// resolveMetaChain picks a name's index entries from its candidate records
// (distinct seqs): the previous chain, then the current one (metaRef).
func resolveMetaChain(cands []indexEntry) []indexEntry {
	var bases []indexEntry
	next := map[uint64]indexEntry{} // by the seq a delta follows
	for _, e := range cands {
		if e.kind == kindMeta {
			bases = append(bases, e)
		} else if d, ok := next[e.gen]; !ok || e.seq > d.seq {
			next[e.gen] = e
		}
	}
	slices.SortFunc(bases, func(a, b indexEntry) int { return cmp.Compare(b.seq, a.seq) })
	chain := func(b indexEntry) []indexEntry {
		out := []indexEntry{b}
		for len(out) <= MaxMetaDeltas {
			d, ok := next[out[len(out)-1].seq]
			if !ok {
				break
			}
			out = append(out, d)
		}
		return out
	}
	switch len(bases) {
	case 0:
		return nil
	case 1:
		return chain(bases[0])
	}
	prev := chain(bases[1])
	for len(prev) > 1 && prev[len(prev)-1].seq > bases[0].seq {
		prev = prev[:len(prev)-1]
	}
	return append(prev, chain(bases[0])...)
}

func (j *journalState) mark(k []byte) { j.dirty[string(k)] = true }

func (j *journalState) apply(seg uint32, sc scanned) {
	s, h := j.s, sc.h
	e := indexEntry{seg: seg, length: h.length, off: sc.off, gen: h.gen, crc: h.crc, kind: h.kind, seq: h.seq}
	switch h.kind {
	case kindPage:
		id := h.pageID()
		if t, ok := s.tombS[id.Session]; ok && t.seq > h.seq {
			return
		}
		if t, ok := s.tombP[id]; ok && t.seq > h.seq {
			return
		}
		if cur, ok := s.cache[id]; ok && !newerPage(e, cur) {
			return
		}
		s.cache[id] = e
		j.mark(pageKey(id))
	case kindDelPage:
		id := h.pageID()
		if t, ok := s.tombP[id]; ok && t.seq >= h.seq {
			return
		}
		s.tombP[id] = e
		j.mark(idKey(tombPPrefix, id))
		if cur, ok := s.cache[id]; ok && cur.seq < h.seq {
			delete(s.cache, id)
			j.mark(pageKey(id))
		}
	case kindDelSession:
		if t, ok := s.tombS[h.session]; ok && t.seq >= h.seq {
			return
		}
		s.tombS[h.session] = e
		j.mark(sessionKey(tombSPrefix, h.session))
		for id, cur := range s.cache {
			if id.Session == h.session && cur.seq < h.seq {
				delete(s.cache, id)
				j.mark(pageKey(id))
			}
		}
	case kindMeta, kindMetaDelta:
		name, _ := metaBody(h, sc.body)
		if h.kind == kindMeta {
			e.gen = h.session
		}
		if t, ok := s.tombM[name]; ok && t.seq > h.seq {
			return
		}
		j.metaRecs[name] = append(j.metaRecs[name], e)
	case kindDelMeta:
		name := string(sc.body)
		e.gen = h.session
		if t, ok := s.tombM[name]; ok && t.seq >= h.seq {
			return
		}
		s.tombM[name] = e
		j.mark(tombMKey(name))
		if _, ok := j.metaRecs[name]; !ok {
			j.metaRecs[name] = nil // resolved again in finish
		}
	default:
		return
	}
	j.n++
}

// damaged records a damaged record or region: copied aside, reported.
func (s *SSD) damaged(seg *segment, sc scanned) {
	s.report.Damaged++
	if sc.h.kind != kindNone {
		s.report.DamagedSessions = appendUnique(s.report.DamagedSessions, sc.h.session)
	} else {
		s.report.Unattributed++
	}
	qdir := filepath.Join(s.cfg.Dir, "quarantine")
	name := fmt.Sprintf("%08d-%012d.rec", seg.id, sc.off)
	path := filepath.Join(qdir, name)
	if _, err := os.Stat(path); err == nil {
		s.report.Quarantine = append(s.report.Quarantine, path)
		return
	}
	n := min(sc.end-sc.off, MaxPageBytes+2*recordAlign)
	buf := make([]byte, max(n, 0))
	if _, err := seg.f.ReadAt(buf, sc.off); err != nil && n > 0 {
		s.cfg.Logger.Warn("reading a damaged record to quarantine it", "segment", seg.id, "offset", sc.off, "err", err)
	}
	if err := os.MkdirAll(qdir, 0o700); err == nil {
		if err := os.WriteFile(path, buf, 0o600); err != nil {
			s.cfg.Logger.Warn("quarantining a damaged record", "path", path, "err", err)
		}
	}
	s.report.Quarantine = append(s.report.Quarantine, path)
	s.cfg.Logger.Error("damaged journal record quarantined", "segment", seg.id, "offset", sc.off, "kind", sc.h.kind,
		"session", sc.h.session, "page", sc.h.page, "copy", path, "err", sc.err)
}

func appendUnique(xs []uint64, x uint64) []uint64 {
	for _, v := range xs {
		if v == x {
			return xs
		}
	}
	return append(xs, x)
}

// replay applies the journal's records from the checkpoint on to the index.
func (s *SSD) replay(ck checkpoint) error {
	j := newJournalState(s)
	maxSeq := ck.nextSeq
	var last *segment
	var lastEnd int64
	for _, id := range s.segs.ids() {
		if id < ck.seg {
			continue
		}
		seg := s.segs.segs[id]
		from := int64(0)
		if id == ck.seg {
			from = ck.off
		}
		end := from
		scanSegment(seg, from, true, func(sc scanned) {
			end = max(end, sc.end)
			s.report.Records++
			if sc.err != nil && sc.h.kind != kindNone {
				// A header whose body does not verify, in the part of
				// the journal written since the checkpoint: a write the
				// crash cut short, never acknowledged. Not applied.
				s.report.Torn++
				s.cfg.Logger.Info("unfinished write at the crash skipped", "segment", id, "offset", sc.off, "kind", sc.h.kind, "session", sc.h.session, "page", sc.h.page)
				return
			}
			if sc.err != nil {
				s.damaged(seg, sc)
				return
			}
			maxSeq = max(maxSeq, sc.h.seq+1)
			j.apply(id, sc)
		})
		last, lastEnd = seg, end
	}
	j.finish()
	s.report.Replayed = j.n
	if last != nil {
		last.next = alignUp(max(lastEnd, smallAlign), smallAlign)
		s.segs.active = last
	}
	s.segs.nextSeq = max(s.segs.nextSeq, maxSeq)
	return s.writeDirty(j.dirty)
}

// writeDirty writes the index keys the journal changed.
func (s *SSD) writeDirty(dirty map[string]bool) error {
	if len(dirty) == 0 {
		return nil
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	var err error
	for k := range dirty {
		key := []byte(k)
		v, ok := s.valueOf(key)
		if ok {
			err = wb.Set(key, v)
		} else {
			err = wb.Delete(key)
		}
		if err != nil {
			return fmt.Errorf("ssd: write index: %w", err)
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("ssd: write index: %w", err)
	}
	return nil
}

// valueOf is the index value of key in the in-memory index.
func (s *SSD) valueOf(k []byte) ([]byte, bool) {
	switch k[0] {
	case pagePrefix:
		e, ok := s.cache[pageIDOf(k)]
		return encodeIndex(e), ok
	case tombPPrefix:
		e, ok := s.tombP[pageIDOf(k)]
		return encodeIndex(e), ok
	case tombSPrefix:
		e, ok := s.tombS[beUint64(k[1:])]
		return encodeIndex(e), ok
	case metaPrefix:
		m, ok := s.metas[string(k[1:])]
		return encodeMetaRef(m), ok
	case tombMPrefix:
		e, ok := s.tombM[string(k[1:])]
		return encodeIndex(e), ok
	}
	return nil, false
}

// rebuild moves the index files aside, opens a new index and fills it from
// every record of the journal.
func (s *SSD) rebuild(reason string) error {
	s.report.IndexRebuilt, s.report.Reason = true, reason
	s.resetMaps()
	if s.db != nil {
		s.db.Close()
		s.db = nil
	}
	aside, err := moveIndexAside(s.cfg.Dir)
	if err != nil {
		return err
	}
	s.report.MovedAside = aside
	if s.db, err = openBadger(s.cfg); err != nil {
		return fmt.Errorf("ssd: new index in %s: %w (move the directory's files other than pages/ aside and start again)", s.cfg.Dir, err)
	}
	// Deletions first, so the pages and names they cover are never applied
	// and the order of the scan does not matter.
	type rec struct {
		seg uint32
		sc  scanned
	}
	var dels, puts []rec
	maxSeq := uint64(0)
	var last *segment
	var lastEnd int64
	for _, id := range s.segs.ids() {
		seg := s.segs.segs[id]
		var end int64
		scanSegment(seg, 0, true, func(sc scanned) {
			end = max(end, sc.end)
			s.report.Records++
			if sc.err != nil {
				s.damaged(seg, sc)
				return
			}
			maxSeq = max(maxSeq, sc.h.seq+1)
			switch sc.h.kind {
			case kindDelPage, kindDelSession, kindDelMeta:
				dels = append(dels, rec{id, sc})
			case kindPage, kindMeta, kindMetaDelta:
				if sc.h.kind == kindPage {
					sc.body = nil
				}
				puts = append(puts, rec{id, sc})
			}
		})
		last, lastEnd = seg, end
	}
	j := newJournalState(s)
	for _, r := range dels {
		j.apply(r.seg, r.sc)
	}
	for _, r := range puts {
		j.apply(r.seg, r.sc)
	}
	j.finish()
	s.report.Replayed = j.n
	if last != nil {
		last.next = alignUp(max(lastEnd, smallAlign), smallAlign)
		s.segs.active = last
	}
	s.segs.nextSeq = max(s.segs.nextSeq, maxSeq)
	return s.writeDirty(j.dirty)
}

// moveIndexAside moves Badger's files out of dir into
// dir/index-damaged-<time>/ (kept for inspection; the two newest are kept).
func moveIndexAside(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("ssd: %s: %w", dir, err)
	}
	var files []string
	for _, e := range ents {
		if e.Type().IsRegular() && e.Name() != "journal.lock" {
			files = append(files, e.Name())
		}
	}
	if len(files) == 0 {
		return "", nil
	}
	aside := filepath.Join(dir, "index-damaged-"+time.Now().UTC().Format("20060102T150405.000000000"))
	if err := os.MkdirAll(aside, 0o700); err != nil {
		return "", fmt.Errorf("ssd: %s: %w", aside, err)
	}
	for _, f := range files {
		if err := os.Rename(filepath.Join(dir, f), filepath.Join(aside, f)); err != nil {
			return "", fmt.Errorf("ssd: moving the damaged index aside: %w (move %s's files other than pages/ away by hand and start again)", err, dir)
		}
	}
	// The index is rebuildable: keep only the two newest old copies.
	var old []string
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), "index-damaged-") {
			old = append(old, e.Name())
		}
	}
	sort.Strings(old)
	for len(old) > 1 {
		os.RemoveAll(filepath.Join(dir, old[0]))
		old = old[1:]
	}
	return aside, nil
}

// finishRecovery sets the gauges and every segment's live bytes from the
// in-memory index, and the active segment.
func (s *SSD) finishRecovery() {
	live := map[uint32]int64{}
	sessions := map[uint64]bool{}
	var pages, byteCount int64
	for id, e := range s.cache {
		live[e.seg] += e.recordLen()
		pages++
		byteCount += int64(e.length)
		sessions[id.Session] = true
	}
	for _, m := range s.metas {
		for _, e := range m.ents {
			live[e.seg] += e.recordLen()
		}
		s.segs.nextSeq = max(s.segs.nextSeq, m.last().seq+1)
	}
	for _, e := range s.tombS {
		live[e.seg] += e.recordLen()
		s.segs.nextSeq = max(s.segs.nextSeq, e.seq+1)
	}
	for _, e := range s.tombP {
		live[e.seg] += e.recordLen()
		s.segs.nextSeq = max(s.segs.nextSeq, e.seq+1)
	}
	for _, e := range s.tombM {
		live[e.seg] += e.recordLen()
		s.segs.nextSeq = max(s.segs.nextSeq, e.seq+1)
	}
	for _, e := range s.cache {
		s.segs.nextSeq = max(s.segs.nextSeq, e.seq+1)
	}
	for id, seg := range s.segs.segs {
		seg.live = live[id]
		if seg != s.segs.active {
			seg.next = seg.size
		}
	}
	s.pages.Store(pages)
	s.bytes.Store(byteCount)
	s.report.Pages = int(pages)
	s.report.Sessions = len(sessions)
	s.report.Metas = len(s.metas)
	sort.Slice(s.report.DamagedSessions, func(i, j int) bool { return s.report.DamagedSessions[i] < s.report.DamagedSessions[j] })
}

// VerifyAll reads every page the index holds and checks its body (what
// `flashmemd fsck` adds to the start-up check). It returns the pages that
// failed, which are never served.
func (s *SSD) VerifyAll() ([]PageID, error) {
	if err := s.begin(); err != nil {
		return nil, err
	}
	s.cacheMu.RLock()
	ids := make([]PageID, 0, len(s.cache))
	for id := range s.cache {
		ids = append(ids, id)
	}
	s.cacheMu.RUnlock()
	s.end()
	sort.Slice(ids, func(i, j int) bool {
		return ids[i].Session < ids[j].Session || (ids[i].Session == ids[j].Session && ids[i].Page < ids[j].Page)
	})
	var bad []PageID
	var buf []byte
	for _, id := range ids {
		_, _, err := s.read(contextBackground, id, func(n int) ([]byte, error) {
			if cap(buf) < n {
				buf = make([]byte, n)
			}
			return buf[:n], nil
		})
		s.report.Verified++
		if errors.Is(err, ErrIntegrity) {
			bad = append(bad, id)
			s.report.BadBodies++
		} else if err != nil && !errors.Is(err, ErrNotFound) {
			return bad, err
		}
	}
	return bad, nil
}

// tightenModes makes every directory under dir 0700 and every file 0600:
// Badger creates its files with the process umask, and has no option for
// their mode.
func tightenModes(dir string) {
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		} else if !d.Type().IsRegular() {
			return nil
		}
		if info.Mode().Perm()&^want != 0 {
			_ = os.Chmod(path, info.Mode().Perm()&want)
		}
		return nil
	})
}

var contextBackground = context.Background()

// oldIndex is the in-memory copy of an index that loaded intact but names
// records the journal lacks.
type oldIndex struct {
	cache map[PageID]indexEntry
	metas map[string]metaRef
	tombS map[uint64]indexEntry
	tombP map[PageID]indexEntry
	tombM map[string]indexEntry
}

// keepOldIndex keeps the loaded index's maps for carryOver before a rebuild
// replaces them.
func (s *SSD) keepOldIndex() {
	s.lostFrom = &oldIndex{cache: s.cache, metas: s.metas, tombS: s.tombS, tombP: s.tombP, tombM: s.tombM}
}

// carryOver runs after a rebuild from a journal that lost records an intact
// index named. The rebuild knows only the records left: a deletion whose
// record was lost would bring back what it deleted (an acknowledged DELETE
// undone), and a session whose metadata records were lost would just be
// unknown. So the deletions are written again, and what was lost is
// reported by name (log and RecoveryReport, which fsck prints).
func (s *SSD) carryOver(old *oldIndex) error {
	ctx := context.Background()
	var pages []PageID
	var metas []string
	s.cacheMu.RLock()
	for id, e := range s.cache {
		if t, ok := old.tombS[id.Session]; ok && e.seq < t.seq {
			pages = append(pages, id)
		} else if t, ok := old.tombP[id]; ok && e.seq < t.seq {
			pages = append(pages, id)
		}
	}
	for name, t := range old.tombM {
		if m, ok := s.metas[name]; ok && m.last().seq < t.seq {
			metas = append(metas, name)
		}
	}
	for name, m := range old.metas {
		cur, ok := s.metas[name]
		switch {
		case !ok:
			s.report.LostMetas = append(s.report.LostMetas, name)
		case cur.last().seq < m.last().seq:
			s.report.OlderMetas = append(s.report.OlderMetas, name)
		}
	}
	for id, e := range old.cache {
		if cur, ok := s.cache[id]; !ok || cur.seq < e.seq {
			s.report.LostPages++
		}
	}
	s.cacheMu.RUnlock()
	sort.Slice(pages, func(i, j int) bool {
		return pages[i].Session < pages[j].Session || pages[i].Session == pages[j].Session && pages[i].Page < pages[j].Page
	})
	sort.Strings(metas)
	sort.Strings(s.report.LostMetas)
	sort.Strings(s.report.OlderMetas)
	for _, id := range pages {
		if err := s.Delete(ctx, id); err != nil && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("ssd: writing again the lost deletion of page %v: %w", id, err)
		}
		s.report.Redeleted++
	}
	for _, name := range metas {
		if err := s.DeleteMeta(ctx, name); err != nil && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("ssd: writing again the lost deletion of metadata %q: %w", name, err)
		}
		s.report.Redeleted++
	}
	s.report.Pages = int(s.pages.Load())
	s.report.Metas = len(s.metas)
	if len(s.report.LostMetas)+len(s.report.OlderMetas)+s.report.LostPages+s.report.Redeleted > 0 {
		s.cfg.Logger.Error("the journal lacks records its index named (a segment file deleted or cut short); what they held is lost: RESUME of a lost session finds none, an older one resumes its last state still on disk, lost pages are reported per page; deletions written again so nothing deleted comes back",
			"dir", s.cfg.Dir, "reason", s.report.Reason, "lost_sessions", s.report.LostMetas, "older_sessions", s.report.OlderMetas,
			"lost_pages", s.report.LostPages, "deletions_rewritten", s.report.Redeleted, "old_index", s.report.MovedAside)
	}
	return s.Checkpoint()
}
