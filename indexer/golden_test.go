package indexer

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/flashmemory/flashmemory/internal/safetensors"
)

// golden holds ../shared/testdata/indexer_golden.safetensors: reference logits of the
// published scorer for 4 positions × 1000 chunks in three target layers.
type golden struct {
	layers    []int
	hidden    [][]byte // per position, bf16 bytes
	positions []int64
	keys      [][]byte      // per layer, 1000 × 132 bytes
	trained   [][][]float32 // [layer][position][chunk]
	fp8q      [][][]float32
}

func loadGolden(t *testing.T) *golden {
	t.Helper()
	f, err := safetensors.Open(goldenPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	get := func(name string) safetensors.Tensor {
		tn, err := f.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		return tn
	}
	g := &golden{layers: []int{10, 12, 20}}
	pos, err := get("positions").Int64s()
	if err != nil {
		t.Fatal(err)
	}
	g.positions = pos
	h := get("hidden_bf16")
	row := len(h.Data) / len(pos)
	for i := range pos {
		g.hidden = append(g.hidden, slices.Clone(h.Data[i*row:(i+1)*row]))
	}
	split := func(name string) [][]float32 {
		v, err := get(name).Float32s()
		if err != nil {
			t.Fatal(err)
		}
		n := len(v) / len(pos)
		var out [][]float32
		for i := range pos {
			out = append(out, v[i*n:(i+1)*n])
		}
		return out
	}
	for _, l := range g.layers {
		g.keys = append(g.keys, slices.Clone(get(fmt.Sprintf("l%d.compressed_k", l)).Data))
		g.trained = append(g.trained, split(fmt.Sprintf("l%d.logits_trained", l)))
		g.fp8q = append(g.fp8q, split(fmt.Sprintf("l%d.logits_fp8q", l)))
	}
	return g
}

func relErr(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	return math.Sqrt(num / den)
}

// TestGoldenEndToEnd loads the model from the golden file, appends the keys in uneven
// pieces, scores all four positions as one batch of four requests, and checks per-layer
// logits against the reference and the ensembled keep decisions and page selection
// against those computed from the reference logits.
func TestGoldenEndToEnd(t *testing.T) {
	g := loadGolden(t)
	const chunks = 1000
	for _, tc := range []struct {
		variant  string
		ensemble string
		ref      [][][]float32
		tol      float64
	}{
		{"trained", "max", g.trained, 1e-4},
		{"trained", "mean", g.trained, 1e-4},
		{"fp8q", "max", g.fp8q, 1e-3},
	} {
		t.Run(tc.variant+"/"+tc.ensemble, func(t *testing.T) {
			m, err := LoadModel(goldenPath(t), LoadOptions{Variant: tc.variant, Ensemble: tc.ensemble})
			if err != nil {
				t.Fatal(err)
			}
			p := DefaultPolicy()
			// Sink page 0 and tail pages 14, 15 forced, three more pages by score; no fallback
			// (most golden chunks are above threshold).
			p.FirstKeep, p.LastKeep, p.KMax, p.FallbackRatio = 64, 64, 6, 1
			var reqs []*Request
			var queries []Query
			for i := range g.positions {
				r, err := NewRequest(m, p)
				if err != nil {
					t.Fatal(err)
				}
				for _, cut := range [][2]int{{0, 1}, {1, 333}, {333, 640}, {640, chunks}} {
					per := make([][]byte, len(g.layers))
					for l := range per {
						per[l] = g.keys[l][cut[0]*132 : cut[1]*132]
					}
					if err := r.AppendKeys(cut[0], per); err != nil {
						t.Fatal(err)
					}
				}
				reqs = append(reqs, r)
				queries = append(queries, Query{Position: g.positions[i], Layers: [][]byte{g.hidden[i], g.hidden[i], g.hidden[i]}})
			}
			cycles, err := ScoreBatch(reqs, queries)
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range reqs {
				refLayers := make([][]float32, len(g.layers))
				for l := range g.layers {
					refLayers[l] = tc.ref[l][i]
					e := relErr(r.logits[l], tc.ref[l][i])
					t.Logf("position %d layer %d: ‖Δ‖/‖ref‖ = %.3g", g.positions[i], g.layers[l], e)
					if e > tc.tol {
						t.Errorf("position %d layer %d: ‖Δ‖/‖ref‖ = %.3g > %g", g.positions[i], g.layers[l], e, tc.tol)
					}
				}
				ens, _ := ParseEnsemble(tc.ensemble)
				refEns := make([]float32, chunks)
				ens.combine(refEns, refLayers)
				got := r.Scores()
				near := 0
				for c := range chunks {
					if math.Abs(float64(refEns[c])) < 1e-3 {
						// Too close to call: the reference's own rounding decides. Take our
						// value so the page selection below can be compared exactly.
						near++
						refEns[c] = got[c]
						continue
					}
					if (got[c] > 0) != (refEns[c] > 0) {
						t.Errorf("position %d chunk %d: ensembled logit %v, reference %v: keep decisions differ", g.positions[i], c, got[c], refEns[c])
					}
				}
				t.Logf("position %d: %d chunks above, %d within 1e-3 of the threshold, selected %v", g.positions[i], cycles[i].AboveThreshold, near, cycles[i].Selected)
				var s selector
				want := s.step(chunks, refEns, &p)
				if !slices.Equal(cycles[i].Selected, want.Selected) || cycles[i].AboveThreshold != want.AboveThreshold || len(want.Selected) != 6 {
					t.Errorf("position %d: selected %v (above %d), from reference logits %v (above %d)",
						g.positions[i], cycles[i].Selected, cycles[i].AboveThreshold, want.Selected, want.AboveThreshold)
				}
				if cycles[i].AboveThreshold == 0 || cycles[i].AboveThreshold == chunks {
					t.Errorf("position %d: %d of %d above threshold: the golden data should split", g.positions[i], cycles[i].AboveThreshold, chunks)
				}
			}
		})
	}
}
