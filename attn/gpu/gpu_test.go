//go:build cuda

package gpu

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/flashmemory/flashmemory/attn"
	"github.com/flashmemory/flashmemory/internal/cuda"
	"github.com/flashmemory/flashmemory/internal/safetensors"
)

type rig struct {
	dev *cuda.Device
	st  *cuda.Stream
	sc  *Scorer
}

func newRig(t testing.TB) *rig {
	t.Helper()
	n, err := cuda.DeviceCount()
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Skip("no CUDA device")
	}
	dev, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	st, err := dev.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	sc, err := NewScorer(dev)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close(); st.Close(); dev.Close() })
	return &rig{dev, st, sc}
}

func (r *rig) keys(t testing.TB, raw []byte) *Keys {
	t.Helper()
	k, err := NewKeys(r.dev, len(raw)/KeyRecord)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	if err := k.Append(raw); err != nil {
		t.Fatal(err)
	}
	return k
}

func poisoned(n int) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(math.NaN())
	}
	return out
}

// One launch scores three requests: a 131,072-chunk request with 4 queries, a second
// request with its own 1,000 keys, and a third sharing the first request's keys — against
// the CPU scorer, for both variants, on fresh random inputs.
func TestScorerMatchesCPU(t *testing.T) {
	r := newRig(t)
	rnd := rand.New(rand.NewPCG(uint64(os.Getpid()), 11))
	lw := randomLayer(t, rnd, 512, 128, 128)
	big := randomKeys(rnd, 131072)
	small := randomKeys(rnd, 1000)
	kBig, kSmall := r.keys(t, big), r.keys(t, small)
	qsBig, qsSmall, qsShared := randomQueries(t, rnd, lw, 4), randomQueries(t, rnd, lw, 1), randomQueries(t, rnd, lw, 2)
	for _, tc := range []struct {
		v   attn.Variant
		tol float64
	}{{attn.Float, 1e-4}, {attn.FP8Q, 1e-3}} {
		t.Run(tc.v.String(), func(t *testing.T) {
			items := []Item{
				{Keys: kBig, Queries: qsBig, Out: poisoned(4 * 131072)},
				{Keys: kSmall, Queries: qsSmall, Out: poisoned(1000)},
				{Keys: kBig, Queries: qsShared, Out: poisoned(2 * 131072)},
			}
			if err := r.sc.Score(r.st, tc.v, items); err != nil {
				t.Fatal(err)
			}
			wants := [][]float32{cpuLogits(t, tc.v, qsBig, big), cpuLogits(t, tc.v, qsSmall, small), cpuLogits(t, tc.v, qsShared, big)}
			for i, it := range items {
				for j, x := range it.Out {
					if math.IsNaN(float64(x)) {
						t.Fatalf("item %d logit %d never written", i, j)
					}
				}
				e := relErr(it.Out, wants[i])
				t.Logf("item %d (%d queries x %d keys): ‖Δ‖/‖ref‖ = %.3g", i, len(it.Queries), it.Keys.Len(), e)
				if !(e <= tc.tol) {
					t.Errorf("item %d: relative error %.3g > %.0g", i, e, tc.tol)
				}
			}
		})
	}
}

// goldenPath finds indexer_golden.safetensors: $FLASHMEM_GOLDEN, ../shared beside the
// repository, or .gpu/testdata (where scripts/build-cuda.sh puts a copy for the GPU machine).
func goldenPath(t testing.TB) string {
	if p := os.Getenv("FLASHMEM_GOLDEN"); p != "" {
		return p
	}
	dir, _ := os.Getwd()
	for ; dir != filepath.Dir(dir); dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
	}
	for _, p := range []string{
		filepath.Join(dir, "..", "shared", "testdata", "indexer_golden.safetensors"),
		filepath.Join(dir, ".gpu", "testdata", "indexer_golden.safetensors"),
	} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("golden file not found")
	return ""
}

// The GPU scorer reproduces the published reference's golden logits with the CPU scorer's
// tolerances (1e-4 float path, 1e-3 fp8-q path).
func TestGolden(t *testing.T) {
	r := newRig(t)
	g := openGolden(t)
	opt, tensor, floats, matrix := g.opt, g.tensor, g.floats, g.matrix
	hid := tensor("hidden_bf16")
	pos, err := tensor("positions").Int64s()
	if err != nil {
		t.Fatal(err)
	}
	nq, hsz := hid.Shape[0], hid.Shape[1]
	for _, l := range []string{"l10", "l12", "l20"} {
		lw, err := attn.NewLayerWeights(matrix(l+".wq_a"), floats(l+".q_norm_weight"), matrix(l+".wq_b"), matrix(l+".weights_proj"), opt)
		if err != nil {
			t.Fatal(err)
		}
		var qs []*attn.Query
		for i := 0; i < nq; i++ {
			q, err := lw.Query(hid.Data[2*hsz*i:2*hsz*(i+1)], pos[i])
			if err != nil {
				t.Fatal(err)
			}
			qs = append(qs, q)
		}
		keys := r.keys(t, tensor(l+".compressed_k").Data)
		for _, c := range []struct {
			v    attn.Variant
			name string
			tol  float64
		}{{attn.Float, "logits_trained", 1e-4}, {attn.FP8Q, "logits_fp8q", 1e-3}} {
			want := floats(l + "." + c.name)
			out := poisoned(len(want))
			if err := r.sc.Score(r.st, c.v, []Item{{Keys: keys, Queries: qs, Out: out}}); err != nil {
				t.Fatal(err)
			}
			e := relErr(out, want)
			t.Logf("%s %s: ‖Δ‖/‖ref‖ = %.3g", l, c.name, e)
			if !(e <= c.tol) {
				t.Errorf("%s %s: relative error %.3g > %.0g", l, c.name, e, c.tol)
			}
		}
	}
}

// TestScorerBench times the kernel alone (keys resident, queries packed) at the sizes of
// the issue and prints a table; it runs only with FLASHMEM_BENCH=1 (scripts/gpu-test.sh)
// and writes JSON to $FLASHMEM_BENCH_OUT when set.
func TestScorerBench(t *testing.T) {
	if os.Getenv("FLASHMEM_BENCH") != "1" {
		t.Skip("set FLASHMEM_BENCH=1")
	}
	r := newRig(t)
	rnd := rand.New(rand.NewPCG(7, 8))
	lw := randomLayer(t, rnd, 512, 128, 128)
	type row struct {
		Chunks  int     `json:"chunks"`
		Batch   int     `json:"batch"`
		Variant string  `json:"variant"`
		MedMS   float64 `json:"median_ms"`
		MinMS   float64 `json:"min_ms"`
	}
	var rows []row
	raw := randomKeys(rnd, 262144)
	keysAll := r.keys(t, raw)
	keysHalf := r.keys(t, raw[:131072*KeyRecord])
	start, err := r.dev.NewEvent(true)
	if err != nil {
		t.Fatal(err)
	}
	end, err := r.dev.NewEvent(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{131072, 262144} {
		keys := keysHalf
		if n == 262144 {
			keys = keysAll
		}
		for _, b := range []int{1, 8} {
			qs := randomQueries(t, rnd, lw, b)
			for _, v := range []attn.Variant{attn.Float, attn.FP8Q} {
				p, err := r.sc.Plan(v, []Item{{Keys: keys, Queries: qs, Out: make([]float32, b*n)}})
				if err != nil {
					t.Fatal(err)
				}
				var ms []float64
				for i := 0; i < 60; i++ {
					if err := start.Record(r.st); err != nil {
						t.Fatal(err)
					}
					if err := p.Launch(r.st); err != nil {
						t.Fatal(err)
					}
					if err := end.Record(r.st); err != nil {
						t.Fatal(err)
					}
					if err := end.Wait(); err != nil {
						t.Fatal(err)
					}
					x, err := end.Elapsed(start)
					if err != nil {
						t.Fatal(err)
					}
					if i >= 10 { // warm-up: JIT, caches
						ms = append(ms, x)
					}
				}
				p.Close()
				slices.Sort(ms)
				rows = append(rows, row{n, b, v.String(), ms[len(ms)/2], ms[0]})
			}
		}
	}
	fmt.Printf("\nGPU scorer (%s), kernel time, median of 50 (ms)\n", r.dev.Name())
	fmt.Printf("%-8s %-5s %-7s %10s %10s\n", "chunks", "B", "variant", "median", "min")
	for _, x := range rows {
		fmt.Printf("%-8d %-5d %-7s %10.4f %10.4f\n", x.Chunks, x.Batch, x.Variant, x.MedMS, x.MinMS)
	}
	if p := os.Getenv("FLASHMEM_BENCH_OUT"); p != "" {
		b, _ := json.MarshalIndent(map[string]any{"device": r.dev.Name(), "scorer": rows}, "", " ")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Error(err)
		}
	}
}

// golden is the published reference's golden file opened for one test, with
// the scorer options its metadata names; TestGolden and TestCycleGolden share it.
type golden struct {
	t   *testing.T
	f   *safetensors.File
	opt attn.Options
}

func openGolden(t *testing.T) *golden {
	t.Helper()
	f, err := safetensors.Open(goldenPath(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	md := f.Metadata()
	num := func(k string) float64 {
		v, err := strconv.ParseFloat(md[k], 64)
		if err != nil {
			t.Fatalf("metadata %s: %v", k, err)
		}
		return v
	}
	opt := attn.Options{HeadDim: int(num("head_dim")), Eps: float32(num("rms_norm_eps")),
		Rope: attn.YaRN{Dim: int(num("rope_dim")), Base: num("rope_base"), Factor: num("rope_factor"),
			OriginalLen: int(num("rope_original_seq_len")), BetaFast: num("rope_beta_fast"), BetaSlow: num("rope_beta_slow")}}
	return &golden{t: t, f: f, opt: opt}
}

func (g *golden) tensor(name string) safetensors.Tensor {
	g.t.Helper()
	tt, err := g.f.Tensor(name)
	if err != nil {
		g.t.Fatal(err)
	}
	return tt
}

func (g *golden) floats(name string) []float32 {
	g.t.Helper()
	v, err := g.tensor(name).Float32s()
	if err != nil {
		g.t.Fatalf("%s: %v", name, err)
	}
	return v
}

func (g *golden) matrix(name string) attn.Matrix {
	tt := g.tensor(name)
	return attn.Matrix{Rows: tt.Shape[0], Cols: tt.Shape[1], Data: g.floats(name)}
}
