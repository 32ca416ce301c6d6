//go:build cuda

package cuda

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
)

// TestRecallBounce (FLASHMEM_SWEEP=1) times a CPU bounce for small scattered pages against
// the daemon's Recall and one contiguous copy of the same bytes, timed by CUDA events from
// before the CPU starts to the stream's completion (median of 20): CPU threads gather the pages from the
// pinned mirror into a contiguous pinned staging buffer chunk by chunk, each chunk goes to
// device staging in one contiguous copy-engine copy as soon as it is packed, and one gather
// launch on the device scatters the pages into their reserve slots at HBM speed.
func TestRecallBounce(t *testing.T) {
	if os.Getenv("FLASHMEM_SWEEP") != "1" {
		t.Skip("set FLASHMEM_SWEEP=1")
	}
	d := devices(t)[0]
	tm := newTimer(t, d)
	s := tm.s
	const mirrorBytes, total, reps = recallMirrorBytes, recallTotal, 20
	mirror, reserve := recallBenchSetup(t, d, s, 17)
	mb := mirror.Bytes()
	hst, err := d.AllocHost(total)
	if err != nil {
		t.Fatal(err)
	}
	defer hst.Free()
	dst, err := d.Alloc(total)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free(dst)
	hb := hst.Bytes()
	rnd := rand.New(rand.NewPCG(6, 6))
	// CUDA events as in every recall benchmark: the start is recorded on the idle stream
	// before the CPU packs anything, so the GPU-side interval includes the packing the
	// first copy waits for.
	wall := func(fn func(int) error) float64 { return tm.median(reps, fn) }
	fmt.Printf("\nRecall through a CPU bounce, %s (64 MiB per recall, CUDA events from before the CPU packs; × contiguous of the same bytes)\n", d.Name())
	for _, pageBytes := range []int{64 << 10, 256 << 10} {
		npages := total / pageBytes
		bytes := npages * pageBytes
		type set struct {
			src   []int // mirror offsets
			descs []CopyDesc
		}
		sets := make([]set, reps)
		for i := range reps {
			slots := rnd.Perm(npages)
			for k, p := range rnd.Perm(mirrorBytes / pageBytes)[:npages] {
				sets[i].src = append(sets[i].src, p*pageBytes)
				sets[i].descs = append(sets[i].descs, CopyDesc{Src: mirror.Ptr() + DevPtr(p*pageBytes), Dst: reserve + DevPtr(slots[k]*pageBytes), Len: uint64(pageBytes)})
			}
		}
		contig := wall(func(int) error { return s.Copy(reserve, mirror.Ptr()+DevPtr(rnd.IntN(48)<<26), bytes) })
		fmt.Printf("%3d KiB  contiguous copy            %8.3f ms %6.1f GB/s\n", pageBytes>>10, contig, float64(bytes)/contig/1e6)
		rec := wall(func(i int) error { return s.Recall(sets[i].descs) })
		fmt.Printf("%3d KiB  Recall                     %8.3f ms %6.1f GB/s  × %.3f\n", pageBytes>>10, rec, float64(bytes)/rec/1e6, contig/rec)
		for _, chunk := range []int{1 << 20, 2 << 20, 4 << 20} {
			for _, threads := range []int{4, 8, 16} {
				per := chunk / pageBytes
				bounce := func(i int) error {
					st := sets[i]
					scatter := make([]CopyDesc, npages)
					for c := 0; c*per < npages; c++ {
						lo, hi := c*per, min((c+1)*per, npages)
						var wg sync.WaitGroup
						for w := range threads {
							wg.Add(1)
							go func(w int) {
								defer wg.Done()
								for k := lo + w; k < hi; k += threads {
									copy(hb[k*pageBytes:(k+1)*pageBytes], mb[st.src[k]:st.src[k]+pageBytes])
								}
							}(w)
						}
						wg.Wait()
						if err := s.Copy(dst+DevPtr(lo*pageBytes), hst.Ptr()+DevPtr(lo*pageBytes), (hi-lo)*pageBytes); err != nil {
							return err
						}
					}
					for k := range npages {
						scatter[k] = CopyDesc{Src: dst + DevPtr(k*pageBytes), Dst: st.descs[k].Dst, Len: uint64(pageBytes)}
					}
					return s.Gather(scatter)
				}
				ms := wall(bounce)
				last := sets[reps-1].descs[npages-1]
				got := make([]byte, last.Len)
				if err := d.CopyDtoH(got, last.Dst); err != nil {
					t.Fatal(err)
				}
				so := int(last.Src - mirror.Ptr())
				if j := firstDiff(got, mb[so:so+int(last.Len)]); j >= 0 {
					t.Fatalf("bounced page differs at byte %d", j)
				}
				fmt.Printf("%3d KiB  bounce, %d MiB chunks, %2d threads %8.3f ms %6.1f GB/s  × %.3f\n", pageBytes>>10, chunk>>20, threads, ms, float64(bytes)/ms/1e6, contig/ms)
			}
		}
	}
}
