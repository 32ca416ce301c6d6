package eval

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/flashmemory/flashmemory/indexer"
)

func TestTraceScorer(t *testing.T) {
	sc := &TraceScorer{}
	keys := make([]byte, 3*TraceKeyBytes)
	SetTraceBit(keys[0:TraceKeyBytes], 0)
	SetTraceBit(keys[0:TraceKeyBytes], 9)
	SetTraceBit(keys[2*TraceKeyBytes:], 9)
	SetTraceBit(keys[2*TraceKeyBytes:], TraceCycles-1)
	ks, err := sc.NewKeys()
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Append(keys); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		cycle int
		want  []float32
	}{
		{0, []float32{1, -1, -1}},
		{9, []float32{1, -1, 1}},
		{1, []float32{-1, -1, -1}},
		{TraceCycles - 1, []float32{-1, -1, 1}},
	}
	for _, tc := range tests {
		out := make([]float32, 3)
		if err := sc.Score([]indexer.ScoreItem{{Query: TraceQuery(tc.cycle), Keys: []indexer.Keys{ks}, Out: [][]float32{out}}}); err != nil {
			t.Fatalf("cycle %d: %v", tc.cycle, err)
		}
		for i := range out {
			if out[i] != tc.want[i] {
				t.Errorf("cycle %d: logits %v, want %v", tc.cycle, out, tc.want)
				break
			}
		}
	}
	bad := []struct {
		name string
		q    []byte
		out  []float32
	}{
		{"short query", []byte{1, 2}, make([]float32, 3)},
		{"cycle past the mask", binary.LittleEndian.AppendUint32(nil, TraceCycles), make([]float32, 3)},
		{"output length", TraceQuery(0).Layers[0], make([]float32, 2)},
	}
	for _, tc := range bad {
		err := sc.Score([]indexer.ScoreItem{{Query: indexer.Query{Layers: [][]byte{tc.q}}, Keys: []indexer.Keys{ks}, Out: [][]float32{tc.out}}})
		if !errors.Is(err, ErrBadTrace) {
			t.Errorf("%s: %v, want ErrBadTrace", tc.name, err)
		}
	}
	if err := ks.Append(make([]byte, TraceKeyBytes+1)); !errors.Is(err, ErrBadTrace) {
		t.Errorf("partial key: %v", err)
	}
	if got := ks.AppendRaw(nil, 2, 5); len(got) != TraceKeyBytes {
		t.Errorf("AppendRaw past the end: %d B", len(got))
	}
	ks.Truncate(1)
	if ks.Len() != 1 {
		t.Errorf("Len after Truncate(1) = %d", ks.Len())
	}
}

// TestTraceSelection runs the scorer through indexer selection: pages whose
// chunks all have the cycle's bit win over a page with one such chunk, which
// becomes the lookahead candidate.
func TestTraceSelection(t *testing.T) {
	pol := indexer.DefaultPolicy()
	pol.FirstKeep, pol.LastKeep, pol.KMax, pol.FallbackRatio = 1, 1, 4, 1
	req, err := indexer.NewRequest(&TraceScorer{}, pol)
	if err != nil {
		t.Fatal(err)
	}
	const pages = 10
	keys := make([]byte, pages*ChunksPerPage*TraceKeyBytes)
	set := func(page, first, n, cycle int) {
		for c := page*ChunksPerPage + first; c < page*ChunksPerPage+first+n; c++ {
			SetTraceBit(keys[c*TraceKeyBytes:(c+1)*TraceKeyBytes], cycle)
		}
	}
	set(3, 0, ChunksPerPage, 0)
	set(6, 0, ChunksPerPage, 0)
	set(7, 0, 1, 0) // rises at cycle 0, selected at cycle 1
	set(7, 0, ChunksPerPage, 1)
	set(3, 0, ChunksPerPage, 1)
	if err := req.AppendKeys(0, [][]byte{keys}); err != nil {
		t.Fatal(err)
	}
	for k, want := range [][]uint32{{0, 3, 6, 9}, {0, 3, 7, 9}} {
		cs, err := indexer.ScoreBatch([]*indexer.Request{req}, []indexer.Query{TraceQuery(k)})
		if err != nil {
			t.Fatal(err)
		}
		got := cs[0].Selected
		if len(got) != len(want) {
			t.Fatalf("cycle %d selected %v, want %v", k, got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("cycle %d selected %v, want %v", k, got, want)
			}
		}
		if k == 0 && (len(cs[0].Lookahead) == 0 || cs[0].Lookahead[0] != 7) {
			t.Errorf("cycle 0 lookahead %v, want page 7 first", cs[0].Lookahead)
		}
	}
}

// FuzzTraceScorer feeds arbitrary client bytes as keys and query: the
// scorer must reject or score them, never panic.
func FuzzTraceScorer(f *testing.F) {
	f.Add(make([]byte, TraceKeyBytes), []byte{0, 0, 0, 0})
	f.Add(make([]byte, 3*TraceKeyBytes), []byte{255, 0, 0, 0})
	f.Add([]byte{1, 2, 3}, []byte{1})
	f.Fuzz(func(t *testing.T, keys, q []byte) {
		if len(keys) > 1<<16 {
			return
		}
		sc := &TraceScorer{}
		ks, _ := sc.NewKeys()
		if err := ks.Append(keys); err != nil {
			return
		}
		out := make([]float32, ks.Len())
		err := sc.Score([]indexer.ScoreItem{{Query: indexer.Query{Layers: [][]byte{q}}, Keys: []indexer.Keys{ks}, Out: [][]float32{out}}})
		if err == nil {
			for _, v := range out {
				if v != 1 && v != -1 {
					t.Fatalf("logit %v", v)
				}
			}
		}
	})
}
