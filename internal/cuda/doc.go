// Package cuda is FlashMemory's thin layer over the CUDA driver API: devices owned by one
// OS-thread-locked goroutine each, pinned host memory (fresh or registered over an existing
// mmap'ed arena), device memory that can be shared with another process (VMM allocations
// exported as POSIX file descriptors, legacy IPC handles where the device lacks them),
// streams, events, PTX modules and kernel launches, plus the one kernel every tier needs: a
// gather/scatter copy of many scattered rows in a single launch.
//
// Everything that touches CUDA is built only with the `cuda` build tag. The default build
// compiles the same exported API from nocuda.go, where every call returns ErrNoCUDA, so
// packages above can be written once and decide at run time (errors.Is(err, ErrNoCUDA)).
// gorgonia.org/cu is used where it covers the driver API; this package's own cgo adds what it
// lacks (cuMemHostAlloc/Register, IPC, VMM export/import, launches with typed arguments).
//
// Threading: CUDA calls act on the calling OS thread's current context, so each Device runs
// a goroutine locked to its OS thread with the device's primary context current, and every
// method of Device, Stream, Event, Module and Region submits its work to that goroutine.
// Device.Do runs an arbitrary closure there (for direct gorgonia.org/cu calls); methods called
// from inside such a closure run inline instead of deadlocking. Any number of devices can be
// open at once, each with its own owner goroutine.
//
// Typical use:
//
//	dev, err := cuda.Open(0)            // ErrNoCUDA in the default build
//	host, err := dev.AllocHost(1<<30)   // pinned, mapped, portable across devices
//	reg, err := dev.AllocShareable(256<<20)
//	fd, err := reg.ExportFD()           // send with SCM_RIGHTS; the peer calls ImportFD
//	s, err := dev.NewStream()
//	err = s.Recall(descs)               // mirror -> reserve: copy engines on four streams for
//	                                    // rows >= 256 KiB, else one gather launch for every
//	                                    // (src, dst, len) row
//	ev, err := dev.NewEvent(false)
//	err = ev.Record(s)                  // poll ev.Done() from the socket loop; never block it
//
// Gather also runs device -> pinned host (the commit path); CopyBatch is the copy-engine
// batch alone (cuMemcpyBatchAsync, CUDA 12.8+ drivers, ErrUnsupported elsewhere).
//
// Caveat: gorgonia.org/cu calls cuInit in its package init and exits the process when that
// fails, so a cuda-tagged binary must only run where libcuda.so.1 and a GPU exist; hosts
// without a GPU run the default build.
package cuda
