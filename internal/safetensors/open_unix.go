//go:build unix

package safetensors

import (
	"fmt"
	"os"
	"syscall"
)

// Open maps the file read-only and parses it. Weight files are hundreds of MB, so
// mapping avoids a copy and lets the page cache share them between processes.
func Open(path string) (*File, error) {
	fd, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fd.Close()
	st, err := fd.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size < 8 {
		return nil, fmt.Errorf("%w: %s: %d bytes, need at least 8 for the header length", ErrTruncated, path, size)
	}
	if int64(int(size)) != size {
		return nil, fmt.Errorf("%w: %s: %d bytes do not fit the address space", ErrTruncated, path, size)
	}
	buf, err := syscall.Mmap(int(fd.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("safetensors: mmap %s: %w", path, err)
	}
	f, err := Parse(buf)
	if err != nil {
		_ = syscall.Munmap(buf)
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f.closer = func() error { return syscall.Munmap(buf) }
	return f, nil
}
