//go:build cuda

package gpuscore_test

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/indexer/gpuscore"
	"github.com/flashmemory/flashmemory/internal/cuda"
)

func device(t *testing.T) *cuda.Device {
	t.Helper()
	n, err := cuda.DeviceCount()
	if err != nil || n == 0 {
		t.Skipf("no CUDA device (%v)", err)
	}
	d, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// Requests scored on the GPU see the same logits and make the same selections as the same
// requests on the CPU model, through growth of the GPU key copy, a Truncate and batches
// mixing requests of different lengths; Close frees the GPU keys.
func TestGPUScorerMatchesCPU(t *testing.T) {
	dev := device(t)
	for _, variant := range []indexer.Variant{indexer.VariantTrained, indexer.VariantFP8Q} {
		t.Run(fmt.Sprint(variant), func(t *testing.T) {
			cfg := indexer.ModelConfig{Layers: []int{0, 1, 2}, Hidden: 512, QLoraRank: 128, Heads: 16, HeadDim: 128, Variant: variant}
			m, err := indexer.RandomModel(7, cfg)
			if err != nil {
				t.Fatal(err)
			}
			g, err := gpuscore.Wrap(m, dev)
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			pol := indexer.DefaultPolicy()
			pol.FallbackRatio = 1 // random keys and queries: stay in selection mode
			sizes := []int{131072, 5000, 64}
			var cpuReqs, gpuReqs []*indexer.Request
			for i, n := range sizes {
				rc, err := indexer.NewRequest(m, pol)
				if err != nil {
					t.Fatal(err)
				}
				rg, err := indexer.NewRequest(g, pol)
				if err != nil {
					t.Fatal(err)
				}
				keys := m.RandomKeys(uint64(100+i), n)
				// Appended in pieces: the GPU copy starts small and has to grow.
				kb := m.KeyBytes()
				for first := 0; first < n; {
					step := min(n-first, 3000+first)
					part := make([][]byte, len(keys))
					for l := range keys {
						part[l] = keys[l][first*kb : (first+step)*kb]
					}
					for _, r := range []*indexer.Request{rc, rg} {
						if err := r.AppendKeys(first, part); err != nil {
							t.Fatal(err)
						}
					}
					first += step
					if i == 0 && first > 6000 && first < 12000 {
						// Score once mid-way so a GPU copy exists, then undo a piece.
						q := []indexer.Query{m.RandomQuery(1, int64(first*4))}
						for _, r := range []*indexer.Request{rc, rg} {
							if _, err := indexer.ScoreBatch([]*indexer.Request{r}, q); err != nil {
								t.Fatal(err)
							}
						}
						for _, r := range []*indexer.Request{rc, rg} {
							r.Truncate(first - 1000)
						}
						first -= 1000
					}
				}
				cpuReqs, gpuReqs = append(cpuReqs, rc), append(gpuReqs, rg)
			}
			for cyc := range 3 {
				qs := make([]indexer.Query, len(sizes))
				for i, n := range sizes {
					qs[i] = m.RandomQuery(uint64(10*cyc+i), int64(n*4))
				}
				cc, err := indexer.ScoreBatch(cpuReqs, qs)
				if err != nil {
					t.Fatal(err)
				}
				gc, err := indexer.ScoreBatch(gpuReqs, qs)
				if err != nil {
					t.Fatal(err)
				}
				for i := range sizes {
					a, b := cpuReqs[i].Scores(), gpuReqs[i].Scores()
					if len(a) != len(b) || len(a) != sizes[i] {
						t.Fatalf("request %d: %d CPU scores, %d GPU scores, %d chunks", i, len(a), len(b), sizes[i])
					}
					var num, den float64
					for j := range a {
						d := float64(a[j] - b[j])
						num += d * d
						den += float64(a[j]) * float64(a[j])
					}
					rel := math.Sqrt(num / max(den, 1e-30))
					if rel > 1e-3 {
						t.Errorf("cycle %d request %d: scores differ, ‖Δ‖/‖cpu‖ = %.3g", cyc, i, rel)
					}
					same := slices.Equal(cc[i].Selected, gc[i].Selected)
					t.Logf("cycle %d request %d (%d chunks): ‖Δ‖/‖cpu‖ = %.2g, selections equal: %v", cyc, i, sizes[i], rel, same)
					if !same && overlap(cc[i].Selected, gc[i].Selected) < 0.98 {
						t.Errorf("cycle %d request %d: selections differ beyond ties: %d vs %d pages", cyc, i, len(cc[i].Selected), len(gc[i].Selected))
					}
				}
			}
			gb, cb, lastErr := g.Stats()
			if cb != 0 || gb == 0 {
				t.Errorf("GPU batches %d, CPU fallbacks %d (last error %v)", gb, cb, lastErr)
			}
			for _, r := range gpuReqs {
				if err := r.Close(); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func overlap(a, b []uint32) float64 {
	set := map[uint32]bool{}
	for _, x := range a {
		set[x] = true
	}
	n := 0
	for _, x := range b {
		if set[x] {
			n++
		}
	}
	return float64(n) / float64(max(len(a), len(b), 1))
}

// TestScoreBatchBench times whole ScoreBatch calls (query projection, scoring of every
// target layer, ensemble, selection) at the published model size with 131,072 chunks per
// request (512K tokens), CPU model against the GPU scorer in the same run, for 1, 8 and 16
// requests per batch. Runs only with FLASHMEM_BENCH=1.
func TestScoreBatchBench(t *testing.T) {
	if os.Getenv("FLASHMEM_BENCH") != "1" {
		t.Skip("set FLASHMEM_BENCH=1")
	}
	dev := device(t)
	m, err := indexer.RandomModel(1, indexer.PublishedConfig())
	if err != nil {
		t.Fatal(err)
	}
	g, err := gpuscore.Wrap(m, dev)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	const chunks, reps = 131072, 5
	keys := m.RandomKeys(3, chunks)
	pol := indexer.DefaultPolicy()
	pol.FallbackRatio = 1
	mk := func(sc indexer.Scorer, n int) []*indexer.Request {
		var rs []*indexer.Request
		for range n {
			r, err := indexer.NewRequest(sc, pol)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.AppendKeys(0, keys); err != nil {
				t.Fatal(err)
			}
			rs = append(rs, r)
		}
		return rs
	}
	fmt.Printf("\nScoreBatch, published model, %d chunks per request, %s vs %d CPU cores (median of %d, ms)\n", chunks, dev.Name(), runtime.NumCPU(), reps)
	fmt.Printf("%9s %10s %10s %7s\n", "requests", "CPU", "GPU", "ratio")
	for _, n := range []int{1, 8, 16} {
		qs := make([]indexer.Query, n)
		for i := range qs {
			qs[i] = m.RandomQuery(uint64(i), chunks*4)
		}
		var ms [2]float64
		var tg0, tg1 gpuscore.Timings
		for k, sc := range []indexer.Scorer{m, g} {
			rs := mk(sc, n)
			var ts []float64
			for i := -1; i < reps; i++ { // the first GPU call uploads the keys
				if i == 0 {
					tg0 = g.Timings()
				}
				t0 := time.Now()
				if _, err := indexer.ScoreBatch(rs, qs); err != nil {
					t.Fatal(err)
				}
				if i >= 0 {
					ts = append(ts, float64(time.Since(t0).Microseconds())/1000)
				}
			}
			slices.Sort(ts)
			ms[k] = ts[len(ts)/2]
			tg1 = g.Timings()
			for _, r := range rs {
				r.Close()
			}
		}
		per := func(a, b time.Duration) float64 { return float64(b-a) / float64(time.Millisecond) / reps }
		fmt.Printf("%9d %10.1f %10.1f %7.3f   GPU path per call: projection %.1f, key sync %.1f, kernel+copies %.1f ms\n",
			n, ms[0], ms[1], ms[1]/ms[0], per(tg0.Project, tg1.Project), per(tg0.Sync, tg1.Sync), per(tg0.Kernel, tg1.Kernel))
	}
	if _, cb, err := g.Stats(); cb != 0 {
		t.Errorf("%d batches fell back to the CPU: %v", cb, err)
	}
}
