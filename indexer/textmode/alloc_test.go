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

// TestExpansionBeforeTail: expansion counts and follows names only before
// the recent tail. A decoder's earlier answer there ("Locker 41, Drawer 17,
// Cabinet 63.") neither leads to the other chain it lists nor makes a name
// it repeats look common; without a tail it does both.
func TestExpansionBeforeTail(t *testing.T) {
	m := newTestModel(t)
	other := "Whatever sat in Drawer 17 was moved into Cabinet 63."
	link := "Set mildrake to the value of qorvanta."
	text := haystack(200, map[int]string{30: "Let qorvanta equal 5521.", 60: "Locker 41 was packed with the parcel number 7304.", 100: other, 140: link})
	answer := " Locker 41, Drawer 17, Cabinet 63. qorvanta, mildrake, qorvanta."
	toks := Tokenize(text)
	keys := m.AppendChunkKeys(nil, toks)
	tail := len(keys) / m.KeyBytes()
	keys = m.AppendChunkKeys(keys, Tokenize(answer))
	n := len(keys) / m.KeyBytes()
	kept := func(out []float32, s string) bool {
		f, l := chunksOf(text, s, toks)
		for c := f; c <= l; c++ {
			if out[c] > 0 {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		question string
		evidence string
		tail     int
		want     bool
	}{
		{"Where has the parcel number 7304 been kept?", other, 0, true},
		{"Where has the parcel number 7304 been kept?", other, tail, false},
		{"Which variables hold the value 5521?", link, 0, false},
		{"Which variables hold the value 5521?", link, tail, true},
	} {
		q := m.NewQuery(Tokenize(tc.question), nil, Lexical)
		out := make([]float32, n)
		if err := m.ScoreWith(q, keys, out, ScoreOptions{Hops: DefaultHops, Tail: tc.tail}); err != nil {
			t.Fatal(err)
		}
		if got := kept(out, tc.evidence); got != tc.want {
			t.Errorf("%q, tail %d: %q kept %v, want %v", tc.question, tc.tail, tc.evidence, got, tc.want)
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
	q := m.NewQuery(Tokenize("Which variables hold the value 5521?"), nil, Lexical)
	if _, err := indexer.ScoreBatch([]*indexer.Request{req}, []indexer.Query{sc.Query(q)}); err != nil {
		t.Fatal(err)
	}
	if !kept(req.Scores(), link) {
		t.Errorf("through ScoreBatch: %q not kept", link)
	}
}
