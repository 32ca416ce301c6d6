package eval

import (
	"fmt"

	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/indexer/textmode"
)

// TextScorer adapts a text-mode model to indexer.Scorer: one pseudo target
// layer whose chunk keys are textmode keys and whose query bytes are a
// serialised textmode.Query. Selection, pages and lookahead then run unchanged
// in indexer.Request, as they will in the daemon.
type TextScorer struct {
	Model *textmode.Model
}

var _ indexer.Scorer = (*TextScorer)(nil)

// Layers returns the single pseudo target layer 0.
func (s *TextScorer) Layers() []int { return []int{0} }

// KeyBytes is the model's chunk key size.
func (s *TextScorer) KeyBytes() int { return s.Model.KeyBytes() }

// QueryBytes is the model's serialised query size.
func (s *TextScorer) QueryBytes() int { return s.Model.QueryBytes() }

// Ensemble is irrelevant with one layer; max.
func (s *TextScorer) Ensemble() indexer.Ensemble { return indexer.EnsembleMax }

// NewKeys returns a key store that keeps the raw key bytes.
func (s *TextScorer) NewKeys() (indexer.Keys, error) {
	return &textKeys{m: s.Model, kb: s.Model.KeyBytes()}, nil
}

// Query serialises a text-mode query for indexer.ScoreBatch.
func (s *TextScorer) Query(q *textmode.Query) indexer.Query {
	return indexer.Query{Layers: [][]byte{q.AppendBinary(nil, s.Model.Config())}}
}

// Score scores every item's chunks (the model spreads a context over all cores).
func (s *TextScorer) Score(items []indexer.ScoreItem) error {
	for i, it := range items {
		if len(it.Keys) != 1 || len(it.Out) != 1 || len(it.Query.Layers) != 1 {
			return fmt.Errorf("%w: item %d: text-mode scorer has exactly one layer", textmode.ErrBadQuery, i)
		}
		q, err := s.Model.ParseQuery(it.Query.Layers[0])
		if err != nil {
			return fmt.Errorf("item %d: %w", i, err)
		}
		tk, ok := it.Keys[0].(*textKeys)
		if !ok {
			return fmt.Errorf("%w: item %d: keys not made by this scorer", textmode.ErrBadKey, i)
		}
		if err := s.Model.Score(q, tk.raw, it.Out[0]); err != nil {
			return fmt.Errorf("item %d: %w", i, err)
		}
	}
	return nil
}

type textKeys struct {
	m   *textmode.Model
	kb  int
	raw []byte
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
