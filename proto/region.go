package proto

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// RegionKind says what a reserve region's file descriptor is, and so how a
// client maps it.
type RegionKind uint32

const (
	// RegionMemfd is host memory: a sealed memfd to mmap (Region.Map).
	RegionMemfd RegionKind = 0
	// RegionCUDA is GPU memory on RegionDesc.Device: a CUDA VMM allocation
	// exported as a POSIX file descriptor, imported with
	// cuMemImportFromShareableHandle (CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
	// and mapped with cuMemAddressReserve, cuMemMap and cuMemSetAccess. It
	// cannot be mmap'ed.
	RegionCUDA RegionKind = 1
)

func (k RegionKind) String() string {
	switch k {
	case RegionMemfd:
		return "memfd"
	case RegionCUDA:
		return "cuda"
	}
	return fmt.Sprintf("kind(%d)", uint32(k))
}

// ErrDeviceRegion is returned by Region.Map for a region in GPU memory:
// its fd is a CUDA handle, not something mmap can map.
var ErrDeviceRegion = errors.New("proto: region is GPU memory, import it with CUDA")

// Region is a memory region handed over as a file descriptor: the
// connection's staging region or a session's reserve region.
//
// Ownership: the receiver owns File and closes it (Close) when done; a
// mapping made with Map stays valid after File is closed and is released
// with Unmap. The daemon owns the memory itself; it stays allocated until
// both the daemon and every holder of the fd or a mapping let go.
type Region struct {
	RegionDesc
	File *os.File
}

// Map maps the whole region (RegionDesc.Size bytes) shared and writable:
// the decoder reads resident pages from a reserve region and writes decode
// chunks into its tail cells. The caller releases it with Unmap. A
// RegionCUDA region is refused with ErrDeviceRegion (open the session with
// DeviceHostOnly to get host memory on a GPU host).
func (r *Region) Map() ([]byte, error) {
	if r.Kind != RegionMemfd {
		return nil, fmt.Errorf("%w: %v region on device %d (cuMemImportFromShareableHandle, or OPEN with DeviceHostOnly for host memory)",
			ErrDeviceRegion, r.Kind, r.Device)
	}
	return mapFile(r.File, r.Size)
}

// Close closes the region's fd (mappings stay valid).
func (r *Region) Close() error {
	if r.File == nil {
		return nil
	}
	err := r.File.Close()
	r.File = nil
	return err
}

// mapFile maps size bytes of f after checking that the file really is that
// large, so a short file cannot turn later accesses into SIGBUS.
func mapFile(f *os.File, size uint64) ([]byte, error) {
	if f == nil {
		return nil, fmt.Errorf("%w: region has no fd", ErrBadHeader)
	}
	if size == 0 || size > uint64(maxInt) {
		return nil, fmt.Errorf("%w: region size %d", ErrMalformed, size)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("proto: stat region: %w", err)
	}
	if st.Size() < 0 || uint64(st.Size()) < size {
		return nil, fmt.Errorf("%w: region fd has %d bytes, descriptor says %d", ErrMalformed, st.Size(), size)
	}
	sc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("proto: region fd: %w", err)
	}
	var mem []byte
	var merr error
	if err := sc.Control(func(fd uintptr) {
		mem, merr = unix.Mmap(int(fd), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	}); err != nil {
		return nil, fmt.Errorf("proto: region fd: %w", err)
	}
	if merr != nil {
		return nil, fmt.Errorf("proto: mmap region of %d bytes: %w", size, merr)
	}
	return mem, nil
}

const maxInt = int(^uint(0) >> 1)

// Unmap releases a mapping returned by Region.Map.
func Unmap(mem []byte) error {
	if mem == nil {
		return nil
	}
	return unix.Munmap(mem)
}
