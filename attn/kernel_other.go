//go:build !amd64

package attn

// Only amd64 has the assembly kernels; hasAVX2FMA keeps them from being called.
const hasAVX2FMA = false

func kernelAVX2(k, q, w *float32, groups, d int, acc *float32, next *uint8) {}
func decodeFP8AVX2(dst *float32, src *uint8, n int)                         {}
func dot4AVX2(a *float32, x *float64, stride, n int, out *float64)          {}
func dot4BF16AVX2(a *uint16, x *float64, stride, n int, out *float64)       {}
