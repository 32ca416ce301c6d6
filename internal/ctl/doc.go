// Package ctl is flashmemctl, the operator's and tester's command line for
// flashmemd. Everything talks to the daemon through package proto, as any
// decoder would:
//
//   - status, sessions, inspect, evict: administration; sessions lists live
//     and persisted (on SSD only) sessions alike, and inspect/evict take
//     either.
//   - resume, persist, delete, verify: persisted sessions by name (VERIFY
//     reads every page back; exit 3 on damage, ErrDamaged).
//   - wait: returns once the daemon answers, so "flashmemd & flashmemctl
//     wait" is safe to paste.
//   - demo: a synthetic decoder that drives a long session through the real
//     socket (random-weight "demo" model, planted chunks).
//   - gen: RULER / LongMemEval-style recall datasets (eval.Generate).
//   - eval: recall of evidence at a KV footprint through real sessions of the
//     daemon's text-mode model — contexts streamed with text keys, a question
//     cycle, then answer windows with commits into the reserve's tail cells —
//     against recency, random and oracle selection computed client side over
//     the same chunks; --in-process runs the daemon-less cross-check.
//   - sim: the tiering simulator. It starts flashmemd once per mover mode
//     (lookahead staging, recall on demand, LRU-only) with a host budget of a
//     third of all pages, replays synthetic resident-set traces through the
//     daemon's trace-replay model from many concurrent sessions, and reports
//     stalls, tier hit rates and bytes moved (RunSim, for tests with any
//     Launcher).
//   - train: trains a text-mode model (textmode.Train) into safetensors.
//
// Errors a user can cause name the flag or command that fixes them (no
// daemon: start it or pass --socket; an unknown session: flashmemctl
// sessions); long work shows a progress bar on a terminal and a line per
// ~10 % otherwise. docs/evaluation.md documents the methods and the numbers.
package ctl
