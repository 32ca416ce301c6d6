//go:build cuda

package cuda

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"unsafe"

	"golang.org/x/sys/unix"
)

// TestRecallHugeBench asks whether the gather kernel's ceiling reading host memory
// (about 49 GB/s against 53.5 for one contiguous copy-engine copy, TestRecallBench) comes
// from the GPU translating 4 KiB host pages or from PCIe snooping: the same recalls from a
// mirror of ordinary pinned pages (cuMemHostAlloc), one backed by transparent huge pages
// (mmap + MADV_HUGEPAGE, then cuMemHostRegister) and one of write-combined pinned memory,
// in rotated order, in one run. Runs only with FLASHMEM_BENCH=1.
func TestRecallHugeBench(t *testing.T) {
	if os.Getenv("FLASHMEM_BENCH") != "1" {
		t.Skip("set FLASHMEM_BENCH=1")
	}
	d := devices(t)[0]
	thp, _ := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	t.Logf("transparent_hugepage: %s", strings.TrimSpace(string(thp)))
	const mirrorBytes, total, reps = 2 << 30, 64 << 20, 20
	tm := newTimer(t, d)
	s := tm.s
	plain, err := d.AllocHost(mirrorBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Free()
	hb, err := unix.Mmap(-1, 0, mirrorBytes+(2<<20), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(hb)
	// 2 MiB-align the range so every huge page is whole.
	off := (2<<20 - int(uintptrOf(hb)%(2<<20))) % (2 << 20)
	hm := hb[off : off+mirrorBytes]
	if err := unix.Madvise(hm, unix.MADV_HUGEPAGE); err != nil {
		t.Logf("madvise(MADV_HUGEPAGE): %v", err)
	}
	fill(plain.Bytes()[:total], 3)
	for o := 0; o < mirrorBytes; o += total {
		copy(plain.Bytes()[o:], plain.Bytes()[:total])
		copy(hm[o:], plain.Bytes()[:total])
	}
	if meminfo, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(meminfo), "\n") {
			if strings.HasPrefix(l, "AnonHugePages") {
				t.Logf("after touching the huge mirror: %s", l)
			}
		}
	}
	wc, err := d.AllocHostWriteCombined(mirrorBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Free()
	// Written from the CPU in big sequential stores, as APPEND fills the mirror.
	for o := 0; o < mirrorBytes; o += total {
		copy(wc.Bytes()[o:o+total], plain.Bytes()[:total])
	}
	huge, err := d.RegisterHost(hm)
	if err != nil {
		t.Fatal(err)
	}
	defer huge.Free()
	reserve, err := d.Alloc(total)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free(reserve)
	mirrors := []struct {
		name string
		h    *HostBuffer
	}{{"4 KiB pinned (cuMemHostAlloc)", plain}, {"THP + cuMemHostRegister", huge}, {"write-combined (cuMemHostAlloc)", wc}}
	for _, m := range mirrors { // first DMA touch of every page, outside the timing
		for o := 0; o < mirrorBytes; o += total {
			if err := s.Copy(reserve, m.h.Ptr()+DevPtr(o), total); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(2, 2))
	type pattern struct {
		name string
		page int
		rows int // rows per page (DeepSeek-V4: 21 of 37,440 B)
	}
	pats := []pattern{{"64 KiB pages", 64 << 10, 1}, {"256 KiB pages", 256 << 10, 1}, {"DeepSeek-V4 21x37440 B", 21 * 37440, 21}}
	fmt.Printf("\nRecall by mirror page size on %s (median of %d; GB/s; ratio to contiguous on the same mirror)\n", d.Name(), reps)
	fmt.Printf("%-32s %-24s %-22s %8s %7s\n", "mirror", "case", "method", "GB/s", "ratio")
	for round := range 2 { // two rounds in rotated order expose drift
		for mi := range mirrors {
			m := mirrors[(mi+round)%len(mirrors)]
			contig := tm.median(reps, func(int) error { return s.Copy(reserve, m.h.Ptr()+DevPtr(rnd.IntN(mirrorBytes/total)*total), total) })
			cg := float64(total) / contig / 1e6
			fmt.Printf("%-32s %-24s %-22s %8.1f %7s\n", m.name, "contiguous 64 MiB", "cuMemcpyAsync", cg, "1")
			for _, p := range pats {
				n := total / p.page
				row := p.page / p.rows
				sets := make([][]CopyDesc, reps)
				for i := range sets {
					for j, pg := range rnd.Perm(mirrorBytes / p.page)[:n] {
						for r := 0; r < p.rows; r++ {
							sets[i] = append(sets[i], CopyDesc{Src: m.h.Ptr() + DevPtr(pg*p.page+r*row), Dst: reserve + DevPtr(j*p.page+r*row), Len: uint64(row)})
						}
					}
				}
				bytes := n * p.page
				for _, meth := range []string{"gather kernel", "cuMemcpyBatchAsync"} {
					ms := tm.median(reps, func(i int) error {
						if meth == "gather kernel" {
							return s.Gather(sets[i])
						}
						return s.CopyBatch(sets[i])
					})
					g := float64(bytes) / ms / 1e6
					fmt.Printf("%-32s %-24s %-22s %8.1f %7.3f\n", m.name, p.name, meth, g, g/cg)
				}
				// The last set landed: check a few rows.
				for _, c := range sets[reps-1][:8] {
					got := make([]byte, c.Len)
					if err := d.CopyDtoH(got, c.Dst); err != nil {
						t.Fatal(err)
					}
					so := int(c.Src - m.h.Ptr())
					if i := firstDiff(got, m.h.Bytes()[so:so+int(c.Len)]); i >= 0 {
						t.Fatalf("%s %s: row differs at byte %d", m.name, p.name, i)
					}
				}
			}
		}
	}
}

func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }
