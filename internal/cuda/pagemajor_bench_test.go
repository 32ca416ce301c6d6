//go:build cuda

package cuda

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
)

// TestRecallPageMajorBench measures recall into a page-major reserve (a page's rows for all
// layers contiguous in the slot, as in the host mirror: one piece per page) against the
// per-layer reserve (one row per layer and page) and one contiguous copy of the same bytes,
// in the same run, through Stream.Recall (the daemon's path: copy engines for pieces of
// 512 KiB and more, the gather kernel below) and the gather kernel alone: the DeepSeek-V4
// layout (21 rows of 37,440 B per page) and single-piece pages of 64 KiB and 256 KiB. 64 MiB
// per recall, pages drawn at random from a 4 GiB pinned mirror, fresh every repetition,
// median of 20; the last recall of each case is checked byte for byte. FLASHMEM_BENCH=1 only;
// JSON to $FLASHMEM_BENCH_OUT.
func TestRecallPageMajorBench(t *testing.T) {
	if os.Getenv("FLASHMEM_BENCH") != "1" {
		t.Skip("set FLASHMEM_BENCH=1")
	}
	d := devices(t)[0]
	tm := newTimer(t, d)
	s := tm.s
	const mirrorBytes, total, reps = recallMirrorBytes, recallTotal, 20
	mirror, reserve := recallBenchSetup(t, d, s, 7)
	rnd := rand.New(rand.NewPCG(3, 3))
	var rows []recallRow
	add := func(c, m string, bytes, nrows int, ms float64) {
		rows = append(rows, recallRow{Case: c, Method: m, Bytes: bytes, Rows: nrows, MedMS: ms, GBps: float64(bytes) / ms / 1e6})
	}
	check := func(descs []CopyDesc) {
		t.Helper()
		checkRecalled(t, d, mirror, []CopyDesc{descs[0], descs[len(descs)-1]})
	}
	auxs, evs := benchStreams(t, d, 3, 4)
	contig := tm.median(reps, func(int) error { return s.Copy(reserve, mirror.Ptr()+DevPtr(rnd.IntN(48)<<26), total) })
	add("contiguous 64 MiB", "cuMemcpyAsync", total, 1, contig)

	type layout struct {
		name     string
		layers   int
		rowBytes int
	}
	for _, lay := range []layout{{"DeepSeek-V4 21x37440 B", 21, 37440}, {"64 KiB pages", 1, 64 << 10}, {"256 KiB pages", 1, 256 << 10}} {
		pageBytes := lay.layers * lay.rowBytes
		npages := total / pageBytes
		bytes := npages * pageBytes
		perLayer := make([][]CopyDesc, reps)  // layer l's buffer at l·npages·rowBytes, slot stride rowBytes
		pageMajor := make([][]CopyDesc, reps) // slot stride pageBytes, the page's rows back to back
		for i := range reps {
			for slot, p := range rnd.Perm(mirrorBytes / pageBytes)[:npages] {
				src := mirror.Ptr() + DevPtr(p*pageBytes)
				pageMajor[i] = append(pageMajor[i], CopyDesc{Src: src, Dst: reserve + DevPtr(slot*pageBytes), Len: uint64(pageBytes)})
				for l := range lay.layers {
					perLayer[i] = append(perLayer[i], CopyDesc{Src: src + DevPtr(l*lay.rowBytes),
						Dst: reserve + DevPtr(l*npages*lay.rowBytes+slot*lay.rowBytes), Len: uint64(lay.rowBytes)})
				}
			}
		}
		same := tm.median(reps, func(i int) error { return s.Copy(reserve, mirror.Ptr()+DevPtr(rnd.IntN(48)<<26), bytes) })
		add(lay.name, "contiguous same bytes", bytes, 1, same)
		for _, m := range []struct {
			name string
			sets [][]CopyDesc
			fn   func([]CopyDesc) error
		}{
			{"page-major, Recall", pageMajor, s.Recall}, {"page-major, gather kernel", pageMajor, s.Gather},
			{"per-layer, Recall", perLayer, s.Recall}, {"per-layer, gather kernel", perLayer, s.Gather},
		} {
			if lay.layers == 1 && m.name[:9] == "per-layer" {
				continue // one layer: the two layouts are the same copies
			}
			ms := tm.median(reps, func(i int) error { return m.fn(m.sets[i]) })
			check(m.sets[reps-1])
			add(lay.name, m.name, bytes, len(m.sets[0]), ms)
		}
		if err := s.CopyBatch(pageMajor[0]); err == nil {
			ms := tm.median(reps, func(i int) error { return s.CopyBatch(pageMajor[i]) })
			check(pageMajor[reps-1])
			add(lay.name, "page-major, cuMemcpyBatchAsync", bytes, npages, ms)
			for _, k := range []int{2, 4} {
				ms := tm.median(reps, func(i int) error { return s.CopyBatchSpread(auxs[:k-1], evs, pageMajor[i]) })
				check(pageMajor[reps-1])
				add(lay.name, fmt.Sprintf("page-major, batch on %d streams", k), bytes, npages, ms)
			}
			if pageBytes%4096 != 0 {
				// Mirror pages on 4 KiB boundaries (a mirror could place them so).
				stride := (pageBytes + 4095) &^ 4095
				al := make([][]CopyDesc, reps)
				for i := range reps {
					for slot, p := range rnd.Perm(mirrorBytes / stride)[:npages] {
						al[i] = append(al[i], CopyDesc{Src: mirror.Ptr() + DevPtr(p*stride), Dst: reserve + DevPtr(slot*pageBytes), Len: uint64(pageBytes)})
					}
				}
				ms := tm.median(reps, func(i int) error { return s.Recall(al[i]) })
				check(al[reps-1])
				add(lay.name, "page-major, 4 KiB-aligned mirror pages, Recall", bytes, npages, ms)
			}
		}
	}
	fmt.Printf("\nRecall into a page-major reserve, %s (64 MiB per recall; GB/s, × contiguous of the same bytes in this run)\n", d.Name())
	var base float64
	for _, r := range rows {
		if r.Method == "contiguous same bytes" || r.Method == "cuMemcpyAsync" {
			base = r.GBps
		}
		fmt.Printf("%-24s %-34s %6d rows %8.3f ms %6.1f GB/s  × %.3f\n", r.Case, r.Method, r.Rows, r.MedMS, r.GBps, r.GBps/base)
	}
	if p := os.Getenv("FLASHMEM_BENCH_OUT"); p != "" {
		b, _ := json.MarshalIndent(map[string]any{"device": d.Name(), "recall": rows}, "", " ")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Error(err)
		}
	}
}
