package gpu

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/flashmemory/flashmemory/attn"
)

func TestF16FromF32(t *testing.T) {
	tests := []struct {
		in   float32
		want uint16
	}{
		{0, 0x0000},
		{float32(math.Copysign(0, -1)), 0x8000},
		{1, 0x3c00},
		{-2, 0xc000},
		{65504, 0x7bff},
		{65520, 0x7c00},                           // rounds past the largest finite value
		{float32(math.Ldexp(1, -24)), 0x0001},     // smallest subnormal
		{float32(math.Ldexp(1, -25)), 0x0000},     // tie to even: zero
		{float32(math.Ldexp(3, -26)), 0x0001},     // 0.75 ulp rounds up
		{float32(math.Ldexp(1, -14)), 0x0400},     // smallest normal
		{float32(math.Ldexp(1023, -24)), 0x03ff},  // largest subnormal
		{1 + float32(math.Ldexp(1, -11)), 0x3c00}, // tie to even: down
		{1 + float32(math.Ldexp(3, -11)), 0x3c02}, // tie to even: up
		{float32(math.Ldexp(2047, -25)), 0x0400},  // subnormal rounding carries into normal
		{float32(math.Ldexp(1, -40)), 0x0000},     // far below: zero
		{float32(math.Inf(1)), 0x7c00},
	}
	for _, tc := range tests {
		if got := f16FromF32(tc.in); got != tc.want {
			t.Errorf("f16FromF32(%g) = %#04x, want %#04x", tc.in, got, tc.want)
		}
	}
	// Every finite f16 value survives a round trip.
	for h := 0; h < 1<<16; h++ {
		if h&0x7c00 == 0x7c00 {
			continue
		}
		if got := f16FromF32(f16ToF32(uint16(h))); got != uint16(h) {
			t.Fatalf("round trip %#04x -> %g -> %#04x", h, f16ToF32(uint16(h)), got)
		}
	}
}

// The kernel turns an fp8 code into f16 by moving its bits; that must equal code·2^-8 for
// every finite code, subnormals included.
func TestFP8ShiftToF16IsExact(t *testing.T) {
	for c := 0; c < 256; c++ {
		if c&0x7f == 0x7f {
			continue
		}
		h := uint16((c&0x7f)<<7 | (c&0x80)<<8)
		if got, want := f16ToF32(h), attn.FP8ToF32(uint8(c))*keyScale; got != want {
			t.Errorf("code %#02x: f16 %g, want %g", c, got, want)
		}
	}
}

// emulateKernel computes what score.cu computes, warp by warp, from the same packed
// buffers: A fragments decoded from key codes as the kernel loads them, B fragments read
// from the packed query, the m16n8k16 product formed from the PTX fragment layouts, then
// the kernel's epilogue. It checks the packing and the fragment map without a GPU.
func emulateKernel(v attn.Variant, codes []byte, scales []float32, n int, frag []uint32, w []float32, heads int, useLo bool) []float32 {
	out := make([]float32, n)
	f16 := func(word uint32, half int) float64 { return float64(f16ToF32(uint16(word >> (16 * half)))) }
	fp8x2 := func(v uint32) uint32 { // the kernel's fp8x2_to_f16x2
		t := v&0xff | (v>>8&0xff)<<16
		return (t&0x007f007f)<<7 | (t&0x00800080)<<8
	}
	for base := 0; base < n; base += 16 {
		// a[lane][kk][reg] exactly as the kernel fills it for one M-tile.
		var a [32][8][4]uint32
		var sc [32][2]float32
		for lane := 0; lane < 32; lane++ {
			g, c := lane>>2, lane&3
			for half := 0; half < 2; half++ {
				row := base + half*8 + g
				var words [8]uint32
				if row < n {
					for k := 0; k < 8; k++ {
						p := codes[row*HeadDim+c*32+4*k:]
						words[k] = uint32(p[0]) | uint32(p[1])<<8 | uint32(p[2])<<16 | uint32(p[3])<<24
					}
					sc[lane][half] = scales[row]
				}
				for kk := 0; kk < 8; kk++ {
					a[lane][kk][half] = fp8x2(words[kk])
					a[lane][kk][2+half] = fp8x2(words[kk] >> 16)
				}
			}
		}
		var part [32][2]float32
		for j := 0; j < heads/8; j++ {
			var acc [32][4]float64
			for kk := 0; kk < 8; kk++ {
				for _, lo := range []bool{false, true} {
					if lo && !useLo {
						continue
					}
					var A [16][16]float64
					var B [16][8]float64
					for lane := 0; lane < 32; lane++ {
						g, c := lane>>2, lane&3
						r := a[lane][kk]
						A[g][2*c], A[g][2*c+1] = f16(r[0], 0), f16(r[0], 1)
						A[g+8][2*c], A[g+8][2*c+1] = f16(r[1], 0), f16(r[1], 1)
						A[g][2*c+8], A[g][2*c+9] = f16(r[2], 0), f16(r[2], 1)
						A[g+8][2*c+8], A[g+8][2*c+9] = f16(r[3], 0), f16(r[3], 1)
						wi := ((j*8+kk)*32 + lane) * 4
						if lo {
							wi += 2
						}
						B[2*c][g], B[2*c+1][g] = f16(frag[wi], 0), f16(frag[wi], 1)
						B[2*c+8][g], B[2*c+9][g] = f16(frag[wi+1], 0), f16(frag[wi+1], 1)
					}
					for lane := 0; lane < 32; lane++ {
						g, c := lane>>2, lane&3
						for e := 0; e < 4; e++ {
							row, col := g+8*(e/2), 2*c+e%2
							for k := 0; k < 16; k++ {
								acc[lane][e] += A[row][k] * B[k][col]
							}
						}
					}
				}
			}
			for lane := 0; lane < 32; lane++ {
				c := lane & 3
				w0, w1 := w[j*8+c*2], w[j*8+c*2+1]
				for half := 0; half < 2; half++ {
					x0, x1 := float32(acc[lane][2*half]), float32(acc[lane][2*half+1])
					if v == attn.Float {
						s := sc[lane][half]
						part[lane][half] += w0*max(s*x0, 0) + w1*max(s*x1, 0)
					} else {
						part[lane][half] += w0*max(x0, 0) + w1*max(x1, 0)
					}
				}
			}
		}
		for lane := 0; lane < 32; lane += 4 {
			g := lane >> 2
			for half := 0; half < 2; half++ {
				row := base + half*8 + g
				if row >= n {
					continue
				}
				s := part[lane][half] + part[lane+1][half] + part[lane+2][half] + part[lane+3][half]
				if v == attn.FP8Q {
					s *= sc[lane][half]
				}
				out[row] = s
			}
		}
	}
	return out
}

func TestPackedQueriesMatchCPUScorer(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	lw := randomLayer(t, r, 256, 64, 16)
	qs := randomQueries(t, r, lw, 2)
	const n = 77 // not a multiple of 16: the tail rows are padded with zeros
	raw := randomKeys(r, n)
	codes := make([]byte, n*HeadDim)
	scales := make([]float32, n)
	if err := splitKeys(raw, codes, scales); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		v      attn.Variant
		tol    float64
		wantLo bool
	}{{attn.Float, 1e-5, true}, {attn.FP8Q, 1e-5, false}} {
		t.Run(tc.v.String(), func(t *testing.T) {
			want := cpuLogits(t, tc.v, qs, raw)
			for qi, q := range qs {
				frag := make([]uint32, q.Heads*fragWordsPerHead)
				w := make([]float32, q.Heads)
				useLo, err := packQuery(tc.v, q, frag, w)
				if err != nil {
					t.Fatal(err)
				}
				if useLo != tc.wantLo {
					t.Errorf("useLo = %v, want %v", useLo, tc.wantLo)
				}
				got := emulateKernel(tc.v, codes, scales, n, frag, w, q.Heads, useLo)
				if e := relErr(got, want[qi*n:(qi+1)*n]); e > tc.tol || math.IsNaN(e) {
					t.Errorf("query %d: relative error %.3g > %.0g", qi, e, tc.tol)
				} else {
					t.Logf("query %d: relative error %.3g", qi, e)
				}
			}
		})
	}
}

func TestPackQueryRejectsShapes(t *testing.T) {
	good := &attn.Query{Heads: 8, HeadDim: HeadDim, Q: make([]float32, 8*HeadDim), W: make([]float32, 8),
		Q8: make([]uint8, 8*HeadDim), QScale: make([]float32, 8)}
	tests := []struct {
		name string
		q    attn.Query
		v    attn.Variant
	}{
		{"head dim 64", attn.Query{Heads: 8, HeadDim: 64, Q: make([]float32, 512), W: make([]float32, 8)}, attn.Float},
		{"heads not multiple of 8", attn.Query{Heads: 12, HeadDim: HeadDim, Q: make([]float32, 12*HeadDim), W: make([]float32, 12)}, attn.Float},
		{"short Q", attn.Query{Heads: 8, HeadDim: HeadDim, Q: make([]float32, 10), W: make([]float32, 8)}, attn.Float},
		{"missing Q8", attn.Query{Heads: 8, HeadDim: HeadDim, Q: good.Q, W: good.W}, attn.FP8Q},
		{"unknown variant", *good, attn.Variant(9)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := max(tc.q.Heads, 1)
			_, err := packQuery(tc.v, &tc.q, make([]uint32, h*fragWordsPerHead), make([]float32, h))
			if err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := packQuery(attn.FP8Q, good, make([]uint32, 8*fragWordsPerHead), make([]float32, 8)); err != nil {
		t.Fatalf("good query rejected: %v", err)
	}
}

func TestSplitKeysAndLayout(t *testing.T) {
	raw := randomKeys(rand.New(rand.NewPCG(5, 6)), 3)
	codes := make([]byte, 3*HeadDim)
	scales := make([]float32, 3)
	if err := splitKeys(raw, codes, scales); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if string(codes[i*HeadDim:(i+1)*HeadDim]) != string(raw[i*KeyRecord:i*KeyRecord+HeadDim]) {
			t.Errorf("key %d codes differ", i)
		}
		if scales[i] == 0 {
			t.Errorf("key %d scale zero", i)
		}
	}
	if err := splitKeys(raw[:KeyRecord+1], codes, scales); err == nil {
		t.Error("ragged record accepted")
	}
	sets := []keySetDesc{{N: 1000, QCount: 2}, {N: 256, QCount: 1}, {N: 1, QCount: 3}}
	tiles, queries := layoutSets(sets)
	if tiles != 4+1+1 || queries != 6 {
		t.Errorf("tiles %d queries %d", tiles, queries)
	}
	if sets[1].TileFirst != 4 || sets[2].TileFirst != 5 || sets[2].QFirst != 3 {
		t.Errorf("layout %+v", sets)
	}
}
