package gpu

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/flashmemory/flashmemory/attn"
)

// randomLayer builds a small indexer layer with random weights, so test queries go through
// the real query path (bf16 rounding, RoPE, Hadamard, fp8-q quantisation).
func randomLayer(t testing.TB, r *rand.Rand, hidden, rank, heads int) *attn.LayerWeights {
	t.Helper()
	mat := func(rows, cols int, s float64) attn.Matrix {
		m := attn.Matrix{Rows: rows, Cols: cols, Data: make([]float32, rows*cols)}
		for i := range m.Data {
			m.Data[i] = float32(r.NormFloat64() * s)
		}
		return m
	}
	qn := make([]float32, rank)
	for i := range qn {
		qn[i] = float32(0.5 + r.Float64())
	}
	lw, err := attn.NewLayerWeights(mat(rank, hidden, 1/math.Sqrt(float64(hidden))), qn,
		mat(heads*HeadDim, rank, 1/math.Sqrt(float64(rank))), mat(heads, hidden, 1), attn.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	return lw
}

func randomQueries(t testing.TB, r *rand.Rand, lw *attn.LayerWeights, n int) []*attn.Query {
	t.Helper()
	var qs []*attn.Query
	for i := 0; i < n; i++ {
		h := make([]byte, 2*lw.Hidden())
		for j := 0; j < lw.Hidden(); j++ {
			binary.LittleEndian.PutUint16(h[2*j:], attn.BF16FromF32(float32(r.NormFloat64())))
		}
		q, err := lw.Query(h, r.Int64N(1<<20))
		if err != nil {
			t.Fatal(err)
		}
		qs = append(qs, q)
	}
	return qs
}

// randomKeys returns n raw key records: fp8 codes drawn from the whole finite range
// (subnormals included, NaN codes excluded) and per-chunk scales like amax/448, with every
// 97th scale negated to exercise the sign handling of both variants.
func randomKeys(r *rand.Rand, n int) []byte {
	raw := make([]byte, n*KeyRecord)
	for i := 0; i < n; i++ {
		rec := raw[i*KeyRecord:]
		for j := 0; j < HeadDim; j++ {
			c := uint8(r.UintN(256))
			for c&0x7f == 0x7f {
				c = uint8(r.UintN(256))
			}
			rec[j] = c
		}
		s := float32(r.Float64()*0.05 + 1e-3)
		if i%97 == 5 {
			s = -s
		}
		binary.LittleEndian.PutUint32(rec[HeadDim:], math.Float32bits(s))
	}
	return raw
}

// cpuLogits scores with the CPU reference scorer: [len(qs)][n].
func cpuLogits(t testing.TB, v attn.Variant, qs []*attn.Query, raw []byte) []float32 {
	t.Helper()
	ks, err := attn.NewKeyStore(HeadDim)
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Append(raw); err != nil {
		t.Fatal(err)
	}
	b, err := attn.NewBatch(v, qs...)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]float32, len(qs)*ks.Len())
	if err := attn.Run([]attn.Task{{Batch: b, Keys: ks, From: 0, To: ks.Len(), Out: out}}); err != nil {
		t.Fatal(err)
	}
	return out
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
