//go:build cuda

package gpuscore_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/attn"
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
					a, b := cc[i], gc[i]
					same := slices.Equal(a.Selected, b.Selected)
					d := a.AboveThreshold - b.AboveThreshold
					t.Logf("cycle %d request %d (%d chunks): above threshold CPU %d GPU %d, outside %d/%d, selections equal: %v, lookahead equal: %v",
						cyc, i, sizes[i], a.AboveThreshold, b.AboveThreshold, a.AboveOutside, b.AboveOutside, same, slices.Equal(a.Lookahead, b.Lookahead))
					// Logits agree to ~1e-6 relative: only chunks within that of the threshold can flip.
					if d < -2 || d > 2 || a.KMax != b.KMax || a.ForcedPages != b.ForcedPages || a.Cycle != b.Cycle {
						t.Errorf("cycle %d request %d: CPU %+v\nGPU %+v", cyc, i, *a, *b)
					}
					if !same && overlap(a.Selected, b.Selected) < 0.98 {
						t.Errorf("cycle %d request %d: selections differ beyond ties: %d vs %d pages", cyc, i, len(a.Selected), len(b.Selected))
					}
				}
			}
			if tm := g.Timings(); tm.CycleBatches == 0 {
				t.Error("no batch ran as a whole GPU cycle (ScorePages)")
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
// target layer, ensemble, selection) at the published model size (bf16 weights, as the
// published checkpoint) with 131,072 and 262,144 chunks per request (512K and 1M tokens),
// for 1, 8 and 16 requests per batch: the GPU scorer (one GPU cycle per batch) and, at
// 131,072 chunks, the CPU model in the same run. Runs only with FLASHMEM_BENCH=1; writes JSON
// to $FLASHMEM_BENCH_OUT when set.
func TestScoreBatchBench(t *testing.T) {
	if os.Getenv("FLASHMEM_BENCH") != "1" {
		t.Skip("set FLASHMEM_BENCH=1")
	}
	dev := device(t)
	cfg := indexer.PublishedConfig()
	m, err := indexer.RandomModel(1, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if m, err = bf16Model(m); err != nil {
		t.Fatal(err)
	}
	g, err := gpuscore.Wrap(m, dev)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	const reps = 10
	pol := indexer.DefaultPolicy()
	pol.FallbackRatio = 1
	type row struct {
		Chunks, Requests          int
		GPUms, GPUDeviceMs, CPUms float64
		// per call, ms: the cycle's Run (fill, enqueue+wait, collect) and key sync
		RunMs, FillMs, WaitMs, CollectMs, SyncMs float64
		PagesMs                                  float64 // whole ScorePages
	}
	var rows []row
	fmt.Printf("\nScoreBatch, published model (bf16 weights), %s vs %d CPU cores (median of %d, ms)\n", dev.Name(), runtime.NumCPU(), reps)
	fmt.Printf("%8s %9s %10s %12s %10s\n", "chunks", "requests", "GPU", "GPU device", "CPU")
	for _, chunks := range []int{131072, 262144} {
		keys := m.RandomKeys(3, chunks)
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
		for _, n := range []int{1, 8, 16} {
			qs := make([]indexer.Query, n)
			for i := range qs {
				qs[i] = m.RandomQuery(uint64(i), int64(chunks*4))
			}
			var tg0 gpuscore.Timings
			med := func(sc indexer.Scorer, reps int) float64 {
				rs := mk(sc, n)
				defer func() {
					for _, r := range rs {
						r.Close()
					}
				}()
				var ts []float64
				for i := -1; i < reps; i++ {
					if i == 0 {
						// The requests were just built (GBs of keys): collect now, so the
						// timed calls measure the steady state, not a concurrent GC.
						runtime.GC()
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
				return ts[len(ts)/2]
			}
			r := row{Chunks: chunks, Requests: n}
			r.GPUms = med(g, reps)
			tg1 := g.Timings()
			if b := tg1.CycleBatches - tg0.CycleBatches; b > 0 {
				per := func(a, z time.Duration) float64 { return float64(z-a) / 1e6 / float64(b) }
				r.GPUDeviceMs = per(tg0.GPU, tg1.GPU)
				r.RunMs, r.FillMs, r.WaitMs, r.CollectMs = per(tg0.Cycle, tg1.Cycle), per(tg0.Fill, tg1.Fill), per(tg0.Wait, tg1.Wait), per(tg0.Collect, tg1.Collect)
				r.SyncMs = per(tg0.Sync, tg1.Sync)
				r.PagesMs = per(tg0.Pages, tg1.Pages)
			}
			if chunks == 131072 {
				r.CPUms = med(m, 2)
			}
			rows = append(rows, r)
			fmt.Printf("%8d %9d %10.2f %12.2f %10.1f   mean per call: ScorePages %.2f = key sync %.2f + run %.2f (fill %.2f, enqueue+wait %.2f, collect %.2f)\n",
				chunks, n, r.GPUms, r.GPUDeviceMs, r.CPUms, r.PagesMs, r.SyncMs, r.RunMs, r.FillMs, r.WaitMs, r.CollectMs)
		}
	}
	if _, cb, err := g.Stats(); cb != 0 {
		t.Errorf("%d batches fell back to the CPU: %v", cb, err)
	}
	if p := os.Getenv("FLASHMEM_BENCH_OUT"); p != "" {
		b, _ := json.MarshalIndent(map[string]any{"device": dev.Name(), "scorebatch": rows}, "", " ")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Error(err)
		}
	}
}

// bf16Model is m with every weight rounded to bf16 (what the published BF16 checkpoint
// holds), saved and loaded back so the model keeps bf16 matrices.
func bf16Model(m *indexer.Model) (*indexer.Model, error) {
	var buf bytes.Buffer
	if err := m.WriteSafetensors(&buf); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	// Round every F32 tensor value in place: the header is JSON after an 8-byte length.
	hl := int(binary.LittleEndian.Uint64(b))
	data := b[8+hl:]
	for i := 0; i+4 <= len(data); i += 4 {
		v := math.Float32frombits(binary.LittleEndian.Uint32(data[i:]))
		binary.LittleEndian.PutUint32(data[i:], math.Float32bits(attn.RoundBF16(v)))
	}
	return indexer.ParseModel(b, indexer.LoadOptions{})
}
