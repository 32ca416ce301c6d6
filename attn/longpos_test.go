package attn

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// refScorer is an independent, unoptimised statement of the scorer: float64
// everywhere the reference's order does not matter, float32 rounding exactly
// where LSA.md prescribes it, explicit Hadamard matrix, no packing or batching.
type refScorer struct {
	hidden, rank, heads, d int
	wqA, qn, wqB, wp       []float32
	y                      YaRN
}

func (r *refScorer) query(hid []byte, pos int64) (q []float64, w []float64) {
	x := make([]float64, r.hidden)
	for i := range x {
		x[i] = float64(BF16ToF32(binary.LittleEndian.Uint16(hid[2*i:])))
	}
	a := make([]float64, r.rank)
	var ss float64
	for i := range a {
		for j := range x {
			a[i] += float64(r.wqA[i*r.hidden+j]) * x[j]
		}
		a[i] = r32(a[i])
		ss += a[i] * a[i]
	}
	rs := r32(1 / math.Sqrt(r32(r32(ss/float64(r.rank))+float64(float32(1e-6)))))
	for i := range a {
		a[i] = r32(r32(a[i]*rs) * float64(r.qn[i]))
	}
	// YaRN frequencies, rounded after every step in the LSA.md order.
	low, high := r.y.Bounds()
	half := r.y.Dim / 2
	g := make([]float64, half)
	for i := range g {
		e := r32(float64(2*i) / float64(r.y.Dim))
		f := r32(1 / r32(math.Pow(r32(r.y.Base), e)))
		ramp := 0.0
		if i >= high {
			ramp = 1
		} else if i >= low {
			ramp = r32((float64(i) - float64(low)) / float64(max(high-low, 1)))
		}
		g[i] = r32(r32(f*r32(1-ramp)) + r32(r32(f/r.y.Factor)*ramp))
	}
	q = make([]float64, r.heads*r.d)
	for h := 0; h < r.heads; h++ {
		head := make([]float64, r.d)
		for i := range head {
			row := h*r.d + i
			var s float64
			for j := range a {
				s += float64(r.wqB[row*r.rank+j]) * a[j]
			}
			head[i] = float64(RoundBF16(float32(s)))
		}
		off := r.d - r.y.Dim
		for i := 0; i < half; i++ {
			ang := r32(float64(float32(pos)) * g[i])
			c, sn := r32(math.Cos(ang)), r32(math.Sin(ang))
			u, v := head[off+2*i], head[off+2*i+1]
			head[off+2*i] = float64(RoundBF16(float32(r32(u*c) - r32(v*sn))))
			head[off+2*i+1] = float64(RoundBF16(float32(r32(u*sn) + r32(v*c))))
		}
		for i := 0; i < r.d; i++ {
			var s float64
			for j := 0; j < r.d; j++ {
				if popcount(i&j)%2 == 1 {
					s -= head[j]
				} else {
					s += head[j]
				}
			}
			q[h*r.d+i] = r32(s / math.Sqrt(float64(r.d)))
		}
	}
	w = make([]float64, r.heads)
	for h := range w {
		for j := range x {
			w[h] += float64(r.wp[h*r.hidden+j]) * x[j]
		}
		w[h] = r32(r32(w[h]) / math.Sqrt(float64(r.d)) / math.Sqrt(float64(r.heads)))
	}
	return q, w
}

func (r *refScorer) logit(q, w []float64, key []byte, v Variant) float64 {
	s := float64(math.Float32frombits(binary.LittleEndian.Uint32(key[r.d:])))
	var logit float64
	for h := 0; h < r.heads; h++ {
		qh := q[h*r.d : (h+1)*r.d]
		var dot, wh float64
		switch v {
		case Float:
			for j, x := range qh {
				dot += x * r32(float64(FP8ToF32(key[j]))*s)
			}
			wh = w[h]
		case FP8Q:
			var amax float64
			for _, x := range qh {
				amax = math.Max(amax, math.Abs(x))
			}
			qs := r32(amax / 448)
			for j, x := range qh {
				dot += float64(FP8ToF32(FP8FromF32(float32(x/qs)))) * float64(FP8ToF32(key[j]))
			}
			wh = w[h] * qs
		}
		logit += wh * math.Max(dot, 0)
	}
	if v == FP8Q {
		logit *= s
	}
	return logit
}

// TestLongPositions runs the whole pipeline (batched projections, packing,
// kernel, Run) at positions up to 1M against refScorer, beyond the golden file's
// 131000.
func TestLongPositions(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 11))
	ref := &refScorer{hidden: 192, rank: 48, heads: 6, d: 128, y: DefaultYaRN}
	fill := func(n, fan int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() / math.Sqrt(float64(fan)))
		}
		return v
	}
	ref.wqA, ref.wqB, ref.wp = fill(ref.rank*ref.hidden, ref.hidden), fill(ref.heads*ref.d*ref.rank, ref.rank), fill(ref.heads*ref.hidden, ref.hidden)
	ref.qn = fill(ref.rank, 1)
	lw, err := NewLayerWeights(Matrix{Rows: ref.rank, Cols: ref.hidden, Data: ref.wqA}, ref.qn,
		Matrix{Rows: ref.heads * ref.d, Cols: ref.rank, Data: ref.wqB}, Matrix{Rows: ref.heads, Cols: ref.hidden, Data: ref.wp}, DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	const n = 600
	raw := randomKeys(rng, n, ref.d)
	ks, _ := NewKeyStore(ref.d)
	if err := ks.Append(raw); err != nil {
		t.Fatal(err)
	}
	positions := []int64{262143, 524287, 786431, 999999, 1048575}
	hid := make([][]byte, len(positions))
	for i := range hid {
		hid[i] = make([]byte, 2*ref.hidden)
		for j := 0; j < ref.hidden; j++ {
			binary.LittleEndian.PutUint16(hid[i][2*j:], BF16FromF32(float32(rng.NormFloat64())))
		}
	}
	for _, fast := range kernelModes() {
		setFast(t, fast)
		qs, err := lw.Queries(hid, positions)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range []Variant{Float, FP8Q} {
			b, err := NewBatch(v, qs...)
			if err != nil {
				t.Fatal(err)
			}
			out := make([]float32, len(qs)*n)
			if err := Run([]Task{{Batch: b, Keys: ks, From: 0, To: n, Out: out}}); err != nil {
				t.Fatal(err)
			}
			bound := 1e-4
			if v == FP8Q {
				bound = 1e-3
			}
			for qi, p := range positions {
				rq, rw := ref.query(hid[qi], p)
				want := make([]float32, n)
				for k := 0; k < n; k++ {
					want[k] = float32(ref.logit(rq, rw, raw[k*(ref.d+4):(k+1)*(ref.d+4)], v))
				}
				e := relErr(out[qi*n:(qi+1)*n], want)
				if e > bound || math.IsNaN(e) {
					t.Errorf("fast=%v %s pos %d: ‖Δ‖/‖ref‖ = %.3g > %g", fast, v, p, e, bound)
				}
				if testing.Verbose() {
					t.Log(fmt.Sprintf("fast=%v %s pos %d: %.3g", fast, v, p, e))
				}
			}
		}
	}
}
