package textmode

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/flashmemory/flashmemory/indexer"
)

// benchContext returns the tokens of the shared haystack essays repeated to n
// tokens, and the default model.
func benchContext(b *testing.B, n int) (*Model, []Token) {
	b.Helper()
	mb, err := os.ReadFile(filepath.Join("..", "..", "models", "textmode-default.safetensors"))
	if err != nil {
		b.Fatal(err)
	}
	m, err := Load(mb)
	if err != nil {
		b.Fatal(err)
	}
	names, _ := filepath.Glob(filepath.Join("..", "..", "..", "shared", "haystack", "paul-graham-essays", "*.txt"))
	if len(names) == 0 {
		b.Fatal("no haystack essays at ../shared/haystack/paul-graham-essays")
	}
	sort.Strings(names)
	var sb strings.Builder
	for _, nm := range names {
		t, err := os.ReadFile(nm)
		if err != nil {
			b.Fatal(err)
		}
		sb.Write(t)
	}
	one := Tokenize(sb.String())
	toks := make([]Token, 0, n)
	for len(toks) < n {
		toks = append(toks, one[:min(len(one), n-len(toks))]...)
	}
	return m, toks
}

func BenchmarkChunkKeys(b *testing.B) {
	m, toks := benchContext(b, 128<<10)
	b.ResetTimer()
	for b.Loop() {
		m.AppendChunkKeys(nil, toks)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(toks)), "ns/token")
}

func BenchmarkScore(b *testing.B) {
	for _, n := range []struct {
		name   string
		tokens int
	}{{"32K", 32 << 10}, {"128K", 128 << 10}, {"512K", 512 << 10}, {"1M", 1 << 20}} {
		b.Run(n.name, func(b *testing.B) {
			m, toks := benchContext(b, n.tokens)
			keys := m.AppendChunkKeys(nil, toks)
			out := make([]float32, NumChunks(len(toks)))
			q := m.NewQuery(Tokenize("What is the special magic number for amber-falcon mentioned in the provided text?"), nil, Combined)
			b.ResetTimer()
			for b.Loop() {
				if err := m.Score(q, keys, out); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(out)), "chunks")
		})
	}
}

// BenchmarkCycleExpansion is the cost of multi-hop expansion per cycle: one
// whole cycle (score through indexer.ScoreBatch, Level-1 selection at a 10 %
// page budget) of a 512K-token context holding a four-link chain, the query
// being the chain's question, with expansion off and on in the same run.
func BenchmarkCycleExpansion(b *testing.B) {
	m, _ := benchContext(b, 1024)
	names, _ := filepath.Glob(filepath.Join("..", "..", "..", "shared", "haystack", "paul-graham-essays", "*.txt"))
	sort.Strings(names)
	var essays strings.Builder
	for _, nm := range names {
		t, _ := os.ReadFile(nm)
		essays.Write(t)
		essays.WriteByte('\n')
	}
	links := []string{"Let qorvanta equal 4821734.", "Set mildrake to the value of qorvanta.",
		"Set pellumbra to the value of mildrake.", "Set zintarro to the value of pellumbra."}
	var sb strings.Builder
	for i := 0; len(Tokenize(sb.String())) < 512<<10; i++ {
		if i < len(links) {
			sb.WriteString(links[i] + " ")
		}
		sb.WriteString(essays.String())
	}
	toks := Tokenize(sb.String())
	toks = toks[:512<<10]
	keys := m.AppendChunkKeys(nil, toks)
	sc := &Scorer{Model: m}
	// Combined (the default mode) under the names of earlier reports; the
	// learned mode (the evaluation's "trained") as well.
	for _, mode := range []Mode{Combined, Learned} {
		q := sc.Query(m.NewQuery(Tokenize("Which variables hold the value 4821734?"), nil, mode))
		prefix := "512K"
		if mode != Combined {
			prefix += "/" + mode.String()
		}
		for _, exp := range []indexer.Expansion{indexer.ExpandOff, indexer.ExpandOn} {
			b.Run(prefix+"/expand="+exp.String(), func(b *testing.B) {
				pol := indexer.DefaultPolicy()
				pol.KMaxRatio, pol.FallbackRatio, pol.Expand = 0.10, 1, exp
				req, err := indexer.NewRequest(sc, pol)
				if err != nil {
					b.Fatal(err)
				}
				if err := req.AppendKeys(0, [][]byte{keys}); err != nil {
					b.Fatal(err)
				}
				var above int
				for b.Loop() {
					cs, err := indexer.ScoreBatch([]*indexer.Request{req}, []indexer.Query{q})
					if err != nil {
						b.Fatal(err)
					}
					above = cs[0].AboveThreshold
				}
				b.ReportMetric(float64(req.Len()), "chunks")
				b.ReportMetric(float64(above), "above")
			})
		}
	}
}
