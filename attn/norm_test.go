package attn

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestRMSNorm(t *testing.T) {
	tests := []struct {
		name      string
		x, weight []float32
		eps       float32
		want      []float32
	}{
		{"unit", []float32{1, 1, 1, 1}, []float32{1, 1, 1, 1}, 0, []float32{1, 1, 1, 1}},
		{"scale", []float32{3, 4}, []float32{1, 2}, 0, []float32{3 / 3.5355339, 8 / 3.5355339}},
		{"weighted", []float32{2, -2, 2, -2}, []float32{0.5, 1, 2, 0}, 0, []float32{0.5, -1, 2, 0}},
		{"eps dominates zero", []float32{0, 0}, []float32{1, 1}, 1e-6, []float32{0, 0}},
		{"eps", []float32{1e-3, 1e-3}, []float32{1, 1}, 1e-6, []float32{1e-3 / float32(math.Sqrt(2e-6)), 1e-3 / float32(math.Sqrt(2e-6))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := append([]float32(nil), tt.x...)
			RMSNorm(x, tt.weight, tt.eps)
			for i := range x {
				if math.Abs(float64(x[i]-tt.want[i])) > 1e-6*math.Max(1, math.Abs(float64(tt.want[i]))) {
					t.Errorf("x[%d] = %g, want %g", i, x[i], tt.want[i])
				}
			}
		})
	}
}

func TestHadamard(t *testing.T) {
	for _, n := range []int{1, 2, 4, 8, 64, 128, 256} {
		r := rand.New(rand.NewPCG(uint64(n), 1))
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(r.NormFloat64())
		}
		got := append([]float32(nil), x...)
		Hadamard(got)
		// Against the explicit Sylvester matrix H[i][j] = (-1)^popcount(i&j) / sqrt(n).
		var normIn, normOut float64
		for i := 0; i < n; i++ {
			var s float64
			for j := 0; j < n; j++ {
				v := float64(x[j])
				if popcount(i&j)%2 == 1 {
					v = -v
				}
				s += v
			}
			s /= math.Sqrt(float64(n))
			if math.Abs(s-float64(got[i])) > 1e-5*math.Sqrt(float64(n)) {
				t.Fatalf("n=%d: y[%d] = %g, want %g", n, i, got[i], s)
			}
			normIn += float64(x[i]) * float64(x[i])
			normOut += float64(got[i]) * float64(got[i])
		}
		if math.Abs(normIn-normOut) > 1e-5*normIn {
			t.Errorf("n=%d: norm not preserved: %g vs %g", n, normIn, normOut)
		}
		// The normalised transform is its own inverse.
		Hadamard(got)
		for i := range x {
			if math.Abs(float64(got[i]-x[i])) > 1e-5 {
				t.Fatalf("n=%d: H(H(x))[%d] = %g, want %g", n, i, got[i], x[i])
			}
		}
	}
	// A unit impulse spreads to ±1/sqrt(n) with the Sylvester signs.
	x := make([]float32, 8)
	x[3] = 1
	Hadamard(x)
	want := []float32{1, -1, -1, 1, 1, -1, -1, 1}
	for i := range x {
		if math.Abs(float64(x[i]-want[i]/float32(math.Sqrt(8)))) > 1e-7 {
			t.Errorf("impulse: y[%d] = %g", i, x[i])
		}
	}
}

func popcount(v int) int {
	n := 0
	for ; v != 0; v &= v - 1 {
		n++
	}
	return n
}

func TestSigmoid(t *testing.T) {
	tests := []struct{ x, want float32 }{
		{0, 0.5}, {100, 1}, {-100, 0}, {2, 0.8807971}, {-2, 0.11920292},
	}
	for _, tt := range tests {
		if got := Sigmoid(tt.x); math.Abs(float64(got-tt.want)) > 1e-7 {
			t.Errorf("Sigmoid(%g) = %g, want %g", tt.x, got, tt.want)
		}
	}
	if Sigmoid(1e-3) <= 0.5 || Sigmoid(-1e-3) >= 0.5 {
		t.Error("sigmoid threshold at 0.5 is not the sign of the logit")
	}
}
