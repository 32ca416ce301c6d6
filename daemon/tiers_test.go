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
// page turns that page's read into an integrity error, never wrong bytes.
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
	flipped := 0
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
			if err := ssd.CorruptForTest(ctx, tiers.PageID{Session: sess, Page: p}, -100); err != nil {
				t.Fatal(err)
			}
			flipped++
		}
	}
	if err := ssd.Close(); err != nil || flipped == 0 {
		t.Fatalf("flipping stored pages: %v (%d)", err, flipped)
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
	var pe *proto.Error
	if !errors.As(res[0].Err, &pe) || pe.Code != proto.CodeIntegrity {
		t.Fatalf("cycle over corrupted pages: got %v, want an integrity error", res[0].Err)
	}
	if n := rd.d.store.Snapshot().SSD.IntegrityErrors; n == 0 {
		t.Fatal("integrity errors were not counted")
	}
}
