//go:build cuda

package cuda

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
)

// recallOver enqueues descs on len(ces) copy-engine streams (one cuMemcpyBatchAsync each,
// about equal bytes) for the leading ceShare of the bytes and the rest as one gather launch
// on s; every part is ordered after work already on s and s waits for all of them. evs needs
// len(ces)+1 events.
func recallOver(s *Stream, ces []*Stream, evs []*Event, descs []CopyDesc, ceShare float64) error {
	k := len(descs)
	if ceShare < 1 {
		k = splitAt(descs, ceShare)
	}
	ce, rest := descs[:k], descs[k:]
	if len(ce) > 0 {
		if err := evs[0].Record(s); err != nil {
			return err
		}
		n := min(len(ces), len(ce))
		for i := range n {
			j := len(ce)
			if i < n-1 {
				j = splitAt(ce, 1/float64(n-i))
			}
			if err := ces[i].WaitEvent(evs[0]); err != nil {
				return err
			}
			if err := ces[i].CopyBatch(ce[:j]); err != nil {
				return err
			}
			if err := evs[i+1].Record(ces[i]); err != nil {
				return err
			}
			ce = ce[j:]
		}
		defer func() {
			for i := range n {
				_ = s.WaitEvent(evs[i+1])
			}
		}()
	}
	if len(rest) > 0 {
		return s.Gather(rest)
	}
	return nil
}

// TestRecallSweep (FLASHMEM_SWEEP=1) times ways to move a scattered page-major recall
// (pages at random from a 4 GiB pinned mirror, 64 MiB per recall, median of 20) against the
// contiguous copy of the same bytes, timed before and after in the same run: the copy
// engines with each source-access order and flag of cuMemcpyBatchAsync, spread over 1-8
// streams, copy engines and the gather kernel at once in several shares, and mirror pages
// on 64 KiB / 2 MiB boundaries. JSON to $FLASHMEM_BENCH_OUT.
func TestRecallSweep(t *testing.T) {
	if os.Getenv("FLASHMEM_SWEEP") != "1" {
		t.Skip("set FLASHMEM_SWEEP=1")
	}
	d := devices(t)[0]
	tm := newTimer(t, d)
	s := tm.s
	const mirrorBytes, total, reps = recallMirrorBytes, recallTotal, 20
	mirror, reserve := recallBenchSetup(t, d, s, 11)
	rnd := rand.New(rand.NewPCG(5, 5))
	ces, evs := benchStreams(t, d, 8, 9)
	type row struct {
		Case, Method string
		MedMS, GBps  float64
		X            float64
	}
	var rows []row
	check := func(descs []CopyDesc) {
		t.Helper()
		checkRecalled(t, d, mirror, []CopyDesc{descs[0], descs[len(descs)/2], descs[len(descs)-1]})
	}
	defer func() { batchSrcOrder, batchFlags = 1, 0 }()
	for _, lay := range []struct {
		name  string
		bytes int
	}{{"DeepSeek-V4 786,240 B", 21 * 37440}, {"64 KiB", 64 << 10}, {"256 KiB", 256 << 10}} {
		pageBytes := lay.bytes
		npages := total / pageBytes
		bytes := npages * pageBytes
		sets := func(stride int) [][]CopyDesc {
			out := make([][]CopyDesc, reps)
			for i := range reps {
				for slot, p := range rnd.Perm(mirrorBytes / stride)[:npages] {
					out[i] = append(out[i], CopyDesc{Src: mirror.Ptr() + DevPtr(p*stride), Dst: reserve + DevPtr(slot*pageBytes), Len: uint64(pageBytes)})
				}
			}
			return out
		}
		var base float64
		contig := func(label string) {
			ms := tm.median(reps, func(int) error { return s.Copy(reserve, mirror.Ptr()+DevPtr(rnd.IntN(48)<<26), bytes) })
			g := float64(bytes) / ms / 1e6
			if base == 0 {
				base = g
			}
			rows = append(rows, row{lay.name, label, ms, g, g / base})
		}
		timeIt := func(method string, set [][]CopyDesc, fn func([]CopyDesc) error) {
			ms := tm.median(reps, func(i int) error { return fn(set[i]) })
			check(set[reps-1])
			g := float64(bytes) / ms / 1e6
			rows = append(rows, row{lay.name, method, ms, g, g / base})
		}
		contig("contiguous (before)")
		plain := sets(pageBytes)
		timeIt("Recall (daemon path)", plain, s.Recall)
		timeIt("gather kernel", plain, s.Gather)
		for _, at := range []struct{ order, flags int }{{1, 0}, {3, 0}, {1, 1}, {3, 1}} {
			batchSrcOrder, batchFlags = at.order, at.flags
			for _, n := range []int{1, 2, 4, 8} {
				timeIt(fmt.Sprintf("CE order %d flags %d, %d streams", at.order, at.flags, n), plain,
					func(ds []CopyDesc) error { return recallOver(s, ces[:n], evs, ds, 1) })
			}
		}
		batchSrcOrder, batchFlags = 3, 0
		for _, n := range []int{2, 4} {
			for _, share := range []float64{0.6, 0.75, 0.85, 0.93} {
				timeIt(fmt.Sprintf("CE %d streams %.0f %% + gather", n, 100*share), plain,
					func(ds []CopyDesc) error { return recallOver(s, ces[:n], evs, ds, share) })
			}
		}
		for _, align := range []int{4 << 10, 64 << 10, 2 << 20} {
			stride := (pageBytes + align - 1) / align * align
			if stride == pageBytes && align > 4<<10 {
				continue
			}
			al := sets(stride)
			for _, n := range []int{1, 4} {
				timeIt(fmt.Sprintf("mirror pages on %d KiB, CE order 3, %d streams", align>>10, n), al,
					func(ds []CopyDesc) error { return recallOver(s, ces[:n], evs, ds, 1) })
			}
		}
		batchSrcOrder, batchFlags = 1, 0
		contig("contiguous (after)")
	}
	fmt.Printf("\nRecall sweep, %s (64 MiB per recall; × contiguous-before of the same layout)\n", d.Name())
	for _, r := range rows {
		fmt.Printf("%-22s %-48s %8.3f ms %6.1f GB/s  × %.3f\n", r.Case, r.Method, r.MedMS, r.GBps, r.X)
	}
	if p := os.Getenv("FLASHMEM_BENCH_OUT"); p != "" {
		b, _ := json.MarshalIndent(map[string]any{"device": d.Name(), "rows": rows}, "", " ")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Error(err)
		}
	}
}

// TestRecallWindow (FLASHMEM_SWEEP=1) asks whether scattered recall pays per piece or per
// distance: the same recalls (64 MiB of pages, median of 20, × the contiguous copy of the
// same bytes timed just before) with the pages drawn from mirror windows of 4 GiB down to
// 128 MiB (one 512K-token session's DeepSeek-V4 pages span 1.5 GiB of mirror, its 64 KiB
// pages 128 MiB), through Recall, the gather kernel and 16 copy-engine streams, the 4 GiB
// case three times to show the run's spread.
func TestRecallWindow(t *testing.T) {
	if os.Getenv("FLASHMEM_SWEEP") != "1" {
		t.Skip("set FLASHMEM_SWEEP=1")
	}
	d := devices(t)[0]
	tm := newTimer(t, d)
	s := tm.s
	const mirrorBytes, total, reps = recallMirrorBytes, recallTotal, 20
	mirror, reserve := recallBenchSetup(t, d, s, 13)
	mb := mirror.Bytes()
	rnd := rand.New(rand.NewPCG(9, 9))
	var ces []*Stream
	var evs []*Event
	for i := range 17 {
		if i < 16 {
			a, err := d.NewStream()
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			ces = append(ces, a)
		}
		e, err := d.NewEvent(false)
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		evs = append(evs, e)
	}
	fmt.Printf("\nRecall by mirror window, %s (64 MiB per recall; × contiguous of the same bytes just before)\n", d.Name())
	for _, lay := range []struct {
		name          string
		bytes, stride int
	}{{"DeepSeek-V4 786,240 B (4 KiB-aligned)", 21 * 37440, 192 * 4096}, {"64 KiB", 64 << 10, 64 << 10}, {"256 KiB", 256 << 10, 256 << 10}} {
		npages := total / lay.bytes
		bytes := npages * lay.bytes
		for _, win := range []int{4 << 30, 4 << 30, 4 << 30, 1 << 30, 256 << 20, 128 << 20} {
			if win/lay.stride < npages*2 {
				continue
			}
			base := rnd.IntN(mirrorBytes/win) * win
			set := make([][]CopyDesc, reps)
			for i := range reps {
				for slot, p := range rnd.Perm(win / lay.stride)[:npages] {
					set[i] = append(set[i], CopyDesc{Src: mirror.Ptr() + DevPtr(base+p*lay.stride), Dst: reserve + DevPtr(slot*lay.bytes), Len: uint64(lay.bytes)})
				}
			}
			c := tm.median(reps, func(int) error { return s.Copy(reserve, mirror.Ptr()+DevPtr(rnd.IntN(48)<<26), bytes) })
			for _, m := range []struct {
				name string
				fn   func([]CopyDesc) error
			}{
				{"Recall", s.Recall}, {"gather kernel", s.Gather},
				{"CE 16 streams", func(ds []CopyDesc) error { return recallOver(s, ces, evs, ds, 1) }},
			} {
				ms := tm.median(reps, func(i int) error { return m.fn(set[i]) })
				last := set[reps-1][len(set[reps-1])-1]
				got := make([]byte, last.Len)
				if err := d.CopyDtoH(got, last.Dst); err != nil {
					t.Fatal(err)
				}
				so := int(last.Src - mirror.Ptr())
				if i := firstDiff(got, mb[so:so+int(last.Len)]); i >= 0 {
					t.Fatalf("recalled row differs at byte %d", i)
				}
				fmt.Printf("%-38s window %5d MiB  %-14s %8.3f ms %6.1f GB/s  × %.3f\n", lay.name, win>>20, m.name, ms, float64(bytes)/ms/1e6, c/ms)
			}
		}
	}
}
