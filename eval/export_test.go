package eval

import (
	"testing"

	"github.com/flashmemory/flashmemory/indexer"
)

// selectOnce runs one Level-1 selection on logits through indexer.Request,
// the way evalQuery does for the baselines.
func selectOnce(t *testing.T, logits []float32, pol indexer.Policy) PageSet {
	t.Helper()
	req, err := indexer.NewRequest(countScorer{}, pol)
	if err != nil {
		t.Fatal(err)
	}
	if err := req.AppendKeys(0, [][]byte{make([]byte, len(logits))}); err != nil {
		t.Fatal(err)
	}
	c, err := req.Select(logits)
	if err != nil {
		t.Fatal(err)
	}
	return PageSet(c.Selected)
}

// countScorer is a one-byte-key scorer for selection-only tests: Select takes
// logits computed elsewhere, so its Score is never called.
type countScorer struct{}

func (countScorer) Layers() []int                         { return []int{0} }
func (countScorer) KeyBytes() int                         { return 1 }
func (countScorer) QueryBytes() int                       { return 1 }
func (countScorer) Ensemble() indexer.Ensemble            { return indexer.EnsembleMax }
func (countScorer) NewKeys() (indexer.Keys, error)        { return &countKeys{}, nil }
func (countScorer) Score(items []indexer.ScoreItem) error { return indexer.ErrBatch }

type countKeys struct{ n int }

func (k *countKeys) Append(raw []byte) error { k.n += len(raw); return nil }
func (k *countKeys) Len() int                { return k.n }
func (k *countKeys) Truncate(n int)          { k.n = min(k.n, n) }
func (k *countKeys) AppendRaw(dst []byte, first, n int) []byte {
	return append(dst, make([]byte, n)...)
}
