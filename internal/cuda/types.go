package cuda

import (
	"fmt"
	"math"
)

// DevPtr is a device virtual address. With unified addressing (every 64-bit Linux driver),
// mapped pinned host memory has one too, which is how kernels read the host mirror directly.
type DevPtr uintptr

// Dim3 is a CUDA grid or block shape.
type Dim3 struct{ X, Y, Z uint32 }

// ShareKind says how a Region's memory can be handed to another process.
type ShareKind int

const (
	// ShareVMM: a cuMemCreate allocation whose handle is exported as a POSIX file
	// descriptor (passed with SCM_RIGHTS, imported with cuMemImportFromShareableHandle).
	ShareVMM ShareKind = iota + 1
	// ShareIPC: a cuMemAlloc allocation shared through a 64-byte cuIpcGetMemHandle handle
	// (cuIpcOpenMemHandle on the other side); the fallback where VMM export is unsupported.
	ShareIPC
)

func (k ShareKind) String() string {
	switch k {
	case ShareVMM:
		return "vmm-posix-fd"
	case ShareIPC:
		return "legacy-ipc"
	}
	return fmt.Sprintf("ShareKind(%d)", int(k))
}

// IPCHandle is the opaque legacy IPC handle of a ShareIPC region (CU_IPC_HANDLE_SIZE bytes).
type IPCHandle [64]byte

// CopyDesc is one row of a gather/scatter copy: Len bytes from Src to Dst, both device
// addresses (mapped pinned host memory included). The layout matches the kernel's struct.
type CopyDesc struct {
	Src, Dst DevPtr
	Len      uint64
}

// Arg is one kernel argument, passed by value in an 8-byte slot; the driver reads as many
// bytes as the kernel's parameter has, so 4-byte values sit in the low half (little endian).
type Arg uint64

// ArgPtr passes a device pointer.
func ArgPtr(p DevPtr) Arg { return Arg(p) }

// ArgU32 passes a 32-bit unsigned (or, bit-cast, signed) integer.
func ArgU32(v uint32) Arg { return Arg(v) }

// ArgI32 passes a 32-bit signed integer.
func ArgI32(v int32) Arg { return Arg(uint32(v)) }

// ArgU64 passes a 64-bit integer.
func ArgU64(v uint64) Arg { return Arg(v) }

// ArgF32 passes a float.
func ArgF32(v float32) Arg { return Arg(math.Float32bits(v)) }

// maxKernelArgs bounds the argument slots the launch helper builds on the C stack.
const maxKernelArgs = 32

// gatherAlign is the alignment the vectorised gather path needs of src, dst and len; rows
// that miss it are copied by a slower 1-byte path in the same launch.
const gatherAlign = 16
