package indexer

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/flashmemory/flashmemory/attn"
	"github.com/flashmemory/flashmemory/internal/safetensors"
	"github.com/flashmemory/flashmemory/internal/sharedtest"
)

func repoRoot(t testing.TB) string { return sharedtest.RepoRoot(t) }

// goldenPath finds ../shared/testdata/indexer_golden.safetensors beside the checkout. In CI
// (env CI set) a missing file fails the test; elsewhere it skips.
func goldenPath(t testing.TB) string {
	t.Helper()
	p := sharedtest.Golden(t)
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
