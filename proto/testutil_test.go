package proto

import (
	"io"
	"net"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// socketpair returns two connected unix stream sockets.
func socketpair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	a, b := conv(fds[0]), conv(fds[1])
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// memfd returns a memfd of size bytes.
func memfd(t testing.TB, name string, size int64) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), name)
}

// memfdsOpen counts this process's descriptors that refer to a memfd named
// name ("" for any memfd). Counting only memfds keeps leak checks immune
// to unrelated descriptors opening or closing meanwhile (finalizers, the
// runtime).
func memfdsOpen(t testing.TB, name string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	n := 0
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err == nil && strings.HasPrefix(target, "/memfd:"+name) {
			n++
		}
	}
	return n
}

// frameBytes encodes a frame as WriteFrame would put it on the wire.
func frameBytes(h Header, body []byte) []byte {
	buf := make([]byte, HeaderSize+len(body))
	copy(buf[HeaderSize:], body)
	h.BodyLen = uint32(len(body))
	h.CRC = Checksum(body)
	PutHeader(buf, h)
	return buf
}

// streamConn is a msgConn over a byte slice that returns at most chunk
// bytes per read (0: everything), so readers see short reads.
type streamConn struct {
	data  []byte
	chunk int
	reads int
}

func (s *streamConn) ReadMsgUnix(b, oob []byte) (int, int, int, *net.UnixAddr, error) {
	s.reads++
	if len(s.data) == 0 {
		return 0, 0, 0, nil, io.EOF
	}
	n := len(b)
	if s.chunk > 0 && n > s.chunk {
		n = s.chunk
	}
	n = copy(b[:n], s.data)
	s.data = s.data[n:]
	return n, 0, 0, nil, nil
}

func (s *streamConn) WriteMsgUnix(b, oob []byte, _ *net.UnixAddr) (int, int, error) {
	s.data = append(s.data, b...)
	return len(b), len(oob), nil
}

func (s *streamConn) Write(b []byte) (int, error) {
	s.data = append(s.data, b...)
	return len(b), nil
}
