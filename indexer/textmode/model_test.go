package textmode

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/flashmemory/flashmemory/internal/safetensors"
)

// synthDocs makes unlabelled documents from a small vocabulary with topical
// structure (each document draws mostly from its own word group), enough for
// training to have something to learn.
func synthDocs(n int, seed uint64) []Document {
	rng := rand.New(rand.NewPCG(seed, 1))
	var groups [][]string
	for g := range 8 {
		var ws []string
		for w := range 40 {
			ws = append(ws, fmt.Sprintf("w%c%c", 'a'+g, 'a'+w%26)+strings.Repeat("x", w/26))
		}
		groups = append(groups, ws)
	}
	common := strings.Fields("the of and a to in is it that was for on with as")
	docs := make([]Document, n)
	for i := range docs {
		g := groups[i%len(groups)]
		var sb strings.Builder
		for range 60 {
			for range 6 + rng.IntN(10) {
				if rng.IntN(3) == 0 {
					sb.WriteString(common[rng.IntN(len(common))])
				} else {
					sb.WriteString(g[rng.IntN(len(g))])
				}
				sb.WriteByte(' ')
			}
			sb.WriteString(". ")
		}
		docs[i] = Document{Name: fmt.Sprint(i), Text: sb.String()}
	}
	return docs
}

func smallOptions() TrainOptions {
	o := DefaultTrainOptions()
	o.Config = Config{Buckets: 1 << 12, Dim: 16, Window: 8, TermWindow: 16, MaxTerms: 31, MaxQueryTerms: 64, MinIDF: 1.5}
	o.Epochs = 3
	o.BatchSize = 32
	o.Corpus = "synthetic test documents"
	return o
}

var (
	smallOnce  sync.Once
	smallModel *Model
	smallErr   error
)

func trainedSmall(t *testing.T) *Model {
	t.Helper()
	smallOnce.Do(func() { smallModel, smallErr = Train(context.Background(), synthDocs(40, 1), smallOptions()) })
	if smallErr != nil {
		t.Fatal(smallErr)
	}
	return smallModel
}

func saved(t *testing.T, m *Model) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := m.Save(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestTrainDeterministicAcrossWorkers(t *testing.T) {
	docs := synthDocs(40, 1)
	var files [][]byte
	for _, w := range []int{1, 3} {
		o := smallOptions()
		o.Workers = w
		m, err := Train(context.Background(), docs, o)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, saved(t, m))
	}
	if !bytes.Equal(files[0], files[1]) {
		t.Fatal("models trained with 1 and 3 workers differ")
	}
	o := smallOptions()
	o.Seed = 2
	m, err := Train(context.Background(), docs, o)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(saved(t, m), files[0]) {
		t.Fatal("different seeds gave identical models")
	}
}

func TestTrainLearns(t *testing.T) {
	var first, last Progress
	o := smallOptions()
	o.Epochs = 6
	o.Progress = func(p Progress) {
		if p.Phase != "train" {
			return
		}
		if first.Steps == 0 {
			first = p
		}
		last = p
	}
	if _, err := Train(context.Background(), synthDocs(40, 1), o); err != nil {
		t.Fatal(err)
	}
	if last.Step != last.Steps || last.Steps == 0 {
		t.Fatalf("progress ended at step %d of %d", last.Step, last.Steps)
	}
	// Chance is 1/32; topical documents are easy to tell apart.
	if last.ValAccuracy < 0.2 || last.ValAccuracy <= first.ValAccuracy {
		t.Fatalf("held-out top-1 %.3f (first report %.3f): training did not learn", last.ValAccuracy, first.ValAccuracy)
	}
}

func TestTrainErrors(t *testing.T) {
	if _, err := Train(context.Background(), synthDocs(2, 1), smallOptions()); !errors.Is(err, ErrNoData) {
		t.Errorf("two tiny documents: err %v, want ErrNoData", err)
	}
	o := smallOptions()
	o.Config.Buckets = 1000
	if _, err := Train(context.Background(), synthDocs(40, 1), o); !errors.Is(err, ErrBadConfig) {
		t.Errorf("1000 buckets: err %v, want ErrBadConfig", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Train(ctx, synthDocs(40, 1), smallOptions()); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: err %v", err)
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	m := trainedSmall(t)
	b := saved(t, m)
	m2, err := Load(b)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Config() != m.Config() {
		t.Fatalf("config %+v, want %+v", m2.Config(), m.Config())
	}
	if !bytes.Equal(saved(t, m2), b) {
		t.Fatal("Save(Load(b)) != b")
	}
	if m2.Metadata()["trained_on"] != "synthetic test documents" {
		t.Fatalf("metadata %v", m2.Metadata())
	}
	// Scores of the loaded model (F16 embeddings) stay close to the trained one.
	docs := synthDocs(3, 9)
	toks := Tokenize(docs[0].Text)
	q := Tokenize("wadx wacx the")
	for _, mode := range []Mode{Combined, Lexical, Dense} {
		o1 := make([]float32, NumChunks(len(toks)))
		o2 := make([]float32, len(o1))
		if err := m.Score(m.NewQuery(q, nil, mode), m.AppendChunkKeys(nil, toks), o1); err != nil {
			t.Fatal(err)
		}
		if err := m2.Score(m2.NewQuery(q, nil, mode), m2.AppendChunkKeys(nil, toks), o2); err != nil {
			t.Fatal(err)
		}
		for i := range o1 {
			if math.Abs(float64(o1[i]-o2[i])) > 0.1 {
				t.Fatalf("%v chunk %d: %v trained, %v loaded", mode, i, o1[i], o2[i])
			}
		}
	}
}

// rewrite returns the model file with one tensor replaced (or dropped when
// data is nil) and metadata edited.
func rewrite(t *testing.T, b []byte, name string, tn *safetensors.Tensor, meta func(map[string]string)) []byte {
	t.Helper()
	f, err := safetensors.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	var ts []safetensors.Tensor
	for _, n := range f.Names() {
		x, _ := f.Tensor(n)
		if n == name {
			if tn == nil {
				continue
			}
			x = *tn
		}
		ts = append(ts, x)
	}
	md := f.Metadata()
	if meta != nil {
		meta(md)
	}
	var buf bytes.Buffer
	if err := safetensors.Write(&buf, ts, md); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestLoadRejects(t *testing.T) {
	good := saved(t, trainedSmall(t))
	nan := f32Bytes([]float32{float32(math.NaN()), 0, 0, 0, 0, 0, 0, 0, 0})
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrBadFile},
		{"truncated", good[:len(good)/2], ErrBadFile},
		{"missing idf", rewrite(t, good, tensorIDF, nil, nil), ErrBadModel},
		{"idf wrong shape", rewrite(t, good, tensorIDF, &safetensors.Tensor{Name: tensorIDF, DType: safetensors.F32, Shape: []int{2}, Data: make([]byte, 8)}, nil), ErrBadModel},
		{"calibration NaN", rewrite(t, good, tensorCalib, &safetensors.Tensor{Name: tensorCalib, DType: safetensors.F32, Shape: []int{3, 3}, Data: nan}, nil), ErrBadModel},
		{"embed wrong dtype", rewrite(t, good, tensorWQ, &safetensors.Tensor{Name: tensorWQ, DType: safetensors.F16, Shape: []int{16, 16}, Data: make([]byte, 512)}, nil), ErrBadModel},
		{"unknown format", rewrite(t, good, "", nil, func(m map[string]string) { m["format"] = "other" }), ErrBadModel},
		{"bad dim", rewrite(t, good, "", nil, func(m map[string]string) { m["dim"] = "x" }), ErrBadModel},
		{"buckets not power of two", rewrite(t, good, "", nil, func(m map[string]string) { m["buckets"] = "4000" }), ErrBadConfig},
	}
	for _, c := range cases {
		_, err := Load(c.b)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.want)
		}
	}
}

func FuzzLoad(f *testing.F) {
	o := smallOptions()
	o.Config.Buckets, o.Config.Dim = 64, 4
	m, err := newModel(o.Config)
	if err != nil {
		f.Fatal(err)
	}
	var buf bytes.Buffer
	if err := m.Save(&buf); err != nil {
		f.Fatal(err)
	}
	good := buf.Bytes()
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Add(good[:20])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Load(b)
		if err != nil {
			return
		}
		// A model that loads must score without panicking.
		toks := Tokenize("one of the special magic numbers")
		keys := m.AppendChunkKeys(nil, toks)
		out := make([]float32, NumChunks(len(toks)))
		if err := m.Score(m.NewQuery(toks[:3], nil, Combined), keys, out); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzParseQuery(f *testing.F) {
	m := newTestModel(f)
	q := m.NewQuery(Tokenize("what is the magic number"), Tokenize("it is"), Lexical)
	good := q.AppendBinary(nil, m.Config())
	f.Add(good)
	f.Add(good[:10])
	bad := bytes.Clone(good)
	binary.LittleEndian.PutUint32(bad[4*m.Config().Dim+4:], 1<<20)
	f.Add(bad)
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := m.ParseQuery(b)
		if err != nil {
			if !errors.Is(err, ErrBadQuery) {
				t.Fatalf("error %v does not wrap ErrBadQuery", err)
			}
			return
		}
		keys := m.AppendChunkKeys(nil, Tokenize("the magic number is forty two, said the note"))
		out := make([]float32, len(keys)/m.KeyBytes())
		if err := m.Score(q, keys, out); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzCheckKeys(f *testing.F) {
	m := newTestModel(f)
	keys := m.AppendChunkKeys(nil, Tokenize("the magic number is forty two, said the note"))
	f.Add(keys)
	f.Add(keys[:m.KeyBytes()-1])
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := m.CheckKeys(b); err != nil {
			if !errors.Is(err, ErrBadKey) {
				t.Fatalf("error %v does not wrap ErrBadKey", err)
			}
			return
		}
		q := m.NewQuery(Tokenize("magic number"), nil, Combined)
		if err := m.Score(q, b, make([]float32, len(b)/m.KeyBytes())); err != nil {
			t.Fatal(err)
		}
	})
}

// newTestModel is a small untrained model with a lexical calibration: enough
// to exercise encoding and scoring paths.
func newTestModel(tb testing.TB) *Model {
	tb.Helper()
	cfg := smallOptions().Config
	m, err := newModel(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range m.embed {
		m.embed[i] = rng.Float32() - 0.5
	}
	for i := range m.idf {
		m.idf[i] = 8
	}
	for i := range cfg.Dim {
		m.wq[i*cfg.Dim+i], m.wc[i*cfg.Dim+i] = 1, 1
	}
	// As in a trained model: stop words below MinIDF, ordinary words seen in
	// training in between, names and codes (never seen) at the maximum.
	for _, w := range []string{"the", "of", "is", "a", ".", ",", ":", "?", "="} {
		m.idf[m.bucket(TermID(w))] = 0.1
	}
	vocab := map[uint32]struct{}{}
	for _, w := range strings.Fields(fillerWords + " one special magic numbers for what var which names hold value the of is a . , : ? =" +
		" parcel number packed whatever sat was moved into with where has been kept") {
		m.idf[m.bucket(TermID(w))] = 4
		vocab[TermID(w)] = struct{}{}
	}
	// Words the training corpus held but rarely: names a chain can go through.
	for _, w := range strings.Fields("locker drawer cabinet shelf") {
		m.idf[m.bucket(TermID(w))] = 7
		vocab[TermID(w)] = struct{}{}
	}
	for _, w := range []string{"the", "of", "is", "a", ".", ",", ":", "?", "="} {
		m.idf[m.bucket(TermID(w))] = 0.1
	}
	m.bloom = buildBloom(vocab)
	// Thresholds near those the default model learnt (lexical ≈ 0.7).
	m.calib = [numModes]Calibration{{Lex: 6, Dense: 1, Bias: -4.2}, {Lex: 6, Bias: -4.2}, {Dense: 6, Bias: -3}}
	return m
}

func TestQueryBinaryRoundTrip(t *testing.T) {
	m := newTestModel(t)
	q := m.NewQuery(Tokenize("What is the special magic number for amber-falcon?"), Tokenize("It is 123"), Combined)
	b := q.AppendBinary(nil, m.Config())
	if len(b) != m.QueryBytes() {
		t.Fatalf("%d bytes, want %d", len(b), m.QueryBytes())
	}
	q2, err := m.ParseQuery(b)
	if err != nil {
		t.Fatal(err)
	}
	if q2.mode != q.mode || fmt.Sprint(q2.terms) != fmt.Sprint(q.terms) || fmt.Sprint(q2.vec) != fmt.Sprint(q.vec) {
		t.Fatalf("round trip changed the query: %+v → %+v", q, q2)
	}
}

func TestKeyLayout(t *testing.T) {
	m := newTestModel(t)
	if m.KeyBytes() != 16+6+2*31+4 {
		t.Fatalf("KeyBytes %d", m.KeyBytes())
	}
	if DefaultConfig().KeyBytes() != 132 {
		t.Fatalf("default KeyBytes %d, want 132 (the LSA key size)", DefaultConfig().KeyBytes())
	}
	toks := Tokenize("zeta one people often think about startups and essays")
	keys := m.AppendChunkKeys(nil, toks)
	if len(keys) != 3*m.KeyBytes() {
		t.Fatalf("%d key bytes for %d tokens", len(keys), len(toks))
	}
	terms, ncore, nt := m.keyTerms(keys[:m.KeyBytes()])
	if ncore != 4 || nt != 9 {
		t.Fatalf("first chunk: %d own terms of %d, want 4 of 9", ncore, nt)
	}
	if termAt(terms, 0) != uint16(m.bucket(TermID("zeta"))) {
		t.Fatal("first own term is not the chunk's first token")
	}
	if got := m.keyNovel(keys[:m.KeyBytes()]); got != 1 {
		t.Fatalf("novelty mask %b, want only the unseen \"zeta\" (term 0) marked", got)
	}
	bad := bytes.Clone(keys)
	bad[m.Config().Dim+5] = 200
	if err := m.CheckKeys(bad); !errors.Is(err, ErrBadKey) {
		t.Fatalf("term count 200: err %v", err)
	}
	if err := m.CheckKeys(keys[:5]); !errors.Is(err, ErrBadKey) {
		t.Fatalf("5 bytes: err %v", err)
	}
	if err := m.Score(m.NewQuery(toks, nil, Lexical), keys, make([]float32, 2)); !errors.Is(err, ErrBadKey) {
		t.Fatalf("short output: err %v", err)
	}
}

const fillerWords = "people often think about startups and essays and how the world works when they write code late at night with friends"

// haystack builds a context of filler sentences with sentences inserted at
// given sentence indices.
func haystack(n int, insert map[int]string) string {
	words := strings.Fields(fillerWords)
	rng := rand.New(rand.NewPCG(5, 6))
	var sb strings.Builder
	for i := range n {
		if s, ok := insert[i]; ok {
			sb.WriteString(s + " ")
		}
		for range 12 {
			sb.WriteString(words[rng.IntN(len(words))] + " ")
		}
		sb.WriteString(". ")
	}
	return sb.String()
}

func chunksOf(text, sub string, toks []Token) (first, last int) {
	i := strings.Index(text, sub)
	first, last = -1, -1
	for j, t := range toks {
		if int(t.End) > i && int(t.Start) < i+len(sub) {
			if first < 0 {
				first = j / TokensPerChunk
			}
			last = j / TokensPerChunk
		}
	}
	return
}

func TestScoreFindsNeedleAndChain(t *testing.T) {
	m := newTestModel(t)
	cases := []struct {
		name     string
		insert   map[int]string
		question string
		evidence []string
		absent   []string
	}{
		{"needle among distractors",
			map[int]string{30: "One of the special magic numbers for amber-falcon is: 4471.", 90: "One of the special magic numbers for dusty-heron is: 9034.", 150: "One of the special magic numbers for amber-walrus is: 1200."},
			"What is the special magic number for amber-falcon?",
			[]string{"One of the special magic numbers for amber-falcon is: 4471."},
			[]string{"One of the special magic numbers for dusty-heron is: 9034."}},
		{"variable chain through feedback",
			map[int]string{20: "VAR QWERT = 5521.", 80: "VAR ZXCVB = VAR QWERT.", 140: "VAR POIUY = VAR ZXCVB.", 170: "VAR LKJHG = 9999."},
			"Which VAR names hold the value 5521?",
			[]string{"VAR QWERT = 5521.", "VAR ZXCVB = VAR QWERT.", "VAR POIUY = VAR ZXCVB."},
			[]string{"VAR LKJHG = 9999."}},
		// Names the training corpus knows ("locker", "41"): the chain is
		// followed because the names are rare in the context, not because
		// they are new words.
		{"chain through known words",
			map[int]string{30: "Locker 41 was packed with the parcel number 5521.", 90: "Whatever sat in Locker 41 was moved into Drawer 17.", 150: "Whatever sat in Drawer 17 was moved into Cabinet 63.", 175: "Shelf 88 holds the parcel number 7304."},
			"Where has the parcel number 5521 been kept?",
			[]string{"Locker 41 was packed with the parcel number 5521.", "Whatever sat in Locker 41 was moved into Drawer 17.", "Whatever sat in Drawer 17 was moved into Cabinet 63."},
			[]string{"Shelf 88 holds the parcel number 7304."}},
	}
	for _, c := range cases {
		text := haystack(200, c.insert)
		toks := Tokenize(text)
		keys := m.AppendChunkKeys(nil, toks)
		out := make([]float32, NumChunks(len(toks)))
		if err := m.Score(m.NewQuery(Tokenize(c.question), nil, Lexical), keys, out); err != nil {
			t.Fatal(err)
		}
		for _, e := range c.evidence {
			f, l := chunksOf(text, e, toks)
			for ch := f; ch <= l; ch++ {
				if out[ch] <= 0 {
					t.Errorf("%s: evidence %q chunk %d logit %.2f ≤ 0", c.name, e, ch, out[ch])
				}
			}
		}
		for _, e := range c.absent {
			f, l := chunksOf(text, e, toks)
			lo, hi := f, l
			for ch := lo; ch <= hi; ch++ {
				if out[ch] > 0 {
					t.Errorf("%s: unrelated %q chunk %d logit %.2f > 0", c.name, e, ch, out[ch])
				}
			}
		}
		above := 0
		for _, l := range out {
			if l > 0 {
				above++
			}
		}
		if above > len(out)/10 {
			t.Errorf("%s: %d of %d chunks above threshold", c.name, above, len(out))
		}
		// Without expansion only what the question names is kept: the chains'
		// later links are not.
		if len(c.evidence) > 1 {
			if err := m.ScoreWith(m.NewQuery(Tokenize(c.question), nil, Lexical), keys, out, ScoreOptions{}); err != nil {
				t.Fatal(err)
			}
			f, l := chunksOf(text, c.evidence[len(c.evidence)-1], toks)
			for ch := f; ch <= l; ch++ {
				if out[ch] > 0 {
					t.Errorf("%s without expansion: last link chunk %d logit %.2f > 0", c.name, ch, out[ch])
				}
			}
		}
	}
}

// TestScoreFollowsTwoWordNames: a chain whose names are ordinary words that
// recur in the context ("Locker 12", "Row 41") is followed through the
// two-word names, and nothing that shares only one word of a name is kept.
func TestScoreFollowsTwoWordNames(t *testing.T) {
	m := newTestModel(t)
	insert := map[int]string{300: "Locker 41 was packed with the parcel number 5521.", 900: "Whatever sat in Locker 41 was moved into Drawer 17.", 1500: "Whatever sat in Drawer 17 was moved into Cabinet 63.", 1750: "Shelf 88 holds the parcel number 7304."}
	for i, s := range []string{"Locker 12 stayed shut.", "Locker 55 stayed shut.", "Locker 70 stayed shut.", "Drawer 33 stayed shut.", "Drawer 48 stayed shut.", "Drawer 90 stayed shut.",
		"Row 41 and row 17 were empty.", "Seat 41 and seat 17 were empty.", "Gate 41 and gate 17 were empty.", "Page 41 and page 17 were empty."} {
		insert[100+170*i] = s
	}
	text := haystack(2000, insert)
	toks := Tokenize(text)
	keys := m.AppendChunkKeys(nil, toks)
	out := make([]float32, NumChunks(len(toks)))
	q := m.NewQuery(Tokenize("Where has the parcel number 5521 been kept?"), nil, Lexical)
	kept := func(s string) bool {
		f, l := chunksOf(text, s, toks)
		for ch := f; ch <= l; ch++ {
			if out[ch] > 0 {
				return true
			}
		}
		return false
	}
	for _, hops := range []int{0, DefaultHops} {
		if err := m.ScoreWith(q, keys, out, ScoreOptions{Hops: hops}); err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"Whatever sat in Locker 41 was moved into Drawer 17.", "Whatever sat in Drawer 17 was moved into Cabinet 63."} {
			if got := kept(s); got != (hops > 0) {
				t.Errorf("hops %d: link %q kept %v", hops, s, got)
			}
		}
		for _, s := range []string{"Shelf 88 holds the parcel number 7304.", "Locker 55 stayed shut.", "Drawer 48 stayed shut.", "Gate 41 and gate 17 were empty."} {
			if kept(s) {
				t.Errorf("hops %d: unrelated %q kept", hops, s)
			}
		}
	}
}

// TestScoreSecondClause: a question about two things keeps both chunks even
// when one of them matches much less of the question's weight, and a
// question word that happens to be rare in the context is no second thing.
func TestScoreSecondClause(t *testing.T) {
	m := newTestModel(t)
	cases := []struct {
		name             string
		insert           map[int]string
		question         string
		evidence, absent []string
	}{
		{"two keys",
			map[int]string{40: "The access code issued to Project Delta Prism reads 402373.", 160: "The access code issued to unit SC-6224 reads 597066.",
				100: "The access code issued to Project Oak Depot reads 111222.", 220: "The access code issued to unit QX-1234 reads 333444.",
				20: "The river delta flooded.", 70: "A delta of two.", 130: "The delta grew.", 190: "Delta time passed.", 250: "A delta again.", 280: "The last delta."},
			"Which access codes were issued to Project Delta Prism and unit SC-6224?",
			[]string{"Project Delta Prism reads 402373.", "unit SC-6224 reads 597066."},
			[]string{"Project Oak Depot reads 111222.", "unit QX-1234 reads 333444."}},
		{"rare question words",
			map[int]string{40: "Locker 41 was packed with the parcel number 5521.", 150: "The jar was kept warm all winter."},
			"Where has the parcel number 5521 been kept?",
			[]string{"Locker 41 was packed with the parcel number 5521."},
			[]string{"The jar was kept warm all winter."}},
	}
	for _, c := range cases {
		text := haystack(300, c.insert)
		toks := Tokenize(text)
		keys := m.AppendChunkKeys(nil, toks)
		out := make([]float32, NumChunks(len(toks)))
		if err := m.ScoreWith(m.NewQuery(Tokenize(c.question), nil, Lexical), keys, out, ScoreOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, e := range c.evidence {
			f, l := chunksOf(text, e, toks)
			best := float32(-100)
			for ch := f; ch <= l; ch++ {
				best = max(best, out[ch])
			}
			if best <= 0 {
				t.Errorf("%s: evidence %q best logit %.2f ≤ 0", c.name, e, best)
			}
		}
		for _, e := range c.absent {
			f, l := chunksOf(text, e, toks)
			for ch := f; ch <= l; ch++ {
				if out[ch] > 0 {
					t.Errorf("%s: unrelated %q chunk %d logit %.2f > 0", c.name, e, ch, out[ch])
				}
			}
		}
	}
}

func TestDefaultConfigValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []func(*Config){
		func(c *Config) { c.Buckets = 3 },
		func(c *Config) { c.Buckets = 1 << 17 },
		func(c *Config) { c.Dim = 0 },
		func(c *Config) { c.MaxTerms = 300 },
		func(c *Config) { c.TermWindow = -1 },
		func(c *Config) { c.MinIDF = float32(math.Inf(1)) },
		func(c *Config) { c.MaxQueryTerms = 0 },
	}
	for i, f := range bad {
		c := DefaultConfig()
		f(&c)
		if err := c.Validate(); !errors.Is(err, ErrBadConfig) {
			t.Errorf("case %d: %+v validated: %v", i, c, err)
		}
	}
}

// TestLearnedMode: the Learned mode's weighting and calibration survive Save
// and Load; a file from before it (three calibrations, no term weighting)
// loads with Learned scoring as Combined; an out-of-range weighting is
// rejected; and the weighting is what Learned scores with (the hand-set rule
// gives Combined's logits bit for bit, another rule other logits).
func TestLearnedMode(t *testing.T) {
	m := trainedSmall(t)
	if m.Calibration(Learned) == (Calibration{}) {
		t.Fatal("Train left the Learned calibration empty")
	}
	b := saved(t, m)
	m2, err := Load(b)
	if err != nil {
		t.Fatal(err)
	}
	if m2.TermWeighting() != m.TermWeighting() || m2.Calibration(Learned) != m.Calibration(Learned) {
		t.Fatalf("round trip: %+v %+v, want %+v %+v", m2.TermWeighting(), m2.Calibration(Learned), m.TermWeighting(), m.Calibration(Learned))
	}
	// A file of three modes.
	cal := make([]float32, 0, 9)
	for _, mode := range []Mode{Combined, Lexical, Dense} {
		c := m.Calibration(mode)
		cal = append(cal, c.Lex, c.Dense, c.Bias)
	}
	old := rewrite(t, b, tensorCalib, &safetensors.Tensor{Name: tensorCalib, DType: safetensors.F32, Shape: []int{3, 3}, Data: f32Bytes(cal)}, nil)
	old = rewrite(t, old, tensorTW, nil, nil)
	m3, err := Load(old)
	if err != nil {
		t.Fatalf("three-mode file: %v", err)
	}
	if m3.Calibration(Learned) != m.Calibration(Combined) || m3.TermWeighting() != LexicalWeighting {
		t.Fatalf("three-mode file: learned %+v %+v, want combined's calibration and the lexical rule", m3.Calibration(Learned), m3.TermWeighting())
	}
	bad := rewrite(t, b, tensorTW, &safetensors.Tensor{Name: tensorTW, DType: safetensors.F32, Shape: []int{3}, Data: f32Bytes([]float32{3, 0, 2})}, nil)
	if _, err := Load(bad); !errors.Is(err, ErrBadModel) {
		t.Fatalf("window 2: %v, want ErrBadModel", err)
	}
	docs := synthDocs(3, 9)
	toks := Tokenize(docs[0].Text)
	keys := m3.AppendChunkKeys(nil, toks)
	q := Tokenize("wadx wacx the")
	score := func(m *Model, mode Mode) []float32 {
		o := make([]float32, NumChunks(len(toks)))
		if err := m.Score(m.NewQuery(q, nil, mode), keys, o); err != nil {
			t.Fatal(err)
		}
		return o
	}
	if a, c := score(m3, Learned), score(m3, Combined); fmt.Sprint(a) != fmt.Sprint(c) {
		t.Fatal("Learned with the lexical rule and Combined's calibration differs from Combined")
	}
	m4 := *m3
	m4.tw = TermWeighting{Power: 1, Window: 1}
	if a, c := score(&m4, Learned), score(m3, Learned); fmt.Sprint(a) == fmt.Sprint(c) {
		t.Fatal("the term weighting changes nothing")
	}
}

// TestDictionaryBorrows: a question whose words the context never uses
// ("Who cuts my hair these days?") finds its evidence ("… is my barber from
// now on.") through a gloss of the training text in the Learned and
// Combined modes, not in the Lexical one and not without the dictionary; a
// question whose words are all in the context borrows nothing; the
// dictionary survives Save and Load, and inconsistent tensors are rejected.
func TestDictionaryBorrows(t *testing.T) {
	m := newTestModel(t)
	m.calib[Learned] = m.calib[Combined]
	m.tw = LexicalWeighting
	for _, w := range strings.Fields("who my these up from now on heads is") {
		m.idf[m.bucket(TermID(w))] = 0.1 // stop words, as a trained model has them
	}
	buildDict(m, []Document{{Name: "wn", Text: "barber: a hairdresser who cuts hair and shaves beards as a trade.\n" +
		"thing, object: a separate and self-contained entity.\nnot a gloss line\n"}})
	if m.dict == nil || len(m.dict.headOff) != 3 {
		t.Fatalf("dictionary: %+v, want two glosses", m.dict)
	}
	ev := "Heads up, Delphine Keel is my barber from now on."
	text := haystack(200, map[int]string{120: ev})
	toks := Tokenize(text)
	keys := m.AppendChunkKeys(nil, toks)
	f, l := chunksOf(text, ev, toks)
	kept := func(m *Model, mode Mode, question string) bool {
		out := make([]float32, NumChunks(len(toks)))
		if err := m.Score(m.NewQuery(Tokenize(question), nil, mode), keys, out); err != nil {
			t.Fatal(err)
		}
		for ch := f; ch <= l; ch++ {
			if out[ch] > 0 {
				return true
			}
		}
		return false
	}
	q := "Who cuts my hair these days?"
	for _, mode := range []Mode{Learned, Combined} {
		if !kept(m, mode, q) {
			t.Errorf("%v: the barber's chunks are not kept", mode)
		}
	}
	if kept(m, Lexical, q) {
		t.Error("lexical mode kept the barber's chunks: it has no dictionary")
	}
	nod := *m
	nod.dict = nil
	if kept(&nod, Learned, q) {
		t.Error("without the dictionary the barber's chunks are kept")
	}
	// Every word in the context: nothing borrowed.
	pq := m.NewQuery(Tokenize("Who is my barber from now on?"), nil, Learned)
	if got := m.dict.borrow(pq, nil); got != nil {
		t.Errorf("borrowed %v with no absent word", got)
	}
	b := saved(t, m)
	m2, err := Load(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(saved(t, m2), b) || !kept(m2, Learned, q) {
		t.Fatal("the dictionary did not survive Save and Load")
	}
	bad := rewrite(t, b, tensorDictHeadOff, &safetensors.Tensor{Name: tensorDictHeadOff, DType: safetensors.U32, Shape: []int{3}, Data: u32Bytes([]uint32{0, 9, 1})}, nil)
	if _, err := Load(bad); !errors.Is(err, ErrBadModel) {
		t.Fatalf("inconsistent dictionary: %v, want ErrBadModel", err)
	}
	bad = rewrite(t, b, tensorDictHeads, nil, nil)
	if _, err := Load(bad); !errors.Is(err, ErrBadModel) {
		t.Fatalf("dictionary without heads: %v, want ErrBadModel", err)
	}
}
