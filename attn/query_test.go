package attn

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// TestMatVec covers the SIMD dot product with column counts that leave a tail
// for the portable code, and the split over goroutines.
func TestMatVec(t *testing.T) {
	for _, fast := range kernelModes() {
		for _, sz := range [][2]int{{1, 1}, {3, 31}, {5, 32}, {7, 33}, {4, 100}, {64, 512}, {600, 2048}} {
			t.Run(fmt.Sprintf("fast=%v/%dx%d", fast, sz[0], sz[1]), func(t *testing.T) {
				setFast(t, fast)
				r := rand.New(rand.NewPCG(uint64(sz[0]), uint64(sz[1])))
				m := Matrix{Rows: sz[0], Cols: sz[1], Data: make([]float32, sz[0]*sz[1])}
				for i := range m.Data {
					m.Data[i] = float32(r.NormFloat64())
				}
				x := make([]float32, sz[1])
				for i := range x {
					x[i] = float32(r.NormFloat64())
				}
				got := make([]float32, sz[0])
				matVec(got, m, x)
				for i := range got {
					var want, mag float64
					for j := range x {
						p := float64(m.Data[i*sz[1]+j]) * float64(x[j])
						want += p
						mag += math.Abs(p)
					}
					if math.Abs(float64(got[i])-want) > 1e-6*mag+1e-30 {
						t.Fatalf("row %d: %g, want %g", i, got[i], want)
					}
				}
			})
		}
	}
}

// TestQueryVariantsConsistent checks that the fp8-q query is the float query
// quantised per head: dequantised, it is within half an fp8 step of Q.
func TestQueryVariantsConsistent(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	mat := func(rows, cols int) Matrix {
		m := Matrix{Rows: rows, Cols: cols, Data: make([]float32, rows*cols)}
		for i := range m.Data {
			m.Data[i] = float32(r.NormFloat64() / math.Sqrt(float64(cols)))
		}
		return m
	}
	qn := make([]float32, 64)
	for i := range qn {
		qn[i] = 1
	}
	lw, err := NewLayerWeights(mat(64, 96), qn, mat(6*128, 64), mat(6, 96), DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	hid := make([]byte, 2*96)
	for i := 0; i < 96; i++ {
		v := BF16FromF32(float32(r.NormFloat64()))
		hid[2*i], hid[2*i+1] = byte(v), byte(v>>8)
	}
	for _, pos := range []int64{0, 131000, 1 << 20} {
		q, err := lw.Query(hid, pos)
		if err != nil {
			t.Fatal(err)
		}
		for h := 0; h < q.Heads; h++ {
			s := q.QScale[h]
			var amax float32
			for j := 0; j < 128; j++ {
				amax = max(amax, float32(math.Abs(float64(q.Q[h*128+j]))))
			}
			if s != amax/448 || s == 0 {
				t.Fatalf("pos %d head %d: scale %g, want %g", pos, h, s, amax/448)
			}
			for j := 0; j < 128; j++ {
				x := q.Q[h*128+j] / s
				deq := FP8ToF32(q.Q8[h*128+j])
				// e4m3 keeps 3 mantissa bits: half a step is 2^-4 relative, 2^-10 absolute below 2^-6.
				if d := math.Abs(float64(deq - x)); d > math.Max(math.Abs(float64(x))/16, 1.0/1024)+1e-6 {
					t.Fatalf("pos %d head %d elem %d: q/s = %g, fp8 %g", pos, h, j, x, deq)
				}
			}
		}
	}
}
