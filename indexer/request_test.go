package indexer

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func newReq(t testing.TB, m Scorer, p Policy) *Request {
	t.Helper()
	r, err := NewRequest(m, p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// sliceKeys returns chunks [a, b) of per-layer keys.
func sliceKeys(keys [][]byte, kb, a, b int) [][]byte {
	out := make([][]byte, len(keys))
	for l, k := range keys {
		out[l] = k[a*kb : b*kb]
	}
	return out
}

func TestAppendKeysErrors(t *testing.T) {
	m := mustRandomModel(t, 1, smallConfig())
	kb := m.KeyBytes()
	keys := m.RandomKeys(1, 20)
	p := DefaultPolicy()
	p.MaxChunks = 15
	tests := []struct {
		name  string
		first int
		keys  [][]byte
		err   error
		msg   string
	}{
		{"duplicate", 3, sliceKeys(keys, kb, 3, 5), ErrKeyDuplicate, "chunk 3 appended again"},
		{"gap", 11, sliceKeys(keys, kb, 11, 12), ErrKeyGap, "chunk 11 appended after chunk 9 (missing 10…10)"},
		{"too few layers", 10, sliceKeys(keys, kb, 10, 12)[:2], ErrKeyLength, "keys for 2 target layers, model has 3"},
		{"too many layers", 10, append(sliceKeys(keys, kb, 10, 12), keys[0][:kb]), ErrKeyLength, "keys for 4 target layers"},
		{"partial key", 10, [][]byte{keys[0][:kb], keys[1][:kb], keys[2][:kb+5]}, ErrKeyLength, "target layer 20 (index 2): 137 bytes is not a multiple of 132"},
		{"layers disagree", 10, [][]byte{keys[0][:kb], keys[1][:2*kb], keys[2][:kb]}, ErrKeyLength, "target layer 12 (index 1) has 2 chunks, layer 10 has 1"},
		{"past MaxChunks", 10, sliceKeys(keys, kb, 10, 16), ErrTooManyChunks, "10 + 6 chunks exceeds MaxChunks 15"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newReq(t, m, p)
			if err := r.AppendKeys(0, sliceKeys(keys, kb, 0, 10)); err != nil {
				t.Fatal(err)
			}
			err := r.AppendKeys(tc.first, tc.keys)
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err %v, want %v with %q", err, tc.err, tc.msg)
			}
			if r.Len() != 10 {
				t.Fatalf("Len %d after failed append, want 10", r.Len())
			}
			// The request still accepts the right next chunk.
			if err := r.AppendKeys(10, sliceKeys(keys, kb, 10, 11)); err != nil {
				t.Fatal(err)
			}
		})
	}
	r := newReq(t, m, p)
	if err := r.AppendKeys(0, [][]byte{nil, nil, nil}); err != nil || r.Len() != 0 {
		t.Fatalf("empty append: %v, Len %d", err, r.Len())
	}
}

// TestIncrementalAppendsAcrossCycles grows one request over cycles and checks every cycle's
// logits against a request given all its keys at once, and the selection against the
// selector run on the same scores.
func TestIncrementalAppendsAcrossCycles(t *testing.T) {
	m := mustRandomModel(t, 3, smallConfig())
	kb := m.KeyBytes()
	keys := m.RandomKeys(2, 1500)
	p := DefaultPolicy()
	p.FirstKeep, p.LastKeep, p.KMax, p.FallbackRatio = 64, 128, 6, 1
	r := newReq(t, m, p)
	var ref selector
	n := 0
	for cyc, grow := range []int{0, 1, 63, 300, 16, 16, 1104} {
		if err := r.AppendKeys(n, sliceKeys(keys, kb, n, n+grow)); err != nil {
			t.Fatal(err)
		}
		n += grow
		q := m.RandomQuery(uint64(cyc), int64(4*n))
		cs, err := ScoreBatch([]*Request{r}, []Query{q})
		if err != nil {
			t.Fatal(err)
		}
		one := newReq(t, m, p)
		if err := one.AppendKeys(0, sliceKeys(keys, kb, 0, n)); err != nil {
			t.Fatal(err)
		}
		if _, err := ScoreBatch([]*Request{one}, []Query{q}); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(r.Scores(), one.Scores()) || len(r.Scores()) != n {
			t.Fatalf("cycle %d: incremental scores differ from one-shot scores", cyc+1)
		}
		want := ref.step(n, slices.Clone(r.Scores()), &p)
		if diff := cmp.Diff(want, cs[0]); diff != "" {
			t.Fatalf("cycle %d (-selector +request):\n%s", cyc+1, diff)
		}
		checkCycle(t, cs[0])
	}
	if r.Cycles() != 7 || r.Len() != 1500 || r.Pages() != 24 {
		t.Fatalf("cycles %d len %d pages %d", r.Cycles(), r.Len(), r.Pages())
	}
}

// TestScoreBatchMatchesSingle scores requests of two different models in one batch and
// checks each against scoring it alone.
func TestScoreBatchMatchesSingle(t *testing.T) {
	m1 := mustRandomModel(t, 4, smallConfig())
	cfg2 := smallConfig()
	cfg2.Layers, cfg2.Variant = []int{7}, VariantFP8Q
	m2 := mustRandomModel(t, 5, cfg2)
	p := DefaultPolicy()
	p.FirstKeep, p.LastKeep = 16, 16
	var reqs []*Request
	var qs []Query
	for i, m := range []*Model{m1, m2, m1, m2, m1} {
		r := newReq(t, m, p)
		if err := r.AppendKeys(0, m.RandomKeys(uint64(10+i), 100*(i+1))); err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, r)
		qs = append(qs, m.RandomQuery(uint64(i), int64(1000*i)))
	}
	batch, err := ScoreBatch(reqs, qs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range reqs {
		got := slices.Clone(r.Scores())
		alone := newReq(t, r.Model(), p)
		alone.AppendKeys(0, r.Model().(*Model).RandomKeys(uint64(10+i), 100*(i+1)))
		single, err := ScoreBatch([]*Request{alone}, []Query{qs[i]})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, alone.Scores()) {
			t.Fatalf("request %d: batched scores differ from single", i)
		}
		if !slices.Equal(batch[i].Selected, single[0].Selected) {
			t.Fatalf("request %d: batched selection %v, single %v", i, batch[i].Selected, single[0].Selected)
		}
	}
}

func TestScoreBatchErrors(t *testing.T) {
	m := mustRandomModel(t, 6, smallConfig())
	p := DefaultPolicy()
	r1, r2 := newReq(t, m, p), newReq(t, m, p)
	r1.AppendKeys(0, m.RandomKeys(1, 10))
	good := m.RandomQuery(1, 5)
	short := m.RandomQuery(1, 5)
	short.Layers[1] = short.Layers[1][:10]
	tests := []struct {
		name string
		reqs []*Request
		qs   []Query
		err  error
		msg  string
	}{
		{"length mismatch", []*Request{r1, r2}, []Query{good}, ErrBatch, "2 requests, 1 queries"},
		{"nil request", []*Request{r1, nil}, []Query{good, good}, ErrBatch, "request 1 is nil"},
		{"same request twice", []*Request{r1, r2, r1}, []Query{good, good, good}, ErrBatch, "requests 0 and 2 are the same"},
		{"short hidden", []*Request{r2, r1}, []Query{good, short}, ErrBadQuery, "request 1: indexer: bad query: target layer 12: 10 bytes, want 128"},
		{"negative position", []*Request{r1}, []Query{{Position: -1, Layers: good.Layers}}, ErrBadQuery, "position -1"},
		{"missing layer", []*Request{r1}, []Query{{Layers: good.Layers[:2]}}, ErrBadQuery, "2 target layers, model has 3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ScoreBatch(tc.reqs, tc.qs)
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err %v, want %v with %q", err, tc.err, tc.msg)
			}
			if r1.Cycles() != 0 || r2.Cycles() != 0 {
				t.Fatal("a failed batch advanced a request")
			}
		})
	}
	if _, err := r1.Select(make([]float32, 3)); !errors.Is(err, ErrScores) {
		t.Fatalf("Select with 3 scores for 10 chunks: %v", err)
	}
}

func TestFallbackRequestIsNotScored(t *testing.T) {
	m := mustRandomModel(t, 7, smallConfig())
	p := DefaultPolicy()
	p.FirstKeep, p.LastKeep, p.FallbackRatio = 0, 0, 0
	r := newReq(t, m, p)
	r.AppendKeys(0, m.RandomKeys(3, 200))
	c, err := r.Select(logitsWith(200, 5))
	if err != nil || !c.FallbackNow || !r.Fallback() {
		t.Fatalf("no fallback: %v %+v", err, c)
	}
	r.AppendKeys(200, m.RandomKeys(4, 100))
	// A query of the wrong shape is not even looked at: the request is not scored.
	cs, err := ScoreBatch([]*Request{r}, []Query{{}})
	if err != nil {
		t.Fatal(err)
	}
	if cs[0].Scored || !cs[0].Fallback || len(cs[0].Selected) != 5 || !slices.Equal(cs[0].Recall, []uint32{4}) {
		t.Fatalf("fallback cycle %+v", cs[0])
	}
}

func TestPersistRoundTrip(t *testing.T) {
	m := mustRandomModel(t, 8, smallConfig())
	p := DefaultPolicy()
	p.FirstKeep, p.LastKeep, p.KMax, p.FallbackRatio = 64, 64, 4, 1
	kb := m.KeyBytes()
	keys := m.RandomKeys(9, 900)
	r := newReq(t, m, p)
	r.SetEnsemble(EnsembleMean)
	for cyc, n := range []int{300, 600} {
		r.AppendKeys(r.Len(), sliceKeys(keys, kb, r.Len(), n))
		if _, err := ScoreBatch([]*Request{r}, []Query{m.RandomQuery(uint64(cyc), int64(n))}); err != nil {
			t.Fatal(err)
		}
	}
	blob, err := r.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	back := newReq(t, m, p)
	if err := back.UnmarshalBinary(blob); err != nil {
		t.Fatal(err)
	}
	if back.Len() != 600 || back.Cycles() != 2 || !slices.Equal(back.Selected(), r.Selected()) || back.ensemble != EnsembleMean {
		t.Fatalf("restored len %d cycles %d selected %v ensemble %v", back.Len(), back.Cycles(), back.Selected(), back.ensemble)
	}
	again, _ := back.MarshalBinary()
	if !slices.Equal(blob, again) {
		t.Fatal("marshal(unmarshal(b)) != b")
	}
	// Both continue identically.
	for _, x := range []*Request{r, back} {
		x.AppendKeys(600, sliceKeys(keys, kb, 600, 900))
	}
	q := m.RandomQuery(5, 3600)
	c1, err1 := ScoreBatch([]*Request{r}, []Query{q})
	c2, err2 := ScoreBatch([]*Request{back}, []Query{q})
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if diff := cmp.Diff(c1, c2); diff != "" {
		t.Fatalf("cycle after restore differs:\n%s", diff)
	}

	other := mustRandomModel(t, 8, ModelConfig{Layers: []int{10, 12, 21}, Hidden: 64, QLoraRank: 32, Heads: 4, HeadDim: 128})
	p64 := p
	p64.ChunksPerPage = 32
	corrupt := slices.Clone(blob)
	corrupt[100] ^= 1
	tests := []struct {
		name string
		req  *Request
		blob []byte
		msg  string
	}{
		{"other model", newReq(t, other, p), blob, "target layer 2 is 20, model has 21"},
		{"other page size", newReq(t, m, p64), blob, "chunks per page 64, policy has 32"},
		{"bit flip", newReq(t, m, p), corrupt, "checksum"},
		{"truncated", newReq(t, m, p), blob[:len(blob)-1], "checksum"},
		{"short", newReq(t, m, p), blob[:6], "too short"},
		{"magic", newReq(t, m, p), append([]byte("XXXX"), blob[4:]...), "magic"},
		{"version", newReq(t, m, p), append([]byte("FMIR\x02"), blob[5:]...), "version 2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.req.UnmarshalBinary(tc.blob)
			if !errors.Is(err, ErrBadState) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err %v, want ErrBadState with %q", err, tc.msg)
			}
			if tc.req.Len() != 0 || tc.req.Cycles() != 0 {
				t.Fatal("failed restore changed the request")
			}
		})
	}
}

func TestExpansionPolicy(t *testing.T) {
	for s, want := range map[string]Expansion{"": ExpandAuto, "auto": ExpandAuto, "off": ExpandOff, "on": ExpandOn} {
		got, err := ParseExpansion(s)
		if err != nil || got != want {
			t.Errorf("ParseExpansion(%q) = %v, %v", s, got, err)
		}
		if s != "" && got.String() != s {
			t.Errorf("%v.String() = %q", got, got.String())
		}
	}
	if _, err := ParseExpansion("maybe"); !errors.Is(err, ErrBadPolicy) {
		t.Errorf("ParseExpansion(maybe): %v", err)
	}
	p := DefaultPolicy()
	p.Expand = ExpandOn + 1
	if err := p.Validate(); !errors.Is(err, ErrBadPolicy) {
		t.Errorf("Expand %d: %v", p.Expand, err)
	}
	if !ExpandAuto.On(true) || ExpandAuto.On(false) || ExpandOff.On(true) || !ExpandOn.On(false) {
		t.Error("On resolves wrongly")
	}
}
