// Package gpu scores Memory-Indexer chunks on a CUDA GPU: the Level-1 scorer of
// ../../../shared/LSA.md as one fused kernel (score.cu) batched over requests, reading index
// keys kept on the GPU. The CPU scorer in package attn stays the reference; this package
// takes the queries it prepares (attn.LayerWeights.Query) and computes the same logits.
//
// Use:
//
//	dev, _ := cuda.Open(0)
//	sc, _ := gpu.NewScorer(dev)                  // ErrNoCUDA in the default build
//	st, _ := dev.NewStream()
//	keys, _ := gpu.NewKeys(dev, capacity)        // one per request and target layer
//	keys.Append(raw)                             // 132-byte records, as attn.KeyStore takes
//	err := sc.Score(st, attn.Float, []gpu.Item{{Keys: keys, Queries: qs, Out: out}})
//
// Score packs the queries, uploads them, launches one kernel for all items and copies the
// logits back. Plan splits that into steps for callers that launch the same batch on their
// own streams (and for benchmarks). Keys are stored as two device arrays, fp8 codes
// [n][128] and float32 scales [n], so the kernel reads 16-byte aligned rows.
//
// The packing (fragment order, f16 hi/lo split, power-of-two head scaling) is plain Go in
// pack.go and is tested in every build against the CPU scorer through an emulation of the
// kernel's tensor-core fragments; the kernel itself is tested on the GPU machine
// (scripts/gpu-test.sh).
package gpu
