package indexer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strconv"

	"github.com/flashmemory/flashmemory/attn"
	"github.com/flashmemory/flashmemory/internal/safetensors"
)

// Tensor names inside a model file: "l{N}.{wq_a, wq_b, q_norm_weight, weights_proj}" for
// target layer N, as scripts/convert_checkpoint.py writes them from the published
// "retrievers.l{N}.{wq_a.weight, wq_b.weight, q_norm_weight, weights_proj.weight}" and as
// ../shared/testdata/indexer_golden.safetensors names them. Other tensors are ignored.
const (
	nameWqA   = "wq_a"          // [R, hidden]
	nameWqB   = "wq_b"          // [H·head_dim, R]
	nameQNorm = "q_norm_weight" // [R]
	nameWProj = "weights_proj"  // [H, hidden]
)

var layerNameRE = regexp.MustCompile(`^l(\d+)\.wq_a$`)

// LoadOptions override what a model file says. Zero values keep the file's choice.
type LoadOptions struct {
	// Ensemble is "max", "mean" or "" (the file's metadata, else max).
	Ensemble string
	// Variant is "trained", "fp8q" or "" (the file's metadata, else trained).
	Variant string
}

// Model is the LSA Memory Indexer: per target layer the query-side weights of LSA.md
// (wq_a, wq_b, q_norm_weight, weights_proj). It implements Scorer; keys are the decoder's
// 132-byte compressed index keys (HeadDim fp8 e4m3 values and a float32 scale), queries the
// layer's hidden state as bf16. A Model is immutable and safe for concurrent use.
type Model struct {
	cfg    ModelConfig
	layers []layerWeights
	// scoring state built from the weights once (see lsa.go)
	lsa
}

// layerWeights holds one target layer's weights, row-major as in the file, for export.
type layerWeights struct {
	wqA, wqB, qNorm, wProj weightData
}

// weightData is one weight tensor in the narrowest exact form: bf16 when every value is a
// bfloat16 (a BF16 checkpoint: attn then keeps its own bf16 copy and drops the float32 one,
// so keeping float32 here would triple the memory), else the float32 slice that attn
// retains as well (shared, no copy).
type weightData struct {
	f32  []float32
	bf16 []uint16
}

func newWeightData(v []float32) weightData {
	for _, x := range v {
		if attn.RoundBF16(x) != x {
			return weightData{f32: v}
		}
	}
	b := make([]uint16, len(v))
	for i, x := range v {
		b[i] = attn.BF16FromF32(x)
	}
	return weightData{bf16: b}
}

// float32s returns the values as float32 (the stored slice, or a fresh expansion of bf16).
func (w weightData) float32s() []float32 {
	if w.bf16 == nil {
		return w.f32
	}
	v := make([]float32, len(w.bf16))
	for i, h := range w.bf16 {
		v[i] = attn.BF16ToF32(h)
	}
	return v
}

// tensor returns the weights as a BF16 or F32 safetensors tensor (lossless either way).
func (w weightData) tensor(name string, shape ...int) safetensors.Tensor {
	if w.bf16 == nil {
		return f32Tensor(name, w.f32, shape...)
	}
	b := make([]byte, 2*len(w.bf16))
	for i, h := range w.bf16 {
		binary.LittleEndian.PutUint16(b[2*i:], h)
	}
	return safetensors.Tensor{Name: name, DType: safetensors.BF16, Shape: shape, Data: b}
}

// Config returns the model's configuration.
func (m *Model) Config() ModelConfig {
	c := m.cfg
	c.Layers = slices.Clone(c.Layers)
	return c
}

// LoadModel reads a model from a safetensors file (see ParseModel).
func LoadModel(path string, opts LoadOptions) (*Model, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fileError(err)
	}
	defer f.Close()
	m, err := fromFile(f, opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// ParseModel reads a model from the bytes of a safetensors file. Target layers come from the
// metadata "layers" entry, else from the l{N}.wq_a tensors present. Dimensions come from the
// tensor shapes and must agree across tensors, layers and any dimension in the metadata;
// dtypes F32, BF16 and F16 are accepted; every weight must be finite. Errors wrap
// ErrBadModel and name the tensor and what is wrong with it.
func ParseModel(buf []byte, opts LoadOptions) (*Model, error) {
	f, err := safetensors.Parse(buf)
	if err != nil {
		return nil, fileError(err)
	}
	return fromFile(f, opts)
}

// fileError wraps a safetensors parse error, saying so when the likely cause is a file cut
// short (a tensor or the header runs past the end).
func fileError(err error) error {
	if errors.Is(err, safetensors.ErrTruncated) || errors.Is(err, safetensors.ErrBadOffsets) {
		return fmt.Errorf("%w: truncated or corrupt file: %w", ErrBadModel, err)
	}
	return fmt.Errorf("%w: %w", ErrBadModel, err)
}

func fromFile(f *safetensors.File, opts LoadOptions) (*Model, error) {
	md := f.Metadata()
	cfg := smallDefaults()
	if err := cfg.applyMetadata(md); err != nil {
		return nil, err
	}
	if opts.Ensemble != "" {
		e, err := ParseEnsemble(opts.Ensemble)
		if err != nil {
			return nil, err
		}
		cfg.Ensemble = e
	}
	if opts.Variant != "" {
		v, err := ParseVariant(opts.Variant)
		if err != nil {
			return nil, err
		}
		cfg.Variant = v
	}
	if s, ok := md["layers"]; ok {
		ls, err := parseLayers(s)
		if err != nil {
			return nil, err
		}
		cfg.Layers = ls
	} else {
		for _, name := range f.Names() {
			if m := layerNameRE.FindStringSubmatch(name); m != nil {
				n, err := strconv.Atoi(m[1])
				if err != nil || n > 1<<20 {
					return nil, fmt.Errorf("%w: tensor %s: layer number out of range", ErrBadModel, name)
				}
				cfg.Layers = append(cfg.Layers, n)
			}
		}
		slices.Sort(cfg.Layers)
	}
	if len(cfg.Layers) == 0 {
		return nil, fmt.Errorf("%w: no target layers (no \"layers\" metadata and no l{N}.wq_a tensor)", ErrBadModel)
	}

	first := fmt.Sprintf("l%d.", cfg.Layers[0])
	tensor := func(name string) (safetensors.Tensor, error) {
		t, err := f.Tensor(name)
		if errors.Is(err, safetensors.ErrNotFound) {
			return t, fmt.Errorf("%w: tensor %s is missing", ErrBadModel, name)
		}
		if err != nil {
			return t, fmt.Errorf("%w: %w", ErrBadModel, err)
		}
		switch t.DType {
		case safetensors.F32, safetensors.BF16, safetensors.F16:
		default:
			return t, fmt.Errorf("%w: tensor %s has dtype %s, want F32, BF16 or F16", ErrBadModel, name, t.DType)
		}
		return t, nil
	}
	// Dimensions from the first layer's wq_a and weights_proj; everything else must agree.
	wqA, err := tensor(first + nameWqA)
	if err != nil {
		return nil, err
	}
	if len(wqA.Shape) != 2 {
		return nil, fmt.Errorf("%w: tensor %s%s has shape %v, want [q_lora_rank, hidden]", ErrBadModel, first, nameWqA, wqA.Shape)
	}
	cfg.QLoraRank, cfg.Hidden = wqA.Shape[0], wqA.Shape[1]
	wp, err := tensor(first + nameWProj)
	if err != nil {
		return nil, err
	}
	if len(wp.Shape) != 2 || wp.Shape[1] != cfg.Hidden {
		return nil, fmt.Errorf("%w: tensor %s%s has shape %v, want [n_heads, %d] (hidden from %s%s)",
			ErrBadModel, first, nameWProj, wp.Shape, cfg.Hidden, first, nameWqA)
	}
	cfg.Heads = wp.Shape[0]
	wqB, err := tensor(first + nameWqB)
	if err != nil {
		return nil, err
	}
	if cfg.Heads > 0 && len(wqB.Shape) == 2 && wqB.Shape[0]%cfg.Heads == 0 {
		cfg.HeadDim = wqB.Shape[0] / cfg.Heads
	}
	if v, ok := md["head_dim"]; ok {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			cfg.HeadDim = n
		}
	}
	if err := cfg.checkMetadataDims(md); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadModel, err)
	}

	m := &Model{cfg: cfg, layers: make([]layerWeights, len(cfg.Layers))}
	for i, l := range cfg.Layers {
		p := fmt.Sprintf("l%d.", l)
		want := []struct {
			name  string
			shape []int
			dst   *weightData
			why   string
		}{
			{nameWqA, []int{cfg.QLoraRank, cfg.Hidden}, &m.layers[i].wqA, "[q_lora_rank, hidden]"},
			{nameWqB, []int{cfg.Heads * cfg.HeadDim, cfg.QLoraRank}, &m.layers[i].wqB, "[n_heads·head_dim, q_lora_rank]"},
			{nameQNorm, []int{cfg.QLoraRank}, &m.layers[i].qNorm, "[q_lora_rank]"},
			{nameWProj, []int{cfg.Heads, cfg.Hidden}, &m.layers[i].wProj, "[n_heads, hidden]"},
		}
		for _, w := range want {
			t, err := tensor(p + w.name)
			if err != nil {
				return nil, err
			}
			if !slices.Equal(t.Shape, w.shape) {
				return nil, fmt.Errorf("%w: tensor %s%s has shape %v, want %v %s (hidden %d, q_lora_rank %d, n_heads %d, head_dim %d)",
					ErrBadModel, p, w.name, t.Shape, w.shape, w.why, cfg.Hidden, cfg.QLoraRank, cfg.Heads, cfg.HeadDim)
			}
			v, err := t.Float32s()
			if err != nil {
				return nil, fmt.Errorf("%w: tensor %s%s: %w", ErrBadModel, p, w.name, err)
			}
			for j, x := range v {
				if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
					return nil, fmt.Errorf("%w: tensor %s%s element %d is %v", ErrBadModel, p, w.name, j, x)
				}
			}
			*w.dst = newWeightData(v)
		}
	}
	if err := m.prepare(); err != nil {
		return nil, err
	}
	return m, nil
}

// RandomModel returns a model with random weights for tests and demos, deterministic in
// seed. Zero RoPE and norm constants take the LSA values, so
// ModelConfig{Layers: []int{10, 12, 20}, Hidden: 64, QLoraRank: 32, Heads: 4, HeadDim: 128}
// is enough; PublishedConfig() gives the full published size. Weights follow the statistics
// of the golden file's random weights: N(0, 1/fan_in) for the matrices, 1 + N(0, 0.01) for
// q_norm_weight.
func RandomModel(seed uint64, cfg ModelConfig) (*Model, error) {
	cfg = cfg.withDefaults()
	cfg.Layers = slices.Clone(cfg.Layers)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	gauss := func(n int, mean, std float64) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(mean + std*rng.NormFloat64())
		}
		return v
	}
	m := &Model{cfg: cfg, layers: make([]layerWeights, len(cfg.Layers))}
	for i := range m.layers {
		m.layers[i] = layerWeights{
			wqA:   newWeightData(gauss(cfg.QLoraRank*cfg.Hidden, 0, 1/math.Sqrt(float64(cfg.Hidden)))),
			wqB:   newWeightData(gauss(cfg.Heads*cfg.HeadDim*cfg.QLoraRank, 0, 1/math.Sqrt(float64(cfg.QLoraRank)))),
			qNorm: newWeightData(gauss(cfg.QLoraRank, 1, 0.1)),
			wProj: newWeightData(gauss(cfg.Heads*cfg.Hidden, 0, 1/math.Sqrt(float64(cfg.Hidden)))),
		}
	}
	if err := m.prepare(); err != nil {
		return nil, err
	}
	return m, nil
}

// withDefaults fills zero scorer constants with the LSA values.
func (c ModelConfig) withDefaults() ModelConfig {
	d := smallDefaults()
	if c.RopeDim == 0 {
		c.RopeDim = d.RopeDim
	}
	if c.RopeBase == 0 {
		c.RopeBase = d.RopeBase
	}
	if c.RopeFactor == 0 {
		c.RopeFactor = d.RopeFactor
	}
	if c.RopeOrigLen == 0 {
		c.RopeOrigLen = d.RopeOrigLen
	}
	if c.RopeBetaFast == 0 {
		c.RopeBetaFast = d.RopeBetaFast
	}
	if c.RopeBetaSlow == 0 {
		c.RopeBetaSlow = d.RopeBetaSlow
	}
	if c.NormEps == 0 {
		c.NormEps = d.NormEps
	}
	return c
}

// WriteSafetensors writes the model as a safetensors file in the layout LoadModel reads
// (BF16 weights where the values are bfloat16, else F32, so always lossless; full metadata),
// so a RandomModel can be saved and a loaded model re-exported.
func (m *Model) WriteSafetensors(w io.Writer) error {
	var ts []safetensors.Tensor
	c := m.cfg
	for i, l := range c.Layers {
		p := fmt.Sprintf("l%d.", l)
		lw := m.layers[i]
		ts = append(ts,
			lw.wqA.tensor(p+nameWqA, c.QLoraRank, c.Hidden),
			lw.wqB.tensor(p+nameWqB, c.Heads*c.HeadDim, c.QLoraRank),
			lw.qNorm.tensor(p+nameQNorm, c.QLoraRank),
			lw.wProj.tensor(p+nameWProj, c.Heads, c.Hidden))
	}
	return safetensors.Write(w, ts, c.metadata())
}

// Save writes the model to path (see WriteSafetensors), replacing it atomically.
func (m *Model) Save(path string) error {
	var b bytes.Buffer
	if err := m.WriteSafetensors(&b); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func f32Tensor(name string, v []float32, shape ...int) safetensors.Tensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return safetensors.Tensor{Name: name, DType: safetensors.F32, Shape: shape, Data: b}
}

// RandomKeys returns n chunk keys per target layer drawn like a decoder's compressed index
// keys (per key: HeadDim values from N(0, 1), quantised to fp8 e4m3 with scale max|v|/448),
// deterministic in seed. For tests, benchmarks and the daemon demo.
func (m *Model) RandomKeys(seed uint64, n int) [][]byte {
	n = max(n, 0)
	rng := rand.New(rand.NewPCG(seed, 0x6a09e667f3bcc909))
	d, kb := m.cfg.HeadDim, m.cfg.KeyBytes()
	v := make([]float32, d)
	out := make([][]byte, len(m.cfg.Layers))
	for l := range out {
		b := make([]byte, n*kb)
		for c := range n {
			var amax float32
			for j := range v {
				v[j] = float32(rng.NormFloat64())
				amax = max(amax, float32(math.Abs(float64(v[j]))))
			}
			scale := amax / 448
			key := b[c*kb : (c+1)*kb]
			for j, x := range v {
				key[j] = attn.FP8FromF32(x / scale)
			}
			binary.LittleEndian.PutUint32(key[d:], math.Float32bits(scale))
		}
		out[l] = b
	}
	return out
}

// RandomQuery returns a query at position pos whose per-layer hidden states are drawn from
// N(0, 1) and rounded to bf16, deterministic in seed.
func (m *Model) RandomQuery(seed uint64, pos int64) Query {
	rng := rand.New(rand.NewPCG(seed, 0xbb67ae8584caa73b))
	q := Query{Position: pos, Layers: make([][]byte, len(m.cfg.Layers))}
	for l := range q.Layers {
		b := make([]byte, 2*m.cfg.Hidden)
		for i := range m.cfg.Hidden {
			binary.LittleEndian.PutUint16(b[2*i:], attn.BF16FromF32(float32(rng.NormFloat64())))
		}
		q.Layers[l] = b
	}
	return q
}
