package tiers

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// crashCopy copies a live tier's directory as a kill -9 would leave it: the
// segment files and Badger's files as they are in the page cache, with no
// Close, no checkpoint and no index sync.
func crashCopy(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o700)
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		defer out.Close()
		_, err = io.Copy(out, in)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

func mustGet(t *testing.T, s *SSD, id PageID, want []byte, wantGen uint64) {
	t.Helper()
	dst := make([]byte, len(want))
	gen, err := s.Get(context.Background(), id, dst)
	if err != nil || gen != wantGen || !bytes.Equal(dst, want) {
		t.Errorf("page %v: gen %d (want %d), err %v, equal %v", id, gen, wantGen, err, bytes.Equal(dst, want))
	}
}

// After a crash the index is brought up to date from the journal: every
// write, deletion and metadata record made since the last checkpoint is
// there, with the generations the journal holds.
func TestSSDCrashReplaysJournal(t *testing.T) {
	dir := t.TempDir()
	cfg := SSDConfig{Dir: dir, GCInterval: -1, SyncWrites: true, SegmentBytes: 1 << 20, CheckpointInterval: 1 << 40}
	s, err := OpenSSD(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	p := func(b byte) []byte { return bytes.Repeat([]byte{b}, 200<<10) }
	for i := uint32(0); i < 4; i++ {
		if err := s.Put(ctx, PageID{Session: 1, Page: i}, 1, p(byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutSessionMeta(ctx, "a", 1, []byte("meta v1")); err != nil {
		t.Fatal(err)
	}
	if err := s.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	// After the checkpoint: new generations, a deletion, a second session
	// deleted, new metadata, a metadata name deleted.
	if err := s.Put(ctx, PageID{Session: 1, Page: 1}, 2, p(11)); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, PageID{Session: 1, Page: 2}); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, PageID{Session: 2, Page: 0}, 1, p(20)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSession(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSessionMeta(ctx, "a", 1, []byte("meta v2")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSessionMeta(ctx, "b", 3, []byte("gone")); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMeta(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	for _, drop := range []bool{false, true} {
		cp := crashCopy(t, dir)
		if drop {
			// The index's files lost their newest state too (a machine
			// crash before Badger wrote its log): drop the memtable logs.
			mems, _ := filepath.Glob(filepath.Join(cp, "*.mem"))
			for _, m := range mems {
				os.Remove(m)
			}
		}
		c := cfg
		c.Dir = cp
		r, err := OpenSSD(c)
		if err != nil {
			t.Fatal(err)
		}
		rep := r.Recovery()
		if rep.Damaged != 0 {
			t.Errorf("drop=%v: damaged %d", drop, rep.Damaged)
		}
		mustGet(t, r, PageID{Session: 1, Page: 0}, p(0), 1)
		mustGet(t, r, PageID{Session: 1, Page: 1}, p(11), 2)
		mustGet(t, r, PageID{Session: 1, Page: 3}, p(3), 1)
		if g, ok := r.Generation(PageID{Session: 1, Page: 1}); !ok || g != 2 {
			t.Errorf("drop=%v: generation of 1/1: %d %v", drop, g, ok)
		}
		for _, id := range []PageID{{Session: 1, Page: 2}, {Session: 2, Page: 0}} {
			if _, err := r.Get(ctx, id, make([]byte, 200<<10)); !errors.Is(err, ErrNotFound) {
				t.Errorf("drop=%v: deleted page %v: %v", drop, id, err)
			}
		}
		if b, err := r.GetMeta(ctx, "a"); err != nil || string(b) != "meta v2" {
			t.Errorf("drop=%v: meta a: %q %v", drop, b, err)
		}
		if _, err := r.GetMeta(ctx, "b"); !errors.Is(err, ErrNotFound) {
			t.Errorf("drop=%v: deleted meta b: %v", drop, err)
		}
		if sess, ok := r.MetaSession("a"); !ok || sess != 1 {
			t.Errorf("drop=%v: meta a session %d %v", drop, sess, ok)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// Losing or damaging the index files never loses a record: the index is
// rebuilt from the journal, the old files moved aside.
func TestSSDIndexFilesLostOrDamaged(t *testing.T) {
	for _, damage := range []string{"MANIFEST deleted", "all index files deleted", "sst flipped", "vlog emptied", "KEYREGISTRY flipped"} {
		t.Run(damage, func(t *testing.T) {
			dir := t.TempDir()
			cfg := SSDConfig{Dir: dir, GCInterval: -1, MemTableSize: 1 << 20}
			s, err := OpenSSD(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			var batch []PageWrite
			for i := 0; i < 3000; i++ {
				batch = append(batch, PageWrite{ID: PageID{Session: uint64(i % 7), Page: uint32(i)}, Gen: 3, Page: []byte{byte(i), 1, 2, 3}})
			}
			if err := s.PutBatch(ctx, batch); err != nil {
				t.Fatal(err)
			}
			if err := s.PutSessionMeta(ctx, "keep", 1, []byte("blob")); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			ents, _ := os.ReadDir(dir)
			flipped := false
			for _, e := range ents {
				path := filepath.Join(dir, e.Name())
				switch {
				case damage == "MANIFEST deleted" && e.Name() == "MANIFEST",
					damage == "all index files deleted" && e.Type().IsRegular():
					os.Remove(path)
				case damage == "sst flipped" && strings.HasSuffix(e.Name(), ".sst"),
					damage == "KEYREGISTRY flipped" && e.Name() == "KEYREGISTRY":
					b, _ := os.ReadFile(path)
					if len(b) > 0 {
						b[len(b)/2] ^= 0xff
						os.WriteFile(path, b, 0o600)
						flipped = true
					}
				case damage == "vlog emptied" && strings.HasSuffix(e.Name(), ".vlog"):
					os.Truncate(path, 0)
				}
			}
			if strings.Contains(damage, "flipped") && !flipped {
				t.Skip("no such file in this index")
			}
			s, err = OpenSSD(cfg)
			if err != nil {
				t.Fatalf("open after %s: %v", damage, err)
			}
			defer s.Close()
			for _, w := range batch[:50] {
				mustGet(t, s, w.ID, w.Page, 3)
			}
			if st := s.Stats(); st.Pages != 3000 {
				t.Errorf("%d pages after %s", st.Pages, damage)
			}
			if b, err := s.GetMeta(ctx, "keep"); err != nil || string(b) != "blob" {
				t.Errorf("meta after %s: %q %v", damage, b, err)
			}
		})
	}
}

// A damaged latest metadata record falls back to the one before it; a
// damaged page is never served, and a rebuild quarantines it.
func TestSSDDamagedMetaFallsBack(t *testing.T) {
	dir := t.TempDir()
	cfg := SSDConfig{Dir: dir, GCInterval: -1}
	s, err := OpenSSD(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.PutSessionMeta(ctx, "m", 9, []byte("first")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSessionMeta(ctx, "m", 9, []byte("second")); err != nil {
		t.Fatal(err)
	}
	s.cacheMu.RLock()
	e := s.metas["m"].last()
	s.cacheMu.RUnlock()
	seg := s.segs.get(e.seg)
	// Flip the last byte of the blob.
	var b [1]byte
	seg.f.ReadAt(b[:], e.off+e.recordLen()-1)
	b[0] ^= 1
	seg.f.WriteAt(b[:], e.off+e.recordLen()-1)
	if got, err := s.GetMeta(ctx, "m"); err != nil || string(got) != "first" {
		t.Fatalf("damaged latest: %q %v, want the previous record", got, err)
	}
	s.Close()
	// Without the index: the rebuild skips (and quarantines) the damaged
	// record; the previous one is the latest.
	os.Remove(filepath.Join(dir, "MANIFEST"))
	s, err = OpenSSD(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rep := s.Recovery()
	if !rep.IndexRebuilt || rep.Damaged != 1 || len(rep.Quarantine) != 1 || len(rep.DamagedSessions) != 1 || rep.DamagedSessions[0] != 9 {
		t.Errorf("recovery %+v", rep)
	}
	if _, err := os.Stat(rep.Quarantine[0]); err != nil {
		t.Errorf("quarantined copy: %v", err)
	}
	if got, err := s.GetMeta(ctx, "m"); err != nil || string(got) != "first" {
		t.Fatalf("after rebuild: %q %v", got, err)
	}
}

// Below the free-space floor writes fail with ErrDiskFull before the
// filesystem is full; reads go on.
func TestSSDFreeSpaceFloor(t *testing.T) {
	dir := t.TempDir()
	free, err := freeBytes(dir)
	if err != nil {
		t.Skip(err)
	}
	s, err := OpenSSD(SSDConfig{Dir: dir, GCInterval: -1, SegmentBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	page := bytes.Repeat([]byte{5}, 64<<10)
	if err := s.Put(ctx, PageID{Session: 1, Page: 0}, 1, page); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = OpenSSD(SSDConfig{Dir: dir, GCInterval: -1, SegmentBytes: 1 << 20, MinFreeBytes: free + 1<<30})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var full error
	for i := uint32(1); i < 64 && full == nil; i++ {
		full = s.Put(ctx, PageID{Session: 1, Page: i}, 1, page)
	}
	if !errors.Is(full, ErrDiskFull) {
		t.Fatalf("writes under the floor: %v, want ErrDiskFull", full)
	}
	mustGet(t, s, PageID{Session: 1, Page: 0}, page, 1)
}

// Every file and directory the tier creates, Badger's included, is private.
func TestSSDFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ssd")
	s, err := OpenSSD(SSDConfig{Dir: dir, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), PageID{Session: 1, Page: 0}, 1, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, _ := d.Info()
		if info.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: mode %v", path, info.Mode().Perm())
		}
		return nil
	})
}

// A lost MANIFEST after a crash: Badger replays its memtable log (which has
// a checkpoint) but no longer knows its tables; the index must still be
// rebuilt, not trusted.
func TestSSDManifestLostAfterCrash(t *testing.T) {
	dir := t.TempDir()
	cfg := SSDConfig{Dir: dir, GCInterval: -1, CheckpointInterval: 1 << 40}
	s, err := OpenSSD(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := uint32(0); i < 50; i++ {
		if err := s.Put(ctx, PageID{Session: 1, Page: i}, 1, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s, err = OpenSSD(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.PutSessionMeta(ctx, "m", 1, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	cp := crashCopy(t, dir)
	os.Remove(filepath.Join(cp, "MANIFEST"))
	c := cfg
	c.Dir = cp
	r, err := OpenSSD(c)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if st := r.Stats(); st.Pages != 50 || !r.Recovery().IndexRebuilt {
		t.Fatalf("%d pages, recovery %+v", st.Pages, r.Recovery())
	}
}
