package attn

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

// benchSetup builds n random keys and a batch of b queries at 128 heads × 128.
func benchSetup(b *testing.B, n, batch int) (*KeyStore, *Batch, []*Query) {
	b.Helper()
	const heads, d = 128, 128
	r := rand.New(rand.NewPCG(uint64(n), uint64(batch)))
	ks, err := NewKeyStore(d)
	if err != nil {
		b.Fatal(err)
	}
	if err := ks.Append(randomKeys(r, n, d)); err != nil {
		b.Fatal(err)
	}
	var qs []*Query
	for range batch {
		qs = append(qs, randomQuery(r, heads, d))
	}
	bt, err := NewBatch(Float, qs...)
	if err != nil {
		b.Fatal(err)
	}
	return ks, bt, qs
}

var benchSizes = []struct {
	name string
	n    int
}{{"16K", 16 << 10}, {"128K", 128 << 10}, {"256K", 256 << 10}}

// reportGFLOPs counts 2 flops per multiply-add of the N×H×D×B product, per
// wall-clock second and per CPU-second (cpu is the process CPU time the timed
// loop used).
func reportGFLOPs(b *testing.B, n, batch int, cpu time.Duration) {
	flops := 2.0 * float64(n) * 128 * 128 * float64(batch) * float64(b.N)
	b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	if cpu > 0 {
		b.ReportMetric(flops/cpu.Seconds()/1e9, "GFLOP/cpu-s")
	}
}

// BenchmarkScore is the hot loop: all cores (GOMAXPROCS), float variant.
// "asm" is the AVX2/FMA kernel, "go" the portable kernel (16K only: it is slow),
// "gonum" the same math as blas32.Sgemm over key tiles, then ReLU and the
// weighted head sum.
func BenchmarkScore(b *testing.B) {
	for _, sz := range benchSizes {
		for _, batch := range []int{1, 8} {
			ks, bt, qs := benchSetup(b, sz.n, batch)
			out := make([]float32, batch*sz.n)
			for _, impl := range []string{"asm", "go", "gonum"} {
				if impl == "asm" && !hasAVX2FMA || impl == "go" && sz.n > 16<<10 {
					continue
				}
				b.Run(fmt.Sprintf("n=%s/B=%d/%s", sz.name, batch, impl), func(b *testing.B) {
					if impl == "gonum" {
						benchGonum(b, ks, qs, sz.n)
						return
					}
					setFast(b, impl == "asm")
					tasks := []Task{{Batch: bt, Keys: ks, From: 0, To: sz.n, Out: out}}
					cpu0 := processCPU()
					for b.Loop() {
						if err := Run(tasks); err != nil {
							b.Fatal(err)
						}
					}
					reportGFLOPs(b, sz.n, batch, processCPU()-cpu0)
				})
			}
		}
	}
}

// benchGonum scores with gonum's Sgemm. The keys are dequantised to float32 once,
// outside the timing, like our store's layout; the [tile × B·H] product is
// materialised per tile of keys and then reduced. Tiles are spread over
// GOMAXPROCS goroutines like Run's, so both sides use all cores.
func benchGonum(b *testing.B, ks *KeyStore, qs []*Query, n int) {
	const d, heads, tile = 128, 128, 2048
	keys := make([]float32, n*d)
	for i := 0; i < n; i++ {
		k, _ := ks.Key(i)
		copy(keys[i*d:], k)
	}
	rows := len(qs) * heads
	q := blas32.General{Rows: rows, Cols: d, Stride: d, Data: make([]float32, rows*d)}
	w := make([]float32, rows)
	for i, qq := range qs {
		copy(q.Data[i*heads*d:], qq.Q)
		copy(w[i*heads:], qq.W)
	}
	out := make([]float32, len(qs)*n)
	workers := runtime.GOMAXPROCS(0)
	bufs := make([][]float32, workers)
	for i := range bufs {
		bufs[i] = make([]float32, tile*rows)
	}
	scoreTile := func(t0 int, c []float32) {
		m := min(tile, n-t0)
		kt := blas32.General{Rows: m, Cols: d, Stride: d, Data: keys[t0*d : (t0+m)*d]}
		ct := blas32.General{Rows: m, Cols: rows, Stride: rows, Data: c[:m*rows]}
		blas32.Gemm(blas.NoTrans, blas.Trans, 1, kt, q, 0, ct)
		for i := 0; i < m; i++ {
			row := ct.Data[i*rows : (i+1)*rows]
			for qi := range qs {
				var s float32
				for h, v := range row[qi*heads : (qi+1)*heads] {
					if v > 0 {
						s += w[qi*heads+h] * v
					}
				}
				out[qi*n+t0+i] = s
			}
		}
	}
	cpu0 := processCPU()
	for b.Loop() {
		var next atomic.Int64
		var wg sync.WaitGroup
		for wi := range workers {
			wg.Go(func() {
				for {
					t0 := int(next.Add(tile)) - tile
					if t0 >= n {
						return
					}
					scoreTile(t0, bufs[wi])
				}
			})
		}
		wg.Wait()
	}
	reportGFLOPs(b, n, len(qs), processCPU()-cpu0)
}

// BenchmarkCycle512K is one full cycle at 512K tokens with the published
// dimensions: for each of 3 target layers, the query projection (hidden 4096,
// R 2048, H 128) and scoring of 131,072 chunks, batch 1, on all cores; with
// float32 weights, and with bf16 weights (a BF16 checkpoint), which halve the
// memory traffic of the projections.
func BenchmarkCycle512K(b *testing.B) {
	for _, bf := range []bool{false, true} {
		name := "weights=f32"
		if bf {
			name = "weights=bf16"
		}
		b.Run(name, func(b *testing.B) { benchCycle(b, bf) })
	}
}

func benchCycle(b *testing.B, bf16 bool) {
	const layers, n, hidden, rank, heads, d = 3, 131072, 4096, 2048, 128, 128
	r := rand.New(rand.NewPCG(42, 42))
	var lws []*LayerWeights
	var stores []*KeyStore
	for range layers {
		lw, err := NewLayerWeights(randMatrix(r, rank, hidden, bf16), ones(rank),
			randMatrix(r, heads*d, rank, bf16), randMatrix(r, heads, hidden, bf16), DefaultOptions)
		if err != nil {
			b.Fatal(err)
		}
		lws = append(lws, lw)
		ks, _ := NewKeyStore(d)
		if err := ks.Append(randomKeys(r, n, d)); err != nil {
			b.Fatal(err)
		}
		stores = append(stores, ks)
	}
	hid := make([]byte, 2*hidden)
	for i := 0; i < hidden; i++ {
		binary.LittleEndian.PutUint16(hid[2*i:], BF16FromF32(float32(r.NormFloat64())))
	}
	outs := make([][]float32, layers)
	for i := range outs {
		outs[i] = make([]float32, n)
	}
	var queryTime, scoreTime time.Duration
	cpu0 := processCPU()
	for b.Loop() {
		t0 := time.Now()
		tasks := make([]Task, layers)
		for l, lw := range lws {
			q, err := lw.Query(hid, 524287)
			if err != nil {
				b.Fatal(err)
			}
			bt, err := NewBatch(Float, q)
			if err != nil {
				b.Fatal(err)
			}
			tasks[l] = Task{Batch: bt, Keys: stores[l], From: 0, To: n, Out: outs[l]}
		}
		t1 := time.Now()
		if err := Run(tasks); err != nil {
			b.Fatal(err)
		}
		queryTime += t1.Sub(t0)
		scoreTime += time.Since(t1)
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 / float64(b.N) }
	b.ReportMetric(ms(queryTime+scoreTime), "ms/cycle")
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/1e3/float64(b.N), "cpu-ms/cycle")
	b.ReportMetric(ms(queryTime), "query-ms")
	b.ReportMetric(ms(scoreTime), "score-ms")
	b.ReportMetric(2*float64(n)*heads*d*layers/(scoreTime.Seconds()/float64(b.N))/1e9, "score-GFLOP/s")
}

// BenchmarkQueries is the query side alone at the published dimensions (one
// layer; hidden 4096, R 2048, H 128), for 1 and 8 queries in one pass over the
// weights, with float32 and bf16-exact weights.
func BenchmarkQueries(b *testing.B) {
	const hidden, rank, heads, d = 4096, 2048, 128, 128
	r := rand.New(rand.NewPCG(3, 3))
	for _, bf := range []bool{false, true} {
		lw, err := NewLayerWeights(randMatrix(r, rank, hidden, bf), ones(rank), randMatrix(r, heads*d, rank, bf), randMatrix(r, heads, hidden, bf), DefaultOptions)
		if err != nil {
			b.Fatal(err)
		}
		for _, nb := range []int{1, 8} {
			hid := make([][]byte, nb)
			pos := make([]int64, nb)
			for i := range hid {
				hid[i] = make([]byte, 2*hidden)
				for j := 0; j < hidden; j++ {
					binary.LittleEndian.PutUint16(hid[i][2*j:], BF16FromF32(float32(r.NormFloat64())))
				}
				pos[i] = int64(1000 * i)
			}
			name := fmt.Sprintf("weights=f32/B=%d", nb)
			if bf {
				name = fmt.Sprintf("weights=bf16/B=%d", nb)
			}
			b.Run(name, func(b *testing.B) {
				cpu0 := processCPU()
				for b.Loop() {
					if _, err := lw.Queries(hid, pos); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/1e3/float64(b.N), "cpu-ms/op")
			})
		}
	}
}
