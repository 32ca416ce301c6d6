//go:build cuda

package cuda

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
)

// recallRow is one measured copy pattern.
type recallRow struct {
	Case   string  `json:"case"`
	Method string  `json:"method"`
	Bytes  int     `json:"bytes"`
	Rows   int     `json:"rows"`
	Piece  int     `json:"piece,omitempty"`
	MedMS  float64 `json:"median_ms"`
	GBps   float64 `json:"gbps"`
}

type timer struct {
	t          testing.TB
	s          *Stream
	start, end *Event
}

// newTimer makes a stream and a pair of timing events on d, closed when the test ends.
func newTimer(t *testing.T, d *Device) *timer {
	t.Helper()
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	tm := &timer{t: t, s: s}
	for _, e := range []**Event{&tm.start, &tm.end} {
		if *e, err = d.NewEvent(true); err != nil {
			t.Fatal(err)
		}
		ev := *e
		t.Cleanup(func() { ev.Close() })
	}
	return tm
}

// median times fn (which enqueues work on the stream) reps times after warm-up runs, with
// device events around it, and returns the median in milliseconds.
func (tm *timer) median(reps int, fn func(rep int) error) float64 {
	tm.t.Helper()
	var ms []float64
	for i := -3; i < reps; i++ {
		if err := tm.start.Record(tm.s); err != nil {
			tm.t.Fatal(err)
		}
		if err := fn(max(i, 0)); err != nil {
			tm.t.Fatal(err)
		}
		if err := tm.end.Record(tm.s); err != nil {
			tm.t.Fatal(err)
		}
		if err := tm.end.Wait(); err != nil {
			tm.t.Fatal(err)
		}
		x, err := tm.end.Elapsed(tm.start)
		if err != nil {
			tm.t.Fatal(err)
		}
		if i >= 0 {
			ms = append(ms, x)
		}
	}
	slices.Sort(ms)
	return ms[len(ms)/2]
}

// splitShares are the copy-engine shares TestRecallBench times RecallSplit at.
var splitShares = []float64{0.1, 0.2, 0.3, 0.4}

// TestRecallBench measures scattered recall from a 4 GiB pinned mirror into a 64 MiB
// device reserve: the gather kernel, one cuMemcpyAsync per row, and one contiguous copy
// of the same bytes; plus the DeepSeek-V4 layout (a page = 21 layer rows of 37,440 B into
// 21 layer buffers). Fresh random pages every repetition; the result of the last gather of
// each case is checked byte for byte. Runs only with FLASHMEM_BENCH=1; JSON goes to
// $FLASHMEM_BENCH_OUT when set.
func TestRecallBench(t *testing.T) {
	if os.Getenv("FLASHMEM_BENCH") != "1" {
		t.Skip("set FLASHMEM_BENCH=1")
	}
	d := devices(t)[0]
	tm := newTimer(t, d)
	s := tm.s
	const mirrorBytes, total, reps = recallMirrorBytes, recallTotal, 20
	mirror, reserve := recallBenchSetup(t, d, s, 99)
	rnd := rand.New(rand.NewPCG(1, 1))
	var rows []recallRow
	add := func(c, m string, bytes, nrows, piece int, ms float64) {
		rows = append(rows, recallRow{c, m, bytes, nrows, piece, ms, float64(bytes) / ms / 1e6})
	}
	check := func(descs []CopyDesc) {
		t.Helper()
		// The first and the last rows: RecallSplit sends the leading ones to the copy
		// engines and the rest to the kernel.
		sample := descs
		if len(descs) > 64 {
			sample = append(slices.Clip(descs[:32]), descs[len(descs)-32:]...)
		}
		checkRecalled(t, d, mirror, sample)
	}

	// batch times cuMemcpyBatchAsync (copy engines) on the same lists, where the driver has it.
	batch := func(name string, bytes int, sets [][]CopyDesc) {
		if err := s.CopyBatch(sets[0]); errors.Is(err, ErrUnsupported) {
			t.Logf("cuMemcpyBatchAsync: %v", err)
			return
		} else if err != nil {
			t.Fatal(err)
		}
		ms := tm.median(reps, func(i int) error { return s.CopyBatch(sets[i]) })
		check(sets[reps-1])
		add(name, "cuMemcpyBatchAsync", bytes, len(sets[0]), 0, ms)
	}

	// split times copy engines and gather kernel together (RecallSplit) at several shares of
	// the bytes for the engines.
	aux, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer aux.Close()
	join, err := d.NewEvent(false)
	if err != nil {
		t.Fatal(err)
	}
	defer join.Close()
	split := func(name string, bytes, piece int, sets [][]CopyDesc) {
		for _, share := range splitShares {
			ms := tm.median(reps, func(i int) error { return s.RecallSplit(aux, join, sets[i], share) })
			check(sets[reps-1])
			add(name, fmt.Sprintf("split, engines %.0f %%", 100*share), bytes, len(sets[0]), piece, ms)
		}
	}

	// spread times CopyBatchSpread over 2 and 4 streams (copy engines in parallel).
	auxs, evs := benchStreams(t, d, 3, 4)
	spread := func(name string, bytes int, sets [][]CopyDesc) {
		for _, k := range []int{2, 4} {
			if err := s.CopyBatchSpread(auxs[:k-1], evs, sets[0]); errors.Is(err, ErrUnsupported) {
				return
			} else if err != nil {
				t.Fatal(err)
			}
			ms := tm.median(reps, func(i int) error { return s.CopyBatchSpread(auxs[:k-1], evs, sets[i]) })
			check(sets[reps-1])
			add(name, fmt.Sprintf("cuMemcpyBatchAsync on %d streams", k), bytes, len(sets[0]), 0, ms)
		}
	}

	contig := tm.median(reps, func(int) error { return s.Copy(reserve, mirror.Ptr()+DevPtr(rnd.IntN(48)<<26), total) })
	add("contiguous 64 MiB", "cuMemcpyAsync", total, 1, 0, contig)

	for _, page := range []int{64 << 10, 256 << 10, 1 << 20} {
		n := total / page
		sets := make([][]CopyDesc, reps)
		for i := range sets {
			for j, p := range rnd.Perm(mirrorBytes / page)[:n] {
				sets[i] = append(sets[i], CopyDesc{Src: mirror.Ptr() + DevPtr(p*page), Dst: reserve + DevPtr(j*page), Len: uint64(page)})
			}
		}
		name := fmt.Sprintf("%d KiB pages", page>>10)
		ms := tm.median(reps, func(i int) error { return s.Gather(sets[i]) })
		check(sets[reps-1])
		add(name, "gather kernel", total, n, gatherPiece, ms)
		batch(name, total, sets)
		split(name, total, gatherPiece, sets)
		spread(name, total, sets)
		ms = tm.median(reps, func(i int) error {
			for _, c := range sets[i] {
				if err := s.Copy(c.Dst, c.Src, int(c.Len)); err != nil {
					return err
				}
			}
			return nil
		})
		add(name, "cuMemcpyAsync per page", total, n, 0, ms)
		for _, piece := range []int{32 << 10, 64 << 10, 256 << 10} {
			old := gatherPiece
			gatherPiece = piece
			ms := tm.median(reps, func(i int) error { return s.Gather(sets[i]) })
			gatherPiece = old
			add(name, "gather kernel (piece sweep)", total, n, piece, ms)
		}
	}

	// DeepSeek-V4: 21 layer buffers [slots][37440]; a mirror page is the 21 rows back to back.
	const layers, rowBytes = 21, 37440
	const pageBytes = layers * rowBytes
	npages := total / pageBytes
	var layerBufs []DevPtr
	for l := 0; l < layers; l++ {
		p, err := d.Alloc(npages * rowBytes)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Free(p)
		layerBufs = append(layerBufs, p)
	}
	sets := make([][]CopyDesc, reps)
	for i := range sets {
		for slot, p := range rnd.Perm(mirrorBytes / pageBytes)[:npages] {
			for l := 0; l < layers; l++ {
				sets[i] = append(sets[i], CopyDesc{
					Src: mirror.Ptr() + DevPtr(p*pageBytes+l*rowBytes),
					Dst: layerBufs[l] + DevPtr(slot*rowBytes), Len: rowBytes})
			}
		}
	}
	dsBytes := npages * pageBytes
	ms := tm.median(reps, func(i int) error { return s.Gather(sets[i]) })
	check(sets[reps-1])
	add("DeepSeek-V4 21x37440 B", "gather kernel", dsBytes, npages*layers, gatherPiece, ms)
	batch("DeepSeek-V4 21x37440 B", dsBytes, sets)
	split("DeepSeek-V4 21x37440 B", dsBytes, gatherPiece, sets)
	spread("DeepSeek-V4 21x37440 B", dsBytes, sets)
	// Two stages: whole pages (contiguous in the mirror) by the copy engines into a device
	// staging area, then the gather kernel scatters the rows device-to-device into the
	// layer buffers. The check reads the layer buffers.
	staging, err := d.Alloc(dsBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free(staging)
	pageSets := make([][]CopyDesc, reps)
	rowSets := make([][]CopyDesc, reps)
	for i := range sets {
		for slot := range npages {
			first := sets[i][slot*layers]
			pageSets[i] = append(pageSets[i], CopyDesc{Src: first.Src, Dst: staging + DevPtr(slot*pageBytes), Len: pageBytes})
			for l := 0; l < layers; l++ {
				rowSets[i] = append(rowSets[i], CopyDesc{Src: staging + DevPtr(slot*pageBytes+l*rowBytes), Dst: sets[i][slot*layers+l].Dst, Len: rowBytes})
			}
		}
	}
	for _, k := range []int{1, 2, 4} {
		ms = tm.median(reps, func(i int) error {
			if err := s.CopyBatchSpread(auxs[:k-1], evs, pageSets[i]); err != nil {
				return err
			}
			return s.Gather(rowSets[i])
		})
		check(sets[reps-1])
		add("DeepSeek-V4 21x37440 B", fmt.Sprintf("pages by %d engine stream(s), rows by kernel on device", k), dsBytes, npages*layers, 0, ms)
	}
	// The same two stages pipelined through a small staging area (RecallStaged): the engines
	// move the next group of pages while the kernel scatters the last one.
	staged := make([][]StagedPage, reps)
	for i := range sets {
		for slot := range npages {
			p := StagedPage{Src: sets[i][slot*layers].Src, Len: pageBytes}
			for l := 0; l < layers; l++ {
				p.Rows = append(p.Rows, CopyDesc{Src: DevPtr(l * rowBytes), Dst: sets[i][slot*layers+l].Dst, Len: rowBytes})
			}
			staged[i] = append(staged[i], p)
		}
	}
	for _, sb := range []int{8 << 20, 16 << 20, 32 << 20} {
		ms = tm.median(reps, func(i int) error { return s.RecallStaged(auxs[0], evs, staging, sb, staged[i]) })
		check(sets[reps-1])
		add("DeepSeek-V4 21x37440 B", fmt.Sprintf("pipelined two stages, %d MiB staging", sb>>20), dsBytes, npages*layers, 0, ms)
	}
	ms = tm.median(reps, func(i int) error {
		for _, c := range sets[i] {
			if err := s.Copy(c.Dst, c.Src, int(c.Len)); err != nil {
				return err
			}
		}
		return nil
	})
	add("DeepSeek-V4 21x37440 B", "cuMemcpyAsync per row", dsBytes, npages*layers, 0, ms)
	ms = tm.median(reps, func(int) error { return s.Copy(reserve, mirror.Ptr(), dsBytes) })
	add("DeepSeek-V4 21x37440 B", "contiguous same bytes", dsBytes, 1, 0, ms)

	// The commit direction: reserve rows scattered back into the pinned mirror.
	wsets := make([][]CopyDesc, reps)
	for i := range wsets {
		for j, p := range rnd.Perm(mirrorBytes / (256 << 10))[:total/(256<<10)] {
			wsets[i] = append(wsets[i], CopyDesc{Src: reserve + DevPtr(j*(256<<10)), Dst: mirror.Ptr() + DevPtr(p*(256<<10)), Len: 256 << 10})
		}
	}
	ms = tm.median(reps, func(i int) error { return s.Gather(wsets[i]) })
	add("256 KiB pages device->host", "gather kernel", total, len(wsets[0]), gatherPiece, ms)
	ms = tm.median(reps, func(int) error { return s.Copy(mirror.Ptr(), reserve, total) })
	add("contiguous 64 MiB device->host", "cuMemcpyAsync", total, 1, 0, ms)

	fmt.Printf("\nRecall on %s (median of %d, GB/s = 1e9 B/s)\n", d.Name(), reps)
	fmt.Printf("%-32s %-52s %7s %9s %8s\n", "case", "method", "piece", "ms", "GB/s")
	for _, r := range rows {
		fmt.Printf("%-32s %-52s %7d %9.3f %8.1f\n", r.Case, r.Method, r.Piece>>10, r.MedMS, r.GBps)
	}
	if p := os.Getenv("FLASHMEM_BENCH_OUT"); p != "" {
		b, _ := json.MarshalIndent(map[string]any{"device": d.Name(), "recall": rows}, "", " ")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Error(err)
		}
	}
}

// TestGatherSweep times the gather kernel over launch shapes (threads, blocks per SM,
// loads in flight, piece size) for every recall case, twice in rotated order to expose
// noise, and prints per case the best shapes and the shape with the best worst-case ratio
// to the contiguous copy-engine rate measured alongside. Runs only with FLASHMEM_SWEEP=1.
func TestGatherSweep(t *testing.T) {
	if os.Getenv("FLASHMEM_SWEEP") != "1" {
		t.Skip("set FLASHMEM_SWEEP=1")
	}
	d := devices(t)[0]
	tm := newTimer(t, d)
	s := tm.s
	const mirrorBytes, total, reps = 4 << 30, 64 << 20, 15
	mirror, err := d.AllocHost(mirrorBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer mirror.Free()
	mb := mirror.Bytes()
	fill(mb[:total], 98)
	for off := total; off < len(mb); off += total {
		copy(mb[off:], mb[:total])
	}
	dst, err := d.Alloc(total)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free(dst)
	rnd := rand.New(rand.NewPCG(3, 3))
	type kase struct {
		name string
		sets [][]CopyDesc
	}
	pages := func(page int) [][]CopyDesc {
		sets := make([][]CopyDesc, reps)
		for i := range sets {
			for j, p := range rnd.Perm(mirrorBytes / page)[:total/page] {
				sets[i] = append(sets[i], CopyDesc{Src: mirror.Ptr() + DevPtr(p*page), Dst: dst + DevPtr(j*page), Len: uint64(page)})
			}
		}
		return sets
	}
	const rowBytes, layers = 37440, 21
	npages := total / (rowBytes * layers)
	ds := make([][]CopyDesc, reps)
	for i := range ds {
		for slot, p := range rnd.Perm(mirrorBytes / (rowBytes * layers))[:npages] {
			for l := 0; l < layers; l++ {
				ds[i] = append(ds[i], CopyDesc{Src: mirror.Ptr() + DevPtr((p*layers+l)*rowBytes),
					Dst: dst + DevPtr((l*npages+slot)*rowBytes), Len: rowBytes})
			}
		}
	}
	contigK := make([][]CopyDesc, reps)
	for i := range contigK {
		contigK[i] = []CopyDesc{{Src: mirror.Ptr() + DevPtr(rnd.IntN(48)<<26), Dst: dst, Len: total}}
	}
	cases := []kase{{"64K", pages(64 << 10)}, {"256K", pages(256 << 10)}, {"1M", pages(1 << 20)}, {"DS", ds}, {"contig-kernel", contigK}}
	type shape struct {
		kind                 string
		threads, bpsm, piece int
		chunk, stages        int
	}
	var shapes []shape
	for _, kind := range []string{"simt4", "p256"} {
		for _, bpsm := range []int{4, 8} {
			for _, pc := range []int{64 << 10, 128 << 10} {
				shapes = append(shapes, shape{kind, 256, bpsm, pc, 0, 0})
			}
		}
	}
	if maj, _ := d.ComputeCapability(); maj >= 9 {
		for _, bpsm := range []int{2, 4, 8} {
			for _, cs := range [][2]int{{16 << 10, 4}, {32 << 10, 4}, {16 << 10, 8}} {
				for _, pc := range []int{64 << 10, 256 << 10} {
					shapes = append(shapes, shape{"bulk", 32, bpsm, pc, cs[0], cs[1]}) // one warp per block
				}
			}
		}
	}
	defer func(k string, a, b, c, e, f int) {
		gatherKind, gatherThreads, gatherBlocksPerSM, gatherPiece, gatherTMAChunk, gatherTMAStages = k, a, b, c, e, f
	}(gatherKind, gatherThreads, gatherBlocksPerSM, gatherPiece, gatherTMAChunk, gatherTMAStages)
	gbps := map[shape]map[string][]float64{}
	var ce []float64
	for round := 0; round < 2; round++ {
		for k := range shapes {
			sh := shapes[(k+round*len(shapes)/2)%len(shapes)]
			if k%8 == 0 {
				ms := tm.median(reps, func(int) error { return s.Copy(dst, mirror.Ptr()+DevPtr(rnd.IntN(48)<<26), total) })
				ce = append(ce, float64(total)/ms/1e6)
			}
			gatherKind, gatherThreads, gatherBlocksPerSM, gatherPiece = sh.kind, sh.threads, sh.bpsm, sh.piece
			if sh.kind == "bulk" {
				gatherTMAChunk, gatherTMAStages = sh.chunk, sh.stages
			}
			if gbps[sh] == nil {
				gbps[sh] = map[string][]float64{}
			}
			for _, c := range cases {
				bytes := 0
				for _, x := range c.sets[0] {
					bytes += int(x.Len)
				}
				ms := tm.median(reps, func(i int) error { return s.Gather(c.sets[i]) })
				gbps[sh][c.name] = append(gbps[sh][c.name], float64(bytes)/ms/1e6)
				if round == 0 {
					// Every shape must copy correctly, or its speed means nothing.
					for _, x := range c.sets[reps-1][:min(8, len(c.sets[reps-1]))] {
						got := make([]byte, x.Len)
						if err := d.CopyDtoH(got, x.Dst); err != nil {
							t.Fatal(err)
						}
						so := int(x.Src - mirror.Ptr())
						if i := firstDiff(got, mb[so:so+int(x.Len)]); i >= 0 {
							t.Fatalf("%+v %s: byte %d differs", sh, c.name, i)
						}
					}
				}
			}
		}
	}
	slices.Sort(ce)
	ceMed := ce[len(ce)/2]
	fmt.Printf("\nGather sweep on %s: copy-engine contiguous %.1f GB/s (min %.1f, max %.1f over %d)\n",
		d.Name(), ceMed, ce[0], ce[len(ce)-1], len(ce))
	mean := func(v []float64) float64 { return (v[0] + v[1]) / 2 }
	for _, c := range cases {
		sorted := slices.Clone(shapes)
		slices.SortFunc(sorted, func(a, b shape) int {
			x, y := mean(gbps[a][c.name]), mean(gbps[b][c.name])
			switch {
			case x > y:
				return -1
			case x < y:
				return 1
			}
			return 0
		})
		fmt.Printf("%-14s", c.name)
		for _, sh := range sorted[:4] {
			v := gbps[sh][c.name]
			fmt.Printf("  %s t%d b%d p%dK c%dK s%d %.1f/%.1f", sh.kind, sh.threads, sh.bpsm, sh.piece>>10, sh.chunk>>10, sh.stages, v[0], v[1])
		}
		fmt.Println()
	}
	best, bestMin := shapes[0], 0.0
	for _, sh := range shapes {
		worst := 1e9
		for _, c := range cases[:4] {
			worst = min(worst, min(gbps[sh][c.name][0], gbps[sh][c.name][1]))
		}
		if worst > bestMin {
			best, bestMin = sh, worst
		}
	}
	fmt.Printf("best worst-case shape: %+v: %.1f GB/s = %.2f x contiguous\n", best, bestMin, bestMin/ceMed)
	for _, c := range cases {
		v := gbps[best][c.name]
		fmt.Printf("  %-14s %.1f / %.1f GB/s\n", c.name, v[0], v[1])
	}
}

// recallMirrorBytes and recallTotal size the recall benchmarks: a 4 GiB pinned
// mirror of 64 MiB copies that differ, recalled 64 MiB at a time.
const recallMirrorBytes, recallTotal = 4 << 30, 64 << 20

// recallBenchSetup allocates the recall benchmarks' pinned mirror (filled from
// seed, each 64 MiB copy different) and a 64 MiB device reserve, both freed at
// the end of the test, and reads the whole mirror once from the device. On the
// GPU machine (a Firecracker VM) the first DMA touch of a host page was seen
// to cost far more than later ones (2026-11-27: the first method timed on
// fresh random pages read 26-30 GB/s where the same launch shape on the same
// pages read 48-49 right after), which would favour whichever method runs
// second.
func recallBenchSetup(t *testing.T, d *Device, s *Stream, seed uint64) (*HostBuffer, DevPtr) {
	t.Helper()
	mirror, err := d.AllocHost(recallMirrorBytes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mirror.Free() })
	mb := mirror.Bytes()
	fill(mb[:recallTotal], seed)
	for off := recallTotal; off < len(mb); off += recallTotal {
		copy(mb[off:], mb[:recallTotal])
		mb[off] ^= byte(off >> 26) // each 64 MiB copy differs
	}
	reserve, err := d.Alloc(recallTotal)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Free(reserve) })
	for off := 0; off < recallMirrorBytes; off += recallTotal {
		if err := s.Copy(reserve, mirror.Ptr()+DevPtr(off), recallTotal); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	return mirror, reserve
}

// benchStreams makes the extra streams and events the multi-stream recall benchmarks
// spread copies over, all closed at the end of the test.
func benchStreams(t *testing.T, d *Device, streams, events int) ([]*Stream, []*Event) {
	t.Helper()
	ss := make([]*Stream, 0, streams)
	for range streams {
		a, err := d.NewStream()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		ss = append(ss, a)
	}
	es := make([]*Event, 0, events)
	for range events {
		e, err := d.NewEvent(false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		es = append(es, e)
	}
	return ss, es
}

// checkRecalled reads back each row of sample from the device and compares it with the
// mirror bytes it was recalled from: a method's speed means nothing unless it copied.
func checkRecalled(t *testing.T, d *Device, mirror *HostBuffer, sample []CopyDesc) {
	t.Helper()
	mb := mirror.Bytes()
	for _, c := range sample {
		got := make([]byte, c.Len)
		if err := d.CopyDtoH(got, c.Dst); err != nil {
			t.Fatal(err)
		}
		so := int(c.Src - mirror.Ptr())
		if i := firstDiff(got, mb[so:so+int(c.Len)]); i >= 0 {
			t.Fatalf("recalled row differs at byte %d", i)
		}
	}
}
