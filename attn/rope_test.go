package attn

import (
	"math"
	"testing"
)

// r32 rounds a float64 to float32 and back: an operation done in float64 and then
// rounded is the float32 operation, because float64 carries more than 2·24+2 bits.
func r32(x float64) float64 { return float64(float32(x)) }

func TestYaRNBounds(t *testing.T) {
	tests := []struct {
		y         YaRN
		low, high int
	}{
		{DefaultYaRN, 15, 25},
		{YaRN{Dim: 64, Base: 10000, Factor: 40, OriginalLen: 4096, BetaFast: 32, BetaSlow: 1}, 10, 23},
		{YaRN{Dim: 8, Base: 160000, Factor: 16, OriginalLen: 65536, BetaFast: 32, BetaSlow: 1}, 1, 3},
	}
	for _, tt := range tests {
		low, high := tt.y.Bounds()
		if low != tt.low || high != tt.high {
			t.Errorf("%+v: bounds %d, %d, want %d, %d", tt.y, low, high, tt.low, tt.high)
		}
	}
}

func TestYaRNFreqs(t *testing.T) {
	for _, y := range []YaRN{DefaultYaRN, {Dim: 128, Base: 10000, Factor: 40, OriginalLen: 4096, BetaFast: 32, BetaSlow: 1}} {
		g := y.Freqs()
		low, high := y.Bounds()
		for i := range g {
			// Same operation order, each step in float64 and rounded to float32.
			e := r32(float64(2*i) / float64(y.Dim))
			f := r32(1 / r32(math.Pow(r32(y.Base), e)))
			ramp := 0.0
			if i >= high {
				ramp = 1
			} else if i >= low {
				ramp = r32((float64(i) - float64(low)) / float64(max(high-low, 1)))
			}
			a := r32(f * r32(1-ramp))
			b := r32(r32(f/y.Factor) * ramp)
			want := float32(a + b)
			if g[i] != want {
				t.Errorf("dim %d: g[%d] = %.9g, want %.9g", y.Dim, i, g[i], want)
			}
			switch {
			case i < low && g[i] != float32(f):
				t.Errorf("g[%d] = %g below low must equal f_i = %g", i, g[i], f)
			case i >= high && g[i] != float32(r32(f/y.Factor)):
				t.Errorf("g[%d] = %g at/above high must equal f_i/factor", i, g[i])
			}
			if i > 0 && !(g[i] < g[i-1]) {
				t.Errorf("g not strictly decreasing at %d: %g ≥ %g", i, g[i], g[i-1])
			}
		}
		if g[0] != 1 {
			t.Errorf("g[0] = %g, want 1", g[0])
		}
	}
}

// TestRopeLongPositions checks angles and rotations at positions up to 1M, beyond
// the golden file's 131000.
func TestRopeLongPositions(t *testing.T) {
	r, err := NewRope(DefaultYaRN)
	if err != nil {
		t.Fatal(err)
	}
	g := r.Freqs()
	for _, pos := range []int64{0, 1, 4097, 65535, 131000, 262143, 524287, 786431, 999999, 1 << 20, 1048575} {
		for i := range g {
			want := float32(r32(float64(float32(pos)) * float64(g[i])))
			if got := r.Angle(pos, i); got != want {
				t.Fatalf("pos %d pair %d: angle %.9g, want %.9g", pos, i, got, want)
			}
		}
		x := make([]float32, r.Dim())
		for i := range x {
			x[i] = float32(i%7) - 3 + 0.25*float32(i)
		}
		y := append([]float32(nil), x...)
		r.Apply(y, pos)
		for i := range g {
			ang := float64(r.Angle(pos, i))
			c, s := r32(math.Cos(ang)), r32(math.Sin(ang))
			a, b := float64(x[2*i]), float64(x[2*i+1])
			w0 := float32(r32(a*c) - r32(b*s))
			w1 := float32(r32(a*s) + r32(b*c))
			if y[2*i] != w0 || y[2*i+1] != w1 {
				t.Fatalf("pos %d pair %d: (%g, %g), want (%g, %g)", pos, i, y[2*i], y[2*i+1], w0, w1)
			}
			n0 := a*a + b*b
			n1 := float64(y[2*i])*float64(y[2*i]) + float64(y[2*i+1])*float64(y[2*i+1])
			if math.Abs(n0-n1) > 1e-5*math.Max(n0, 1) {
				t.Fatalf("pos %d pair %d: rotation changed the norm %g → %g", pos, i, n0, n1)
			}
		}
		if pos == 0 {
			for i := range x {
				if x[i] != y[i] {
					t.Fatalf("position 0 must be the identity; x[%d] %g → %g", i, x[i], y[i])
				}
			}
		}
	}
	// Why the float32 order matters: at 1M a one-ulp change of g_0 (=1) already
	// moves the angle by ~0.06 rad; of the slowest pair's g by far less.
	p := float32(1_000_000)
	if d := float64(p*math.Nextafter32(g[0], 2)) - float64(p*g[0]); d < 0.05 {
		t.Errorf("expected a one-ulp change of g_0 to move the angle at 1M by ≥ 0.05, got %g", d)
	}
}

func TestYaRNValidate(t *testing.T) {
	bad := []YaRN{{}, {Dim: 3, Base: 2, Factor: 1, OriginalLen: 1, BetaFast: 1, BetaSlow: 1}, {Dim: 4, Base: 1, Factor: 1, OriginalLen: 1, BetaFast: 1, BetaSlow: 1}}
	for _, y := range bad {
		if _, err := NewRope(y); err == nil {
			t.Errorf("NewRope(%+v) accepted", y)
		}
	}
}
