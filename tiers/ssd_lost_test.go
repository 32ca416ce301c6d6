package tiers

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A segment cut short (or deleted) under an intact index: the rebuild from
// what is left must not bring back what a lost deletion record deleted (an
// acknowledged DELETE undone), and must name what was lost rather than
// forget it silently.
func TestSSDJournalLostRecords(t *testing.T) {
	dir := t.TempDir()
	cfg := SSDConfig{Dir: dir, GCInterval: -1, MergeMeta: concatMerge}
	s, err := OpenSSD(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	page := bytes.Repeat([]byte{7}, 8192)
	for sess := uint64(1); sess <= 2; sess++ {
		for p := uint32(0); p < 4; p++ {
			if err := s.Put(ctx, PageID{Session: sess, Page: p}, 1, page); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.PutMetaBase(ctx, []string{"", "a", "b"}[sess], sess, []byte("meta")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteSession(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMeta(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutMetaBase(ctx, "c", 3, []byte("later")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	seg := filepath.Join(dir, segDirName, segName(0))
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	cut := -1
	for off := 0; off+4 <= len(b); off += smallAlign {
		if string(b[off:off+4]) == "FMDS" {
			cut = off
			break
		}
	}
	if cut < 0 {
		t.Fatal("no session deletion record in the segment")
	}
	if err := os.Truncate(seg, int64(cut)); err != nil {
		t.Fatal(err)
	}
	if s, err = OpenSSD(cfg); err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	r := s.Recovery()
	if !r.IndexRebuilt {
		t.Fatalf("not rebuilt: %v", r)
	}
	if ps, _ := s.Pages(ctx, 2); len(ps) != 0 {
		t.Errorf("session 2 was deleted; after the cut its pages %v are back", ps)
	}
	if names, _ := s.ListMeta(ctx); !slices.Equal(names, []string{"a"}) {
		t.Errorf("metadata names %v, want [a] (b deleted, c lost)", names)
	}
	if ps, _ := s.Pages(ctx, 1); len(ps) != 4 {
		t.Errorf("session 1 pages %v", ps)
	}
	if !slices.Equal(r.LostMetas, []string{"c"}) || r.Redeleted != 5 {
		t.Errorf("report: lost %v, deletions rewritten %d (want [c], 4 pages + 1 name)", r.LostMetas, r.Redeleted)
	}
	// And it stays so: the rewritten deletions are in the journal.
	s.Close()
	if s, err = OpenSSD(cfg); err != nil {
		t.Fatal(err)
	}
	if ps, _ := s.Pages(ctx, 2); len(ps) != 0 {
		t.Errorf("after another restart session 2's pages %v are back", ps)
	}
	if names, _ := s.ListMeta(ctx); !slices.Equal(names, []string{"a"}) {
		t.Errorf("after another restart: metadata names %v", names)
	}
}
