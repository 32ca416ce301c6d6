package eval

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/indexer/textmode"
)

// keySpaceExpand is the key-space expansion studied for LSA models, on the
// text-mode model's dense keys (the only real keys here): the mean of the
// dense vectors of the topK chunks the first pass kept, and every other chunk
// whose key has cosine ≥ tau with it kept with logit 0.5 — a Rocchio step in
// the indexer's key space that needs no tokens.
func keySpaceExpand(m *textmode.Model, keys []byte, out []float32, topK int, tau float32) {
	d, kb := m.Config().Dim, m.KeyBytes()
	n := len(out)
	vec := func(c int, v []float32) {
		k := keys[c*kb:]
		s := math.Float32frombits(binary.LittleEndian.Uint32(k[d:]))
		for i := range d {
			v[i] = float32(int8(k[i])) * s
		}
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		switch {
		case out[a] > out[b]:
			return -1
		case out[a] < out[b]:
			return 1
		}
		return 0
	})
	cen, v := make([]float32, d), make([]float32, d)
	for _, c := range idx[:min(topK, n)] {
		if out[c] <= 0 {
			break
		}
		vec(c, v)
		for i, x := range v {
			cen[i] += x
		}
	}
	var nn float64
	for _, x := range cen {
		nn += float64(x) * float64(x)
	}
	if nn == 0 {
		return
	}
	inv := float32(1 / math.Sqrt(nn))
	for c := range n {
		if out[c] > 0 {
			continue
		}
		vec(c, v)
		var dot float32
		for i, x := range v {
			dot += x * cen[i] * inv
		}
		if dot >= tau {
			out[c] = 0.5
		}
	}
}

// TestKeySpaceExpansionStudy compares, on the multi-hop tasks at a 10 %
// footprint, no expansion, key-space expansion at several thresholds and the
// token expansion text mode uses. Key-space expansion finds more of what the
// first pass found (keys that resemble it), not the next link of a chain,
// which shares a name with the previous link and nothing else: it must not
// come close to the token expansion (go test -run KeySpace -v ./eval/ prints
// the table of docs/evaluation.md).
func TestKeySpaceExpansionStudy(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "models", "textmode-default.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := textmode.Load(b)
	if err != nil {
		t.Fatal(err)
	}
	f, err := LoadFiller(haystackDir(t))
	if err != nil {
		t.Fatal(err)
	}
	var ds bytes.Buffer
	if err := GenerateFrom(&ds, f, GenOptions{Seed: 21, Tokens: 32768, Records: 2, Tasks: MultiHopTasks}); err != nil {
		t.Fatal(err)
	}
	taus := []float32{0.9, 0.7, 0.5, 0.3}
	var none, tokens int
	keyspace := make([]int, len(taus))
	questions := 0
	r := NewReader(&ds)
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		doc := NewDoc(rec.Context)
		keys := m.AppendChunkKeys(nil, doc.Tokens)
		sc := &textmode.Scorer{Model: m}
		for _, q := range rec.Queries {
			pq, err := PrepareQuery(doc, q)
			if err != nil {
				t.Fatal(err)
			}
			questions++
			pol := PolicyFor(doc.Chunks(), 0.10)
			query := m.NewQuery(pq.Question, nil, textmode.Combined)
			covered := func(hops int, tau float32) bool {
				out := make([]float32, doc.Chunks())
				if err := m.ScoreWith(query, keys, out, textmode.ScoreOptions{Hops: hops}); err != nil {
					t.Fatal(err)
				}
				if tau > 0 {
					keySpaceExpand(m, keys, out, 8, tau)
				}
				req, err := indexer.NewRequest(sc, pol)
				if err != nil {
					t.Fatal(err)
				}
				if err := req.AppendKeys(0, [][]byte{keys}); err != nil {
					t.Fatal(err)
				}
				cy, err := req.Select(out)
				if err != nil {
					t.Fatal(err)
				}
				for _, sp := range pq.Spans {
					if !PageSet(cy.Selected).Covers(sp) {
						return false
					}
				}
				return true
			}
			if covered(0, 0) {
				none++
			}
			if covered(textmode.DefaultHops, 0) {
				tokens++
			}
			for i, tau := range taus {
				if covered(0, tau) {
					keyspace[i]++
				}
			}
		}
	}
	t.Logf("multi-hop questions at 10 %%, all evidence selected with the question: none %d, token expansion %d of %d", none, tokens, questions)
	best := 0
	for i, tau := range taus {
		t.Logf("key-space expansion, top 8 kept keys, cosine ≥ %.1f: %d of %d", tau, keyspace[i], questions)
		best = max(best, keyspace[i])
	}
	if tokens < questions*8/10 {
		t.Errorf("token expansion selects all evidence of %d of %d multi-hop questions, want ≥ 80 %%", tokens, questions)
	}
	if best-none > (tokens-none)/4 {
		t.Errorf("key-space expansion recovers %d questions, token expansion %d: the study's finding no longer holds, revisit docs/evaluation.md", best-none, tokens-none)
	}
}
