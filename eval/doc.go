// Package eval measures whether FlashMemory keeps what a model needs: recall
// of evidence at a given KV footprint, against the baselines the LSA report
// uses (recency, random) and an oracle.
//
// It holds the dataset format (JSONL records {"id", "task", "context",
// "queries": [{"question", "answer", "evidence"}]}, read streaming by Reader,
// which names the line of any bad record), the generators of RULER- and
// LongMemEval-style tasks (Generate), the mapping of evidence strings to chunk
// ranges (Doc), the metrics (PageSet, Tally: recall_all, recall_any,
// footprint), and an in-process harness (Run) that scores every context with
// the text-mode model through indexer Level-1 selection — the same selection
// the daemon runs — without a daemon.
//
// Typical use:
//
//	eval.Generate(w, eval.GenOptions{Seed: 1, Tokens: 128 << 10, Records: 2})
//	rep, err := eval.Run(eval.NewReader(r), eval.RunOptions{Model: m})
//	rep.WriteTable(os.Stdout)
//
// flashmemctl gen wraps Generate; flashmemctl eval drives the same decode
// loop through real flashmemd sessions over the socket (text keys as index
// keys, the text query as CYCLE bytes) and computes the baselines client side
// with PrepareQuery, BaselineLogits and a Collector; `flashmemctl eval
// --in-process` runs Run as its cross-check. TraceScorer is the trace-replay
// model the daemon registers for flashmemctl sim.
package eval
