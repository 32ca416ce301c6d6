//go:build !cuda

package gpu

import (
	"github.com/flashmemory/flashmemory/attn"
	"github.com/flashmemory/flashmemory/internal/cuda"
)

// Projector does query projections on the GPU; this build has none.
type Projector struct{}

// NewProjector returns ErrNoCUDA in this build.
func NewProjector(dev *cuda.Device, lw *attn.LayerWeights) (*Projector, error) { return nil, ErrNoCUDA }

// Bytes returns 0 in this build.
func (p *Projector) Bytes() int64 { return 0 }

// Project returns ErrNoCUDA in this build.
func (p *Projector) Project(which attn.ProjMatrix, dst, xs [][]float32) error { return ErrNoCUDA }

// Close returns ErrNoCUDA in this build.
func (p *Projector) Close() error { return ErrNoCUDA }
