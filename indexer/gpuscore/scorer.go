package gpuscore

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flashmemory/flashmemory/attn"
	"github.com/flashmemory/flashmemory/attn/gpu"
	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/internal/cuda"
)

// ErrShape: the kernel is built for 128-dimensional index heads, 8 to 256 of them in
// multiples of 8.
var ErrShape = errors.New("gpuscore: the GPU kernel scores 128-dim index heads, 8 to 256 heads in multiples of 8")

// Scorer is an indexer.Scorer that scores on one GPU.
type Scorer struct {
	m   *indexer.Model
	dev *cuda.Device
	sc  *gpu.Scorer
	// projs do the query projections on the GPU, one per target layer (nil entries: the
	// layer projects on the CPU, its matrix shapes do not suit the kernel).
	projs     []attn.Projector
	gpuProjs  []*gpu.Projector
	projBytes int64
	// cycle runs whole cycles (ScorePages) on the GPU; nil when the model's shapes do not
	// suit it (more than gpu.MaxCycleLayers target layers), then ScorePages defers to Score.
	cycle *gpu.Cycle

	mu         sync.Mutex // one batch at a time, and Close waits for it
	st         *cuda.Stream
	closed     bool // after Close batches score on the CPU
	closedFlag atomic.Bool

	gpuBatches, cpuBatches atomic.Uint64
	lastErr                atomic.Pointer[error]
	// cumulative wall time of the GPU path's steps, nanoseconds
	tProject, tSync, tKernel, tCycle, tPages atomic.Int64
	pageBatches                              atomic.Uint64
}

// Timings is where the GPU path's time went, summed over every call: for Score, query
// projection, bringing key copies up to date, and the kernel with its upload and the copy
// of the logits back; for ScorePages (whole cycles), key sync as above, the cycle's wall
// time (Cycle) and its device time from input copy to output copy (GPU, CUDA events).
type Timings struct {
	Project, Sync, Kernel time.Duration
	Cycle, GPU            time.Duration
	CycleBatches          int64
	// Pages is the wall time of whole ScorePages calls (key sync, cycle, result copies).
	Pages time.Duration
	// Inside Cycle: packing inputs, enqueueing and waiting for the device, unpacking.
	Fill, Wait, Collect time.Duration
}

// Timings returns the cumulative step times.
func (s *Scorer) Timings() Timings {
	t := Timings{Project: time.Duration(s.tProject.Load()), Sync: time.Duration(s.tSync.Load()), Kernel: time.Duration(s.tKernel.Load()),
		Cycle: time.Duration(s.tCycle.Load()), Pages: time.Duration(s.tPages.Load())}
	if s.cycle != nil {
		t.GPU, t.CycleBatches = s.cycle.GPUTime()
		t.Fill, t.Wait, t.Collect = s.cycle.HostTimes()
	}
	return t
}

var _ indexer.Scorer = (*Scorer)(nil)

// Wrap returns a Scorer for m on dev. Close releases the kernel and stream (the
// requests' key copies are released by Request.Close).
func Wrap(m *indexer.Model, dev *cuda.Device) (*Scorer, error) {
	if c := m.Config(); c.HeadDim != gpu.HeadDim || c.Heads < 8 || c.Heads > 256 || c.Heads%8 != 0 {
		return nil, fmt.Errorf("%w (model has %d heads of dim %d)", ErrShape, c.Heads, c.HeadDim)
	}
	sc, err := gpu.NewScorer(dev)
	if err != nil {
		return nil, err
	}
	st, err := dev.NewStream()
	if err != nil {
		sc.Close()
		return nil, err
	}
	s := &Scorer{m: m, dev: dev, sc: sc, st: st}
	for l := range m.Layers() {
		p, err := gpu.NewProjector(dev, m.LayerWeights(l))
		if err != nil {
			if errors.Is(err, gpu.ErrShape) {
				s.projs = append(s.projs, nil) // this layer projects on the CPU
				continue
			}
			s.Close()
			return nil, err
		}
		s.gpuProjs = append(s.gpuProjs, p)
		s.projs = append(s.projs, p)
		s.projBytes += p.Bytes()
	}
	lws := make([]*attn.LayerWeights, len(m.Layers()))
	share := make([]*gpu.Projector, len(lws))
	for l := range lws {
		lws[l] = m.LayerWeights(l)
		share[l], _ = s.projs[l].(*gpu.Projector)
	}
	// Without the whole-cycle path (shapes it cannot take, or its kernels fail to load)
	// batches still score on the GPU through Score; the reason is kept as the last error.
	// The cycle uses the projectors' matrices: one copy of the weights on the GPU.
	if c, err := gpu.NewCycle(dev, lws, m.AttnVariant(), share); err == nil {
		s.cycle = c
		s.projBytes += c.Bytes()
	} else {
		err = fmt.Errorf("gpuscore: whole-cycle path off: %w", err)
		s.lastErr.Store(&err)
	}
	return s, nil
}

// ProjectionBytes is the GPU memory the query projection matrices take.
func (s *Scorer) ProjectionBytes() int64 { return s.projBytes }

// Model is the wrapped CPU model.
func (s *Scorer) Model() *indexer.Model { return s.m }

// Device is the GPU the scorer runs on.
func (s *Scorer) Device() *cuda.Device { return s.dev }

// Close unloads the kernel and destroys the stream.
func (s *Scorer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.closedFlag.Store(true)
	errs := []error{s.st.Close(), s.sc.Close()}
	if s.cycle != nil {
		errs = append(errs, s.cycle.Close())
	}
	for _, p := range s.gpuProjs {
		errs = append(errs, p.Close())
	}
	s.gpuProjs, s.projs = nil, nil
	return errors.Join(errs...)
}

// Layers implements indexer.Scorer.
func (s *Scorer) Layers() []int { return s.m.Layers() }

// KeyBytes implements indexer.Scorer.
func (s *Scorer) KeyBytes() int { return s.m.KeyBytes() }

// QueryBytes implements indexer.Scorer.
func (s *Scorer) QueryBytes() int { return s.m.QueryBytes() }

// Ensemble implements indexer.Scorer.
func (s *Scorer) Ensemble() indexer.Ensemble { return s.m.Ensemble() }

var _ indexer.PageScorer = (*Scorer)(nil)

// ScorePages implements indexer.PageScorer: the whole cycle of every item (query
// projections, RMSNorm, RoPE, Hadamard, scoring of every target layer, ensemble, threshold,
// page scores, counters, top-KMAX cut) runs on the GPU, and only per-page results come
// back. A GPU failure is recorded and handed back as indexer.ErrPagesUnsupported, so the
// batch goes through Score (GPU scoring, then the CPU).
func (s *Scorer) ScorePages(items []indexer.PageItem, p indexer.PageParams) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.cycle == nil || p.ChunksPerPage < 1 || p.ChunksPerPage > gpu.MaxCycleChunksPerPage {
		return fmt.Errorf("%w: GPU cycle not available (closed %v, page of %d chunks)", indexer.ErrPagesUnsupported, s.closed, p.ChunksPerPage)
	}
	t0 := time.Now()
	defer func() { s.tPages.Add(int64(time.Since(t0))) }()
	reqs := make([]*gpu.CycleRequest, len(items))
	for i, it := range items {
		cr := &gpu.CycleRequest{Hidden: it.Query.Layers, Position: it.Query.Position, SinkEnd: it.SinkEnd, TailStart: it.TailStart, Need: it.Need}
		for l, k := range it.Keys {
			gk, ok := k.(*keys)
			if !ok || gk.s != s {
				return fmt.Errorf("%w: item %d target layer %d: keys of type %T, not made by this scorer", indexer.ErrBatch, i, l, k)
			}
			if err := gk.sync(); err != nil {
				s.lastErr.Store(&err)
				return fmt.Errorf("%w: %w", indexer.ErrPagesUnsupported, err)
			}
			cr.Keys = append(cr.Keys, gk.dev)
		}
		reqs[i] = cr
	}
	t1 := time.Now()
	s.tSync.Add(int64(t1.Sub(t0)))
	err := s.cycle.Run(reqs, gpu.CycleParams{Mean: p.Ensemble == indexer.EnsembleMean, ThresholdLogit: p.ThresholdLogit, ChunksPerPage: p.ChunksPerPage})
	s.tCycle.Add(int64(time.Since(t1)))
	if err != nil {
		s.lastErr.Store(&err)
		return fmt.Errorf("%w: %w", indexer.ErrPagesUnsupported, err)
	}
	for i, cr := range reqs {
		items[i].PageScores, items[i].Selected = cr.PageScores, cr.Selected
		items[i].AboveThreshold, items[i].AboveOutside = cr.AboveThreshold, cr.AboveOutside
	}
	s.gpuBatches.Add(1)
	s.pageBatches.Add(1)
	return nil
}

// Stats counts batches scored on the GPU and batches that fell back to the CPU, and
// returns the last GPU error (nil if none).
func (s *Scorer) Stats() (gpuBatches, cpuBatches uint64, lastErr error) {
	if p := s.lastErr.Load(); p != nil {
		lastErr = *p
	}
	return s.gpuBatches.Load(), s.cpuBatches.Load(), lastErr
}

// keys is one request's target-layer keys: the model's CPU store (authoritative) and a
// GPU copy brought up to date before each score.
type keys struct {
	s   *Scorer
	cpu *attn.KeyStore
	dev *gpu.Keys // nil until the first score
}

var (
	_ indexer.Keys = (*keys)(nil)
	_ io.Closer    = (*keys)(nil)
)

// NewKeys implements indexer.Scorer.
func (s *Scorer) NewKeys() (indexer.Keys, error) {
	k, err := s.m.NewKeys()
	if err != nil {
		return nil, err
	}
	return &keys{s: s, cpu: k.(*attn.KeyStore)}, nil
}

// Append stores the keys on the CPU and copies them to the GPU at once (as they arrive,
// so that a session's first cycle does not upload its whole context while other
// sessions' cycles wait). A GPU failure here only drops the GPU copy: the next score
// brings it up to date again.
func (k *keys) Append(raw []byte) error {
	if err := k.cpu.Append(raw); err != nil {
		return err
	}
	if k.s.cycle != nil && !k.s.isClosed() {
		if err := k.sync(); err != nil {
			k.s.lastErr.Store(&err)
			if k.dev != nil {
				d := k.dev
				k.dev = nil
				_ = d.Close()
			}
		}
	}
	return nil
}
func (k *keys) Len() int { return k.cpu.Len() }
func (k *keys) AppendRaw(dst []byte, first, n int) []byte {
	return k.cpu.AppendRaw(dst, first, n)
}

func (k *keys) Truncate(n int) {
	k.cpu.Truncate(n)
	if k.dev != nil {
		k.dev.Truncate(n)
	}
}

// isClosed reports whether Close has run (batches then score on the CPU), without
// waiting for a batch in progress.
func (s *Scorer) isClosed() bool { return s.closedFlag.Load() }

// Close frees the GPU copy.
func (k *keys) Close() error {
	if k.dev == nil {
		return nil
	}
	d := k.dev
	k.dev = nil
	return d.Close()
}

// sync brings the GPU copy up to the CPU store, growing it (doubling, fresh upload) when
// the keys outgrow its capacity.
func (k *keys) sync() error {
	n := k.cpu.Len()
	if k.dev != nil && n > k.dev.Cap() {
		d := k.dev
		k.dev = nil // freed once, even if Close fails
		if err := d.Close(); err != nil {
			return err
		}
	}
	if k.dev == nil {
		d, err := gpu.NewKeys(k.s.dev, max(2*n, 4096))
		if err != nil {
			return err
		}
		k.dev = d
	}
	return k.dev.SyncFrom(k.cpu)
}

// Score implements indexer.Scorer: queries projected on the CPU, every (item, target layer)
// pair scored in one kernel launch. If the GPU fails, the batch is scored on the CPU.
func (s *Scorer) Score(items []indexer.ScoreItem) error {
	// One batch at a time, start to end: the projectors and the stream are shared, and
	// Close must not free them under a batch.
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, it := range items {
		for l, k := range it.Keys {
			if gk, ok := k.(*keys); !ok || gk.s != s {
				return fmt.Errorf("%w: item %d target layer %d: keys of type %T, not made by this scorer", indexer.ErrBatch, i, l, k)
			}
		}
	}
	if s.closed {
		s.cpuBatches.Add(1)
		return s.m.Score(cpuItems(items))
	}
	t0 := time.Now()
	queries, err := s.m.ProjectQueriesWith(items, s.projs)
	s.tProject.Add(int64(time.Since(t0)))
	if err != nil {
		// A bad query fails on the CPU too; anything else was the GPU's.
		var cerr error
		if queries, cerr = s.m.ProjectQueries(items); cerr != nil {
			return cerr
		}
	} else {
		err = s.scoreGPU(items, queries)
	}
	if err != nil {
		s.lastErr.Store(&err)
		s.cpuBatches.Add(1)
		return s.m.ScoreProjected(cpuItems(items), queries)
	}
	s.gpuBatches.Add(1)
	return nil
}

// cpuItems is items with the CPU key stores in place of the GPU-backed ones (the CPU
// fallback's input); the keys are known to be ours.
func cpuItems(items []indexer.ScoreItem) []indexer.ScoreItem {
	out := make([]indexer.ScoreItem, len(items))
	for i, it := range items {
		out[i] = it
		out[i].Keys = make([]indexer.Keys, len(it.Keys))
		for l, k := range it.Keys {
			out[i].Keys[l] = k.(*keys).cpu
		}
	}
	return out
}

// scoreGPU runs with s.mu held.
func (s *Scorer) scoreGPU(items []indexer.ScoreItem, queries [][]*attn.Query) error {
	var batch []gpu.Item
	t0 := time.Now()
	for i, it := range items {
		for l, k := range it.Keys {
			gk := k.(*keys)
			if gk.cpu.Len() == 0 {
				continue
			}
			if err := gk.sync(); err != nil {
				return err
			}
			batch = append(batch, gpu.Item{Keys: gk.dev, Queries: []*attn.Query{queries[l][i]}, Out: it.Out[l][:gk.cpu.Len()]})
		}
	}
	t1 := time.Now()
	s.tSync.Add(int64(t1.Sub(t0)))
	if len(batch) == 0 {
		return nil
	}
	err := s.sc.Score(s.st, s.m.AttnVariant(), batch)
	s.tKernel.Add(int64(time.Since(t1)))
	return err
}
