package attn

import "golang.org/x/sys/cpu"

// hasAVX2FMA reports whether the assembly kernel can run on this CPU.
var hasAVX2FMA = cpu.X86.HasAVX2 && cpu.X86.HasFMA && cpu.X86.HasF16C

// kernelAVX2 is kernelGo in AVX2/FMA assembly; d must be ≥ 1 and groups ≥ 0.
// next is only prefetched (2 cache lines per group), never read.
//
//go:noescape
func kernelAVX2(k, q, w *float32, groups, d int, acc *float32, next *uint8)

// decodeFP8AVX2 widens n fp8 codes (n a multiple of 8) to float32, mapping the
// NaN codes to ±480 (see the assembly).
//
//go:noescape
func decodeFP8AVX2(dst *float32, src *uint8, n int)

// dot4AVX2 sets out[v] = Σ_{i<n} a[i]·x[v·stride+i] for v < 4, in float64; n a
// multiple of 8.
//
//go:noescape
func dot4AVX2(a *float32, x *float64, stride, n int, out *float64)

// dot4BF16AVX2 is dot4AVX2 with a bf16 weight row.
//
//go:noescape
func dot4BF16AVX2(a *uint16, x *float64, stride, n int, out *float64)
