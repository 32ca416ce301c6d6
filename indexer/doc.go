// Package indexer decides, once per cycle of decode steps, which KV pages of a long-context
// request stay in GPU memory: the Memory Indexer of Lookahead Sparse Attention
// (../shared/LSA.md) and its Level-1 selection, plus a ranked list of pages worth staging
// from SSD ahead of need. docs/indexer.md describes the policy and the lookahead ranking.
//
// # Pieces
//
//   - A Scorer is a model kind: it turns per-layer query bytes and per-chunk key bytes into one
//     logit per chunk and target layer. Model, the LSA Memory Indexer, is one (weights from
//     LoadModel or RandomModel); other kinds (a text-mode dual encoder) implement the same
//     interface. Selection never looks at anything but the logits.
//   - A Request is one decoder request's state: every chunk's keys per target layer (appended
//     incrementally, contiguous), the previous selection, the fallback counters and the
//     lookahead trend. It persists with MarshalBinary / UnmarshalBinary.
//   - ScoreBatch scores many requests in one call (all cores), ensembles the target layers
//     (max or mean) and runs Level-1 selection for each, returning a Cycle per request.
//   - A Cycle carries the set the decoder uses now (the previous selection plus sink and
//     tail: selection applies one cycle late), the new selection, the diff (Recall, Release),
//     the lookahead candidates and the counters.
//
// # Use
//
//	m, err := indexer.LoadModel("indexer.safetensors", indexer.LoadOptions{})
//	// or, for tests and demos: indexer.RandomModel(seed, indexer.PublishedConfig())
//	p := indexer.DefaultPolicy()            // LSA defaults; lower LastKeep/FirstKeep for short contexts
//	req, err := indexer.NewRequest(m, p)
//	err = req.AppendKeys(req.Len(), perLayerKeys) // [layer][n·132 bytes], prefill and decode
//	cycles, err := indexer.ScoreBatch([]*indexer.Request{req}, []indexer.Query{{
//		Position: pos, Layers: perLayerHiddenBF16, // [layer][2·hidden bytes]
//	}})
//	c := cycles[0] // c.Use now; recall c.Recall in the background; stage c.Lookahead
//
// Models are immutable and shared; a Request is owned by one goroutine, and ScoreBatch must
// not be given a request another goroutine is using. Page indices are uint32; page p holds
// chunks [p·ChunksPerPage, (p+1)·ChunksPerPage). Every error wraps one of the package's
// sentinel errors.
//
// # Model files
//
// LoadModel reads safetensors with tensors l{N}.wq_a [R, hidden], l{N}.wq_b [H·head_dim, R],
// l{N}.q_norm_weight [R] and l{N}.weights_proj [H, hidden] per target layer N (F32, BF16 or
// F16) and optional string metadata (layers, dimensions, RoPE constants, ensemble, variant).
// scripts/convert_checkpoint.py writes them from the published PyTorch state dict
// (retrievers.l{N}.{wq_a.weight, wq_b.weight, q_norm_weight, weights_proj.weight}).
package indexer
