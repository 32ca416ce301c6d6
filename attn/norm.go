package attn

import "math"

// RMSNorm scales x in place to unit root-mean-square and multiplies by weight:
// x_i ← x_i · rsqrt(mean(x²) + eps) · weight_i, in float32 with the mean
// accumulated in float64 (the reference reduces in float32 in an unspecified
// order; float64 keeps ours within one rounding of any such order).
func RMSNorm(x, weight []float32, eps float32) {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	ms := float32(ss / float64(len(x)))
	rs := float32(1 / math.Sqrt(float64(ms+eps)))
	for i, v := range x {
		x[i] = float32(v*rs) * weight[i]
	}
}

// Hadamard applies the normalised Walsh–Hadamard transform (Sylvester order,
// divided by sqrt(len(x))) in place. len(x) must be a power of two.
func Hadamard(x []float32) {
	n := len(x)
	for h := 1; h < n; h <<= 1 {
		for i := 0; i < n; i += h << 1 {
			a, b := x[i:i+h], x[i+h:i+2*h]
			for j := range a {
				u, v := a[j], b[j]
				a[j], b[j] = u+v, u-v
			}
		}
	}
	s := float32(1 / math.Sqrt(float64(n)))
	for i := range x {
		x[i] *= s
	}
}

// Sigmoid is the logistic function 1/(1+e^-x); a chunk is kept when its score
// exceeds 0.5, i.e. when its logit is positive.
func Sigmoid(x float32) float32 {
	return float32(1 / (1 + math.Exp(-float64(x))))
}
