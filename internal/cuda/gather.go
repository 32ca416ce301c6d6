//go:build cuda

package cuda

/*
#include <cuda.h>
*/
import "C"

import (
	"embed"
	"fmt"
	"unsafe"
)

//go:embed gather_sm80.ptx gather_sm90.ptx
var gatherPTX embed.FS

// gatherPiece bounds the bytes one block copies per descriptor: long rows are split so a
// recall of a few large pages still spreads over every SM (a variable so benchmarks can
// sweep it).
var gatherPiece = 64 << 10

// Launch shape of the gather kernel (variables so the benchmark can sweep them): threads
// per block, blocks per SM in the grid, and 16-byte loads in flight per thread (4 or 8).
var (
	gatherThreads     = 256
	gatherBlocksPerSM = 8
	gatherUnroll      = 4
)

func (d *Device) gatherKernel(unroll int) (*Function, error) {
	d.gatherMu.Lock()
	defer d.gatherMu.Unlock()
	if d.gatherFn[unroll] != nil {
		return d.gatherFn[unroll], nil
	}
	name := "fm_gather"
	if unroll == 8 {
		name = "fm_gather8"
	}
	if d.gatherMod == nil {
		m, err := d.LoadPTX(gatherPTX, "gather")
		if err != nil {
			return nil, err
		}
		d.gatherMod = m
	}
	f, err := d.gatherMod.Function(name)
	if err != nil {
		return nil, err
	}
	if d.gatherFn == nil {
		d.gatherFn = map[int]*Function{}
	}
	d.gatherFn[unroll] = f
	return f, nil
}

// Gather enqueues one kernel launch that performs every copy in descs (device addresses on
// both sides; mapped pinned host memory is read or written across PCIe by the kernel). The
// descriptor list is staged before Gather returns, so descs may be reused at once. Rows
// must not overlap each other's destinations.
func (s *Stream) Gather(descs []CopyDesc) error {
	if len(descs) == 0 {
		return nil
	}
	fn, err := s.dev.gatherKernel(gatherUnroll)
	if err != nil {
		return err
	}
	piece := uint64(gatherPiece)
	n := countPieces(descs, piece)
	if n == 0 {
		return nil
	}
	if n > 1<<31-1 {
		return fmt.Errorf("cuda: gather of %d pieces: %w", n, ErrInvalid)
	}
	nb := n * int(unsafe.Sizeof(CopyDesc{}))
	return s.dev.do(func() error {
		d := s.dev
		if err := s.growGather(nb); err != nil {
			return err
		}
		// The previous list's upload must have left the staging buffer before it is
		// rewritten; it was enqueued before the previous kernel, so this rarely waits.
		if s.stageEv != nil {
			if err := d.check("cuEventSynchronize", C.cuEventSynchronize(s.stageEv)); err != nil {
				return err
			}
		}
		pieces := splitDescs(unsafe.Slice((*CopyDesc)(s.stage), n)[:0], descs, piece)
		if err := d.check("cuMemcpyHtoDAsync", C.cuMemcpyHtoDAsync(C.CUdeviceptr(s.descs),
			unsafe.Pointer(&pieces[0]), C.size_t(nb), s.c())); err != nil {
			return err
		}
		if err := d.check("cuEventRecord", C.cuEventRecord(s.stageEv, s.c())); err != nil {
			return err
		}
		grid := min(n, d.sms*gatherBlocksPerSM)
		return s.Launch(fn, Dim3{uint32(grid), 1, 1}, Dim3{uint32(gatherThreads), 1, 1}, 0,
			ArgPtr(s.descs), ArgU32(uint32(n)))
	})
}

// growGather makes the stream's descriptor buffers (pinned staging, device copy) hold at
// least nb bytes. Runs on the owner goroutine.
func (s *Stream) growGather(nb int) error {
	d := s.dev
	if s.stageEv == nil {
		if err := d.check("cuEventCreate", C.cuEventCreate(&s.stageEv, C.CU_EVENT_DISABLE_TIMING)); err != nil {
			return err
		}
	}
	if nb <= s.descsCap {
		return nil
	}
	// The stream may still read the old buffers; it is ours, so waiting only delays us.
	if err := d.check("cuStreamSynchronize", C.cuStreamSynchronize(s.c())); err != nil {
		return err
	}
	s.freeGather()
	capb := max(nb, 4096) * 2
	var p C.CUdeviceptr
	if err := d.check("cuMemAlloc", C.cuMemAlloc(&p, C.size_t(capb))); err != nil {
		return err
	}
	if err := d.check("cuMemHostAlloc", C.cuMemHostAlloc(&s.stage, C.size_t(capb), 0)); err != nil {
		C.cuMemFree(p)
		return err
	}
	s.descs, s.descsCap = DevPtr(p), capb
	return nil
}

// freeGather releases the descriptor buffers (not the event). Runs on the owner goroutine.
func (s *Stream) freeGather() {
	if s.descs != 0 {
		C.cuMemFree(C.CUdeviceptr(s.descs))
	}
	if s.stage != nil {
		C.cuMemFreeHost(s.stage)
	}
	s.descs, s.descsCap, s.stage = 0, 0, nil
}
