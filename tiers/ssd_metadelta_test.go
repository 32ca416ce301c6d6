package tiers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// concatMerge is a MergeMeta for tests: the blob is the base with the deltas
// appended; a delta starting with '!' does not apply.
func concatMerge(base []byte, deltas [][]byte) ([]byte, int, error) {
	out := slices.Clone(base)
	for i, d := range deltas {
		if bytes.HasPrefix(d, []byte("!")) {
			return out, i, fmt.Errorf("delta %d does not apply", i)
		}
		out = append(out, d...)
	}
	return out, len(deltas), nil
}

func flipRecord(t *testing.T, s *SSD, e indexEntry) {
	t.Helper()
	seg := s.segs.get(e.seg)
	var b [1]byte
	seg.f.ReadAt(b[:], e.off+e.recordLen()-1)
	b[0] ^= 1
	if _, err := seg.f.WriteAt(b[:], e.off+e.recordLen()-1); err != nil {
		t.Fatal(err)
	}
}

func wantMeta(t *testing.T, s *SSD, name, want string, deltas int) MetaPos {
	t.Helper()
	got, pos, err := s.GetMetaPos(context.Background(), name)
	if err != nil || string(got) != want || pos.Deltas != deltas {
		t.Fatalf("meta %q: %q (%d deltas) %v, want %q (%d deltas)", name, got, pos.Deltas, err, want, deltas)
	}
	return pos
}

// A name's metadata is a full record and the deltas after it: reads merge
// them, through a replay, a rebuild and compaction alike; a delta must follow
// the chain's newest record; damage falls back to the last intact prefix.
func TestSSDMetaDeltaChain(t *testing.T) {
	dir := t.TempDir()
	cfg := SSDConfig{Dir: dir, GCInterval: -1, SegmentBytes: 1 << 20, MergeMeta: concatMerge}
	s, err := OpenSSD(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pos, err := s.PutMetaBase(ctx, "m", 9, []byte("B"))
	if err != nil || pos.Deltas != 0 || pos.BaseBytes != 1 {
		t.Fatalf("base: %+v %v", pos, err)
	}
	if _, err := s.PutMetaDelta(ctx, "none", 9, pos.Seq, []byte("x")); !errors.Is(err, ErrStale) {
		t.Fatalf("delta without a full record: %v", err)
	}
	first := pos.Seq
	for _, d := range []string{"1", "22", "333"} {
		if pos, err = s.PutMetaDelta(ctx, "m", 9, pos.Seq, []byte(d)); err != nil {
			t.Fatal(err)
		}
	}
	if pos.Deltas != 3 || pos.DeltaBytes != 6 || pos.BaseBytes != 1 {
		t.Fatalf("pos %+v", pos)
	}
	if _, err := s.PutMetaDelta(ctx, "m", 9, first, []byte("x")); !errors.Is(err, ErrStale) {
		t.Fatalf("delta after an older record: %v", err)
	}
	wantMeta(t, s, "m", "B122333", 3)
	if id, ok := s.MetaSession("m"); !ok || id != 9 {
		t.Fatalf("MetaSession %d %v", id, ok)
	}
	raw, err := s.ReadMetaChain(ctx, "m")
	if err != nil || string(raw.Base) != "B" || len(raw.Deltas) != 3 || raw.Damaged != nil {
		t.Fatalf("chain %+v %v", raw, err)
	}
	s.Close()

	// Replay, then rebuild: the same chain.
	for _, rebuild := range []bool{false, true} {
		if rebuild {
			os.Remove(filepath.Join(dir, "MANIFEST"))
		}
		if s, err = OpenSSD(cfg); err != nil {
			t.Fatal(err)
		}
		if s.Recovery().IndexRebuilt != rebuild {
			t.Fatalf("rebuilt %v", s.Recovery().IndexRebuilt)
		}
		p := wantMeta(t, s, "m", "B122333", 3)
		if p != pos {
			t.Fatalf("after reopen (rebuild %v) pos %+v, want %+v", rebuild, p, pos)
		}
		s.Close()
	}
	if s, err = OpenSSD(cfg); err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()

	// A damaged delta: the deltas before it; the next delta must be a full record.
	s.cacheMu.RLock()
	ents := s.metas["m"].ents
	s.cacheMu.RUnlock()
	flipRecord(t, s, ents[2])
	p := wantMeta(t, s, "m", "B1", 1)
	if p.Seq != ents[1].seq {
		t.Fatalf("prefix pos %+v, want seq %d", p, ents[1].seq)
	}
	if _, err := s.PutMetaDelta(ctx, "m", 9, p.Seq, []byte("x")); !errors.Is(err, ErrStale) {
		t.Fatalf("delta after a damaged chain's prefix: %v", err)
	}
	// A new full record; its deltas; the old chain is the fallback.
	if pos, err = s.PutMetaBase(ctx, "m", 9, []byte("C")); err != nil {
		t.Fatal(err)
	}
	if pos, err = s.PutMetaDelta(ctx, "m", 9, pos.Seq, []byte("!")); err != nil {
		t.Fatal(err)
	}
	// A delta that verifies but does not apply counts as damaged.
	if p := wantMeta(t, s, "m", "C", 0); p.Seq != pos.Seq-1 {
		t.Fatalf("pos %+v", p)
	}
	s.cacheMu.RLock()
	ents = s.metas["m"].ents
	s.cacheMu.RUnlock()
	if len(ents) != 6 {
		t.Fatalf("index holds %d records, want the old chain (4) and the new (2)", len(ents))
	}
	flipRecord(t, s, ents[4]) // the full record "C"
	wantMeta(t, s, "m", "B1", 1)

	// Another full record drops the oldest chain: garbage compaction reclaims.
	if pos, err = s.PutMetaBase(ctx, "m", 9, []byte("D")); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if pos, err = s.PutMetaDelta(ctx, "m", 9, pos.Seq, []byte(strings.Repeat("d", i))); err != nil {
			t.Fatal(err)
		}
	}
	want := "D" + func() string {
		var b strings.Builder
		for i := range 40 {
			b.WriteString(strings.Repeat("d", i))
		}
		return b.String()
	}()
	// Fill and garbage segments so the chain's records move.
	big := bytes.Repeat([]byte("g"), 200<<10)
	for range 12 {
		if err := s.PutMeta(ctx, "junk", big); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteMeta(ctx, "junk"); err != nil {
		t.Fatal(err)
	}
	before := s.Compactions()
	if err := s.compact(); err != nil {
		t.Fatal(err)
	}
	if s.Compactions() == before {
		t.Fatal("nothing compacted")
	}
	wantMeta(t, s, "m", want, 40)
	s.Close()
	os.Remove(filepath.Join(dir, "MANIFEST"))
	if s, err = OpenSSD(cfg); err != nil {
		t.Fatal(err)
	}
	if p := wantMeta(t, s, "m", want, 40); p != pos {
		t.Fatalf("after compaction and rebuild pos %+v, want %+v", p, pos)
	}
	if _, err := s.PutMetaDelta(ctx, "m", 9, pos.Seq, []byte("e")); err != nil {
		t.Fatal(err)
	}
	wantMeta(t, s, "m", want+"e", 41)
	// Deletion covers every record of the name, in a rebuild too.
	if err := s.DeleteMeta(ctx, "m"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	os.Remove(filepath.Join(dir, "MANIFEST"))
	if s, err = OpenSSD(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetMeta(ctx, "m"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted name: %v", err)
	}
}

// A chain may not outgrow the index value: past MaxMetaDeltas a delta is
// refused, and a store without MergeMeta cannot read a chain whole.
func TestSSDMetaDeltaLimit(t *testing.T) {
	s, err := OpenSSD(SSDConfig{Dir: t.TempDir(), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	pos, err := s.PutMetaBase(ctx, "m", 1, []byte("B"))
	if err != nil {
		t.Fatal(err)
	}
	for range MaxMetaDeltas {
		if pos, err = s.PutMetaDelta(ctx, "m", 1, pos.Seq, []byte("d")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.PutMetaDelta(ctx, "m", 1, pos.Seq, []byte("d")); !errors.Is(err, ErrStale) {
		t.Fatalf("delta %d: %v", MaxMetaDeltas+1, err)
	}
	if pos, err = s.PutMetaBase(ctx, "m", 1, []byte("B")); err != nil {
		t.Fatal(err)
	}
	for range MaxMetaDeltas {
		if pos, err = s.PutMetaDelta(ctx, "m", 1, pos.Seq, []byte("d")); err != nil {
			t.Fatal(err)
		}
	}
	s.cacheMu.RLock()
	v := encodeMetaRef(s.metas["m"])
	s.cacheMu.RUnlock()
	if len(v) >= ssdValueLimit {
		t.Fatalf("index value of %d B reaches Badger's value threshold %d", len(v), ssdValueLimit)
	}
	if _, err := s.GetMeta(ctx, "m"); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("GetMeta without MergeMeta: %v", err)
	}
}

func TestResolveMetaChain(t *testing.T) {
	b := func(seq uint64) indexEntry { return indexEntry{kind: kindMeta, seq: seq, gen: 7} }
	d := func(seq, after uint64) indexEntry { return indexEntry{kind: kindMetaDelta, seq: seq, gen: after} }
	for _, tc := range []struct {
		name        string
		cands, want []indexEntry
	}{
		{"empty", nil, nil},
		{"orphan deltas", []indexEntry{d(3, 2)}, nil},
		{"one chain", []indexEntry{d(3, 2), b(1), d(2, 1)}, []indexEntry{b(1), d(2, 1), d(3, 2)}},
		{"two chains, oldest dropped", []indexEntry{b(1), d(2, 1), b(3), d(4, 3), b(5), d(6, 5)}, []indexEntry{b(3), d(4, 3), b(5), d(6, 5)}},
		{"gap cuts the chain", []indexEntry{b(1), d(2, 1), d(4, 3)}, []indexEntry{b(1), d(2, 1)}},
		{"a failed write's retry wins", []indexEntry{b(1), d(2, 1), d(3, 1)}, []indexEntry{b(1), d(3, 1)}},
	} {
		if got := resolveMetaChain(tc.cands); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
		if tc.want != nil {
			if err := checkMetaChain(tc.want); err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
		}
	}
}
