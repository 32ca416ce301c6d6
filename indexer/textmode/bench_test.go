package textmode

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
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
