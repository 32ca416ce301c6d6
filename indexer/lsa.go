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
			attn.Matrix{Rows: c.QLoraRank, Cols: c.Hidden, Data: lw.wqA.float32s()}, lw.qNorm.float32s(),
			attn.Matrix{Rows: c.Heads * c.HeadDim, Cols: c.QLoraRank, Data: lw.wqB.float32s()},
			attn.Matrix{Rows: c.Heads, Cols: c.Hidden, Data: lw.wProj.float32s()}, opt)
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

// NewKeys returns an attn.KeyStore, which keeps the fp8 codes in the blocked layout the
// scoring kernel reads (prepared once, at append time).
func (m *Model) NewKeys() (Keys, error) {
	ks, err := attn.NewKeyStore(m.cfg.HeadDim)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	return ks, nil
}

// Score projects every item's query for every target layer (in parallel: at the published
// size one projection is ≈ 42 M multiply-adds) and then scores all (item, layer) pairs in
// one attn.Run, which spreads tiles of keys over all cores.
func (m *Model) Score(items []ScoreItem) error {
	queries, err := m.ProjectQueries(items)
	if err != nil {
		return err
	}
	return m.ScoreProjected(items, queries)
}

// ScoreProjected is Score with the queries already projected (queries[l][i], as
// ProjectQueries returns them): a scorer that projected elsewhere falls back to the CPU
// without projecting again.
func (m *Model) ScoreProjected(items []ScoreItem, queries [][]*attn.Query) error {
	nl := len(m.weights)
	variant := m.AttnVariant()
	tasks := make([]attn.Task, 0, len(items)*nl)
	for i, it := range items {
		for l := range nl {
			ks, ok := it.Keys[l].(*attn.KeyStore)
			if !ok {
				return fmt.Errorf("%w: item %d target layer %d: keys of type %T, not made by this model", ErrBatch, i, m.cfg.Layers[l], it.Keys[l])
			}
			b, err := attn.NewBatch(variant, queries[l][i])
			if err != nil {
				return fmt.Errorf("%w: item %d target layer %d: %w", ErrBadQuery, i, m.cfg.Layers[l], err)
			}
			tasks = append(tasks, attn.Task{Batch: b, Keys: ks, From: 0, To: ks.Len(), Out: it.Out[l]})
		}
	}
	if err := attn.Run(tasks); err != nil {
		return fmt.Errorf("%w: %w", ErrBatch, err)
	}
	return nil
}

// AttnVariant is the scoring variant of the model's configuration (trained float keys or
// the fp8-quantised query path).
func (m *Model) AttnVariant() attn.Variant {
	if m.cfg.Variant == VariantFP8Q {
		return attn.FP8Q
	}
	return attn.Float
}

// ProjectQueries checks the items' shapes and projects every item's query for every target
// layer: queries[l][i] is item i's query in target layer l. Scorers that run the scoring
// elsewhere (a GPU) share it. One projection pass per target layer for all items: the
// projections are bound by reading the weights, so a decoder batch of B requests costs
// little more than one (attn.LayerWeights.Queries).
func (m *Model) ProjectQueries(items []ScoreItem) ([][]*attn.Query, error) {
	return m.ProjectQueriesWith(items, nil)
}

// LayerWeights returns target layer l's query projection (read-only), for scorers that
// move the projections elsewhere (a GPU).
func (m *Model) LayerWeights(l int) *attn.LayerWeights { return m.weights[l] }

// ProjectQueriesWith is ProjectQueries with target layer l's matrix products done by
// projs[l] (nil, or a nil entry: on the CPU).
func (m *Model) ProjectQueriesWith(items []ScoreItem, projs []attn.Projector) ([][]*attn.Query, error) {
	nl := len(m.weights)
	for i, it := range items {
		if len(it.Query.Layers) != nl || len(it.Keys) != nl || len(it.Out) != nl {
			return nil, fmt.Errorf("%w: item %d has %d query layers, %d key stores, %d outputs; model has %d target layers",
				ErrBadQuery, i, len(it.Query.Layers), len(it.Keys), len(it.Out), nl)
		}
	}
	queries := make([][]*attn.Query, nl)
	for l := range nl {
		hid := make([][]byte, len(items))
		pos := make([]int64, len(items))
		for i, it := range items {
			hid[i], pos[i] = it.Query.Layers[l], it.Query.Position
		}
		var p attn.Projector
		if l < len(projs) {
			p = projs[l]
		}
		qs, err := m.weights[l].QueriesOn(p, hid, pos)
		if err != nil {
			return nil, fmt.Errorf("%w: target layer %d: %w", ErrBadQuery, m.cfg.Layers[l], err)
		}
		queries[l] = qs
	}
	return queries, nil
}
