package attn

import "golang.org/x/sys/cpu"

// hasAVX2FMA reports whether the assembly kernel can run on this CPU.
var hasAVX2FMA = cpu.X86.HasAVX2 && cpu.X86.HasFMA && cpu.X86.HasF16C

// kernelAVX2 is kernelGo in AVX2/FMA assembly; d must be ≥ 1 and groups ≥ 0.
//
//go:noescape
func kernelAVX2(k, q, w *float32, groups, d int, acc *float32)

// dotAVX2 returns Σ a[i]·b[i] for n a multiple of 32.
//
//go:noescape
func dotAVX2(a, b *float32, n int) float32

// decodeFP8AVX2 widens n fp8 codes (n a multiple of 8) to float32, mapping the
// NaN codes to ±480 (see the assembly).
//
//go:noescape
func decodeFP8AVX2(dst *float32, src *uint8, n int)

// dotBF16AVX2 returns Σ bf16(a[i])·b[i] for n a multiple of 32.
//
//go:noescape
func dotBF16AVX2(a *uint16, b *float32, n int) float32
