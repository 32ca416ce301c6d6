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

// PinnedAllocator is the pinned host mirror allocator in cuda builds; in this build every
// extent it would map fails with cuda.ErrNoCUDA.
func PinnedAllocator(dev *cuda.Device) Allocator { return noCUDAAllocator{} }

type noCUDAAllocator struct{}

func (noCUDAAllocator) alloc(n int) ([]byte, error) {
	return nil, fmt.Errorf("pinned mirror extent of %d B: %w", n, cuda.ErrNoCUDA)
}

func (noCUDAAllocator) free(b []byte) error { return cuda.ErrNoCUDA }

// CUDAWriteStats counts writes into GPU regions in cuda builds; there are none here.
func CUDAWriteStats() (pinned, staged uint64) { return 0, 0 }
