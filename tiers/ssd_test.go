package tiers

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

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

// corrupt reaches under the tier: it opens the Badger directory directly and
// flips one byte of the stored value of id at offset off.
func corrupt(t *testing.T, dir string, id PageID, off int) {
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
		name string
		off  int
	}{
		{"body first byte", pageHeaderSize},
		{"body middle", pageHeaderSize + n/2},
		{"body last byte", pageHeaderSize + n - 1},
		{"magic", 0},
		{"generation", 24},
		{"body checksum", 33},
		{"header checksum", 45},
		{"session", 9},
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
			s.Close()
			corrupt(t, dir, id, tc.off)
			s = openTestSSD(t, dir)
			defer s.Close()
			dst := make([]byte, n)
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
	s, err := OpenSSD(SSDConfig{Dir: t.TempDir(), GCInterval: 20 * time.Millisecond, ValueLogFileSize: 8 << 20, MemTableSize: 4 << 20, SyncWrites: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	r := rand.New(rand.NewPCG(3, 3))
	page := randBytes(r, 1<<20)
	// Rewrite the same pages many times so the value log fills with garbage.
	for round := uint64(1); round <= 6; round++ {
		var batch []PageWrite
		for p := uint32(0); p < 8; p++ {
			batch = append(batch, PageWrite{ID: PageID{Session: 1, Page: p}, Gen: round, Page: page})
		}
		if err := s.PutBatch(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	s.RunGC()
	dst := make([]byte, len(page))
	for p := uint32(0); p < 8; p++ {
		if gen, err := s.Get(ctx, PageID{Session: 1, Page: p}, dst); err != nil || gen != 6 || !bytes.Equal(dst, page) {
			t.Fatalf("page %d after GC: gen %d err %v", p, gen, err)
		}
	}
	if st := s.Stats(); st.Pages != 8 || st.Bytes != 8<<20 {
		t.Errorf("Stats = %d pages %d B after rewrites", st.Pages, st.Bytes)
	}
}
