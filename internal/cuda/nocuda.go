//go:build !cuda

package cuda

import (
	"io/fs"
	"time"
)

// Available reports whether this build was made with the cuda tag.
const Available = false

// PTXDirEnv names a directory whose <base>_sm90.ptx / <base>_sm80.ptx files replace the
// embedded PTX in cuda builds.
const PTXDirEnv = "FLASHMEM_PTX_DIR"

// DeviceCount returns ErrNoCUDA in this build.
func DeviceCount() (int, error) { return 0, ErrNoCUDA }

// Device is a GPU; this build has none.
type Device struct{}

// Open returns ErrNoCUDA in this build.
func Open(ordinal int) (*Device, error) { return nil, ErrNoCUDA }

// Do returns ErrNoCUDA in this build.
func (d *Device) Do(fn func() error) error { return ErrNoCUDA }

// Close does nothing in this build.
func (d *Device) Close() error { return nil }

// Ordinal returns -1 in this build.
func (d *Device) Ordinal() int { return -1 }

// Name returns "" in this build.
func (d *Device) Name() string { return "" }

// ComputeCapability returns (0, 0) in this build.
func (d *Device) ComputeCapability() (major, minor int) { return 0, 0 }

// SMCount returns 0 in this build.
func (d *Device) SMCount() int { return 0 }

// VMMSupported returns false in this build.
func (d *Device) VMMSupported() bool { return false }

// MemInfo returns ErrNoCUDA in this build.
func (d *Device) MemInfo() (free, total int64, err error) { return 0, 0, ErrNoCUDA }

// Alloc returns ErrNoCUDA in this build.
func (d *Device) Alloc(size int) (DevPtr, error) { return 0, ErrNoCUDA }

// Free returns ErrNoCUDA in this build.
func (d *Device) Free(p DevPtr) error { return ErrNoCUDA }

// CopyHtoD returns ErrNoCUDA in this build.
func (d *Device) CopyHtoD(dst DevPtr, src []byte) error { return ErrNoCUDA }

// CopyDtoH returns ErrNoCUDA in this build.
func (d *Device) CopyDtoH(dst []byte, src DevPtr) error { return ErrNoCUDA }

// Memset returns ErrNoCUDA in this build.
func (d *Device) Memset(p DevPtr, v byte, n int) error { return ErrNoCUDA }

// HostBuffer is pinned host memory; this build has none.
type HostBuffer struct{}

// AllocHost returns ErrNoCUDA in this build.
func (d *Device) AllocHost(size int) (*HostBuffer, error) { return nil, ErrNoCUDA }

// RegisterHost returns ErrNoCUDA in this build.
func (d *Device) RegisterHost(b []byte) (*HostBuffer, error) { return nil, ErrNoCUDA }

// Bytes returns nil in this build.
func (h *HostBuffer) Bytes() []byte { return nil }

// Ptr returns 0 in this build.
func (h *HostBuffer) Ptr() DevPtr { return 0 }

// Size returns 0 in this build.
func (h *HostBuffer) Size() int { return 0 }

// Free returns ErrNoCUDA in this build.
func (h *HostBuffer) Free() error { return ErrNoCUDA }

// Region is shareable device memory; this build has none.
type Region struct{}

// AllocShareable returns ErrNoCUDA in this build.
func (d *Device) AllocShareable(size int, kind ShareKind) (*Region, error) { return nil, ErrNoCUDA }

// ExportFD returns ErrNoCUDA in this build.
func (r *Region) ExportFD() (int, error) { return -1, ErrNoCUDA }

// IPCHandle returns ErrNoCUDA in this build.
func (r *Region) IPCHandle() (IPCHandle, error) { return IPCHandle{}, ErrNoCUDA }

// ImportFD returns ErrNoCUDA in this build.
func (d *Device) ImportFD(fd, size int) (*Region, error) { return nil, ErrNoCUDA }

// ImportIPC returns ErrNoCUDA in this build.
func (d *Device) ImportIPC(h IPCHandle) (*Region, error) { return nil, ErrNoCUDA }

// Ptr returns 0 in this build.
func (r *Region) Ptr() DevPtr { return 0 }

// Size returns 0 in this build.
func (r *Region) Size() int { return 0 }

// Kind returns 0 in this build.
func (r *Region) Kind() ShareKind { return 0 }

// Device returns nil in this build.
func (r *Region) Device() *Device { return nil }

// Close returns ErrNoCUDA in this build.
func (r *Region) Close() error { return ErrNoCUDA }

// Stream is a CUDA stream; this build has none.
type Stream struct{}

// NewStream returns ErrNoCUDA in this build.
func (d *Device) NewStream() (*Stream, error) { return nil, ErrNoCUDA }

// Device returns nil in this build.
func (s *Stream) Device() *Device { return nil }

// Copy returns ErrNoCUDA in this build.
func (s *Stream) Copy(dst, src DevPtr, n int) error { return ErrNoCUDA }

// CopyHtoD returns ErrNoCUDA in this build.
func (s *Stream) CopyHtoD(dst DevPtr, src []byte) error { return ErrNoCUDA }

// Launch returns ErrNoCUDA in this build.
func (s *Stream) Launch(fn *Function, grid, block Dim3, shmem int, args ...Arg) error {
	return ErrNoCUDA
}

// Gather returns ErrNoCUDA in this build.
func (s *Stream) Gather(descs []CopyDesc) error { return ErrNoCUDA }

// CopyBatch returns ErrNoCUDA in this build.
func (s *Stream) CopyBatch(descs []CopyDesc) error { return ErrNoCUDA }

// Recall returns ErrNoCUDA in this build.
func (s *Stream) Recall(descs []CopyDesc) error { return ErrNoCUDA }

// Sync returns ErrNoCUDA in this build.
func (s *Stream) Sync() error { return ErrNoCUDA }

// Close returns ErrNoCUDA in this build.
func (s *Stream) Close() error { return ErrNoCUDA }

// Event marks a point in a stream; this build has none.
type Event struct{}

// NewEvent returns ErrNoCUDA in this build.
func (d *Device) NewEvent(timing bool) (*Event, error) { return nil, ErrNoCUDA }

// Record returns ErrNoCUDA in this build.
func (e *Event) Record(s *Stream) error { return ErrNoCUDA }

// Done returns ErrNoCUDA in this build.
func (e *Event) Done() (bool, error) { return false, ErrNoCUDA }

// Wait returns ErrNoCUDA in this build.
func (e *Event) Wait() error { return ErrNoCUDA }

// WaitSpin returns ErrNoCUDA in this build.
func (e *Event) WaitSpin(spin time.Duration) error { return ErrNoCUDA }

// Elapsed returns ErrNoCUDA in this build.
func (e *Event) Elapsed(start *Event) (float64, error) { return 0, ErrNoCUDA }

// Close returns ErrNoCUDA in this build.
func (e *Event) Close() error { return ErrNoCUDA }

// Module is a loaded kernel image; this build has none.
type Module struct{}

// Function is a kernel; this build has none.
type Function struct{}

// LoadModule returns ErrNoCUDA in this build.
func (d *Device) LoadModule(image []byte) (*Module, error) { return nil, ErrNoCUDA }

// LoadPTX returns ErrNoCUDA in this build.
func (d *Device) LoadPTX(fsys fs.FS, base string) (*Module, error) { return nil, ErrNoCUDA }

// Function returns ErrNoCUDA in this build.
func (m *Module) Function(name string) (*Function, error) { return nil, ErrNoCUDA }

// Unload returns ErrNoCUDA in this build.
func (m *Module) Unload() error { return ErrNoCUDA }

// SetMaxDynamicShared returns ErrNoCUDA in this build.
func (f *Function) SetMaxDynamicShared(bytes int) error { return ErrNoCUDA }

// Name returns "" in this build.
func (f *Function) Name() string { return "" }

// WaitEvent needs CUDA.
func (s *Stream) WaitEvent(e *Event) error { return ErrNoCUDA }

// AllocHostWriteCombined needs CUDA.
func (d *Device) AllocHostWriteCombined(size int) (*HostBuffer, error) { return nil, ErrNoCUDA }
