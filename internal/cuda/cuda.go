//go:build cuda

package cuda

/*
#include <cuda.h>
#include <stdint.h>
#include <string.h>

// Kernel arguments travel as 8-byte slots in Go memory; the pointer array cuLaunchKernel
// wants is built here on the C stack, so no Go pointer to Go pointers crosses cgo.
static CUresult fm_launch(CUfunction f, unsigned gx, unsigned gy, unsigned gz,
		unsigned bx, unsigned by, unsigned bz, unsigned shmem, CUstream s,
		uint64_t *vals, int n) {
	void *args[32];
	if (n > 32) return CUDA_ERROR_INVALID_VALUE;
	for (int i = 0; i < n; i++) args[i] = &vals[i];
	return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, s, n ? args : NULL, NULL);
}

static void fm_vmm_prop(CUmemAllocationProp *p, int ordinal) {
	memset(p, 0, sizeof(*p));
	p->type = CU_MEM_ALLOCATION_TYPE_PINNED;
	p->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	p->location.id = ordinal;
	p->requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
}

static CUresult fm_vmm_granularity(int ordinal, size_t *g) {
	CUmemAllocationProp p;
	fm_vmm_prop(&p, ordinal);
	return cuMemGetAllocationGranularity(g, &p, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
}

static CUresult fm_vmm_create(int ordinal, size_t size, CUmemGenericAllocationHandle *h) {
	CUmemAllocationProp p;
	fm_vmm_prop(&p, ordinal);
	return cuMemCreate(h, size, &p, 0);
}

// Reserve an address range, map the allocation and make it read-write for this device;
// undo the steps already taken when a later one fails.
static CUresult fm_vmm_map(int ordinal, CUmemGenericAllocationHandle h, size_t size, CUdeviceptr *out) {
	CUdeviceptr p = 0;
	CUresult r = cuMemAddressReserve(&p, size, 0, 0, 0);
	if (r != CUDA_SUCCESS) return r;
	r = cuMemMap(p, size, 0, h, 0);
	if (r != CUDA_SUCCESS) { cuMemAddressFree(p, size); return r; }
	CUmemAccessDesc a;
	memset(&a, 0, sizeof(a));
	a.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	a.location.id = ordinal;
	a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
	r = cuMemSetAccess(p, size, &a, 1);
	if (r != CUDA_SUCCESS) { cuMemUnmap(p, size); cuMemAddressFree(p, size); return r; }
	*out = p;
	return CUDA_SUCCESS;
}

static CUresult fm_vmm_unmap(CUdeviceptr p, size_t size) {
	CUresult r = cuMemUnmap(p, size);
	CUresult r2 = cuMemAddressFree(p, size);
	return r != CUDA_SUCCESS ? r : r2;
}

static CUresult fm_vmm_export(CUmemGenericAllocationHandle h, int *fd) {
	return cuMemExportToShareableHandle(fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
}

static CUresult fm_vmm_import(int fd, CUmemGenericAllocationHandle *h) {
	return cuMemImportFromShareableHandle(h, (void *)(uintptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
}

static CUresult fm_ipc_get(CUdeviceptr p, unsigned char *out) {
	CUipcMemHandle h;
	CUresult r = cuIpcGetMemHandle(&h, p);
	if (r == CUDA_SUCCESS) memcpy(out, h.reserved, CU_IPC_HANDLE_SIZE);
	return r;
}

static CUresult fm_ipc_open(const unsigned char *in, CUdeviceptr *p) {
	CUipcMemHandle h;
	memcpy(h.reserved, in, CU_IPC_HANDLE_SIZE);
	return cuIpcOpenMemHandle(p, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
}

static const char *fm_err_name(CUresult r) {
	const char *s = 0;
	if (cuGetErrorName(r, &s) != CUDA_SUCCESS || s == 0) return "CUDA_ERROR_UNKNOWN";
	return s;
}
*/
import "C"

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"gorgonia.org/cu"
)

// Available reports whether this build was made with the cuda tag.
const Available = true

// DeviceCount returns the number of CUDA devices the driver sees.
func DeviceCount() (int, error) {
	n, err := cu.NumDevices()
	if err != nil {
		return 0, fmt.Errorf("cuda: cuDeviceGetCount: %w: %v", ErrDriver, err)
	}
	return n, nil
}

// Device is one GPU with its primary context, owned by a goroutine locked to its OS thread.
// All methods are safe for concurrent use; they run on the owner goroutine.
type Device struct {
	ordinal int
	dev     cu.Device
	ctx     cu.CUContext

	work chan func()
	tid  int // OS thread of the owner goroutine; calls made on it run inline

	mu     sync.RWMutex
	closed bool
	exited chan struct{}

	name      string
	ccMajor   int
	ccMinor   int
	sms       int
	vmm       bool // VMM with POSIX-fd export is supported
	vmmGran   int
	gatherMu  sync.Mutex
	gatherMod *Module
	gatherFn  map[string]*Function // by gatherKind
	// gatherBulkSmem is the dynamic shared memory fm_gather_bulk is currently allowed.
	gatherBulkSmem int
	// cuMemcpyBatchAsync looked up (batchProbed) and found (batchOK); owner goroutine only.
	batchProbed, batchOK bool
	// syncStream carries CopyHtoD's copies (owner goroutine only; created on first use).
	syncStream C.CUstream
}

// Open starts the owner goroutine of device ordinal with the device's primary context
// current on its thread (the context the CUDA runtime, and so PyTorch, also uses).
func Open(ordinal int) (*Device, error) {
	n, err := DeviceCount()
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("cuda: open device %d: %w", ordinal, ErrNoCUDA)
	}
	if ordinal < 0 || ordinal >= n {
		return nil, fmt.Errorf("cuda: open device %d of %d: %w", ordinal, n, ErrInvalid)
	}
	d := &Device{ordinal: ordinal, work: make(chan func()), exited: make(chan struct{})}
	ready := make(chan error, 1)
	go d.loop(ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	if err := d.do(d.probe); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func (d *Device) loop(ready chan<- error) {
	// The thread stays locked for the goroutine's life: when the goroutine returns, the
	// runtime discards the thread together with its CUDA context binding.
	runtime.LockOSThread()
	defer close(d.exited)
	d.tid = unix.Gettid()
	dev, err := cu.GetDevice(d.ordinal)
	if err != nil {
		ready <- d.wrapCu("cuDeviceGet", err)
		return
	}
	d.dev = dev
	ctx, err := dev.RetainPrimaryCtx()
	if err != nil {
		ready <- d.wrapCu("cuDevicePrimaryCtxRetain", err)
		return
	}
	if err := cu.SetCurrentContext(ctx); err != nil {
		dev.ReleasePrimaryCtx()
		ready <- d.wrapCu("cuCtxSetCurrent", err)
		return
	}
	d.ctx = ctx
	ready <- nil
	for fn := range d.work {
		fn()
	}
	if d.syncStream != nil {
		C.cuStreamDestroy(d.syncStream)
	}
	dev.ReleasePrimaryCtx()
}

func (d *Device) probe() error {
	var err error
	if d.name, err = d.dev.Name(); err != nil {
		return d.wrapCu("cuDeviceGetName", err)
	}
	attr := func(a C.CUdevice_attribute) (int, error) {
		var v C.int
		if err := d.check("cuDeviceGetAttribute", C.cuDeviceGetAttribute(&v, a, C.CUdevice(d.dev))); err != nil {
			return 0, err
		}
		return int(v), nil
	}
	if d.ccMajor, err = attr(C.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR); err != nil {
		return err
	}
	if d.ccMinor, err = attr(C.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR); err != nil {
		return err
	}
	if d.sms, err = attr(C.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT); err != nil {
		return err
	}
	vmm, err := attr(C.CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED)
	if err != nil {
		return err
	}
	posix, err := attr(C.CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED)
	if err != nil {
		return err
	}
	if vmm != 0 && posix != 0 {
		var g C.size_t
		if C.fm_vmm_granularity(C.int(d.ordinal), &g) == C.CUDA_SUCCESS && g > 0 {
			d.vmm, d.vmmGran = true, int(g)
		}
	}
	return nil
}

// do runs fn on the owner goroutine and returns its error. Called from the owner itself
// (inside a Do closure) it runs fn inline.
func (d *Device) do(fn func() error) error {
	if unix.Gettid() == d.tid {
		return fn()
	}
	errc := make(chan error, 1)
	d.mu.RLock()
	if d.closed {
		d.mu.RUnlock()
		return fmt.Errorf("cuda: device %d: %w", d.ordinal, ErrClosed)
	}
	d.work <- func() { errc <- fn() }
	d.mu.RUnlock()
	return <-errc
}

// Do runs fn on the device's owner goroutine, with the device's context current, for
// direct gorgonia.org/cu calls. Methods of this package called inside fn run inline.
func (d *Device) Do(fn func() error) error { return d.do(fn) }

// Close stops the owner goroutine and releases the primary context. Memory, streams and
// modules should be freed first; the driver reclaims what is left when the process exits.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	close(d.work)
	d.mu.Unlock()
	<-d.exited
	return nil
}

func (d *Device) check(op string, r C.CUresult) error {
	if r == C.CUDA_SUCCESS {
		return nil
	}
	return fmt.Errorf("cuda: %s on device %d: %w: %s", op, d.ordinal, ErrDriver, C.GoString(C.fm_err_name(r)))
}

func (d *Device) wrapCu(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("cuda: %s on device %d: %w: %v", op, d.ordinal, ErrDriver, err)
}

// Ordinal is the device's index as the driver counts it.
func (d *Device) Ordinal() int { return d.ordinal }

// Name is the device's marketing name, e.g. "NVIDIA H100 80GB HBM3".
func (d *Device) Name() string { return d.name }

// ComputeCapability returns the SM version, e.g. (9, 0) on Hopper.
func (d *Device) ComputeCapability() (major, minor int) { return d.ccMajor, d.ccMinor }

// SMCount is the number of streaming multiprocessors, used to size persistent grids.
func (d *Device) SMCount() int { return d.sms }

// VMMSupported reports whether AllocShareable can use VMM allocations exported as POSIX
// file descriptors on this device.
func (d *Device) VMMSupported() bool { return d.vmm }

// MemInfo returns free and total device memory in bytes.
func (d *Device) MemInfo() (free, total int64, err error) {
	err = d.do(func() error {
		var f, t C.size_t
		if err := d.check("cuMemGetInfo", C.cuMemGetInfo(&f, &t)); err != nil {
			return err
		}
		free, total = int64(f), int64(t)
		return nil
	})
	return free, total, err
}

// Alloc allocates size bytes of ordinary (not shareable) device memory.
func (d *Device) Alloc(size int) (DevPtr, error) {
	if size <= 0 {
		return 0, fmt.Errorf("cuda: alloc %d bytes on device %d: %w", size, d.ordinal, ErrInvalid)
	}
	var p DevPtr
	err := d.do(func() error {
		var dp C.CUdeviceptr
		if err := d.check("cuMemAlloc", C.cuMemAlloc(&dp, C.size_t(size))); err != nil {
			return err
		}
		p = DevPtr(dp)
		return nil
	})
	return p, err
}

// Free releases memory from Alloc.
func (d *Device) Free(p DevPtr) error {
	return d.do(func() error { return d.check("cuMemFree", C.cuMemFree(C.CUdeviceptr(p))) })
}

// CopyHtoD copies src into device memory synchronously (set-up and test path; the recall
// path uses Stream.Gather).
func (d *Device) CopyHtoD(dst DevPtr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	// cuMemcpyHtoD from pageable memory may return before the DMA has landed, and the
	// legacy stream it uses does not order work on the non-blocking streams that read
	// the data next (kernels, recalls). An async copy on a private stream followed by a
	// wait for that stream is complete when this returns.
	return d.do(func() error {
		if d.syncStream == nil {
			if err := d.check("cuStreamCreate", C.cuStreamCreate(&d.syncStream, C.CU_STREAM_NON_BLOCKING)); err != nil {
				d.syncStream = nil
				return err
			}
		}
		if err := d.check("cuMemcpyHtoDAsync", C.cuMemcpyHtoDAsync(C.CUdeviceptr(dst), unsafe.Pointer(&src[0]), C.size_t(len(src)), d.syncStream)); err != nil {
			return err
		}
		return d.check("cuStreamSynchronize", C.cuStreamSynchronize(d.syncStream))
	})
}

// CopyDtoH copies device memory into dst synchronously.
func (d *Device) CopyDtoH(dst []byte, src DevPtr) error {
	if len(dst) == 0 {
		return nil
	}
	return d.do(func() error {
		return d.check("cuMemcpyDtoH", C.cuMemcpyDtoH(unsafe.Pointer(&dst[0]), C.CUdeviceptr(src), C.size_t(len(dst))))
	})
}

// Memset sets n bytes at p to v synchronously.
func (d *Device) Memset(p DevPtr, v byte, n int) error {
	return d.do(func() error {
		return d.check("cuMemsetD8", C.cuMemsetD8(C.CUdeviceptr(p), C.uchar(v), C.size_t(n)))
	})
}

// HostBuffer is page-locked host memory mapped into every device's address space
// (CU_MEMHOSTALLOC_PORTABLE | DEVICEMAP), so copy engines reach PCIe speed and kernels can
// read it directly.
type HostBuffer struct {
	dev        *Device
	ptr        unsafe.Pointer
	size       int
	dptr       DevPtr
	registered bool
	freed      bool
}

// AllocHost allocates size bytes of pinned, mapped, portable host memory.
func (d *Device) AllocHost(size int) (*HostBuffer, error) { return d.allocHost(size, 0) }

// AllocHostWriteCombined is AllocHost with CU_MEMHOSTALLOC_WRITECOMBINED: not snooped on
// PCIe (the CUDA guide credits up to 40 % faster transfers on some systems) but very slow
// for the CPU to read. For measurements; the mirror is read by the CPU when it spills.
func (d *Device) AllocHostWriteCombined(size int) (*HostBuffer, error) {
	return d.allocHost(size, C.CU_MEMHOSTALLOC_WRITECOMBINED)
}

func (d *Device) allocHost(size int, extra C.uint) (*HostBuffer, error) {
	if size <= 0 {
		return nil, fmt.Errorf("cuda: pinned alloc %d bytes: %w", size, ErrInvalid)
	}
	h := &HostBuffer{dev: d, size: size}
	err := d.do(func() error {
		if err := d.check("cuMemHostAlloc", C.cuMemHostAlloc(&h.ptr, C.size_t(size),
			C.CU_MEMHOSTALLOC_PORTABLE|C.CU_MEMHOSTALLOC_DEVICEMAP|extra)); err != nil {
			return err
		}
		return d.mapHost(h, func() { C.cuMemFreeHost(h.ptr) })
	})
	if err != nil {
		return nil, err
	}
	return h, nil
}

// mapHost sets h's device address after its range was pinned; if that fails, undo
// unpins it. Runs on the owner goroutine.
func (d *Device) mapHost(h *HostBuffer, undo func()) error {
	var dp C.CUdeviceptr
	if err := d.check("cuMemHostGetDevicePointer", C.cuMemHostGetDevicePointer(&dp, h.ptr, 0)); err != nil {
		undo()
		return err
	}
	h.dptr = DevPtr(dp)
	return nil
}

// RegisterHost page-locks and maps an existing host range, typically the host mirror's
// mmap'ed arena, so it can be recalled from without a staging copy. b must stay mapped
// until Free; it should be page-aligned (mmap memory is).
func (d *Device) RegisterHost(b []byte) (*HostBuffer, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("cuda: register empty host range: %w", ErrInvalid)
	}
	h := &HostBuffer{dev: d, ptr: unsafe.Pointer(&b[0]), size: len(b), registered: true}
	err := d.do(func() error {
		if err := d.check("cuMemHostRegister", C.cuMemHostRegister(h.ptr, C.size_t(h.size),
			C.CU_MEMHOSTREGISTER_PORTABLE|C.CU_MEMHOSTREGISTER_DEVICEMAP)); err != nil {
			return err
		}
		return d.mapHost(h, func() { C.cuMemHostUnregister(h.ptr) })
	})
	if err != nil {
		return nil, err
	}
	return h, nil
}

// Bytes is the buffer seen from the host.
func (h *HostBuffer) Bytes() []byte { return unsafe.Slice((*byte)(h.ptr), h.size) }

// Ptr is the buffer's device address (for kernels and copies).
func (h *HostBuffer) Ptr() DevPtr { return h.dptr }

// Size is the buffer's length in bytes.
func (h *HostBuffer) Size() int { return h.size }

// Free unpins the memory (and frees it, unless it was registered).
func (h *HostBuffer) Free() error {
	if h.freed {
		return nil
	}
	err := h.dev.do(func() error {
		if h.registered {
			return h.dev.check("cuMemHostUnregister", C.cuMemHostUnregister(h.ptr))
		}
		return h.dev.check("cuMemFreeHost", C.cuMemFreeHost(h.ptr))
	})
	if err == nil {
		h.freed = true
	}
	return err
}

// Region is device memory that another process can map: a VMM allocation exportable as a
// POSIX file descriptor, or (fallback) a cuMemAlloc block with a legacy IPC handle. A
// Region returned by ImportFD/ImportIPC is the importer's mapping of a peer's memory.
type Region struct {
	dev      *Device
	ptr      DevPtr
	size     int
	kind     ShareKind
	handle   C.CUmemGenericAllocationHandle
	imported bool
	closed   bool
}

// AllocShareable allocates size bytes of shareable device memory. kind 0 picks VMM where
// the device supports POSIX-fd export and legacy IPC otherwise; asking for ShareVMM on a
// device without it returns ErrUnsupported. VMM sizes are rounded up to the allocation
// granularity (Size reports the rounded size).
func (d *Device) AllocShareable(size int, kind ShareKind) (*Region, error) {
	if size <= 0 {
		return nil, fmt.Errorf("cuda: shareable alloc %d bytes: %w", size, ErrInvalid)
	}
	if kind == 0 {
		kind = ShareIPC
		if d.vmm {
			kind = ShareVMM
		}
	}
	r := &Region{dev: d, kind: kind}
	switch kind {
	case ShareVMM:
		if !d.vmm {
			return nil, fmt.Errorf("cuda: VMM POSIX-fd allocation on device %d: %w", d.ordinal, ErrUnsupported)
		}
		r.size = (size + d.vmmGran - 1) / d.vmmGran * d.vmmGran
		err := d.do(func() error {
			if err := d.check("cuMemCreate", C.fm_vmm_create(C.int(d.ordinal), C.size_t(r.size), &r.handle)); err != nil {
				return err
			}
			var p C.CUdeviceptr
			if err := d.check("cuMemMap", C.fm_vmm_map(C.int(d.ordinal), r.handle, C.size_t(r.size), &p)); err != nil {
				C.cuMemRelease(r.handle)
				return err
			}
			r.ptr = DevPtr(p)
			return nil
		})
		if err != nil {
			return nil, err
		}
	case ShareIPC:
		p, err := d.Alloc(size)
		if err != nil {
			return nil, err
		}
		r.ptr, r.size = p, size
	default:
		return nil, fmt.Errorf("cuda: share kind %v: %w", kind, ErrInvalid)
	}
	return r, nil
}

// ExportFD returns a new file descriptor for a ShareVMM region, to be sent with
// SCM_RIGHTS; the caller closes it after sending. The peer needs Size as well.
func (r *Region) ExportFD() (int, error) {
	if r.kind != ShareVMM {
		return -1, fmt.Errorf("cuda: export fd of a %v region: %w", r.kind, ErrUnsupported)
	}
	fd := -1
	err := r.dev.do(func() error {
		var c C.int
		if err := r.dev.check("cuMemExportToShareableHandle", C.fm_vmm_export(r.handle, &c)); err != nil {
			return err
		}
		fd = int(c)
		return nil
	})
	return fd, err
}

// IPCHandle returns the legacy IPC handle of a ShareIPC region.
func (r *Region) IPCHandle() (IPCHandle, error) {
	var h IPCHandle
	if r.kind != ShareIPC || r.imported {
		return h, fmt.Errorf("cuda: IPC handle of a %v region: %w", r.kind, ErrUnsupported)
	}
	err := r.dev.do(func() error {
		return r.dev.check("cuIpcGetMemHandle", C.fm_ipc_get(C.CUdeviceptr(r.ptr), (*C.uchar)(unsafe.Pointer(&h[0]))))
	})
	return h, err
}

// ImportFD maps a peer's VMM allocation, given its exported fd and size, into this
// process on this device. The fd is not consumed; close it afterwards.
func (d *Device) ImportFD(fd, size int) (*Region, error) {
	if fd < 0 || size <= 0 {
		return nil, fmt.Errorf("cuda: import fd %d size %d: %w", fd, size, ErrInvalid)
	}
	if !d.vmm {
		return nil, fmt.Errorf("cuda: import fd on device %d: %w", d.ordinal, ErrUnsupported)
	}
	if size%d.vmmGran != 0 {
		return nil, fmt.Errorf("cuda: import fd size %d not a multiple of granularity %d: %w", size, d.vmmGran, ErrInvalid)
	}
	r := &Region{dev: d, size: size, kind: ShareVMM, imported: true}
	err := d.do(func() error {
		if err := d.check("cuMemImportFromShareableHandle", C.fm_vmm_import(C.int(fd), &r.handle)); err != nil {
			return err
		}
		var p C.CUdeviceptr
		if err := d.check("cuMemMap", C.fm_vmm_map(C.int(d.ordinal), r.handle, C.size_t(size), &p)); err != nil {
			C.cuMemRelease(r.handle)
			return err
		}
		r.ptr = DevPtr(p)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// ImportIPC opens a peer's legacy IPC handle (only across processes: the driver refuses
// handles from the same process).
func (d *Device) ImportIPC(h IPCHandle) (*Region, error) {
	r := &Region{dev: d, kind: ShareIPC, imported: true}
	err := d.do(func() error {
		var p C.CUdeviceptr
		if err := d.check("cuIpcOpenMemHandle", C.fm_ipc_open((*C.uchar)(unsafe.Pointer(&h[0])), &p)); err != nil {
			return err
		}
		var base C.CUdeviceptr
		var sz C.size_t
		if err := d.check("cuMemGetAddressRange", C.cuMemGetAddressRange(&base, &sz, p)); err != nil {
			C.cuIpcCloseMemHandle(p)
			return err
		}
		r.ptr, r.size = DevPtr(p), int(sz)-int(p-base)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Ptr is the region's device address in this process.
func (r *Region) Ptr() DevPtr { return r.ptr }

// Size is the region's length in bytes.
func (r *Region) Size() int { return r.size }

// Kind says how the region is shared.
func (r *Region) Kind() ShareKind { return r.kind }

// Device is the device that holds (or imported) the region.
func (r *Region) Device() *Device { return r.dev }

// Close unmaps the region and releases this process's reference; the memory itself is
// freed once every importer has closed it too.
func (r *Region) Close() error {
	if r.closed {
		return nil
	}
	err := r.dev.do(func() error {
		d := r.dev
		switch {
		case r.kind == ShareVMM:
			e1 := d.check("cuMemUnmap", C.fm_vmm_unmap(C.CUdeviceptr(r.ptr), C.size_t(r.size)))
			e2 := d.check("cuMemRelease", C.cuMemRelease(r.handle))
			if e1 != nil {
				return e1
			}
			return e2
		case r.imported:
			return d.check("cuIpcCloseMemHandle", C.cuIpcCloseMemHandle(C.CUdeviceptr(r.ptr)))
		default:
			return d.check("cuMemFree", C.cuMemFree(C.CUdeviceptr(r.ptr)))
		}
	})
	if err == nil {
		r.closed = true
	}
	return err
}

// Stream is a non-blocking CUDA stream of one device.
type Stream struct {
	dev *Device
	s   cu.Stream
	// Gather's descriptor list: written into pinned staging, copied to descs on the
	// stream (which orders the device buffer's reuse); stageEv marks the copy's end.
	descs    DevPtr
	descsCap int
	stage    unsafe.Pointer
	stageEv  C.CUevent
	// syncEv is Sync's event, made on first use and recorded anew by every Sync.
	syncMu sync.Mutex
	syncEv *Event
	// Recall's helper streams and events for the copy engines (copyEngines in
	// gather.go), made on first use.
	fan   []*Stream
	fanEv []*Event
}

// NewStream creates a stream that does not synchronise with the legacy default stream.
func (d *Device) NewStream() (*Stream, error) {
	s := &Stream{dev: d}
	err := d.do(func() error {
		cs, err := cu.MakeStream(cu.NonBlocking)
		if err != nil {
			return d.wrapCu("cuStreamCreate", err)
		}
		s.s = cs
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Stream) c() C.CUstream { return C.CUstream(unsafe.Pointer(s.s.C())) }

// Device is the stream's device.
func (s *Stream) Device() *Device { return s.dev }

// Copy enqueues an asynchronous copy of n bytes between any two device addresses (mapped
// pinned host memory included).
func (s *Stream) Copy(dst, src DevPtr, n int) error {
	if n <= 0 {
		return nil
	}
	return s.dev.do(func() error {
		return s.dev.check("cuMemcpyAsync", C.cuMemcpyAsync(C.CUdeviceptr(dst), C.CUdeviceptr(src), C.size_t(n), s.c()))
	})
}

// CopyHtoD enqueues a copy from (pageable) Go memory; the driver stages src before it
// returns, so src may be reused at once.
func (s *Stream) CopyHtoD(dst DevPtr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	return s.dev.do(func() error {
		return s.dev.check("cuMemcpyHtoDAsync", C.cuMemcpyHtoDAsync(C.CUdeviceptr(dst), unsafe.Pointer(&src[0]), C.size_t(len(src)), s.c()))
	})
}

// Launch enqueues fn with the given grid, block, dynamic shared memory and arguments.
func (s *Stream) Launch(fn *Function, grid, block Dim3, shmem int, args ...Arg) error {
	if len(args) > maxKernelArgs {
		return fmt.Errorf("cuda: launch %s with %d args: %w", fn.name, len(args), ErrInvalid)
	}
	if fn.dev != s.dev {
		return fmt.Errorf("cuda: launch %s of device %d on a stream of device %d: %w", fn.name, fn.dev.ordinal, s.dev.ordinal, ErrInvalid)
	}
	return s.dev.do(func() error {
		var vp *C.uint64_t
		if len(args) > 0 {
			vp = (*C.uint64_t)(unsafe.Pointer(&args[0]))
		}
		r := C.fm_launch(fn.f, C.uint(grid.X), C.uint(grid.Y), C.uint(grid.Z),
			C.uint(block.X), C.uint(block.Y), C.uint(block.Z), C.uint(shmem), s.c(), vp, C.int(len(args)))
		return s.dev.check("cuLaunchKernel("+fn.name+")", r)
	})
}

// Sync waits until all work enqueued on the stream has finished, polling so that the
// device's owner goroutine stays free for other callers.
func (s *Stream) Sync() error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if s.syncEv == nil {
		ev, err := s.dev.NewEvent(false)
		if err != nil {
			return err
		}
		s.syncEv = ev
	}
	if err := s.syncEv.Record(s); err != nil {
		return err
	}
	return s.syncEv.Wait()
}

// Close destroys the stream (after its pending work, as the driver does).
func (s *Stream) Close() error {
	// The helpers first: closing one waits for its copies, which s's later work
	// was ordered after.
	var ferr error
	for _, a := range s.fan {
		if err := a.Close(); err != nil && ferr == nil {
			ferr = err
		}
	}
	for _, e := range s.fanEv {
		if err := e.Close(); err != nil && ferr == nil {
			ferr = err
		}
	}
	s.fan, s.fanEv = nil, nil
	if ferr != nil {
		return ferr
	}
	s.syncMu.Lock()
	var everr error
	if s.syncEv != nil {
		everr = s.syncEv.Close()
		s.syncEv = nil
	}
	s.syncMu.Unlock()
	if everr != nil {
		return everr
	}
	return s.dev.do(func() error {
		var err error
		if s.descs != 0 || s.stage != nil {
			err = s.dev.check("cuStreamSynchronize", C.cuStreamSynchronize(s.c()))
			s.freeGather()
		}
		if s.stageEv != nil {
			C.cuEventDestroy(s.stageEv)
			s.stageEv = nil
		}
		if e := s.s.Destroy(); e != nil && err == nil {
			err = s.dev.wrapCu("cuStreamDestroy", e)
		}
		return err
	})
}

// Event marks a point in a stream; Done polls it without blocking.
type Event struct {
	dev *Device
	e   cu.Event
}

// NewEvent creates an event; timing events can measure elapsed time between two records.
func (d *Device) NewEvent(timing bool) (*Event, error) {
	flags := cu.DisableTiming
	if timing {
		flags = cu.DefaultEvent
	}
	ev := &Event{dev: d}
	err := d.do(func() error {
		e, err := cu.MakeEvent(flags)
		if err != nil {
			return d.wrapCu("cuEventCreate", err)
		}
		ev.e = e
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ev, nil
}

// Record captures the work enqueued on s so far.
func (e *Event) Record(s *Stream) error {
	return e.dev.do(func() error { return e.dev.wrapCu("cuEventRecord", e.e.Record(s.s)) })
}

// Done reports whether the recorded work has completed.
func (e *Event) Done() (bool, error) {
	var done bool
	err := e.dev.do(func() error {
		r := C.cuEventQuery(C.CUevent(*(*unsafe.Pointer)(unsafe.Pointer(&e.e))))
		switch r {
		case C.CUDA_SUCCESS:
			done = true
			return nil
		case C.CUDA_ERROR_NOT_READY:
			return nil
		}
		return e.dev.check("cuEventQuery", r)
	})
	return done, err
}

// Wait polls Done until the event completes: first briefly spinning, then sleeping up to
// 100µs between polls, so neither the caller's thread nor the owner goroutine blocks inside
// the driver.
func (e *Event) Wait() error {
	for i := 0; ; i++ {
		done, err := e.Done()
		if err != nil || done {
			return err
		}
		switch {
		case i < 64:
			runtime.Gosched()
		case i < 256:
			time.Sleep(10 * time.Microsecond)
		default:
			time.Sleep(100 * time.Microsecond)
		}
	}
}

// WaitSpin is Wait for latency-bound callers (a CYCLE's scoring, which the decoder waits
// for): it polls without sleeping for up to spin, then as Wait does. A poll is a query on
// the device's owner goroutine, so other callers of the device still get their turn.
func (e *Event) WaitSpin(spin time.Duration) error {
	deadline := time.Now().Add(spin)
	for time.Now().Before(deadline) {
		done, err := e.Done()
		if err != nil || done {
			return err
		}
		runtime.Gosched()
	}
	return e.Wait()
}

// Elapsed returns the GPU time between start (recorded earlier) and e, in milliseconds;
// both must be timing events.
func (e *Event) Elapsed(start *Event) (float64, error) {
	var ms float64
	err := e.dev.do(func() error {
		v, err := start.e.Elapsed(e.e)
		ms = v
		return e.dev.wrapCu("cuEventElapsedTime", err)
	})
	return ms, err
}

// Close destroys the event.
func (e *Event) Close() error {
	return e.dev.do(func() error { return e.dev.wrapCu("cuEventDestroy", cu.DestroyEvent(&e.e)) })
}

// Module is a loaded PTX or cubin image.
type Module struct {
	dev *Device
	m   cu.Module
}

// Function is a kernel of a loaded module.
type Function struct {
	dev  *Device
	f    C.CUfunction
	name string
}

// LoadModule loads a PTX (JIT-compiled by the driver for this device) or cubin image.
func (d *Device) LoadModule(image []byte) (*Module, error) {
	if len(image) == 0 {
		return nil, fmt.Errorf("cuda: load empty module: %w", ErrInvalid)
	}
	m := &Module{dev: d}
	err := d.do(func() error {
		mod, err := cu.LoadData(string(image))
		if err != nil {
			return d.wrapCu("cuModuleLoadData", err)
		}
		m.m = mod
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// PTXDirEnv names a directory whose <base>_sm90.ptx / <base>_sm80.ptx files replace the
// embedded PTX (used on the GPU machine to test freshly compiled kernels before they are
// committed).
const PTXDirEnv = "FLASHMEM_PTX_DIR"

// LoadPTX loads the best PTX variant for this device from fsys: <base>_sm90.ptx on compute
// capability 9.0 and newer, else <base>_sm80.ptx. A file of the same name in $FLASHMEM_PTX_DIR
// takes precedence.
func (d *Device) LoadPTX(fsys fs.FS, base string) (*Module, error) {
	names := []string{base + "_sm80.ptx"}
	if d.ccMajor >= 9 {
		names = []string{base + "_sm90.ptx", base + "_sm80.ptx"}
	}
	if dir := os.Getenv(PTXDirEnv); dir != "" {
		for _, n := range names {
			if b, err := os.ReadFile(filepath.Join(dir, n)); err == nil {
				return d.LoadModule(b)
			}
		}
	}
	for _, n := range names {
		if b, err := fs.ReadFile(fsys, n); err == nil {
			return d.LoadModule(b)
		}
	}
	return nil, fmt.Errorf("cuda: no PTX %v for sm_%d%d: %w", names, d.ccMajor, d.ccMinor, ErrInvalid)
}

// Function looks up a kernel by its (extern "C") name.
func (m *Module) Function(name string) (*Function, error) {
	f := &Function{dev: m.dev, name: name}
	err := m.dev.do(func() error {
		fn, err := m.m.Function(name)
		if err != nil {
			return m.dev.wrapCu("cuModuleGetFunction("+name+")", err)
		}
		// cu.Function is a struct holding only the CUfunction handle.
		f.f = *(*C.CUfunction)(unsafe.Pointer(&fn))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return f, nil
}

// Unload unloads the module; its functions must not be launched afterwards.
func (m *Module) Unload() error {
	return m.dev.do(func() error { return m.dev.wrapCu("cuModuleUnload", m.m.Unload()) })
}

// SetMaxDynamicShared allows launches with more than 48 KiB of dynamic shared memory.
func (f *Function) SetMaxDynamicShared(bytes int) error {
	return f.dev.do(func() error {
		return f.dev.check("cuFuncSetAttribute", C.cuFuncSetAttribute(f.f,
			C.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, C.int(bytes)))
	})
}

// Name is the kernel's name.
func (f *Function) Name() string { return f.name }
