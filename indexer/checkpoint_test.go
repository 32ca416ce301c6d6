package indexer

import (
	"slices"
	"testing"
)

// A cycle undone with Rollback leaves no trace: the next cycle equals the one run right
// after the checkpoint, counters, selection and lookahead included.
func TestCheckpointRollback(t *testing.T) {
	m := mustRandomModel(t, 3, smallConfig())
	pol := DefaultPolicy()
	pol.FallbackRatio = 1
	r, err := NewRequest(m, pol)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.AppendKeys(0, m.RandomKeys(1, 6000)); err != nil {
		t.Fatal(err)
	}
	q := func(i int) []Query { return []Query{m.RandomQuery(uint64(i), 24000)} }
	for i := range 3 {
		if _, err := ScoreBatch([]*Request{r}, q(i)); err != nil {
			t.Fatal(err)
		}
	}
	var st SelectionState
	r.Checkpoint(&st)
	want, err := ScoreBatch([]*Request{r}, q(10))
	if err != nil {
		t.Fatal(err)
	}
	r.Rollback(&st)
	// A different cycle in between, then undone again.
	if _, err := ScoreBatch([]*Request{r}, q(11)); err != nil {
		t.Fatal(err)
	}
	r.Rollback(&st)
	got, err := ScoreBatch([]*Request{r}, q(10))
	if err != nil {
		t.Fatal(err)
	}
	a, b := want[0], got[0]
	if a.Cycle != b.Cycle || !slices.Equal(a.Use, b.Use) || !slices.Equal(a.Selected, b.Selected) ||
		!slices.Equal(a.Recall, b.Recall) || !slices.Equal(a.Lookahead, b.Lookahead) || a.Fallback != b.Fallback {
		t.Fatalf("after rollback the cycle differs:\n%+v\n%+v", a, b)
	}
	if a.Cycle != 4 {
		t.Errorf("cycle %d, want 4", a.Cycle)
	}
}
