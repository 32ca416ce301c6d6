//go:build !amd64

package attn

const hasAVX2FMA = false

func kernelAVX2(k, q, w *float32, groups, d int, acc *float32) {}
