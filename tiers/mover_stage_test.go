package tiers

import (
	"bytes"
	"container/heap"
	"context"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// queueOnly is a Mover with no workers: the staging queue's policy alone.
func queueOnly(cfg MoverConfig) *Mover {
	m := &Mover{cfg: cfg}
	m.st.byID = map[PageID]*stageEntry{}
	m.st.flying = map[PageID]chan struct{}{}
	m.st.allowed = cfg.StageWorkers
	m.cond = sync.NewCond(&m.mu)
	m.stageCond = sync.NewCond(&m.mu)
	return m
}

func drain(m *Mover) []PageID {
	var out []PageID
	for len(m.st.q) > 0 {
		out = append(out, heap.Pop(&m.st.q).(*stageEntry).ID)
	}
	return out
}

func TestStageQueuePolicy(t *testing.T) {
	p := func(s uint64, pg uint32) PageID { return PageID{Session: s, Page: pg} }
	tests := []struct {
		name    string
		bytes   int64
		calls   [][]StageItem
		want    []PageID
		dropped uint64
		super   uint64
	}{
		{"rank order across sessions, older first on ties", 1 << 30, [][]StageItem{
			{{p(1, 10), 0, 1}, {p(1, 11), 1, 1}, {p(1, 12), 2, 1}},
			{{p(2, 20), 0, 1}, {p(2, 21), 1, 1}},
		}, []PageID{p(1, 10), p(2, 20), p(1, 11), p(2, 21), p(1, 12)}, 0, 0},
		{"a new ranking supersedes the session's old one", 1 << 30, [][]StageItem{
			{{p(1, 10), 0, 1}, {p(1, 11), 1, 1}, {p(2, 20), 0, 1}},
			{{p(1, 11), 0, 1}, {p(1, 12), 1, 1}},
		}, []PageID{p(1, 11), p(2, 20), p(1, 12)}, 0, 1}, // 1/11 re-ranked 0, queued before 2/20
		{"byte bound keeps the best ranked", 3, [][]StageItem{
			{{p(1, 10), 2, 1}, {p(1, 11), 3, 1}, {p(1, 12), 4, 1}},
			{{p(2, 20), 0, 1}, {p(2, 21), 5, 1}},
		}, []PageID{p(2, 20), p(1, 10), p(1, 11)}, 2, 0},
		{"a candidate larger than the bound is dropped", 3, [][]StageItem{
			{{p(1, 10), 0, 4}, {p(1, 11), 1, 2}},
		}, []PageID{p(1, 11)}, 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := queueOnly(MoverConfig{MaxQueuedStages: 100, StageBytes: tc.bytes, StageWorkers: 2, StageBackoff: 4})
			for _, c := range tc.calls {
				m.StageRanked(c)
			}
			if m.st.bytes > tc.bytes {
				t.Errorf("queued bytes %d over the bound %d", m.st.bytes, tc.bytes)
			}
			if got := drain(m); !slices.Equal(got, tc.want) {
				t.Errorf("served %v, want %v", got, tc.want)
			}
			if d := m.stageDropped.Load(); d != tc.dropped {
				t.Errorf("dropped %d, want %d", d, tc.dropped)
			}
			if s := m.stageCtr.superseded.Load(); s != tc.super {
				t.Errorf("superseded %d, want %d", s, tc.super)
			}
		})
	}
}

func TestStageBackoff(t *testing.T) {
	m := queueOnly(MoverConfig{StageWorkers: 8, StageBackoff: 4})
	const page = 150000
	for range 50 {
		m.adapt(300*time.Microsecond, page) // an idle disk
	}
	if m.st.allowed != 8 || m.stageCtr.backoffs.Load() != 0 {
		t.Fatalf("fast reads: allowed %d, backoffs %d", m.st.allowed, m.stageCtr.backoffs.Load())
	}
	for range 50 {
		m.adapt(5*time.Millisecond, page) // the disk's queue is full
	}
	if m.st.allowed != 1 || m.stageCtr.backoffs.Load() < 3 {
		t.Fatalf("slow reads: allowed %d, backoffs %d; want 1 and ≥ 3", m.st.allowed, m.stageCtr.backoffs.Load())
	}
	for range 50 {
		m.adapt(320*time.Microsecond, page)
	}
	if m.st.allowed != 8 {
		t.Fatalf("fast again: allowed %d, want 8", m.st.allowed)
	}
}

// BenchmarkMoverStage is staging throughput in a daemon's steady state:
// pages written straight to SSD in two sets, a mirror with room for one set
// and full of the other (staged, so clean), and each iteration stages the
// set that is not in the mirror through the Mover with its defaults
// (O_DIRECT reads, its stagers, back-off on): every staged page takes the
// slot of the coldest clean page, as staging does in a full daemon. (It
// used to drop the staged set between iterations, which unmapped the
// mirror's extents, so every copy into the mirror paid first-touch page
// faults no running daemon pays: 36 % of the stagers' CPU.)
// scripts/capacity-bench.sh sets the page size with FM_STAGE_PAGE and
// compares the rate with fio's random reads of the same size in the same
// run.
func BenchmarkMoverStage(b *testing.B) {
	f := newStageBench(b, 1024)
	f.stage(1) // fills the mirror
	b.SetBytes(int64(f.pages) * int64(f.page))
	a0, busy0 := f.st.SSD().direct.qd.read()
	t0 := time.Now()
	b.ResetTimer()
	for i := range b.N {
		f.stage(i % 2)
	}
	b.StopTimer()
	wall := time.Since(t0).Seconds()
	a1, busy1 := f.st.SSD().direct.qd.read()
	ms := f.m.Stats()
	b.ReportMetric(float64(ms.StageBackoffs)/float64(b.N), "backoffs/op")
	// qd: the reads in flight on average while any was; busy: the share
	// of the time any was (1 - busy is time the disk had nothing from
	// staging: ramp, tail, polling).
	b.ReportMetric((a1-a0)/max(busy1-busy0, 1e-9), "qd")
	b.ReportMetric((busy1-busy0)/wall, "busy")
}

// stageBench is BenchmarkMoverStage's store: two sets of pages on SSD, a
// mirror with room for one of them.
type stageBench struct {
	b           *testing.B
	st          *Store
	m           *Mover
	dir         string
	page, pages int
	sets        [2][]PageID
}

// newStageBench writes two sets of pages (FM_STAGE_PAGE bytes each,
// default 149760) of 32 sessions each, in order, and opens a Mover with
// its defaults (FM_STAGE_WORKERS and FM_READ_QD override the stagers and
// the read queue depth). Each session's ranking is a random order of its
// pages, so staging (rank 0 of every session, then rank 1, ...) reads the
// journal at random places.
func newStageBench(b *testing.B, pages int) *stageBench {
	n := 149760
	if v := envInt("FM_STAGE_PAGE"); v > 0 {
		n = v
	}
	f := &stageBench{b: b, dir: b.TempDir(), page: n, pages: pages}
	st, err := OpenStore(StoreConfig{Mirror: MirrorConfig{Budget: int64(pages) * alignUp(int64(n), mirrorAlign)},
		SSD: SSDConfig{Dir: f.dir, GCInterval: -1, MemTableSize: 4 << 20, ReadQueueDepth: envInt("FM_READ_QD")}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	f.st = st
	// StageBytes: a whole set queued at once, as the default 256 MiB
	// holds 1,024 pages of 146 KiB (queued candidates past it are
	// dropped).
	f.m = NewMover(st, MoverConfig{StageWorkers: envInt("FM_STAGE_WORKERS"), StageBytes: max(256<<20, 2*int64(pages)*int64(n))})
	b.Cleanup(f.m.Close)
	ctx := context.Background()
	body := bytes.Repeat([]byte{0x5a, 0xa5, 3}, n/3+1)[:n]
	r := rand.New(rand.NewPCG(5, 5))
	for set := range f.sets {
		ids := make([]PageID, pages)
		for p := 0; p < pages; p += 32 {
			var ws []PageWrite
			for q := p; q < p+32; q++ {
				ids[q] = PageID{Session: uint64(1 + set*pages/32 + q/32), Page: uint32(q % 32)}
				ws = append(ws, PageWrite{ID: ids[q], Gen: 1, Page: body})
			}
			if err := st.SSD().PutBatch(ctx, ws); err != nil {
				b.Fatal(err)
			}
		}
		for p := 0; p < pages; p += 32 {
			r.Shuffle(32, func(i, j int) { ids[p+i], ids[p+j] = ids[p+j], ids[p+i] })
		}
		f.sets[set] = ids
	}
	if err := st.SSD().Sync(); err != nil {
		b.Fatal(err)
	}
	return f
}

// stage stages set (0 or 1), which is not in the mirror, and returns when
// every page of it is.
func (f *stageBench) stage(set int) {
	start := f.st.Snapshot().Staged
	items := make([]StageItem, f.pages)
	for i, id := range f.sets[set] {
		items[i] = StageItem{ID: id, Rank: i % 32, Bytes: int64(f.page)}
	}
	for i := 0; i < f.pages; i += 32 {
		f.m.StageRanked(items[i : i+32])
	}
	deadline := time.Now().Add(2 * time.Minute)
	for f.st.Snapshot().Staged-start < uint64(f.pages) {
		if time.Now().After(deadline) {
			f.b.Fatalf("staged %d of %d pages in 2 minutes (%+v)", f.st.Snapshot().Staged-start, f.pages, f.m.Stats())
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// A new ranking removes every queued candidate of its session it no longer
// names, whatever their places in the heap.
func TestStageSupersedeMany(t *testing.T) {
	m := queueOnly(MoverConfig{MaxQueuedStages: 1000, StageBytes: 1 << 30, StageWorkers: 2, StageBackoff: 4})
	r := rand.New(rand.NewPCG(3, 3))
	var items []StageItem
	for p := range 200 {
		items = append(items, StageItem{ID: PageID{Session: uint64(1 + p%2), Page: uint32(p)}, Rank: r.IntN(50), Bytes: 1})
	}
	m.StageRanked(items)
	keep := StageItem{ID: PageID{Session: 1, Page: 1000}, Rank: 0, Bytes: 1}
	m.StageRanked([]StageItem{keep})
	for _, id := range drain(m) {
		if id.Session == 1 && id != keep.ID {
			t.Fatalf("superseded candidate %v still queued", id)
		}
	}
	if s := m.stageCtr.superseded.Load(); s != 100 {
		t.Fatalf("superseded %d, want 100", s)
	}
}

// A recall of a page staging holds is read from SSD once: a queued
// candidate is taken over by the recall, and a recall of a page a stager is
// reading waits for that read and copies the page from the mirror.
func TestRecallJoinsStaging(t *testing.T) {
	f := newMoverFixture(t, 24, 4, 8) // pages 0..19 on SSD only
	m := f.mover
	id := func(p uint32) PageID { return PageID{Session: 1, Page: p} }

	// Queued: the stagers are held (none allowed), the recall claims it.
	m.mu.Lock()
	m.st.allowed = 0
	m.mu.Unlock()
	if n := m.StageRanked([]StageItem{{ID: id(3), Bytes: 1}, {ID: id(4), Rank: 1, Bytes: 1}}); n != 2 {
		t.Fatalf("queued %d candidates, want 2", n)
	}
	res := f.recall(t, 1, 3)
	if res[0].Err != nil || res[0].Source != SourceSSD {
		t.Fatalf("recall of a queued candidate: %+v, want it read from SSD", res[0])
	}
	// (The recall's fast read lets a stager in again: page 4 may be
	// staged by now, page 3 must not be queued any more.)
	m.mu.Lock()
	_, still := m.st.byID[id(3)]
	m.mu.Unlock()
	if still || m.Stats().StageClaimed != 1 {
		t.Fatalf("after the recall: page 3 still queued %v, claimed %d; want false, 1", still, m.Stats().StageClaimed)
	}

	// In flight: a stager's read of page 5 is under way (played here), so
	// the recall waits for it instead of reading the page a second time.
	done := make(chan struct{})
	m.mu.Lock()
	m.st.flying[id(5)] = done
	m.mu.Unlock()
	a, err := f.region.Allocate(5)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.region.PinLoading(2, []int{a.Slot}); err != nil {
		t.Fatal(err)
	}
	tk, err := m.Recall(f.region, []RecallItem{{ID: id(5), Slot: a.Slot, Gen: f.gens[5]}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-tk.Done():
		t.Fatal("the recall finished while the stager's read of its page was in flight")
	case <-time.After(50 * time.Millisecond):
	}
	if n, err := f.store.Stage(context.Background(), []PageID{id(5)}); n != 1 || err != nil {
		t.Fatalf("stage page 5: %d, %v", n, err)
	}
	m.mu.Lock()
	delete(m.st.flying, id(5))
	close(done)
	m.mu.Unlock()
	select {
	case <-tk.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the recall did not finish after the stager's read")
	}
	if r := tk.Results()[0]; r.Err != nil || r.Source != SourceStaged {
		t.Fatalf("recall after the stager's read: %+v, want it copied from the mirror (staged)", r)
	}
	if j := m.Stats().StageJoined; j != 1 {
		t.Fatalf("joined %d, want 1", j)
	}
}

// envInt is a benchmark knob from the environment (0 when unset).
func envInt(name string) int {
	v, _ := strconv.Atoi(os.Getenv(name))
	return v
}
