//go:build !cuda

package gpu

import (
	"time"

	"github.com/flashmemory/flashmemory/attn"
	"github.com/flashmemory/flashmemory/internal/cuda"
)

// Cycle runs whole Memory-Indexer cycles on a GPU; this build has none.
type Cycle struct{}

// NewCycle returns ErrNoCUDA in this build.
func NewCycle(dev *cuda.Device, layers []*attn.LayerWeights, v attn.Variant, share []*Projector) (*Cycle, error) {
	return nil, ErrNoCUDA
}

// Bytes returns 0 in this build.
func (c *Cycle) Bytes() int64 { return 0 }

// GPUTime returns zeros in this build.
func (c *Cycle) GPUTime() (time.Duration, int64) { return 0, 0 }

// Close returns ErrNoCUDA in this build.
func (c *Cycle) Close() error { return ErrNoCUDA }

// Run returns ErrNoCUDA in this build.
func (c *Cycle) Run(reqs []*CycleRequest, p CycleParams) error { return ErrNoCUDA }

// HostTimes returns zeros in this build.
func (c *Cycle) HostTimes() (fill, wait, collect time.Duration) { return 0, 0, 0 }
