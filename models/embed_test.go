package models

import (
	"testing"

	"github.com/flashmemory/flashmemory/indexer/textmode"
)

// TestTextModeDefault checks the embedded model: within the 16 MB the
// binary may carry, and a valid text-mode model with 132-byte keys.
func TestTextModeDefault(t *testing.T) {
	if n := len(TextModeDefault); n == 0 || n > 16<<20 {
		t.Fatalf("embedded model is %d bytes, want 1 … 16 MiB", n)
	}
	m, err := textmode.Load(TextModeDefault)
	if err != nil {
		t.Fatal(err)
	}
	if m.KeyBytes() != 132 {
		t.Errorf("key bytes %d, want 132", m.KeyBytes())
	}
}
