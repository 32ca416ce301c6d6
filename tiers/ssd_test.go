package tiers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	badger "github.com/dgraph-io/badger/v4"
)

func openTestSSD(t testing.TB, dir string) *SSD {
	t.Helper()
	s, err := OpenSSD(SSDConfig{Dir: dir, GCInterval: -1, ValueLogFileSize: 64 << 20, MemTableSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// corruptIndex reaches under the tier: it opens the Badger directory directly
// and flips one byte of the index entry of id at offset off.
func corruptIndex(t *testing.T, dir string, id PageID, off int) {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(pageKey(id))
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		v[off] ^= 0x40
		return txn.Set(pageKey(id), v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSSDFlippedByteIsIntegrityError(t *testing.T) {
	const n = 786240
	tests := []struct {
		name  string
		index bool // flip a byte of the Badger index entry, not of the record
		off   int
	}{
		{"body first byte", false, pageHeaderSize},
		{"body middle", false, pageHeaderSize + n/2},
		{"body last byte", false, pageHeaderSize + n - 1},
		{"record magic", false, 0},
		{"record generation", false, 24},
		{"record body checksum", false, 33},
		{"record header checksum", false, 45},
		{"record session", false, 9},
		{"index magic", true, 0},
		{"index segment", true, 8},
		{"index length", true, 13},
		{"index offset", true, 17},
		{"index generation", true, 24},
		{"index body checksum", true, 33},
		{"index checksum", true, 37},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openTestSSD(t, dir)
			ctx := context.Background()
			r := rand.New(rand.NewPCG(1, 1))
			id, other := PageID{Session: 4, Page: 2}, PageID{Session: 4, Page: 3}
			page := randBytes(r, n)
			if err := s.Put(ctx, id, 9, page); err != nil {
				t.Fatal(err)
			}
			if err := s.Put(ctx, other, 9, page); err != nil {
				t.Fatal(err)
			}
			if !tc.index {
				if err := s.CorruptForTest(ctx, id, tc.off); err != nil {
					t.Fatal(err)
				}
			}
			s.Close()
			if tc.index {
				corruptIndex(t, dir, id, tc.off)
			}
			s = openTestSSD(t, dir)
			defer s.Close()
			dst := make([]byte, n)
			if tc.index {
				// The index is only a cache of the journal: a damaged
				// entry makes the open rebuild it, and the page is
				// served intact.
				if rep := s.Recovery(); !rep.IndexRebuilt || rep.MovedAside == "" {
					t.Errorf("damaged index entry: recovery %+v, want a rebuild", rep)
				}
				if gen, err := s.Get(ctx, id, dst); err != nil || gen != 9 || !bytes.Equal(dst, page) {
					t.Fatalf("page after the rebuild: gen %d err %v", gen, err)
				}
				return
			}
			_, err := s.Get(ctx, id, dst)
			if !errors.Is(err, ErrIntegrity) {
				t.Fatalf("Get of corrupted page: %v, want ErrIntegrity", err)
			}
			if want := id.String(); !bytes.Contains([]byte(err.Error()), []byte(want)) {
				t.Errorf("error %q does not name the page %s", err, want)
			}
			if st := s.Stats(); st.IntegrityErrors != 1 || st.Misses != 1 {
				t.Errorf("integrity errors %d, misses %d; want 1, 1", st.IntegrityErrors, st.Misses)
			}
			// The neighbour is untouched and still served.
			if gen, err := s.Get(ctx, other, dst); err != nil || gen != 9 || !bytes.Equal(dst, page) {
				t.Errorf("neighbour page: gen %d err %v", gen, err)
			}
		})
	}
}

func TestSSDReopenPagesAndMeta(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := openTestSSD(t, dir)
	r := rand.New(rand.NewPCG(2, 2))
	pages := map[PageID][]byte{}
	for sess := uint64(1); sess <= 3; sess++ {
		for p := uint32(0); p < 5; p++ {
			id := PageID{Session: sess, Page: p * 1000}
			pages[id] = randBytes(r, 4096+int(p))
			if err := s.Put(ctx, id, uint64(p)+1, pages[id]); err != nil {
				t.Fatal(err)
			}
		}
	}
	metas := map[string][]byte{"alpha": []byte("layout+indexer state"), "β/2": randBytes(r, 5000), "empty": {}}
	for name, b := range metas {
		if err := s.PutMeta(ctx, name, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTestSSD(t, dir)
	defer s.Close()
	for id, want := range pages {
		dst := make([]byte, len(want))
		gen, err := s.Get(ctx, id, dst)
		if err != nil || gen != uint64(id.Page/1000)+1 || !bytes.Equal(dst, want) {
			t.Errorf("page %v after reopen: gen %d err %v", id, gen, err)
		}
	}
	names, err := s.ListMeta(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"alpha", "empty", "β/2"}) {
		t.Errorf("ListMeta = %q", names)
	}
	for name, want := range metas {
		got, err := s.GetMeta(ctx, name)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("GetMeta(%q) = %d B, %v", name, len(got), err)
		}
	}
	sessions, err := s.Sessions(ctx)
	if err != nil || !slices.Equal(sessions, []uint64{1, 2, 3}) {
		t.Errorf("Sessions = %v, %v", sessions, err)
	}
	pg, err := s.Pages(ctx, 2)
	if err != nil || !slices.Equal(pg, []uint32{0, 1000, 2000, 3000, 4000}) {
		t.Errorf("Pages(2) = %v, %v", pg, err)
	}
	if st := s.Stats(); st.Pages != 15 {
		t.Errorf("Stats pages after reopen = %d", st.Pages)
	}
	if err := s.DeleteSession(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if pg, _ := s.Pages(ctx, 2); len(pg) != 0 {
		t.Errorf("pages left after DeleteSession: %v", pg)
	}
	if pg, _ := s.Pages(ctx, 3); len(pg) != 5 {
		t.Errorf("DeleteSession(2) touched session 3: %v", pg)
	}
	if err := s.DeleteMeta(ctx, "alpha"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetMeta(ctx, "alpha"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetMeta after delete: %v", err)
	}
}

func TestSSDMetaErrors(t *testing.T) {
	s := openTestSSD(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	for _, name := range []string{"", string([]byte{0xff, 0xfe}), string(make([]byte, maxMetaName+1))} {
		if err := s.PutMeta(ctx, name, nil); !errors.Is(err, ErrName) {
			t.Errorf("PutMeta(%q): %v, want ErrName", name, err)
		}
	}
	if _, err := s.GetMeta(ctx, "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetMeta(missing): %v", err)
	}
	if err := s.Put(ctx, PageID{1, 1}, 0, []byte{1}); !errors.Is(err, ErrStale) {
		t.Errorf("Put generation 0: %v", err)
	}
}

func TestSSDBatchAndGC(t *testing.T) {
	dir := t.TempDir()
	cfg := SSDConfig{Dir: dir, GCInterval: -1, SegmentBytes: 4 << 20, ValueLogFileSize: 8 << 20, MemTableSize: 4 << 20, SyncWrites: true}
	s, err := OpenSSD(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r := rand.New(rand.NewPCG(3, 3))
	const size = 1 << 20
	var want [8][]byte
	// Rewrite the same pages many times so the segments fill with garbage.
	for round := uint64(1); round <= 6; round++ {
		var batch []PageWrite
		for p := uint32(0); p < 8; p++ {
			want[p] = randBytes(r, size)
			batch = append(batch, PageWrite{ID: PageID{Session: 1, Page: p}, Gen: round, Page: want[p]})
		}
		if err := s.PutBatch(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	files, alloc, live := s.SegmentUsage()
	// 48 records of 1 MiB + 4 KiB: three per 4 MiB segment.
	if files != 16 || live != 8*(pageHeaderSize+size) {
		t.Fatalf("before GC: %d segments, %d B allocated, %d B live", files, alloc, live)
	}
	s.RunGC()
	files, alloc, live = s.SegmentUsage()
	if s.Compactions() == 0 || files > 4 || live != 8*(pageHeaderSize+size) {
		t.Errorf("after GC: %d compactions, %d segments, %d B allocated, %d B live", s.Compactions(), files, alloc, live)
	}
	check := func(s *SSD) {
		t.Helper()
		dst := make([]byte, size)
		for p := uint32(0); p < 8; p++ {
			if gen, err := s.Get(ctx, PageID{Session: 1, Page: p}, dst); err != nil || gen != 6 || !bytes.Equal(dst, want[p]) {
				t.Fatalf("page %d after GC: gen %d err %v", p, gen, err)
			}
		}
		if st := s.Stats(); st.Pages != 8 || st.Bytes != 8*size {
			t.Errorf("Stats = %d pages %d B after rewrites", st.Pages, st.Bytes)
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, segDirName))
	if len(ents) != files {
		t.Errorf("%d segment files on disk, tier counted %d", len(ents), files)
	}
	s, err = OpenSSD(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check(s)
	if f2, _, live2 := s.SegmentUsage(); f2 != files || live2 != live {
		t.Errorf("after reopen: %d segments, %d B live; before %d, %d", f2, live2, files, live)
	}
}

// Compaction racing writes and deletes of the same pages: a page written (or
// deleted) while its old record is being moved keeps the newer state, and
// every read returns bytes matching the generation it reports.
func TestSSDCompactionRacesWrites(t *testing.T) {
	s, err := OpenSSD(SSDConfig{Dir: t.TempDir(), GCInterval: -1, SegmentBytes: 256 << 10, MemTableSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	const pages, size, rounds = 16, 20000, 60
	body := func(p uint32, gen uint64) []byte {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(uint64(p)*31 + gen*7 + uint64(i)%251)
		}
		return b
	}
	done := make(chan struct{})
	gcErr := make(chan error, 1)
	go func() {
		defer close(gcErr)
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := s.compact(); err != nil {
				gcErr <- err
				return
			}
		}
	}()
	readErr := make(chan error, 1)
	go func() {
		defer close(readErr)
		dst := make([]byte, size)
		r := rand.New(rand.NewPCG(9, 9))
		for {
			select {
			case <-done:
				return
			default:
			}
			p := uint32(r.IntN(pages))
			gen, err := s.Get(ctx, PageID{Session: 1, Page: p}, dst)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				readErr <- err
				return
			}
			if !bytes.Equal(dst, body(p, gen)) {
				readErr <- fmt.Errorf("page %d: bytes do not match gen %d", p, gen)
				return
			}
		}
	}()
	last := map[uint32]uint64{}
	for round := uint64(1); round <= rounds; round++ {
		var batch []PageWrite
		for p := uint32(0); p < pages; p++ {
			if (uint64(p)+round)%5 == 0 {
				continue
			}
			batch = append(batch, PageWrite{ID: PageID{Session: 1, Page: p}, Gen: round, Page: body(p, round)})
			last[p] = round
		}
		if err := s.PutBatch(ctx, batch); err != nil {
			t.Fatal(err)
		}
		if round%7 == 0 {
			p := uint32(round % pages)
			if err := s.Delete(ctx, PageID{Session: 1, Page: p}); err != nil && !errors.Is(err, ErrNotFound) {
				t.Fatal(err)
			}
			delete(last, p)
		}
	}
	close(done)
	if err := <-gcErr; err != nil {
		t.Fatal(err)
	}
	if err := <-readErr; err != nil {
		t.Fatal(err)
	}
	if err := s.compact(); err != nil {
		t.Fatal(err)
	}
	dst := make([]byte, size)
	for p := uint32(0); p < pages; p++ {
		gen, err := s.Get(ctx, PageID{Session: 1, Page: p}, dst)
		want, ok := last[p]
		switch {
		case !ok && !errors.Is(err, ErrNotFound):
			t.Errorf("deleted page %d: gen %d err %v", p, gen, err)
		case ok && (err != nil || gen != want || !bytes.Equal(dst, body(p, gen))):
			t.Errorf("page %d: gen %d err %v, want gen %d", p, gen, err, want)
		}
	}
	files, alloc, live := s.SegmentUsage()
	var want int64
	for range last {
		want += pageHeaderSize + size
	}
	if live != want || alloc > 4*want+2*(256<<10) {
		t.Errorf("%d segments, %d B allocated, %d B live; want %d B live", files, alloc, live, want)
	}
}

// Segment files nothing points at (all their records rewritten or deleted)
// are reclaimed by compaction, also after a restart; the newest segment keeps
// taking records after its last one.
func TestSSDReopenDropsUnreferencedSegments(t *testing.T) {
	dir := t.TempDir()
	cfg := SSDConfig{Dir: dir, GCInterval: -1, SegmentBytes: 1 << 20, MemTableSize: 4 << 20}
	s, err := OpenSSD(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	page := bytes.Repeat([]byte{7}, 300<<10)
	// Three records per 1 MiB segment: pages 0-2, 3-5 and 6.
	for p := uint32(0); p < 7; p++ {
		if err := s.Put(ctx, PageID{Session: 2, Page: p}, 1, page); err != nil {
			t.Fatal(err)
		}
	}
	for p := uint32(3); p < 6; p++ {
		if err := s.Delete(ctx, PageID{Session: 2, Page: p}); err != nil {
			t.Fatal(err)
		}
	}
	if files, _, _ := s.SegmentUsage(); files != 3 {
		t.Fatalf("%d segments, want 3", files)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenSSD(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.RunGC()
	files, _, live := s.SegmentUsage()
	if files != 2 || live < 4*(pageHeaderSize+300<<10) || live > 4*(pageHeaderSize+300<<10)+3*pageHeaderSize {
		t.Errorf("after reopen and GC: %d segments, %d B live", files, live)
	}
	if _, err := os.Stat(filepath.Join(dir, segDirName, segName(1))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unreferenced segment 1 still on disk: %v", err)
	}
	// The next page goes after page 6 in the newest segment.
	if err := s.Put(ctx, PageID{Session: 2, Page: 9}, 1, page); err != nil {
		t.Fatal(err)
	}
	if files, _, _ := s.SegmentUsage(); files != 2 {
		t.Errorf("a new segment was created instead of filling the newest: %d", files)
	}
	dst := make([]byte, len(page))
	for _, p := range []uint32{0, 1, 2, 6, 9} {
		if gen, err := s.Get(ctx, PageID{Session: 2, Page: p}, dst); err != nil || gen != 1 || !bytes.Equal(dst, page) {
			t.Errorf("page %d: gen %d err %v", p, gen, err)
		}
	}
	for _, p := range []uint32{3, 4, 5} {
		if _, err := s.Get(ctx, PageID{Session: 2, Page: p}, dst); !errors.Is(err, ErrNotFound) {
			t.Errorf("deleted page %d: %v", p, err)
		}
	}
}

// A batch larger than one Badger transaction is committed in several; each
// page is counted once, and rewriting the batch moves every record's bytes
// from live to garbage exactly once.
func TestSSDBatchOverTxnLimit(t *testing.T) {
	s, err := OpenSSD(SSDConfig{Dir: t.TempDir(), GCInterval: -1, SegmentBytes: 64 << 20, MemTableSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	const n = 20000
	batch := make([]PageWrite, n)
	for round := uint64(1); round <= 2; round++ {
		for i := range batch {
			batch[i] = PageWrite{ID: PageID{Session: 5, Page: uint32(i)}, Gen: round, Page: []byte{byte(i), byte(i >> 8), byte(round)}}
		}
		if err := s.PutBatch(ctx, batch); err != nil {
			t.Fatal(err)
		}
		st := s.Stats()
		_, _, live := s.SegmentUsage()
		if st.Pages != n || st.Bytes != 3*n || live != n*(pageHeaderSize+3) {
			t.Fatalf("round %d: %d pages, %d B, %d B live", round, st.Pages, st.Bytes, live)
		}
	}
	dst := make([]byte, 3)
	for _, i := range []int{0, 4999, n - 1} {
		if gen, err := s.Get(ctx, PageID{Session: 5, Page: uint32(i)}, dst); err != nil || gen != 2 || !bytes.Equal(dst, []byte{byte(i), byte(i >> 8), 2}) {
			t.Errorf("page %d: gen %d err %v %v", i, gen, err, dst)
		}
	}
}

// A segment file cut short under the tier (a disk or operator error) makes
// reads of the lost records fail with ErrIntegrity; the fault in the mapping
// never crashes the process.
func TestSSDTruncatedSegmentIsIntegrityError(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSSD(SSDConfig{Dir: dir, GCInterval: -1, SegmentBytes: 1 << 20, MemTableSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	page := bytes.Repeat([]byte{3}, 100<<10)
	for p := uint32(0); p < 2; p++ {
		if err := s.Put(ctx, PageID{Session: 1, Page: p}, 1, page); err != nil {
			t.Fatal(err)
		}
	}
	// Page 0's record starts at 4 KiB (after the segment's start record),
	// page 1's at 108 KiB: keep page 0 whole, lose page 1.
	if err := os.Truncate(filepath.Join(dir, segDirName, segName(0)), 108<<10); err != nil {
		t.Fatal(err)
	}
	dst := make([]byte, len(page))
	if _, err := s.Get(ctx, PageID{Session: 1, Page: 1}, dst); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("Get of a record past the truncated end: %v, want ErrIntegrity", err)
	}
	if gen, err := s.Get(ctx, PageID{Session: 1, Page: 0}, dst); err != nil || gen != 1 || !bytes.Equal(dst, page) {
		t.Fatalf("page before the cut: gen %d err %v", gen, err)
	}
}
