package tiers

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// span is one contiguous copy between a region and a host buffer.
type span struct {
	regionOff int64
	bufOff    int
	n         int
}

// regionMemory is what a reserve region needs from the memory behind it. The
// CPU build backs it with a memfd; the CUDA build (issue 4) backs it with device
// memory exported through VMM/IPC handles. Copies are expressed as span lists so
// a device implementation can issue one batched transfer per page instead of one
// per layer row.
type regionMemory interface {
	write(spans []span, src []byte) error
	read(spans []span, dst []byte) error
	// fd is the handle a client maps (SCM_RIGHTS); -1 if the memory cannot be
	// shared by file descriptor.
	fd() int
	size() int64
	close() error
}

// writeJob is one page of a batched write.
type writeJob struct {
	spans []span
	src   []byte
}

// batchWriter is implemented by memories that copy many pages in one transfer:
// the GPU backend issues one launch for a whole recall batch instead of one
// launch and one completion wait per page. Region.WritePages uses it; other
// memories get one write per page.
type batchWriter interface {
	writeMany(jobs []writeJob) error
}

// zeroer is implemented by memories that can clear spans without a source
// buffer (memset); others are cleared by writing zeros.
type zeroer interface {
	zero(spans []span) error
}

// populater is implemented by memories whose pages the kernel supplies on
// first touch (the memfd): populate faults in the byte ranges ahead of use,
// so the copies into a slot's first use do not pay for allocating and
// zeroing its pages. It never changes the memory's contents.
type populater interface {
	populate(ranges [][2]int64)
}

// Backend creates the memory behind reserve regions. The zero value of
// RegionConfig uses MemfdBackend.
type Backend interface {
	newMemory(name string, size int64) (regionMemory, error)
}

// MemfdBackend returns the CPU backend: each region is a sealed memfd mapped
// shared into the daemon, which the client maps after receiving its fd.
func MemfdBackend() Backend { return memfdBackend{} }

type memfdBackend struct{}

func (memfdBackend) newMemory(name string, size int64) (regionMemory, error) {
	return newMemfd(name, size)
}

type memfdMemory struct {
	mu         sync.Mutex
	f          *os.File
	data       []byte
	noPopulate bool // the kernel refused both ways of populating
}

func newMemfd(name string, size int64) (*memfdMemory, error) {
	if size <= 0 {
		return nil, fmt.Errorf("memfd %q: size %d: %w", name, size, ErrSize)
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create %q: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := unix.Ftruncate(fd, size); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd %q: ftruncate %d: %w", name, size, err)
	}
	// A sealed size means a client that maps the fd cannot shrink it under the
	// daemon (which would turn the daemon's next copy into SIGBUS).
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd %q: seal: %w", name, err)
	}
	data, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd %q: mmap %d: %w", name, size, err)
	}
	return &memfdMemory{f: f, data: data}, nil
}

func (m *memfdMemory) bytes() []byte { return m.data }

func (m *memfdMemory) write(spans []span, src []byte) error {
	for _, s := range spans {
		copy(m.data[s.regionOff:s.regionOff+int64(s.n)], src[s.bufOff:s.bufOff+s.n])
	}
	return nil
}

func (m *memfdMemory) read(spans []span, dst []byte) error {
	for _, s := range spans {
		copy(dst[s.bufOff:s.bufOff+s.n], m.data[s.regionOff:s.regionOff+int64(s.n)])
	}
	return nil
}

func (m *memfdMemory) zero(spans []span) error {
	for _, s := range spans {
		clear(m.data[s.regionOff : s.regionOff+int64(s.n)])
	}
	return nil
}

// populateChunk bounds one populate call, so close waits for at most one.
const populateChunk = 4 << 20

// populate faults the ranges in, writable, with MADV_POPULATE_WRITE (Linux
// 5.14); where the kernel lacks it, fallocate on the memfd allocates the
// pages (zeroed, not yet mapped); where that fails too, it does nothing and
// the pages come on first touch as before. Under mu, so close never unmaps
// the memory under a call.
func (m *memfdMemory) populate(ranges [][2]int64) {
	const pg = 4096
	for _, r := range ranges {
		// len(m.data) is read under mu: close sets it to nil.
		start, end := r[0]/pg*pg, (r[1]+pg-1)/pg*pg
		for off := start; off < end; off += populateChunk {
			m.mu.Lock()
			if m.data == nil || m.noPopulate {
				m.mu.Unlock()
				return
			}
			if off >= int64(len(m.data)) {
				m.mu.Unlock()
				break
			}
			n := min(end, int64(len(m.data)), off+populateChunk) - off
			if err := unix.Madvise(m.data[off:off+n], unix.MADV_POPULATE_WRITE); err != nil {
				if err := unix.Fallocate(int(m.f.Fd()), 0, off, n); err != nil {
					m.noPopulate = true
				}
			}
			m.mu.Unlock()
		}
	}
}

func (m *memfdMemory) fd() int     { return int(m.f.Fd()) }
func (m *memfdMemory) size() int64 { return int64(len(m.data)) }

func (m *memfdMemory) close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.data == nil {
		return nil
	}
	err := unix.Munmap(m.data)
	m.data = nil
	if cerr := m.f.Close(); err == nil {
		err = cerr
	}
	return err
}
