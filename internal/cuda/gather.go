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

// gatherBlocksPerSM sets the grid: enough resident 256-thread blocks to fill each SM.
const gatherBlocksPerSM = 8

func (d *Device) gatherKernel() (*Function, error) {
	d.gatherMu.Lock()
	defer d.gatherMu.Unlock()
	if d.gatherFn != nil {
		return d.gatherFn, nil
	}
	m, err := d.LoadPTX(gatherPTX, "gather")
	if err != nil {
		return nil, err
	}
	f, err := m.Function("fm_gather")
	if err != nil {
		return nil, err
	}
	d.gatherFn = f
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
	fn, err := s.dev.gatherKernel()
	if err != nil {
		return err
	}
	pieces := splitDescs(make([]CopyDesc, 0, len(descs)), descs, uint64(gatherPiece))
	if len(pieces) > 1<<31-1 {
		return fmt.Errorf("cuda: gather of %d pieces: %w", len(pieces), ErrInvalid)
	}
	nb := len(pieces) * int(unsafe.Sizeof(CopyDesc{}))
	return s.dev.do(func() error {
		d := s.dev
		if nb > s.descsCap {
			// The stream may still be reading the old list; the stream is ours, so waiting
			// for it here only delays this caller.
			if s.descs != 0 {
				if err := d.check("cuStreamSynchronize", C.cuStreamSynchronize(s.c())); err != nil {
					return err
				}
				if err := d.check("cuMemFree", C.cuMemFree(C.CUdeviceptr(s.descs))); err != nil {
					return err
				}
				s.descs, s.descsCap = 0, 0
			}
			capb := max(nb, 4096) * 2
			var p C.CUdeviceptr
			if err := d.check("cuMemAlloc", C.cuMemAlloc(&p, C.size_t(capb))); err != nil {
				return err
			}
			s.descs, s.descsCap = DevPtr(p), capb
		}
		if err := d.check("cuMemcpyHtoDAsync", C.cuMemcpyHtoDAsync(C.CUdeviceptr(s.descs),
			unsafe.Pointer(&pieces[0]), C.size_t(nb), s.c())); err != nil {
			return err
		}
		grid := min(len(pieces), d.sms*gatherBlocksPerSM)
		return s.Launch(fn, Dim3{uint32(grid), 1, 1}, Dim3{256, 1, 1}, 0,
			ArgPtr(s.descs), ArgU32(uint32(len(pieces))))
	})
}
