package indexer

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/flashmemory/flashmemory/attn"
	"github.com/flashmemory/flashmemory/internal/safetensors"
)

// repoRoot walks up from the test's directory to the directory holding go.mod.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// goldenPath finds ../shared/testdata/indexer_golden.safetensors beside the checkout. In CI
// (env CI set) a missing file fails the test; elsewhere it skips.
func goldenPath(t testing.TB) string {
	t.Helper()
	p := filepath.Join(repoRoot(t), "..", "shared", "testdata", "indexer_golden.safetensors")
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("golden file missing in CI: %v", err)
		}
		t.Skipf("golden file not found: %v", err)
	}
	return p
}

// halfTensor converts an F32 tensor to BF16 or F16.
func halfTensor(t safetensors.Tensor, dt safetensors.DType) safetensors.Tensor {
	n := len(t.Data) / 4
	out := make([]byte, 2*n)
	for i := range n {
		f := math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
		var h uint16
		if dt == safetensors.BF16 {
			h = attn.BF16FromF32(f)
		} else {
			h = f16FromF32(f)
		}
		binary.LittleEndian.PutUint16(out[2*i:], h)
	}
	t.DType, t.Data = dt, out
	return t
}

// f16FromF32 rounds a normal-range float32 to IEEE half (enough for test weights).
func f16FromF32(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	a := math.Abs(float64(f))
	if a < math.Ldexp(1, -14) { // subnormal half: value / 2^-24
		return sign | uint16(math.RoundToEven(a/math.Ldexp(1, -24)))
	}
	e := math.Floor(math.Log2(a))
	m := math.RoundToEven((a/math.Exp2(e) - 1) * 1024)
	if m == 1024 {
		m, e = 0, e+1
	}
	return sign | uint16(e+15)<<10 | uint16(m)
}
