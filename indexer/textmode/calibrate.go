package textmode

import (
	"math"
	"math/rand/v2"
	"slices"
)

// calibPrior is the share of positives the calibration is weighted to. Pseudo-
// queries come with about as many positive as negative chunks, but in a long
// context the evidence is a few chunks among thousands; weighting the classes
// to a 5 % prior moves the threshold to where a filler chunk rarely passes it.
const calibPrior = 0.05

type calibRow struct {
	lex, cos float32
	pos      bool
}

// calibrate fits, for each Mode, logit = a·lex + b·cos + c by weighted logistic
// regression on pseudo-queries from the held-out documents, each document
// serving as the context: a few content words of a sentence (as a question
// names a few words of its evidence) against the sentence's chunks (positives),
// random chunks and chunks elsewhere in the document that share a query word
// (negatives).
func calibrate(m *Model, docs []tdoc, opts TrainOptions, report func(Progress)) {
	rng := rand.New(rand.NewPCG(opts.Seed, 0xca11))
	keys := make([][]byte, len(docs))
	parallelFor(len(docs), opts.Workers, func(i int) { keys[i] = m.AppendChunkKeys(nil, docs[i].toks) })
	kb := m.KeyBytes()
	// Inverted index: core term bucket → chunks holding it, for hard negatives.
	type loc struct{ doc, c int32 }
	post := map[uint32][]loc{}
	for di, d := range docs {
		for j, t := range d.toks {
			b := m.bucket(t.ID)
			if m.idf[b] >= m.cfg.MinIDF {
				post[b] = append(post[b], loc{int32(di), int32(j / TokensPerChunk)})
			}
		}
	}
	var rows []calibRow
	var lex []float32
	add := func(q *Query, di, c int, pos bool) {
		rows = append(rows, calibRow{lex[c], m.cosine(q, keys[di][c*kb:(c+1)*kb]), pos})
	}
	far := func(di, c int, s [2]int, qdi int) bool {
		if di != qdi {
			return true
		}
		lo, hi := c*TokensPerChunk, (c+1)*TokensPerChunk
		return hi+2*m.cfg.Window < s[0] || lo > s[1]+2*m.cfg.Window
	}
	for di, d := range docs {
		if di%opts.HoldOut != opts.HoldOut-1 {
			continue
		}
		for _, s := range d.sents {
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
			qt := append([]Token(nil), content[:k]...)
			for range min(3, len(other)) {
				qt = append(qt, other[rng.IntN(len(other))])
			}
			q := m.NewQuery(qt, nil, Combined)
			// The document is the context: term weights come from it, as they
			// come from the request's chunks at serving time.
			lex = growSlice(lex, len(keys[di])/kb)
			m.lexicalAll(q, keys[di], lex, opts.Workers)
			for c := s[0] / TokensPerChunk; c <= (s[1]-1)/TokensPerChunk; c++ {
				add(q, di, c, true)
			}
			for range 4 {
				odi := di
				nc := NumChunks(len(docs[odi].toks))
				if nc == 0 {
					continue
				}
				c := rng.IntN(nc)
				if far(odi, c, s, di) {
					add(q, odi, c, false)
				}
			}
			for range 2 {
				ps := post[m.bucket(qt[rng.IntN(k)].ID)]
				if len(ps) == 0 {
					continue
				}
				l := ps[rng.IntN(len(ps))]
				if int(l.doc) == di && far(int(l.doc), int(l.c), s, di) {
					add(q, int(l.doc), int(l.c), false)
				}
			}
		}
	}
	var npos, nneg float64
	for _, r := range rows {
		if r.pos {
			npos++
		} else {
			nneg++
		}
	}
	if npos == 0 || nneg == 0 {
		// Nothing to fit (tiny corpus): a plain lexical rule.
		m.calib[Combined] = Calibration{Lex: 8, Bias: -4}
		m.calib[Lexical] = Calibration{Lex: 8, Bias: -4}
		m.calib[Dense] = Calibration{Dense: 8, Bias: -4}
		return
	}
	wpos := calibPrior / npos
	wneg := (1 - calibPrior) / nneg
	fits := []struct {
		mode Mode
		use  [2]bool
	}{{Combined, [2]bool{true, true}}, {Lexical, [2]bool{true, false}}, {Dense, [2]bool{false, true}}}
	for _, f := range fits {
		c := placeThreshold(rows, fitLogistic(rows, f.use, wpos, wneg))
		m.calib[f.mode] = c
		ll, acc := logLoss(rows, c, wpos, wneg)
		report(Progress{Phase: "calibrate", Step: int(f.mode) + 1, Steps: int(numModes), Loss: ll, Accuracy: acc})
	}
}

// calibFPR is the share of unrelated chunks allowed above threshold. Logistic
// regression gives the direction of the decision (how lexical and dense
// evidence trade off); the threshold itself is placed so that only this share
// of random chunks passes. Level-1 selection ranks pages by their number of
// chunks above threshold, so what matters is that unrelated pages rarely
// count at all, whatever the class balance of the calibration set was.
const calibFPR = 0.01

// placeThreshold keeps c's weights and sets its bias so that a calibFPR share
// of the negative rows score above 0.
func placeThreshold(rows []calibRow, c Calibration) Calibration {
	var neg []float32
	for _, r := range rows {
		if !r.pos {
			neg = append(neg, c.Lex*r.lex+c.Dense*r.cos)
		}
	}
	if len(neg) == 0 {
		return c
	}
	slices.Sort(neg)
	q := neg[min(len(neg)-1, int(float64(len(neg))*(1-calibFPR)))]
	c.Bias = -q
	return c
}

func logLoss(rows []calibRow, c Calibration, wpos, wneg float64) (ll, acc float64) {
	var tw float64
	for _, r := range rows {
		z := float64(c.Lex*r.lex + c.Dense*r.cos + c.Bias)
		p := 1 / (1 + math.Exp(-z))
		wt := wneg
		if r.pos {
			wt = wpos
			ll -= wt * math.Log(max(p, 1e-12))
		} else {
			ll -= wt * math.Log(max(1-p, 1e-12))
		}
		if (z > 0) == r.pos {
			acc += wt
		}
		tw += wt
	}
	return ll / tw, acc / tw
}

// fitLogistic fits weighted logistic regression with Newton's method (three
// parameters: a few iterations converge) and a small ridge so that perfectly
// separable data still gives finite weights.
func fitLogistic(rows []calibRow, use [2]bool, wpos, wneg float64) Calibration {
	const ridge = 1e-3
	var w [3]float64
	feat := func(r calibRow) [3]float64 {
		var x [3]float64
		if use[0] {
			x[0] = float64(r.lex)
		}
		if use[1] {
			x[1] = float64(r.cos)
		}
		x[2] = 1
		return x
	}
	for range 50 {
		var g [3]float64
		var h [3][3]float64
		for _, r := range rows {
			x := feat(r)
			z := w[0]*x[0] + w[1]*x[1] + w[2]*x[2]
			p := 1 / (1 + math.Exp(-z))
			y, wt := 0.0, wneg
			if r.pos {
				y, wt = 1, wpos
			}
			for i := range 3 {
				g[i] += wt * (p - y) * x[i]
				for j := range 3 {
					h[i][j] += wt * p * (1 - p) * x[i] * x[j]
				}
			}
		}
		for i := range 3 {
			g[i] += ridge * w[i]
			h[i][i] += ridge
		}
		d, ok := solve3(h, g)
		if !ok {
			break
		}
		var dn float64
		for i := range 3 {
			w[i] -= d[i]
			dn += d[i] * d[i]
		}
		if dn < 1e-12 {
			break
		}
	}
	return Calibration{Lex: float32(w[0]), Dense: float32(w[1]), Bias: float32(w[2])}
}

// solve3 solves h·d = g by Gaussian elimination with partial pivoting.
func solve3(h [3][3]float64, g [3]float64) ([3]float64, bool) {
	a := [3][4]float64{}
	for i := range 3 {
		a[i] = [4]float64{h[i][0], h[i][1], h[i][2], g[i]}
	}
	for c := range 3 {
		p := c
		for r := c + 1; r < 3; r++ {
			if math.Abs(a[r][c]) > math.Abs(a[p][c]) {
				p = r
			}
		}
		if math.Abs(a[p][c]) < 1e-15 {
			return [3]float64{}, false
		}
		a[c], a[p] = a[p], a[c]
		for r := range 3 {
			if r == c {
				continue
			}
			f := a[r][c] / a[c][c]
			for k := c; k < 4; k++ {
				a[r][k] -= f * a[c][k]
			}
		}
	}
	return [3]float64{a[0][3] / a[0][0], a[1][3] / a[1][1], a[2][3] / a[2][2]}, true
}

func growSlice(b []float32, n int) []float32 {
	if cap(b) < n {
		return make([]float32, n)
	}
	return b[:n]
}
