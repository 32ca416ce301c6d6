// Package attn holds the numeric kernels of the Memory Indexer (Lookahead Sparse
// Attention, see ../shared/LSA.md) and its CPU chunk scorer.
//
// The scalar kernels are the project's own, each tested on its own: bfloat16 and
// fp8 e4m3fn conversion with the rounding torch uses (BF16FromF32, FP8FromF32),
// RMSNorm, YaRN rotary embedding computed in the float32 operation order that the
// reference uses (YaRN), and the normalised Walsh–Hadamard transform.
//
// The scorer is split the way a serving daemon uses it:
//
//   - Query side. LayerWeights holds one target layer's projection weights (as
//     float32, or as bf16 when that is exact); LayerWeights.Query turns the
//     decoder's bf16 hidden state and the token position into a Query (per-head q
//     after bf16 rounding, RoPE and Hadamard; the head weights w; and the
//     fp8-quantised q with per-head scales for the fp8-q variant). This runs once
//     per layer per cycle; LayerWeights.Queries makes many queries in one pass
//     over the weights.
//   - Key side. KeyStore ingests raw compressed index keys (head dim fp8 bytes then
//     a little-endian float32 scale; 132 bytes for head dim 128), append-only, and
//     keeps them in the blocked layout the hot loop reads, so nothing is re-laid out
//     per cycle.
//   - Hot loop. NewBatch packs B queries of one variant; KeyStore.Logits scores them
//     against keys [from, to) on the calling goroutine; Run spreads many
//     (batch, key store, range) tasks over GOMAXPROCS goroutines.
//
// Per key k and query, the float variant computes Σ_h w_h·ReLU(q_h·k) with
// k = fp8(bytes)·scale, and the fp8-q variant scale·Σ_h w_h·qscale_h·ReLU(q8_h·fp8(bytes)).
// Both reduce to one GEMM-shaped kernel over the fp8-decoded keys followed by one
// multiplication by the key scale, which is how the store avoids keeping a second,
// dequantised copy of the keys. On amd64 with AVX2, FMA and F16C the kernels are
// Go assembly (chosen over simd/archsimd, which needs GOEXPERIMENT=simd, so that
// a plain go build gets the fast path; AVX-512 is deliberately not used, the
// target machines lack it); elsewhere a portable Go kernel with the same
// blocking computes the same values. Tests run and compare both.
//
// Typical use, per layer and cycle:
//
//	lw, _ := attn.NewLayerWeights(wqA, qNorm, wqB, wProj, attn.DefaultOptions)
//	ks, _ := attn.NewKeyStore(128)
//	_ = ks.Append(rawKeys)                 // as chunks arrive, 132 bytes each
//	q, _ := lw.Query(hiddenBF16, position) // once per cycle
//	b, _ := attn.NewBatch(attn.Float, q)
//	logits := make([]float32, ks.Len())
//	_ = attn.Run([]attn.Task{{Batch: b, Keys: ks, From: 0, To: ks.Len(), Out: logits}})
//	keep := attn.Sigmoid(logits[i]) > 0.5
package attn
