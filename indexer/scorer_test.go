package indexer

import (
	"math"
	"testing"
)

func TestEnsembleCombine(t *testing.T) {
	nan := float32(math.NaN())
	tests := []struct {
		name   string
		e      Ensemble
		layers [][]float32
		above  []bool // ensembled score > 0.5
	}{
		{"max: any layer above", EnsembleMax, [][]float32{{-1, -1, 2}, {-3, 0.5, -2}, {-2, -1, -1}}, []bool{false, true, true}},
		{"mean: average of probabilities", EnsembleMean, [][]float32{{-1, -3, 2}, {-3, 0.5, -2}, {5, 4, 0.1}}, []bool{false, true, true}},
		{"mean: one confident layer is not enough", EnsembleMean, [][]float32{{4}, {-2}, {-2}}, []bool{false}},
		{"single layer passes through", EnsembleMean, [][]float32{{1e-30, -1e-30}}, []bool{true, false}},
		{"NaN in any layer is not above", EnsembleMax, [][]float32{{nan, 3}, {3, nan}}, []bool{false, false}},
		{"NaN in mean is not above", EnsembleMean, [][]float32{{nan, 3}, {3, 3}}, []bool{false, true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := make([]float32, len(tc.layers[0]))
			tc.e.combine(dst, tc.layers)
			for c, want := range tc.above {
				if got := dst[c] > 0; got != want {
					t.Errorf("chunk %d: ensembled logit %v, above %v, want %v", c, dst[c], got, want)
				}
			}
		})
	}
	// mean of sigmoids, carried as a logit: mean(σ(2), σ(-2)) = 0.5 exactly → logit 0.
	dst := make([]float32, 1)
	EnsembleMean.combine(dst, [][]float32{{2}, {-2}})
	if math.Abs(float64(dst[0])) > 1e-6 {
		t.Errorf("mean(σ(2), σ(−2)) as logit = %v, want 0", dst[0])
	}
}

func TestParseNames(t *testing.T) {
	for _, s := range []string{"max", "mean"} {
		e, err := ParseEnsemble(s)
		if err != nil || e.String() != s {
			t.Errorf("ParseEnsemble(%q) = %v, %v", s, e, err)
		}
	}
	for _, s := range []string{"trained", "fp8q"} {
		v, err := ParseVariant(s)
		if err != nil || v.String() != s {
			t.Errorf("ParseVariant(%q) = %v, %v", s, v, err)
		}
	}
	if _, err := ParseEnsemble("min"); err == nil {
		t.Error("ParseEnsemble(min) accepted")
	}
	if _, err := ParseVariant("float"); err == nil {
		t.Error("ParseVariant(float) accepted")
	}
}

func TestPolicyValidate(t *testing.T) {
	if err := DefaultPolicy().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Policy){
		"zero page":        func(p *Policy) { p.ChunksPerPage = 0 },
		"negative sink":    func(p *Policy) { p.FirstKeep = -1 },
		"negative tail":    func(p *Policy) { p.LastKeep = -1 },
		"threshold 1":      func(p *Policy) { p.Threshold = 1 },
		"threshold NaN":    func(p *Policy) { p.Threshold = math.NaN() },
		"no KMAX":          func(p *Policy) { p.KMax, p.KMaxRatio = 0, 0 },
		"negative KMAX":    func(p *Policy) { p.KMax = -3 },
		"fallback NaN":     func(p *Policy) { p.FallbackRatio = math.NaN() },
		"negative look":    func(p *Policy) { p.Lookahead = -1 },
		"alpha 0":          func(p *Policy) { p.LookaheadAlpha = 0 },
		"negative trend":   func(p *Policy) { p.LookaheadTrend = -1 },
		"no chunk allowed": func(p *Policy) { p.MaxChunks = 0 },
	} {
		p := DefaultPolicy()
		mut(&p)
		if err := p.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
