//go:build !cuda

package tiers

import (
	"fmt"

	"github.com/flashmemory/flashmemory/internal/cuda"
)

// CUDABackend is the GPU backend in cuda builds; in this build every region it would create
// fails with cuda.ErrNoCUDA.
func CUDABackend(dev *cuda.Device) Backend { return noCUDABackend{} }

type noCUDABackend struct{}

func (noCUDABackend) newMemory(name string, size int64) (regionMemory, error) {
	return nil, fmt.Errorf("cuda region %q: %w", name, cuda.ErrNoCUDA)
}
