package gpu

// SelectPages is the CPU twin of the cycle's selection kernel (fm_cyc_select in cycle.cu),
// the same algorithm step by step, so that CPU tests hold the kernel's contract: pages
// [0, sinkPages) and [tailPage, len(scores)) are forced (always selected); of the others the
// `need` with the highest score are selected, ties at the cut going to the newer page
// (higher index); need ≤ 0 selects no other page, need ≥ the number of other pages selects
// them all. Scores are above-threshold chunk counts, 0 … cpp. It sets sel[p] for every page
// and returns how many are selected. This is indexer's Level-1 top-KMAX rule
// (docs/indexer.md, "Level-1 selection", steps 3–6); the CUDA tests compare the kernel with
// this function and the CPU tests compare this function with the indexer's selection.
func SelectPages(scores []uint8, sinkPages, tailPage, need, cpp int, sel []bool) int {
	pages := len(scores)
	forced := func(pg int) bool { return pg < sinkPages || pg >= tailPage }
	hist := make([]int, cpp+1)
	free := 0
	for pg, s := range scores {
		if !forced(pg) {
			hist[s]++
			free++
		}
	}
	cut, needCut := 0, need
	switch {
	case need <= 0:
		cut, needCut = 1<<31-1, 0
	case need >= free:
		cut, needCut = -1, 0
	default:
		for cut = cpp; cut >= 0; cut-- {
			if hist[cut] >= needCut {
				break
			}
			needCut -= hist[cut]
		}
	}
	n, taken := 0, 0
	for pg := pages - 1; pg >= 0; pg-- {
		s := int(scores[pg])
		var in bool
		switch {
		case forced(pg):
			in = true
		case s == cut:
			in = taken < needCut
			taken++
		default:
			in = s > cut
		}
		sel[pg] = in
		if in {
			n++
		}
	}
	return n
}

// ForcedPages returns the page bounds of the forced pages of a context of n chunks:
// pages [0, sinkPages) touch the sink [0, sinkEnd), pages [tailPage, pages) the tail
// [tailStart, n) (tailPage = pages when the tail is empty).
func ForcedPages(n, sinkEnd, tailStart, cpp int) (sinkPages, tailPage int) {
	pages := (n + cpp - 1) / cpp
	sinkPages = (sinkEnd + cpp - 1) / cpp
	tailPage = pages
	if tailStart < n {
		tailPage = tailStart / cpp
	}
	return min(sinkPages, pages), tailPage
}
