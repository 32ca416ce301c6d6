//go:build cuda

package cuda

/*
#include <cuda.h>
#include <string.h>

// cuMemcpyBatchAsync arrived in CUDA 12.8, after the 11.8 headers this builds against, so
// it is declared here with its 12.8 ABI and fetched from the driver by version (13.0
// headers map the name to a _v2 without failIdx; asking for 12080 returns this one).
typedef struct {
	int srcAccessOrder;     // CUmemcpySrcAccessOrder; 1 = stream order
	CUmemLocation srcLocHint;
	CUmemLocation dstLocHint;
	unsigned int flags;
} fm_memcpyAttributes;

typedef CUresult (*fm_memcpyBatchAsync_t)(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes,
	size_t count, fm_memcpyAttributes *attrs, size_t *attrsIdxs, size_t numAttrs,
	size_t *failIdx, CUstream s);

static fm_memcpyBatchAsync_t fm_batch_fn;

static CUresult fm_batch_init(void) {
	void *fn = 0;
	CUresult r = cuGetProcAddress("cuMemcpyBatchAsync", &fn, 12080, CU_GET_PROC_ADDRESS_DEFAULT);
	if (r != CUDA_SUCCESS) return r;
	if (fn == 0) return CUDA_ERROR_NOT_FOUND;
	fm_batch_fn = (fm_memcpyBatchAsync_t)fn;
	return CUDA_SUCCESS;
}

// descs is an array of {src, dst, len} triples (the Go CopyDesc layout).
static CUresult fm_batch(const uint64_t *descs, size_t n, uint64_t *scratch, int dstDevice, int order, unsigned flags, CUstream s) {
	CUdeviceptr *dsts = (CUdeviceptr *)scratch, *srcs = dsts + n;
	size_t *sizes = (size_t *)(srcs + n);
	for (size_t i = 0; i < n; i++) {
		srcs[i] = descs[3 * i];
		dsts[i] = descs[3 * i + 1];
		sizes[i] = descs[3 * i + 2];
	}
	fm_memcpyAttributes a;
	memset(&a, 0, sizeof(a));
	a.srcAccessOrder = order;
	a.flags = flags;
	a.srcLocHint.type = (CUmemLocationType)2; // CU_MEM_LOCATION_TYPE_HOST (12.x)
	a.dstLocHint.type = CU_MEM_LOCATION_TYPE_DEVICE;
	a.dstLocHint.id = dstDevice;
	size_t idx = 0, fail = 0;
	return fm_batch_fn(dsts, srcs, sizes, n, &a, &idx, 1, &fail, s);
}
*/
import "C"

import (
	"embed"
	"errors"
	"fmt"
	"unsafe"
)

//go:embed gather_sm80.ptx gather_sm90.ptx
var gatherPTX embed.FS

// gatherPiece bounds the bytes one block copies per descriptor: long rows are split so a
// recall of a few large pages still spreads over every SM (a variable so benchmarks can
// sweep it).
var gatherPiece = 128 << 10

// Gather kernel choice and launch shape (variables so the benchmark can sweep them):
// gatherKind is "simt4"/"simt8" (16-byte SM loads, 4 or 8 in flight per thread), "p256"
// (simt4 with 256-byte L2 fetches) or "bulk" (Hopper bulk copies, gatherBulkWarps
// pipelines per block, each gatherTMAStages chunks of gatherTMAChunk bytes in flight; one
// warp per block is the earlier "tma" kernel's shape; on the H200 it stops where SM loads
// stop, ~49 GB/s from host memory: docs/benchmarks.md, fifth CUDA session); threads per
// block and blocks per SM size the grid.
var (
	gatherKind        = "p256"
	gatherThreads     = 256
	gatherBlocksPerSM = 8
	gatherTMAChunk    = 16 << 10
	gatherTMAStages   = 4
	// gatherBulkWarps is "bulk"'s pipelines per block (fm_gather_bulk: one per warp);
	// gatherGrid, when > 0, replaces
	// sms*gatherBlocksPerSM as the grid (a kernel sharing the link with copy engines
	// may want few blocks).
	gatherBulkWarps = 1
	gatherGrid      = 0
)

func (d *Device) gatherKernel(kind string) (*Function, error) {
	d.gatherMu.Lock()
	defer d.gatherMu.Unlock()
	if d.gatherFn[kind] != nil {
		return d.gatherFn[kind], nil
	}
	name, ok := gatherFuncs[kind]
	if !ok {
		return nil, fmt.Errorf("cuda: gather kernel %q: %w", kind, ErrInvalid)
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
		d.gatherFn = map[string]*Function{}
	}
	d.gatherFn[kind] = f
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
	kind := gatherKind
	if kind == "bulk" && (s.dev.ccMajor < 9 || !allAligned(descs, gatherAlign)) {
		kind = "simt4"
	}
	fn, err := s.dev.gatherKernel(kind)
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
		grid := d.sms * gatherBlocksPerSM
		if gatherGrid > 0 {
			grid = gatherGrid
		}
		if kind == "bulk" {
			warps := gatherBulkWarps
			grid = min(grid, (n+warps-1)/warps)
			smem := gatherTMAChunk * gatherTMAStages * warps
			if smem != d.gatherBulkSmem {
				if err := fn.SetMaxDynamicShared(smem); err != nil {
					return err
				}
				d.gatherBulkSmem = smem
			}
			return s.Launch(fn, Dim3{uint32(grid), 1, 1}, Dim3{uint32(32 * warps), 1, 1}, smem,
				ArgPtr(s.descs), ArgU32(uint32(n)), ArgU32(uint32(gatherTMAChunk)), ArgU32(uint32(gatherTMAStages)))
		}
		grid = min(n, grid)
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

// CopyBatch enqueues every copy in descs with one cuMemcpyBatchAsync call (copy engines,
// no SM time; CUDA 12.8+ drivers), for host-to-device recalls. It returns ErrUnsupported
// when the driver lacks the call. The lists are consumed before it returns.
func (s *Stream) CopyBatch(descs []CopyDesc) error {
	if len(descs) == 0 {
		return nil
	}
	return s.dev.do(func() error {
		d := s.dev
		if !d.batchProbed {
			d.batchProbed = true
			d.batchOK = C.fm_batch_init() == C.CUDA_SUCCESS
		}
		if !d.batchOK {
			return fmt.Errorf("cuda: cuMemcpyBatchAsync on device %d: %w", d.ordinal, ErrUnsupported)
		}
		scratch := make([]uint64, 3*len(descs))
		return d.check("cuMemcpyBatchAsync", C.fm_batch((*C.uint64_t)(unsafe.Pointer(&descs[0])), C.size_t(len(descs)),
			(*C.uint64_t)(unsafe.Pointer(&scratch[0])), C.int(d.ordinal), C.int(batchSrcOrder), C.uint(batchFlags), s.c()))
	})
}

// batchSrcOrder and batchFlags are cuMemcpyBatchAsync's attributes (CUmemcpySrcAccessOrder:
// 1 stream order, 3 any order; flags: 1 prefer overlap with compute), variables so the
// benchmark can sweep them.
var batchSrcOrder, batchFlags = 1, 0

// recallBatchMinRow is the mean row size from which Recall prefers the copy engines, and
// recallStreams how many streams it spreads their rows over. One engine stream pays a
// fixed cost per row (~0.9 µs) before its next row starts; spread over four streams those
// costs overlap. On the H200 (2026-12-02, docs/benchmarks.md, TestRecallSweep) four streams
// moved scattered page-major recalls at 0.94x (256 KiB) and 0.95-0.96x (DeepSeek-V4's
// 786,240-byte pages, 4 KiB-aligned in the mirror as the daemon's are) of one contiguous
// copy, against 0.91 for the gather kernel and 0.88 / 0.91-0.94 for one engine stream; at
// 64 KiB even eight streams (0.91) only match the kernel, which stays below 256 KiB.
const recallBatchMinRow = 256 << 10

var recallStreams = 4

// Recall copies host-to-device rows (pinned mirror to reserve) by the faster path for
// their size: for large rows, cuMemcpyBatchAsync calls on recallStreams streams (s and
// helpers it owns, ordered after the work already on s; work enqueued on s afterwards sees
// every row) where the driver has it, else Gather.
func (s *Stream) Recall(descs []CopyDesc) error {
	var total uint64
	for _, c := range descs {
		total += c.Len
	}
	if len(descs) > 0 && total/uint64(len(descs)) >= recallBatchMinRow {
		err := s.copyEngines(descs)
		if !errors.Is(err, ErrUnsupported) {
			return err
		}
	}
	return s.Gather(descs)
}

// copyEngines is Recall's copy-engine path: the rows cut into runs of about equal bytes,
// one cuMemcpyBatchAsync per stream. ErrUnsupported (nothing enqueued) without the call.
func (s *Stream) copyEngines(descs []CopyDesc) error {
	n := min(recallStreams, len(descs))
	if n <= 1 {
		return s.CopyBatch(descs)
	}
	if err := s.fanOut(n - 1); err != nil {
		return err
	}
	// The helpers start after the work already on s (the slots may still be read).
	if err := s.fanEv[0].Record(s); err != nil {
		return err
	}
	runs := make([][]CopyDesc, 0, n)
	rest := descs
	for i := range n {
		k := len(rest)
		if i < n-1 {
			k = min(len(rest), max(1, splitAt(rest, 1/float64(n-i))))
		}
		runs = append(runs, rest[:k])
		rest = rest[k:]
	}
	// s's own run first: a driver without the call fails it before a helper waits.
	if err := s.CopyBatch(runs[0]); err != nil {
		return err
	}
	var joined []int
	var ferr error
	for i, run := range runs[1:] {
		if len(run) == 0 {
			continue
		}
		a := s.fan[i]
		if ferr = a.WaitEvent(s.fanEv[0]); ferr != nil {
			break
		}
		if ferr = a.CopyBatch(run); ferr != nil {
			break
		}
		if ferr = s.fanEv[i+1].Record(a); ferr != nil {
			break
		}
		joined = append(joined, i+1)
	}
	for _, j := range joined {
		if err := s.WaitEvent(s.fanEv[j]); err != nil && ferr == nil {
			ferr = err
		}
	}
	return ferr
}

// fanOut makes sure s owns at least n helper streams and n+1 events for copyEngines.
// Recall runs on one goroutine per stream at a time (the tiers region's lock), as every
// Stream method does.
func (s *Stream) fanOut(n int) error {
	for len(s.fan) < n {
		a, err := s.dev.NewStream()
		if err != nil {
			return err
		}
		s.fan = append(s.fan, a)
	}
	for len(s.fanEv) < n+1 {
		e, err := s.dev.NewEvent(false)
		if err != nil {
			return err
		}
		s.fanEv = append(s.fanEv, e)
	}
	return nil
}

// WaitEvent makes work enqueued on s after this call wait for e's recorded work (no host
// wait).
func (s *Stream) WaitEvent(e *Event) error {
	if e.dev != s.dev {
		return fmt.Errorf("cuda: stream of device %d waits on an event of device %d: %w", s.dev.ordinal, e.dev.ordinal, ErrInvalid)
	}
	return s.dev.do(func() error {
		ev := C.CUevent(*(*unsafe.Pointer)(unsafe.Pointer(&e.e)))
		return s.dev.check("cuStreamWaitEvent", C.cuStreamWaitEvent(s.c(), ev, 0))
	})
}
