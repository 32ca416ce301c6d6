package indexer

import (
	"cmp"
	"slices"
)

// Cycle is the result of one selection cycle of one request. Page indices are uint32,
// page p covering chunks [p·ChunksPerPage, min((p+1)·ChunksPerPage, Chunks)). Every slice
// except Lookahead is sorted ascending and has no duplicates; all slices are freshly
// allocated and belong to the caller.
//
// The selection is applied one cycle late (LSA): during the cycle that starts now the decoder
// attends over Use, while the mover recalls Recall in the background; the next cycle's Use is
// this cycle's Selected plus whatever the tail has grown into.
type Cycle struct {
	// Cycle numbers the request's cycles from 1.
	Cycle uint64
	// Chunks and Pages are the context size this cycle saw.
	Chunks, Pages int

	// Use is the set the decoder uses during this cycle: the previous cycle's selection plus
	// the pages forced now (sink and the recent tail, which covers the chunks appended since
	// the previous cycle; those are resident from birth).
	Use []uint32
	// Selected is the new selection, to be recalled in the background and used next cycle.
	Selected []uint32
	// Recall is Selected − Use: the pages to copy into the reserve.
	Recall []uint32
	// Release is Use − Selected: pages that may be evicted once the decoder no longer uses
	// Use (i.e. once the lease of this cycle's reply is released).
	Release []uint32
	// Lookahead ranks, best first, pages outside Selected that are the most likely to enter
	// it at the next cycles, for staging SSD → host ahead of need. At most Policy.Lookahead.
	Lookahead []uint32

	// Scored is false when the request was in fallback before this cycle: nothing was scored
	// and the score counters below are zero.
	Scored bool
	// AboveThreshold counts chunks whose ensembled score exceeds the threshold (all chunks).
	AboveThreshold int
	// Outside counts chunks outside sink and tail; AboveOutside those of them above threshold.
	Outside, AboveOutside int
	// CumOutside and CumAboveOutside are the sums of Outside and AboveOutside over all scored
	// cycles of the request: the fallback fraction is CumAboveOutside / CumOutside.
	CumOutside, CumAboveOutside uint64
	// ForcedPages counts pages touching the sink or the tail.
	ForcedPages int
	// KMax is the page budget used this cycle. Selected may exceed it only when ForcedPages
	// does (forced pages always win) or in fallback.
	KMax int
	// Fallback says the request is in full residency (Selected = every page); FallbackNow says
	// it switched at this cycle.
	Fallback, FallbackNow bool
}

// AboveFraction is the fraction of chunks outside sink and tail that were above threshold in
// this cycle (0 when there were none).
func (c *Cycle) AboveFraction() float64 {
	if c.Outside == 0 {
		return 0
	}
	return float64(c.AboveOutside) / float64(c.Outside)
}

// CumAboveFraction is the cumulative fraction the fallback rule compares with FallbackRatio.
func (c *Cycle) CumAboveFraction() float64 {
	if c.CumOutside == 0 {
		return 0
	}
	return float64(c.CumAboveOutside) / float64(c.CumOutside)
}

// selector is the per-request selection state that survives between cycles. It knows nothing
// about models: it consumes one ensembled logit per chunk.
type selector struct {
	cycle      uint64
	cumAbove   uint64
	cumOutside uint64
	fallback   bool
	prev       []uint32  // previous selection, sorted
	ewma       []float32 // per page EWMA of page scores (lookahead trend)

	// scratch, reused across cycles
	pageScore []int32
	forced    []bool
	inSel     []bool
	hist      []int
	cand      []lookCand
	order     []uint32
}

type lookCand struct {
	page  uint32
	score int32
	prio  float32
}

// pageCount is ceil(n / cpp).
func pageCount(n, cpp int) int { return (n + cpp - 1) / cpp }

// sinkTail returns the chunk bounds [0, sinkEnd) of the sink and [tailStart, n) of the tail.
func sinkTail(n int, p *Policy) (sinkEnd, tailStart int) {
	sinkEnd = min(p.FirstKeep, n)
	tailStart = max(n-p.LastKeep, 0)
	return
}

// step runs one cycle. logits holds one ensembled logit per chunk, or is nil when the request
// is in fallback (nothing was scored).
func (s *selector) step(n int, logits []float32, p *Policy) *Cycle {
	return s.stepWith(n, logits, nil, nil, p)
}

// stepTiered is step with page tiers (a PageTierer's): free pages are taken by tier, then
// count (topKTiered).
func (s *selector) stepTiered(n int, logits []float32, tiers []uint8, p *Policy) *Cycle {
	return s.stepWith(n, logits, tiers, nil, p)
}

// stepPages runs one cycle on page results computed elsewhere (a PageScorer): page scores,
// counters and the top-KMAX cut; the fallback rule, the diffs and the lookahead run here.
func (s *selector) stepPages(n int, pi *PageItem, p *Policy) *Cycle {
	return s.stepWith(n, nil, nil, pi, p)
}

// forcedCount is the number of pages touching the sink or the tail of n chunks.
func forcedCount(n int, p *Policy) int {
	cpp := p.ChunksPerPage
	pages := pageCount(n, cpp)
	sinkEnd, tailStart := sinkTail(n, p)
	sinkPages := 0
	if sinkEnd > 0 {
		sinkPages = pageCount(sinkEnd, cpp)
	}
	tailFirst := pages
	if tailStart < n {
		tailFirst = tailStart / cpp
	}
	if tailFirst <= sinkPages {
		return pages
	}
	return sinkPages + pages - tailFirst
}

func (s *selector) stepWith(n int, logits []float32, tiers []uint8, pi *PageItem, p *Policy) *Cycle {
	cpp := p.ChunksPerPage
	pages := pageCount(n, cpp)
	s.cycle++
	c := &Cycle{Cycle: s.cycle, Chunks: n, Pages: pages, KMax: p.kmax(pages)}

	s.pageScore = growTo(s.pageScore, pages)
	s.forced = growTo(s.forced, pages)
	s.inSel = growTo(s.inSel, pages)
	clear(s.pageScore)
	clear(s.forced)
	clear(s.inSel)

	sinkEnd, tailStart := sinkTail(n, p)
	if sinkEnd > 0 {
		for pg := range pageCount(sinkEnd, cpp) {
			s.forced[pg] = true
		}
	}
	if tailStart < n {
		for pg := tailStart / cpp; pg < pages; pg++ {
			s.forced[pg] = true
		}
	}
	for _, f := range s.forced {
		if f {
			c.ForcedPages++
		}
	}

	if !s.fallback && pi != nil {
		c.Scored = true
		for pg := range pages {
			s.pageScore[pg] = int32(pi.PageScores[pg])
		}
		c.AboveThreshold = pi.AboveThreshold
		if sinkEnd < tailStart {
			c.Outside = tailStart - sinkEnd
			c.AboveOutside = pi.AboveOutside
		}
		s.cumOutside += uint64(c.Outside)
		s.cumAbove += uint64(c.AboveOutside)
		if s.cumOutside > 0 && float64(s.cumAbove) > p.FallbackRatio*float64(s.cumOutside) {
			s.fallback = true
			c.FallbackNow = true
		}
	} else if !s.fallback && logits != nil {
		c.Scored = true
		thr := p.thresholdLogit()
		for pg := range pages {
			lo, hi := pg*cpp, min((pg+1)*cpp, n)
			var cnt int32
			for _, l := range logits[lo:hi] {
				if l > thr {
					cnt++
				}
			}
			s.pageScore[pg] = cnt
			c.AboveThreshold += int(cnt)
		}
		if sinkEnd < tailStart {
			c.Outside = tailStart - sinkEnd
			for _, l := range logits[sinkEnd:tailStart] {
				if l > thr {
					c.AboveOutside++
				}
			}
		}
		s.cumOutside += uint64(c.Outside)
		s.cumAbove += uint64(c.AboveOutside)
		if s.cumOutside > 0 && float64(s.cumAbove) > p.FallbackRatio*float64(s.cumOutside) {
			s.fallback = true
			c.FallbackNow = true
		}
	}
	c.CumOutside, c.CumAboveOutside = s.cumOutside, s.cumAbove
	c.Fallback = s.fallback

	if s.fallback {
		for pg := range pages {
			s.inSel[pg] = true
		}
	} else if pi != nil {
		copy(s.inSel[:pages], pi.Selected)
	} else if tiers != nil && c.Scored {
		s.topKTiered(pages, c.KMax-c.ForcedPages, tiers)
	} else {
		s.topK(pages, c.KMax-c.ForcedPages, cpp)
	}

	c.Selected = make([]uint32, 0, min(pages, max(c.KMax, c.ForcedPages)))
	for pg, in := range s.inSel[:pages] {
		if in {
			c.Selected = append(c.Selected, uint32(pg))
		}
	}
	c.Use = unionForced(s.prev, s.forced[:pages])
	c.Recall = minus(c.Selected, c.Use)
	c.Release = minus(c.Use, c.Selected)
	if !s.fallback && c.Scored {
		c.Lookahead = s.lookahead(pages, p)
	}
	if c.Scored {
		s.updateEWMA(pages, p.LookaheadAlpha)
	}
	s.prev = append(s.prev[:0], c.Selected...)
	return c
}

// topK marks in s.inSel the forced pages plus the `need` best non-forced pages. Page scores
// are small integers (0 … ChunksPerPage), so a histogram finds the cut score in O(pages)
// without sorting. Ties at the cut go to newer pages (higher index): when the tail moves on,
// the page that just left it is resident already and usually ties with older pages, so
// preferring it avoids recalling an old page and releasing a resident one for no gain.
func (s *selector) topK(pages, need, cpp int) {
	s.hist = growTo(s.hist, cpp+1)
	hist := s.hist
	clear(hist)
	free := 0
	for pg := range pages {
		if s.forced[pg] {
			s.inSel[pg] = true
			continue
		}
		hist[s.pageScore[pg]]++
		free++
	}
	if need <= 0 {
		return
	}
	if need >= free {
		for pg := range pages {
			s.inSel[pg] = true
		}
		return
	}
	cut := cpp
	for ; cut >= 0; cut-- {
		if hist[cut] >= need {
			break
		}
		need -= hist[cut]
	}
	// Pages above the cut all go in; `need` pages at the cut, newest first.
	for pg := pages - 1; pg >= 0; pg-- {
		if s.forced[pg] {
			continue
		}
		sc := int(s.pageScore[pg])
		switch {
		case sc > cut:
			s.inSel[pg] = true
		case sc == cut && need > 0:
			s.inSel[pg] = true
			need--
		}
	}
}

// topKTiered marks in s.inSel the forced pages plus the `need` best non-forced pages by
// (tier ascending, page score descending, newer first). With every tier equal it selects
// exactly what topK does; it sorts, so it is O(pages·log pages), which only text-mode
// requests (PageTierer) pay.
func (s *selector) topKTiered(pages, need int, tiers []uint8) {
	s.order = s.order[:0]
	for pg := range pages {
		if s.forced[pg] {
			s.inSel[pg] = true
			continue
		}
		s.order = append(s.order, uint32(pg))
	}
	if need <= 0 {
		return
	}
	if need < len(s.order) {
		slices.SortFunc(s.order, func(a, b uint32) int {
			if c := cmp.Compare(tiers[a], tiers[b]); c != 0 {
				return c
			}
			if c := cmp.Compare(s.pageScore[b], s.pageScore[a]); c != 0 {
				return c
			}
			return cmp.Compare(b, a)
		})
		s.order = s.order[:need]
	}
	for _, pg := range s.order {
		s.inSel[pg] = true
	}
}

// lookahead ranks the pages outside the new selection by a one-step extrapolation of their
// page score, score + LookaheadTrend·(score − EWMA) (the score plus its trend against the
// EWMA of earlier cycles; a page seen for the first time has no trend). Pages with priority
// ≤ 0 are not candidates. Ties: higher current score, then newer page.
func (s *selector) lookahead(pages int, p *Policy) []uint32 {
	if p.Lookahead == 0 {
		return nil
	}
	// Only the best Lookahead candidates are kept, in order, as they are found: sorting
	// every candidate cost O(pages·log pages) per request and cycle (0.2–0.5 ms at
	// 2,048–4,096 pages, more than a GPU cycle's share of a request).
	k := p.Lookahead
	s.cand = s.cand[:0]
	trend := float32(p.LookaheadTrend)
	order := func(a, b lookCand) int {
		if c := cmp.Compare(b.prio, a.prio); c != 0 {
			return c
		}
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		return cmp.Compare(b.page, a.page)
	}
	for pg := range pages {
		if s.inSel[pg] {
			continue
		}
		sc := s.pageScore[pg]
		prev := float32(sc)
		if pg < len(s.ewma) {
			prev = s.ewma[pg]
		}
		prio := float32(sc) + trend*(float32(sc)-prev)
		if !(prio > 0) {
			continue
		}
		c := lookCand{page: uint32(pg), score: sc, prio: prio}
		if len(s.cand) == k && order(c, s.cand[k-1]) >= 0 {
			continue
		}
		i, _ := slices.BinarySearchFunc(s.cand, c, order)
		if len(s.cand) < k {
			s.cand = append(s.cand, lookCand{})
		}
		copy(s.cand[i+1:], s.cand[i:len(s.cand)-1])
		s.cand[i] = c
	}
	out := make([]uint32, 0, len(s.cand))
	for _, c := range s.cand {
		out = append(out, c.page)
	}
	return out
}

func (s *selector) updateEWMA(pages int, alpha float64) {
	old := len(s.ewma)
	s.ewma = growTo(s.ewma, pages)
	a := float32(alpha)
	for pg := range pages {
		sc := float32(s.pageScore[pg])
		if pg >= old {
			s.ewma[pg] = sc
			continue
		}
		s.ewma[pg] = a*sc + (1-a)*s.ewma[pg]
	}
}

// growTo returns b with length n, reusing its storage when it is large enough.
func growTo[T any](b []T, n int) []T {
	if cap(b) >= n {
		return b[:n]
	}
	nb := make([]T, n, max(n, 2*cap(b)))
	copy(nb, b)
	return nb
}

// unionForced merges the sorted page list prev with the pages marked in forced.
func unionForced(prev []uint32, forced []bool) []uint32 {
	out := make([]uint32, 0, len(prev)+8)
	i := 0
	for pg, f := range forced {
		for i < len(prev) && prev[i] < uint32(pg) {
			out = append(out, prev[i])
			i++
		}
		if f {
			out = append(out, uint32(pg))
			if i < len(prev) && prev[i] == uint32(pg) {
				i++
			}
		}
	}
	return append(out, prev[i:]...)
}

// minus returns the sorted a − b of two sorted lists.
func minus(a, b []uint32) []uint32 {
	out := make([]uint32, 0)
	j := 0
	for _, x := range a {
		for j < len(b) && b[j] < x {
			j++
		}
		if j < len(b) && b[j] == x {
			continue
		}
		out = append(out, x)
	}
	return out
}
