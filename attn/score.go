package attn

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
)

// Variant selects the scorer formula.
type Variant uint8

const (
	// Float is the trained checkpoint's path: logit = Σ_h w_h·ReLU(q_h·k),
	// k = fp8(bytes)·scale.
	Float Variant = iota
	// FP8Q is the original inference path: q quantised per head to fp8 and
	// logit = scale·Σ_h w_h·qscale_h·ReLU(q8_h·fp8(bytes)).
	FP8Q
)

// String returns "float" or "fp8q".
func (v Variant) String() string {
	switch v {
	case Float:
		return "float"
	case FP8Q:
		return "fp8q"
	}
	return fmt.Sprintf("Variant(%d)", uint8(v))
}

// rowsPerGroup query rows share one pass of the kernel over a key block.
const rowsPerGroup = 4

// Batch is B queries of one layer and one variant, packed for the kernel: per
// query its H rows are padded to a multiple of 4 (zero rows with zero weight) and
// stored as [group][HeadDim][4] so that the kernel reads them sequentially.
type Batch struct {
	variant        Variant
	heads, headDim int
	groups         int       // row groups per query
	q              []float32 // [B][groups][headDim][4]
	w              []float32 // [B][groups][4]
	queries        []*Query
}

// NewBatch packs queries (at least one, all with the same heads and head dim).
func NewBatch(v Variant, queries ...*Query) (*Batch, error) {
	if v != Float && v != FP8Q {
		return nil, fmt.Errorf("%w: variant %d", ErrConfig, v)
	}
	if len(queries) == 0 {
		return nil, fmt.Errorf("%w: empty batch", ErrMismatch)
	}
	for i, q := range queries {
		if q == nil {
			return nil, fmt.Errorf("%w: query %d is nil", ErrMismatch, i)
		}
	}
	h, d := queries[0].Heads, queries[0].HeadDim
	if h <= 0 || d <= 0 {
		return nil, fmt.Errorf("%w: query has %d heads of dim %d", ErrShape, h, d)
	}
	groups := (h + rowsPerGroup - 1) / rowsPerGroup
	b := &Batch{variant: v, heads: h, headDim: d, groups: groups,
		q: make([]float32, len(queries)*groups*d*rowsPerGroup),
		w: make([]float32, len(queries)*groups*rowsPerGroup), queries: queries}
	for qi, q := range queries {
		if q.Heads != h || q.HeadDim != d || len(q.Q) != h*d || len(q.W) != h || len(q.Q8) != h*d || len(q.QScale) != h {
			return nil, fmt.Errorf("%w: query %d has %d heads × %d, batch has %d × %d", ErrMismatch, qi, q.Heads, q.HeadDim, h, d)
		}
		qp := b.q[qi*groups*d*rowsPerGroup:]
		wp := b.w[qi*groups*rowsPerGroup:]
		for hh := 0; hh < h; hh++ {
			g, r := hh/rowsPerGroup, hh%rowsPerGroup
			row := qp[g*d*rowsPerGroup+r:]
			switch v {
			case Float:
				for j, x := range q.Q[hh*d : (hh+1)*d] {
					row[j*rowsPerGroup] = x
				}
				wp[hh] = q.W[hh]
			case FP8Q:
				for j, c := range q.Q8[hh*d : (hh+1)*d] {
					row[j*rowsPerGroup] = FP8ToF32(c)
				}
				wp[hh] = q.W[hh] * q.QScale[hh]
			}
		}
	}
	return b, nil
}

// Len returns the number of queries B.
func (b *Batch) Len() int { return len(b.queries) }

// Variant returns the batch's variant.
func (b *Batch) Variant() Variant { return b.variant }

// Logits scores the batch against keys [from, to) on the calling goroutine:
// out[qi·(to−from) + (n−from)] is the logit of key n for query qi.
func (ks *KeyStore) Logits(b *Batch, from, to int, out []float32) error {
	t := Task{Batch: b, Keys: ks, From: from, To: to, Out: out}
	if err := t.check(); err != nil {
		return err
	}
	scratch := make([]float32, ks.headDim*blockKeys)
	t.score(from, to, scratch)
	return nil
}

// Task is one (batch, key store, key range) to score; Out is laid out as for
// KeyStore.Logits.
type Task struct {
	Batch    *Batch
	Keys     *KeyStore
	From, To int
	Out      []float32
}

func (t *Task) check() error {
	if t.Batch == nil || t.Keys == nil {
		return fmt.Errorf("%w: task without batch or keys", ErrMismatch)
	}
	if t.Batch.headDim != t.Keys.headDim {
		return fmt.Errorf("%w: queries have head dim %d, keys %d", ErrMismatch, t.Batch.headDim, t.Keys.headDim)
	}
	if t.From < 0 || t.To < t.From || t.To > t.Keys.n {
		return fmt.Errorf("%w: keys [%d, %d) of %d", ErrRange, t.From, t.To, t.Keys.n)
	}
	if want := t.Batch.Len() * (t.To - t.From); len(t.Out) != want {
		return fmt.Errorf("%w: output has %d values, want %d (%d queries × %d keys)", ErrShape, len(t.Out), want, t.Batch.Len(), t.To-t.From)
	}
	return nil
}

// Tiles are the unit of work Run hands to a goroutine: at most one slab, at least
// 4 blocks (≈ 3 MFLOP per query at H = 128, so scheduling stays negligible), and
// small enough that every goroutine gets about 8 tiles and finishes together.
const (
	maxTileKeys = slabKeys
	minTileKeys = 4 * blockKeys
)

// Run scores all tasks, spreading tiles of keys over GOMAXPROCS goroutines. Each
// task writes only its own Out.
func Run(tasks []Task) error {
	type item struct {
		t        *Task
		from, to int
	}
	total := 0
	for i := range tasks {
		if err := tasks[i].check(); err != nil {
			return fmt.Errorf("task %d: %w", i, err)
		}
		total += tasks[i].To - tasks[i].From
	}
	procs := runtime.GOMAXPROCS(0)
	tile := total / (8 * procs) / blockKeys * blockKeys
	tile = min(max(tile, minTileKeys), maxTileKeys)
	var items []item
	for i := range tasks {
		t := &tasks[i]
		for a := t.From; a < t.To; {
			b := min((a/tile+1)*tile, t.To)
			items = append(items, item{t, a, b})
			a = b
		}
	}
	workers := min(procs, len(items))
	if workers <= 1 {
		var scratch []float32
		for _, it := range items {
			scratch = growScratch(scratch, it.t.Keys.headDim)
			it.t.score(it.from, it.to, scratch)
		}
		return nil
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			var scratch []float32
			for {
				i := int(next.Add(1)) - 1
				if i >= len(items) {
					return
				}
				it := items[i]
				scratch = growScratch(scratch, it.t.Keys.headDim)
				it.t.score(it.from, it.to, scratch)
			}
		})
	}
	wg.Wait()
	return nil
}

func growScratch(s []float32, headDim int) []float32 {
	if n := headDim * blockKeys; cap(s) < n {
		return make([]float32, n)
	}
	return s[:headDim*blockKeys]
}

// score computes keys [from, to) of the task (a sub-range of [t.From, t.To)).
func (t *Task) score(from, to int, scratch []float32) {
	b, ks := t.Batch, t.Keys
	d := ks.headDim
	stride := t.To - t.From
	qStride := b.groups * d * rowsPerGroup
	wStride := b.groups * rowsPerGroup
	if from >= to {
		return
	}
	var acc [blockKeys]float32
	last := (to - 1) / blockKeys
	for blk := from / blockKeys; blk <= last; blk++ {
		codes := ks.block(blk)
		decodeBlock(scratch, codes)
		next := codes
		if blk < last {
			next = ks.block(blk + 1)
		}
		base := blk * blockKeys
		lo, hi := max(from, base), min(to, base+blockKeys)
		scales := ks.scales[lo:hi]
		for qi := range b.queries {
			acc = [blockKeys]float32{}
			kernel(scratch, b.q[qi*qStride:(qi+1)*qStride], b.w[qi*wStride:(qi+1)*wStride], b.groups, d, &acc, next)
			o := t.Out[qi*stride+lo-t.From : qi*stride+hi-t.From]
			for j, s := range scales {
				o[j] = s * acc[lo-base+j]
			}
		}
	}
	if b.variant == Float {
		for _, n := range inRange(ks.exotic, from, to) {
			for qi, q := range b.queries {
				t.Out[qi*stride+n-t.From] = directFloat(q, ks, n)
			}
		}
	}
	nan := float32(math.NaN())
	for _, n := range inRange(ks.nanKeys, from, to) {
		for qi := range b.queries {
			t.Out[qi*stride+n-t.From] = nan
		}
	}
}

// decodeBlock expands a block of fp8 codes to float32 once per scoring pass,
// so the kernel's inner loop is pure FMA over L1-resident data.
func decodeBlock(dst []float32, codes []uint8) {
	codes = codes[:len(dst)]
	if useFast && len(dst)%8 == 0 && len(dst) > 0 {
		decodeFP8AVX2(&dst[0], &codes[0], len(dst))
		return
	}
	for i, c := range codes {
		dst[i] = fp8Table[c]
	}
}

// directFloat is the float variant's formula term by term, with the scale
// applied to the key before the dot products as the reference does.
func directFloat(q *Query, ks *KeyStore, n int) float32 {
	k, _ := ks.Key(n)
	d := q.HeadDim
	var logit float32
	for h := 0; h < q.Heads; h++ {
		var dot float32
		for j, x := range q.Q[h*d : (h+1)*d] {
			dot += x * k[j]
		}
		logit += q.W[h] * relu(dot)
	}
	return logit
}

// relu is max(x, 0) that keeps NaN, as torch's ReLU does.
func relu(x float32) float32 {
	if x <= 0 {
		return 0
	}
	return x
}

// kernelGo is the portable kernel: acc[j] += Σ_g Σ_r w[g,r]·ReLU(Σ_d q[g,d,r]·k[d,j])
// for the 24 keys j of a decoded block k ([d][24]). It works on 4 rows × 4 keys at
// a time so that the 16 partial sums stay in registers.
func kernelGo(k, q, w []float32, groups, d int, acc *[blockKeys]float32) {
	for g := 0; g < groups; g++ {
		qg := q[g*d*rowsPerGroup : (g+1)*d*rowsPerGroup]
		wg := w[g*rowsPerGroup : (g+1)*rowsPerGroup]
		for j := 0; j < blockKeys; j += 4 {
			var c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33 float32
			for dd := 0; dd < d; dd++ {
				kr := (*[4]float32)(k[dd*blockKeys+j:])
				qr := (*[4]float32)(qg[dd*rowsPerGroup:])
				k0, k1, k2, k3 := kr[0], kr[1], kr[2], kr[3]
				q0, q1, q2, q3 := qr[0], qr[1], qr[2], qr[3]
				c00 += q0 * k0
				c01 += q0 * k1
				c02 += q0 * k2
				c03 += q0 * k3
				c10 += q1 * k0
				c11 += q1 * k1
				c12 += q1 * k2
				c13 += q1 * k3
				c20 += q2 * k0
				c21 += q2 * k1
				c22 += q2 * k2
				c23 += q2 * k3
				c30 += q3 * k0
				c31 += q3 * k1
				c32 += q3 * k2
				c33 += q3 * k3
			}
			w0, w1, w2, w3 := wg[0], wg[1], wg[2], wg[3]
			acc[j] += w0*relu(c00) + w1*relu(c10) + w2*relu(c20) + w3*relu(c30)
			acc[j+1] += w0*relu(c01) + w1*relu(c11) + w2*relu(c21) + w3*relu(c31)
			acc[j+2] += w0*relu(c02) + w1*relu(c12) + w2*relu(c22) + w3*relu(c32)
			acc[j+3] += w0*relu(c03) + w1*relu(c13) + w2*relu(c23) + w3*relu(c33)
		}
	}
}
