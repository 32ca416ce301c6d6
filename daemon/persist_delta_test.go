package daemon

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/proto"
)

func sessionNamed(t *testing.T, d *Daemon, name string) *session {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.byName[name]
	if s == nil {
		t.Fatalf("no session %q", name)
	}
	return s
}

// A PERSIST of a session that grew by one cycle writes a delta (the new
// chunks' keys, the selection state, the changed generations), not the whole
// state; a restarted daemon resumes the exact state the chain adds up to.
func TestPersistWritesDeltas(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	rd := start(t, cfg)
	c := dial(t, cfg.Socket)
	ctx := context.Background()
	l := testLayout(96)
	op, err := c.Open(ctx, &proto.Open{Name: "grow", Persist: true, Layout: l, Policy: proto.Policy{KMax: 16}})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	const seed = 5
	chunks := uint64(8192) // 32K tokens; FM_PERSIST_CHUNKS for a larger measurement
	if v, err := strconv.ParseUint(os.Getenv("FM_PERSIST_CHUNKS"), 10, 64); err == nil && v > 0 {
		chunks = v
	}
	appendAll(t, c, op.Session, &l, seed, 0, chunks, r)
	cycle := func() {
		t.Helper()
		res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: chunks * 4, Queries: queries(r, 64, 3)}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("Cycle: %v %v", err, res[0].Err)
		}
		if res[0].Lease != 0 {
			if err := c.Release(ctx, res[0].Lease); err != nil {
				t.Fatal(err)
			}
		}
	}
	cycle()
	if err := c.Persist(ctx, op.Session); err != nil {
		t.Fatal(err)
	}
	s := sessionNamed(t, rd.d, "grow")
	s.mu.Lock()
	first := s.meta.pos
	s.mu.Unlock()
	if first.Deltas != 0 && first.Deltas != 1 {
		t.Fatalf("first PERSIST: %+v", first)
	}
	// One cycle between PERSISTs: 16 chunks (64 tokens), one CYCLE.
	var fullMax, deltaMax int64
	var deltaTime time.Duration
	fulls := 0
	const persists = 24
	for i := range persists {
		appendAll(t, c, op.Session, &l, seed, chunks, chunks+16, r)
		chunks += 16
		cycle()
		s.mu.Lock()
		before := s.meta.pos
		s.mu.Unlock()
		t0 := time.Now()
		if err := c.Persist(ctx, op.Session); err != nil {
			t.Fatal(err)
		}
		deltaTime += time.Since(t0)
		s.mu.Lock()
		after := s.meta.pos
		state, err := s.req.MarshalBinary()
		s.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		wrote := after.BaseBytes
		if after.Deltas > 0 {
			wrote = after.DeltaBytes - before.DeltaBytes
		} else {
			fulls++
		}
		full := after.BaseBytes
		if after.Deltas > 0 {
			full = int64(len(state)) // what a full record would have held, within its small JSON
		}
		fullMax, deltaMax = max(fullMax, full), max(deltaMax, wrote)
		if after.Deltas > 0 && wrote*20 > full {
			t.Errorf("PERSIST %d wrote %d B for one cycle; the whole state is %d B", i, wrote, full)
		}
		if i == 0 || i == persists-1 {
			t.Logf("PERSIST %d (%d chunks): metadata record %d B (%d deltas in the chain); a full record would be ≥ %d B", i, chunks, wrote, after.Deltas, full)
		}
	}
	if fulls > 0 {
		t.Errorf("%d of %d PERSISTs wrote a full record; the chain stays under half the state", fulls, persists)
	}
	// The same growth with a full record every PERSIST (what was written
	// before deltas), same run: bytes and time.
	var fullTime time.Duration
	var fullBytes int64
	const fullPersists = 4
	for range fullPersists {
		appendAll(t, c, op.Session, &l, seed, chunks, chunks+16, r)
		chunks += 16
		cycle()
		s.mu.Lock()
		s.meta = metaSaved{}
		s.mu.Unlock()
		t0 := time.Now()
		if err := c.Persist(ctx, op.Session); err != nil {
			t.Fatal(err)
		}
		fullTime += time.Since(t0)
		s.mu.Lock()
		if s.meta.pos.Deltas != 0 {
			t.Fatalf("forced full record: %+v", s.meta.pos)
		}
		fullBytes = max(fullBytes, s.meta.pos.BaseBytes)
		s.mu.Unlock()
	}
	t.Logf("same run, %d chunks: PERSIST as a delta ≤ %d B, %v mean; as a full record %d B, %v mean",
		chunks, deltaMax, deltaTime/persists, fullBytes, fullTime/fullPersists)
	s.mu.Lock()
	want, err := s.req.MarshalBinary()
	wantCycles, wantChunks := s.cycles, s.chunks
	wantGens := append([]uint64(nil), s.gens...)
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bytes per PERSIST of a 1-cycle growth: ≤ %d B as deltas, %d B as full records (%.0f×)", deltaMax, fullMax, float64(fullMax)/float64(deltaMax))
	c.Close()
	rd.shutdown(t)

	rd = start(t, cfg)
	defer rd.shutdown(t)
	c = dial(t, cfg.Socket)
	rr, err := c.Resume(ctx, "grow")
	if err != nil {
		t.Fatal(err)
	}
	if rr.Chunks != wantChunks {
		t.Fatalf("resumed %d chunks, want %d", rr.Chunks, wantChunks)
	}
	s = sessionNamed(t, rd.d, "grow")
	s.mu.Lock()
	got, err := s.req.MarshalBinary()
	gotCycles, gotGens, pos := s.cycles, s.gens, s.meta.pos
	s.mu.Unlock()
	if err != nil || !bytes.Equal(got, want) || gotCycles != wantCycles || !equalU64(gotGens, wantGens) {
		t.Fatalf("resumed state differs: %v, cycles %d/%d, state equal %v", err, gotCycles, wantCycles, bytes.Equal(got, want))
	}
	if pos.Seq == 0 {
		t.Fatal("resumed session does not know its metadata chain")
	}
	// The resumed session goes on writing deltas onto the chain it read.
	appendAll(t, c, rr.Session, &l, seed, chunks, chunks+16, r)
	if err := c.Persist(ctx, rr.Session); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	next := s.meta.pos
	s.mu.Unlock()
	if next.Deltas != pos.Deltas+1 {
		t.Fatalf("PERSIST after RESUME: chain %+v, before %+v", next, pos)
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A damaged metadata delta: RESUME gets the state of the deltas before it
// (never a refusal, never a wrong state), appends go on from there, and the
// next PERSIST writes a full record.
func TestDamagedMetaDeltaResumesPrefix(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	rd := start(t, cfg)
	c := dial(t, cfg.Socket)
	ctx := context.Background()
	l := testLayout(96)
	op, err := c.Open(ctx, &proto.Open{Name: "dmg", Persist: true, Layout: l, Policy: proto.Policy{KMax: 16}})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 6))
	const seed = 9
	appendAll(t, c, op.Session, &l, seed, 0, 4096, r)
	if err := c.Persist(ctx, op.Session); err != nil { // full
		t.Fatal(err)
	}
	var states [][]byte
	var chunks []uint64
	for i, n := range []uint64{4096, 4096 + 64} {
		appendAll(t, c, op.Session, &l, seed, n, n+64, r)
		if err := c.Persist(ctx, op.Session); err != nil {
			t.Fatal(err)
		}
		s := sessionNamed(t, rd.d, "dmg")
		s.mu.Lock()
		st, err := s.req.MarshalBinary()
		pos := s.meta.pos
		s.mu.Unlock()
		if err != nil || pos.Deltas != i+1 {
			t.Fatalf("PERSIST %d: chain %+v %v", i, pos, err)
		}
		states, chunks = append(states, st), append(chunks, n+64)
	}
	c.Close()
	rd.shutdown(t)

	// Flip a body byte of the second delta (records in file order: no
	// compaction ran in this short a test).
	segs, _ := filepath.Glob(filepath.Join(cfg.DataDir, "ssd", "pages", "*.seg"))
	found := 0
	for _, f := range segs {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off+64 < len(b); off += 512 {
			if string(b[off:off+4]) != "FMMD" {
				continue
			}
			if found++; found == 2 {
				b[off+48+len("dmg")+8] ^= 0x20
				if err := os.WriteFile(f, b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if found < 2 {
		t.Fatalf("%d delta records in the journal", found)
	}
	rd = start(t, cfg)
	defer rd.shutdown(t)
	c = dial(t, cfg.Socket)
	rr, err := c.Resume(ctx, "dmg")
	if err != nil {
		t.Fatalf("RESUME with a damaged delta: %v", err)
	}
	if rr.Chunks != chunks[0] {
		t.Fatalf("resumed %d chunks, want %d (the intact prefix)", rr.Chunks, chunks[0])
	}
	s := sessionNamed(t, rd.d, "dmg")
	s.mu.Lock()
	st, err := s.req.MarshalBinary()
	s.mu.Unlock()
	if err != nil || !bytes.Equal(st, states[0]) {
		t.Fatalf("resumed indexer state is not the first delta's: %v", err)
	}
	appendAll(t, c, rr.Session, &l, seed, rr.Chunks, rr.Chunks+64, r)
	if err := c.Persist(ctx, rr.Session); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	pos := s.meta.pos
	s.mu.Unlock()
	if pos.Deltas != 0 {
		t.Fatalf("PERSIST after a damaged chain wrote a delta: %+v", pos)
	}
}
