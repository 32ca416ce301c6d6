package textmode

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"slices"
)

// Lexical scoring. A query term's weight comes from the context itself (BM25's
// IDF over the request's chunk keys), so a template phrase repeated in every
// distractor needle weighs little while the one key that names the needle
// weighs a lot, at 32K tokens and at 1M alike. The lexical signal of a chunk is
// the share of the query's weight it holds, with weights raised to lexPower so
// the query's rarest terms dominate and a chunk holding only the common words
// of a question stays low.
const (
	// windowWeight is how much a query term found only in a chunk's window (not
	// in the chunk's own tokens) counts.
	windowWeight = 0.6
	// lexPower sharpens the weights: w = cidf^lexPower.
	lexPower = 3
	// prfHops bounds relevance-feedback rounds (see expand).
	prfHops = 3
	// prfMaxOccur: a specific expansion term occurs at most this many times in
	// the context (chunks holding it as their own term): it names something,
	// it is not a topic. prfMinIDFKnown: a word the training corpus held must
	// also have been rare there (a surname, "Basket"), not an ordinary word
	// that a context happens to repeat little.
	prfMaxOccur    = 3
	prfMinIDFKnown = 6
	prfOccurChunks = 16384
	// prfMaxSeeds and prfMaxTerms bound the work of one round.
	prfMaxSeeds = 512
	prfMaxTerms = 256
	// prfLogit is the logit given to chunks found by relevance feedback: just
	// above the keep threshold, below any chunk the query matches directly.
	prfLogit = 0.5
)

// keyTerms returns the stored terms of a key and how many are the chunk's own.
func (m *Model) keyTerms(key []byte) (terms []byte, ncore, nt int) {
	d := m.cfg.Dim
	return key[d+6:], int(key[d+4]), int(key[d+5])
}

// keyNovel is the key's mask of terms the training corpus never saw.
func (m *Model) keyNovel(key []byte) uint32 {
	return binary.LittleEndian.Uint32(key[m.cfg.Dim+6+2*m.cfg.MaxTerms:])
}

func termAt(terms []byte, i int) uint16 { return binary.LittleEndian.Uint16(terms[2*i:]) }

// contextWeights computes the weight of every query term from its document
// frequency among the keys (chunks holding it in their key), and the
// normaliser (sum of the weights of the terms present in the context: a term
// absent from the context cannot be matched, so it does not dilute).
//
// w is indexed by bucket (0 for terms not in the query or not in the context)
// so the per-key loop is an array load, not a map lookup.
func (m *Model) contextWeights(q *Query, keys []byte, workers int) (w []float32, norm float32) {
	kb := m.KeyBytes()
	n := len(keys) / kb
	parts := splitRange(n, workers)
	dfs := make([][]int32, len(parts))
	parallelFor(len(parts), workers, func(p int) {
		df := make([]int32, m.cfg.Buckets)
		for c := parts[p][0]; c < parts[p][1]; c++ {
			terms, _, nt := m.keyTerms(keys[c*kb : (c+1)*kb])
			for i := range nt {
				b := termAt(terms, i)
				if int(b) < m.cfg.Buckets && q.set[b>>6]&(1<<(b&63)) != 0 {
					df[b]++
				}
			}
		}
		dfs[p] = df
	})
	w = make([]float32, m.cfg.Buckets)
	for _, b := range q.terms {
		df := 0
		for _, d := range dfs {
			df += int(d[b])
		}
		if df == 0 {
			continue
		}
		cidf := math.Log(1 + (float64(n)-float64(df)+0.5)/(float64(df)+0.5))
		w[b] = float32(math.Pow(cidf, lexPower))
		norm += w[b]
	}
	return w, norm
}

// lexMass is the query weight that key holds.
func (m *Model) lexMass(w []float32, key []byte) float32 {
	terms, ncore, nt := m.keyTerms(key)
	var mass float32
	for i := range nt {
		b := int(termAt(terms, i))
		if b >= len(w) {
			continue
		}
		if x := w[b]; x != 0 {
			if i < ncore {
				mass += x
			} else {
				mass += windowWeight * x
			}
		}
	}
	return mass
}

// minBestShare keeps a context where nothing matches well from lighting up:
// the lexical signal is relative to the best chunk's mass, but never to less
// than this share of the query's whole weight.
const minBestShare = 0.3

// lexicalAll writes into dst the lexical signal of every key: its query
// weight relative to the best-matching chunk of the context. Relative to the
// best chunk, not to the query's total: a question names its evidence with a
// few rare words and wraps them in words ("mentioned in the provided text")
// that the evidence lacks, and a question about two needles matches each of
// them only half.
func (m *Model) lexicalAll(q *Query, keys []byte, dst []float32, workers int) {
	kb := m.KeyBytes()
	n := len(keys) / kb
	w, norm := m.contextWeights(q, keys, workers)
	if norm == 0 {
		clear(dst[:n])
		return
	}
	parts := splitRange(n, workers)
	best := make([]float32, len(parts))
	parallelFor(len(parts), workers, func(p int) {
		for c := parts[p][0]; c < parts[p][1]; c++ {
			dst[c] = m.lexMass(w, keys[c*kb:(c+1)*kb])
			best[p] = max(best[p], dst[c])
		}
	})
	ref := minBestShare * norm
	for _, b := range best {
		ref = max(ref, b)
	}
	inv := 1 / ref
	for c := range dst[:n] {
		dst[c] *= inv
	}
}

// cosine is the dot product of the query's unit vector and a key's dequantised
// vector.
func (m *Model) cosine(q *Query, key []byte) float32 {
	d := m.cfg.Dim
	scale := math.Float32frombits(binary.LittleEndian.Uint32(key[d:]))
	var dot float32
	for i, v := range q.vec {
		dot += v * float32(int8(key[i]))
	}
	return dot * scale
}

// ScoreOptions tunes one Score call.
type ScoreOptions struct {
	// Hops bounds the rounds of multi-hop expansion (relevance feedback from
	// the chunks the query kept to the chunks that name what they say); 0
	// scores the query alone.
	Hops int
}

// DefaultHops is the expansion a text-mode model does unless a policy turns
// it off: chains of up to four links (the question finds the first).
const DefaultHops = prfHops

// Score writes the logit of every chunk of a context for q into out (one key
// per chunk, len(out) keys): logit > 0 means keep, as for the LSA scorer. keys
// must hold the whole context, because lexical term weights come from it and
// relevance feedback follows terms through it. Work is spread over all cores.
// It expands the query over DefaultHops hops (ScoreWith sets that).
func (m *Model) Score(q *Query, keys []byte, out []float32) error {
	return m.ScoreWith(q, keys, out, ScoreOptions{Hops: DefaultHops})
}

// ScoreWith is Score with options.
func (m *Model) ScoreWith(q *Query, keys []byte, out []float32, opts ScoreOptions) error {
	if err := m.CheckKeys(keys); err != nil {
		return err
	}
	kb := m.KeyBytes()
	n := len(keys) / kb
	if len(out) != n {
		return fmt.Errorf("%w: %d outputs for %d keys", ErrBadKey, len(out), n)
	}
	workers := runtime.GOMAXPROCS(0)
	cal := m.calib[q.mode]
	if cal.Lex != 0 {
		m.lexicalAll(q, keys, out, workers)
	} else {
		clear(out)
	}
	parts := splitRange(n, workers)
	parallelFor(len(parts), workers, func(p int) {
		for c := parts[p][0]; c < parts[p][1]; c++ {
			var cos float32
			if cal.Dense != 0 {
				cos = m.cosine(q, keys[c*kb:(c+1)*kb])
			}
			out[c] = cal.Lex*out[c] + cal.Dense*cos + cal.Bias
		}
	})
	dilate(out)
	if opts.Hops > 0 {
		m.expand(q, keys, out, opts.Hops)
	}
	return nil
}

// Dilation: evidence is a sentence or more around the chunk that matches best,
// and its ends (often a value and a full stop, the words no query names) land
// in chunks whose keys hold fewer of the query's terms. A chunk within
// dilateRadius chunks of a strong one gets that one's logit less dilateDrop per
// chunk of distance, so a needle cut by a page boundary still counts on both
// pages.
const (
	dilateRadius = 2
	dilateDrop   = 0.75
)

func dilate(out []float32) {
	src := slices.Clone(out)
	for c, l := range src {
		if l <= dilateDrop {
			continue
		}
		for d := 1; d <= dilateRadius; d++ {
			v := l - dilateDrop*float32(d)
			if c-d >= 0 && v > out[c-d] {
				out[c-d] = v
			}
			if c+d < len(out) && v > out[c+d] {
				out[c+d] = v
			}
		}
	}
}

// expand is pseudo-relevance feedback for multi-hop evidence ("Set b to the
// value of a." found through a once "Let a equal 7." matched): for up to hops
// rounds, the specific terms of the chunks kept in the previous round (and of
// their neighbours within dilateRadius) become a second query, and chunks
// holding one of them as their own term are kept with prfLogit. A term is
// specific when the query does not hold it, it occurs at most prfMaxOccur
// times in the context (n/16384 in a context of n chunks if that is more: 8
// at 512K tokens), and it is a name, a code or an identifier: a word the
// training corpus never saw, or saw rarely (IDF ≥ prfMinIDFKnown: "Ingrid",
// "Basket"), not an ordinary word a context happens to repeat little. This
// runs in every mode: the dense signal's kept chunks seed it as well.
//
// A term is tracked as (bucket, novel): a novel term and a training word that
// share a 16-bit bucket are different words, and a bucket shared by several
// training words counts all their occurrences, which only makes it less
// specific.
func (m *Model) expand(q *Query, keys []byte, out []float32, hops int) {
	kb := m.KeyBytes()
	n := len(out)
	// Seeds: the kept chunks and their neighbours within dilateRadius (the
	// name a sentence is about may sit a few tokens before the words the
	// query matched: "You might remember Ingrid, | who is my sister.").
	var seeds []int
	for c, l := range out {
		if l > 0 {
			for s := max(c-dilateRadius, 0, seedNext(seeds)); s <= min(c+dilateRadius, n-1); s++ {
				seeds = append(seeds, s)
			}
		}
	}
	nb := m.cfg.Buckets
	// Bit sets over 2·Buckets: index b for training words, Buckets+b for novel ones.
	used := make([]uint64, (2*nb+63)/64)
	for _, b := range q.terms {
		used[int(b)>>6] |= 1 << (b & 63)
		i := nb + int(b)
		used[i>>6] |= 1 << (i & 63)
	}
	termIdx := func(terms []byte, i int, novel uint32) int {
		b := int(termAt(terms, i))
		if b >= nb {
			return -1
		}
		if novel&(1<<i) != 0 {
			return nb + b
		}
		return b
	}
	has := func(set []uint64, t int) bool { return set[t>>6]&(1<<(t&63)) != 0 }
	// A longer context mentions a name more often and it is still specific:
	// at most prfMaxOccur times, or one per prfOccurChunks chunks if that is
	// more (8 at 512K tokens).
	maxOccur := max(prfMaxOccur, n/prfOccurChunks)
	for range hops {
		if len(seeds) == 0 {
			return
		}
		if len(seeds) > prfMaxSeeds {
			// Keep the strongest seeds; ties by position for determinism.
			slices.SortStableFunc(seeds, func(a, b int) int {
				switch {
				case out[a] > out[b]:
					return -1
				case out[a] < out[b]:
					return 1
				}
				return a - b
			})
			seeds = seeds[:prfMaxSeeds]
			slices.Sort(seeds)
		}
		cand := map[int]int{}
		var order []int
		for _, c := range seeds {
			key := keys[c*kb : (c+1)*kb]
			terms, ncore, _ := m.keyTerms(key)
			novel := m.keyNovel(key)
			for i := range ncore {
				t := termIdx(terms, i, novel)
				if t < 0 || has(used, t) {
					continue
				}
				if _, ok := cand[t]; !ok && len(order) < prfMaxTerms {
					cand[t] = 0
					order = append(order, t)
				}
			}
		}
		if len(order) == 0 {
			return
		}
		// Occurrences: chunks holding the term as their own term. A bit set
		// in front of the map keeps the pass over every key cheap.
		inCand := make([]uint64, len(used))
		for _, t := range order {
			inCand[t>>6] |= 1 << (t & 63)
		}
		for c := range n {
			key := keys[c*kb : (c+1)*kb]
			terms, ncore, _ := m.keyTerms(key)
			novel := m.keyNovel(key)
			for i := range ncore {
				if t := termIdx(terms, i, novel); t >= 0 && has(inCand, t) {
					cand[t]++
				}
			}
		}
		spec := make([]uint64, len(used))
		found := false
		for _, t := range order {
			used[t>>6] |= 1 << (t & 63)
			df := cand[t]
			if df <= maxOccur && (t >= nb || m.idf[t] >= prfMinIDFKnown) {
				spec[t>>6] |= 1 << (t & 63)
				found = true
			}
		}
		if !found {
			return
		}
		hit := make([]bool, n)
		for c := range n {
			if out[c] > 0 {
				continue
			}
			key := keys[c*kb : (c+1)*kb]
			terms, ncore, _ := m.keyTerms(key)
			novel := m.keyNovel(key)
			// Only chunks holding the term themselves (not in their window):
			// a page reached by feedback then counts one or two chunks above
			// threshold, below pages the query matches directly, above pages
			// nothing matches.
			for i := range ncore {
				if t := termIdx(terms, i, novel); t >= 0 && has(spec, t) {
					hit[c] = true
					break
				}
			}
		}
		seeds = seeds[:0]
		for c, h := range hit {
			if !h {
				continue
			}
			out[c] = prfLogit
			// The next name of a chain may sit a chunk or two before
			// ("Set b | to the value | of a."), so neighbours within
			// dilateRadius seed the next round too (their own terms only;
			// their logits are unchanged).
			for s := max(c-dilateRadius, 0, seedNext(seeds)); s <= min(c+dilateRadius, n-1); s++ {
				seeds = append(seeds, s)
			}
		}
	}
}

// seedNext is the first chunk index not yet in the sorted seeds.
func seedNext(seeds []int) int {
	if len(seeds) == 0 {
		return 0
	}
	return seeds[len(seeds)-1] + 1
}

// splitRange cuts [0, n) into at most parts contiguous ranges.
func splitRange(n, parts int) [][2]int {
	if n == 0 {
		return nil
	}
	parts = max(1, min(parts, (n+1023)/1024))
	per := (n + parts - 1) / parts
	var r [][2]int
	for lo := 0; lo < n; lo += per {
		r = append(r, [2]int{lo, min(lo+per, n)})
	}
	return r
}
