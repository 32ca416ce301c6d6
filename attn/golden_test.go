package attn

import (
	"fmt"
	"math"
	"strconv"
	"testing"

	"github.com/flashmemory/flashmemory/internal/safetensors"
	"github.com/flashmemory/flashmemory/internal/sharedtest"
)

// goldenFile opens ../shared/testdata/indexer_golden.safetensors beside the repo
// root; missing, it fails under CI and skips elsewhere.
func goldenFile(t testing.TB) *safetensors.File {
	t.Helper()
	p := sharedtest.Golden(t)
	f, err := safetensors.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func tensorF32(t testing.TB, f *safetensors.File, name string) (safetensors.Tensor, []float32) {
	t.Helper()
	tt, err := f.Tensor(name)
	if err != nil {
		t.Fatal(err)
	}
	v, err := tt.Float32s()
	if err != nil {
		t.Fatal(err)
	}
	return tt, v
}

func matrixOf(t testing.TB, f *safetensors.File, name string) Matrix {
	tt, v := tensorF32(t, f, name)
	if len(tt.Shape) != 2 {
		t.Fatalf("%s: shape %v", name, tt.Shape)
	}
	return Matrix{Rows: tt.Shape[0], Cols: tt.Shape[1], Data: v}
}

type goldenLayer struct {
	name     string
	lw       *LayerWeights
	keys     *KeyStore
	trained  []float32 // [queries][chunks]
	fp8q     []float32
	nQueries int
}

type golden struct {
	hidden    [][]byte // per query, little-endian bf16
	positions []int64
	layers    []goldenLayer
}

func loadGolden(t testing.TB) *golden {
	f := goldenFile(t)
	md := f.Metadata()
	atoi := func(k string) int {
		v, err := strconv.Atoi(md[k])
		if err != nil {
			t.Fatalf("metadata %s: %v", k, err)
		}
		return v
	}
	atof := func(k string) float64 {
		v, err := strconv.ParseFloat(md[k], 64)
		if err != nil {
			t.Fatalf("metadata %s: %v", k, err)
		}
		return v
	}
	opt := Options{
		HeadDim: atoi("head_dim"),
		Eps:     float32(atof("rms_norm_eps")),
		Rope: YaRN{Dim: atoi("rope_dim"), Base: atof("rope_base"), Factor: atof("rope_factor"),
			OriginalLen: atoi("rope_original_seq_len"), BetaFast: atof("rope_beta_fast"), BetaSlow: atof("rope_beta_slow")},
	}
	g := &golden{}
	hid, err := f.Tensor("hidden_bf16")
	if err != nil {
		t.Fatal(err)
	}
	nq, hsz := hid.Shape[0], hid.Shape[1]
	for i := 0; i < nq; i++ {
		g.hidden = append(g.hidden, hid.Data[2*hsz*i:2*hsz*(i+1)])
	}
	pt, err := f.Tensor("positions")
	if err != nil {
		t.Fatal(err)
	}
	if g.positions, err = pt.Int64s(); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"l10", "l12", "l20"} {
		_, qn := tensorF32(t, f, l+".q_norm_weight")
		lw, err := NewLayerWeights(matrixOf(t, f, l+".wq_a"), qn, matrixOf(t, f, l+".wq_b"), matrixOf(t, f, l+".weights_proj"), opt)
		if err != nil {
			t.Fatal(err)
		}
		if lw.Heads() != atoi("n_heads") || lw.Hidden() != atoi("hidden") || lw.Rank() != atoi("q_lora_rank") {
			t.Fatalf("%s: dims from weights %d/%d/%d disagree with metadata", l, lw.Heads(), lw.Hidden(), lw.Rank())
		}
		kt, err := f.Tensor(l + ".compressed_k")
		if err != nil {
			t.Fatal(err)
		}
		ks, err := NewKeyStore(opt.HeadDim)
		if err != nil {
			t.Fatal(err)
		}
		if err := ks.Append(kt.Data); err != nil {
			t.Fatal(err)
		}
		_, tr := tensorF32(t, f, l+".logits_trained")
		_, f8 := tensorF32(t, f, l+".logits_fp8q")
		g.layers = append(g.layers, goldenLayer{name: l, lw: lw, keys: ks, trained: tr, fp8q: f8, nQueries: nq})
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

// scoreGolden returns per-layer logits [query][chunk] for variant v.
func scoreGolden(t testing.TB, g *golden, v Variant) [][]float32 {
	var out [][]float32
	for _, l := range g.layers {
		var qs []*Query
		for i, h := range g.hidden {
			q, err := l.lw.Query(h, g.positions[i])
			if err != nil {
				t.Fatal(err)
			}
			qs = append(qs, q)
		}
		b, err := NewBatch(v, qs...)
		if err != nil {
			t.Fatal(err)
		}
		o := make([]float32, len(qs)*l.keys.Len())
		if err := Run([]Task{{Batch: b, Keys: l.keys, From: 0, To: l.keys.Len(), Out: o}}); err != nil {
			t.Fatal(err)
		}
		out = append(out, o)
	}
	return out
}

func TestGolden(t *testing.T) {
	g := loadGolden(t)
	for _, fast := range kernelModes() {
		t.Run(fmt.Sprintf("fast=%v", fast), func(t *testing.T) {
			setFast(t, fast)
			tr := scoreGolden(t, g, Float)
			f8 := scoreGolden(t, g, FP8Q)
			n := g.layers[0].keys.Len()
			ens := make([]float32, len(g.hidden)*n)
			ref := make([]float32, len(ens))
			for i := range ens {
				ens[i], ref[i] = float32(math.Inf(-1)), float32(math.Inf(-1))
			}
			for li, l := range g.layers {
				for qi := range g.hidden {
					e1 := relErr(tr[li][qi*n:(qi+1)*n], l.trained[qi*n:(qi+1)*n])
					e2 := relErr(f8[li][qi*n:(qi+1)*n], l.fp8q[qi*n:(qi+1)*n])
					t.Logf("%s pos %d: trained %.3g fp8q %.3g", l.name, g.positions[qi], e1, e2)
					// Each query on its own, too: an aggregate can hide one bad position.
					if e1 > 1e-4 || e2 > 1e-3 {
						t.Errorf("%s pos %d: ‖Δ‖/‖ref‖ trained %.3g (bound 1e-4), fp8q %.3g (bound 1e-3)", l.name, g.positions[qi], e1, e2)
					}
				}
				if e := relErr(tr[li], l.trained); e > 1e-4 {
					t.Errorf("%s logits_trained: ‖Δ‖/‖ref‖ = %.3g > 1e-4", l.name, e)
				}
				if e := relErr(f8[li], l.fp8q); e > 1e-3 {
					t.Errorf("%s logits_fp8q: ‖Δ‖/‖ref‖ = %.3g > 1e-3", l.name, e)
				}
				for i := range ens {
					ens[i] = max(ens[i], tr[li][i])
					ref[i] = max(ref[i], l.trained[i])
				}
			}
			kept, disagree := 0, 0
			for i := range ens {
				if math.Abs(float64(ref[i])) < 1e-3 {
					continue
				}
				if (Sigmoid(ens[i]) > 0.5) != (Sigmoid(ref[i]) > 0.5) {
					disagree++
				}
				if ref[i] > 0 {
					kept++
				}
			}
			if disagree > 0 {
				t.Errorf("%d ensembled keep decisions disagree with the reference", disagree)
			}
			if kept == 0 || kept == len(ens) {
				t.Errorf("degenerate reference: %d of %d kept", kept, len(ens))
			}
		})
	}
}

func kernelModes() []bool {
	if hasAVX2FMA {
		return []bool{false, true}
	}
	return []bool{false}
}

func setFast(t testing.TB, fast bool) {
	old := useFast
	useFast = fast
	t.Cleanup(func() { useFast = old })
}
