package ctl

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/eval"
)

// TestSimTwoSelectionReserve runs lookahead with a reserve of two resident
// sets (the LSA end-to-end benchmark's sizing) and a selection that moves
// 90 % per cycle: at a CYCLE the decoder's previous lease and the new one
// pin almost every slot, so the background recall of the new selection finds
// too few free slots. It must neither evict the pages it has just bound nor
// leave the rest to the next cycle: the daemon starts the rest when the
// client releases its previous lease, so no cycle loads a page itself.
func TestSimTwoSelectionReserve(t *testing.T) {
	o := DefaultSimOptions()
	o.Sessions, o.Tokens, o.Cycles, o.Resident, o.Churn = 2, 128*eval.TokensPerPage, 8, 0.2, 0.9
	o.CycleTime, o.HostShare, o.Modes = 30*time.Millisecond, 2, []string{ModeLookahead}
	k := o.resident() // 25 pages, 23 replaced per cycle
	o.ReserveSlots = 2*(k+2) + 4
	var progress bytes.Buffer
	res, err := RunSim(context.Background(), o, inProcessLauncher(t), "", t.TempDir(), &progress)
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	r := res[0]
	if r.Cycles != o.Sessions*(o.Cycles-1) || r.Mismatch != 0 {
		t.Fatalf("%d cycles (want %d), %d mismatches", r.Cycles, o.Sessions*(o.Cycles-1), r.Mismatch)
	}
	if r.SyncPages != 0 {
		t.Errorf("%d pages loaded synchronously over %d cycles (reserve %d slots, %d resident, churn %.0f %%); want 0",
			r.SyncPages, r.Cycles, o.ReserveSlots, k, 100*o.Churn)
	}
}
