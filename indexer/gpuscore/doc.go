// Package gpuscore runs the LSA Memory Indexer's Level-1 scoring on a GPU: Wrap turns an
// *indexer.Model into an indexer.Scorer whose requests keep a copy of their index keys in
// GPU memory (appended as chunks arrive, freed by Request.Close) and whose Score projects
// the queries on the CPU, exactly as the model does, then scores every (request, target
// layer) pair of a batch with one launch of the attn/gpu kernel.
//
// The CPU key stores stay authoritative: persistence (AppendRaw), Truncate and the CPU
// fallback read them. A batch the GPU fails to score is scored on the CPU instead and
// counted (Stats), so a sick GPU degrades speed, not answers. flashmemd wraps its LSA
// models with it on CUDA builds when a GPU is present ([gpu] scorer).
//
// In builds without the cuda tag Wrap returns cuda.ErrNoCUDA.
package gpuscore
