package eval

import (
	"encoding/binary"
	"fmt"

	"github.com/flashmemory/flashmemory/indexer"
)

// Trace-replay model. The tiering simulator needs the daemon to select, at
// cycle k of a session, exactly the pages a trace says were resident then.
// TraceScorer does that with no knowledge of any trace: a chunk's key is a
// bitmask over cycles, the query is a cycle number, and the chunk's logit is
// +1 when the key has that cycle's bit set and −1 otherwise. The client that
// writes the keys (flashmemctl sim) therefore decides, per chunk and cycle,
// what is above threshold: every chunk of a page resident at cycle k, and one
// chunk of each page that the trace's next cycle adds (the score rising one
// cycle ahead, which is what the indexer's lookahead ranking watches).
const (
	// TraceKeyBytes is the size of a trace key: a 256-bit cycle mask.
	TraceKeyBytes = 32
	// TraceCycles is the number of cycles a trace key can describe.
	TraceCycles = 8 * TraceKeyBytes
	// TraceQueryBytes is the size of a trace query: the cycle as a
	// little-endian uint32.
	TraceQueryBytes = 4
)

// TraceScorer is the trace-replay indexer.Scorer. It is stateless and safe
// for concurrent use; the daemon registers one under the name "trace".
type TraceScorer struct{}

var _ indexer.Scorer = (*TraceScorer)(nil)

// Layers returns the single pseudo target layer 0.
func (*TraceScorer) Layers() []int { return []int{0} }

// KeyBytes is TraceKeyBytes.
func (*TraceScorer) KeyBytes() int { return TraceKeyBytes }

// QueryBytes is TraceQueryBytes.
func (*TraceScorer) QueryBytes() int { return TraceQueryBytes }

// Ensemble is irrelevant with one layer.
func (*TraceScorer) Ensemble() indexer.Ensemble { return indexer.EnsembleMax }

// NewKeys returns a store of raw trace keys.
func (*TraceScorer) NewKeys() (indexer.Keys, error) { return &traceKeys{}, nil }

// TraceQuery is the query bytes for cycle k.
func TraceQuery(k int) indexer.Query {
	return indexer.Query{Layers: [][]byte{binary.LittleEndian.AppendUint32(nil, uint32(k))}}
}

// SetTraceBit marks cycle k in a trace key (key must be TraceKeyBytes long).
func SetTraceBit(key []byte, k int) { key[k/8] |= 1 << (k % 8) }

// Score implements indexer.Scorer.
func (*TraceScorer) Score(items []indexer.ScoreItem) error {
	for i, it := range items {
		if len(it.Keys) != 1 || len(it.Out) != 1 || len(it.Query.Layers) != 1 {
			return fmt.Errorf("%w: item %d: the trace scorer has exactly one layer", ErrBadTrace, i)
		}
		q := it.Query.Layers[0]
		if len(q) != TraceQueryBytes {
			return fmt.Errorf("%w: item %d: query of %d B, want %d", ErrBadTrace, i, len(q), TraceQueryBytes)
		}
		k := binary.LittleEndian.Uint32(q)
		if k >= TraceCycles {
			return fmt.Errorf("%w: item %d: cycle %d past the %d a key describes", ErrBadTrace, i, k, TraceCycles)
		}
		tk, ok := it.Keys[0].(*traceKeys)
		if !ok {
			return fmt.Errorf("%w: item %d: keys not made by the trace scorer", ErrBadTrace, i)
		}
		out := it.Out[0]
		if len(out) != tk.Len() {
			return fmt.Errorf("%w: item %d: %d outputs for %d keys", ErrBadTrace, i, len(out), tk.Len())
		}
		byteOff, bit := int(k/8), byte(1)<<(k%8)
		for c := range out {
			if tk.raw[c*TraceKeyBytes+byteOff]&bit != 0 {
				out[c] = 1
			} else {
				out[c] = -1
			}
		}
	}
	return nil
}

type traceKeys struct{ raw []byte }

func (k *traceKeys) Append(raw []byte) error {
	if len(raw)%TraceKeyBytes != 0 {
		return fmt.Errorf("%w: %d key bytes is not a multiple of %d", ErrBadTrace, len(raw), TraceKeyBytes)
	}
	k.raw = append(k.raw, raw...)
	return nil
}
func (k *traceKeys) Len() int       { return len(k.raw) / TraceKeyBytes }
func (k *traceKeys) Truncate(n int) { k.raw = k.raw[:min(len(k.raw), n*TraceKeyBytes)] }
func (k *traceKeys) AppendRaw(dst []byte, first, n int) []byte {
	lo, hi := min(first, k.Len()), min(first+n, k.Len())
	return append(dst, k.raw[lo*TraceKeyBytes:hi*TraceKeyBytes]...)
}
