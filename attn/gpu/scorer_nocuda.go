//go:build !cuda

package gpu

import (
	"github.com/flashmemory/flashmemory/attn"
	"github.com/flashmemory/flashmemory/internal/cuda"
)

// Keys holds index keys on the GPU; this build has none.
type Keys struct{}

// NewKeys returns ErrNoCUDA in this build.
func NewKeys(dev *cuda.Device, capacity int) (*Keys, error) { return nil, ErrNoCUDA }

// Len returns 0 in this build.
func (k *Keys) Len() int { return 0 }

// Cap returns 0 in this build.
func (k *Keys) Cap() int { return 0 }

// Append returns ErrNoCUDA in this build.
func (k *Keys) Append(raw []byte) error { return ErrNoCUDA }

// SyncFrom returns ErrNoCUDA in this build.
func (k *Keys) SyncFrom(ks *attn.KeyStore) error { return ErrNoCUDA }

// Truncate does nothing in this build.
func (k *Keys) Truncate(n int) {}

// Close returns ErrNoCUDA in this build.
func (k *Keys) Close() error { return ErrNoCUDA }

// Scorer launches the scoring kernel; this build has none.
type Scorer struct{}

// NewScorer returns ErrNoCUDA in this build.
func NewScorer(dev *cuda.Device) (*Scorer, error) { return nil, ErrNoCUDA }

// Close returns ErrNoCUDA in this build.
func (s *Scorer) Close() error { return ErrNoCUDA }

// Item is one key set scored against its queries; Out receives [len(Queries)][Keys.Len()].
type Item struct {
	Keys    *Keys
	Queries []*attn.Query
	Out     []float32
}

// Plan is a packed, uploaded batch; this build has none.
type Plan struct{}

// Plan returns ErrNoCUDA in this build.
func (s *Scorer) Plan(v attn.Variant, items []Item) (*Plan, error) { return nil, ErrNoCUDA }

// Launch returns ErrNoCUDA in this build.
func (p *Plan) Launch(st *cuda.Stream) error { return ErrNoCUDA }

// Fetch returns ErrNoCUDA in this build.
func (p *Plan) Fetch(st *cuda.Stream) error { return ErrNoCUDA }

// Close returns ErrNoCUDA in this build.
func (p *Plan) Close() error { return ErrNoCUDA }

// Score returns ErrNoCUDA in this build.
func (s *Scorer) Score(st *cuda.Stream, v attn.Variant, items []Item) error { return ErrNoCUDA }
