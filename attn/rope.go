package attn

import (
	"fmt"
	"math"
)

// YaRN describes rotary-embedding frequencies with YaRN interpolation and no
// magnitude scaling, as the Memory Indexer uses them.
type YaRN struct {
	Dim         int     // rotated dims per head (64); pairs (2i, 2i+1)
	Base        float64 // 160000
	Factor      float64 // 16
	OriginalLen int     // original context length L0 (65536)
	BetaFast    float64 // 32
	BetaSlow    float64 // 1
}

// DefaultYaRN is the published FM-DS-V4 indexer configuration.
var DefaultYaRN = YaRN{Dim: 64, Base: 160000, Factor: 16, OriginalLen: 65536, BetaFast: 32, BetaSlow: 1}

// Validate reports whether the parameters make sense.
func (y YaRN) Validate() error {
	if y.Dim <= 0 || y.Dim%2 != 0 {
		return fmt.Errorf("%w: rope dim %d must be positive and even", ErrConfig, y.Dim)
	}
	if !(y.Base > 1) || !(y.Factor > 0) || y.OriginalLen <= 0 || !(y.BetaFast > 0) || !(y.BetaSlow > 0) {
		return fmt.Errorf("%w: rope %+v", ErrConfig, y)
	}
	return nil
}

// corrDim is the YaRN correction dimension for n rotations; it only feeds the
// integers low and high, so float64 is as good as the reference's Python floats.
func (y YaRN) corrDim(n float64) float64 {
	return float64(y.Dim) * math.Log(float64(y.OriginalLen)/(2*math.Pi*n)) / (2 * math.Log(y.Base))
}

// Bounds returns the ramp bounds low and high.
func (y YaRN) Bounds() (low, high int) {
	low = max(int(math.Floor(y.corrDim(y.BetaFast))), 0)
	high = min(int(math.Ceil(y.corrDim(y.BetaSlow))), y.Dim/2-1)
	return low, high
}

// Freqs returns g_i, i < Dim/2, computed in float32 in the operation order of
// LSA.md with every intermediate rounded: near position 1M one ulp of g_i moves
// the angle by ~0.06 rad, so the order is part of the contract.
func (y YaRN) Freqs() []float32 {
	half := y.Dim / 2
	low, high := y.Bounds()
	base := float32(y.Base)
	factor := float32(y.Factor)
	span := float32(max(high-low, 1))
	g := make([]float32, half)
	for i := range g {
		e := float32(2*i) / float32(y.Dim)
		// math.Pow is within an ulp in float64, so rounding it to float32 gives the
		// correctly rounded powf that the reference's float32 pow returns.
		f := float32(1) / float32(math.Pow(float64(base), float64(e)))
		var ramp float32
		switch {
		case i < low:
			ramp = 0
		case i >= high:
			ramp = 1
		default:
			ramp = (float32(i) - float32(low)) / span
		}
		// Explicit conversions forbid fusing into FMA, which would change the rounding.
		a := float32(f * float32(1-ramp))
		b := float32(float32(f/factor) * ramp)
		g[i] = a + b
	}
	return g
}

// Rope applies rotary embedding with precomputed frequencies.
type Rope struct {
	freqs []float32
}

// NewRope precomputes the frequencies of y.
func NewRope(y YaRN) (*Rope, error) {
	if err := y.Validate(); err != nil {
		return nil, err
	}
	return &Rope{freqs: y.Freqs()}, nil
}

// Dim returns the number of rotated elements.
func (r *Rope) Dim() int { return 2 * len(r.freqs) }

// Freqs returns a copy of the per-pair frequencies g_i.
func (r *Rope) Freqs() []float32 { return append([]float32(nil), r.freqs...) }

// Angle returns float32(pos)·g_i rounded to float32, the angle of pair i.
func (r *Rope) Angle(pos int64, i int) float32 { return float32(float32(pos) * r.freqs[i]) }

// Apply rotates x (len Dim) in place at position pos: pair (x[2i], x[2i+1]) is
// multiplied, as a complex number, by cos(angle_i) + i·sin(angle_i), all in float32.
func (r *Rope) Apply(x []float32, pos int64) {
	p := float32(pos)
	for i, g := range r.freqs {
		ang := float64(float32(p * g))
		c := float32(math.Cos(ang))
		s := float32(math.Sin(ang))
		a, b := x[2*i], x[2*i+1]
		x[2*i] = float32(a*c) - float32(b*s)
		x[2*i+1] = float32(a*s) + float32(b*c)
	}
}
