package daemon

import (
	"context"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// With a host budget far smaller than the session, pages spill to SSD and
// come back byte-identical through the reserve; a flipped byte in a stored
// page turns that page's read into an integrity error, never wrong bytes:
// the CYCLE reply lists it as damaged and serves the session's other pages.
func TestSpillAndIntegrity(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	l := testLayout(160)
	const seed, chunks = 41, 8192    // 128 pages of 4,608 B = 576 KiB
	cfg.Host.BudgetBytes = 32 * 4096 // room for ~32 pages (slots round to 4 KiB... 8 KiB each)
	rd := start(t, cfg)
	c := dial(t, cfg.Socket)
	ctx := context.Background()
	op, err := c.Open(ctx, &proto.Open{Name: "spill", Persist: true, Layout: l, Policy: proto.Policy{KMax: 8}})
	if err != nil {
		t.Fatal(err)
	}
	mem, err := op.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem)
	r := rand.New(rand.NewPCG(5, 6))
	appendAll(t, c, op.Session, &l, seed, 0, chunks, r)
	st := rd.d.store.Snapshot()
	if st.Spills == 0 {
		t.Fatalf("no page spilled with a %d-byte host budget (mirror holds %d B)", cfg.Host.BudgetBytes, st.MirrorUsed)
	}
	// Full residency of every page: everything comes back, byte-identical.
	res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: chunks * 4, Queries: queries(r, 64, 3)}})
	if err != nil || res[0].Err != nil {
		t.Fatalf("cycle: %v %v", err, res[0].Err)
	}
	checkPages(t, &l, &op.Region.RegionDesc, mem, seed, chunks, res[0].Pages)
	// Read back every page by cycling with KMax covering all pages.
	c.Release(ctx, res[0].Lease)
	if after := rd.d.store.Snapshot(); after.BroughtBack == 0 && after.SSD.Hits == 0 {
		t.Fatalf("no page was read back from SSD: %+v", after)
	}
	if err := c.Persist(ctx, op.Session); err != nil {
		t.Fatal(err)
	}
	c.Close()
	rd.shutdown(t)

	// Flip one byte in the body of every stored page, in its segment file.
	ssd, err := tiers.OpenSSD(tiers.SSDConfig{Dir: filepath.Join(cfg.DataDir, "ssd"), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	flipped := map[uint32]bool{}
	sessions, err := ssd.Sessions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sess := range sessions {
		pages, err := ssd.Pages(ctx, sess)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pages {
			if p%3 != 1 {
				continue
			}
			if err := ssd.CorruptForTest(ctx, tiers.PageID{Session: sess, Page: p}, -100); err != nil {
				t.Fatal(err)
			}
			flipped[p] = true
		}
	}
	if err := ssd.Close(); err != nil || len(flipped) == 0 {
		t.Fatalf("flipping stored pages: %v (%d)", err, len(flipped))
	}

	rd = start(t, cfg)
	defer rd.shutdown(t)
	c = dial(t, cfg.Socket)
	rr, err := c.Resume(ctx, "spill")
	if err != nil {
		t.Fatal(err)
	}
	res, err = c.Cycle(ctx, []proto.CycleEntry{{Session: rr.Session, Position: chunks * 4, Queries: queries(r, 64, 3)}})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil {
		t.Fatalf("cycle over some corrupted pages: %v, want the intact ones served", res[0].Err)
	}
	// Chunks are from one RESUME: map the region again.
	mem2, err := rr.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem2)
	reported := map[uint32]bool{}
	for _, dp := range res[0].Damaged {
		var pe *proto.Error
		if !errors.As(dp.Err, &pe) || pe.Code != proto.CodeIntegrity || !flipped[dp.Page] {
			t.Errorf("damaged page %d reported with %v (flipped: %v)", dp.Page, dp.Err, flipped[dp.Page])
		}
		reported[dp.Page] = true
	}
	for _, ps := range res[0].Pages {
		if flipped[ps.Page] {
			t.Errorf("damaged page %d served in the page table", ps.Page)
		}
	}
	if len(reported) == 0 || len(res[0].Pages) == 0 {
		t.Fatalf("%d pages reported damaged, %d served", len(reported), len(res[0].Pages))
	}
	checkPages(t, &l, &rr.Region.RegionDesc, mem2, seed, chunks, res[0].Pages)
	// The proto round trip carries the list.
	b, err := (&proto.CycleReply{Results: res}).AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	var back proto.CycleReply
	if err := back.Decode(b); err != nil || len(back.Results[0].Damaged) != len(res[0].Damaged) {
		t.Fatalf("reply round trip: %v", err)
	}
	if n := rd.d.store.Snapshot().SSD.IntegrityErrors; n == 0 {
		t.Fatal("integrity errors were not counted")
	}
}
