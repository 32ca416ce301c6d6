package attn

import "golang.org/x/sys/cpu"

// hasAVX2FMA reports whether the assembly kernel can run on this CPU.
var hasAVX2FMA = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// kernelAVX2 is kernelGo in AVX2/FMA assembly; d must be ≥ 1 and groups ≥ 0.
//
//go:noescape
func kernelAVX2(k, q, w *float32, groups, d int, acc *float32)
