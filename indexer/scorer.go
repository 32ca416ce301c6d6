package indexer

import (
	"errors"
	"fmt"
	"math"
)

// Scorer is a kind of indexer model. Selection, pages and lookahead only ever see one logit
// per chunk, so any model that maps (per-layer query bytes, per-layer chunk key bytes) to
// logits can plug in: the LSA Memory Indexer (Model) is one, a text-mode dual encoder can be
// another. A Scorer must be safe for concurrent use by many goroutines once built, and must
// be comparable (a pointer), because ScoreBatch groups requests by their Scorer.
type Scorer interface {
	// Layers names the target layers, in the order of per-layer keys, queries and logits.
	Layers() []int
	// KeyBytes is the fixed size of one chunk's key in one target layer.
	KeyBytes() int
	// QueryBytes is the size of one query in one target layer.
	QueryBytes() int
	// Ensemble is the default way to combine the target layers' scores.
	Ensemble() Ensemble
	// NewKeys returns an empty key store for one target layer. Requests append every
	// chunk's key to it once; the store may keep the keys in whatever layout scoring wants.
	NewKeys() (Keys, error)
	// Score fills, for every item and every target layer l, Out[l][c] with the logit of
	// chunk c of Keys[l] for the item's query. Items may belong to different requests; the
	// scorer should spread the work over all cores. Keys are the stores made by NewKeys.
	Score(items []ScoreItem) error
}

// Keys is an append-only store of one target layer's chunk keys, made by Scorer.NewKeys.
// It is owned by one Request and used by one goroutine at a time. *attn.KeyStore is the
// LSA model's implementation.
type Keys interface {
	// Append adds len(raw)/KeyBytes keys; len(raw) is a whole number of keys (the Request
	// checks). It may reject key bytes the model cannot use (say, a non-finite scale).
	Append(raw []byte) error
	// Len is the number of stored keys.
	Len() int
	// Truncate drops keys from index n on; the Request uses it to undo a partial append.
	Truncate(n int)
	// AppendRaw appends the original bytes of keys [first, first+n) ∩ [0, Len) to dst,
	// exactly as they were appended, so that a request can be persisted and restored.
	AppendRaw(dst []byte, first, n int) []byte
}

// Query is what a decoder sends once per cycle for one request: one opaque byte string per
// target layer (for the LSA model, the layer's hidden state as little-endian bf16) and the
// position of the current token.
type Query struct {
	Position int64
	Layers   [][]byte
}

// ScoreItem is one request's share of a batched Score call.
type ScoreItem struct {
	Query Query
	Keys  []Keys      // per target layer
	Out   [][]float32 // per target layer, len(Out[l]) == Keys[l].Len()
	// Expand is the request's Policy.Expand: whether the scorer may expand the query with
	// what a first pass kept (multi-hop). Scorers without an expansion ignore it.
	Expand Expansion
	// Tail is the first chunk of the request's recent tail (the last Policy.LastKeep
	// chunks, resident whatever the scores), 0 when the policy keeps no tail. A decoder's
	// tail holds what it has just written; the text-mode expansion does not follow links
	// onward from there. Scorers without an expansion ignore it.
	Tail int
}

// Ensemble says how per-layer scores combine into one score per chunk.
type Ensemble uint8

const (
	// EnsembleMax takes the maximum score over target layers (LSA default). Sigmoid is
	// monotonic, so it is the maximum logit.
	EnsembleMax Ensemble = iota
	// EnsembleMean averages the scores sigmoid(logit) over target layers; the result is
	// carried as the logit of that mean.
	EnsembleMean
)

// String returns "max" or "mean".
func (e Ensemble) String() string {
	switch e {
	case EnsembleMax:
		return "max"
	case EnsembleMean:
		return "mean"
	}
	return fmt.Sprintf("Ensemble(%d)", uint8(e))
}

// ParseEnsemble parses "max" or "mean".
func ParseEnsemble(s string) (Ensemble, error) {
	switch s {
	case "max":
		return EnsembleMax, nil
	case "mean":
		return EnsembleMean, nil
	}
	return 0, fmt.Errorf("%w: ensemble %q is not max or mean", ErrBadConfig, s)
}

// combine writes into dst the ensembled logit of every chunk of the per-layer logits.
func (e Ensemble) combine(dst []float32, layers [][]float32) {
	if len(layers) == 1 {
		copy(dst, layers[0])
		return
	}
	switch e {
	case EnsembleMean:
		inv := 1 / float64(len(layers))
		for c := range dst {
			var s float64
			for _, l := range layers {
				s += sigmoid(float64(l[c]))
			}
			dst[c] = float32(logit(s * inv))
		}
	default:
		// The builtin max propagates NaN, as torch.max does: a chunk with a NaN logit in any
		// layer (a key with a NaN scale) is not above threshold, as in the reference.
		copy(dst, layers[0])
		for _, l := range layers[1:] {
			l = l[:len(dst)]
			for c, v := range l {
				dst[c] = max(dst[c], v)
			}
		}
	}
}

func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// logit is the inverse of sigmoid; 0 and 1 map to ∓Inf, which compare correctly.
func logit(p float64) float64 { return math.Log(p / (1 - p)) }

// PageScorer is a Scorer that can also run the chunk-level half of Level-1 selection where
// it scores (a GPU): the ensemble over target layers, the threshold, each page's count of
// above-threshold chunks, the counters and the top-KMAX cut, so that only per-page results
// come back instead of every chunk's logit. ScoreBatch prefers ScorePages for a group of
// requests that share ensemble, threshold and page size; an error wrapping
// ErrPagesUnsupported hands the group to Score instead, any other error fails the batch.
// Request.Scores is empty after a cycle scored this way.
type PageScorer interface {
	Scorer
	ScorePages(items []PageItem, p PageParams) error
}

// PageParams are the selection parameters a PageScorer batch shares.
type PageParams struct {
	Ensemble       Ensemble
	ThresholdLogit float32 // a chunk is above when its ensembled logit exceeds this
	ChunksPerPage  int
}

// PageItem is one request's share of a ScorePages call. Forced pages (touching the sink
// [0, SinkEnd) or the tail [TailStart, n)) are always selected; of the other pages the Need
// with the most above-threshold chunks are, ties going to the newer page (docs/indexer.md,
// Level-1 selection, steps 3–6).
type PageItem struct {
	Query              Query
	Keys               []Keys // per target layer
	SinkEnd, TailStart int
	Need               int

	// Filled by ScorePages: per page (len ceil(n / ChunksPerPage)) its above-threshold
	// count and whether it is selected; the counts of above chunks overall and outside sink
	// and tail.
	PageScores                   []uint8
	Selected                     []bool
	AboveThreshold, AboveOutside int
}

// ErrPagesUnsupported (wrapped) from ScorePages: this batch is to be scored by Score.
var ErrPagesUnsupported = errors.New("indexer: page scoring not available for this batch")

// PageTierer is a Scorer that orders a cycle's free pages in tiers before their counts: after
// Score, Level-1 selection asks it for every page's tier and takes the free pages by (tier
// ascending, above-threshold count descending, newer first) instead of by count alone. The
// text-mode scorer uses it to rank the pages its multi-hop expansion reached by the round
// that reached them (docs/indexer.md, "Page tiers"). Scorers that do not implement it — the
// LSA Memory Indexer — keep the count-only rule, unchanged. ScoreBatch calls PageTiers for
// one request at a time, after its Score call; it need not be safe for concurrent use on
// the same Keys.
type PageTierer interface {
	Scorer
	// PageTiers fills tiers (one entry per page of ChunksPerPage chunks) for the request
	// whose per-layer keys were just scored and whose ensembled logits are scores; a chunk
	// counts as above threshold when its logit exceeds thresholdLogit. It may leave tiers
	// all zero (count-only ranking).
	PageTiers(keys []Keys, scores []float32, chunksPerPage int, thresholdLogit float32, tiers []uint8)
}
