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
	// A two-word name ("Crate 78") is followed when neither word is
	// specific alone but the pair is: it occurs at least twice, at most as
	// often as a specific term, and prfBigramLift times more often than its
	// words' frequencies predict (count·chunks ≥ lift·occ(a)·occ(b): "or
	// may" is frequent because "or" and "may" are, "Crate 78" is not), and
	// each word also occurs without the other: a pair whose word never
	// occurs apart is that word ("philosophe|rs", one word in two pieces),
	// which the single-word rule has judged already.
	// Occurrences within prfBigramNear chunks of where it was seen are not
	// lit: a phrase a passage repeats is its topic, not a link elsewhere.
	prfBigramLift = 150
	prfBigramNear = 32
	// prfLogit is the logit given to chunks found by relevance feedback: just
	// above the keep threshold, below any chunk the query matches directly.
	prfLogit = 0.5
	// pageChunks is the page size the indexer's selection counts chunks in
	// (64 chunks, as in LSA and every flashmemd layout the text mode serves).
	pageChunks = 64
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
func (m *Model) contextWeights(q *Query, keys []byte, workers int, tw TermWeighting) (w []float32, norm float32) {
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
		// LexicalWeighting (TrainPower 0) gives cidf^lexPower exactly:
		// x^0 is 1 for every x.
		w[b] = float32(math.Pow(cidf, float64(tw.Power)) * math.Pow(float64(m.idf[b]), float64(tw.TrainPower)))
		norm += w[b]
	}
	return w, norm
}

// lexMass is the query weight that key holds.
func (m *Model) lexMass(w []float32, key []byte, window float32) float32 {
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
				mass += window * x
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
	tw := LexicalWeighting
	if q.mode == Learned {
		tw = m.tw
	}
	w, norm := m.contextWeights(q, keys, workers, tw)
	if (q.mode == Learned || q.mode == Combined) && m.dict != nil {
		// Words of the question the context never uses: the evidence says
		// it otherwise, and the dictionary may know how.
		var absent []uint16
		for _, b := range q.terms {
			if w[b] == 0 {
				absent = append(absent, b)
			}
		}
		if heads := m.dict.borrow(q, absent); len(heads) > 0 {
			hq := &Query{mode: q.mode, terms: heads}
			hq.buildSet(m.cfg.Buckets)
			hw, hn := m.contextWeights(hq, keys, workers, tw)
			for _, h := range heads {
				w[h] = hw[h]
			}
			norm += hn
		}
	}
	if norm == 0 {
		clear(dst[:n])
		return
	}
	parts := splitRange(n, workers)
	mass := func(w []float32, dst []float32) (best float32, at int) {
		bests := make([]float32, len(parts))
		ats := make([]int, len(parts))
		parallelFor(len(parts), workers, func(p int) {
			ats[p] = -1
			for c := parts[p][0]; c < parts[p][1]; c++ {
				dst[c] = m.lexMass(w, keys[c*kb:(c+1)*kb], tw.Window)
				if dst[c] > bests[p] {
					bests[p], ats[p] = dst[c], c
				}
			}
		})
		at = -1
		for p, b := range bests {
			if b > best {
				best, at = b, ats[p]
			}
		}
		return best, at
	}
	best, at := mass(w, dst)
	ref := max(minBestShare*norm, best)
	inv := 1 / ref
	for c := range dst[:n] {
		dst[c] *= inv
	}
	if at < 0 {
		return
	}
	// A second clause. A question about two things ("… to Project Pewter
	// Citadel and unit SC-6224?") matches each of their chunks only in part,
	// and relative to the better one the other can fall under the threshold.
	// The query terms the best chunk's key lacks form a clause of their own
	// when the best chunk for them alone holds clauseShare of the whole
	// query's weight and at least two of them that name something: rare in
	// the context (weight ≥ clauseRare of the query's heaviest term) and rare
	// in training (IDF ≥ prfMinIDFKnown: "Citadel", "SC", not "kept" or "head
	// office", which a context may happen to repeat little). Chunks then keep
	// the better of their signal and their signal relative to that chunk.
	w2 := slices.Clone(w)
	terms, _, nt := m.keyTerms(keys[at*kb : (at+1)*kb])
	for i := range nt {
		if b := int(termAt(terms, i)); b < len(w2) {
			w2[b] = 0
		}
	}
	var norm2, maxW float32
	for _, b := range q.terms {
		norm2 += w2[b]
		maxW = max(maxW, w[b])
	}
	if norm2 < clauseShare*norm {
		return
	}
	second := make([]float32, n)
	best2, at2 := mass(w2, second)
	if best2 < clauseShare*norm || m.namingTerms(w2, keys[at2*kb:(at2+1)*kb], clauseRare*maxW) < 2 {
		return
	}
	inv2 := 1 / best2
	for c, v := range second {
		dst[c] = max(dst[c], v*inv2)
	}
}

// Second-clause thresholds (see lexicalAll).
const (
	clauseShare = 0.2
	clauseRare  = 0.4
)

// namingTerms counts the terms of key that weigh at least min in w and are
// rare in training.
func (m *Model) namingTerms(w []float32, key []byte, min float32) int {
	terms, _, nt := m.keyTerms(key)
	k := 0
	for i := range nt {
		if b := int(termAt(terms, i)); b < len(w) && w[b] != 0 && w[b] >= min && m.idf[b] >= prfMinIDFKnown {
			k++
		}
	}
	return k
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
	// Reached, when not nil (one entry per chunk), receives for every chunk
	// the expansion round that lit it (1 … Hops) and 0 for every other
	// chunk: those the query itself kept, and those nothing kept. Page
	// allocation (PageTiers) reads it.
	Reached []uint8
	// Tail, when positive, is the first chunk of the context's recent tail
	// (resident whatever the scores: what a decoder has just written, its
	// earlier answers among it). Expansion counts, follows and lights names
	// only before it: an earlier answer lists other questions' names
	// ("Crate 17, Bin 40, …"), which would make them look common and, once
	// reached, seed every other chain; the words the decoder is writing now
	// reach the scorer as the query's answer terms already. Chunks the query
	// itself matches there still seed the first hop.
	Tail int
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
	if opts.Reached != nil {
		if len(opts.Reached) != n {
			return fmt.Errorf("%w: %d reach entries for %d keys", ErrBadKey, len(opts.Reached), n)
		}
		clear(opts.Reached)
	}
	if opts.Hops > 0 {
		m.expand(q, keys, out, opts.Hops, opts.Reached, opts.Tail)
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
// "Basket"), not an ordinary word a context happens to repeat little. Two
// adjacent words that are not specific alone are followed as a pair when the
// pair is ("Crate 78": see prfBigramLift). This runs in every mode: the dense
// signal's kept chunks seed it as well.
//
// A term is tracked as (bucket, novel): a novel term and a training word that
// share a 16-bit bucket are different words, and a bucket shared by several
// training words counts all their occurrences, which only makes it less
// specific.
func (m *Model) expand(q *Query, keys []byte, out []float32, hops int, reached []uint8, tail int) {
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
	if len(seeds) == 0 {
		return
	}
	nb := m.cfg.Buckets
	// Bit sets over 2·Buckets: index b for training words, Buckets+b for novel ones.
	used := make([]uint64, (2*nb+63)/64)
	inQuery := make([]uint64, len(used))
	for _, b := range q.terms {
		used[int(b)>>6] |= 1 << (b & 63)
		i := nb + int(b)
		used[i>>6] |= 1 << (i & 63)
	}
	copy(inQuery, used)
	has := func(set []uint64, t int) bool { return set[t>>6]&(1<<(t&63)) != 0 }
	// core returns a chunk's own terms as term indices, in text order.
	core := func(dst []int, c int) []int {
		key := keys[c*kb : (c+1)*kb]
		terms, ncore, _ := m.keyTerms(key)
		novel := m.keyNovel(key)
		dst = dst[:0]
		for i := range ncore {
			b := int(termAt(terms, i))
			if b >= nb {
				continue
			}
			if novel&(1<<i) != 0 {
				b += nb
			}
			dst = append(dst, b)
		}
		return dst
	}
	// Occurrences of every term as a chunk's own term, counted once.
	// The recent tail (when the request has one) is resident whatever the
	// scores and holds what the decoder wrote, its earlier answers among
	// them: names are counted, and followed, in the context before it, so
	// an answer that repeats a name does not make it look common.
	limit := n
	if tail > 0 && tail < n {
		limit = tail
	}
	occ := make([]int32, 2*nb)
	{
		var ts []int
		for c := range limit {
			ts = core(ts, c)
			for _, t := range ts {
				occ[t]++
			}
		}
	}
	// A longer context mentions a name more often and it is still specific:
	// at most prfMaxOccur times, or one per prfOccurChunks chunks if that is
	// more (8 at 512K tokens).
	maxOccur := int32(max(prfMaxOccur, n/prfOccurChunks))
	specific := func(t int) bool {
		return occ[t] <= maxOccur && (t >= nb || m.idf[t] >= prfMinIDFKnown)
	}
	usedBi := map[uint64]bool{}
	var ts, ts2 []int
	for round := range hops {
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
		spec := make([]uint64, len(used))
		found := false
		nterms := 0
		// Two-word names ("Crate 78", "Birch Ledger"): adjacent own terms
		// of a seed chunk (or the last of one and the first of the next),
		// neither specific alone, both outside the query.
		var bis []uint64
		biFirst := make([]uint64, len(used))
		seedPairs := map[uint64]bool{}
		for _, c := range seeds {
			ts = core(ts, c)
			for _, t := range ts {
				if has(used, t) || nterms >= prfMaxTerms {
					continue
				}
				used[t>>6] |= 1 << (t & 63)
				nterms++
				if specific(t) {
					spec[t>>6] |= 1 << (t & 63)
					found = true
				}
			}
			pair := ts
			if c+1 < n {
				ts2 = core(ts2, c+1)
				if len(ts2) > 0 {
					pair = append(ts2[:0:0], ts...)
					pair = append(pair, ts2[0])
				}
			}
			for i := 0; i+1 < len(pair); i++ {
				a, b := pair[i], pair[i+1]
				if has(spec, a) || has(spec, b) {
					seedPairs[uint64(a)<<32|uint64(b)] = true
				}
				if a == b || has(inQuery, a) || has(inQuery, b) || specific(a) || specific(b) {
					continue
				}
				k := uint64(a)<<32 | uint64(b)
				if usedBi[k] || len(bis) >= prfMaxTerms {
					continue
				}
				usedBi[k] = true
				bis = append(bis, k)
				biFirst[a>>6] |= 1 << (a & 63)
			}
		}
		// Occurrences of the candidate bigrams and where they are.
		var biHits map[uint64][]int
		if len(bis) > 0 {
			biHits = make(map[uint64][]int, len(bis))
			for _, k := range bis {
				biHits[k] = nil
			}
			prevLast := -1
			for c := range limit {
				ts = core(ts, c)
				if prevLast >= 0 && len(ts) > 0 && has(biFirst, prevLast) {
					k := uint64(prevLast)<<32 | uint64(ts[0])
					if h, ok := biHits[k]; ok && len(h) <= 2*int(maxOccur)+2 {
						biHits[k] = append(h, c-1, c)
					}
				}
				for i := 0; i+1 < len(ts); i++ {
					if !has(biFirst, ts[i]) {
						continue
					}
					k := uint64(ts[i])<<32 | uint64(ts[i+1])
					if h, ok := biHits[k]; ok && len(h) <= 2*int(maxOccur)+2 {
						biHits[k] = append(h, c, c)
					}
				}
				prevLast = -1
				if len(ts) > 0 {
					prevLast = ts[len(ts)-1]
				}
			}
		}
		hit := make([]bool, n)
		weak := make([]bool, n)
		isSeed := make([]bool, n)
		for _, c := range seeds {
			isSeed[c] = true
		}
		for _, k := range bis {
			h := biHits[k]
			cnt := int32(len(h) / 2)
			a, b := int(k>>32), int(k&0xffffffff)
			if cnt < 2 || cnt > maxOccur || float64(cnt)*float64(n) < prfBigramLift*float64(occ[a])*float64(occ[b]) || occ[a] <= cnt || occ[b] <= cnt {
				continue
			}
			// Only occurrences far from where the bigram was seen: a phrase
			// a passage repeats is a topic, and lighting its neighbourhood
			// reaches nothing a page or its neighbours do not hold already.
			for i := 0; i < len(h); i += 2 {
				far := true
				for j := 0; j < len(h); j += 2 {
					if (isSeed[h[j]] || isSeed[h[j+1]]) && absInt(h[i]-h[j]) <= prfBigramNear {
						far = false
						break
					}
				}
				if !far {
					continue
				}
				for _, c := range h[i : i+2] {
					if out[c] <= 0 {
						hit[c] = true
						weak[c] = cnt > 2
					}
				}
			}
		}
		if found {
			for c := range limit {
				if out[c] > 0 || hit[c] {
					continue
				}
				// Only chunks holding the term themselves (not in their
				// window): a page reached by feedback then counts one or two
				// chunks above threshold, below pages the query matches
				// directly, above pages nothing matches.
				ts = core(ts, c)
				w := true
				for i, t := range ts {
					if !has(spec, t) {
						continue
					}
					// A link is strong when its term names one thing: it
					// occurs at most twice (where it was seen and here), or
					// it stands here next to the word it stood next to
					// there ("Basket | 11"). A word of the training
					// vocabulary that the context uses more often than
					// that is followed only so: "11" or "Ingrid" alone
					// would reach every other "11" of the context. A seed
					// chunk lighting itself is not a link.
					strong := !isSeed[c] && (occ[t] <= 2 || m.pairSeen(seedPairs, keys, c, ts, i))
					if !strong && !isSeed[c] && t < nb && occ[t] > 2 {
						continue
					}
					hit[c] = true
					w = w && !strong
				}
				if hit[c] {
					weak[c] = w
				}
			}
		}
		// A sentence reached by feedback and cut by a page boundary: the
		// chunk holding the name is on one page, the rest of the sentence
		// (within dilateRadius) on the next or previous one, which then
		// counts nothing and is not selected. Light those chunks across the
		// boundary, and only those: a page's count is what selection ranks,
		// and lighting a hit's neighbours on its own page would raise noise
		// pages as much as links.
		for c, h := range hit {
			if !h {
				continue
			}
			for s := max(c-dilateRadius, 0); s <= min(c+dilateRadius, n-1); s++ {
				if s/pageChunks != c/pageChunks && out[s] <= 0 && !hit[s] {
					out[s] = prfLogit
					if reached != nil {
						reached[s] = reach(round, weak[c])
					}
				}
			}
		}
		seeds = seeds[:0]
		for c, h := range hit {
			if !h {
				continue
			}
			out[c] = prfLogit
			if reached != nil {
				reached[c] = reach(round, weak[c])
			}
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

func absInt(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// ReachedWeak flags a ScoreOptions.Reached entry whose chunk was lit by a weak
// link: a term that occurs more than twice in the context and not with the
// neighbour it had where it was seen, a two-word name occurring more than
// twice, or a seed chunk lighting itself.
const ReachedWeak = 0x80

func reach(round int, weak bool) uint8 {
	r := uint8(round + 1)
	if weak {
		r |= ReachedWeak
	}
	return r
}

// pairSeen reports whether term ts[i] of chunk c stands next to the same term
// as it did in a seed (the previous chunk's last term and the next chunk's
// first count as neighbours).
func (m *Model) pairSeen(seedPairs map[uint64]bool, keys []byte, c int, ts []int, i int) bool {
	if len(seedPairs) == 0 {
		return false
	}
	t := ts[i]
	kb := m.KeyBytes()
	nb := m.cfg.Buckets
	termOf := func(c, j int) int {
		key := keys[c*kb : (c+1)*kb]
		terms, ncore, _ := m.keyTerms(key)
		if j < 0 {
			j = ncore + j
		}
		if j < 0 || j >= ncore {
			return -1
		}
		b := int(termAt(terms, j))
		if b >= nb {
			return -1
		}
		if m.keyNovel(key)&(1<<j) != 0 {
			b += nb
		}
		return b
	}
	left, right := -1, -1
	if i > 0 {
		left = ts[i-1]
	} else if c > 0 {
		left = termOf(c-1, -1)
	}
	if i+1 < len(ts) {
		right = ts[i+1]
	} else if c+1 < len(keys)/kb {
		right = termOf(c+1, 0)
	}
	return left >= 0 && seedPairs[uint64(left)<<32|uint64(t)] || right >= 0 && seedPairs[uint64(t)<<32|uint64(right)]
}
