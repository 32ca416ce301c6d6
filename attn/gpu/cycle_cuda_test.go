//go:build cuda

package gpu

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"testing"

	"github.com/flashmemory/flashmemory/attn"
)

func randomHidden(r *rand.Rand, hidden int) []byte {
	h := make([]byte, 2*hidden)
	for j := 0; j < hidden; j++ {
		binary.LittleEndian.PutUint16(h[2*j:], attn.BF16FromF32(float32(r.NormFloat64())))
	}
	return h
}

// checkSelection holds the cycle's page results to the CPU: page scores counted from the
// cycle's own logits (max ensemble), and the selection kernel against its twin SelectPages.
func checkSelection(t *testing.T, cr *CycleRequest, thr float32, cpp int) {
	t.Helper()
	n := len(cr.Logits[0])
	ens := slices.Clone(cr.Logits[0])
	for _, lg := range cr.Logits[1:] {
		for c := range ens {
			ens[c] = max(ens[c], lg[c])
		}
	}
	pages := (n + cpp - 1) / cpp
	scores := make([]uint8, pages)
	above, outside := 0, 0
	for c, v := range ens {
		if v > thr {
			scores[c/cpp]++
			above++
			if c >= cr.SinkEnd && c < cr.TailStart {
				outside++
			}
		}
	}
	if !slices.Equal(scores, cr.PageScores) {
		t.Fatalf("page scores differ from the cycle's logits (first pages %v vs %v)", scores[:min(8, pages)], cr.PageScores[:min(8, pages)])
	}
	if above != cr.AboveThreshold || outside != cr.AboveOutside {
		t.Fatalf("counters %d/%d, from logits %d/%d", cr.AboveThreshold, cr.AboveOutside, above, outside)
	}
	sp, tp := ForcedPages(n, cr.SinkEnd, cr.TailStart, cpp)
	sel := make([]bool, pages)
	cnt := SelectPages(scores, sp, tp, cr.Need, cpp, sel)
	if !slices.Equal(sel, cr.Selected) || cnt != cr.SelectedCount {
		t.Fatalf("selection kernel selects %d pages, twin %d (need %d, sink pages %d, tail page %d)", cr.SelectedCount, cnt, cr.Need, sp, tp)
	}
}

// One cycle (five launches) over requests of different sizes, positions up to 1M, both
// variants and bf16 / float32 weights: every layer's logits within the CPU scorer's
// tolerance of the CPU queries and scorer; page scores, counters and the selection equal to
// the CPU's computed from those logits, for budgets below, inside and above the free pages.
func TestCycleMatchesCPU(t *testing.T) {
	r := newRig(t)
	rnd := rand.New(rand.NewPCG(uint64(os.Getpid()), 21))
	const nl = 3
	sizes := []int{131072, 5000, 300, 1}
	keys := make([][]*Keys, len(sizes))
	raws := make([][][]byte, len(sizes))
	for i, n := range sizes {
		for range nl {
			raw := randomKeys(rnd, n)
			raws[i] = append(raws[i], raw)
			keys[i] = append(keys[i], r.keys(t, raw))
		}
	}
	for _, bf16 := range []bool{false, true} {
		lws := make([]*attn.LayerWeights, nl)
		for l := range lws {
			lws[l] = randomLayer(t, rnd, 512, 128, 16)
			if bf16 {
				lws[l] = bf16Layer(t, lws[l])
			}
		}
		for _, tc := range []struct {
			v   attn.Variant
			tol float64
		}{{attn.Float, 1e-4}, {attn.FP8Q, 1e-3}} {
			t.Run(fmt.Sprintf("%v/bf16=%v", tc.v, bf16), func(t *testing.T) {
				cyc, err := NewCycle(r.dev, lws, tc.v, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer cyc.Close()
				var reqs []*CycleRequest
				for i, n := range sizes {
					cr := &CycleRequest{Keys: keys[i], Position: []int64{4 * int64(n), 1<<20 - 1, 70001, 0}[i],
						SinkEnd: min(128, n), TailStart: max(n-2048, 0), Need: []int{190, 3, 1000, 0}[i]}
					for range nl {
						cr.Hidden = append(cr.Hidden, randomHidden(rnd, 512))
						cr.Logits = append(cr.Logits, poisoned(n))
					}
					reqs = append(reqs, cr)
				}
				if err := cyc.Run(reqs, CycleParams{ChunksPerPage: 64}); err != nil {
					t.Fatal(err)
				}
				// Norm-relative error per layer over the batch (as the golden vectors are
				// held), and per request as information: a request of one chunk is one
				// logit, whose own relative error is large when heads cancel.
				for l := range nl {
					var got, want []float32
					for i, cr := range reqs {
						q, err := lws[l].Query(cr.Hidden[l], cr.Position)
						if err != nil {
							t.Fatal(err)
						}
						w := cpuLogits(t, tc.v, []*attn.Query{q}, raws[i][l])
						t.Logf("request %d (%d chunks, position %d) layer %d: ‖Δ‖/‖cpu‖ = %.3g", i, sizes[i], cr.Position, l, relErr(cr.Logits[l], w))
						got, want = append(got, cr.Logits[l]...), append(want, w...)
					}
					if e := relErr(got, want); !(e <= tc.tol) {
						t.Errorf("layer %d: relative error %.3g > %.0g", l, e, tc.tol)
					}
				}
				for _, cr := range reqs {
					checkSelection(t, cr, 0, 64)
				}
			})
		}
	}
}

// The cycle reproduces the published reference's golden logits (all three target layers in
// one run, the four positions as four requests) within 1e-4 (float) and 1e-3 (fp8-q), and
// its page results agree with the CPU computed from them.
func TestCycleGolden(t *testing.T) {
	r := newRig(t)
	g := openGolden(t)
	opt, tensor, floats, matrix := g.opt, g.tensor, g.floats, g.matrix
	hid := tensor("hidden_bf16")
	pos, err := tensor("positions").Int64s()
	if err != nil {
		t.Fatal(err)
	}
	nq, hsz := hid.Shape[0], hid.Shape[1]
	names := []string{"l10", "l12", "l20"}
	var lws []*attn.LayerWeights
	var ks []*Keys
	for _, l := range names {
		lw, err := attn.NewLayerWeights(matrix(l+".wq_a"), floats(l+".q_norm_weight"), matrix(l+".wq_b"), matrix(l+".weights_proj"), opt)
		if err != nil {
			t.Fatal(err)
		}
		lws = append(lws, lw)
		ks = append(ks, r.keys(t, tensor(l+".compressed_k").Data))
	}
	n := ks[0].Len()
	for _, c := range []struct {
		v    attn.Variant
		name string
		tol  float64
	}{{attn.Float, "logits_trained", 1e-4}, {attn.FP8Q, "logits_fp8q", 1e-3}} {
		cyc, err := NewCycle(r.dev, lws, c.v, nil)
		if err != nil {
			t.Fatal(err)
		}
		var reqs []*CycleRequest
		for i := range nq {
			cr := &CycleRequest{Keys: ks, Position: pos[i], SinkEnd: 2, TailStart: n - 100, Need: 3}
			for range names {
				cr.Hidden = append(cr.Hidden, hid.Data[2*hsz*i:2*hsz*(i+1)])
				cr.Logits = append(cr.Logits, poisoned(n))
			}
			reqs = append(reqs, cr)
		}
		if err := cyc.Run(reqs, CycleParams{ChunksPerPage: 64}); err != nil {
			cyc.Close()
			t.Fatal(err)
		}
		for li, l := range names {
			want := floats(l + "." + c.name)
			got := make([]float32, 0, len(want))
			for i := range nq {
				got = append(got, reqs[i].Logits[li]...)
			}
			e := relErr(got, want)
			t.Logf("cycle %s %s: ‖Δ‖/‖ref‖ = %.3g", l, c.name, e)
			if !(e <= c.tol) {
				t.Errorf("cycle %s %s: relative error %.3g > %.0g", l, c.name, e, c.tol)
			}
		}
		for _, cr := range reqs {
			checkSelection(t, cr, 0, 64)
		}
		cyc.Close()
	}
}
