package textmode

// Page tiers. At a small footprint (32K tokens at 10 %: eight free pages) a
// chain's later links count one or two chunks above threshold and lose to
// pages that expansion noise lights with more, when selection ranks free pages
// by count alone. The text mode therefore ranks them in tiers before counts
// (indexer.PageTierer): the pages the query itself matches, then pages reached
// by a strong link of expansion round 1, 2, 3 (a term that names one thing,
// see expand), then pages reached only by weak links, then the rest. Within a
// tier the count and then the newer page decide, as before.
const (
	tierWeak  = 254
	tierUnlit = 255
)

// PageTiers fills tiers (one per page of cpp chunks) from a scored context's
// logits and the expansion round that lit each chunk (ScoreOptions.Reached):
// a page's tier is the best of its above-threshold chunks' (0 for a chunk the
// query kept, r for one a strong link of round r reached, 254 for one only a
// weak link reached); a page with no chunk above thr gets 255. With reached
// all zero (no expansion) every lit page is tier 0 and the ranking is the
// count-only one.
func PageTiers(logits []float32, reached []uint8, cpp int, thr float32, tiers []uint8) {
	for pg := range tiers {
		t := uint8(tierUnlit)
		for c := pg * cpp; c < min((pg+1)*cpp, len(logits)); c++ {
			if !(logits[c] > thr) {
				continue
			}
			r := reached[c]
			if r&ReachedWeak != 0 {
				r = tierWeak
			}
			t = min(t, r)
		}
		tiers[pg] = t
	}
}
