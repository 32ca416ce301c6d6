package attn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// randomKeys returns n raw keys of head dim d: random fp8 codes (never NaN) and
// positive scales.
func randomKeys(r *rand.Rand, n, d int) []byte {
	raw := make([]byte, 0, n*(d+4))
	for range n {
		for range d {
			c := uint8(r.IntN(256))
			if c&0x7f == 0x7f {
				c ^= 1
			}
			raw = append(raw, c)
		}
		raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(float32(r.Float64()*0.01+1e-4)))
	}
	return raw
}

// randMatrix returns a rows×cols matrix of N(0, 1/cols) values, so that a unit
// input gives unit outputs, rounded to bf16 if asked.
func randMatrix(r *rand.Rand, rows, cols int, bf16 bool) Matrix {
	m := Matrix{Rows: rows, Cols: cols, Data: make([]float32, rows*cols)}
	for i := range m.Data {
		m.Data[i] = float32(r.NormFloat64() / math.Sqrt(float64(cols)))
		if bf16 {
			m.Data[i] = RoundBF16(m.Data[i])
		}
	}
	return m
}

// ones is an RMSNorm weight that changes nothing.
func ones(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = 1
	}
	return v
}

// randomQuery builds a Query directly (not through LayerWeights) so head counts
// and dims that LayerWeights would reject for Hadamard can be tested too.
func randomQuery(r *rand.Rand, heads, d int) *Query {
	q := &Query{Heads: heads, HeadDim: d, Q: make([]float32, heads*d), W: make([]float32, heads),
		Q8: make([]uint8, heads*d), QScale: make([]float32, heads)}
	for i := range q.Q {
		q.Q[i] = float32(r.NormFloat64())
	}
	for i := range q.W {
		q.W[i] = float32(r.NormFloat64())
	}
	quantizeHeads(q)
	return q
}

// refLogit is the variant's formula term by term in float64.
func refLogit(q *Query, v Variant, key []byte) float64 {
	d := q.HeadDim
	s := float64(math.Float32frombits(binary.LittleEndian.Uint32(key[d:])))
	var logit float64
	for h := 0; h < q.Heads; h++ {
		var dot float64
		for j := 0; j < d; j++ {
			k := float64(FP8ToF32(key[j]))
			switch v {
			case Float:
				dot += float64(q.Q[h*d+j]) * float64(float32(k*s))
			case FP8Q:
				dot += float64(FP8ToF32(q.Q8[h*d+j])) * k
			}
		}
		w := float64(q.W[h])
		if v == FP8Q {
			w *= float64(q.QScale[h])
		}
		if dot > 0 || dot != dot {
			logit += w * dot
		}
	}
	if v == FP8Q {
		logit *= s
	}
	return logit
}

func TestScoreAgainstFormula(t *testing.T) {
	tests := []struct{ heads, d, keys, batch int }{
		{8, 128, 1000, 4},
		{128, 128, 100, 1},
		{5, 16, 50, 3},   // heads not a multiple of 4
		{3, 12, 30, 2},   // head dim not a multiple of 4 (kernel tail loop)
		{1, 1, 25, 1},    // degenerate but valid
		{2, 64, 3200, 2}, // more than one slab
	}
	for _, tt := range tests {
		for _, fast := range kernelModes() {
			for _, v := range []Variant{Float, FP8Q} {
				name := fmt.Sprintf("h%d_d%d_n%d_b%d_%s_fast=%v", tt.heads, tt.d, tt.keys, tt.batch, v, fast)
				t.Run(name, func(t *testing.T) {
					setFast(t, fast)
					r := rand.New(rand.NewPCG(uint64(tt.heads), uint64(tt.d)))
					raw := randomKeys(r, tt.keys, tt.d)
					ks, err := NewKeyStore(tt.d)
					if err != nil {
						t.Fatal(err)
					}
					if err := ks.Append(raw); err != nil {
						t.Fatal(err)
					}
					var qs []*Query
					for range tt.batch {
						qs = append(qs, randomQuery(r, tt.heads, tt.d))
					}
					b, err := NewBatch(v, qs...)
					if err != nil {
						t.Fatal(err)
					}
					out := make([]float32, tt.batch*tt.keys)
					if err := ks.Logits(b, 0, tt.keys, out); err != nil {
						t.Fatal(err)
					}
					kb := tt.d + 4
					for qi, q := range qs {
						var num, den float64
						for n := 0; n < tt.keys; n++ {
							want := refLogit(q, v, raw[n*kb:(n+1)*kb])
							dlt := float64(out[qi*tt.keys+n]) - want
							num += dlt * dlt
							den += want * want
						}
						if e := math.Sqrt(num / den); e > 2e-6 {
							t.Errorf("query %d: ‖Δ‖/‖ref‖ = %.3g", qi, e)
						}
					}
				})
			}
		}
	}
}

// TestKernelsAgreeExactly uses small integers, for which every sum is exact in
// float32, so the assembly and portable kernels must agree bit for bit.
func TestKernelsAgreeExactly(t *testing.T) {
	if !hasAVX2FMA {
		t.Skip("no AVX2/FMA: only the portable kernel exists here")
	}
	r := rand.New(rand.NewPCG(7, 7))
	for _, d := range []int{1, 3, 4, 7, 128} {
		groups := 5
		k := make([]float32, d*blockKeys)
		q := make([]float32, groups*d*rowsPerGroup)
		w := make([]float32, groups*rowsPerGroup)
		for i := range k {
			k[i] = float32(r.IntN(9) - 4)
		}
		for i := range q {
			q[i] = float32(r.IntN(9) - 4)
		}
		for i := range w {
			w[i] = float32(r.IntN(5) - 2)
		}
		var a, b [blockKeys]float32
		for i := range a {
			a[i] = float32(i)
			b[i] = float32(i)
		}
		kernelGo(k, q, w, groups, d, &a)
		next := make([]uint8, 1)
		kernelAVX2(&k[0], &q[0], &w[0], groups, d, &b[0], &next[0])
		if a != b {
			t.Errorf("d=%d: portable %v\nassembly %v", d, a, b)
		}
		allZero := true
		for i := range a {
			allZero = allZero && a[i] == float32(i)
		}
		if allZero {
			t.Errorf("d=%d: kernel added nothing; test data too weak", d)
		}
	}
}

func TestNaNPropagates(t *testing.T) {
	for _, fast := range kernelModes() {
		setFast(t, fast)
		r := rand.New(rand.NewPCG(1, 1))
		raw := randomKeys(r, 30, 8)
		raw[5*12+3] = 0x7f // key 5 holds an fp8 NaN
		ks, _ := NewKeyStore(8)
		if err := ks.Append(raw); err != nil {
			t.Fatal(err)
		}
		q := randomQuery(r, 4, 8)
		for _, v := range []Variant{Float, FP8Q} {
			b, _ := NewBatch(v, q)
			out := make([]float32, 30)
			if err := ks.Logits(b, 0, 30, out); err != nil {
				t.Fatal(err)
			}
			for n, x := range out {
				if (n == 5) != math.IsNaN(float64(x)) {
					t.Errorf("fast=%v %s: key %d logit %g", fast, v, n, x)
				}
			}
		}
	}
}

// TestExoticScales: negative, infinite and NaN scales cannot be factored out of
// ReLU; the float variant must still follow the formula.
func TestExoticScales(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	const d, n = 16, 40
	raw := randomKeys(r, n, d)
	special := map[int]float32{3: -0.01, 4: float32(math.Inf(1)), 5: float32(math.NaN()), 30: -1, 31: 0}
	for i, s := range special {
		binary.LittleEndian.PutUint32(raw[i*(d+4)+d:], math.Float32bits(s))
	}
	ks, _ := NewKeyStore(d)
	if err := ks.Append(raw); err != nil {
		t.Fatal(err)
	}
	q := randomQuery(r, 6, d)
	for _, fast := range kernelModes() {
		setFast(t, fast)
		for _, v := range []Variant{Float, FP8Q} {
			b, _ := NewBatch(v, q)
			out := make([]float32, n)
			if err := ks.Logits(b, 0, n, out); err != nil {
				t.Fatal(err)
			}
			for i := range out {
				want := refLogit(q, v, raw[i*(d+4):(i+1)*(d+4)])
				got := float64(out[i])
				if math.IsNaN(want) || math.IsInf(want, 0) {
					if !(math.IsNaN(got) && math.IsNaN(want)) && got != want {
						t.Errorf("%s key %d: got %g, want %g", v, i, got, want)
					}
					continue
				}
				if math.Abs(got-want) > 1e-5*math.Max(1, math.Abs(want)) {
					t.Errorf("%s key %d (scale %g): got %g, want %g", v, i, ks.scales[i], got, want)
				}
			}
		}
	}
}

func TestIncrementalRangesAndRun(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	const d, n = 32, 7000
	raw := randomKeys(r, n, d)
	ks, _ := NewKeyStore(d)
	// Append in uneven pieces, as prefill and decode do.
	for off, i := 0, 0; off < n; i++ {
		m := min([]int{1, 23, 24, 25, 1000, 3071}[i%6], n-off)
		if err := ks.Append(raw[off*(d+4) : (off+m)*(d+4)]); err != nil {
			t.Fatal(err)
		}
		off += m
	}
	if !bytes.Equal(ks.AppendRaw(nil, 0, n), raw) {
		t.Fatal("AppendRaw does not return the appended bytes")
	}
	qs := []*Query{randomQuery(r, 8, d), randomQuery(r, 8, d), randomQuery(r, 8, d)}
	b, _ := NewBatch(Float, qs...)
	full := make([]float32, len(qs)*n)
	if err := ks.Logits(b, 0, n, full); err != nil {
		t.Fatal(err)
	}
	// Pieces scored separately equal the whole.
	for _, rg := range [][2]int{{0, 1}, {5, 29}, {23, 25}, {3000, 3100}, {6999, 7000}, {100, 100}} {
		part := make([]float32, len(qs)*(rg[1]-rg[0]))
		if err := ks.Logits(b, rg[0], rg[1], part); err != nil {
			t.Fatal(err)
		}
		for qi := range qs {
			for k := rg[0]; k < rg[1]; k++ {
				if part[qi*(rg[1]-rg[0])+k-rg[0]] != full[qi*n+k] {
					t.Fatalf("range %v query %d key %d differs", rg, qi, k)
				}
			}
		}
	}
	// Run over several tasks (different batches, stores and ranges) equals Logits.
	ks2, _ := NewKeyStore(d)
	if err := ks2.Append(raw[:500*(d+4)]); err != nil {
		t.Fatal(err)
	}
	b2, _ := NewBatch(FP8Q, qs[0])
	tasks := []Task{
		{Batch: b, Keys: ks, From: 0, To: n, Out: make([]float32, len(qs)*n)},
		{Batch: b2, Keys: ks2, From: 10, To: 500, Out: make([]float32, 490)},
		{Batch: b2, Keys: ks, From: 3072, To: 6144, Out: make([]float32, 3072)},
	}
	if err := Run(tasks); err != nil {
		t.Fatal(err)
	}
	for i, tk := range tasks {
		want := make([]float32, len(tk.Out))
		if err := tk.Keys.Logits(tk.Batch, tk.From, tk.To, want); err != nil {
			t.Fatal(err)
		}
		for j := range want {
			if want[j] != tk.Out[j] {
				t.Fatalf("task %d value %d: Run %g, Logits %g", i, j, tk.Out[j], want[j])
			}
		}
	}
}

func TestTruncate(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	const d = 8
	raw := randomKeys(r, 7000, d)
	binary.LittleEndian.PutUint32(raw[6500*(d+4)+d:], math.Float32bits(-1)) // an exotic key past the cut
	q := randomQuery(r, 4, d)
	b, _ := NewBatch(Float, q)
	for _, cut := range []int{0, 1, 23, 24, 25, 3071, 3072, 3073, 6144, 6999, 7000, 9000, -3} {
		ks, _ := NewKeyStore(d)
		if err := ks.Append(raw); err != nil {
			t.Fatal(err)
		}
		ks.Truncate(cut)
		keep := min(max(cut, 0), 7000)
		if ks.Len() != keep {
			t.Fatalf("cut %d: Len %d", cut, ks.Len())
		}
		// Re-append the rest; the store must equal a fresh one.
		if err := ks.Append(raw[keep*(d+4):]); err != nil {
			t.Fatal(err)
		}
		fresh, _ := NewKeyStore(d)
		_ = fresh.Append(raw)
		got, want := make([]float32, 7000), make([]float32, 7000)
		_ = ks.Logits(b, 0, 7000, got)
		_ = fresh.Logits(b, 0, 7000, want)
		for i := range got {
			if got[i] != want[i] && !(got[i] != got[i] && want[i] != want[i]) {
				t.Fatalf("cut %d: key %d logit %g, fresh %g", cut, i, got[i], want[i])
			}
		}
		if !bytes.Equal(ks.AppendRaw(nil, 0, 7000), raw) {
			t.Fatalf("cut %d: raw bytes differ after re-append", cut)
		}
		if len(ks.exotic) != 1 {
			t.Fatalf("cut %d: %d exotic keys, want 1", cut, len(ks.exotic))
		}
	}
}

func TestErrors(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 3))
	ks, _ := NewKeyStore(16)
	_ = ks.Append(randomKeys(r, 10, 16))
	q := randomQuery(r, 4, 16)
	b, _ := NewBatch(Float, q)
	q8 := randomQuery(r, 4, 8)
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"partial key", ks.Append(make([]byte, 21)), ErrKeyLength},
		{"range past end", ks.Logits(b, 0, 11, make([]float32, 11)), ErrRange},
		{"negative from", ks.Logits(b, -1, 5, make([]float32, 6)), ErrRange},
		{"reversed", ks.Logits(b, 5, 4, nil), ErrRange},
		{"short out", ks.Logits(b, 0, 10, make([]float32, 9)), ErrShape},
		{"head dim", Run([]Task{{Batch: mustBatch(t, q8), Keys: ks, From: 0, To: 1, Out: make([]float32, 1)}}), ErrMismatch},
		{"nil batch", Run([]Task{{Keys: ks}}), ErrMismatch},
		{"mixed batch", func() error { _, err := NewBatch(Float, q, q8); return err }(), ErrMismatch},
		{"empty batch", func() error { _, err := NewBatch(Float); return err }(), ErrMismatch},
		{"nil query", func() error { _, err := NewBatch(Float, q, nil); return err }(), ErrMismatch},
		{"bad variant", func() error { _, err := NewBatch(Variant(9), q); return err }(), ErrConfig},
		{"bad head dim", func() error { _, err := NewKeyStore(0); return err }(), ErrConfig},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.want) {
			t.Errorf("%s: error %v, want %v", tt.name, tt.err, tt.want)
		}
	}
	if ks.Len() != 10 {
		t.Errorf("failed append changed Len to %d", ks.Len())
	}
	if _, err := ks.Key(10); !errors.Is(err, ErrRange) {
		t.Errorf("Key(10): %v", err)
	}
}

func mustBatch(t *testing.T, qs ...*Query) *Batch {
	b, err := NewBatch(Float, qs...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLayerWeightsShapes(t *testing.T) {
	m := func(r, c int) Matrix { return Matrix{Rows: r, Cols: c, Data: make([]float32, r*c)} }
	opt := Options{HeadDim: 16, Eps: 1e-6, Rope: YaRN{Dim: 8, Base: 160000, Factor: 16, OriginalLen: 65536, BetaFast: 32, BetaSlow: 1}}
	tests := []struct {
		name        string
		wqA, wqB, p Matrix
		qn          int
		opt         Options
		want        error
	}{
		{"ok", m(4, 32), m(48, 4), m(3, 32), 4, opt, nil},
		{"q_norm", m(4, 32), m(48, 4), m(3, 32), 5, opt, ErrShape},
		{"wq_b cols", m(4, 32), m(48, 5), m(3, 32), 4, opt, ErrShape},
		{"wq_b rows", m(4, 32), m(40, 4), m(3, 32), 4, opt, ErrShape},
		{"proj heads", m(4, 32), m(48, 4), m(2, 32), 4, opt, ErrShape},
		{"proj hidden", m(4, 32), m(48, 4), m(3, 31), 4, opt, ErrShape},
		{"data length", Matrix{Rows: 4, Cols: 32, Data: make([]float32, 3)}, m(48, 4), m(3, 32), 4, opt, ErrShape},
		{"head dim not pow2", m(4, 32), m(36, 4), m(3, 32), 4, Options{HeadDim: 12, Rope: opt.Rope}, ErrConfig},
		{"rope too wide", m(4, 32), m(48, 4), m(3, 32), 4, Options{HeadDim: 16, Rope: YaRN{Dim: 32, Base: 2, Factor: 1, OriginalLen: 1, BetaFast: 1, BetaSlow: 1}}, ErrConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lw, err := NewLayerWeights(tt.wqA, make([]float32, tt.qn), tt.wqB, tt.p, tt.opt)
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
			if err != nil {
				return
			}
			if lw.Heads() != 3 || lw.HeadDim() != 16 || lw.Hidden() != 32 || lw.Rank() != 4 {
				t.Errorf("dims %d %d %d %d", lw.Heads(), lw.HeadDim(), lw.Hidden(), lw.Rank())
			}
			if _, err := lw.Query(make([]byte, 63), 0); !errors.Is(err, ErrShape) {
				t.Errorf("short hidden: %v", err)
			}
			if _, err := lw.Query(make([]byte, 64), -1); !errors.Is(err, ErrConfig) {
				t.Errorf("negative position: %v", err)
			}
			q, err := lw.Query(make([]byte, 64), 5)
			if err != nil {
				t.Fatal(err)
			}
			for h, s := range q.QScale {
				if s != 0 {
					t.Errorf("zero hidden: head %d scale %g", h, s)
				}
			}
		})
	}
}

func FuzzKeyStoreAppend(f *testing.F) {
	f.Add(uint8(8), []byte{}, uint16(0))
	f.Add(uint8(4), randomKeys(rand.New(rand.NewPCG(1, 1)), 30, 4), uint16(7))
	f.Add(uint8(128), randomKeys(rand.New(rand.NewPCG(1, 2)), 3, 128), uint16(2))
	f.Add(uint8(3), []byte{0x7f, 0xff, 0, 0, 0, 0xc0, 0x7f}, uint16(1))
	f.Fuzz(func(t *testing.T, dim uint8, raw []byte, cut uint16) {
		d := int(dim)
		ks, err := NewKeyStore(d)
		if err != nil {
			if d != 0 {
				t.Fatalf("NewKeyStore(%d): %v", d, err)
			}
			return
		}
		err = ks.Append(raw)
		if len(raw)%(d+4) != 0 {
			if !errors.Is(err, ErrKeyLength) || ks.Len() != 0 {
				t.Fatalf("bad length accepted: %v, Len %d", err, ks.Len())
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		n := len(raw) / (d + 4)
		if ks.Len() != n || !bytes.Equal(ks.AppendRaw(nil, 0, n), raw) {
			t.Fatal("stored keys differ from the input")
		}
		ks.Truncate(int(cut))
		keep := min(int(cut), n)
		if ks.Len() != keep || !bytes.Equal(ks.AppendRaw(nil, 0, keep), raw[:keep*(d+4)]) {
			t.Fatal("truncated store differs from the prefix")
		}
		q := randomQuery(rand.New(rand.NewPCG(1, 1)), 2, d)
		for _, v := range []Variant{Float, FP8Q} {
			b, err := NewBatch(v, q)
			if err != nil {
				t.Fatal(err)
			}
			if err := ks.Logits(b, 0, keep, make([]float32, keep)); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func TestDecodeFP8AVX2(t *testing.T) {
	if !hasAVX2FMA {
		t.Skip("no AVX2/FMA/F16C")
	}
	codes := make([]uint8, 256)
	for i := range codes {
		codes[i] = uint8(i)
	}
	got := make([]float32, 256)
	decodeFP8AVX2(&got[0], &codes[0], 256)
	for c, v := range got {
		want := FP8ToF32(uint8(c))
		if c&0x7f == 0x7f {
			want = 480 // NaN codes are overridden by the key store's NaN list
			if c&0x80 != 0 {
				want = -480
			}
		}
		if math.Float32bits(v) != math.Float32bits(want) {
			t.Errorf("code %#02x: got %g, want %g", c, v, want)
		}
	}
}
