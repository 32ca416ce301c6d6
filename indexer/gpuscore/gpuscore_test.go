//go:build !cuda

package gpuscore_test

import (
	"errors"
	"testing"

	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/indexer/gpuscore"
	"github.com/flashmemory/flashmemory/internal/cuda"
)

// Without the cuda tag there is no GPU scorer, only a clear error.
func TestWrapWithoutCUDA(t *testing.T) {
	m, err := indexer.RandomModel(1, indexer.ModelConfig{Layers: []int{0}, Hidden: 64, QLoraRank: 32, Heads: 8, HeadDim: 128})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gpuscore.Wrap(m, nil); !errors.Is(err, cuda.ErrNoCUDA) {
		t.Fatalf("Wrap: %v, want ErrNoCUDA", err)
	}
	m2, err := indexer.RandomModel(1, indexer.ModelConfig{Layers: []int{0}, Hidden: 64, QLoraRank: 32, Heads: 4, HeadDim: 128})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gpuscore.Wrap(m2, nil); !errors.Is(err, gpuscore.ErrShape) {
		t.Fatalf("Wrap of a 4-head model: %v, want ErrShape", err)
	}
}
