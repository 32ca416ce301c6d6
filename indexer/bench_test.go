package indexer

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkSelect measures one Level-1 selection cycle (threshold, page scores, top-KMAX,
// diff, lookahead, EWMA) on ensembled logits, about 15 % of chunks above threshold in
// clusters, default policy. 262,144 chunks is a 1M-token context (4,096 pages).
func BenchmarkSelect(b *testing.B) {
	for _, n := range []int{16384, 131072, 262144} {
		b.Run(fmt.Sprintf("chunks=%d", n), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(1, 2))
			logits := make([]float32, n)
			for i := range logits {
				logits[i] = -1 - rng.Float32()
			}
			for c := 0; c < n; c += 64 * (1 + rng.IntN(12)) {
				for j := c; j < min(n, c+rng.IntN(64)); j++ {
					logits[j] = rng.Float32()*4 + 1e-3
				}
			}
			p := DefaultPolicy()
			p.FallbackRatio = 1
			var s selector
			s.step(n, logits, &p)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				s.step(n, logits, &p)
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mchunks/s")
		})
	}
}

// BenchmarkEnsemble measures combining three target layers' logits.
func BenchmarkEnsemble(b *testing.B) {
	const n = 262144
	rng := rand.New(rand.NewPCG(3, 4))
	layers := make([][]float32, 3)
	for l := range layers {
		layers[l] = make([]float32, n)
		for i := range layers[l] {
			layers[l][i] = rng.Float32()*4 - 2
		}
	}
	dst := make([]float32, n)
	for _, e := range []Ensemble{EnsembleMax, EnsembleMean} {
		b.Run(e.String(), func(b *testing.B) {
			for b.Loop() {
				e.combine(dst, layers)
			}
		})
	}
}

// BenchmarkScoreBatchPublished is one whole cycle through ScoreBatch at the published model
// size (hidden 4096, R 2048, 128 heads × 128, three target layers): query projection,
// scoring every chunk of every layer, ensemble and selection. 131,072 chunks is a 512K-token
// context. Set -benchtime=Nx; each iteration is one cycle of `batch` requests.
func BenchmarkScoreBatchPublished(b *testing.B) {
	if testing.Short() {
		b.Skip("published-size model takes 0.5 GB")
	}
	m, err := RandomModel(1, PublishedConfig())
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct{ chunks, batch int }{{16384, 1}, {131072, 1}, {131072, 8}} {
		b.Run(fmt.Sprintf("chunks=%d/batch=%d", tc.chunks, tc.batch), func(b *testing.B) {
			keys := m.RandomKeys(1, tc.chunks)
			reqs := make([]*Request, tc.batch)
			qs := make([]Query, tc.batch)
			for i := range reqs {
				// Random weights put about half the chunks above threshold: without this the
				// request would fall back after the first cycle and skip scoring.
				p := DefaultPolicy()
				p.FallbackRatio = 1
				r, err := NewRequest(m, p)
				if err != nil {
					b.Fatal(err)
				}
				if err := r.AppendKeys(0, keys); err != nil {
					b.Fatal(err)
				}
				reqs[i], qs[i] = r, m.RandomQuery(uint64(i), 4*int64(tc.chunks))
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := ScoreBatch(reqs, qs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(b.Elapsed().Seconds()*1e3/float64(b.N), "ms/cycle")
		})
	}
}

// BenchmarkQueryProjectionPublished is the per-request, per-cycle query side of one target
// layer at the published size (x·wq_aᵀ, RMSNorm, ·wq_bᵀ, RoPE, Hadamard, weights_proj):
// ≈ 42.5 M multiply-adds over 170 MB of float32 weights, which ScoreBatch runs for every
// request and target layer before scoring.
func BenchmarkQueryProjectionPublished(b *testing.B) {
	if testing.Short() {
		b.Skip("published-size model takes 0.5 GB")
	}
	cfg := PublishedConfig()
	cfg.Layers = []int{10}
	m, err := RandomModel(1, cfg)
	if err != nil {
		b.Fatal(err)
	}
	q := m.RandomQuery(1, 1<<19)
	for b.Loop() {
		if _, err := m.weights[0].Query(q.Layers[0], q.Position); err != nil {
			b.Fatal(err)
		}
	}
}
