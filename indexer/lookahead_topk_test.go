package indexer

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

// The lookahead keeps its best Lookahead candidates as it scans; the list must be exactly the
// first Lookahead of all candidates sorted by (priority, score, page) descending — with ties
// in priority and score everywhere (many pages at one score) and none.
func TestLookaheadTopKEqualsFullSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	for tc := range 200 {
		pages := 1 + rng.IntN(3000)
		s := &selector{pageScore: make([]int32, pages), inSel: make([]bool, pages), ewma: make([]float32, rng.IntN(pages+1))}
		levels := 1 + rng.IntN(65)
		for pg := range pages {
			s.pageScore[pg] = int32(rng.IntN(levels))
			s.inSel[pg] = rng.IntN(10) == 0
		}
		for i := range s.ewma {
			s.ewma[i] = float32(rng.IntN(levels))
		}
		p := DefaultPolicy()
		p.Lookahead = []int{1, 8, 32, 5000}[tc%4]
		p.LookaheadTrend = []float64{0, 1, 0.5}[tc%3]
		got := s.lookahead(pages, &p)

		var all []lookCand
		for pg := range pages {
			if s.inSel[pg] {
				continue
			}
			sc := s.pageScore[pg]
			prev := float32(sc)
			if pg < len(s.ewma) {
				prev = s.ewma[pg]
			}
			prio := float32(sc) + float32(p.LookaheadTrend)*(float32(sc)-prev)
			if prio > 0 {
				all = append(all, lookCand{page: uint32(pg), score: sc, prio: prio})
			}
		}
		slices.SortFunc(all, func(a, b lookCand) int {
			if c := cmp.Compare(b.prio, a.prio); c != 0 {
				return c
			}
			if c := cmp.Compare(b.score, a.score); c != 0 {
				return c
			}
			return cmp.Compare(b.page, a.page)
		})
		var want []uint32
		for _, c := range all[:min(len(all), p.Lookahead)] {
			want = append(want, c.page)
		}
		if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("case %d (%d pages, lookahead %d): got %v…, want %v…", tc, pages, p.Lookahead, got[:min(5, len(got))], want[:min(5, len(want))])
		}
	}
}
