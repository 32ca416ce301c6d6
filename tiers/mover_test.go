package tiers

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

type moverFixture struct {
	store  *Store
	mover  *Mover
	region *Region
	geo    *Geometry
	pages  map[uint32][]byte
	gens   map[uint32]uint64
}

// newMoverFixture writes npages pages of smallLayout for session 1 into a
// store whose mirror holds budget pages, so the early pages are on SSD only.
func newMoverFixture(t *testing.T, npages, budget, slots int) *moverFixture {
	t.Helper()
	geo, err := NewGeometry(smallLayout)
	if err != nil {
		t.Fatal(err)
	}
	st := openTestStore(t, t.TempDir(), budget, geo.PageBytes())
	f := &moverFixture{store: st, geo: geo, pages: map[uint32][]byte{}, gens: map[uint32]uint64{}}
	f.region = newRegion(t, smallLayout, slots)
	f.mover = NewMover(st, MoverConfig{Workers: 3})
	t.Cleanup(func() {
		f.mover.Close()
		st.Close()
	})
	r := rand.New(rand.NewPCG(11, 11))
	for p := 0; p < npages; p++ {
		f.write(t, uint32(p), randBytes(r, geo.PageBytes()))
	}
	return f
}

func (f *moverFixture) write(t *testing.T, p uint32, b []byte) {
	t.Helper()
	f.gens[p]++
	f.pages[p] = b
	if err := f.store.Write(context.Background(), PageID{Session: 1, Page: p}, f.gens[p], b); err != nil {
		t.Fatal(err)
	}
}

// recall allocates and pins slots for pages, recalls them and waits.
func (f *moverFixture) recall(t *testing.T, lease LeaseID, pages ...uint32) []RecallResult {
	t.Helper()
	var items []RecallItem
	var slots []int
	for _, p := range pages {
		a, err := f.region.Allocate(p)
		if err != nil {
			t.Fatal(err)
		}
		slots = append(slots, a.Slot)
		items = append(items, RecallItem{ID: PageID{Session: 1, Page: p}, Slot: a.Slot, Gen: f.gens[p]})
	}
	if err := f.region.PinLoading(lease, slots); err != nil {
		t.Fatal(err)
	}
	tk, err := f.mover.Recall(f.region, items)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tk.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// The cycle reply delivers the table under this lease.
	if err := f.region.HandOut(lease); err != nil {
		t.Fatal(err)
	}
	return tk.Results()
}

func (f *moverFixture) checkResident(t *testing.T, pages ...uint32) {
	t.Helper()
	dst := make([]byte, f.geo.PageBytes())
	for _, p := range pages {
		slot, gen, ok := f.region.Lookup(p)
		if !ok || gen != f.gens[p] {
			t.Fatalf("page %d: resident %v at generation %d, want %d", p, ok, gen, f.gens[p])
		}
		if _, err := f.region.ReadPage(slot, p, dst); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(dst, f.pages[p]) {
			t.Fatalf("page %d: reserve bytes differ from what was written", p)
		}
	}
}

func TestMoverRecallSources(t *testing.T) {
	f := newMoverFixture(t, 30, 16, 16)
	// 0..3 were spilled (late: from SSD), 26..29 are in the mirror.
	res := f.recall(t, 1, 0, 1, 2, 3, 26, 27, 28, 29)
	for _, r := range res {
		want := SourceMirror
		if r.ID.Page < 4 {
			want = SourceSSD
		}
		if r.Source != want || r.Copied != f.gens[r.ID.Page] {
			t.Errorf("page %d: source %v copied gen %d; want %v, %d", r.ID.Page, r.Source, r.Copied, want, f.gens[r.ID.Page])
		}
	}
	f.checkResident(t, 0, 1, 2, 3, 26, 27, 28, 29)
	ms := f.mover.Stats()
	if ms.NeededLate != 4 || ms.FromMirror != 4 || ms.RecallPages != 8 {
		t.Errorf("mover stats %+v", ms)
	}
	// Staged ahead of need: the recall hits a staged page (used).
	if n := f.mover.Stage([]PageID{{Session: 1, Page: 5}, {Session: 1, Page: 6}}); n != 2 {
		t.Fatalf("Stage queued %d", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.store.Snapshot().Staged < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := f.region.Release(1); err != nil {
		t.Fatal(err)
	}
	res = f.recall(t, 2, 5)
	if res[0].Source != SourceStaged {
		t.Errorf("recall of a staged page came from %v", res[0].Source)
	}
	f.checkResident(t, 5)
	if ss := f.store.Snapshot(); ss.StagedUsed != 1 {
		t.Errorf("staged used = %d", ss.StagedUsed)
	}
}

// TestMoverGenerationMismatchRecopies is the reference's "already copied mark
// survived a rewrite" bug: a page rewritten after its recall must be copied
// again, and an unchanged one must not.
func TestMoverGenerationMismatchRecopies(t *testing.T) {
	f := newMoverFixture(t, 6, 64, 8)
	f.recall(t, 1, 0, 1, 2)
	f.checkResident(t, 0, 1, 2)
	if err := f.region.Release(1); err != nil {
		t.Fatal(err)
	}
	f.write(t, 1, bytes.Repeat([]byte{0x5a}, f.geo.PageBytes()))
	res := f.recall(t, 2, 0, 1, 2)
	for _, r := range res {
		want := SourceReserve
		if r.ID.Page == 1 {
			want = SourceMirror
		}
		if r.Source != want {
			t.Errorf("page %d: source %v, want %v", r.ID.Page, r.Source, want)
		}
	}
	f.checkResident(t, 0, 1, 2)
	if ms := f.mover.Stats(); ms.AlreadyThere != 2 {
		t.Errorf("already there = %d, want 2", ms.AlreadyThere)
	}
}

func TestMoverLeasedSlotNotOverwritten(t *testing.T) {
	f := newMoverFixture(t, 4, 64, 4)
	f.recall(t, 1, 0)
	// The client holds lease 1 on page 0; a rewrite arrives and a recall is
	// attempted for the same slot: it must fail with ErrPinned, leaving the
	// leased bytes alone.
	old := f.pages[0]
	f.write(t, 0, bytes.Repeat([]byte{1}, f.geo.PageBytes()))
	slot, _, _ := f.region.Lookup(0)
	tk, err := f.mover.Recall(f.region, []RecallItem{{ID: PageID{Session: 1, Page: 0}, Slot: slot, Gen: f.gens[0]}})
	if err != nil {
		t.Fatal(err)
	}
	<-tk.Done()
	if err := tk.Err(); !errors.Is(err, ErrPinned) {
		t.Fatalf("recall into a leased slot: %v, want ErrPinned", err)
	}
	dst := make([]byte, f.geo.PageBytes())
	if _, err := f.region.ReadPage(slot, 0, dst); err != nil || !bytes.Equal(dst, old) {
		t.Fatal("leased bytes changed")
	}
	if err := f.region.Release(1); err != nil {
		t.Fatal(err)
	}
	f.recall(t, 2, 0)
	f.checkResident(t, 0)
}

func TestMoverBusyAndClose(t *testing.T) {
	f := newMoverFixture(t, 4, 64, 4)
	m := NewMover(f.store, MoverConfig{Workers: 1, MaxQueuedRecalls: 2, MaxQueuedStages: 1})
	items := []RecallItem{{ID: PageID{1, 0}}, {ID: PageID{1, 1}}, {ID: PageID{1, 2}}}
	if _, err := m.Recall(f.region, items); !errors.Is(err, ErrBusy) {
		t.Errorf("oversized recall: %v, want ErrBusy", err)
	}
	if _, err := m.Recall(f.region, []RecallItem{{ID: PageID{2, 0}}}); !errors.Is(err, ErrRange) {
		t.Errorf("recall of another session's page: %v, want ErrRange", err)
	}
	if n := m.Stage([]PageID{{1, 0}, {1, 1}, {1, 2}}); n > 1 {
		t.Errorf("Stage queued %d beyond its bound", n)
	}
	m.Close()
	if _, err := m.Recall(f.region, items[:1]); !errors.Is(err, ErrClosed) {
		t.Errorf("Recall after Close: %v", err)
	}
	tk, err := f.mover.Recall(f.region, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-tk.Done():
	default:
		t.Error("empty recall not done at once")
	}
}

func TestMoverConcurrentRecalls(t *testing.T) {
	f := newMoverFixture(t, 40, 12, 32)
	// Several cycles of recalls of overlapping random sets, with rewrites in
	// between; after each, every recalled page must be byte-identical.
	r := rand.New(rand.NewPCG(12, 12))
	for cycle := 1; cycle <= 6; cycle++ {
		set := map[uint32]bool{}
		for len(set) < 12 {
			set[uint32(r.IntN(40))] = true
		}
		var pages []uint32
		for p := range set {
			pages = append(pages, p)
		}
		f.recall(t, LeaseID(cycle), pages...)
		f.checkResident(t, pages...)
		if err := f.region.Release(LeaseID(cycle)); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 5; i++ {
			f.write(t, uint32(r.IntN(40)), randBytes(r, f.geo.PageBytes()))
		}
	}
}

// WritePages writes what it can in one go and hands back busy slots (being read) with
// errSlotBusy instead of waiting while it holds the others.
func TestRegionWritePagesBusySlot(t *testing.T) {
	f := newMoverFixture(t, 4, 16, 8)
	var ws []SlotWrite
	for p := uint32(0); p < 4; p++ {
		a, err := f.region.Allocate(p)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, SlotWrite{Slot: a.Slot, Page: p, Gen: f.gens[p], Src: f.pages[p]})
	}
	f.region.mu.Lock()
	f.region.slots[ws[2].Slot].readers++ // a client read in progress
	f.region.mu.Unlock()
	errs := make([]error, len(ws))
	f.region.WritePages(ws, errs)
	for i, err := range errs {
		if (i == 2) != errors.Is(err, errSlotBusy) || i != 2 && err != nil {
			t.Errorf("page %d: %v", i, err)
		}
	}
	f.region.mu.Lock()
	f.region.slots[ws[2].Slot].readers--
	f.region.cond.Broadcast()
	f.region.mu.Unlock()
	f.checkResident(t, 0, 1, 3)
	if _, gen, _ := f.region.Lookup(2); gen != 0 {
		t.Errorf("busy slot written: generation %d", gen)
	}
	// Bad entries fail alone.
	bad := []SlotWrite{{Slot: ws[2].Slot, Page: 2, Gen: 0, Src: f.pages[2]}, {Slot: ws[2].Slot, Page: 2, Gen: f.gens[2], Src: f.pages[2][:10]}, ws[2]}
	errs = make([]error, len(bad))
	f.region.WritePages(bad, errs)
	if !errors.Is(errs[0], ErrStale) || !errors.Is(errs[1], ErrSize) || errs[2] != nil {
		t.Errorf("errors %v", errs)
	}
	f.checkResident(t, 0, 1, 2, 3)
}

// A recall whose pages are partly in the mirror, partly on SSD and partly already in
// the reserve goes through the batch path and still lands every page, each with the
// right source.
func TestMoverBatchMixedSources(t *testing.T) {
	f := newMoverFixture(t, 40, 16, 40)
	f.recall(t, 1, 30, 31)
	res := f.recall(t, 2, 0, 1, 2, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39)
	for _, r := range res {
		want := SourceMirror
		switch {
		case r.ID.Page < 3:
			want = SourceSSD
		case r.ID.Page < 32:
			want = SourceReserve
		}
		if r.Err != nil || r.Source != want || r.Copied != f.gens[r.ID.Page] {
			t.Errorf("page %d: source %v gen %d err %v; want %v", r.ID.Page, r.Source, r.Copied, r.Err, want)
		}
	}
	f.checkResident(t, 0, 1, 2, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39)
}

// A batch page whose slot is busy (a client read in progress) is written once the
// slot frees up, and is counted once: a staged page stays SourceStaged, and the mirror
// counts one read per page, not a second one for the retry (hits are counted after the
// ticket is done, so gets are what is checked).
func TestMoverBatchBusySlotCountsOnce(t *testing.T) {
	f := newMoverFixture(t, 40, 16, 8)
	ctx := context.Background()
	if err := f.store.Flush(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.store.Mirror().Generation(PageID{Session: 1, Page: 0}); ok {
		t.Fatal("page 0 still in the mirror")
	}
	if n, err := f.store.Stage(ctx, []PageID{{Session: 1, Page: 0}}); err != nil || n != 1 {
		t.Fatalf("stage: %d, %v", n, err)
	}
	var items []RecallItem
	for _, p := range []uint32{0, 39} {
		a, err := f.region.Allocate(p)
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, RecallItem{ID: PageID{Session: 1, Page: p}, Slot: a.Slot, Gen: f.gens[p]})
	}
	f.region.mu.Lock()
	f.region.slots[items[0].Slot].readers++ // a client read in progress
	f.region.mu.Unlock()
	before := f.store.Snapshot()
	tk, err := f.mover.Recall(f.region, items)
	if err != nil {
		t.Fatal(err)
	}
	// Page 39 lands with the batch; then the read of page 0's slot ends.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, gen, _ := f.region.Lookup(39); gen != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("page 39 never written")
		}
		time.Sleep(time.Millisecond)
	}
	f.region.mu.Lock()
	f.region.slots[items[0].Slot].readers--
	f.region.cond.Broadcast()
	f.region.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tk.Wait(wctx); err != nil {
		t.Fatal(err)
	}
	res := tk.Results()
	if res[0].Source != SourceStaged || res[1].Source != SourceMirror {
		t.Errorf("sources %v, %v; want %v, %v", res[0].Source, res[1].Source, SourceStaged, SourceMirror)
	}
	if ms := f.mover.Stats(); ms.FromStaged != 1 || ms.FromMirror != 1 {
		t.Errorf("mover counted %d staged, %d mirror; want 1 and 1", ms.FromStaged, ms.FromMirror)
	}
	after := f.store.Snapshot()
	if d := after.Mirror.Gets - before.Mirror.Gets; d != 2 {
		t.Errorf("mirror counted %d gets for 2 pages", d)
	}
	if d := after.StagedUsed - before.StagedUsed; d != 1 {
		t.Errorf("%d staged pages used, want 1", d)
	}
	f.checkResident(t, 0, 39)
}
