package indexer

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Variant selects the LSA scorer formula.
type Variant uint8

const (
	// VariantTrained is the float path of the trained checkpoint (LSA default).
	VariantTrained Variant = iota
	// VariantFP8Q is the "original inference" path: q quantised per head to fp8 e4m3 and the
	// key scale applied after the dot products.
	VariantFP8Q
)

// String returns "trained" or "fp8q".
func (v Variant) String() string {
	switch v {
	case VariantTrained:
		return "trained"
	case VariantFP8Q:
		return "fp8q"
	}
	return fmt.Sprintf("Variant(%d)", uint8(v))
}

// ParseVariant parses "trained" or "fp8q".
func ParseVariant(s string) (Variant, error) {
	switch s {
	case "trained":
		return VariantTrained, nil
	case "fp8q":
		return VariantFP8Q, nil
	}
	return 0, fmt.Errorf("%w: variant %q is not trained or fp8q", ErrBadConfig, s)
}

// ModelConfig describes an LSA Memory-Indexer model. Dimensions come from the weights file
// (LoadModel infers and cross-checks them) or from the caller (RandomModel).
type ModelConfig struct {
	// Layers are the transformer layer ids of the target layers (published: 10, 12, 20).
	Layers []int
	// Hidden is the decoder's hidden size (4096), QLoraRank the query LoRA rank R (2048),
	// Heads the indexer heads H (128), HeadDim the head and key dimension (128).
	Hidden, QLoraRank, Heads, HeadDim int
	// RoPE (YaRN without magnitude scaling) on the last RopeDim dims of each head.
	RopeDim                    int
	RopeBase, RopeFactor       float64
	RopeOrigLen                int
	RopeBetaFast, RopeBetaSlow float64
	// NormEps is the RMSNorm epsilon.
	NormEps float64
	// Ensemble combines target layers; Variant picks the scorer formula.
	Ensemble Ensemble
	Variant  Variant
}

// PublishedConfig is the configuration of the published FM-DS-V4 indexer checkpoint.
func PublishedConfig() ModelConfig {
	c := smallDefaults()
	c.Layers = []int{10, 12, 20}
	c.Hidden, c.QLoraRank, c.Heads, c.HeadDim = 4096, 2048, 128, 128
	return c
}

// smallDefaults holds the scorer constants of LSA.md, dimensions left zero.
func smallDefaults() ModelConfig {
	return ModelConfig{
		RopeDim: 64, RopeBase: 160000, RopeFactor: 16, RopeOrigLen: 65536,
		RopeBetaFast: 32, RopeBetaSlow: 1, NormEps: 1e-6,
	}
}

// KeyBytes is the size of one chunk's index key per target layer: HeadDim fp8 e4m3 values
// and a little-endian float32 scale (132 for the published model).
func (c ModelConfig) KeyBytes() int { return c.HeadDim + 4 }

// QueryBytes is the size of one query per target layer: the hidden state as bf16.
func (c ModelConfig) QueryBytes() int { return 2 * c.Hidden }

// maxDim bounds every dimension so that products of two stay far from overflow and a
// hostile config cannot ask for absurd allocations (published sizes are ≤ 4096).
const maxDim = 1 << 16

// Validate reports the first inconsistent field, wrapped in ErrBadConfig.
func (c ModelConfig) Validate() error {
	if len(c.Layers) == 0 {
		return fmt.Errorf("%w: no target layers", ErrBadConfig)
	}
	seen := map[int]bool{}
	for _, l := range c.Layers {
		if l < 0 || l > 1<<20 || seen[l] {
			return fmt.Errorf("%w: target layer %d negative, too large or repeated", ErrBadConfig, l)
		}
		seen[l] = true
	}
	for _, d := range []struct {
		name string
		v    int
	}{{"hidden", c.Hidden}, {"q_lora_rank", c.QLoraRank}, {"n_heads", c.Heads}, {"head_dim", c.HeadDim}} {
		if d.v <= 0 || d.v > maxDim {
			return fmt.Errorf("%w: %s %d not in [1, %d]", ErrBadConfig, d.name, d.v, maxDim)
		}
	}
	if c.HeadDim&(c.HeadDim-1) != 0 {
		return fmt.Errorf("%w: head_dim %d is not a power of two (Walsh–Hadamard)", ErrBadConfig, c.HeadDim)
	}
	if c.RopeDim <= 0 || c.RopeDim > c.HeadDim || c.RopeDim%2 != 0 {
		return fmt.Errorf("%w: rope_dim %d not even and in [2, head_dim %d]", ErrBadConfig, c.RopeDim, c.HeadDim)
	}
	if !(c.RopeBase > 1) || !(c.RopeFactor >= 1) || c.RopeOrigLen <= 0 || !(c.RopeBetaFast > 0) || !(c.RopeBetaSlow > 0) {
		return fmt.Errorf("%w: rope base %v factor %v original length %d beta fast %v slow %v", ErrBadConfig,
			c.RopeBase, c.RopeFactor, c.RopeOrigLen, c.RopeBetaFast, c.RopeBetaSlow)
	}
	if !(c.NormEps > 0 && c.NormEps < 1) {
		return fmt.Errorf("%w: rms_norm_eps %v not in (0, 1)", ErrBadConfig, c.NormEps)
	}
	if c.Ensemble != EnsembleMax && c.Ensemble != EnsembleMean {
		return fmt.Errorf("%w: ensemble %d", ErrBadConfig, c.Ensemble)
	}
	if c.Variant != VariantTrained && c.Variant != VariantFP8Q {
		return fmt.Errorf("%w: variant %d", ErrBadConfig, c.Variant)
	}
	return nil
}

// metadata renders the config as the safetensors metadata the conversion script writes.
func (c ModelConfig) metadata() map[string]string {
	ls := make([]string, len(c.Layers))
	for i, l := range c.Layers {
		ls[i] = strconv.Itoa(l)
	}
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	return map[string]string{
		"format":                metaFormat,
		"format_version":        metaFormatVersion,
		"layers":                strings.Join(ls, ","),
		"hidden":                strconv.Itoa(c.Hidden),
		"q_lora_rank":           strconv.Itoa(c.QLoraRank),
		"n_heads":               strconv.Itoa(c.Heads),
		"head_dim":              strconv.Itoa(c.HeadDim),
		"rope_dim":              strconv.Itoa(c.RopeDim),
		"rope_base":             f(c.RopeBase),
		"rope_factor":           f(c.RopeFactor),
		"rope_original_seq_len": strconv.Itoa(c.RopeOrigLen),
		"rope_beta_fast":        f(c.RopeBetaFast),
		"rope_beta_slow":        f(c.RopeBetaSlow),
		"rms_norm_eps":          f(c.NormEps),
		"ensemble":              c.Ensemble.String(),
		"variant":               c.Variant.String(),
	}
}

const (
	metaFormat        = "flashmemory-indexer"
	metaFormatVersion = "1"
)

// applyMetadata overrides the scorer constants, ensemble and variant of c with the values in
// md, and checks any dimension md states against want (the dimensions the shapes imply).
func (c *ModelConfig) applyMetadata(md map[string]string) error {
	if v, ok := md["format"]; ok && v != metaFormat {
		return fmt.Errorf("%w: metadata format %q, want %q", ErrBadModel, v, metaFormat)
	}
	if v, ok := md["format_version"]; ok && v != metaFormatVersion {
		return fmt.Errorf("%w: metadata format_version %q, this build reads %q", ErrBadModel, v, metaFormatVersion)
	}
	ints := []struct {
		key string
		dst *int
	}{{"rope_dim", &c.RopeDim}, {"rope_original_seq_len", &c.RopeOrigLen}}
	for _, e := range ints {
		if v, ok := md[e.key]; ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("%w: metadata %s %q: %v", ErrBadModel, e.key, v, err)
			}
			*e.dst = n
		}
	}
	floats := []struct {
		key string
		dst *float64
	}{{"rope_base", &c.RopeBase}, {"rope_factor", &c.RopeFactor}, {"rope_beta_fast", &c.RopeBetaFast},
		{"rope_beta_slow", &c.RopeBetaSlow}, {"rms_norm_eps", &c.NormEps}}
	for _, e := range floats {
		if v, ok := md[e.key]; ok {
			x, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return fmt.Errorf("%w: metadata %s %q: %v", ErrBadModel, e.key, v, err)
			}
			*e.dst = x
		}
	}
	if v, ok := md["ensemble"]; ok {
		e, err := ParseEnsemble(v)
		if err != nil {
			return fmt.Errorf("%w: metadata: %w", ErrBadModel, err)
		}
		c.Ensemble = e
	}
	if v, ok := md["variant"]; ok {
		x, err := ParseVariant(v)
		if err != nil {
			return fmt.Errorf("%w: metadata: %w", ErrBadModel, err)
		}
		c.Variant = x
	}
	return nil
}

// checkMetadataDims compares the dimensions stated in md with those the shapes imply.
func (c *ModelConfig) checkMetadataDims(md map[string]string) error {
	dims := []struct {
		key string
		v   int
	}{{"hidden", c.Hidden}, {"q_lora_rank", c.QLoraRank}, {"n_heads", c.Heads}, {"head_dim", c.HeadDim}}
	for _, d := range dims {
		if v, ok := md[d.key]; ok {
			if n, err := strconv.Atoi(v); err != nil || n != d.v {
				return fmt.Errorf("%w: metadata %s is %q but the tensor shapes give %d", ErrBadModel, d.key, v, d.v)
			}
		}
	}
	return nil
}

// parseLayers parses the metadata "layers" list ("10,12,20").
func parseLayers(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%w: metadata layers %q: bad entry %q", ErrBadModel, s, f)
		}
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("%w: metadata layers %q: %d repeated", ErrBadModel, s, n)
		}
		out = append(out, n)
	}
	return out, nil
}
