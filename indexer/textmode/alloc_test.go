package textmode

import (
	"slices"
	"testing"

	"github.com/flashmemory/flashmemory/indexer"
)

func TestPageTiers(t *testing.T) {
	// Four pages of 4 chunks: page 0 the query's, page 1 a strong link of
	// round 2 beside a weak one of round 1, page 2 weak only, page 3 nothing
	// above threshold (its reached entry is ignored).
	logits := []float32{1, -1, -1, -1, 0.5, 0.5, -1, -1, 0.5, 0.5, 0.5, -1, -1, -1, -1, -0.5}
	reached := []uint8{0, 0, 0, 0, 2, 1 | ReachedWeak, 0, 0, 2 | ReachedWeak, 1 | ReachedWeak, 3 | ReachedWeak, 0, 0, 0, 0, 1}
	tiers := make([]uint8, 4)
	PageTiers(logits, reached, 4, 0, tiers)
	if want := []uint8{0, 2, tierWeak, tierUnlit}; !slices.Equal(tiers, want) {
		t.Fatalf("tiers %v, want %v", tiers, want)
	}
	// No expansion: every lit page is tier 0, so selection is by count alone.
	PageTiers(logits, make([]uint8, len(logits)), 4, 0, tiers)
	if want := []uint8{0, 0, 0, tierUnlit}; !slices.Equal(tiers, want) {
		t.Fatalf("tiers without expansion %v, want %v", tiers, want)
	}
}

// TestReachedMarksLinks: the links of a chain are reached by strong links,
// round by round; a training word that the context uses three times is not
// followed where it does not stand next to the word it had in the chain
// ("the locker room" is not "Locker 41").
func TestReachedMarksLinks(t *testing.T) {
	m := newTestModel(t)
	links := []string{"Locker 41 was packed with the parcel number 5521.", "Whatever sat in Locker 41 was moved into Drawer 17.", "Whatever sat in Drawer 17 was moved into Cabinet 63."}
	noise := "Nobody used the locker room that winter."
	text := haystack(200, map[int]string{30: links[0], 90: links[1], 150: links[2], 120: noise})
	toks := Tokenize(text)
	keys := m.AppendChunkKeys(nil, toks)
	n := NumChunks(len(toks))
	out := make([]float32, n)
	reached := make([]uint8, n)
	q := m.NewQuery(Tokenize("Where has the parcel number 5521 been kept?"), nil, Lexical)
	if err := m.ScoreWith(q, keys, out, ScoreOptions{Hops: DefaultHops, Reached: reached}); err != nil {
		t.Fatal(err)
	}
	best := func(s string) (uint8, bool) {
		f, l := chunksOf(text, s, toks)
		r, lit := uint8(255), false
		for c := f; c <= l; c++ {
			if out[c] > 0 {
				lit = true
				r = min(r, reached[c])
			}
		}
		return r, lit
	}
	prev := uint8(0)
	for i, s := range links {
		r, lit := best(s)
		if !lit {
			t.Fatalf("link %d %q not kept", i, s)
		}
		if r&ReachedWeak != 0 || (i == 0) != (r == 0) || r < prev {
			t.Errorf("link %d %q reached %#x (previous %d)", i, s, r, prev)
		}
		prev = r
	}
	if _, lit := best(noise); lit {
		t.Errorf("%q kept through %q", noise, "locker")
	}
	// Through the indexer: the Scorer keeps the rounds for PageTiers.
	sc := &Scorer{Model: m}
	req, err := indexer.NewRequest(sc, indexer.DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	if err := req.AppendKeys(0, [][]byte{keys}); err != nil {
		t.Fatal(err)
	}
	if _, err := indexer.ScoreBatch([]*indexer.Request{req}, []indexer.Query{sc.Query(q)}); err != nil {
		t.Fatal(err)
	}
	tiers := make([]uint8, (n+63)/64)
	sc.PageTiers(nil, req.Scores(), 64, 0, tiers)
	if !slices.Equal(tiers, make([]uint8, len(tiers))) {
		t.Fatalf("PageTiers without the request's keys filled %v", tiers)
	}
}

// TestExpansionStopsInTail: a link reached in the recent tail (a decoder's
// earlier answer listing other questions' names) is kept but not followed
// onward; without a tail it would lead to the other chain.
func TestExpansionStopsInTail(t *testing.T) {
	m := newTestModel(t)
	other := "Whatever sat in Drawer 17 was moved into Cabinet 63."
	text := haystack(200, map[int]string{30: "Locker 41 was packed with the parcel number 5521.", 100: other})
	answer := " Locker 41, Drawer 17, Cabinet 63."
	toks := Tokenize(text)
	keys := m.AppendChunkKeys(nil, toks)
	tail := len(keys) / m.KeyBytes()
	keys = m.AppendChunkKeys(keys, Tokenize(answer))
	n := len(keys) / m.KeyBytes()
	q := m.NewQuery(Tokenize("Where has the parcel number 5521 been kept?"), nil, Lexical)
	f, l := chunksOf(text, other, toks)
	for _, tc := range []struct {
		tail int
		want bool
	}{{0, true}, {tail, false}} {
		out := make([]float32, n)
		if err := m.ScoreWith(q, keys, out, ScoreOptions{Hops: DefaultHops, Tail: tc.tail}); err != nil {
			t.Fatal(err)
		}
		answerLit := false
		for c := tail; c < n; c++ {
			answerLit = answerLit || out[c] > 0
		}
		otherLit := false
		for c := f; c <= l; c++ {
			otherLit = otherLit || out[c] > 0
		}
		if !answerLit || otherLit != tc.want {
			t.Errorf("tail %d: answer kept %v, other chain kept %v (want %v)", tc.tail, answerLit, otherLit, tc.want)
		}
	}
	// ScoreBatch hands the policy's tail to the scorer.
	sc := &Scorer{Model: m}
	pol := indexer.DefaultPolicy()
	pol.LastKeep = n - tail
	req, err := indexer.NewRequest(sc, pol)
	if err != nil {
		t.Fatal(err)
	}
	if err := req.AppendKeys(0, [][]byte{keys}); err != nil {
		t.Fatal(err)
	}
	if _, err := indexer.ScoreBatch([]*indexer.Request{req}, []indexer.Query{sc.Query(q)}); err != nil {
		t.Fatal(err)
	}
	for c := f; c <= l; c++ {
		if req.Scores()[c] > 0 {
			t.Errorf("through ScoreBatch: other chain chunk %d kept", c)
		}
	}
}
