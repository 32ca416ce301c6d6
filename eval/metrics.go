package eval

import "slices"

// PageSet is a sorted list of resident pages, as indexer.Cycle reports them.
type PageSet []uint32

// Has reports whether page p is resident.
func (s PageSet) Has(p int) bool {
	_, ok := slices.BinarySearch(s, uint32(p))
	return ok
}

// Covers reports whether every chunk of span lies in a resident page: the
// span is entirely available to attention.
func (s PageSet) Covers(span ChunkSpan) bool {
	for p := span.First / ChunksPerPage; p <= span.Last/ChunksPerPage; p++ {
		if !s.Has(p) {
			return false
		}
	}
	return true
}

// ResidentTokens counts the tokens of a context of tokens tokens that lie in
// resident pages (the last page may be partial).
func (s PageSet) ResidentTokens(tokens int) int {
	n := 0
	for _, p := range s {
		lo := int(p) * TokensPerPage
		if lo >= tokens {
			continue
		}
		n += min(lo+TokensPerPage, tokens) - lo
	}
	return n
}

// Footprint is resident tokens / context tokens, sink and tail included (0 for
// an empty context).
func (s PageSet) Footprint(tokens int) float64 {
	if tokens == 0 {
		return 0
	}
	return float64(s.ResidentTokens(tokens)) / float64(tokens)
}

// Tally accumulates the metrics of one (task, method, footprint) cell.
type Tally struct {
	Queries int     // questions scored
	all     float64 // questions with every evidence span resident when needed
	any     float64 // questions with at least one evidence span resident when needed
	Cycles  int     // cycles measured for the footprint
	fp      float64 // sum of cycle footprints
}

// AddQuery records one question: covered[i] says whether evidence span i was
// entirely resident at the cycle that needed it.
func (t *Tally) AddQuery(covered []bool) {
	t.Queries++
	all, any := len(covered) > 0, false
	for _, c := range covered {
		all = all && c
		any = any || c
	}
	if all {
		t.all++
	}
	if any {
		t.any++
	}
}

// AddCycle records the footprint of one cycle's resident set.
func (t *Tally) AddCycle(s PageSet, tokens int) {
	t.Cycles++
	t.fp += s.Footprint(tokens)
}

// Merge adds o's counts to t.
func (t *Tally) Merge(o *Tally) {
	t.Queries += o.Queries
	t.all += o.all
	t.any += o.any
	t.Cycles += o.Cycles
	t.fp += o.fp
}

// RecallAll is the fraction of questions whose every evidence span was
// entirely resident at the cycle that needed it.
func (t *Tally) RecallAll() float64 { return ratio(t.all, float64(t.Queries)) }

// RecallAny is the fraction of questions with at least one evidence span
// entirely resident when needed.
func (t *Tally) RecallAny() float64 { return ratio(t.any, float64(t.Queries)) }

// Footprint is the mean footprint over the measured cycles.
func (t *Tally) Footprint() float64 { return ratio(t.fp, float64(t.Cycles)) }

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
