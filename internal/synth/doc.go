// Package synth is a synthetic decoder's data: deterministic chunk payloads
// (so a reader can recompute any byte it should find in a page without
// keeping what it appended), valid LSA index keys and bf16 hidden states.
// The daemon's tests, the integration test of the real binary and
// `flashmemctl demo` all use it, so they agree on what correct bytes are.
package synth
