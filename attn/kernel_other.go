//go:build !amd64

package attn

const hasAVX2FMA = false

func kernelAVX2(k, q, w *float32, groups, d int, acc *float32) {}

func dotAVX2(a, b *float32, n int) float32 { return 0 }

func decodeFP8AVX2(dst *float32, src *uint8, n int) {}

func dotBF16AVX2(a *uint16, b *float32, n int) float32 { return 0 }
