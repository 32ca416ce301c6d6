package textmode

import (
	"fmt"

	"github.com/flashmemory/flashmemory/indexer"
)

// Scorer adapts a text-mode model to indexer.Scorer: one pseudo target layer
// whose chunk keys are text-mode keys (AppendChunkKeys) and whose query bytes
// are a serialised Query (AppendBinary). Selection, pages and lookahead then
// run unchanged in indexer.Request — in the daemon, where it is registered as
// a model kind, and in the in-process evaluation. The lexical signal takes its
// IDF over all of a request's keys, which the Request holds, so scoring a
// context needs nothing beyond what the daemon already keeps per session.
type Scorer struct {
	Model *Model
}

var _ indexer.PageTierer = (*Scorer)(nil)

// Layers returns the single pseudo target layer 0.
func (s *Scorer) Layers() []int { return []int{0} }

// KeyBytes is the model's chunk key size.
func (s *Scorer) KeyBytes() int { return s.Model.KeyBytes() }

// QueryBytes is the model's serialised query size.
func (s *Scorer) QueryBytes() int { return s.Model.QueryBytes() }

// Ensemble is irrelevant with one layer; max.
func (s *Scorer) Ensemble() indexer.Ensemble { return indexer.EnsembleMax }

// NewKeys returns a key store that keeps the raw key bytes.
func (s *Scorer) NewKeys() (indexer.Keys, error) {
	return &textKeys{m: s.Model, kb: s.Model.KeyBytes()}, nil
}

// Query serialises a text-mode query for indexer.ScoreBatch (one layer; the
// position is irrelevant to the text model).
func (s *Scorer) Query(q *Query) indexer.Query {
	return indexer.Query{Layers: [][]byte{q.AppendBinary(nil, s.Model.Config())}}
}

// Score scores every item's chunks (the model spreads a context over all cores),
// expanding each query over DefaultHops hops unless its policy turns
// expansion off (indexer.ExpandOff).
func (s *Scorer) Score(items []indexer.ScoreItem) error {
	for i, it := range items {
		if len(it.Keys) != 1 || len(it.Out) != 1 || len(it.Query.Layers) != 1 {
			return fmt.Errorf("%w: item %d: text-mode scorer has exactly one layer", ErrBadQuery, i)
		}
		q, err := s.Model.ParseQuery(it.Query.Layers[0])
		if err != nil {
			return fmt.Errorf("item %d: %w", i, err)
		}
		tk, ok := it.Keys[0].(*textKeys)
		if !ok {
			return fmt.Errorf("%w: item %d: keys not made by this scorer", ErrBadKey, i)
		}
		opts := ScoreOptions{}
		if it.Expand.On(true) {
			opts.Hops = DefaultHops
			tk.reached = growTo(tk.reached, tk.Len())
			opts.Reached = tk.reached
			opts.Tail = it.Tail
		} else {
			tk.reached = tk.reached[:0]
		}
		if err := s.Model.ScoreWith(q, tk.raw, it.Out[0], opts); err != nil {
			return fmt.Errorf("item %d: %w", i, err)
		}
	}
	return nil
}

type textKeys struct {
	m   *Model
	kb  int
	raw []byte
	// reached is the expansion round that lit each chunk in the last Score
	// (ScoreOptions.Reached), empty when that Score did not expand.
	reached []uint8
}

func growTo[T any](b []T, n int) []T {
	if cap(b) >= n {
		return b[:n]
	}
	return make([]T, n)
}

func (k *textKeys) Append(raw []byte) error {
	if err := k.m.CheckKeys(raw); err != nil {
		return err
	}
	k.raw = append(k.raw, raw...)
	return nil
}

func (k *textKeys) Len() int       { return len(k.raw) / k.kb }
func (k *textKeys) Truncate(n int) { k.raw = k.raw[:min(len(k.raw), n*k.kb)] }
func (k *textKeys) AppendRaw(dst []byte, first, n int) []byte {
	return append(dst, k.raw[first*k.kb:(first+n)*k.kb]...)
}

// PageTiers implements indexer.PageTierer: a page's tier is the earliest
// expansion round that lit one of its above-threshold chunks (0: the query
// itself), so selection takes the pages the question matches, then those one
// hop away, then two, each by count (PageTier).
func (s *Scorer) PageTiers(keys []indexer.Keys, scores []float32, cpp int, thr float32, tiers []uint8) {
	if len(keys) != 1 {
		return
	}
	tk, ok := keys[0].(*textKeys)
	if !ok || len(tk.reached) != len(scores) {
		return
	}
	PageTiers(scores, tk.reached, cpp, thr, tiers)
}
