package tiers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

func openTestStore(t testing.TB, dir string, budgetPages, pageBytes int) *Store {
	t.Helper()
	s, err := OpenStore(StoreConfig{
		Mirror:     MirrorConfig{Budget: int64(budgetPages * int(alignUp(int64(pageBytes), 4096))), ExtentBytes: 4 << 20},
		SSD:        SSDConfig{Dir: dir, GCInterval: -1, ValueLogFileSize: 64 << 20, MemTableSize: 8 << 20},
		SpillBatch: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStoreSpillsAndReadsBack writes a session three times the mirror budget:
// pages spill to Badger and come back byte-identical, with their generation.
func TestStoreSpillsAndReadsBack(t *testing.T) {
	const pageBytes, budget, npages = 786240, 8, 24
	s := openTestStore(t, t.TempDir(), budget, pageBytes)
	defer s.Close()
	ctx := context.Background()
	r := rand.New(rand.NewPCG(7, 7))
	pages := make([][]byte, npages)
	for p := range pages {
		pages[p] = randBytes(r, pageBytes)
		if err := s.Write(ctx, PageID{Session: 1, Page: uint32(p)}, uint64(p+100), pages[p]); err != nil {
			t.Fatalf("Write page %d: %v", p, err)
		}
		if used, _ := s.Mirror().Footprint(); used > int64(budget)*alignUp(pageBytes, 4096) {
			t.Fatalf("mirror uses %d B over its budget", used)
		}
	}
	st := s.Snapshot()
	if st.Spills < npages-budget || st.SSD.Pages < npages-budget {
		t.Fatalf("spills %d, SSD pages %d; want ≥ %d", st.Spills, st.SSD.Pages, npages-budget)
	}
	dst := make([]byte, pageBytes)
	fromSSD := 0
	for p := range pages {
		gen, src, err := s.Read(ctx, PageID{Session: 1, Page: uint32(p)}, dst)
		if err != nil {
			t.Fatalf("Read page %d: %v", p, err)
		}
		if gen != uint64(p+100) || !bytes.Equal(dst, pages[p]) {
			t.Fatalf("page %d: gen %d, bytes equal %v", p, gen, bytes.Equal(dst, pages[p]))
		}
		if src == SourceSSD {
			fromSSD++
		}
	}
	if fromSSD < npages-budget {
		t.Errorf("%d reads came from SSD, want ≥ %d", fromSSD, npages-budget)
	}
	if s.Snapshot().BroughtBack == 0 {
		t.Error("no page was brought back into the mirror")
	}
	if tot := s.Stats(); tot.Pages != npages {
		t.Errorf("Stats pages = %d, want %d (each page once)", tot.Pages, npages)
	}
}

func TestStoreIntegrityErrorNotServed(t *testing.T) {
	dir := t.TempDir()
	const pageBytes = 8192
	s := openTestStore(t, dir, 2, pageBytes)
	ctx := context.Background()
	id := PageID{Session: 3, Page: 1}
	page := bytes.Repeat([]byte{0xab}, pageBytes)
	if err := s.Write(ctx, id, 1, page); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if err := s.SSD().CorruptForTest(ctx, id, pageHeaderSize+100); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openTestStore(t, dir, 2, pageBytes)
	defer s.Close()
	dst := make([]byte, pageBytes)
	if _, _, err := s.Read(ctx, id, dst); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("Read of corrupted page: %v", err)
	}
	if bytes.Equal(dst, page) {
		t.Error("corrupted bytes were copied out")
	}
	if st := s.Stats(); st.IntegrityErrors != 1 {
		t.Errorf("integrity errors = %d", st.IntegrityErrors)
	}
	if _, ok := s.Mirror().Generation(id); ok {
		t.Error("corrupted page entered the mirror")
	}
	// Staging reads straight into a mirror slot: the damaged page must
	// not be installed there either, and its slot must come free.
	used, _ := s.Mirror().Footprint()
	if n, err := s.Stage(ctx, []PageID{id}); n != 0 || !errors.Is(err, ErrIntegrity) {
		t.Fatalf("Stage of corrupted page = %d, %v; want 0, ErrIntegrity", n, err)
	}
	if _, ok := s.Mirror().Generation(id); ok {
		t.Error("staging installed the corrupted page in the mirror")
	}
	if after, _ := s.Mirror().Footprint(); after != used {
		t.Errorf("mirror holds %d B after a failed stage, %d before: the slot leaked", after, used)
	}
}

// TestStoreFlushReopen persists a session with its metadata and resumes it
// from a fresh Store on the same directory.
func TestStoreFlushReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	const pageBytes = 20000
	s := openTestStore(t, dir, 64, pageBytes)
	r := rand.New(rand.NewPCG(8, 8))
	pages := map[uint32][]byte{}
	for p := uint32(0); p < 10; p++ {
		pages[p] = randBytes(r, pageBytes)
		if err := s.Write(ctx, PageID{Session: 5, Page: p}, 1, pages[p]); err != nil {
			t.Fatal(err)
		}
	}
	// Rewrite some pages after a first flush: the second flush must write
	// the new generation.
	if err := s.Flush(ctx, 5); err != nil {
		t.Fatal(err)
	}
	for p := uint32(0); p < 3; p++ {
		pages[p] = randBytes(r, pageBytes)
		if err := s.Write(ctx, PageID{Session: 5, Page: p}, 2, pages[p]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := s.SSD().PutMeta(ctx, "chat-1", []byte("session 5")); err != nil {
		t.Fatal(err)
	}
	if got := s.Snapshot().Flushes; got != 13 {
		t.Errorf("flushed %d pages, want 13 (10 then the 3 rewritten)", got)
	}
	s.Close()
	s = openTestStore(t, dir, 64, pageBytes)
	defer s.Close()
	meta, err := s.SSD().GetMeta(ctx, "chat-1")
	if err != nil || string(meta) != "session 5" {
		t.Fatalf("meta after reopen: %q %v", meta, err)
	}
	dst := make([]byte, pageBytes)
	for p, want := range pages {
		gen, src, err := s.Read(ctx, PageID{Session: 5, Page: p}, dst)
		wantGen := uint64(1)
		if p < 3 {
			wantGen = 2
		}
		if err != nil || gen != wantGen || !bytes.Equal(dst, want) || src != SourceSSD {
			t.Errorf("page %d after reopen: gen %d src %v err %v", p, gen, src, err)
		}
	}
}

func TestStoreDropRemovesEverywhere(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 4, 4096)
	defer s.Close()
	ctx := context.Background()
	for p := uint32(0); p < 12; p++ {
		for _, sess := range []uint64{1, 2} {
			if err := s.Write(ctx, PageID{Session: sess, Page: p}, 1, make([]byte, 4096)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Drop(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for p := uint32(0); p < 12; p++ {
		if _, _, err := s.Read(ctx, PageID{Session: 1, Page: p}, make([]byte, 4096)); !errors.Is(err, ErrNotFound) {
			t.Errorf("page %d of dropped session: %v", p, err)
		}
		if _, _, err := s.Read(ctx, PageID{Session: 2, Page: p}, make([]byte, 4096)); err != nil {
			t.Errorf("page %d of kept session: %v", p, err)
		}
	}
}

func TestStoreStageAccounting(t *testing.T) {
	const pageBytes = 4096
	s := openTestStore(t, t.TempDir(), 6, pageBytes)
	defer s.Close()
	ctx := context.Background()
	for p := uint32(0); p < 20; p++ {
		if err := s.Write(ctx, PageID{Session: 1, Page: p}, 1, bytes.Repeat([]byte{byte(p)}, pageBytes)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// Pages 0 and 1 were spilled long ago; stage them, then read one.
	if _, ok := s.Mirror().Generation(PageID{Session: 1, Page: 0}); ok {
		t.Fatal("page 0 still in the mirror; budget too large for this test")
	}
	n, err := s.Stage(ctx, []PageID{{Session: 1, Page: 0}, {Session: 1, Page: 1}, {Session: 1, Page: 19}, {Session: 1, Page: 999}})
	if err != nil || n != 2 {
		t.Fatalf("Stage = %d, %v; want 2 (19 is resident, 999 does not exist)", n, err)
	}
	dst := make([]byte, pageBytes)
	if _, src, err := s.Read(ctx, PageID{Session: 1, Page: 0}, dst); err != nil || src != SourceStaged || dst[0] != 0 {
		t.Fatalf("read of staged page: src %v err %v", src, err)
	}
	// Page 1 is never read: pushing enough new pages through evicts it.
	for p := uint32(100); p < 110; p++ {
		if err := s.Write(ctx, PageID{Session: 1, Page: p}, 1, make([]byte, pageBytes)); err != nil {
			t.Fatal(err)
		}
	}
	st := s.Snapshot()
	if st.Staged != 2 || st.StagedUsed != 1 || st.StagedUnused != 1 {
		t.Errorf("staged %d used %d unused %d; want 2 1 1", st.Staged, st.StagedUsed, st.StagedUnused)
	}
}

func TestStoreConcurrentWritersReaders(t *testing.T) {
	const pageBytes = 8192
	s := openTestStore(t, t.TempDir(), 10, pageBytes)
	defer s.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(sess uint64) {
			defer wg.Done()
			dst := make([]byte, pageBytes)
			want := make([]byte, pageBytes)
			for round := uint64(1); round <= 3; round++ {
				for p := uint32(0); p < 12; p++ {
					id := PageID{Session: sess, Page: p}
					fillPage(want, id, round)
					if err := s.Write(ctx, id, round, want); err != nil {
						errs <- err
						return
					}
				}
				for p := uint32(0); p < 12; p++ {
					id := PageID{Session: sess, Page: p}
					gen, _, err := s.Read(ctx, id, dst)
					if err != nil {
						errs <- fmt.Errorf("read %v: %w", id, err)
						return
					}
					fillPage(want, id, gen)
					if gen != round || !bytes.Equal(dst, want) {
						errs <- fmt.Errorf("read %v: gen %d in round %d or bytes differ", id, gen, round)
						return
					}
				}
				if err := s.Flush(ctx, sess); err != nil {
					errs <- err
					return
				}
			}
		}(uint64(w + 1))
	}
	// The background spiller runs meanwhile; give it a few ticks.
	time.Sleep(150 * time.Millisecond)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func fillPage(b []byte, id PageID, gen uint64) {
	x := id.Session*31 + uint64(id.Page)*7 + gen*131
	for i := range b {
		b[i] = byte(x + uint64(i)*13)
	}
}

// TestStoreWriteChunkAcrossSpills appends a session chunk by chunk through a
// mirror smaller than the session; pages spilled half-written are brought
// back before the next chunk lands, so every page ends byte-identical.
func TestStoreWriteChunkAcrossSpills(t *testing.T) {
	g, err := NewGeometry(smallLayout)
	if err != nil {
		t.Fatal(err)
	}
	s := openTestStore(t, t.TempDir(), 3, g.PageBytes())
	defer s.Close()
	ctx := context.Background()
	r := rand.New(rand.NewPCG(13, 13))
	const npages = 10
	want := make([][]byte, npages)
	gens := make([]uint64, npages)
	for p := range want {
		want[p] = make([]byte, g.PageBytes())
	}
	// Interleave pages so each is spilled between its chunks.
	for c := 0; c < smallLayout.ChunksPerPage; c++ {
		for p := 0; p < npages; p++ {
			payload := randBytes(r, g.ChunkBytes())
			_ = g.ScatterChunk(want[p], c, payload)
			prev, err := s.WriteChunk(ctx, PageID{Session: 1, Page: uint32(p)}, gens[p]+1, g, c, payload)
			if err != nil {
				t.Fatalf("chunk %d of page %d: %v", c, p, err)
			}
			if prev != gens[p] {
				t.Fatalf("chunk %d of page %d: previous generation %d, want %d", c, p, prev, gens[p])
			}
			gens[p]++
		}
	}
	if s.Snapshot().Spills == 0 {
		t.Fatal("nothing spilled; the test needs a smaller budget")
	}
	dst := make([]byte, g.PageBytes())
	for p := range want {
		gen, _, err := s.Read(ctx, PageID{Session: 1, Page: uint32(p)}, dst)
		if err != nil || gen != gens[p] || !bytes.Equal(dst, want[p]) {
			t.Errorf("page %d: gen %d (want %d) err %v equal %v", p, gen, gens[p], err, bytes.Equal(dst, want[p]))
		}
	}
}

// Pages that exist only in the mirror are written to SSD ahead of need once
// they pass DirtyRatio of the budget, and stay in the mirror: evicting them
// later costs no SSD write.
func TestStoreCleansAheadOfEviction(t *testing.T) {
	const pageBytes, budget = 65536, 16
	s := openTestStore(t, t.TempDir(), budget, pageBytes)
	defer s.Close()
	ctx := context.Background()
	r := rand.New(rand.NewPCG(9, 9))
	// Half the budget, below the spill high-water mark: nothing must be
	// evicted, but 8 dirty pages are twice the 25 % dirty bound.
	for p := 0; p < budget/2; p++ {
		if err := s.Write(ctx, PageID{Session: 3, Page: uint32(p)}, 1, randBytes(r, pageBytes)); err != nil {
			t.Fatal(err)
		}
	}
	limit := int64(0.25 * float64(s.cfg.Mirror.Budget))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, dirty := s.mirror.unsavedPages(); dirty <= limit {
			break
		}
		if time.Now().After(deadline) {
			_, dirty := s.mirror.unsavedPages()
			t.Fatalf("%d unsaved bytes after 10 s, bound %d", dirty, limit)
		}
		s.kickSpiller()
		time.Sleep(20 * time.Millisecond)
	}
	st := s.Snapshot()
	if st.Cleaned == 0 || st.Spills != 0 {
		t.Fatalf("cleaned %d, spilled %d: want pages cleaned and none evicted", st.Cleaned, st.Spills)
	}
	if st.SSD.Pages < int64(st.Cleaned) {
		t.Fatalf("SSD holds %d pages, %d were cleaned", st.SSD.Pages, st.Cleaned)
	}
	// Cleaned pages still read from the mirror.
	dst := make([]byte, pageBytes)
	for p := 0; p < budget/2; p++ {
		if _, src, err := s.Read(ctx, PageID{Session: 3, Page: uint32(p)}, dst); err != nil || src == SourceSSD {
			t.Fatalf("page %d: source %v, %v", p, src, err)
		}
	}
}

// Appending into brand-new pages asks nothing of the SSD: no read, no miss.
func TestStoreNewPageCostsNoSSDMiss(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 64, 8192)
	defer s.Close()
	geo, err := NewGeometry(Layout{ChunksPerPage: 4, Layers: []LayerLayout{{RowBytes: 4 * 512, Segments: []int{512}}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	payload := make([]byte, geo.ChunkBytes())
	for p := uint32(0); p < 8; p++ {
		if prev, err := s.WriteChunk(ctx, PageID{Session: 5, Page: p}, 1, geo, 0, payload); err != nil || prev != 0 {
			t.Fatalf("page %d: prev %d, %v", p, prev, err)
		}
	}
	if st := s.Snapshot().SSD; st.Misses != 0 || st.Gets != 0 {
		t.Fatalf("new pages cost SSD reads: %d gets, %d misses", st.Gets, st.Misses)
	}
}
