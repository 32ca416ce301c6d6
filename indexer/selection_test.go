package indexer

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// logitsWith returns n logits, -1 everywhere except +1 at the listed chunks.
func logitsWith(n int, above ...int) []float32 {
	l := make([]float32, n)
	for i := range l {
		l[i] = -1
	}
	for _, c := range above {
		l[c] = 1
	}
	return l
}

// pageAbove returns chunk indices: cnt above-threshold chunks in page pg (64-chunk pages).
func pageAbove(pg, cnt int) []int {
	var out []int
	for i := range cnt {
		out = append(out, pg*64+i)
	}
	return out
}

func cat(parts ...[]int) []int { return slices.Concat(parts...) }

func pol(first, last, kmax int) Policy {
	p := DefaultPolicy()
	p.FirstKeep, p.LastKeep, p.KMax = first, last, kmax
	p.FallbackRatio = 1 // off unless a test wants it
	return p
}

func TestSelectionFirstCycle(t *testing.T) {
	ratio := func(first, last int, r float64) Policy {
		p := pol(first, last, 0)
		p.KMaxRatio = r
		return p
	}
	tests := []struct {
		name     string
		n        int
		above    []int
		policy   Policy
		selected []uint32
		forced   int
		kmax     int
		aboveOut int
		outside  int
	}{
		{name: "zero chunks", n: 0, policy: pol(128, 2048, 4), kmax: 4},
		{name: "one chunk", n: 1, policy: pol(128, 2048, 4), selected: []uint32{0}, forced: 1, kmax: 4},
		{name: "one chunk no sink no tail", n: 1, above: []int{0}, policy: pol(0, 0, 4), selected: []uint32{0}, kmax: 4, aboveOut: 1, outside: 1},
		{name: "one chunk below threshold still fills KMAX", n: 1, policy: pol(0, 0, 4), selected: []uint32{0}, kmax: 4, outside: 1},
		{name: "exactly one page", n: 64, policy: pol(128, 2048, 1), selected: []uint32{0}, forced: 1, kmax: 1},
		{name: "exactly one page, not forced, KMAX 0 by ratio rounds up", n: 64, policy: ratio(0, 0, 0.01), selected: []uint32{0}, kmax: 1, outside: 64},
		{
			name: "partial last page wins on score", n: 200, policy: pol(0, 0, 1),
			above: cat(pageAbove(1, 3), pageAbove(3, 5)), selected: []uint32{3}, kmax: 1, aboveOut: 8, outside: 200,
		},
		{
			name: "partial last page counts toward KMAX", n: 200, policy: pol(0, 0, 2),
			above: cat(pageAbove(0, 9), pageAbove(1, 3), pageAbove(3, 5)), selected: []uint32{0, 3}, kmax: 2, aboveOut: 17, outside: 200,
		},
		{
			name: "sink forces every page it touches", n: 640, policy: pol(65, 0, 3),
			above: cat(pageAbove(5, 10), pageAbove(7, 20), pageAbove(8, 1)), selected: []uint32{0, 1, 7}, forced: 2, kmax: 3,
			aboveOut: 31, outside: 575,
		},
		{
			name: "tail forces every page it touches", n: 640, policy: pol(0, 65, 3),
			above: cat(pageAbove(2, 10), pageAbove(3, 20), pageAbove(9, 64)), selected: []uint32{3, 8, 9}, forced: 2, kmax: 3,
			aboveOut: 30, outside: 575,
		},
		{
			name: "tail of one chunk forces the partial last page", n: 130, policy: pol(0, 1, 1),
			above: pageAbove(0, 30), selected: []uint32{2}, forced: 1, kmax: 1, aboveOut: 30, outside: 129,
		},
		{
			name: "forced pages exceed KMAX and still win", n: 1024, policy: pol(128, 128, 3),
			above: pageAbove(5, 64), selected: []uint32{0, 1, 14, 15}, forced: 4, kmax: 3, aboveOut: 64, outside: 768,
		},
		{
			name: "ties go to the newer page", n: 640, policy: pol(0, 0, 2),
			above: cat(pageAbove(1, 4), pageAbove(4, 4), pageAbove(6, 4), pageAbove(2, 1)), selected: []uint32{4, 6}, kmax: 2,
			aboveOut: 13, outside: 640,
		},
		{
			name: "zero-score pages fill KMAX newest first", n: 640, policy: pol(0, 0, 3),
			above: pageAbove(2, 1), selected: []uint32{2, 8, 9}, kmax: 3, aboveOut: 1, outside: 640,
		},
		{
			name: "KMAX ratio is ceil", n: 64 * 33, policy: ratio(0, 0, 0.1),
			above: cat(pageAbove(3, 9), pageAbove(4, 8), pageAbove(5, 7), pageAbove(6, 6)), selected: []uint32{3, 4, 5, 6}, kmax: 4,
			aboveOut: 30, outside: 64 * 33,
		},
		{
			name: "KMAX larger than the context keeps everything", n: 300, policy: pol(0, 0, 50),
			selected: []uint32{0, 1, 2, 3, 4}, kmax: 50, outside: 300,
		},
		{
			name: "sink and tail overlap: nothing outside", n: 100, policy: pol(80, 80, 1),
			above: []int{50}, selected: []uint32{0, 1}, forced: 2, kmax: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s selector
			c := s.step(tc.n, logitsWith(tc.n, tc.above...), &tc.policy)
			if diff := cmp.Diff(tc.selected, c.Selected, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Selected (-want +got):\n%s", diff)
			}
			if c.ForcedPages != tc.forced || c.KMax != tc.kmax || c.AboveOutside != tc.aboveOut || c.Outside != tc.outside {
				t.Errorf("forced %d kmax %d aboveOutside %d outside %d, want %d %d %d %d",
					c.ForcedPages, c.KMax, c.AboveOutside, c.Outside, tc.forced, tc.kmax, tc.aboveOut, tc.outside)
			}
			if c.AboveThreshold != len(tc.above) {
				t.Errorf("AboveThreshold %d, want %d", c.AboveThreshold, len(tc.above))
			}
			if c.Cycle != 1 || c.Chunks != tc.n || c.Pages != pageCount(tc.n, 64) || !c.Scored {
				t.Errorf("cycle %d chunks %d pages %d scored %v", c.Cycle, c.Chunks, c.Pages, c.Scored)
			}
			checkCycle(t, c)
		})
	}
}

func TestPublishedKMax(t *testing.T) {
	p := DefaultPolicy()
	for _, tc := range []struct{ tokens, kmax int }{{256 << 10, 96}, {512 << 10, 192}, {1 << 20, 384}} {
		pages := tc.tokens / 4 / 64
		if got := p.kmax(pages); got != tc.kmax {
			t.Errorf("%d tokens (%d pages): KMAX %d, want %d", tc.tokens, pages, got, tc.kmax)
		}
	}
}

func TestThresholdIsStrictAndInLogitSpace(t *testing.T) {
	p := pol(0, 0, 1)
	var s selector
	// A logit of exactly 0 is a score of exactly 0.5: not above. The smallest positive
	// float32 is above although its float32 sigmoid rounds to 0.5.
	c := s.step(128, append(make([]float32, 64), append([]float32{1e-45}, make([]float32, 63)...)...), &p)
	if c.AboveThreshold != 1 || !slices.Equal(c.Selected, []uint32{1}) {
		t.Fatalf("above %d selected %v, want 1 [1]", c.AboveThreshold, c.Selected)
	}
	p.Threshold = 0.9 // logit ln 9 ≈ 2.197
	s = selector{}
	l := make([]float32, 64)
	l[0], l[1] = 2.19, 2.2
	if c := s.step(64, l, &p); c.AboveThreshold != 1 {
		t.Fatalf("threshold 0.9: above %d, want 1", c.AboveThreshold)
	}
}

// TestOneCycleLate walks a request through growing cycles and checks that each cycle's Use
// is the previous selection plus the current forced pages, and the diff against it.
func TestOneCycleLate(t *testing.T) {
	p := pol(64, 64, 4)
	var s selector
	type want struct {
		n        int
		above    []int
		use      []uint32
		selected []uint32
		recall   []uint32
		release  []uint32
	}
	steps := []want{
		// cycle 1: no previous selection, the decoder has only the forced pages (sink 0, tail 9).
		{n: 640, above: cat(pageAbove(4, 30), pageAbove(2, 5)), use: []uint32{0, 9}, selected: []uint32{0, 2, 4, 9}, recall: []uint32{2, 4}},
		// cycle 2: 16 chunks appended (page 10 is new, tail now pages 9 and 10): one free slot,
		// page 6 rises above page 4.
		{n: 656, above: cat(pageAbove(6, 30), pageAbove(4, 2)), use: []uint32{0, 2, 4, 9, 10}, selected: []uint32{0, 6, 9, 10}, recall: []uint32{6}, release: []uint32{2, 4}},
		// cycle 3: same context and scores: nothing to move.
		{n: 656, above: cat(pageAbove(6, 30)), use: []uint32{0, 6, 9, 10}, selected: []uint32{0, 6, 9, 10}},
		// cycle 4: the tail left page 9 (pages 10, 11 now); page 6 keeps the free slot.
		{n: 720, above: cat(pageAbove(6, 30)), use: []uint32{0, 6, 9, 10, 11}, selected: []uint32{0, 6, 10, 11}, release: []uint32{9}},
		// cycle 5: all scores 0: the free slot goes to the newest non-forced page, 9.
		{n: 720, use: []uint32{0, 6, 10, 11}, selected: []uint32{0, 9, 10, 11}, recall: []uint32{9}, release: []uint32{6}},
	}
	for i, w := range steps {
		c := s.step(w.n, logitsWith(w.n, w.above...), &p)
		got := want{n: w.n, above: w.above, use: c.Use, selected: c.Selected, recall: c.Recall, release: c.Release}
		if diff := cmp.Diff(w, got, cmp.AllowUnexported(want{}), cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("cycle %d (-want +got):\n%s", i+1, diff)
		}
		checkCycle(t, c)
	}
}

func TestFallbackTriggerAndStickiness(t *testing.T) {
	p := pol(0, 0, 1)
	p.FallbackRatio = 0.25
	var s selector
	// Cycle 1: 10 of 128 outside chunks above: 7.8 %.
	c := s.step(128, logitsWith(128, pageAbove(1, 10)...), &p)
	if c.Fallback || c.FallbackNow || c.CumAboveFraction() != 10.0/128 {
		t.Fatalf("cycle 1: fallback %v now %v cum %v", c.Fallback, c.FallbackNow, c.CumAboveFraction())
	}
	// Cycle 2: 54 of 128: cumulative 64/256 = 25 %, not past the ratio.
	c = s.step(128, logitsWith(128, cat(pageAbove(0, 30), pageAbove(1, 24))...), &p)
	if c.Fallback || c.CumAboveFraction() != 0.25 || c.AboveFraction() != 54.0/128 {
		t.Fatalf("cycle 2: fallback %v cum %v this %v", c.Fallback, c.CumAboveFraction(), c.AboveFraction())
	}
	// Cycle 3: one more above: 65/384 < 25 %... use 40 of 128: 104/384 = 27 % > 25 %.
	c = s.step(128, logitsWith(128, pageAbove(0, 40)...), &p)
	if !c.Fallback || !c.FallbackNow || !slices.Equal(c.Selected, []uint32{0, 1}) {
		t.Fatalf("cycle 3: fallback %v now %v selected %v", c.Fallback, c.FallbackNow, c.Selected)
	}
	if c.Lookahead != nil {
		t.Fatalf("lookahead in fallback: %v", c.Lookahead)
	}
	// Cycle 4 onwards: nothing scored, everything selected, including pages appended later.
	c = s.step(300, nil, &p)
	if !c.Fallback || c.FallbackNow || c.Scored || !slices.Equal(c.Selected, []uint32{0, 1, 2, 3, 4}) {
		t.Fatalf("cycle 4: fallback %v now %v scored %v selected %v", c.Fallback, c.FallbackNow, c.Scored, c.Selected)
	}
	if !slices.Equal(c.Recall, []uint32{2, 3, 4}) || c.CumAboveFraction() != 104.0/384 {
		t.Fatalf("cycle 4: recall %v (use %v) cum %v", c.Recall, c.Use, c.CumAboveFraction())
	}
}

func TestFallbackIgnoresSinkAndTail(t *testing.T) {
	// Everything above threshold, but all of it inside sink and tail: no fallback.
	p := pol(64, 64, 1)
	p.FallbackRatio = 0
	var s selector
	l := make([]float32, 128)
	for i := range l {
		l[i] = 3
	}
	if c := s.step(128, l, &p); c.Fallback || c.Outside != 0 {
		t.Fatalf("fallback %v outside %d", c.Fallback, c.Outside)
	}
	// Ratio 0: the first above-threshold chunk outside triggers it.
	l = logitsWith(192, 100)
	if c := s.step(192, l, &p); !c.Fallback {
		t.Fatalf("ratio 0 with one chunk above: no fallback")
	}
}

func TestLookaheadRanking(t *testing.T) {
	p := pol(0, 0, 1)
	p.Lookahead = 3
	var s selector
	// Cycle 1: page 0 best (selected), pages 2 (20) and 3 (10) next, page 4 (10) ties 3.
	c := s.step(5*64, logitsWith(5*64, cat(pageAbove(0, 40), pageAbove(2, 20), pageAbove(3, 10), pageAbove(4, 10))...), &p)
	if !slices.Equal(c.Lookahead, []uint32{2, 4, 3}) {
		t.Fatalf("cycle 1 lookahead %v, want [2 4 3] (by score, ties newer first)", c.Lookahead)
	}
	// Cycle 2: page 3 rises 10 → 18 (EWMA 10, priority 26) and overtakes page 2 (20 → 20,
	// priority 20); page 1 appears with 5 (EWMA 0, priority 10); page 4 drops 10 → 6
	// (priority 2).
	c = s.step(5*64, logitsWith(5*64, cat(pageAbove(0, 40), pageAbove(1, 5), pageAbove(2, 20), pageAbove(3, 18), pageAbove(4, 6))...), &p)
	if !slices.Equal(c.Lookahead, []uint32{3, 2, 1}) {
		t.Fatalf("cycle 2 lookahead %v, want [3 2 1]", c.Lookahead)
	}
	for _, pg := range c.Lookahead {
		if slices.Contains(c.Selected, pg) {
			t.Fatalf("lookahead page %d is selected", pg)
		}
	}
	p.Lookahead = 0
	if c := s.step(5*64, logitsWith(5*64), &p); c.Lookahead != nil {
		t.Fatalf("Lookahead 0 gave %v", c.Lookahead)
	}
}

// TestSelectionInvariants runs random growing contexts and checks the structural promises.
func TestSelectionInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		p := pol(rng.IntN(300), rng.IntN(600), rng.IntN(12))
		if p.KMax == 0 {
			p.KMaxRatio = 0.05 + rng.Float64()*0.3
		}
		p.FallbackRatio = 0.2 + rng.Float64()
		p.Lookahead = rng.IntN(8)
		var s selector
		n := 0
		var prevSel []uint32
		for cyc := range 6 {
			n += rng.IntN(700)
			density := rng.Float64() * 0.4
			l := make([]float32, n)
			for i := range l {
				if rng.Float64() < density {
					l[i] = rng.Float32() * 5
				} else {
					l[i] = -rng.Float32() * 5
				}
			}
			c := s.step(n, l, &p)
			checkCycle(t, c)
			pages := pageCount(n, 64)
			if c.Pages != pages || len(c.Selected) > pages {
				t.Fatalf("trial %d cycle %d: pages %d selected %d", trial, cyc, c.Pages, len(c.Selected))
			}
			for _, pg := range prevSel {
				if !slices.Contains(c.Use, pg) {
					t.Fatalf("trial %d cycle %d: previous selection page %d not in Use", trial, cyc, pg)
				}
			}
			if !c.Fallback && len(c.Selected) != max(min(c.KMax, pages), c.ForcedPages) {
				t.Fatalf("trial %d cycle %d: selected %d pages, kmax %d forced %d pages %d",
					trial, cyc, len(c.Selected), c.KMax, c.ForcedPages, pages)
			}
			if c.Fallback && len(c.Selected) != pages {
				t.Fatalf("trial %d cycle %d: fallback selects %d of %d", trial, cyc, len(c.Selected), pages)
			}
			sinkEnd, tailStart := sinkTail(n, &p)
			for _, ch := range []int{0, sinkEnd - 1, tailStart, n - 1} {
				if ch >= 0 && ch < n && (ch < sinkEnd || ch >= tailStart) && !slices.Contains(c.Selected, uint32(ch/64)) {
					t.Fatalf("trial %d cycle %d: forced chunk %d (page %d) not selected", trial, cyc, ch, ch/64)
				}
			}
			if len(c.Lookahead) > p.Lookahead {
				t.Fatalf("lookahead %d > %d", len(c.Lookahead), p.Lookahead)
			}
			prevSel = c.Selected
		}
	}
}

// checkCycle checks the set relations every Cycle promises.
func checkCycle(t *testing.T, c *Cycle) {
	t.Helper()
	for name, l := range map[string][]uint32{"Use": c.Use, "Selected": c.Selected, "Recall": c.Recall, "Release": c.Release} {
		if !slices.IsSorted(l) || len(slices.Compact(slices.Clone(l))) != len(l) {
			t.Fatalf("%s %v not sorted and unique", name, l)
		}
		for _, pg := range l {
			if int(pg) >= c.Pages {
				t.Fatalf("%s has page %d of %d", name, pg, c.Pages)
			}
		}
	}
	for _, pg := range c.Recall {
		if !slices.Contains(c.Selected, pg) || slices.Contains(c.Use, pg) {
			t.Fatalf("recall page %d: in selected %v, in use %v", pg, slices.Contains(c.Selected, pg), slices.Contains(c.Use, pg))
		}
	}
	for _, pg := range c.Release {
		if slices.Contains(c.Selected, pg) || !slices.Contains(c.Use, pg) {
			t.Fatalf("release page %d wrong", pg)
		}
	}
	for _, pg := range c.Selected {
		if !slices.Contains(c.Use, pg) && !slices.Contains(c.Recall, pg) {
			t.Fatalf("selected page %d neither in use nor recalled", pg)
		}
	}
	for _, pg := range c.Use {
		if !slices.Contains(c.Selected, pg) && !slices.Contains(c.Release, pg) {
			t.Fatalf("use page %d neither selected nor released", pg)
		}
	}
	for _, pg := range c.Lookahead {
		if slices.Contains(c.Selected, pg) || int(pg) >= c.Pages {
			t.Fatalf("lookahead page %d selected or out of range", pg)
		}
	}
}

// TestTopKTiered: with every tier equal the tiered cut selects exactly what the count-only
// cut does (so a PageTierer that leaves tiers at zero changes nothing), and with tiers a
// lower tier wins over a higher count, counts then newer pages deciding within a tier.
func TestTopKTiered(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := range 300 {
		p := pol(rng.IntN(200), rng.IntN(400), 1+rng.IntN(12))
		n := 1 + rng.IntN(3000)
		l := make([]float32, n)
		for i := range l {
			l[i] = -1
			if rng.Float64() < 0.1 {
				l[i] = 1
			}
		}
		var a, b selector
		ca := a.step(n, l, &p)
		cb := b.stepTiered(n, l, make([]uint8, pageCount(n, 64)), &p)
		if !slices.Equal(ca.Selected, cb.Selected) {
			t.Fatalf("trial %d: equal tiers select %v, count-only %v", trial, cb.Selected, ca.Selected)
		}
	}
	// 10 pages, sink page 0, tail page 9, KMAX 5: three free slots.
	n := 640
	p := pol(64, 64, 5)
	l := logitsWith(n, cat(pageAbove(2, 9), pageAbove(3, 1), pageAbove(5, 4), pageAbove(6, 1), pageAbove(7, 1))...)
	tiers := []uint8{255, 255, 254, 1, 255, 0, 3, 3, 255, 255}
	var s selector
	c := s.stepTiered(n, l, tiers, &p)
	// Page 5 (tier 0), page 3 (tier 1), then pages 6 and 7 tie at tier 3 with one chunk
	// each: the newer, 7, wins. Page 2's nine chunks come only from weak links (254).
	if want := []uint32{0, 3, 5, 7, 9}; !slices.Equal(c.Selected, want) {
		t.Fatalf("selected %v, want %v", c.Selected, want)
	}
	var plain selector
	if got, want := plain.step(n, l, &p).Selected, []uint32{0, 2, 5, 7, 9}; !slices.Equal(got, want) {
		t.Fatalf("count-only selected %v, want %v", got, want)
	}
}
