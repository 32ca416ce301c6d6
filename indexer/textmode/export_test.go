package textmode

import (
	"encoding/binary"
	"math"

	"github.com/flashmemory/flashmemory/internal/safetensors"
)

// f16ToF32ForTest decodes a half through internal/safetensors, the reader the
// model file uses, so the test checks writer and reader agree.
func f16ToF32ForTest(h uint16) float32 {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], h)
	v, err := safetensors.Tensor{Name: "x", DType: safetensors.F16, Shape: []int{1}, Data: b[:]}.Float32s()
	if err != nil {
		return float32(math.NaN())
	}
	return v[0]
}
