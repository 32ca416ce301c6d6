package textmode

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"sync"
)

// Document is one unlabelled training text.
type Document struct {
	Name string
	Text string
}

// TrainOptions configures Train. Zero fields take the defaults of
// DefaultTrainOptions.
type TrainOptions struct {
	Config Config
	// Seed makes training deterministic: the same documents, options and seed
	// give bit-identical models, whatever Workers is.
	Seed uint64
	// Epochs over the training sentences.
	Epochs int
	// BatchSize is the number of (sentence, chunk) pairs per step; each pair's
	// chunk is a negative for every other pair (in-batch negatives).
	BatchSize int
	// Temperature of the InfoNCE softmax.
	Temperature float32
	// LR is the Adam learning rate of the two projections.
	LR float32
	// EmbedLR is the Adagrad learning rate of the embedding rows.
	EmbedLR float32
	// MaskProb is the probability that a chunk's own tokens are removed from its
	// query sentence, so the encoders must learn which words occur near which
	// (not only exact overlap, which the lexical signal covers).
	MaskProb float64
	// HardNegatives adds to every pair a negative chunk from the same document,
	// at least hardNegGap chunks away from its sentence: same topic, same
	// templates, other facts — the confusions in-batch negatives from other
	// documents rarely show.
	HardNegatives bool
	// HoldOut: every HoldOut-th document is kept out of the contrastive training
	// and used for validation and calibration.
	HoldOut int
	// Workers is the number of goroutines (default GOMAXPROCS).
	Workers int
	// Progress, if set, is called after every step and at phase changes.
	Progress func(Progress)
	// Corpus describes the training text for the model's metadata.
	Corpus string
	// LearnedPowers restricts the context-IDF powers the Learned mode's fit
	// searches (default 1, 2, 3, 4): candidates for a model selection made
	// elsewhere (docs/evaluation.md).
	LearnedPowers []float32
}

// DefaultTrainOptions are the options the shipped default model was trained
// with.
func DefaultTrainOptions() TrainOptions {
	return TrainOptions{
		Config: DefaultConfig(), Seed: 1, Epochs: 40, BatchSize: 128, Temperature: 0.05,
		LR: 2e-3, EmbedLR: 0.05, MaskProb: 0.5, HoldOut: 10,
	}
}

// Progress reports training progress.
type Progress struct {
	Phase string // "idf", "train", "calibrate", "done"
	Step  int    // steps done in this phase
	Steps int    // total steps of this phase
	// Loss is the mean InfoNCE loss of the last step (train) or the validation
	// log-loss of the calibration (calibrate).
	Loss float64
	// Accuracy is the in-batch top-1 accuracy of the last step (train), or the
	// validation top-1 accuracy at the end of an epoch, or the calibration
	// accuracy.
	Accuracy float64
	// ValAccuracy is the held-out top-1 accuracy, updated once per epoch.
	ValAccuracy float64
}

func (o *TrainOptions) fill() {
	d := DefaultTrainOptions()
	if o.Config == (Config{}) {
		o.Config = d.Config
	}
	if o.Epochs <= 0 {
		o.Epochs = d.Epochs
	}
	if o.BatchSize <= 1 {
		o.BatchSize = d.BatchSize
	}
	if o.Temperature <= 0 {
		o.Temperature = d.Temperature
	}
	if o.LR <= 0 {
		o.LR = d.LR
	}
	if o.EmbedLR <= 0 {
		o.EmbedLR = d.EmbedLR
	}
	if o.MaskProb < 0 || o.MaskProb > 1 {
		o.MaskProb = d.MaskProb
	}
	if o.HoldOut < 2 {
		o.HoldOut = d.HoldOut
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
}

type tdoc struct {
	toks  []Token
	sents [][2]int // token ranges [lo, hi)
}

// minSentenceTokens: shorter sentences ("Why?") make queries with no signal.
const minSentenceTokens = 8

func prepDocs(docs []Document, workers int) []tdoc {
	out := make([]tdoc, len(docs))
	parallelFor(len(docs), workers, func(i int) {
		toks := Tokenize(docs[i].Text)
		var sents [][2]int
		lo := 0
		for j, t := range toks {
			if IsSentenceEnd(docs[i].Text, t) || t.Start > 0 && docs[i].Text[t.Start-1] == '\n' && j > lo && j-lo > 40 {
				if j+1-lo >= minSentenceTokens {
					sents = append(sents, [2]int{lo, j + 1})
				}
				lo = j + 1
			}
		}
		out[i] = tdoc{toks, sents}
	})
	return out
}

// idfWindow is the "document" unit of the IDF statistics: 64 tokens, about the
// span a query term must be found in to matter.
const idfWindow = 64

func computeIDF(m *Model, docs []tdoc) {
	df := make([]int32, m.cfg.Buckets)
	var n int
	seen := make([]int32, m.cfg.Buckets) // last window that counted each bucket
	for i := range seen {
		seen[i] = -1
	}
	for _, d := range docs {
		for lo := 0; lo < len(d.toks); lo += idfWindow {
			n++
			for _, t := range d.toks[lo:min(lo+idfWindow, len(d.toks))] {
				b := m.bucket(t.ID)
				if seen[b] != int32(n) {
					seen[b] = int32(n)
					df[b]++
				}
			}
		}
	}
	for b := range df {
		m.idf[b] = float32(math.Log(1 + (float64(n)-float64(df[b])+0.5)/(float64(df[b])+0.5)))
	}
}

// pair is one training example: a query token list and a chunk of a document.
type pair struct {
	q   []Token
	doc int
	c   int
	neg int // hard negative chunk of the same document, −1 for none
}

// hardNegGap is the least distance in chunks between a pair's chunk and its
// hard negative (about 64 tokens: another passage, not the same sentence).
const hardNegGap = 16

func makePair(rng *rand.Rand, docs []tdoc, di, si int, maskProb float64, hardNeg bool) pair {
	d := &docs[di]
	s := d.sents[si]
	// A chunk whose tokens lie in the sentence (chunk grid of the document).
	c0 := s[0] / TokensPerChunk
	c1 := (s[1] - 1) / TokensPerChunk
	c := c0 + rng.IntN(c1-c0+1)
	q := d.toks[s[0]:s[1]]
	if rng.Float64() < maskProb {
		lo, hi := c*TokensPerChunk, min((c+1)*TokensPerChunk, len(d.toks))
		mq := make([]Token, 0, len(q))
		for j := s[0]; j < s[1]; j++ {
			if j < lo || j >= hi {
				mq = append(mq, d.toks[j])
			}
		}
		q = mq
	}
	p := pair{q: q, doc: di, c: c, neg: -1}
	if hardNeg {
		nc := NumChunks(len(d.toks))
		// Chunks at least hardNegGap away on either side.
		lo, hi := c0-hardNegGap, c1+hardNegGap
		if free := max(lo+1, 0) + max(nc-hi, 0); free > 0 {
			k := rng.IntN(free)
			if k <= lo {
				p.neg = k
			} else {
				p.neg = hi + (k - max(lo+1, 0))
			}
		}
	}
	return p
}

// Train builds IDF statistics, trains the dual encoder contrastively on
// (sentence → a chunk inside it) pairs from docs, and calibrates the logit of
// every Mode by logistic regression on held-out pseudo-queries.
func Train(ctx context.Context, docs []Document, opts TrainOptions) (*Model, error) {
	opts.fill()
	m, err := newModel(opts.Config)
	if err != nil {
		return nil, err
	}
	report := func(p Progress) {
		if opts.Progress != nil {
			opts.Progress(p)
		}
	}
	report(Progress{Phase: "idf"})
	td := prepDocs(docs, opts.Workers)
	computeIDF(m, td)
	vocab := map[uint32]struct{}{}
	for _, d := range td {
		for _, tk := range d.toks {
			vocab[tk.ID] = struct{}{}
		}
	}
	m.bloom = buildBloom(vocab)

	type sref struct{ doc, sent int }
	var train, val []sref
	for i, d := range td {
		for s := range d.sents {
			if i%opts.HoldOut == opts.HoldOut-1 {
				val = append(val, sref{i, s})
			} else {
				train = append(train, sref{i, s})
			}
		}
	}
	if len(train) < opts.BatchSize || len(val) < opts.BatchSize {
		return nil, fmt.Errorf("%w: %d training and %d held-out sentences, need %d each", ErrNoData, len(train), len(val), opts.BatchSize)
	}

	rng := rand.New(rand.NewPCG(opts.Seed, 0x7e47))
	dim := m.cfg.Dim
	a := float32(math.Sqrt(3.0 / float64(dim)))
	for i := range m.embed {
		m.embed[i] = (2*rng.Float32() - 1) * a
	}
	for i := range dim {
		m.wq[i*dim+i] = 1
		m.wc[i*dim+i] = 1
	}

	tr := newTrainer(m, opts)
	stepsPerEpoch := len(train) / opts.BatchSize
	steps := stepsPerEpoch * opts.Epochs
	batch := make([]pair, opts.BatchSize)
	var valAcc float64
	step := 0
	for ep := range opts.Epochs {
		rng.Shuffle(len(train), func(i, j int) { train[i], train[j] = train[j], train[i] })
		for s := range stepsPerEpoch {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			for i := range batch {
				r := train[s*opts.BatchSize+i]
				batch[i] = makePair(rng, td, r.doc, r.sent, opts.MaskProb, opts.HardNegatives)
			}
			loss, acc := tr.step(td, batch, true)
			step++
			report(Progress{Phase: "train", Step: step, Steps: steps, Loss: loss, Accuracy: acc, ValAccuracy: valAcc})
		}
		// Validation: fixed held-out batches (same seed every epoch), no update.
		vr := rand.New(rand.NewPCG(opts.Seed, 0x5a1))
		var accSum float64
		nb := min(len(val)/opts.BatchSize, 8)
		for b := range nb {
			for i := range batch {
				r := val[b*opts.BatchSize+i]
				batch[i] = makePair(vr, td, r.doc, r.sent, opts.MaskProb, false)
			}
			_, acc := tr.step(td, batch, false)
			accSum += acc
		}
		valAcc = accSum / float64(nb)
		report(Progress{Phase: "train", Step: step, Steps: steps, Accuracy: valAcc, ValAccuracy: valAcc})
		_ = ep
	}

	calibrate(m, td, opts, report)
	buildDict(m, docs)
	fitLearned(m, td, func(di int) bool { return di%opts.HoldOut == opts.HoldOut-1 }, opts, report)

	m.meta["trained_on"] = opts.Corpus
	m.meta["documents"] = strconv.Itoa(len(docs))
	m.meta["train_sentences"] = strconv.Itoa(len(train))
	m.meta["heldout_sentences"] = strconv.Itoa(len(val))
	m.meta["epochs"] = strconv.Itoa(opts.Epochs)
	m.meta["batch"] = strconv.Itoa(opts.BatchSize)
	m.meta["temperature"] = strconv.FormatFloat(float64(opts.Temperature), 'g', -1, 32)
	m.meta["seed"] = strconv.FormatUint(opts.Seed, 10)
	m.meta["heldout_top1"] = strconv.FormatFloat(valAcc, 'f', 4, 64)
	if opts.HardNegatives {
		m.meta["hard_negatives"] = "same document, ≥ 16 chunks away"
	}
	report(Progress{Phase: "done", Step: steps, Steps: steps, ValAccuracy: valAcc})
	return m, nil
}

// trainer holds optimiser state and per-step scratch.
type trainer struct {
	m    *Model
	opts TrainOptions
	// Adam state of wq and wc.
	mq, vq, mc, vc []float32
	t              int
	// Adagrad accumulator per embedding row.
	g2 []float32
}

func newTrainer(m *Model, opts TrainOptions) *trainer {
	d2 := m.cfg.Dim * m.cfg.Dim
	return &trainer{m: m, opts: opts,
		mq: make([]float32, d2), vq: make([]float32, d2), mc: make([]float32, d2), vc: make([]float32, d2),
		g2: make([]float32, m.cfg.Buckets)}
}

type side struct {
	fs []feature
	tw float32
	u  []float32 // pooled
	h  float32   // norm of w·u
	y  []float32 // unit output
	dy []float32
	dh []float32
	du []float32
}

func (t *trainer) step(docs []tdoc, batch []pair, update bool) (loss, acc float64) {
	m := t.m
	n := len(batch)
	dim := m.cfg.Dim
	// Keys: the n positives, then the hard negatives of the pairs that have one.
	kref := make([][2]int, n, 2*n)
	for i, b := range batch {
		kref[i] = [2]int{b.doc, b.c}
	}
	for _, b := range batch {
		if b.neg >= 0 {
			kref = append(kref, [2]int{b.doc, b.neg})
		}
	}
	nk := len(kref)
	qs := make([]side, n)
	ks := make([]side, nk)
	newSide := func() side {
		return side{u: make([]float32, dim), y: make([]float32, dim), dy: make([]float32, dim), dh: make([]float32, dim), du: make([]float32, dim)}
	}
	parallelFor(n, t.opts.Workers, func(i int) {
		qs[i] = newSide()
		q := &qs[i]
		q.fs = m.appendFeatures(nil, batch[i].q, 1)
		q.tw = m.pool(q.u, q.fs)
		q.h = project(q.y, m.wq, q.u)
	})
	parallelFor(nk, t.opts.Workers, func(j int) {
		ks[j] = newSide()
		k := &ks[j]
		k.fs = m.chunkFeatures(nil, docs[kref[j][0]].toks, kref[j][1])
		k.tw = m.pool(k.u, k.fs)
		k.h = project(k.y, m.wc, k.u)
	})
	// Similarities, softmax over each row, gradients w.r.t. the unit vectors.
	invT := 1 / t.opts.Temperature
	p := make([]float32, n*nk)
	losses := make([]float64, n)
	hits := make([]bool, n)
	parallelFor(n, t.opts.Workers, func(i int) {
		row := p[i*nk : (i+1)*nk]
		mx := float32(math.Inf(-1))
		for j := range nk {
			var s float32
			for x := range dim {
				s += qs[i].y[x] * ks[j].y[x]
			}
			row[j] = s * invT
			mx = max(mx, row[j])
		}
		hits[i] = row[i] == mx
		var z float64
		for j := range row {
			e := math.Exp(float64(row[j] - mx))
			row[j] = float32(e)
			z += e
		}
		losses[i] = -math.Log(float64(row[i]) / z)
		for j := range row {
			row[j] = float32(float64(row[j]) / z)
		}
	})
	for i := range n {
		loss += losses[i]
		if hits[i] {
			acc++
		}
	}
	loss /= float64(n)
	acc /= float64(n)
	if !update {
		return loss, acc
	}
	// dL/ds_ij = (p_ij − δ_ij) / n; s = y_q·y_k / T.
	scale := invT / float32(n)
	parallelFor(n, t.opts.Workers, func(i int) {
		dq := qs[i].dy
		for j := range nk {
			g := p[i*nk+j]
			if i == j {
				g--
			}
			g *= scale
			for x := range dim {
				dq[x] += g * ks[j].y[x]
			}
		}
		backNorm(&qs[i])
		backProj(&qs[i], m.wq, dim)
	})
	parallelFor(nk, t.opts.Workers, func(j int) {
		dk := ks[j].dy
		for i := range n {
			g := p[i*nk+j]
			if i == j {
				g--
			}
			g *= scale
			for x := range dim {
				dk[x] += g * qs[i].y[x]
			}
		}
		backNorm(&ks[j])
		backProj(&ks[j], m.wc, dim)
	})
	// Projection gradients: worker r owns rows of dW, summing samples in order,
	// so the result does not depend on the number of workers.
	gq := make([]float32, dim*dim)
	gc := make([]float32, dim*dim)
	parallelFor(dim, t.opts.Workers, func(r int) {
		for i := range n {
			if a := qs[i].dh[r]; a != 0 {
				row := gq[r*dim : (r+1)*dim]
				for x, u := range qs[i].u {
					row[x] += a * u
				}
			}
		}
		for j := range nk {
			if a := ks[j].dh[r]; a != 0 {
				row := gc[r*dim : (r+1)*dim]
				for x, u := range ks[j].u {
					row[x] += a * u
				}
			}
		}
	})
	t.t++
	adam(m.wq, gq, t.mq, t.vq, t.opts.LR, t.t)
	adam(m.wc, gc, t.mc, t.vc, t.opts.LR, t.t)
	// Embedding rows: accumulate per bucket in sample order (deterministic), then
	// one Adagrad update per touched row.
	grad := map[uint32][]float32{}
	var order []uint32
	for _, ss := range [][]side{qs, ks} {
		for i := range ss {
			s := &ss[i]
			if s.tw == 0 {
				continue
			}
			for _, f := range s.fs {
				if f.w <= 0 {
					continue
				}
				g, ok := grad[f.b]
				if !ok {
					g = make([]float32, dim)
					grad[f.b] = g
					order = append(order, f.b)
				}
				c := f.w / s.tw
				for x := range dim {
					g[x] += c * s.du[x]
				}
			}
		}
	}
	slices.Sort(order)
	lr := t.opts.EmbedLR
	for _, b := range order {
		g := grad[b]
		var ss float32
		for _, v := range g {
			ss += v * v
		}
		t.g2[b] += ss / float32(dim)
		step := lr / float32(math.Sqrt(float64(t.g2[b])+1e-8))
		row := m.embed[int(b)*dim : int(b+1)*dim]
		for x := range row {
			row[x] -= step * g[x]
		}
	}
	return loss, acc
}

// backNorm turns dL/dy into dL/dh for y = h/‖h‖: (dy − y (y·dy)) / ‖h‖.
func backNorm(s *side) {
	if s.h == 0 {
		return
	}
	var dot float32
	for x := range s.y {
		dot += s.y[x] * s.dy[x]
	}
	inv := 1 / s.h
	for x := range s.y {
		s.dh[x] = (s.dy[x] - s.y[x]*dot) * inv
	}
}

// backProj sets du = wᵀ dh.
func backProj(s *side, w []float32, dim int) {
	for r := range dim {
		a := s.dh[r]
		if a == 0 {
			continue
		}
		row := w[r*dim : (r+1)*dim]
		for x := range dim {
			s.du[x] += a * row[x]
		}
	}
}

func adam(w, g, mm, vv []float32, lr float32, t int) {
	const b1, b2, eps = 0.9, 0.999, 1e-8
	c1 := 1 - math.Pow(b1, float64(t))
	c2 := 1 - math.Pow(b2, float64(t))
	for i := range w {
		mm[i] = b1*mm[i] + (1-b1)*g[i]
		vv[i] = b2*vv[i] + (1-b2)*g[i]*g[i]
		mh := float64(mm[i]) / c1
		vh := float64(vv[i]) / c2
		w[i] -= float32(float64(lr) * mh / (math.Sqrt(vh) + eps))
	}
}

// parallelFor runs f(0) … f(n−1) on up to workers goroutines.
func parallelFor(n, workers int, f func(i int)) {
	if workers <= 1 || n < 2 {
		for i := range n {
			f(i)
		}
		return
	}
	var wg sync.WaitGroup
	per := (n + workers - 1) / workers
	for lo := 0; lo < n; lo += per {
		hi := min(lo+per, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := lo; i < hi; i++ {
				f(i)
			}
		}()
	}
	wg.Wait()
}
