package attn

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestBF16(t *testing.T) {
	tests := []struct {
		in   uint32 // float32 bits
		want uint16
	}{
		{0x3f800000, 0x3f80}, // 1
		{0x3f808000, 0x3f80}, // tie, even stays
		{0x3f818000, 0x3f82}, // tie, odd rounds up
		{0x3f808001, 0x3f81}, // above tie
		{0x3f807fff, 0x3f80}, // below tie
		{0x7f7fffff, 0x7f80}, // max float rounds to +Inf
		{0xff800000, 0xff80}, // -Inf
		{0x80000000, 0x8000}, // -0
		{0x00000001, 0x0000}, // smallest subnormal rounds to 0
		{0x7fc00000, 0x7fc0}, // NaN
		{0xffc00001, 0x7fc0}, // NaN of either sign becomes canonical
		{0x7f800001, 0x7fc0}, // signalling NaN
		{math.Float32bits(-3.0), 0xc040},
	}
	for _, tt := range tests {
		if got := BF16FromF32(math.Float32frombits(tt.in)); got != tt.want {
			t.Errorf("BF16FromF32(%#08x) = %#04x, want %#04x", tt.in, got, tt.want)
		}
	}
	// Every bf16 value round-trips, and rounding picks the nearer neighbour.
	for b := 0; b < 1<<16; b++ {
		f := BF16ToF32(uint16(b))
		if f != f {
			continue
		}
		if got := BF16FromF32(f); got != uint16(b) {
			t.Fatalf("round trip of %#04x gave %#04x", b, got)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		f := math.Float32frombits(r.Uint32())
		if f != f || math.IsInf(float64(f), 0) || math.Abs(float64(f)) > 3.3e38 {
			continue
		}
		got := float64(RoundBF16(f))
		lo := float64(BF16ToF32(uint16(math.Float32bits(f) >> 16)))
		hi := float64(BF16ToF32(uint16(math.Float32bits(f)>>16) + 1))
		want := lo
		dl, dh := math.Abs(float64(f)-lo), math.Abs(hi-float64(f))
		if dh < dl || (dh == dl && (math.Float32bits(f)>>16)&1 == 1) {
			want = hi
		}
		if got != want {
			t.Fatalf("RoundBF16(%g) = %g, want %g", f, got, want)
		}
	}
}

// fp8Ref decodes an e4m3fn code from its definition, independently of fp8Decode.
func fp8Ref(c uint8) float64 {
	s := 1.0
	if c&0x80 != 0 {
		s = -1
	}
	e, m := int(c>>3&15), int(c&7)
	if e == 15 && m == 7 {
		return math.NaN()
	}
	if e == 0 {
		return s * float64(m) / 8 * math.Pow(2, -6)
	}
	return s * (1 + float64(m)/8) * math.Pow(2, float64(e-7))
}

func TestFP8Decode(t *testing.T) {
	for c := 0; c < 256; c++ {
		got, want := float64(FP8ToF32(uint8(c))), fp8Ref(uint8(c))
		if math.IsNaN(want) {
			if !math.IsNaN(got) {
				t.Errorf("code %#02x: got %g, want NaN", c, got)
			}
			continue
		}
		if got != want || math.Signbit(got) != math.Signbit(want) {
			t.Errorf("code %#02x: got %g, want %g", c, got, want)
		}
	}
	if FP8ToF32(0x7e) != 448 || FP8ToF32(0xfe) != -448 || FP8ToF32(0x01) != 1.0/512 || FP8ToF32(0x08) != 1.0/64 {
		t.Error("landmark codes decode wrongly")
	}
}

// fp8Nearest is round-to-nearest-even over the finite codes by exhaustive
// search, with torch's overflow rule: magnitudes above 464 (the midpoint of 448
// and the missing 480) become NaN.
func fp8Nearest(f float32) uint8 {
	x := float64(f)
	if math.IsNaN(x) || math.Abs(x) > 464 {
		if math.Signbit(x) {
			return 0xff
		}
		return 0x7f
	}
	best, bestD := uint8(0), math.Inf(1)
	for c := 0; c < 0x7f; c++ {
		v := fp8Ref(uint8(c))
		d := math.Abs(math.Abs(x) - v)
		if d < bestD || (d == bestD && c&1 == 0) {
			best, bestD = uint8(c), d
		}
	}
	if math.Signbit(x) {
		best |= 0x80
	}
	return best
}

func TestFP8Encode(t *testing.T) {
	tests := []struct {
		in   float32
		want uint8
	}{
		{0, 0x00},
		{float32(math.Copysign(0, -1)), 0x80},
		{1, 0x38},
		{-2, 0xc0},
		{448, 0x7e},
		{-448, 0xfe},
		{464, 0x7e},       // tie between 448 and (NaN-coded) 480: even wins
		{464.00003, 0x7f}, // above the tie: NaN, no saturation
		{479, 0x7f},
		{480, 0x7f},
		{1e30, 0x7f},
		{float32(math.Inf(1)), 0x7f},
		{float32(math.Inf(-1)), 0xff},
		{float32(math.NaN()), 0x7f},
		{1.0 / 1024, 0x00},        // half the smallest subnormal: tie to even (0)
		{1.0/1024 + 1e-7, 0x01},   // just above
		{3.0 / 1024, 0x02},        // tie between codes 1 and 2: even
		{1.0/64 - 1.0/1024, 0x08}, // tie between 7·2^-9 and 2^-6: even (0x08)
		{1.0 + 1.0/16, 0x38},      // tie between 1 and 1.125: even
		{1.0 + 3.0/16, 0x3a},      // tie between 1.125 and 1.25: even (1.25)
		{-(1.0 + 3.0/16), 0xba},
	}
	for _, tt := range tests {
		if got := FP8FromF32(tt.in); got != tt.want {
			t.Errorf("FP8FromF32(%g) = %#02x, want %#02x", tt.in, got, tt.want)
		}
		if got := fp8Nearest(tt.in); got != tt.want {
			t.Errorf("reference fp8Nearest(%g) = %#02x, want %#02x (test table wrong?)", tt.in, got, tt.want)
		}
	}
	// All codes round-trip; all midpoints between neighbours and their float32
	// neighbours round as the exhaustive reference says.
	for c := 0; c < 256; c++ {
		v := FP8ToF32(uint8(c))
		if v != v {
			continue
		}
		if got := FP8FromF32(v); got != uint8(c) && !(v == 0 && got&0x7f == 0) {
			t.Errorf("round trip of code %#02x (%g) gave %#02x", c, v, got)
		}
	}
	for c := 0; c < 0x7e; c++ {
		mid := float32((fp8Ref(uint8(c)) + fp8Ref(uint8(c+1))) / 2)
		for _, x := range []float32{mid, math.Nextafter32(mid, 0), math.Nextafter32(mid, 1000)} {
			for _, s := range []float32{1, -1} {
				if got, want := FP8FromF32(s*x), fp8Nearest(s*x); got != want {
					t.Errorf("FP8FromF32(%g) = %#02x, want %#02x", s*x, got, want)
				}
			}
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 200000 {
		x := float32(r.NormFloat64() * math.Pow(2, float64(r.IntN(24)-14)))
		if got, want := FP8FromF32(x), fp8Nearest(x); got != want {
			t.Fatalf("FP8FromF32(%g) = %#02x, want %#02x", x, got, want)
		}
	}
}
