package attn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// TestMatMul covers the SIMD projection kernel with column counts that leave a
// tail for the portable code, 1 to 9 input vectors (partial groups of 4), bf16
// and float32 weights, and the split over goroutines.
func TestMatMul(t *testing.T) {
	for _, fast := range kernelModes() {
		for _, sz := range [][3]int{{1, 1, 1}, {3, 15, 2}, {5, 16, 4}, {7, 33, 5}, {4, 100, 9}, {64, 512, 3}, {600, 2048, 1}, {600, 2048, 6}} {
			t.Run(fmt.Sprintf("fast=%v/%dx%d/n=%d", fast, sz[0], sz[1], sz[2]), func(t *testing.T) {
				setFast(t, fast)
				rows, cols, nv := sz[0], sz[1], sz[2]
				r := rand.New(rand.NewPCG(uint64(rows), uint64(cols)))
				m := Matrix{Rows: rows, Cols: cols, Data: make([]float32, rows*cols)}
				for i := range m.Data {
					m.Data[i] = float32(r.NormFloat64())
				}
				xs := newVectors(nv, cols)
				for v := 0; v < nv; v++ {
					for i := range xs.vec(v) {
						xs.vec(v)[i] = float32(r.NormFloat64())
					}
				}
				for _, bf := range []bool{false, true} {
					if bf {
						for i, v := range m.Data {
							m.Data[i] = RoundBF16(v)
						}
					}
					w := newWeights(m, true)
					if (w.bf16 != nil) != bf {
						t.Fatalf("bf16=%v: weights stored as bf16: %v", bf, w.bf16 != nil)
					}
					dst := newVectors(nv, rows)
					matMul(dst, w, xs)
					for v := 0; v < nv; v++ {
						x, got := xs.vec(v), dst.vec(v)
						for i := range got {
							var want, mag float64
							for j := range x {
								p := float64(m.Data[i*cols+j]) * float64(x[j])
								want += p
								mag += math.Abs(p)
							}
							if math.Abs(float64(got[i])-want) > 1e-6*mag+1e-30 {
								t.Fatalf("bf16=%v vector %d row %d: %g, want %g", bf, v, i, got[i], want)
							}
						}
					}
				}
			})
		}
	}
}

// TestQueriesBatched: a batch of queries equals the queries made one at a time,
// bit for bit, whatever the batch size and slot.
func TestQueriesBatched(t *testing.T) {
	r := rand.New(rand.NewPCG(10, 10))
	lw, err := NewLayerWeights(randMatrix(r, 48, 80, false), ones(48), randMatrix(r, 5*128, 48, false), randMatrix(r, 5, 80, false), DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	var hid [][]byte
	var pos []int64
	for i := range 7 {
		h := make([]byte, 160)
		for j := 0; j < 80; j++ {
			v := BF16FromF32(float32(r.NormFloat64()))
			h[2*j], h[2*j+1] = byte(v), byte(v>>8)
		}
		hid = append(hid, h)
		pos = append(pos, int64(i)*150001)
	}
	for _, fast := range kernelModes() {
		setFast(t, fast)
		for _, nb := range []int{1, 2, 4, 5, 7} {
			batch, err := lw.Queries(hid[:nb], pos[:nb])
			if err != nil {
				t.Fatal(err)
			}
			for i, bq := range batch {
				one, _ := lw.Query(hid[i], pos[i])
				for j := range one.Q {
					if math.Float32bits(one.Q[j]) != math.Float32bits(bq.Q[j]) {
						t.Fatalf("fast=%v batch %d slot %d: q[%d] %g, alone %g", fast, nb, i, j, bq.Q[j], one.Q[j])
					}
				}
				for j := range one.W {
					if one.W[j] != bq.W[j] || one.QScale[j] != bq.QScale[j] {
						t.Fatalf("fast=%v batch %d slot %d: head %d weights differ", fast, nb, i, j)
					}
				}
			}
		}
	}
	if _, err := lw.Queries(hid[:2], pos[:1]); !errors.Is(err, ErrShape) {
		t.Errorf("mismatched lengths: %v", err)
	}
	if _, err := lw.Queries([][]byte{hid[0], hid[1][:10]}, pos[:2]); !errors.Is(err, ErrShape) {
		t.Errorf("short hidden state: %v", err)
	}
	if qs, err := lw.Queries(nil, nil); err != nil || len(qs) != 0 {
		t.Errorf("empty batch: %v, %v", qs, err)
	}
}

// TestQueryVariantsConsistent checks that the fp8-q query is the float query
// quantised per head: dequantised, it is within half an fp8 step of Q.
func TestQueryVariantsConsistent(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	lw, err := NewLayerWeights(randMatrix(r, 64, 96, false), ones(64), randMatrix(r, 6*128, 64, false), randMatrix(r, 6, 96, false), DefaultOptions)
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

// FuzzQuery feeds arbitrary hidden-state bytes (the decoder's input) and
// positions: wrong lengths and negative positions are errors, anything else
// (NaN, Inf, huge values) must produce a query without panicking.
func FuzzQuery(f *testing.F) {
	r := rand.New(rand.NewPCG(8, 8))
	opt := Options{HeadDim: 16, Eps: 1e-6, Rope: YaRN{Dim: 8, Base: 160000, Factor: 16, OriginalLen: 65536, BetaFast: 32, BetaSlow: 1}}
	lw, err := NewLayerWeights(randMatrix(r, 8, 32, false), ones(8), randMatrix(r, 3*16, 8, false), randMatrix(r, 3, 32, false), opt)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(make([]byte, 64), int64(0))
	f.Add(bytes64(0x7f, 0x80), int64(1<<20)) // +Inf everywhere
	f.Add(bytes64(0xff, 0xff), int64(12345)) // NaN everywhere
	f.Add([]byte{1, 2, 3}, int64(-1))
	f.Fuzz(func(t *testing.T, hidden []byte, pos int64) {
		q, err := lw.Query(hidden, pos)
		if len(hidden) != 64 || pos < 0 {
			if err == nil {
				t.Fatalf("accepted %d bytes at position %d", len(hidden), pos)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		ks, _ := NewKeyStore(16)
		_ = ks.Append(randomKeys(r, 30, 16))
		for _, v := range []Variant{Float, FP8Q} {
			b, err := NewBatch(v, q)
			if err != nil {
				t.Fatal(err)
			}
			if err := ks.Logits(b, 0, 30, make([]float32, 30)); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func bytes64(lo, hi byte) []byte {
	b := make([]byte, 64)
	for i := 0; i < 64; i += 2 {
		b[i], b[i+1] = lo, hi
	}
	return b
}

// TestBF16WeightsSameQuery: keeping bf16-exact weights as bf16 must not change a
// single bit of the query (same values, same summation order).
func TestBF16WeightsSameQuery(t *testing.T) {
	r := rand.New(rand.NewPCG(6, 6))
	qn := make([]float32, 96)
	for i := range qn {
		qn[i] = RoundBF16(float32(1 + 0.1*r.NormFloat64()))
	}
	wqA, wqB, wp := randMatrix(r, 96, 200, true), randMatrix(r, 4*128, 96, true), randMatrix(r, 4, 200, true)
	hid := make([]byte, 400)
	for i := 0; i < 200; i++ {
		v := BF16FromF32(float32(r.NormFloat64()))
		hid[2*i], hid[2*i+1] = byte(v), byte(v>>8)
	}
	for _, fast := range kernelModes() {
		setFast(t, fast)
		a, err := newLayerWeights(wqA, qn, wqB, wp, DefaultOptions, true)
		if err != nil {
			t.Fatal(err)
		}
		b, err := newLayerWeights(wqA, qn, wqB, wp, DefaultOptions, false)
		if err != nil {
			t.Fatal(err)
		}
		if a.wqB.bf16 == nil || b.wqB.bf16 != nil {
			t.Fatal("storage choice not as forced")
		}
		qa, _ := a.Query(hid, 777777)
		qb, _ := b.Query(hid, 777777)
		for i := range qa.Q {
			if math.Float32bits(qa.Q[i]) != math.Float32bits(qb.Q[i]) {
				t.Fatalf("fast=%v: q[%d] bf16 storage %g, float32 storage %g", fast, i, qa.Q[i], qb.Q[i])
			}
		}
		for i := range qa.W {
			if qa.W[i] != qb.W[i] {
				t.Fatalf("fast=%v: w[%d] differs", fast, i)
			}
		}
	}
}

// refProjector is a projector written the plain way, reading the matrices through
// MatrixData: QueriesOn with it must give exactly what Queries gives.
type refProjector struct {
	lw    *LayerWeights
	calls []ProjMatrix
}

func (p *refProjector) Project(which ProjMatrix, dst, xs [][]float32) error {
	p.calls = append(p.calls, which)
	rows, cols, f32, bf16 := p.lw.MatrixData(which)
	for b := range xs {
		if len(xs[b]) != cols || len(dst[b]) != rows {
			return fmt.Errorf("matrix %d is %d×%d, got x of %d and dst of %d", which, rows, cols, len(xs[b]), len(dst[b]))
		}
		for r := range rows {
			var acc float64
			for c := range cols {
				w := float64(0)
				if bf16 != nil {
					w = float64(BF16ToF32(bf16[r*cols+c]))
				} else {
					w = float64(f32[r*cols+c])
				}
				acc += w * float64(xs[b][c])
			}
			dst[b][r] = float32(acc)
		}
	}
	return nil
}

func TestQueriesOnProjector(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	for _, bf := range []bool{false, true} {
		lw, err := NewLayerWeights(randMatrix(r, 48, 80, bf), ones(48), randMatrix(r, 5*128, 48, bf), randMatrix(r, 5, 80, bf), DefaultOptions)
		if err != nil {
			t.Fatal(err)
		}
		hidden := make([][]byte, 5)
		pos := make([]int64, 5)
		for i := range hidden {
			hidden[i] = make([]byte, 160)
			for j := 0; j < 80; j++ {
				binary.LittleEndian.PutUint16(hidden[i][2*j:], BF16FromF32(float32(r.NormFloat64())))
			}
			pos[i] = int64(1000 * i)
		}
		want, err := lw.Queries(hidden, pos)
		if err != nil {
			t.Fatal(err)
		}
		p := &refProjector{lw: lw}
		got, err := lw.QueriesOn(p, hidden, pos)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(p.calls, []ProjMatrix{ProjQA, ProjQB, ProjHead}) {
			t.Errorf("projector calls %v", p.calls)
		}
		for i := range want {
			for j := range want[i].Q {
				if math.Abs(float64(want[i].Q[j]-got[i].Q[j])) > 1e-6*(1+math.Abs(float64(want[i].Q[j]))) {
					t.Fatalf("bf16 %v query %d: Q[%d] %v vs %v", bf, i, j, got[i].Q[j], want[i].Q[j])
				}
			}
			if !slices.Equal(want[i].W, got[i].W) && !closeAll(want[i].W, got[i].W) {
				t.Fatalf("bf16 %v query %d: W %v vs %v", bf, i, got[i].W, want[i].W)
			}
		}
		// A failing projector fails the query, naming the step.
		if _, err := lw.QueriesOn(failProjector{}, hidden, pos); err == nil || !strings.Contains(err.Error(), "projection 0") {
			t.Errorf("failing projector: %v", err)
		}
	}
}

type failProjector struct{}

func (failProjector) Project(ProjMatrix, [][]float32, [][]float32) error {
	return errors.New("device lost")
}

func closeAll(a, b []float32) bool {
	for i := range a {
		if math.Abs(float64(a[i]-b[i])) > 1e-6*(1+math.Abs(float64(a[i]))) {
			return false
		}
	}
	return len(a) == len(b)
}
