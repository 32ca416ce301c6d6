//go:build cuda

package tiers

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/flashmemory/flashmemory/internal/cuda"
)

// CUDABackend returns the GPU backend (issue 4): each region is shareable device memory on
// dev — a VMM allocation whose POSIX file descriptor FD returns (the decoder imports it
// with cuMemImportFromShareableHandle and maps it; see scripts/torch_client_example.py), or
// legacy IPC memory where the device cannot export fds (FD is then -1). A page write or
// read is one launch covering every layer row of the page (gather kernel, or the copy
// engines for large rows): straight from the host mirror when its extents are pinned
// (PinnedAllocator), else through a pinned staging buffer owned by the region. Each copy
// runs on the region's own stream and completes on an event the caller polls; the
// device's owner goroutine never blocks in the driver.
func CUDABackend(dev *cuda.Device) Backend { return cudaBackend{dev} }

type cudaBackend struct{ dev *cuda.Device }

func (b cudaBackend) newMemory(name string, size int64) (regionMemory, error) {
	if size <= 0 {
		return nil, fmt.Errorf("cuda region %q: size %d: %w", name, size, ErrSize)
	}
	reg, err := b.dev.AllocShareable(int(size), 0)
	if err != nil {
		return nil, fmt.Errorf("cuda region %q: %w", name, err)
	}
	st, err := b.dev.NewStream()
	if err != nil {
		reg.Close()
		return nil, fmt.Errorf("cuda region %q: %w", name, err)
	}
	m := &cudaMemory{dev: b.dev, reg: reg, st: st, fdv: -1}
	if reg.Kind() == cuda.ShareVMM {
		if m.fdv, err = reg.ExportFD(); err != nil {
			m.close()
			return nil, fmt.Errorf("cuda region %q: %w", name, err)
		}
	}
	return m, nil
}

// cudaMemory serialises its copies: one staging buffer and one stream per region.
var _ batchWriter = (*cudaMemory)(nil)

type cudaMemory struct {
	mu    sync.Mutex
	dev   *cuda.Device
	reg   *cuda.Region
	st    *cuda.Stream
	stage *cuda.HostBuffer
	descs []cuda.CopyDesc
	fdv   int
	// writes copied straight from pinned memory and through the staging buffer (tests).
	direct, staged int
}

func (m *cudaMemory) staging(spans []span) (int, error) {
	need := 0
	for _, s := range spans {
		need = max(need, s.bufOff+s.n)
	}
	if m.stage == nil || m.stage.Size() < need {
		if m.stage != nil {
			if err := m.stage.Free(); err != nil {
				return 0, err
			}
			m.stage = nil
		}
		h, err := m.dev.AllocHost(max(need, 1<<16))
		if err != nil {
			return 0, err
		}
		m.stage = h
	}
	return need, nil
}

func (m *cudaMemory) copy(spans []span, toDevice bool) error {
	m.descs = m.descs[:0]
	for _, s := range spans {
		host := m.stage.Ptr() + cuda.DevPtr(s.bufOff)
		dev := m.reg.Ptr() + cuda.DevPtr(s.regionOff)
		if toDevice {
			m.descs = append(m.descs, cuda.CopyDesc{Src: host, Dst: dev, Len: uint64(s.n)})
		} else {
			m.descs = append(m.descs, cuda.CopyDesc{Src: dev, Dst: host, Len: uint64(s.n)})
		}
	}
	if err := m.st.Gather(m.descs); err != nil {
		return m.drain(err)
	}
	return m.drain(m.wait())
}

// drain passes err through; when it is not nil, it first waits for the region's stream
// (best effort) so that no copy queued before the failure still reads a mirror slot or
// the staging buffer after the caller lets go of it.
func (m *cudaMemory) drain(err error) error {
	if err != nil {
		_ = m.st.Sync()
	}
	return err
}

// wait blocks the calling goroutine (a mover worker or a cycle, never the socket loop)
// until the copies enqueued on the region's stream are done (an event polled by
// Stream.Sync).
func (m *cudaMemory) wait() error { return m.st.Sync() }

func (m *cudaMemory) write(spans []span, src []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if base, ok := pinnedPtr(src, m.dev); ok {
		// src is a pinned mirror slot (the mover holds a reference to it until this
		// returns): copy it by DMA / kernel directly, no staging copy.
		m.descs = m.descs[:0]
		for _, s := range spans {
			m.descs = append(m.descs, cuda.CopyDesc{Src: base + cuda.DevPtr(s.bufOff), Dst: m.reg.Ptr() + cuda.DevPtr(s.regionOff), Len: uint64(s.n)})
		}
		m.direct++
		cudaWrites.pinned.Add(1)
		if err := m.st.Recall(m.descs); err != nil {
			return m.drain(err)
		}
		return m.drain(m.wait())
	}
	return m.writeStaged(spans, src)
}

// writeStaged copies src through the region's pinned staging buffer; m.mu is held.
func (m *cudaMemory) writeStaged(spans []span, src []byte) error {
	m.staged++
	cudaWrites.staged.Add(1)
	if _, err := m.staging(spans); err != nil {
		return err
	}
	b := m.stage.Bytes()
	for _, s := range spans {
		copy(b[s.bufOff:s.bufOff+s.n], src[s.bufOff:s.bufOff+s.n])
	}
	return m.copy(spans, true)
}

// writeMany copies every job whose source is pinned mirror memory in one launch (or one
// batch of copy-engine copies) with one completion wait; any other job goes through
// staging afterwards, one at a time.
func (m *cudaMemory) writeMany(jobs []writeJob) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.descs = m.descs[:0]
	var rest []writeJob
	for _, j := range jobs {
		base, ok := pinnedPtr(j.src, m.dev)
		if !ok {
			rest = append(rest, j)
			continue
		}
		for _, s := range j.spans {
			m.descs = append(m.descs, cuda.CopyDesc{Src: base + cuda.DevPtr(s.bufOff), Dst: m.reg.Ptr() + cuda.DevPtr(s.regionOff), Len: uint64(s.n)})
		}
	}
	if n := len(jobs) - len(rest); n > 0 {
		m.direct += n
		cudaWrites.pinned.Add(uint64(n))
		if err := m.st.Recall(m.descs); err != nil {
			return m.drain(err)
		}
		if err := m.drain(m.wait()); err != nil {
			return err
		}
	}
	for _, j := range rest {
		if err := m.writeStaged(j.spans, j.src); err != nil {
			return err
		}
	}
	return nil
}

func (m *cudaMemory) read(spans []span, dst []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.staging(spans); err != nil {
		return err
	}
	if err := m.copy(spans, false); err != nil {
		return err
	}
	b := m.stage.Bytes()
	for _, s := range spans {
		copy(dst[s.bufOff:s.bufOff+s.n], b[s.bufOff:s.bufOff+s.n])
	}
	return nil
}

func (m *cudaMemory) fd() int     { return m.fdv }
func (m *cudaMemory) size() int64 { return int64(m.reg.Size()) }

func (m *cudaMemory) close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	if m.fdv >= 0 {
		keep(unix.Close(m.fdv))
		m.fdv = -1
	}
	if m.st != nil {
		keep(m.st.Close())
		m.st = nil
	}
	if m.stage != nil {
		keep(m.stage.Free())
		m.stage = nil
	}
	if m.reg != nil {
		keep(m.reg.Close())
		m.reg = nil
	}
	return first
}

// cudaWrites counts page writes into GPU regions by path, process-wide.
var cudaWrites struct{ pinned, staged atomic.Uint64 }

// CUDAWriteStats returns how many page writes into GPU reserve regions copied straight
// from the pinned host mirror and how many went through a staging buffer.
func CUDAWriteStats() (pinned, staged uint64) {
	return cudaWrites.pinned.Load(), cudaWrites.staged.Load()
}

// PinnedAllocator is the host mirror's allocator on GPU hosts: anonymous mappings
// page-locked and mapped for every CUDA context (cuMemHostRegister, portable), so a recall
// copies a page from its mirror slot by DMA without a staging copy, at PCIe rate (pageable
// memory reaches 3-15 GB/s on the H100, pinned 53). dev does the registration; the pinning
// holds for every device. Registration costs time per call, which is why mirror extents
// are few and large.
func PinnedAllocator(dev *cuda.Device) Allocator { return pinnedAllocator{dev} }

type pinnedAllocator struct{ dev *cuda.Device }

// pinnedExtent is one registered mirror extent.
type pinnedExtent struct {
	base, end uintptr
	dptr      cuda.DevPtr
	buf       *cuda.HostBuffer
}

// pinned lists every registered extent by base address, for pinnedPtr.
var pinned struct {
	mu  sync.RWMutex
	ext []pinnedExtent
}

func (a pinnedAllocator) alloc(n int) ([]byte, error) {
	b, err := mmapAllocator{}.alloc(n)
	if err != nil {
		return nil, err
	}
	h, err := a.dev.RegisterHost(b)
	if err != nil {
		_ = unix.Munmap(b)
		return nil, fmt.Errorf("pin mirror extent of %d B: %w", n, err)
	}
	base := uintptr(unsafe.Pointer(&b[0]))
	e := pinnedExtent{base: base, end: base + uintptr(n), dptr: h.Ptr(), buf: h}
	pinned.mu.Lock()
	i, _ := slices.BinarySearchFunc(pinned.ext, base, func(x pinnedExtent, t uintptr) int { return cmpUintptr(x.base, t) })
	pinned.ext = slices.Insert(pinned.ext, i, e)
	pinned.mu.Unlock()
	return b, nil
}

func (a pinnedAllocator) free(b []byte) error {
	base := uintptr(unsafe.Pointer(&b[0]))
	pinned.mu.Lock()
	i, ok := slices.BinarySearchFunc(pinned.ext, base, func(x pinnedExtent, t uintptr) int { return cmpUintptr(x.base, t) })
	var e pinnedExtent
	if ok {
		e = pinned.ext[i]
		pinned.ext = slices.Delete(pinned.ext, i, i+1)
	}
	pinned.mu.Unlock()
	var err error
	if ok {
		err = e.buf.Free() // unregister before the pages go away
	}
	if uerr := unix.Munmap(b); err == nil {
		err = uerr
	}
	return err
}

func cmpUintptr(a, b uintptr) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// pinnedPtr returns the device address of b when all of it lies in one pinned extent.
// Registration is portable and addressing unified, so the address that
// cuMemHostGetDevicePointer gave at registration serves every device.
func pinnedPtr(b []byte, _ *cuda.Device) (cuda.DevPtr, bool) {
	if len(b) == 0 {
		return 0, false
	}
	p := uintptr(unsafe.Pointer(&b[0]))
	pinned.mu.RLock()
	defer pinned.mu.RUnlock()
	i, ok := slices.BinarySearchFunc(pinned.ext, p, func(x pinnedExtent, t uintptr) int { return cmpUintptr(x.base, t) })
	if !ok {
		i-- // the extent starting below p
	}
	if i < 0 || i >= len(pinned.ext) {
		return 0, false
	}
	e := pinned.ext[i]
	if p < e.base || p+uintptr(len(b)) > e.end {
		return 0, false
	}
	return e.dptr + cuda.DevPtr(p-e.base), true
}
