package attn

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"sync"
)

// Matrix is a row-major float32 matrix.
type Matrix struct {
	Rows, Cols int
	Data       []float32
}

func (m Matrix) check(name string) error {
	if m.Rows <= 0 || m.Cols <= 0 || len(m.Data) != m.Rows*m.Cols {
		return fmt.Errorf("%w: %s is %d×%d with %d values", ErrShape, name, m.Rows, m.Cols, len(m.Data))
	}
	return nil
}

// Options are the scorer hyper-parameters that the weights do not imply.
type Options struct {
	HeadDim int     // per-head query/key size (128); keys are HeadDim fp8 bytes + 4 scale bytes
	Eps     float32 // RMSNorm epsilon (1e-6)
	Rope    YaRN    // applied to the last Rope.Dim elements of each head
}

// DefaultOptions are the published FM-DS-V4 indexer settings.
var DefaultOptions = Options{HeadDim: 128, Eps: 1e-6, Rope: DefaultYaRN}

// LayerWeights is one target layer's Memory-Indexer query projection. It is
// immutable after construction and safe for concurrent use.
type LayerWeights struct {
	hidden, rank, heads, headDim int
	wqA, wqB, wProj              weights
	qNorm                        []float32
	eps                          float32
	rope                         *Rope
	wScale                       float32 // headDim^-0.5 · heads^-0.5
}

// NewLayerWeights checks the shapes and builds a layer. Dimensions come from the
// weights: wqA is [R, hidden], qNorm [R], wqB [H·HeadDim, R], wProj [H, hidden].
//
// A matrix whose every value is exactly a bfloat16 (as when the checkpoint is
// stored in BF16) is kept as bf16, which halves its memory and the bandwidth of
// the memory-bound projections without changing any result; the float32 slice is
// then not retained. Otherwise the slices are retained, not copied.
func NewLayerWeights(wqA Matrix, qNorm []float32, wqB, wProj Matrix, opt Options) (*LayerWeights, error) {
	return newLayerWeights(wqA, qNorm, wqB, wProj, opt, true)
}

func newLayerWeights(wqA Matrix, qNorm []float32, wqB, wProj Matrix, opt Options, allowBF16 bool) (*LayerWeights, error) {
	for _, c := range []struct {
		name string
		m    Matrix
	}{{"wq_a", wqA}, {"wq_b", wqB}, {"weights_proj", wProj}} {
		if err := c.m.check(c.name); err != nil {
			return nil, err
		}
	}
	d := opt.HeadDim
	if d <= 0 || d&(d-1) != 0 {
		return nil, fmt.Errorf("%w: head dim %d must be a power of two (Hadamard)", ErrConfig, d)
	}
	if opt.Rope.Dim > d {
		return nil, fmt.Errorf("%w: rope dim %d exceeds head dim %d", ErrConfig, opt.Rope.Dim, d)
	}
	if !(opt.Eps >= 0) {
		return nil, fmt.Errorf("%w: eps %v", ErrConfig, opt.Eps)
	}
	rope, err := NewRope(opt.Rope)
	if err != nil {
		return nil, err
	}
	hidden, rank := wqA.Cols, wqA.Rows
	if len(qNorm) != rank {
		return nil, fmt.Errorf("%w: q_norm_weight has %d values, want R = %d (rows of wq_a)", ErrShape, len(qNorm), rank)
	}
	if wqB.Cols != rank || wqB.Rows%d != 0 {
		return nil, fmt.Errorf("%w: wq_b is %d×%d, want (H·%d)×%d", ErrShape, wqB.Rows, wqB.Cols, d, rank)
	}
	heads := wqB.Rows / d
	if wProj.Rows != heads || wProj.Cols != hidden {
		return nil, fmt.Errorf("%w: weights_proj is %d×%d, want %d×%d (heads × hidden)", ErrShape, wProj.Rows, wProj.Cols, heads, hidden)
	}
	return &LayerWeights{
		hidden: hidden, rank: rank, heads: heads, headDim: d,
		wqA: newWeights(wqA, allowBF16), wqB: newWeights(wqB, allowBF16), wProj: newWeights(wProj, allowBF16),
		qNorm: qNorm, eps: opt.Eps, rope: rope,
		wScale: float32(float32(1/math.Sqrt(float64(d))) * float32(1/math.Sqrt(float64(heads)))),
	}, nil
}

// Hidden returns the hidden size (the length of the bf16 input vector).
func (lw *LayerWeights) Hidden() int { return lw.hidden }

// Heads returns the number of indexer heads H.
func (lw *LayerWeights) Heads() int { return lw.heads }

// HeadDim returns the per-head size D.
func (lw *LayerWeights) HeadDim() int { return lw.headDim }

// Rank returns the query LoRA rank R.
func (lw *LayerWeights) Rank() int { return lw.rank }

// Query is one prepared query of one layer, for both scorer variants.
type Query struct {
	Position int64
	Heads    int
	HeadDim  int
	Q        []float32 // [Heads·HeadDim] after bf16 rounding, RoPE and Hadamard (float variant)
	W        []float32 // [Heads] head weights (x·weights_projᵀ)·D^-0.5·H^-0.5
	Q8       []uint8   // [Heads·HeadDim] fp8 e4m3fn codes of Q/QScale (fp8-q variant)
	QScale   []float32 // [Heads] max|Q_h|/448
}

// Query prepares the query of hidden state hidden (little-endian bf16, 2·Hidden
// bytes) at token position pos.
func (lw *LayerWeights) Query(hidden []byte, pos int64) (*Query, error) {
	qs, err := lw.Queries([][]byte{hidden}, []int64{pos})
	if err != nil {
		return nil, err
	}
	return qs[0], nil
}

// Queries prepares many queries of this layer (requests of a decoder batch, or
// steps) in one pass over the weights: the projections are bound by reading the
// weights from memory, so B queries cost little more than one. The result for
// each query is bit-identical to Query's.
func (lw *LayerWeights) Queries(hidden [][]byte, pos []int64) ([]*Query, error) {
	return lw.QueriesOn(nil, hidden, pos)
}

// ProjMatrix names one of a layer's three projection matrices.
type ProjMatrix int

// The projection matrices, in the order Queries uses them.
const (
	ProjQA   ProjMatrix = iota // wq_a [R, hidden]
	ProjQB                     // wq_b [H·HeadDim, R]
	ProjHead                   // weights_proj [H, hidden]
)

// Projector multiplies one of a layer's projection matrices with a batch of vectors:
// dst[b] = W·xs[b]. The projections are the memory-bound part of a query; a GPU can do
// them (attn/gpu). The CPU path (nil Projector) accumulates in float64.
type Projector interface {
	Project(which ProjMatrix, dst, xs [][]float32) error
}

// MatrixData returns a projection matrix as stored: row-major, float32 or (when every
// value was exactly a bfloat16) bf16 bits; the other slice is nil. Read-only.
func (lw *LayerWeights) MatrixData(which ProjMatrix) (rows, cols int, f32 []float32, bf16 []uint16) {
	var w weights
	switch which {
	case ProjQA:
		w = lw.wqA
	case ProjQB:
		w = lw.wqB
	default:
		w = lw.wProj
	}
	return w.rows, w.cols, w.f32, w.bf16
}

// QueryParams returns what a query needs besides the three matrices, for a device that
// runs the whole query preparation (attn/gpu's cycle): q_norm_weight, the RMSNorm epsilon,
// the head-weight factor D^-½·H^-½, the YaRN frequencies g_i of the rotated pairs (the last
// 2·len(freqs) dims of each head) and the Hadamard factor 1/√D, each exactly as Queries
// uses them. Read-only.
func (lw *LayerWeights) QueryParams() (qNorm []float32, eps, wScale float32, ropeFreqs []float32, hadamardScale float32) {
	return lw.qNorm, lw.eps, lw.wScale, lw.rope.freqs, float32(1 / math.Sqrt(float64(lw.headDim)))
}

// QueriesOn is Queries with the three matrix products done by p (nil: on the CPU); every
// other step (bf16 input, RMSNorm, bf16 rounding, RoPE, Hadamard, head weights, fp8) runs
// here, so a projector only has to multiply.
func (lw *LayerWeights) QueriesOn(p Projector, hidden [][]byte, pos []int64) ([]*Query, error) {
	if len(hidden) != len(pos) {
		return nil, fmt.Errorf("%w: %d hidden states but %d positions", ErrShape, len(hidden), len(pos))
	}
	nb := len(hidden)
	for i, hd := range hidden {
		if len(hd) != 2*lw.hidden {
			return nil, fmt.Errorf("%w: hidden state %d has %d bytes, want %d (bf16 × %d)", ErrShape, i, len(hd), 2*lw.hidden, lw.hidden)
		}
		if pos[i] < 0 {
			return nil, fmt.Errorf("%w: position %d of query %d is negative", ErrConfig, pos[i], i)
		}
	}
	if nb == 0 {
		return nil, nil
	}
	h, d := lw.heads, lw.headDim
	xs := newVectors(nb, lw.hidden)
	for b, hd := range hidden {
		x := xs.vec(b)
		for i := range x {
			x[i] = BF16ToF32(binary.LittleEndian.Uint16(hd[2*i:]))
		}
	}
	mul := func(which ProjMatrix, dst vectors, m weights, src vectors) error {
		if p == nil {
			matMul(dst, m, src)
			return nil
		}
		if err := p.Project(which, dst.all(nb), src.all(nb)); err != nil {
			return fmt.Errorf("projection %d: %w", which, err)
		}
		return nil
	}
	qa := newVectors(nb, lw.rank)
	if err := mul(ProjQA, qa, lw.wqA, xs); err != nil {
		return nil, err
	}
	for b := 0; b < nb; b++ {
		RMSNorm(qa.vec(b), lw.qNorm, lw.eps)
	}
	qb := newVectors(nb, h*d)
	if err := mul(ProjQB, qb, lw.wqB, qa); err != nil {
		return nil, err
	}
	ws := newVectors(nb, h)
	if err := mul(ProjHead, ws, lw.wProj, xs); err != nil {
		return nil, err
	}
	rd := lw.rope.Dim()
	out := make([]*Query, nb)
	for b := range out {
		q := qb.vec(b)
		for hh := 0; hh < h; hh++ {
			head := q[hh*d : (hh+1)*d]
			for i, v := range head {
				head[i] = RoundBF16(v)
			}
			rot := head[d-rd:]
			lw.rope.Apply(rot, pos[b])
			for i, v := range rot {
				rot[i] = RoundBF16(v)
			}
			Hadamard(head)
		}
		w := ws.vec(b)
		for i := range w {
			w[i] *= lw.wScale
		}
		out[b] = &Query{Position: pos[b], Heads: h, HeadDim: d, Q: q, W: w, Q8: make([]uint8, h*d), QScale: make([]float32, h)}
		quantizeHeads(out[b])
	}
	return out, nil
}

// quantizeHeads fills Q8 and QScale: per head, scale = max|q|/448 and
// q8 = fp8(q/scale). An all-zero head gets scale 0 and zero codes, so it adds
// nothing instead of turning every logit into NaN.
func quantizeHeads(q *Query) {
	d := q.HeadDim
	for h := 0; h < q.Heads; h++ {
		head := q.Q[h*d : (h+1)*d]
		var amax float32
		for _, v := range head {
			amax = max(amax, float32(math.Abs(float64(v))))
		}
		s := amax / FP8MaxE4M3
		q.QScale[h] = s
		codes := q.Q8[h*d : (h+1)*d]
		for i, v := range head {
			if s == 0 {
				codes[i] = 0
				continue
			}
			codes[i] = FP8FromF32(v / s)
		}
	}
}

// weights is a projection matrix stored as float32 or, when that loses nothing,
// as bf16.
type weights struct {
	rows, cols int
	f32        []float32
	bf16       []uint16
}

func newWeights(m Matrix, allowBF16 bool) weights {
	w := weights{rows: m.Rows, cols: m.Cols, f32: m.Data}
	if !allowBF16 {
		return w
	}
	for _, v := range m.Data {
		if RoundBF16(v) != v {
			return w // also for NaN, which the checkpoint loader rejects anyway
		}
	}
	w.bf16 = make([]uint16, len(m.Data))
	for i, v := range m.Data {
		w.bf16[i] = uint16(math.Float32bits(v) >> 16)
	}
	w.f32 = nil
	return w
}

// vectors holds n vectors of one length back to back, padded with zero vectors
// to a multiple of 4 because the SIMD projection kernel takes 4 at a time.
type vectors struct {
	n, len int
	data   []float32
}

func newVectors(n, length int) vectors {
	return vectors{n: n, len: length, data: make([]float32, (n+3)/4*4*length)}
}

func (v vectors) vec(i int) []float32 { return v.data[i*v.len : (i+1)*v.len : (i+1)*v.len] }

// all returns the first n vectors as slices.
func (v vectors) all(n int) [][]float32 {
	out := make([][]float32, n)
	for i := range out {
		out[i] = v.vec(i)
	}
	return out
}

// parallelMACs is the weight-matrix size above which matMul splits rows over
// goroutines: below it, starting them costs more than it saves.
const parallelMACs = 1 << 20

// matMul sets dst.vec(b) = m·xs.vec(b) for every b, accumulating in float64.
// The projections are memory-bound (the published wq_b alone is 128 MB of
// float32), so each weight row is read once for all vectors, and rows are split
// over GOMAXPROCS goroutines.
func matMul(dst vectors, m weights, xs vectors) {
	x64 := make([]float64, len(xs.data))
	for i, v := range xs.data {
		x64[i] = float64(v)
	}
	workers := min(runtime.GOMAXPROCS(0), m.rows)
	if workers <= 1 || m.rows*m.cols < parallelMACs {
		matMulRows(dst, m, x64, xs.n, 0, m.rows)
		return
	}
	var wg sync.WaitGroup
	per := (m.rows + workers - 1) / workers
	for lo := 0; lo < m.rows; lo += per {
		hi := min(lo+per, m.rows)
		wg.Go(func() { matMulRows(dst, m, x64, xs.n, lo, hi) })
	}
	wg.Wait()
}

// matMulRows computes rows [lo, hi) for n vectors x64 ([n padded to 4][cols]).
func matMulRows(dst vectors, m weights, x64 []float64, n, lo, hi int) {
	cols := m.cols
	simd := 0
	if useFast {
		simd = cols &^ 7
	}
	var out [4]float64
	for r := lo; r < hi; r++ {
		for v0 := 0; v0 < n; v0 += 4 {
			x := x64[v0*cols : (v0+4)*cols]
			out = [4]float64{}
			if m.bf16 != nil {
				row := m.bf16[r*cols : (r+1)*cols]
				if simd > 0 {
					dot4BF16AVX2(&row[0], &x[0], cols, simd, &out[0])
				}
				for v := range out {
					xv := x[v*cols : (v+1)*cols]
					for i := simd; i < cols; i++ {
						out[v] += float64(BF16ToF32(row[i])) * xv[i]
					}
				}
			} else {
				row := m.f32[r*cols : (r+1)*cols]
				if simd > 0 {
					dot4AVX2(&row[0], &x[0], cols, simd, &out[0])
				}
				for v := range out {
					xv := x[v*cols : (v+1)*cols]
					for i := simd; i < cols; i++ {
						out[v] += float64(row[i]) * xv[i]
					}
				}
			}
			for v := v0; v < min(v0+4, n); v++ {
				dst.data[v*dst.len+r] = float32(out[v-v0])
			}
		}
	}
}
