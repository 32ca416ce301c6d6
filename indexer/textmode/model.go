package textmode

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"math"
	"math/bits"
	"runtime"
	"slices"
	"strconv"

	"github.com/flashmemory/flashmemory/internal/safetensors"
)

// TokensPerChunk is the number of tokens in one chunk, as in DeepSeek-V4's
// compressed sparse attention layers.
const TokensPerChunk = 4

// Config fixes the shapes of a model. It is stored in the model file's metadata.
type Config struct {
	// Buckets is the number of hash buckets of the term embedding table and of the
	// IDF table; a power of two ≤ 65536 (key terms are stored as 16-bit buckets).
	Buckets int
	// Dim is the embedding dimension; a chunk key stores Dim int8 values.
	Dim int
	// Window is how many tokens on each side of a chunk the dense chunk encoder
	// also sees (with half weight).
	Window int
	// TermWindow is how many tokens on each side of a chunk contribute lexical
	// terms to its key, so all chunks of a sentence light up together and a
	// sentence cut by a page boundary still scores on both pages.
	TermWindow int
	// MaxTerms bounds the lexical terms stored per chunk key, at most 32 (a
	// 32-bit mask marks the terms the training corpus never saw) (chunk terms first,
	// then window terms by decreasing IDF).
	MaxTerms int
	// MaxQueryTerms bounds the lexical terms of a query (rarest first).
	MaxQueryTerms int
	// MinIDF drops terms whose IDF is below it from the lexical signal: they are
	// stop words that match everywhere.
	MinIDF float32
}

// DefaultConfig gives 132-byte chunk keys (the size of an LSA index key): 64
// int8 embedding values, a float32 scale, two counts, 29 16-bit terms and a
// 32-bit novelty mask.
func DefaultConfig() Config {
	return Config{Buckets: 1 << 16, Dim: 64, Window: 8, TermWindow: 16, MaxTerms: 29, MaxQueryTerms: 64, MinIDF: 1.5}
}

// Validate reports the first field out of range, wrapped in ErrBadConfig.
func (c Config) Validate() error {
	switch {
	case c.Buckets < 2 || c.Buckets > 1<<16 || bits.OnesCount(uint(c.Buckets)) != 1:
		return fmt.Errorf("%w: Buckets %d is not a power of two in [2, 65536]", ErrBadConfig, c.Buckets)
	case c.Dim <= 0 || c.Dim > 1024:
		return fmt.Errorf("%w: Dim %d not in [1, 1024]", ErrBadConfig, c.Dim)
	case c.Window < 0 || c.Window > 64:
		return fmt.Errorf("%w: Window %d not in [0, 64]", ErrBadConfig, c.Window)
	case c.TermWindow < 0 || c.TermWindow > 64:
		return fmt.Errorf("%w: TermWindow %d not in [0, 64]", ErrBadConfig, c.TermWindow)
	case c.MaxTerms < TokensPerChunk || c.MaxTerms > 32:
		return fmt.Errorf("%w: MaxTerms %d not in [%d, 32]", ErrBadConfig, c.MaxTerms, TokensPerChunk)
	case c.MaxQueryTerms <= 0 || c.MaxQueryTerms > 1024:
		return fmt.Errorf("%w: MaxQueryTerms %d not in [1, 1024]", ErrBadConfig, c.MaxQueryTerms)
	case !(c.MinIDF >= 0) || math.IsInf(float64(c.MinIDF), 0):
		return fmt.Errorf("%w: MinIDF %v not finite and ≥ 0", ErrBadConfig, c.MinIDF)
	}
	return nil
}

// KeyBytes is the size of one chunk key: Dim int8, float32 scale, core-term
// count, term count, MaxTerms uint16 terms, uint32 novelty mask.
func (c Config) KeyBytes() int { return c.Dim + 4 + 2 + 2*c.MaxTerms + 4 }

// QueryBytes is the size of one serialised query: Dim float32, the mode, the
// term count, MaxQueryTerms uint16 terms.
func (c Config) QueryBytes() int { return 4*c.Dim + 4 + 4 + 2*c.MaxQueryTerms }

// Mode selects which signal a query scores with.
type Mode uint8

const (
	// Combined uses the lexical and the dense signal (the default).
	Combined Mode = iota
	// Lexical uses only IDF-weighted term overlap.
	Lexical
	// Dense uses only the trained embedding similarity.
	Dense
	// Learned uses only what was fitted on training text: the lexical
	// machinery with a term weighting fitted on pseudo-queries of the
	// training corpora (TermWeighting, in place of the hand-set
	// cidf^3 rule of Lexical) and the dense similarity, combined by the
	// fitted calibration. It is what the evaluation calls "trained".
	Learned
	numModes
)

// String returns "combined", "lexical", "dense" or "learned".
func (m Mode) String() string {
	switch m {
	case Combined:
		return "combined"
	case Lexical:
		return "lexical"
	case Dense:
		return "dense"
	case Learned:
		return "learned"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// Calibration maps the two signals of a chunk to its logit:
// logit = Lex·lexical + Dense·cosine + Bias. It is fitted by logistic regression
// at the end of training, one per Mode, so that logit > 0 means "keep" as for
// the LSA scorer.
type Calibration struct{ Lex, Dense, Bias float32 }

// Model is a trained text-mode dual encoder. It is immutable once built and safe
// for concurrent use.
type Model struct {
	cfg   Config
	shift uint // 32 − log2(Buckets)
	embed []float32
	idf   []float32
	// bloom is a Bloom filter of the training corpus's term IDs (full 32 bits,
	// not buckets): a term it does not hold is novel — a name, a code, an
	// identifier — which relevance feedback follows. Bucket IDF cannot tell: a
	// quarter of unseen words share a bucket with some training word.
	bloom []uint64
	wq    []float32 // Dim × Dim, row-major: h = wq · u
	wc    []float32
	calib [numModes]Calibration
	// tw is the Learned mode's term weighting (fitLearned).
	tw TermWeighting
	// dict is the Learned mode's dictionary (buildDict); nil if the
	// training text held no glosses.
	dict *dict
	meta map[string]string
}

// TermWeighting is how a query term's weight in the lexical signal follows
// from statistics the scorer has at hand: w = cidf^Power · idf^TrainPower,
// cidf being the term's inverse document frequency among the context's own
// chunks and idf the training corpus's; a term found only in a chunk's
// neighbourhood counts Window times. The Lexical and Combined modes use the
// hand-set rule (LexicalWeighting); the Learned mode uses the one fitted on
// training text.
type TermWeighting struct{ Power, TrainPower, Window float32 }

// LexicalWeighting is the hand-set rule of the Lexical and Combined modes.
var LexicalWeighting = TermWeighting{Power: lexPower, Window: windowWeight}

// TermWeighting returns the Learned mode's fitted term weighting.
func (m *Model) TermWeighting() TermWeighting { return m.tw }

// Config returns the model's shapes.
func (m *Model) Config() Config { return m.cfg }

// KeyBytes is the size of one chunk key.
func (m *Model) KeyBytes() int { return m.cfg.KeyBytes() }

// QueryBytes is the size of one serialised query.
func (m *Model) QueryBytes() int { return m.cfg.QueryBytes() }

// Calibration returns the logit mapping of mode.
func (m *Model) Calibration(mode Mode) Calibration { return m.calib[mode%numModes] }

// Metadata returns a copy of the model file's metadata (what it was trained on
// and how).
func (m *Model) Metadata() map[string]string { return maps.Clone(m.meta) }

func newModel(cfg Config) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Model{
		cfg:   cfg,
		shift: uint(32 - bits.TrailingZeros(uint(cfg.Buckets))),
		embed: make([]float32, cfg.Buckets*cfg.Dim),
		idf:   make([]float32, cfg.Buckets),
		wq:    make([]float32, cfg.Dim*cfg.Dim),
		wc:    make([]float32, cfg.Dim*cfg.Dim),
		tw:    LexicalWeighting,
		meta:  map[string]string{},
	}, nil
}

// bucket maps a term ID to its bucket (Fibonacci hashing: the FNV low bits
// alone are not well mixed).
func (m *Model) bucket(id uint32) uint32 { return (id * 0x9E3779B1) >> m.shift }

// bigram is the bucket of an ordered token pair.
func (m *Model) bigram(a, b uint32) uint32 {
	return m.bucket(a*0x85EBCA6B ^ (b + 0x27D4EB2D) ^ 0x5bd1e995)
}

// IDF returns the inverse document frequency the model learnt for a term.
func (m *Model) IDF(id uint32) float32 { return m.idf[m.bucket(id)] }

// feature is one hashed feature of a text with its pooling weight.
type feature struct {
	b uint32
	w float32
}

// appendFeatures adds the unigram and bigram features of toks with weight w.
// Bigrams weigh half: they sharpen phrases, unigrams carry most of the signal.
func (m *Model) appendFeatures(dst []feature, toks []Token, w float32) []feature {
	for i, t := range toks {
		b := m.bucket(t.ID)
		dst = append(dst, feature{b, w * m.idf[b]})
		if i > 0 {
			wb := min(m.idf[b], m.idf[m.bucket(toks[i-1].ID)])
			dst = append(dst, feature{m.bigram(toks[i-1].ID, t.ID), 0.5 * w * wb})
		}
	}
	return dst
}

// pool writes the weighted mean of the features' embeddings into u and returns
// the total weight (0: u is zero).
func (m *Model) pool(u []float32, fs []feature) float32 {
	clear(u)
	var tw float32
	d := m.cfg.Dim
	for _, f := range fs {
		if f.w <= 0 {
			continue
		}
		tw += f.w
		row := m.embed[int(f.b)*d : int(f.b+1)*d]
		for j, e := range row {
			u[j] += f.w * e
		}
	}
	if tw > 0 {
		inv := 1 / tw
		for j := range u {
			u[j] *= inv
		}
	}
	return tw
}

// project writes normalise(w · u) into y and returns ‖w · u‖.
func project(y, w, u []float32) float32 {
	d := len(u)
	var nn float64
	for i := range y {
		row := w[i*d : (i+1)*d]
		var s float32
		for j, x := range u {
			s += row[j] * x
		}
		y[i] = s
		nn += float64(s) * float64(s)
	}
	n := float32(math.Sqrt(nn))
	if n > 0 {
		inv := 1 / n
		for i := range y {
			y[i] *= inv
		}
	}
	return n
}

// chunkFeatures collects the features of chunk c of toks: its own tokens with
// weight 1 and the Window tokens on either side with weight 1/2.
func (m *Model) chunkFeatures(dst []feature, toks []Token, c int) []feature {
	lo := c * TokensPerChunk
	hi := min(lo+TokensPerChunk, len(toks))
	wlo := max(lo-m.cfg.Window, 0)
	whi := min(hi+m.cfg.Window, len(toks))
	dst = m.appendFeatures(dst, toks[wlo:lo], 0.5)
	dst = m.appendFeatures(dst, toks[lo:hi], 1)
	return m.appendFeatures(dst, toks[hi:whi], 0.5)
}

// NumChunks is the number of chunks of n tokens (a partial last chunk counts).
func NumChunks(n int) int { return (n + TokensPerChunk - 1) / TokensPerChunk }

// AppendChunkKeys appends the key of every chunk of toks (NumChunks(len(toks))
// keys of KeyBytes each) to dst. A chunk's key depends on its own tokens and on
// max(Window, TermWindow) tokens on each side, so a streaming client computes
// it once that many tokens past the chunk are known, or at the end of the text.
func (m *Model) AppendChunkKeys(dst []byte, toks []Token) []byte {
	n := NumChunks(len(toks))
	kb := m.KeyBytes()
	start := len(dst)
	dst = append(dst, make([]byte, n*kb)...)
	out := dst[start:]
	// Chunks are independent: split them over the cores, each part with its
	// own scratch. The bytes do not depend on the split.
	workers := runtime.GOMAXPROCS(0)
	parts := splitRange(n, workers)
	parallelFor(len(parts), workers, func(p int) {
		var fs []feature
		u := make([]float32, m.cfg.Dim)
		y := make([]float32, m.cfg.Dim)
		terms := make([]uint32, 0, 2*m.cfg.TermWindow+TokensPerChunk)
		for c := parts[p][0]; c < parts[p][1]; c++ {
			fs = m.chunkFeatures(fs[:0], toks, c)
			m.pool(u, fs)
			project(y, m.wc, u)
			terms = m.encodeKey(out[c*kb:(c+1)*kb], y, toks, c, terms)
		}
	})
	return dst
}

// encodeKey writes one key: the int8-quantised unit vector y, its scale, and the
// chunk's lexical terms (its own terms first, then window terms by IDF).
func (m *Model) encodeKey(k []byte, y []float32, toks []Token, c int, terms []uint32) []uint32 {
	d := m.cfg.Dim
	var mx float32
	for _, v := range y {
		mx = max(mx, float32(math.Abs(float64(v))))
	}
	scale := mx / 127
	for i, v := range y {
		q := int8(0)
		if scale > 0 {
			q = int8(math.Round(float64(v / scale)))
		}
		k[i] = byte(q)
	}
	binary.LittleEndian.PutUint32(k[d:], math.Float32bits(scale))

	lo := c * TokensPerChunk
	hi := min(lo+TokensPerChunk, len(toks))
	// Work entries are bucket | novel<<16.
	terms = terms[:0]
	add := func(ts []Token) {
		for _, t := range ts {
			b := m.bucket(t.ID)
			if m.idf[b] < m.cfg.MinIDF {
				continue
			}
			dup := false
			for _, x := range terms {
				if x&0xffff == b {
					dup = true
					break
				}
			}
			if !dup {
				e := b
				if m.novel(t.ID) {
					e |= 1 << 16
				}
				terms = append(terms, e)
			}
		}
	}
	add(toks[lo:hi])
	ncore := len(terms)
	add(toks[max(lo-m.cfg.TermWindow, 0):lo])
	add(toks[hi:min(hi+m.cfg.TermWindow, len(toks))])
	win := terms[ncore:]
	// Rarest window terms first, ties by bucket, so truncation keeps the most
	// informative ones and the key bytes are deterministic.
	sortTermsByIDF(win, m.idf)
	terms = terms[:min(len(terms), m.cfg.MaxTerms)]
	k[d+4] = byte(min(ncore, len(terms)))
	k[d+5] = byte(len(terms))
	var mask uint32
	for i := range m.cfg.MaxTerms {
		var v uint16
		if i < len(terms) {
			v = uint16(terms[i])
			if terms[i]>>16 != 0 {
				mask |= 1 << i
			}
		}
		binary.LittleEndian.PutUint16(k[d+6+2*i:], v)
	}
	binary.LittleEndian.PutUint32(k[d+6+2*m.cfg.MaxTerms:], mask)
	return terms
}

// sortTermsByIDF orders bucket entries (bucket in the low 16 bits) by
// decreasing IDF, ties by bucket.
func sortTermsByIDF[T uint16 | uint32](ts []T, idf []float32) {
	// Insertion sort: a window holds at most a few dozen terms.
	for i := 1; i < len(ts); i++ {
		for j := i; j > 0; j-- {
			a, b := ts[j-1], ts[j]
			ia, ib := idf[a&0xffff], idf[b&0xffff]
			if ib > ia || (ib == ia && b&0xffff < a&0xffff) {
				ts[j-1], ts[j] = b, a
				continue
			}
			break
		}
	}
}

// CheckKeys reports whether keys is a whole number of well-formed keys.
func (m *Model) CheckKeys(keys []byte) error {
	kb := m.KeyBytes()
	if len(keys)%kb != 0 {
		return fmt.Errorf("%w: %d bytes is not a multiple of the %d-byte key", ErrBadKey, len(keys), kb)
	}
	d := m.cfg.Dim
	for c := 0; c < len(keys)/kb; c++ {
		k := keys[c*kb : (c+1)*kb]
		s := math.Float32frombits(binary.LittleEndian.Uint32(k[d:]))
		if !(s >= 0) || math.IsInf(float64(s), 0) {
			return fmt.Errorf("%w: chunk %d: scale %v not finite and ≥ 0", ErrBadKey, c, s)
		}
		if int(k[d+5]) > m.cfg.MaxTerms || k[d+4] > k[d+5] {
			return fmt.Errorf("%w: chunk %d: term counts %d/%d exceed %d", ErrBadKey, c, k[d+4], k[d+5], m.cfg.MaxTerms)
		}
	}
	return nil
}

// Query is an encoded query: a question plus the answer tokens generated so far.
type Query struct {
	mode  Mode
	vec   []float32 // unit vector, Dim
	terms []uint16  // unique buckets with IDF ≥ MinIDF, rarest first
	set   []uint64  // bit set of terms, so scoring a key is O(key terms)
}

func (q *Query) buildSet(buckets int) {
	q.set = make([]uint64, (buckets+63)/64)
	for _, b := range q.terms {
		q.set[b>>6] |= 1 << (b & 63)
	}
}

// Mode is the signal the query scores with.
func (q *Query) Mode() Mode { return q.mode }

// NewQuery encodes a query from the question's tokens and the answer tokens
// generated so far (either may be empty).
func (m *Model) NewQuery(question, answer []Token, mode Mode) *Query {
	q := &Query{mode: mode % numModes, vec: make([]float32, m.cfg.Dim)}
	fs := m.appendFeatures(nil, question, 1)
	fs = m.appendFeatures(fs, answer, 1)
	u := make([]float32, m.cfg.Dim)
	if m.pool(u, fs) > 0 {
		project(q.vec, m.wq, u)
	}
	seen := map[uint16]bool{}
	for _, part := range [][]Token{question, answer} {
		for _, t := range part {
			b := uint16(m.bucket(t.ID))
			if m.idf[b] >= m.cfg.MinIDF && !seen[b] {
				seen[b] = true
				q.terms = append(q.terms, b)
			}
		}
	}
	sortTermsByIDF(q.terms, m.idf)
	q.terms = q.terms[:min(len(q.terms), m.cfg.MaxQueryTerms)]
	q.buildSet(m.cfg.Buckets)
	return q
}

// AppendBinary appends the query's fixed-size wire form (QueryBytes long), the
// opaque per-layer query bytes a text-mode client sends once per cycle.
func (q *Query) AppendBinary(dst []byte, cfg Config) []byte {
	for _, v := range q.vec {
		dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(v))
	}
	dst = binary.LittleEndian.AppendUint32(dst, uint32(q.mode))
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(q.terms)))
	for i := range cfg.MaxQueryTerms {
		var v uint16
		if i < len(q.terms) {
			v = q.terms[i]
		}
		dst = binary.LittleEndian.AppendUint16(dst, v)
	}
	return dst
}

// ParseQuery decodes a query's wire form, checking every field.
func (m *Model) ParseQuery(b []byte) (*Query, error) {
	if len(b) != m.QueryBytes() {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrBadQuery, len(b), m.QueryBytes())
	}
	d := m.cfg.Dim
	q := &Query{vec: make([]float32, d)}
	var nn float64
	for i := range q.vec {
		v := math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("%w: vector element %d is %v", ErrBadQuery, i, v)
		}
		q.vec[i] = v
		nn += float64(v) * float64(v)
	}
	if nn > 1.01 {
		return nil, fmt.Errorf("%w: vector norm %.3f > 1", ErrBadQuery, math.Sqrt(nn))
	}
	p := 4 * d
	mode := binary.LittleEndian.Uint32(b[p:])
	nt := binary.LittleEndian.Uint32(b[p+4:])
	if mode >= uint32(numModes) {
		return nil, fmt.Errorf("%w: mode %d unknown", ErrBadQuery, mode)
	}
	if nt > uint32(m.cfg.MaxQueryTerms) {
		return nil, fmt.Errorf("%w: %d terms > %d", ErrBadQuery, nt, m.cfg.MaxQueryTerms)
	}
	q.mode = Mode(mode)
	q.terms = make([]uint16, nt)
	for i := range q.terms {
		q.terms[i] = binary.LittleEndian.Uint16(b[p+8+2*i:])
		if int(q.terms[i]) >= m.cfg.Buckets {
			return nil, fmt.Errorf("%w: term %d bucket %d ≥ %d", ErrBadQuery, i, q.terms[i], m.cfg.Buckets)
		}
	}
	q.buildSet(m.cfg.Buckets)
	return q, nil
}

// Tensor names of the model file.
const (
	tensorEmbed = "embed"       // [Buckets, Dim] F16
	tensorIDF   = "idf"         // [Buckets] F32
	tensorWQ    = "query_proj"  // [Dim, Dim] F32
	tensorWC    = "chunk_proj"  // [Dim, Dim] F32
	tensorCalib = "calibration" // [3, 3] F32: per mode (combined, lexical, dense) lex, dense, bias
	tensorBloom = "vocab_bloom" // [bytes] U8: Bloom filter of training term IDs, a power of two ≥ 8 bytes
	// tensorTW is the Learned mode's term weighting [3] F32: Power,
	// TrainPower, Window. Optional: a file without it (and with the
	// three-mode calibration of files before 2026-12-03) scores Learned
	// queries as Combined ones.
	tensorTW = "term_weighting"
	// The Learned mode's dictionary (optional, all four or none):
	// offsets per term bucket into the gloss ids, the gloss ids, offsets
	// per gloss into the headwords, the headword buckets.
	tensorDictTermOff = "dict_term_offsets" // [Buckets+1] U32
	tensorDictGlosses = "dict_glosses"      // [n] U32
	tensorDictHeadOff = "dict_head_offsets" // [glosses+1] U32
	tensorDictHeads   = "dict_heads"        // [n] U16
)

// Save writes the model as safetensors. The embedding table is stored as F16
// (halving the file; the scores move by < 1e-3).
func (m *Model) Save(w io.Writer) error {
	cal := make([]float32, 0, 3*int(numModes))
	for _, c := range m.calib {
		cal = append(cal, c.Lex, c.Dense, c.Bias)
	}
	meta := maps.Clone(m.meta)
	meta["format"] = "flashmemory-textmode-v1"
	meta["buckets"] = strconv.Itoa(m.cfg.Buckets)
	meta["dim"] = strconv.Itoa(m.cfg.Dim)
	meta["window"] = strconv.Itoa(m.cfg.Window)
	meta["term_window"] = strconv.Itoa(m.cfg.TermWindow)
	meta["max_terms"] = strconv.Itoa(m.cfg.MaxTerms)
	meta["max_query_terms"] = strconv.Itoa(m.cfg.MaxQueryTerms)
	meta["min_idf"] = strconv.FormatFloat(float64(m.cfg.MinIDF), 'g', -1, 32)
	d := m.cfg.Dim
	var dts []safetensors.Tensor
	if m.dict != nil {
		dts = []safetensors.Tensor{
			{Name: tensorDictTermOff, DType: safetensors.U32, Shape: []int{len(m.dict.termOff)}, Data: u32Bytes(m.dict.termOff)},
			{Name: tensorDictGlosses, DType: safetensors.U32, Shape: []int{len(m.dict.glosses)}, Data: u32Bytes(m.dict.glosses)},
			{Name: tensorDictHeadOff, DType: safetensors.U32, Shape: []int{len(m.dict.headOff)}, Data: u32Bytes(m.dict.headOff)},
			{Name: tensorDictHeads, DType: safetensors.U16, Shape: []int{len(m.dict.heads)}, Data: u16Bytes(m.dict.heads)},
		}
	}
	return safetensors.Write(w, append([]safetensors.Tensor{
		{Name: tensorCalib, DType: safetensors.F32, Shape: []int{int(numModes), 3}, Data: f32Bytes(cal)},
		{Name: tensorWC, DType: safetensors.F32, Shape: []int{d, d}, Data: f32Bytes(m.wc)},
		{Name: tensorEmbed, DType: safetensors.F16, Shape: []int{m.cfg.Buckets, d}, Data: f16Bytes(m.embed)},
		{Name: tensorIDF, DType: safetensors.F32, Shape: []int{m.cfg.Buckets}, Data: f32Bytes(m.idf)},
		{Name: tensorWQ, DType: safetensors.F32, Shape: []int{d, d}, Data: f32Bytes(m.wq)},
		{Name: tensorBloom, DType: safetensors.U8, Shape: []int{8 * len(m.bloom)}, Data: u64Bytes(m.bloom)},
		{Name: tensorTW, DType: safetensors.F32, Shape: []int{3}, Data: f32Bytes([]float32{m.tw.Power, m.tw.TrainPower, m.tw.Window})},
	}, dts...), meta)
}

// Load reads a model written by Save, checking the format, every tensor's
// dtype and shape, and that every value is finite.
func Load(b []byte) (*Model, error) {
	f, err := safetensors.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadFile, err)
	}
	meta := f.Metadata()
	if f := meta["format"]; f != "flashmemory-textmode-v1" {
		return nil, fmt.Errorf("%w: metadata format %q, want flashmemory-textmode-v1", ErrBadModel, f)
	}
	geti := func(k string) int {
		v, err := strconv.Atoi(meta[k])
		if err != nil {
			return -1
		}
		return v
	}
	mi, err := strconv.ParseFloat(meta["min_idf"], 32)
	if err != nil {
		return nil, fmt.Errorf("%w: metadata min_idf %q: %v", ErrBadModel, meta["min_idf"], err)
	}
	cfg := Config{Buckets: geti("buckets"), Dim: geti("dim"), Window: geti("window"), TermWindow: geti("term_window"), MaxTerms: geti("max_terms"),
		MaxQueryTerms: geti("max_query_terms"), MinIDF: float32(mi)}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: metadata: %w", ErrBadModel, err)
	}
	// The embedding table must be in the file before the model's tables are
	// allocated, so that a small file cannot claim a large model.
	if t, err := f.Tensor(tensorEmbed); err != nil || t.DType != safetensors.F16 || !slices.Equal(t.Shape, []int{cfg.Buckets, cfg.Dim}) {
		return nil, fmt.Errorf("%w: tensor %q missing or not F16[%d %d] as the metadata says", ErrBadModel, tensorEmbed, cfg.Buckets, cfg.Dim)
	}
	m, err := newModel(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: metadata: %w", ErrBadModel, err)
	}
	d := cfg.Dim
	want := []struct {
		name  string
		dtype safetensors.DType
		shape []int
		dst   []float32
	}{
		{tensorEmbed, safetensors.F16, []int{cfg.Buckets, d}, m.embed},
		{tensorIDF, safetensors.F32, []int{cfg.Buckets}, m.idf},
		{tensorWQ, safetensors.F32, []int{d, d}, m.wq},
		{tensorWC, safetensors.F32, []int{d, d}, m.wc},
		{tensorCalib, safetensors.F32, []int{int(numModes), 3}, nil},
	}
	for _, w := range want {
		t, err := f.Tensor(w.name)
		if err != nil {
			return nil, fmt.Errorf("%w: tensor %q: %w", ErrBadModel, w.name, err)
		}
		if w.name == tensorCalib && t.DType == safetensors.F32 && slices.Equal(t.Shape, []int{int(Learned), 3}) {
			// A file from before the Learned mode: three calibrations.
			w.shape = t.Shape
		}
		if t.DType != w.dtype || !slices.Equal(t.Shape, w.shape) {
			return nil, fmt.Errorf("%w: tensor %q is %s%v, want %s%v", ErrBadModel, w.name, t.DType, t.Shape, w.dtype, w.shape)
		}
		vals, err := t.Float32s()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadModel, err)
		}
		for i, v := range vals {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("%w: tensor %q element %d is %v", ErrBadModel, w.name, i, v)
			}
		}
		if w.dst != nil {
			copy(w.dst, vals)
		} else {
			for i := range len(vals) / 3 {
				m.calib[i] = Calibration{vals[3*i], vals[3*i+1], vals[3*i+2]}
			}
			if len(vals)/3 == int(Learned) {
				m.calib[Learned] = m.calib[Combined]
			}
		}
	}
	for i, v := range m.idf {
		if v < 0 {
			return nil, fmt.Errorf("%w: idf[%d] = %v < 0", ErrBadModel, i, v)
		}
	}
	bt, err := f.Tensor(tensorBloom)
	if err != nil {
		return nil, fmt.Errorf("%w: tensor %q: %w", ErrBadModel, tensorBloom, err)
	}
	if bt.DType != safetensors.U8 || len(bt.Shape) != 1 || len(bt.Data) < 8 || bits.OnesCount(uint(len(bt.Data))) != 1 {
		return nil, fmt.Errorf("%w: tensor %q is %s%v, want U8 of a power of two ≥ 8 bytes", ErrBadModel, tensorBloom, bt.DType, bt.Shape)
	}
	if tt, err := f.Tensor(tensorTW); err == nil {
		vals, err := tt.Float32s()
		if err != nil || tt.DType != safetensors.F32 || !slices.Equal(tt.Shape, []int{3}) {
			return nil, fmt.Errorf("%w: tensor %q is %s%v, want F32[3]", ErrBadModel, tensorTW, tt.DType, tt.Shape)
		}
		tw := TermWeighting{vals[0], vals[1], vals[2]}
		if !(tw.Power >= 0 && tw.Power <= 8 && tw.TrainPower >= 0 && tw.TrainPower <= 8 && tw.Window >= 0 && tw.Window <= 1) {
			return nil, fmt.Errorf("%w: tensor %q = %v out of range (powers in [0, 8], window in [0, 1])", ErrBadModel, tensorTW, vals)
		}
		m.tw = tw
	}
	if _, err := f.Tensor(tensorDictTermOff); err == nil {
		var raw [4][]byte
		for i, n := range []struct {
			name  string
			dtype safetensors.DType
		}{{tensorDictTermOff, safetensors.U32}, {tensorDictGlosses, safetensors.U32}, {tensorDictHeadOff, safetensors.U32}, {tensorDictHeads, safetensors.U16}} {
			t, err := f.Tensor(n.name)
			if err != nil || t.DType != n.dtype || len(t.Shape) != 1 {
				return nil, fmt.Errorf("%w: dictionary tensor %q missing or not %s of one dimension", ErrBadModel, n.name, n.dtype)
			}
			raw[i] = t.Data
		}
		d, ok := parseDict(cfg.Buckets, raw[0], raw[1], raw[2], raw[3])
		if !ok {
			return nil, fmt.Errorf("%w: dictionary tensors inconsistent (offsets not monotonic or out of range)", ErrBadModel)
		}
		m.dict = d
	}
	m.bloom = make([]uint64, len(bt.Data)/8)
	for i := range m.bloom {
		m.bloom[i] = binary.LittleEndian.Uint64(bt.Data[8*i:])
	}
	m.meta = meta
	return m, nil
}

// LoadFrom reads a whole model file from r (at most maxModelBytes).
func LoadFrom(r io.Reader) (*Model, error) {
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(r, maxModelBytes+1))
	if err != nil {
		return nil, fmt.Errorf("textmode: reading model: %w", err)
	}
	if n > maxModelBytes {
		return nil, fmt.Errorf("%w: model file larger than %d bytes", ErrBadFile, maxModelBytes)
	}
	return Load(buf.Bytes())
}

// maxModelBytes bounds a model file: 65536 buckets × 1024 dims × 2 B plus small
// tensors is the largest valid model.
const maxModelBytes = 160 << 20

// WithCalibration returns a copy of the model (sharing its read-only tables)
// whose mode scores with c: for threshold studies, or a calibration fitted
// elsewhere.
func (m *Model) WithCalibration(mode Mode, c Calibration) *Model {
	cp := *m
	cp.calib[mode%numModes] = c
	cp.meta = maps.Clone(m.meta)
	return &cp
}

// Bloom filter of the training vocabulary. bloomHashes probes per term; with
// 16 bits per term the false-positive rate is about 0.05 %.
const (
	bloomHashes      = 6
	bloomBitsPerTerm = 16
)

func bloomProbe(id uint32, i int, mask uint64) uint64 {
	h := uint64(id)*0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019
	h1 := h ^ h>>29
	h2 := (h*0xBF58476D1CE4E5B9)>>31 | 1
	return (h1 + uint64(i)*h2) & mask
}

// buildBloom makes the filter of a set of term IDs.
func buildBloom(ids map[uint32]struct{}) []uint64 {
	nbits := uint64(512)
	for nbits < uint64(bloomBitsPerTerm*len(ids)) {
		nbits *= 2
	}
	b := make([]uint64, nbits/64)
	for id := range ids {
		for i := range bloomHashes {
			p := bloomProbe(id, i, nbits-1)
			b[p>>6] |= 1 << (p & 63)
		}
	}
	return b
}

// novel reports whether the training corpus (probably) never held term id.
// A model with an empty filter knows no word.
func (m *Model) novel(id uint32) bool {
	if len(m.bloom) == 0 {
		return true
	}
	mask := uint64(len(m.bloom))*64 - 1
	for i := range bloomHashes {
		p := bloomProbe(id, i, mask)
		if m.bloom[p>>6]&(1<<(p&63)) == 0 {
			return true
		}
	}
	return false
}

func u64Bytes(v []uint64) []byte {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], x)
	}
	return b
}
