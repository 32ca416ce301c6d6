package indexer

import (
	"fmt"
	"slices"

	"github.com/flashmemory/flashmemory/attn"
)

// lsa is the scoring side of Model, built once from the float32 weights.
type lsa struct {
	weights []*attn.LayerWeights // per target layer
}

// prepare builds the attn query projections from m.layers.
func (m *Model) prepare() error {
	c := m.cfg
	opt := attn.Options{
		HeadDim: c.HeadDim,
		Eps:     float32(c.NormEps),
		Rope: attn.YaRN{Dim: c.RopeDim, Base: c.RopeBase, Factor: c.RopeFactor, OriginalLen: c.RopeOrigLen,
			BetaFast: c.RopeBetaFast, BetaSlow: c.RopeBetaSlow},
	}
	m.weights = make([]*attn.LayerWeights, len(c.Layers))
	for i, lw := range m.layers {
		w, err := attn.NewLayerWeights(
			attn.Matrix{Rows: c.QLoraRank, Cols: c.Hidden, Data: lw.wqA}, lw.qNorm,
			attn.Matrix{Rows: c.Heads * c.HeadDim, Cols: c.QLoraRank, Data: lw.wqB},
			attn.Matrix{Rows: c.Heads, Cols: c.Hidden, Data: lw.wProj}, opt)
		if err != nil {
			return fmt.Errorf("%w: target layer %d: %w", ErrBadModel, c.Layers[i], err)
		}
		m.weights[i] = w
	}
	return nil
}

// Layers returns the target layer ids.
func (m *Model) Layers() []int { return slices.Clone(m.cfg.Layers) }

// KeyBytes is HeadDim + 4 (132 for the published model).
func (m *Model) KeyBytes() int { return m.cfg.KeyBytes() }

// QueryBytes is 2·Hidden: the hidden state as bf16.
func (m *Model) QueryBytes() int { return m.cfg.QueryBytes() }

// Ensemble returns the configured ensemble mode.
func (m *Model) Ensemble() Ensemble { return m.cfg.Ensemble }
