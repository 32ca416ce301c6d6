// Package tiertest is the conformance suite every tiers.Tier implementation
// passes: the reserve (regions and the multi-session Reserve), the host mirror,
// the SSD tier and the Store. An implementation's test calls Run with a
// factory for empty tiers and the page size and sessions it accepts:
//
//	tiertest.Run(t, tiertest.Config{New: newTier, PageBytes: 8192, Sessions: []uint64{1, 2}})
//
// The suite checks the contract documented on tiers.Tier: round trips with
// generations, misses, size errors, deletes, per-session isolation, counters,
// context cancellation, behaviour after Close, concurrent use, readers racing
// a writer of the same page (no torn pages) and, when Reopen is set,
// persistence. A new tier (the CUDA reserve, a pinned mirror) passes it before
// the daemon uses it.
package tiertest
