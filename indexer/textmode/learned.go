package textmode

import (
	"math/rand/v2"
	"slices"
	"strconv"
)

// The Learned mode: no hand-set constant of the lexical rule survives into
// it. fitLearned chooses the term weighting (how strongly a term's rarity in
// the context, and in training, make it count, and how much a term found
// only near a chunk counts) and the calibration of (lexical, dense) by what
// separates pseudo-queries' sentences from the other chunks of their
// documents, on training text only.

// learnedGrid is the search space of fitLearned.
var learnedGrid = struct{ power, trainPower, window []float32 }{
	power:      []float32{1, 2, 3, 4},
	trainPower: []float32{0, 0.5, 1, 2},
	window:     []float32{0.3, 0.6, 1},
}

// learnedMaxQueries bounds the pseudo-queries of the fit (each costs one
// lexical pass over its document per grid point).
const learnedMaxQueries = 3000

type pseudoQuery struct {
	q        *Query
	doc      int
	pos, neg []int
}

// pseudoQueries draws, from the documents use accepts, pseudo-queries as
// calibrate does (2–4 content words of a sentence plus up to 3 other words),
// each with its sentence's chunks as positives and, as negatives, 4 random
// chunks of the same document and 2 chunks elsewhere in it that share a query
// word (same topic, other facts): at least 2·Window tokens from the sentence.
func pseudoQueries(m *Model, docs []tdoc, use func(int) bool, rng *rand.Rand, mode Mode) []pseudoQuery {
	type loc struct{ doc, c int32 }
	post := map[uint32][]loc{}
	var cands [][2]int
	for di, d := range docs {
		if !use(di) {
			continue
		}
		for j, t := range d.toks {
			b := m.bucket(t.ID)
			if m.idf[b] >= m.cfg.MinIDF {
				post[b] = append(post[b], loc{int32(di), int32(j / TokensPerChunk)})
			}
		}
		for s := range d.sents {
			cands = append(cands, [2]int{di, s})
		}
	}
	rng.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	var out []pseudoQuery
	// docFreq counts the occurrences of each term bucket in document di,
	// once per document.
	docDF := map[int]map[uint32]int{}
	docFreq := func(di int) map[uint32]int {
		dfs := docDF[di]
		if dfs == nil {
			dfs = map[uint32]int{}
			for _, t := range docs[di].toks {
				dfs[m.bucket(t.ID)]++
			}
			docDF[di] = dfs
		}
		return dfs
	}
	for _, cs := range cands {
		if len(out) >= learnedMaxQueries {
			break
		}
		di, d := cs[0], docs[cs[0]]
		s := d.sents[cs[1]]
		var content, other []Token
		for _, t := range d.toks[s[0]:s[1]] {
			if m.IDF(t.ID) >= m.cfg.MinIDF {
				content = append(content, t)
			} else {
				other = append(other, t)
			}
		}
		if len(content) < 2 {
			continue
		}
		rng.Shuffle(len(content), func(i, j int) { content[i], content[j] = content[j], content[i] })
		k := min(len(content), 2+rng.IntN(3))
		if len(out)%2 == 1 {
			// Every second query names its sentence as a question names a
			// fact among similar ones: by the sentence's rarest word in the
			// document (a name, a code), wrapped in 1–3 of its words that
			// the document uses most (the words its other facts share).
			dfs := docFreq(di)
			slices.SortStableFunc(content, func(a, b Token) int { return dfs[m.bucket(a.ID)] - dfs[m.bucket(b.ID)] })
			rare, common := content[0], content[1:]
			if dfs[m.bucket(rare.ID)] > 3 || len(common) == 0 || dfs[m.bucket(common[len(common)-1].ID)] < 8 {
				continue
			}
			slices.Reverse(common)
			k = min(len(common), 1+rng.IntN(3)) + 1
			content = append([]Token{rare}, common[:k-1]...)
		}
		qt := append([]Token(nil), content[:k]...)
		// A question also carries words its evidence lacks ("In which
		// city …", "mentioned in the text"), words its context uses often:
		// 1–2 content words that occur at least 8 times in the document,
		// drawn from its other sentences.
		dfs := docFreq(di)
		for range 2 * (1 + rng.IntN(2)) {
			o := d.sents[rng.IntN(len(d.sents))]
			if o == s {
				continue
			}
			t := d.toks[o[0]+rng.IntN(o[1]-o[0])]
			if m.IDF(t.ID) >= m.cfg.MinIDF && dfs[m.bucket(t.ID)] >= 8 {
				qt = append(qt, t)
			}
		}
		for range min(3, len(other)) {
			qt = append(qt, other[rng.IntN(len(other))])
		}
		pq := pseudoQuery{q: m.NewQuery(qt, nil, mode), doc: di}
		for c := s[0] / TokensPerChunk; c <= (s[1]-1)/TokensPerChunk; c++ {
			pq.pos = append(pq.pos, c)
		}
		far := func(c int) bool {
			lo, hi := c*TokensPerChunk, (c+1)*TokensPerChunk
			return hi+2*m.cfg.Window < s[0] || lo > s[1]+2*m.cfg.Window
		}
		nc := NumChunks(len(d.toks))
		for range 4 {
			if c := rng.IntN(nc); far(c) {
				pq.neg = append(pq.neg, c)
			}
		}
		for range 2 {
			ps := post[m.bucket(qt[rng.IntN(k)].ID)]
			if len(ps) == 0 {
				continue
			}
			if l := ps[rng.IntN(len(ps))]; int(l.doc) == di && far(int(l.c)) {
				pq.neg = append(pq.neg, int(l.c))
			}
		}
		out = append(out, pq)
	}
	return out
}

// fitLearned fits the Learned mode's term weighting and calibration on the
// documents use accepts: for every point of learnedGrid, the pseudo-queries'
// rows (lexical signal under that weighting, cosine) get a logistic fit and a
// threshold passing calibFPR of the negatives, and the point under which the
// pseudo-queries' sentences rank highest among all chunks of their documents
// (mean reciprocal rank; ties: the lower loss, then the grid order) wins.
// Deterministic for a seed.
func fitLearned(m *Model, docs []tdoc, use func(int) bool, opts TrainOptions, report func(Progress)) {
	workers := opts.Workers
	powers := learnedGrid.power
	if len(opts.LearnedPowers) > 0 {
		powers = opts.LearnedPowers
	}
	rng := rand.New(rand.NewPCG(opts.Seed, 0x1ea7))
	pqs := pseudoQueries(m, docs, use, rng, Learned)
	if len(pqs) == 0 {
		m.tw, m.calib[Learned] = LexicalWeighting, m.calib[Combined]
		return
	}
	keys := map[int][]byte{}
	for _, pq := range pqs {
		if keys[pq.doc] == nil {
			keys[pq.doc] = m.AppendChunkKeys(nil, docs[pq.doc].toks)
		}
	}
	kb := m.KeyBytes()
	coss := make([][]float32, len(pqs))
	var npos, nneg float64
	for i, pq := range pqs {
		for _, c := range append(append([]int(nil), pq.pos...), pq.neg...) {
			coss[i] = append(coss[i], m.cosine(pq.q, keys[pq.doc][c*kb:(c+1)*kb]))
		}
		npos += float64(len(pq.pos))
		nneg += float64(len(pq.neg))
	}
	wpos, wneg := calibPrior/npos, (1-calibPrior)/nneg
	type result struct {
		tw   TermWeighting
		cal  Calibration
		tpr  float64
		loss float64
	}
	var best *result
	step := 0
	steps := len(powers) * len(learnedGrid.trainPower) * len(learnedGrid.window)
	// Each query's lexical signal under the grid point, kept from the rows'
	// pass for the ranking pass (the buffers are reused across points).
	lexes := make([][]float32, len(pqs))
	for _, p := range powers {
		for _, tp := range learnedGrid.trainPower {
			for _, w := range learnedGrid.window {
				m.tw = TermWeighting{Power: p, TrainPower: tp, Window: w}
				var rows []calibRow
				for i, pq := range pqs {
					lexes[i] = growSlice(lexes[i], len(keys[pq.doc])/kb)
					lex := lexes[i]
					m.lexicalAll(pq.q, keys[pq.doc], lex, workers)
					for j, c := range pq.pos {
						rows = append(rows, calibRow{lex[c], coss[i][j], true})
					}
					for j, c := range pq.neg {
						rows = append(rows, calibRow{lex[c], coss[i][len(pq.pos)+j], false})
					}
				}
				cal := placeThreshold(rows, fitLogistic(rows, [2]bool{true, true}, wpos, wneg))
				// What selection needs: the sentence's best chunk ranked
				// above the rest of its document (chunks near it aside).
				var mrr float64
				for i, pq := range pqs {
					lex := lexes[i]
					var top float32 = -1e30
					for j, c := range pq.pos {
						top = max(top, cal.Lex*lex[c]+cal.Dense*coss[i][j])
					}
					lo, hi := pq.pos[0]-2*m.cfg.Window/TokensPerChunk, pq.pos[len(pq.pos)-1]+2*m.cfg.Window/TokensPerChunk
					rank := 0
					dk := keys[pq.doc]
					for c := range len(dk) / kb {
						if c >= lo && c <= hi {
							continue
						}
						if v := cal.Lex * lex[c]; v+cal.Dense >= top || v-cal.Dense >= top {
							if v+cal.Dense*m.cosine(pq.q, dk[c*kb:(c+1)*kb]) >= top {
								rank++
							}
						}
					}
					mrr += 1 / float64(1+rank)
				}
				tp, all := mrr, float64(len(pqs))
				ll, _ := logLoss(rows, cal, wpos, wneg)
				r := &result{m.tw, cal, tp / all, ll}
				if best == nil || r.tpr > best.tpr || r.tpr == best.tpr && r.loss < best.loss {
					best = r
				}
				step++
				report(Progress{Phase: "fit-learned", Step: step, Steps: steps, Loss: ll, Accuracy: r.tpr})
			}
		}
	}
	m.tw, m.calib[Learned] = best.tw, best.cal
	m.meta["learned_queries"] = strconv.Itoa(len(pqs))
	m.meta["learned_tpr"] = strconv.FormatFloat(best.tpr, 'f', 4, 64)
}

// FitLearned fits the Learned mode of an already trained model on docs (its
// embeddings, IDF and the other modes' calibrations stay as they are) and
// returns the refitted copy: how a model trained on one corpus learns its
// term weighting from more varied text. Deterministic for opts.Seed.
func FitLearned(m *Model, docs []Document, opts TrainOptions) *Model {
	opts.fill()
	cp := *m
	cp.meta = map[string]string{}
	for k, v := range m.meta {
		cp.meta[k] = v
	}
	td := prepDocs(docs, opts.Workers)
	buildDict(&cp, docs)
	report := func(p Progress) {
		if opts.Progress != nil {
			opts.Progress(p)
		}
	}
	fitLearned(&cp, td, func(int) bool { return true }, opts, report)
	if opts.Corpus != "" {
		cp.meta["learned_fitted_on"] = opts.Corpus
	}
	return &cp
}
