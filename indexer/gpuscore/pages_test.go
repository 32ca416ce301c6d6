package gpuscore_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/flashmemory/flashmemory/attn/gpu"
	"github.com/flashmemory/flashmemory/indexer"
)

// pageCounts is what the GPU cycle's scoring kernel computes from ensembled logits: per
// page the number of chunks above the threshold logit, and the counts overall and outside
// sink and tail.
func pageCounts(logits []float32, thr float32, cpp, sinkEnd, tailStart int) (scores []uint8, above, outside int) {
	scores = make([]uint8, (len(logits)+cpp-1)/cpp)
	for c, l := range logits {
		if l > thr {
			scores[c/cpp]++
			above++
			if c >= sinkEnd && c < tailStart {
				outside++
			}
		}
	}
	return scores, above, outside
}

func randomLogits(rng *rand.Rand, n int) []float32 {
	// Dense, sparse and clustered regions, some exact ties at the threshold and NaNs.
	out := make([]float32, n)
	bias := rng.Float64()*6 - 5
	for i := range out {
		v := bias + rng.NormFloat64()
		if (i/512)%3 == 1 {
			v += 3
		}
		switch rng.IntN(200) {
		case 0:
			v = 0
		case 1:
			v = math.NaN()
		}
		out[i] = float32(v)
	}
	return out
}

// The selection kernel's CPU twin (gpu.SelectPages, with gpu.ForcedPages) selects exactly
// the pages the indexer's Level-1 selection does, over random contexts, page sizes, sinks,
// tails and budgets, including budgets below the forced pages and above all pages.
func TestSelectPagesTwinMatchesIndexer(t *testing.T) {
	m, err := indexer.RandomModel(1, indexer.ModelConfig{Layers: []int{0}, Hidden: 64, QLoraRank: 32, Heads: 8, HeadDim: 128})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 9))
	keys := m.RandomKeys(3, 20000)
	for tc := range 300 {
		n := 1 + rng.IntN(20000)
		if tc%10 == 0 {
			n = 1 + rng.IntN(300)
		}
		pol := indexer.DefaultPolicy()
		pol.ChunksPerPage = []int{64, 64, 1, 7, 32, 255}[rng.IntN(6)]
		pol.FirstKeep = rng.IntN(300)
		pol.LastKeep = rng.IntN(3000)
		pol.FallbackRatio = 1
		switch rng.IntN(4) {
		case 0:
			pol.KMax = 1 + rng.IntN(10)
		case 1:
			pol.KMax = 1 + rng.IntN(2*n/pol.ChunksPerPage+2)
		default:
			pol.KMaxRatio = rng.Float64() * 0.5
		}
		r, err := indexer.NewRequest(m, pol)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.AppendKeys(0, [][]byte{keys[0][:n*m.KeyBytes()]}); err != nil {
			t.Fatal(err)
		}
		logits := randomLogits(rng, n)
		cyc, err := r.Select(logits)
		if err != nil {
			t.Fatal(err)
		}
		sinkEnd, tailStart := min(pol.FirstKeep, n), max(n-pol.LastKeep, 0)
		scores, above, outside := pageCounts(logits, 0, pol.ChunksPerPage, sinkEnd, tailStart)
		sinkPages, tailPage := gpu.ForcedPages(n, sinkEnd, tailStart, pol.ChunksPerPage)
		forced := 0
		for pg := range scores {
			if pg < sinkPages || pg >= tailPage {
				forced++
			}
		}
		if forced != cyc.ForcedPages {
			t.Fatalf("case %d: ForcedPages bounds give %d forced pages, indexer %d", tc, forced, cyc.ForcedPages)
		}
		sel := make([]bool, len(scores))
		cnt := gpu.SelectPages(scores, sinkPages, tailPage, cyc.KMax-cyc.ForcedPages, pol.ChunksPerPage, sel)
		var got []uint32
		for pg, in := range sel {
			if in {
				got = append(got, uint32(pg))
			}
		}
		if !reflect.DeepEqual(got, cyc.Selected) || cnt != len(got) {
			t.Fatalf("case %d (n %d, cpp %d, sink %d, tail %d, kmax %d): twin selects %d pages %v…, indexer %d",
				tc, n, pol.ChunksPerPage, pol.FirstKeep, pol.LastKeep, cyc.KMax, cnt, head(got), len(cyc.Selected))
		}
		if above != cyc.AboveThreshold || outside != cyc.AboveOutside {
			t.Fatalf("case %d: counters %d/%d, indexer %d/%d", tc, above, outside, cyc.AboveThreshold, cyc.AboveOutside)
		}
	}
}

func head(s []uint32) []uint32 { return s[:min(len(s), 8)] }

// twinScorer is an indexer.PageScorer that does on the CPU what the GPU cycle does: it
// scores with the CPU model, ensembles, counts pages and runs the selection twin. ScoreBatch
// through it must give the same cycles as through the model itself.
type twinScorer struct {
	*indexer.Model
	calls int
}

func (s *twinScorer) ScorePages(items []indexer.PageItem, p indexer.PageParams) error {
	s.calls++
	nl := len(s.Layers())
	for i := range items {
		it := &items[i]
		n := it.Keys[0].Len()
		out := make([][]float32, nl)
		for l := range out {
			out[l] = make([]float32, n)
		}
		if err := s.Model.Score([]indexer.ScoreItem{{Query: it.Query, Keys: it.Keys, Out: out}}); err != nil {
			return err
		}
		ens := make([]float32, n)
		for c := range ens {
			if p.Ensemble == indexer.EnsembleMean {
				var sum float64
				for l := range out {
					sum += 1 / (1 + math.Exp(-float64(out[l][c])))
				}
				pm := sum * (1 / float64(nl))
				ens[c] = float32(math.Log(pm / (1 - pm)))
				continue
			}
			ens[c] = out[0][c]
			for l := 1; l < nl; l++ {
				ens[c] = max(ens[c], out[l][c])
			}
		}
		it.PageScores, it.AboveThreshold, it.AboveOutside = pageCounts(ens, p.ThresholdLogit, p.ChunksPerPage, it.SinkEnd, it.TailStart)
		sinkPages, tailPage := gpu.ForcedPages(n, it.SinkEnd, it.TailStart, p.ChunksPerPage)
		it.Selected = make([]bool, len(it.PageScores))
		gpu.SelectPages(it.PageScores, sinkPages, tailPage, it.Need, p.ChunksPerPage, it.Selected)
	}
	return nil
}

// ScoreBatch through a PageScorer (page results, not logits) runs the same cycles as
// through Score: same selections, diffs, counters, fallback and lookahead, cycle after
// cycle, for both ensembles and with a request that falls back.
func TestPageScorerPathMatchesScorePath(t *testing.T) {
	for _, ens := range []indexer.Ensemble{indexer.EnsembleMax, indexer.EnsembleMean} {
		t.Run(fmt.Sprint(ens), func(t *testing.T) {
			m, err := indexer.RandomModel(5, indexer.ModelConfig{Layers: []int{0, 1, 2}, Hidden: 64, QLoraRank: 32, Heads: 8, HeadDim: 128, Ensemble: ens})
			if err != nil {
				t.Fatal(err)
			}
			tw := &twinScorer{Model: m}
			pol := indexer.DefaultPolicy()
			pol.LastKeep, pol.FirstKeep = 256, 64
			sizes := []int{5000, 700, 64, 3000}
			var a, b []*indexer.Request
			for i, n := range sizes {
				p := pol
				if i == 3 {
					p.FallbackRatio = 0.01 // falls back within a few cycles
				} else {
					p.FallbackRatio = 1
				}
				ra, err := indexer.NewRequest(m, p)
				if err != nil {
					t.Fatal(err)
				}
				rb, err := indexer.NewRequest(tw, p)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range []*indexer.Request{ra, rb} {
					if err := r.AppendKeys(0, m.RandomKeys(uint64(i), n)); err != nil {
						t.Fatal(err)
					}
				}
				a, b = append(a, ra), append(b, rb)
			}
			for cyc := range 4 {
				qs := make([]indexer.Query, len(sizes))
				for i := range qs {
					qs[i] = m.RandomQuery(uint64(cyc*10+i), int64(4*sizes[i]))
				}
				ca, err := indexer.ScoreBatch(a, qs)
				if err != nil {
					t.Fatal(err)
				}
				cb, err := indexer.ScoreBatch(b, qs)
				if err != nil {
					t.Fatal(err)
				}
				for i := range ca {
					if !reflect.DeepEqual(ca[i], cb[i]) {
						t.Fatalf("cycle %d request %d:\nScore     %+v\nPageScore %+v", cyc, i, *ca[i], *cb[i])
					}
				}
				// grow the contexts between cycles
				for i, r := range a {
					more := m.RandomKeys(uint64(100+cyc*10+i), 100)
					if err := r.AppendKeys(r.Len(), more); err != nil {
						t.Fatal(err)
					}
					if err := b[i].AppendKeys(b[i].Len(), more); err != nil {
						t.Fatal(err)
					}
				}
			}
			if tw.calls == 0 {
				t.Fatal("ScorePages never called")
			}
			if !a[3].Fallback() {
				t.Error("request 3 never fell back")
			}
		})
	}
}

// A batch whose requests belong to two scorers (two GPUs' scorers on a multi-GPU host) runs
// the groups concurrently; each request's cycle is what it would be alone.
func TestScoreBatchTwoScorersConcurrently(t *testing.T) {
	m, err := indexer.RandomModel(9, indexer.ModelConfig{Layers: []int{0, 1, 2}, Hidden: 64, QLoraRank: 32, Heads: 8, HeadDim: 128})
	if err != nil {
		t.Fatal(err)
	}
	tw := &twinScorer{Model: m}
	pol := indexer.DefaultPolicy()
	pol.LastKeep, pol.FirstKeep, pol.FallbackRatio = 256, 64, 1
	var mixed, alone []*indexer.Request
	var qs []indexer.Query
	for i, sc := range []indexer.Scorer{m, tw, m, tw} {
		keys := m.RandomKeys(uint64(50+i), 3000+500*i)
		for _, dst := range []*[]*indexer.Request{&mixed, &alone} {
			r, err := indexer.NewRequest(sc, pol)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.AppendKeys(0, keys); err != nil {
				t.Fatal(err)
			}
			*dst = append(*dst, r)
		}
		qs = append(qs, m.RandomQuery(uint64(i), int64(4*(3000+500*i))))
	}
	got, err := indexer.ScoreBatch(mixed, qs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range alone {
		want, err := indexer.ScoreBatch([]*indexer.Request{r}, qs[i:i+1])
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got[i], want[0]) {
			t.Fatalf("request %d: mixed batch %+v, alone %+v", i, *got[i], *want[0])
		}
	}
	if tw.calls == 0 {
		t.Fatal("the page scorer's group never ran")
	}
}
