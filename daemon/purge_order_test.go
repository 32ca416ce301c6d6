package daemon

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/flashmemory/flashmemory/proto"
)

// CLOSE with delete of a persisted session removes its metadata before its
// pages: a crash between the two must leave pages nobody names (deleted at
// the next start), never metadata that RESUMEs a session with every page
// gone (what the fault campaign found after a kill -9 mid-DELETE).
func TestPurgeDeletesMetadataFirst(t *testing.T) {
	rd, c := startDialed(t)
	ctx := context.Background()
	l := testLayout(8)
	op, err := c.Open(ctx, &proto.Open{Name: "gone", Persist: true, Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	appendAll(t, c, op.Session, &l, 1, 0, 3*uint64(l.ChunksPerPage), rand.New(rand.NewPCG(1, 1)))
	if err := c.Persist(ctx, op.Session); err != nil {
		t.Fatal(err)
	}
	ssd := rd.d.store.SSD()
	if ps, _ := ssd.Pages(ctx, op.Session); len(ps) == 0 {
		t.Fatal("no pages on SSD after PERSIST")
	}
	var checked atomic.Bool
	hook := func(s *session) {
		checked.Store(true)
		_, meta := ssd.MetaSession(s.name)
		ps, _ := ssd.Pages(ctx, s.id)
		if meta && len(ps) == 0 {
			t.Errorf("mid-delete, %q has metadata and no pages: a crash here resumes it with every page lost", s.name)
		}
	}
	purgeMidpoint.Store(&hook)
	defer purgeMidpoint.Store(nil)
	if err := c.CloseSession(ctx, op.Session, true); err != nil {
		t.Fatal(err)
	}
	if !checked.Load() {
		t.Fatal("the purge never reached its midpoint")
	}
	if _, err := c.Resume(ctx, "gone"); proto.CodeOf(err) != proto.CodeUnknownSession {
		t.Fatalf("RESUME after DELETE: %v", err)
	}
}
