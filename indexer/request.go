package indexer

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// Request is the indexer state of one decoder request (session): every chunk's keys in every
// target layer, and the selection state carried from cycle to cycle (previous selection,
// fallback counters, lookahead trend). It is not safe for concurrent use: one goroutine owns
// it, and ScoreBatch must not run on a request that another goroutine is using.
type Request struct {
	model    Scorer
	policy   Policy
	ensemble Ensemble
	keys     []Keys
	n        int
	sel      selector

	// per-cycle scratch, reused
	logits [][]float32 // per target layer
	scores []float32   // ensembled logits of the last scored cycle
	tiers  []uint8     // page tiers of the last scored cycle (PageTierer models only)
}

// NewRequest returns an empty request scored by model under policy, with the model's
// ensemble mode.
func NewRequest(model Scorer, policy Policy) (*Request, error) {
	if model == nil {
		return nil, fmt.Errorf("%w: nil model", ErrBadConfig)
	}
	if err := policy.Validate(); err != nil {
		return nil, err
	}
	nl := len(model.Layers())
	if nl == 0 || model.KeyBytes() <= 0 {
		return nil, fmt.Errorf("%w: model has %d target layers and %d key bytes", ErrBadConfig, nl, model.KeyBytes())
	}
	r := &Request{model: model, policy: policy, ensemble: model.Ensemble(), keys: make([]Keys, nl), logits: make([][]float32, nl)}
	for l := range r.keys {
		k, err := model.NewKeys()
		if err != nil {
			return nil, fmt.Errorf("target layer %d: %w", model.Layers()[l], err)
		}
		r.keys[l] = k
	}
	return r, nil
}

// Model returns the scorer the request was made for.
func (r *Request) Model() Scorer { return r.model }

// Policy returns the request's policy.
func (r *Request) Policy() Policy { return r.policy }

// SetEnsemble overrides the model's ensemble mode for this request.
func (r *Request) SetEnsemble(e Ensemble) error {
	if e != EnsembleMax && e != EnsembleMean {
		return fmt.Errorf("%w: ensemble %d", ErrBadConfig, e)
	}
	r.ensemble = e
	return nil
}

// Len is the number of chunks whose keys have been appended.
func (r *Request) Len() int { return r.n }

// Pages is the number of pages of the current context (the last one may be partial).
func (r *Request) Pages() int { return pageCount(r.n, r.policy.ChunksPerPage) }

// Cycles is the number of selection cycles run so far.
func (r *Request) Cycles() uint64 { return r.sel.cycle }

// Fallback reports whether the request has switched to full residency for good.
func (r *Request) Fallback() bool { return r.sel.fallback }

// Selected returns a copy of the latest selection (the set the next cycle's decoder uses,
// before the tail grows), sorted.
func (r *Request) Selected() []uint32 { return append([]uint32(nil), r.sel.prev...) }

// Scores returns the ensembled logit of every chunk computed by the last ScoreBatch that
// scored this request (Select does not set it). The slice is reused by the next cycle;
// copy it to keep it.
func (r *Request) Scores() []float32 { return r.scores }

// AppendKeys ingests the keys of chunks first, first+1, … for every target layer:
// perLayerKeys[l] holds the keys of target layer l (Scorer.Layers order), KeyBytes each,
// the same number of chunks in every layer. Chunks arrive contiguously: first must equal
// Len() (a smaller first is a duplicate, a larger one a gap; both are errors naming the
// chunk index). On error nothing is appended.
func (r *Request) AppendKeys(first int, perLayerKeys [][]byte) error {
	if first < r.n {
		return fmt.Errorf("%w: chunk %d appended again (have %d chunks)", ErrKeyDuplicate, first, r.n)
	}
	if first > r.n {
		return fmt.Errorf("%w: chunk %d appended after chunk %d (missing %d…%d)", ErrKeyGap, first, r.n-1, r.n, first-1)
	}
	if len(perLayerKeys) != len(r.keys) {
		return fmt.Errorf("%w: keys for %d target layers, model has %d", ErrKeyLength, len(perLayerKeys), len(r.keys))
	}
	kb := r.model.KeyBytes()
	count := -1
	for l, b := range perLayerKeys {
		if len(b)%kb != 0 {
			return fmt.Errorf("%w: target layer %d (index %d): %d bytes is not a multiple of %d (chunk %d)",
				ErrKeyLength, r.model.Layers()[l], l, len(b), kb, first+len(b)/kb)
		}
		if count >= 0 && len(b)/kb != count {
			return fmt.Errorf("%w: target layer %d (index %d) has %d chunks, layer %d has %d",
				ErrKeyLength, r.model.Layers()[l], l, len(b)/kb, r.model.Layers()[0], count)
		}
		count = len(b) / kb
	}
	if count > r.policy.MaxChunks-r.n {
		return fmt.Errorf("%w: %d + %d chunks exceeds MaxChunks %d", ErrTooManyChunks, r.n, count, r.policy.MaxChunks)
	}
	if count == 0 {
		return nil
	}
	for l, b := range perLayerKeys {
		if err := r.keys[l].Append(b); err != nil {
			for _, k := range r.keys[:l+1] {
				k.Truncate(r.n)
			}
			return fmt.Errorf("%w: target layer %d, chunks %d…%d: %w", ErrBadKey, r.model.Layers()[l], first, first+count-1, err)
		}
	}
	r.n += count
	return nil
}

// SelectionState is a saved copy of a request's selection state: the cycle count, the
// fallback counters, the previous selection and the lookahead averages (Checkpoint,
// Rollback). Reuse one per request: its slices keep their capacity.
type SelectionState struct {
	cycle, cumAbove, cumOutside uint64
	fallback                    bool
	prev                        []uint32
	ewma                        []float32
}

// Checkpoint saves the selection state into st, so that a cycle whose result the caller
// cannot use (say, its pages found no room) can be undone with Rollback. Keys are not
// part of it (Truncate undoes appends).
func (r *Request) Checkpoint(st *SelectionState) {
	s := &r.sel
	st.cycle, st.cumAbove, st.cumOutside, st.fallback = s.cycle, s.cumAbove, s.cumOutside, s.fallback
	st.prev = append(st.prev[:0], s.prev...)
	st.ewma = append(st.ewma[:0], s.ewma...)
}

// Rollback restores the selection state saved by Checkpoint: the next ScoreBatch behaves
// as if the cycles since were never run.
func (r *Request) Rollback(st *SelectionState) {
	s := &r.sel
	s.cycle, s.cumAbove, s.cumOutside, s.fallback = st.cycle, st.cumAbove, st.cumOutside, st.fallback
	s.prev = append(s.prev[:0], st.prev...)
	s.ewma = append(s.ewma[:0], st.ewma...)
}

// Close releases what the request's key stores hold outside the Go heap (GPU copies of the
// keys: key stores that implement io.Closer). The request must not be used afterwards.
func (r *Request) Close() error {
	var errs []error
	for _, k := range r.keys {
		if c, ok := k.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

// Truncate drops the keys of chunks n, n+1, … again: the undo of an AppendKeys whose chunks
// the caller then failed to store. It is meant for chunks appended since the last cycle;
// n ≥ Len() does nothing.
func (r *Request) Truncate(n int) {
	if n < 0 || n >= r.n {
		return
	}
	for _, k := range r.keys {
		k.Truncate(n)
	}
	r.n = n
}

// Select runs one selection cycle on per-chunk ensembled logits computed elsewhere (one per
// chunk, len == Len()). ScoreBatch is the usual way in; Select serves evaluation tools and
// models scored outside this package. In fallback, logits may be nil.
func (r *Request) Select(logits []float32) (*Cycle, error) {
	if r.sel.fallback {
		return r.sel.step(r.n, nil, &r.policy), nil
	}
	if len(logits) != r.n {
		return nil, fmt.Errorf("%w: %d scores for %d chunks", ErrScores, len(logits), r.n)
	}
	return r.sel.step(r.n, logits, &r.policy), nil
}

// ScoreBatch runs one cycle for many requests at once: it scores every request's chunks
// against its query (queries[i] belongs to reqs[i]) in one batched call per model, spread
// over all cores, ensembles the target layers and runs Level-1 selection. Requests in
// fallback are not scored (they keep every page). Results are in request order. On error no
// request's state has changed.
func ScoreBatch(reqs []*Request, queries []Query) ([]*Cycle, error) {
	if len(reqs) != len(queries) {
		return nil, fmt.Errorf("%w: %d requests, %d queries", ErrBatch, len(reqs), len(queries))
	}
	seen := make(map[*Request]int, len(reqs))
	groups := make(map[Scorer][]ScoreItem)
	greqs := make(map[Scorer][]*Request)
	var order []Scorer
	for i, r := range reqs {
		if r == nil {
			return nil, fmt.Errorf("%w: request %d is nil", ErrBatch, i)
		}
		if j, dup := seen[r]; dup {
			return nil, fmt.Errorf("%w: requests %d and %d are the same request", ErrBatch, j, i)
		}
		seen[r] = i
		if r.sel.fallback {
			continue
		}
		if err := r.checkQuery(queries[i]); err != nil {
			return nil, fmt.Errorf("request %d: %w", i, err)
		}
		for l := range r.logits {
			r.logits[l] = growTo(r.logits[l], r.n)
		}
		if _, ok := groups[r.model]; !ok {
			order = append(order, r.model)
		}
		_, tail := sinkTail(r.n, &r.policy)
		if tail >= r.n {
			tail = 0
		}
		groups[r.model] = append(groups[r.model], ScoreItem{Query: queries[i], Keys: r.keys, Out: r.logits, Expand: r.policy.Expand, Tail: tail})
		greqs[r.model] = append(greqs[r.model], r)
	}
	// Groups score concurrently: each has its own scorer (a model on one GPU each, on a
	// host whose sessions sit on several GPUs), and scorers are safe for concurrent use.
	paged := make([]map[*Request]*PageItem, len(order))
	errs := make([]error, len(order))
	run := func(g int) {
		m := order[g]
		paged[g] = map[*Request]*PageItem{}
		if ps, ok := m.(PageScorer); ok {
			done, err := scorePages(ps, groups[m], greqs[m], paged[g])
			if err != nil || done {
				errs[g] = err
				return
			}
		}
		errs[g] = m.Score(groups[m])
	}
	if len(order) == 1 {
		run(0)
	} else {
		var wg sync.WaitGroup
		for g := range order {
			wg.Go(func() { run(g) })
		}
		wg.Wait()
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	out := make([]*Cycle, len(reqs))
	for i, r := range reqs {
		if r.sel.fallback {
			out[i] = r.sel.step(r.n, nil, &r.policy)
			continue
		}
		if pi := pagedFor(paged, r); pi != nil {
			r.scores = r.scores[:0]
			out[i] = r.sel.stepPages(r.n, pi, &r.policy)
			continue
		}
		r.scores = growTo(r.scores, r.n)
		r.ensemble.combine(r.scores, r.logits)
		if pt, ok := r.model.(PageTierer); ok {
			r.tiers = growTo(r.tiers, r.Pages())
			clear(r.tiers)
			pt.PageTiers(r.keys, r.scores, r.policy.ChunksPerPage, r.policy.thresholdLogit(), r.tiers)
			out[i] = r.sel.stepTiered(r.n, r.scores, r.tiers, &r.policy)
			continue
		}
		out[i] = r.sel.step(r.n, r.scores, &r.policy)
	}
	return out, nil
}

func pagedFor(paged []map[*Request]*PageItem, r *Request) *PageItem {
	for _, m := range paged {
		if pi := m[r]; pi != nil {
			return pi
		}
	}
	return nil
}

// scorePages runs a group's requests through ps.ScorePages when they share ensemble,
// threshold and page size and none asks for query expansion (a PageScorer scores the
// query alone); done is false when the group is left to Score.
func scorePages(ps PageScorer, items []ScoreItem, group []*Request, paged map[*Request]*PageItem) (done bool, err error) {
	r0 := group[0]
	params := PageParams{Ensemble: r0.ensemble, ThresholdLogit: r0.policy.thresholdLogit(), ChunksPerPage: r0.policy.ChunksPerPage}
	pis := make([]PageItem, len(items))
	for i, r := range group {
		if r.ensemble != params.Ensemble || r.policy.thresholdLogit() != params.ThresholdLogit || r.policy.ChunksPerPage != params.ChunksPerPage || r.n == 0 ||
			r.policy.Expand == ExpandOn {
			return false, nil
		}
		sinkEnd, tailStart := sinkTail(r.n, &r.policy)
		pages := pageCount(r.n, r.policy.ChunksPerPage)
		need := r.policy.kmax(pages) - forcedCount(r.n, &r.policy)
		pis[i] = PageItem{Query: items[i].Query, Keys: items[i].Keys, SinkEnd: sinkEnd, TailStart: tailStart, Need: need}
	}
	if err := ps.ScorePages(pis, params); err != nil {
		if errors.Is(err, ErrPagesUnsupported) {
			return false, nil
		}
		return false, err
	}
	for i, r := range group {
		paged[r] = &pis[i]
	}
	return true, nil
}

func (r *Request) checkQuery(q Query) error {
	if q.Position < 0 {
		return fmt.Errorf("%w: position %d < 0", ErrBadQuery, q.Position)
	}
	if len(q.Layers) != len(r.keys) {
		return fmt.Errorf("%w: %d target layers, model has %d", ErrBadQuery, len(q.Layers), len(r.keys))
	}
	qb := r.model.QueryBytes()
	for l, b := range q.Layers {
		if len(b) != qb {
			return fmt.Errorf("%w: target layer %d: %d bytes, want %d", ErrBadQuery, r.model.Layers()[l], len(b), qb)
		}
	}
	return nil
}
