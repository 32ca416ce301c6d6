//go:build cuda

package tiers

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/flashmemory/flashmemory/internal/cuda"
)

// CUDABackend returns the GPU backend (issue 4): each region is shareable device memory on
// dev — a VMM allocation whose POSIX file descriptor FD returns (the decoder imports it
// with cuMemImportFromShareableHandle and maps it; see scripts/torch_client_example.py), or
// legacy IPC memory where the device cannot export fds (FD is then -1). A page write or
// read is one gather launch covering every layer row of the page, through a pinned staging
// buffer owned by the region.
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
type cudaMemory struct {
	mu    sync.Mutex
	dev   *cuda.Device
	reg   *cuda.Region
	st    *cuda.Stream
	stage *cuda.HostBuffer
	descs []cuda.CopyDesc
	fdv   int
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
		return err
	}
	return m.st.Sync()
}

func (m *cudaMemory) write(spans []span, src []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.staging(spans); err != nil {
		return err
	}
	b := m.stage.Bytes()
	for _, s := range spans {
		copy(b[s.bufOff:s.bufOff+s.n], src[s.bufOff:s.bufOff+s.n])
	}
	return m.copy(spans, true)
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
