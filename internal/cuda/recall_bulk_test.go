//go:build cuda

package cuda

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
)

// bulkShape is one launch shape of the Hopper bulk-copy gather (fm_gather_bulk): warps
// (pipelines) per block, stages and chunk bytes per pipeline, and the grid.
type bulkShape struct {
	warps, stages, chunk, grid int
}

func (b bulkShape) String() string {
	return fmt.Sprintf("bulk %dw x %d x %d KiB, %d blocks", b.warps, b.stages, b.chunk>>10, b.grid)
}

// withBulk runs fn with Gather set to the bulk-copy kernel of shape b.
func withBulk(b bulkShape, fn func() error) error {
	k, w, st, c, g := gatherKind, gatherBulkWarps, gatherTMAStages, gatherTMAChunk, gatherGrid
	defer func() { gatherKind, gatherBulkWarps, gatherTMAStages, gatherTMAChunk, gatherGrid = k, w, st, c, g }()
	gatherKind, gatherBulkWarps, gatherTMAStages, gatherTMAChunk, gatherGrid = "bulk", b.warps, b.stages, b.chunk, b.grid
	return fn()
}

// TestRecallBulkSweep (FLASHMEM_SWEEP=1) asks whether Hopper's bulk-copy engine (TMA:
// cp.async.bulk from the mapped pinned mirror into shared memory, completion on an
// mbarrier, then cp.async.bulk out to the slot, several stages in flight per pipeline)
// moves scattered page-major recalls faster than the SM-load gather, alone or next to the
// copy engines (the engines carry the leading share of the bytes on 4 or 8 streams, the
// kernel the rest, at once). Same draw as TestRecallPageMajorBench: 64 MiB of pages at
// random from a 4 GiB pinned mirror into consecutive slots, fresh every repetition, median
// of 20, × the contiguous copy of the same bytes timed before (and after) in the same run.
// It also counts how many recalled pages sit next to their predecessor in both mirror and
// reserve (what merging such runs into one engine copy could save on this draw).
// JSON to $FLASHMEM_BENCH_OUT.
func TestRecallBulkSweep(t *testing.T) {
	if os.Getenv("FLASHMEM_SWEEP") != "1" {
		t.Skip("set FLASHMEM_SWEEP=1")
	}
	d := devices(t)[0]
	if d.ccMajor < 9 {
		t.Skip("bulk copies need sm_90")
	}
	tm := newTimer(t, d)
	s := tm.s
	const mirrorBytes, total, reps = recallMirrorBytes, recallTotal, 20
	mirror, reserve := recallBenchSetup(t, d, s, 17)
	rnd := rand.New(rand.NewPCG(21, 21))
	ces, evs := benchStreams(t, d, 8, 9)
	type row struct {
		Case, Method string
		MedMS, GBps  float64
		X            float64
	}
	var rows []row
	check := func(descs []CopyDesc) {
		t.Helper()
		checkRecalled(t, d, mirror, []CopyDesc{descs[0], descs[len(descs)/3], descs[len(descs)/2], descs[len(descs)-1]})
	}
	sms := d.sms
	shapes := []bulkShape{
		{1, 4, 16 << 10, sms * 8}, // one warp per block: the earlier fm_gather_tma's default shape
		{1, 4, 16 << 10, sms},
		{1, 8, 16 << 10, sms},
		{1, 4, 32 << 10, sms},
		{1, 6, 32 << 10, sms},
		{1, 4, 16 << 10, 2 * sms},
		{1, 8, 8 << 10, 2 * sms},
		{2, 4, 16 << 10, sms},
		{4, 4, 8 << 10, sms},
		{4, 2, 16 << 10, 2 * sms},
		{8, 2, 8 << 10, sms},
		{1, 4, 16 << 10, sms / 2},
	}
	for _, lay := range []struct {
		name         string
		bytes, align int
	}{{"64 KiB", 64 << 10, 0}, {"256 KiB", 256 << 10, 0}, {"DeepSeek-V4 786,240 B", 21 * 37440, 0}, {"DeepSeek-V4, 4 KiB-aligned", 21 * 37440, 4096}} {
		pageBytes := lay.bytes
		stride := pageBytes
		if lay.align > 0 {
			stride = (pageBytes + lay.align - 1) / lay.align * lay.align
		}
		npages := total / pageBytes
		bytes := npages * pageBytes
		set := make([][]CopyDesc, reps)
		adjacent := 0
		for i := range reps {
			for slot, p := range rnd.Perm(mirrorBytes / stride)[:npages] {
				c := CopyDesc{Src: mirror.Ptr() + DevPtr(p*stride), Dst: reserve + DevPtr(slot*pageBytes), Len: uint64(pageBytes)}
				if k := len(set[i]); k > 0 && set[i][k-1].Src+DevPtr(pageBytes) == c.Src && stride == pageBytes {
					adjacent++
				}
				set[i] = append(set[i], c)
			}
		}
		fmt.Printf("%s: %d of %d recalled pages follow their predecessor in both mirror and reserve\n", lay.name, adjacent, reps*npages)
		var base float64
		contig := func(label string) {
			ms := tm.median(reps, func(int) error { return s.Copy(reserve, mirror.Ptr()+DevPtr(rnd.IntN(48)<<26), bytes) })
			g := float64(bytes) / ms / 1e6
			if base == 0 {
				base = g
			}
			rows = append(rows, row{lay.name, label, ms, g, g / base})
		}
		timeIt := func(method string, fn func([]CopyDesc) error) {
			ms := tm.median(reps, func(i int) error { return fn(set[i]) })
			check(set[reps-1])
			g := float64(bytes) / ms / 1e6
			rows = append(rows, row{lay.name, method, ms, g, g / base})
		}
		contig("contiguous (before)")
		timeIt("Recall (daemon path)", s.Recall)
		timeIt("gather kernel (p256)", s.Gather)
		for _, n := range []int{4, 6, 8} {
			timeIt(fmt.Sprintf("CE %d streams", n), func(ds []CopyDesc) error { return recallOver(s, ces[:n], evs, ds, 1) })
		}
		// The same pages and slots, copies issued in mirror-address order (Recall may order
		// its copies freely: no two share a slot).
		sorted := make([][]CopyDesc, reps)
		for i := range reps {
			sorted[i] = slices.Clone(set[i])
			slices.SortFunc(sorted[i], func(a, b CopyDesc) int { return cmpPtr(a.Src, b.Src) })
		}
		timeSorted := func(method string, fn func([]CopyDesc) error) {
			ms := tm.median(reps, func(i int) error { return fn(sorted[i]) })
			check(sorted[reps-1])
			g := float64(bytes) / ms / 1e6
			rows = append(rows, row{lay.name, method, ms, g, g / base})
		}
		timeSorted("Recall, copies in mirror order", s.Recall)
		timeSorted("gather kernel, copies in mirror order", s.Gather)
		for _, n := range []int{1, 4, 8} {
			timeSorted(fmt.Sprintf("CE %d streams, copies in mirror order", n), func(ds []CopyDesc) error { return recallOver(s, ces[:n], evs, ds, 1) })
		}
		for _, b := range shapes {
			timeIt(b.String(), func(ds []CopyDesc) error { return withBulk(b, func() error { return s.Gather(ds) }) })
		}
		for _, b := range []bulkShape{{1, 4, 16 << 10, sms}, {1, 4, 16 << 10, sms / 4}, {1, 2, 16 << 10, sms / 2}} {
			for _, n := range []int{4, 8} {
				for _, share := range []float64{0.5, 0.65, 0.8, 0.9} {
					timeIt(fmt.Sprintf("CE %d streams %.0f %% + %s", n, 100*share, b), func(ds []CopyDesc) error {
						return withBulk(b, func() error { return recallOver(s, ces[:n], evs, ds, share) })
					})
				}
			}
		}
		contig("contiguous (after)")
	}
	fmt.Printf("\nRecall bulk-copy sweep, %s (64 MiB per recall; × contiguous-before of the same layout)\n", d.Name())
	for _, r := range rows {
		fmt.Printf("%-26s %-58s %8.3f ms %6.1f GB/s  × %.3f\n", r.Case, r.Method, r.MedMS, r.GBps, r.X)
	}
	if p := os.Getenv("FLASHMEM_BENCH_OUT"); p != "" {
		b, _ := json.MarshalIndent(map[string]any{"device": d.Name(), "rows": rows}, "", " ")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Error(err)
		}
	}
}

func cmpPtr(a, b DevPtr) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
