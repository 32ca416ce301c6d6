package indexer

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

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
	nl := len(m.weights)
	variant := attn.Float
	if m.cfg.Variant == VariantFP8Q {
		variant = attn.FP8Q
	}
	type job struct{ item, layer int }
	jobs := make([]job, 0, len(items)*nl)
	for i, it := range items {
		if len(it.Query.Layers) != nl || len(it.Keys) != nl || len(it.Out) != nl {
			return fmt.Errorf("%w: item %d has %d query layers, %d key stores, %d outputs; model has %d target layers",
				ErrBadQuery, i, len(it.Query.Layers), len(it.Keys), len(it.Out), nl)
		}
		for l := range nl {
			jobs = append(jobs, job{i, l})
		}
	}
	tasks := make([]attn.Task, len(jobs))
	errs := make([]error, len(jobs))
	parallel(len(jobs), func(j int) {
		it, l := items[jobs[j].item], jobs[j].layer
		ks, ok := it.Keys[l].(*attn.KeyStore)
		if !ok {
			errs[j] = fmt.Errorf("%w: item %d target layer %d: keys of type %T, not made by this model", ErrBatch, jobs[j].item, m.cfg.Layers[l], it.Keys[l])
			return
		}
		q, err := m.weights[l].Query(it.Query.Layers[l], it.Query.Position)
		if err != nil {
			errs[j] = fmt.Errorf("%w: item %d target layer %d: %w", ErrBadQuery, jobs[j].item, m.cfg.Layers[l], err)
			return
		}
		b, err := attn.NewBatch(variant, q)
		if err != nil {
			errs[j] = fmt.Errorf("%w: item %d target layer %d: %w", ErrBadQuery, jobs[j].item, m.cfg.Layers[l], err)
			return
		}
		tasks[j] = attn.Task{Batch: b, Keys: ks, From: 0, To: ks.Len(), Out: it.Out[l]}
	})
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	if err := attn.Run(tasks); err != nil {
		return fmt.Errorf("%w: %w", ErrBatch, err)
	}
	return nil
}

// parallel runs f(0) … f(n−1) on up to GOMAXPROCS goroutines.
func parallel(n int, f func(int)) {
	workers := min(runtime.GOMAXPROCS(0), n)
	if workers <= 1 {
		for i := range n {
			f(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		})
	}
	wg.Wait()
}
