package eval

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestSpanChunks(t *testing.T) {
	// 10 tokens: "a b c d" | "e f g h" | "i ." with 4 tokens per chunk.
	text := "a b c d e f g h i."
	d := NewDoc(text)
	if len(d.Tokens) != 10 || d.Chunks() != 3 || d.Pages() != 1 {
		t.Fatalf("%d tokens, %d chunks, %d pages", len(d.Tokens), d.Chunks(), d.Pages())
	}
	cases := []struct {
		evidence    string
		first, last int
	}{
		{"a", 0, 0},
		{"a b c d", 0, 0},
		{"d e", 0, 1},
		{"c d e f g h i", 0, 2},
		{"i.", 2, 2},
		{".", 2, 2},
		{" e f", 1, 1},
	}
	for _, c := range cases {
		sp, err := d.EvidenceChunks(c.evidence)
		if err != nil {
			t.Fatalf("%q: %v", c.evidence, err)
		}
		if sp.First != c.first || sp.Last != c.last {
			t.Errorf("%q: chunks %d–%d, want %d–%d", c.evidence, sp.First, sp.Last, c.first, c.last)
		}
	}
	if _, err := d.EvidenceChunks("zzz"); err == nil {
		t.Error("absent evidence mapped")
	}
	if _, err := d.SpanChunks(1, 2); err == nil {
		t.Error("a whitespace-only range mapped to chunks")
	}
	if _, err := d.SpanChunks(5, 100); err == nil {
		t.Error("a range past the text mapped")
	}
	// Partial words: evidence cutting a token in half still covers that token.
	d2 := NewDoc("alpha beta gamma delta epsilon")
	sp, err := d2.EvidenceChunks("ta gam")
	if err != nil || sp.First != 0 || sp.Last != 0 {
		t.Errorf("partial tokens: %+v %v", sp, err)
	}
}

func TestPageSet(t *testing.T) {
	// A context of 1000 tokens: 250 chunks, 4 pages, the last holding 232 tokens.
	s := PageSet{0, 3}
	if !s.Has(0) || s.Has(1) || !s.Has(3) {
		t.Fatal("Has")
	}
	if got := s.ResidentTokens(1000); got != 256+232 {
		t.Fatalf("ResidentTokens %d, want %d", got, 256+232)
	}
	if got := s.Footprint(1000); math.Abs(got-0.488) > 1e-9 {
		t.Fatalf("Footprint %v", got)
	}
	if (PageSet{}).Footprint(0) != 0 {
		t.Fatal("empty context footprint")
	}
	cases := []struct {
		span ChunkSpan
		want bool
	}{
		{ChunkSpan{0, 63}, true},
		{ChunkSpan{60, 64}, false}, // runs into page 1
		{ChunkSpan{192, 249}, true},
		{ChunkSpan{63, 192}, false},
		{ChunkSpan{5, 5}, true},
	}
	for _, c := range cases {
		if got := s.Covers(c.span); got != c.want {
			t.Errorf("Covers(%+v) = %v", c.span, got)
		}
	}
}

func TestTally(t *testing.T) {
	var a Tally
	a.AddQuery([]bool{true, true})
	a.AddQuery([]bool{true, false})
	a.AddQuery([]bool{false, false})
	a.AddQuery([]bool{true})
	if a.Queries != 4 || a.RecallAll() != 0.5 || a.RecallAny() != 0.75 {
		t.Fatalf("queries %d recall_all %v recall_any %v", a.Queries, a.RecallAll(), a.RecallAny())
	}
	a.AddCycle(PageSet{0}, 1024)    // 0.25
	a.AddCycle(PageSet{0, 1}, 1024) // 0.5
	if a.Footprint() != 0.375 {
		t.Fatalf("footprint %v", a.Footprint())
	}
	var b Tally
	b.AddQuery([]bool{false})
	b.AddCycle(PageSet{}, 1024)
	a.Merge(&b)
	if a.Queries != 5 || a.RecallAll() != 0.4 || a.RecallAny() != 0.6 || a.Footprint() != 0.25 {
		t.Fatalf("after merge: %d %v %v %v", a.Queries, a.RecallAll(), a.RecallAny(), a.Footprint())
	}
	var z Tally
	if z.RecallAll() != 0 || z.Footprint() != 0 {
		t.Fatal("empty tally")
	}
}

func TestPolicyForFitsFootprint(t *testing.T) {
	for _, tokens := range []int{32 << 10, 128 << 10, 512 << 10, 1 << 20, 32<<10 + 77} {
		chunks := (tokens + 3) / 4
		pages := (chunks + ChunksPerPage - 1) / ChunksPerPage
		for _, f := range []float64{0.05, 0.10, 0.15} {
			p := PolicyFor(chunks, f)
			if err := p.Validate(); err != nil {
				t.Fatalf("%d tokens %.2f: %v", tokens, f, err)
			}
			forced := 0
			for _, x := range forcedPages(chunks, p) {
				if x {
					forced++
				}
			}
			if forced > p.KMax || p.KMax > int(f*float64(pages)) || forced == 0 {
				t.Errorf("%d tokens at %.2f: %d forced pages, KMAX %d of %d pages", tokens, f, forced, p.KMax, pages)
			}
		}
	}
}

// tinyQuery makes a prepared query whose evidence is the given chunk spans.
func tinyQuery(spans ...ChunkSpan) *PreparedQuery {
	pq := &PreparedQuery{Spans: spans, Windows: 1}
	pq.Need = make([]int, len(spans))
	return pq
}

func TestBaselines(t *testing.T) {
	text := strings.Repeat("word ", 64*4*40) // 40 pages
	d := NewDoc(text)
	chunks := d.Chunks()
	pol := PolicyFor(chunks, 0.10) // KMAX 4: sink page 0, tail page 39
	if pol.KMax != 4 {
		t.Fatalf("KMAX %d", pol.KMax)
	}
	run := func(method string, pq *PreparedQuery, seed uint64) PageSet {
		rng := rand.New(rand.NewPCG(seed, 0))
		return selectOnce(t, BaselineLogits(method, chunks, pol, pq, rng), pol)
	}
	pq := tinyQuery(ChunkSpan{640, 650}, ChunkSpan{1300, 1300})
	if got := run(MethodRecency, pq, 1); !equalPages(got, PageSet{0, 37, 38, 39}) {
		t.Errorf("recency: %v", got)
	}
	if got := run(MethodOracle, pq, 1); !equalPages(got, PageSet{0, 10, 20, 39}) {
		t.Errorf("oracle: %v", got)
	}
	seen := map[uint32]bool{}
	for seed := range uint64(5) {
		got := run(MethodRandom, pq, seed)
		if len(got) != 4 || !got.Has(0) || !got.Has(39) {
			t.Errorf("random seed %d: %v", seed, got)
		}
		for _, p := range got {
			seen[p] = true
		}
	}
	if len(seen) < 6 {
		t.Errorf("random baseline picked only %d distinct pages over 5 seeds", len(seen))
	}
}

func equalPages(a, b PageSet) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
