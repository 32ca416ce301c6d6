//go:build cuda

package gpu

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/attn"
)

// Queries projected on the GPU equal the CPU's: float32 and bf16 weights, batches below,
// at and above one launch's 8 vectors, and the published dimensions (timed against the
// CPU in the same run).
func TestProjectorMatchesCPU(t *testing.T) {
	r := newRig(t)
	rnd := rand.New(rand.NewPCG(21, 21))
	cases := []struct {
		name                string
		hidden, rank, heads int
		bf16                bool
		batches             []int
	}{
		{"small f32", 512, 128, 16, false, []int{1, 8, 13}},
		{"small bf16", 512, 128, 16, true, []int{1, 8, 13}},
		{"published", 4096, 2048, 128, false, []int{1, 8, 16}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lw := randomLayer(t, rnd, tc.hidden, tc.rank, tc.heads)
			if tc.bf16 {
				lw = bf16Layer(t, lw)
			}
			p, err := NewProjector(r.dev, lw)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			for _, nb := range tc.batches {
				hidden := make([][]byte, nb)
				pos := make([]int64, nb)
				for i := range hidden {
					hidden[i] = make([]byte, 2*tc.hidden)
					for j := 0; j < tc.hidden; j++ {
						binary.LittleEndian.PutUint16(hidden[i][2*j:], attn.BF16FromF32(float32(rnd.NormFloat64())))
					}
					pos[i] = int64(rnd.IntN(1 << 20))
				}
				t0 := time.Now()
				want, err := lw.Queries(hidden, pos)
				cpu := time.Since(t0)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := lw.QueriesOn(p, hidden, pos); err != nil { // warm-up
					t.Fatal(err)
				}
				t0 = time.Now()
				got, err := lw.QueriesOn(p, hidden, pos)
				gpuT := time.Since(t0)
				if err != nil {
					t.Fatal(err)
				}
				var num, den, wnum, wden float64
				for i := range want {
					for j, v := range want[i].Q {
						d := float64(got[i].Q[j] - v)
						num += d * d
						den += float64(v) * float64(v)
					}
					for j, v := range want[i].W {
						d := float64(got[i].W[j] - v)
						wnum += d * d
						wden += float64(v) * float64(v)
					}
				}
				eq, ew := math.Sqrt(num/den), math.Sqrt(wnum/wden)
				t.Logf("%d queries: ‖ΔQ‖/‖Q‖ = %.2g, ‖ΔW‖/‖W‖ = %.2g; CPU %v, GPU %v", nb, eq, ew, cpu, gpuT)
				// Q is rounded to bf16 before RoPE and Hadamard: a summation-order difference
				// can flip a rounding, so Q agrees to bf16 precision, W to float32.
				if eq > 2e-3 || ew > 1e-5 {
					t.Errorf("%d queries: GPU projection differs: ‖ΔQ‖/‖Q‖ = %.3g, ‖ΔW‖/‖W‖ = %.3g", nb, eq, ew)
				}
			}
		})
	}
}

// bf16Layer rebuilds lw with every weight rounded to bf16, so the projector gets the bf16
// matrices.
func bf16Layer(t *testing.T, lw *attn.LayerWeights) *attn.LayerWeights {
	t.Helper()
	mat := func(which attn.ProjMatrix) attn.Matrix {
		rows, cols, f32, _ := lw.MatrixData(which)
		m := attn.Matrix{Rows: rows, Cols: cols, Data: make([]float32, len(f32))}
		for i, v := range f32 {
			m.Data[i] = attn.RoundBF16(v)
		}
		return m
	}
	qn := make([]float32, lw.Rank())
	for i := range qn {
		qn[i] = 1
	}
	out, err := attn.NewLayerWeights(mat(attn.ProjQA), qn, mat(attn.ProjQB), mat(attn.ProjHead), attn.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, f, b := out.MatrixData(attn.ProjQB); f != nil || b == nil {
		t.Fatal("bf16 layer kept float32 weights")
	}
	return out
}
