//go:build cuda

package cuda

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

const childEnv = "FLASHMEM_CUDA_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		// Re-executed by TestShareAcrossProcesses: import the parent's memory.
		if err := childMain(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fill writes a deterministic, seed-dependent byte pattern (never all zeros).
func fill(b []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
}

func pattern(n int, seed uint64) []byte {
	b := make([]byte, n)
	fill(b, seed)
	return b
}

// devices opens every device the driver sees; the test is skipped without one.
func devices(t testing.TB) []*Device {
	t.Helper()
	n, err := DeviceCount()
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Skip("no CUDA device")
	}
	var ds []*Device
	for i := 0; i < n; i++ {
		d, err := Open(i)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		ds = append(ds, d)
	}
	return ds
}

func TestOpenReportsDevice(t *testing.T) {
	for _, d := range devices(t) {
		maj, min := d.ComputeCapability()
		free, total, err := d.MemInfo()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("device %d: %s sm_%d%d, %d SMs, VMM posix-fd %v, free %d / %d MiB",
			d.Ordinal(), d.Name(), maj, min, d.SMCount(), d.VMMSupported(), free>>20, total>>20)
		if d.Name() == "" || d.SMCount() == 0 || maj < 5 || total <= 0 || free > total {
			t.Errorf("implausible device report")
		}
	}
	if _, err := Open(-1); !errors.Is(err, ErrInvalid) {
		t.Errorf("Open(-1): %v, want ErrInvalid", err)
	}
}

// A closure passed to Do runs on the owner thread; package methods called inside it must
// run inline rather than deadlock, and calls from many goroutines must all complete.
func TestDoReentrantAndConcurrent(t *testing.T) {
	d := devices(t)[0]
	err := d.Do(func() error {
		p, err := d.Alloc(4096)
		if err != nil {
			return err
		}
		return d.Free(p)
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p, err := d.Alloc(1 << 16)
			if err != nil {
				errs <- err
				return
			}
			want := pattern(1<<16, uint64(i))
			got := make([]byte, len(want))
			if err := d.CopyHtoD(p, want); err != nil {
				errs <- err
			} else if err := d.CopyDtoH(got, p); err != nil {
				errs <- err
			} else if !bytes.Equal(got, want) {
				errs <- fmt.Errorf("goroutine %d: bytes differ", i)
			}
			errs <- d.Free(p)
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	d2, err := Open(d.Ordinal())
	if err != nil {
		t.Fatal(err)
	}
	d2.Close()
	if _, err := d2.Alloc(16); !errors.Is(err, ErrClosed) {
		t.Errorf("Alloc after Close: %v, want ErrClosed", err)
	}
}

// Pinned memory, fresh and registered over an mmap'ed arena (the host mirror's case), is
// reachable by copies and by kernels through its device address.
func TestPinnedHostMemory(t *testing.T) {
	d := devices(t)[0]
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 8 << 20
	dev, err := d.Alloc(n)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free(dev)

	h, err := d.AllocHost(n)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Free()
	arena, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(arena)
	reg, err := d.RegisterHost(arena)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Free()

	for i, hb := range []*HostBuffer{h, reg} {
		fill(hb.Bytes(), uint64(100+i))
		if err := d.Memset(dev, 0xAB, n); err != nil {
			t.Fatal(err)
		}
		if err := s.Copy(dev, hb.Ptr(), n); err != nil {
			t.Fatal(err)
		}
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, n)
		if err := d.CopyDtoH(got, dev); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, hb.Bytes()) {
			t.Errorf("buffer %d: device copy differs from pinned source", i)
		}
	}
	if _, err := d.RegisterHost(nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("RegisterHost(nil): %v, want ErrInvalid", err)
	}
}

// gatherCase copies rows from a pinned "mirror" into a device "reserve" with one Gather and
// compares against the same copies done on the CPU.
func TestGatherMatchesCPU(t *testing.T) {
	defer func(k string) { gatherKind = k }(gatherKind)
	for _, d := range devices(t) {
		for _, kind := range []string{"simt4", "simt8", "p256", "bulk"} {
			gatherKind = kind
			t.Run(fmt.Sprintf("dev%d/%s", d.Ordinal(), kind), func(t *testing.T) { testGather(t, d) })
		}
	}
}

func testGather(t *testing.T, d *Device) {
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const mirrorBytes, reserveBytes = 64 << 20, 16 << 20
	mirror, err := d.AllocHost(mirrorBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer mirror.Free()
	fill(mirror.Bytes(), 7)
	reserve, err := d.Alloc(reserveBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free(reserve)

	tests := []struct {
		name string
		row  int // bytes per row
		rows int
		mis  int // misalignment added to src/dst offsets
	}{
		{"64KiB pages", 64 << 10, 200, 0},
		{"1MiB pages split into pieces", 1 << 20, 12, 0},
		{"DeepSeek-V4 layer rows 37440B", 37440, 300, 0},
		{"unaligned rows fall back", 1000, 500, 3},
		{"single 16B row", 16, 1, 0},
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			slots := reserveBytes / (tc.row + tc.mis)
			srcRows := (mirrorBytes - tc.mis) / tc.row
			if tc.rows > slots {
				t.Fatalf("case needs %d slots, reserve has %d", tc.rows, slots)
			}
			dstPerm := r.Perm(slots)[:tc.rows]
			srcPerm := r.Perm(srcRows)[:tc.rows]
			want := make([]byte, reserveBytes)
			fill(want, uint64(tc.row))
			if err := d.CopyHtoD(reserve, want); err != nil {
				t.Fatal(err)
			}
			descs := make([]CopyDesc, tc.rows)
			for i := range descs {
				so := srcPerm[i]*tc.row + tc.mis
				do := dstPerm[i]*(tc.row+tc.mis) + tc.mis
				descs[i] = CopyDesc{Src: mirror.Ptr() + DevPtr(so), Dst: reserve + DevPtr(do), Len: uint64(tc.row)}
				copy(want[do:do+tc.row], mirror.Bytes()[so:so+tc.row])
			}
			copyRows := s.Gather
			if tc.mis == 0 && tc.name != "single 16B row" {
				copyRows = s.Recall // picks copy engines for the 1 MiB rows
			}
			if err := copyRows(descs); err != nil {
				t.Fatal(err)
			}
			if err := s.Sync(); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, reserveBytes)
			if err := d.CopyDtoH(got, reserve); err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(got, want); i >= 0 {
				t.Fatalf("byte %d differs: got %#x want %#x", i, got[i], want[i])
			}
		})
	}

	// The copy-engine batch path, where the driver has it, on scattered 64 KiB pages.
	t.Run("cuMemcpyBatchAsync", func(t *testing.T) {
		const page = 64 << 10
		want := make([]byte, reserveBytes)
		fill(want, 5)
		if err := d.CopyHtoD(reserve, want); err != nil {
			t.Fatal(err)
		}
		var descs []CopyDesc
		for i, p := range r.Perm(mirrorBytes / page)[:100] {
			slot := (i * 37) % (reserveBytes / page)
			descs = append(descs, CopyDesc{Src: mirror.Ptr() + DevPtr(p*page), Dst: reserve + DevPtr(slot*page), Len: page})
			copy(want[slot*page:(slot+1)*page], mirror.Bytes()[p*page:(p+1)*page])
		}
		if err := s.CopyBatch(descs); errors.Is(err, ErrUnsupported) {
			t.Skip(err)
		} else if err != nil {
			t.Fatal(err)
		}
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, reserveBytes)
		if err := d.CopyDtoH(got, reserve); err != nil {
			t.Fatal(err)
		}
		if i := firstDiff(got, want); i >= 0 {
			t.Fatalf("byte %d differs", i)
		}
	})

	// Scatter back: reserve rows into the pinned mirror (the commit path's direction).
	t.Run("scatter device to pinned host", func(t *testing.T) {
		const row = 37440
		want := append([]byte(nil), mirror.Bytes()...)
		devBytes := make([]byte, reserveBytes)
		if err := d.CopyDtoH(devBytes, reserve); err != nil {
			t.Fatal(err)
		}
		var descs []CopyDesc
		for i, slot := range r.Perm(reserveBytes / row)[:100] {
			mo := (i*977 + 13) % (mirrorBytes/row - 1) * row
			descs = append(descs, CopyDesc{Src: reserve + DevPtr(slot*row), Dst: mirror.Ptr() + DevPtr(mo), Len: row})
			copy(want[mo:mo+row], devBytes[slot*row:slot*row+row])
		}
		if err := s.Gather(descs); err != nil {
			t.Fatal(err)
		}
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
		if i := firstDiff(mirror.Bytes(), want); i >= 0 {
			t.Fatalf("mirror byte %d differs", i)
		}
	})
}

func firstDiff(a, b []byte) int {
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// shareMsg is what the parent sends the child next to the fd.
type shareMsg struct {
	Ordinal int32
	Kind    int32
	Size    int64
	Seed    uint64
	Handle  IPCHandle
}

const shareMsgLen = 4 + 4 + 8 + 8 + 64

func (m shareMsg) marshal() []byte {
	b := make([]byte, shareMsgLen)
	binary.LittleEndian.PutUint32(b[0:], uint32(m.Ordinal))
	binary.LittleEndian.PutUint32(b[4:], uint32(m.Kind))
	binary.LittleEndian.PutUint64(b[8:], uint64(m.Size))
	binary.LittleEndian.PutUint64(b[16:], m.Seed)
	copy(b[24:], m.Handle[:])
	return b
}

func unmarshalShareMsg(b []byte) (shareMsg, error) {
	var m shareMsg
	if len(b) != shareMsgLen {
		return m, fmt.Errorf("share message of %d bytes, want %d: %w", len(b), shareMsgLen, ErrInvalid)
	}
	m.Ordinal = int32(binary.LittleEndian.Uint32(b[0:]))
	m.Kind = int32(binary.LittleEndian.Uint32(b[4:]))
	m.Size = int64(binary.LittleEndian.Uint64(b[8:]))
	m.Seed = binary.LittleEndian.Uint64(b[16:])
	copy(m.Handle[:], b[24:])
	return m, nil
}

// The reserve is exported by the daemon and mapped by the decoder, another process: the
// child imports the region (fd over SCM_RIGHTS, or IPC handle), checks the parent's bytes
// on its side, writes its own pattern into the second half, and the parent checks that.
func TestShareAcrossProcesses(t *testing.T) {
	for _, d := range devices(t) {
		for _, kind := range []ShareKind{ShareVMM, ShareIPC} {
			t.Run(fmt.Sprintf("dev%d/%v", d.Ordinal(), kind), func(t *testing.T) {
				if kind == ShareVMM && !d.VMMSupported() {
					t.Skip("device lacks VMM POSIX-fd export; IPC fallback covers it")
				}
				testShare(t, d, kind)
			})
		}
	}
}

func testShare(t *testing.T, d *Device, kind ShareKind) {
	const size = 6<<20 + 123
	reg, err := d.AllocShareable(size, kind)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if reg.Kind() != kind || reg.Size() < size {
		t.Fatalf("region kind %v size %d", reg.Kind(), reg.Size())
	}
	half := reg.Size() / 2
	seed := uint64(reg.Size()) ^ uint64(kind)<<32
	if err := d.CopyHtoD(reg.Ptr(), pattern(half, seed)); err != nil {
		t.Fatal(err)
	}

	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	parentEnd := os.NewFile(uintptr(pair[0]), "parent")
	childEnd := os.NewFile(uintptr(pair[1]), "child")
	defer parentEnd.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.ExtraFiles = []*os.File{childEnd} // fd 3 in the child
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	childEnd.Close()

	msg := shareMsg{Ordinal: int32(d.Ordinal()), Kind: int32(kind), Size: int64(reg.Size()), Seed: seed}
	var oob []byte
	if kind == ShareVMM {
		fd, err := reg.ExportFD()
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		oob = unix.UnixRights(fd)
	} else {
		if msg.Handle, err = reg.IPCHandle(); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Sendmsg(pair[0], msg.marshal(), oob, nil, 0); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 256)
	n, _, _, _, err := unix.Recvmsg(pair[0], reply, nil, 0)
	werr := cmd.Wait()
	if err != nil || werr != nil {
		t.Fatalf("child: recv %v, exit %v, stderr %s", err, werr, stderr.String())
	}
	if got := string(reply[:n]); got != "ok" {
		t.Fatalf("child replied %q (stderr %s)", got, stderr.String())
	}
	got := make([]byte, reg.Size()-half)
	if err := d.CopyDtoH(got, reg.Ptr()+DevPtr(half)); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, pattern(len(got), seed+1)); i >= 0 {
		t.Fatalf("child's write not visible to the parent at byte %d", half+i)
	}
}

func childMain() error {
	const sock = 3
	buf := make([]byte, shareMsgLen)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(sock, buf, oob, 0)
	if err != nil {
		return err
	}
	reply := func(err error) error {
		msg := "ok"
		if err != nil {
			msg = err.Error()
		}
		unix.Sendmsg(sock, []byte(msg), nil, nil, 0)
		return err
	}
	m, err := unmarshalShareMsg(buf[:n])
	if err != nil {
		return reply(err)
	}
	d, err := Open(int(m.Ordinal))
	if err != nil {
		return reply(err)
	}
	defer d.Close()
	var reg *Region
	if ShareKind(m.Kind) == ShareVMM {
		cms, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(cms) != 1 {
			return reply(fmt.Errorf("control message: %v (%d)", err, len(cms)))
		}
		fds, err := unix.ParseUnixRights(&cms[0])
		if err != nil || len(fds) != 1 {
			return reply(fmt.Errorf("rights: %v", err))
		}
		reg, err = d.ImportFD(fds[0], int(m.Size))
		unix.Close(fds[0])
		if err != nil {
			return reply(err)
		}
	} else {
		if reg, err = d.ImportIPC(m.Handle); err != nil {
			return reply(err)
		}
	}
	defer reg.Close()
	if reg.Size() < int(m.Size) {
		return reply(fmt.Errorf("imported %d bytes, want %d", reg.Size(), m.Size))
	}
	half := int(m.Size) / 2
	got := make([]byte, half)
	if err := d.CopyDtoH(got, reg.Ptr()); err != nil {
		return reply(err)
	}
	if i := firstDiff(got, pattern(half, m.Seed)); i >= 0 {
		return reply(fmt.Errorf("parent's bytes differ at %d", i))
	}
	if err := d.CopyHtoD(reg.Ptr()+DevPtr(half), pattern(int(m.Size)-half, m.Seed+1)); err != nil {
		return reply(err)
	}
	return reply(nil)
}

// A PyTorch process (the decoder's side) imports the exported reserve through its fd,
// checks every byte on the GPU and writes the second half; runs with FLASHMEM_TORCH_TEST=1
// where python3 has torch and cuda-python (the GPU machine; scripts/gpu-test.sh sets it).
func TestTorchImportsRegion(t *testing.T) {
	if os.Getenv("FLASHMEM_TORCH_TEST") != "1" {
		t.Skip("set FLASHMEM_TORCH_TEST=1")
	}
	for _, d := range devices(t) {
		if !d.VMMSupported() {
			t.Skipf("device %d lacks VMM fd export", d.Ordinal())
		}
		reg, err := d.AllocShareable(24<<20, ShareVMM)
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Close()
		n, seed := reg.Size(), 11+d.Ordinal()
		want := make([]byte, n)
		for i := range want {
			want[i] = byte((i*7 + seed) % 251)
		}
		if err := d.CopyHtoD(reg.Ptr(), want); err != nil {
			t.Fatal(err)
		}
		fd, err := reg.ExportFD()
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "reserve")
		cmd := exec.Command("python3", "../../scripts/torch_client_example.py", "--selftest-fd", "3",
			"--size", fmt.Sprint(n), "--device", fmt.Sprint(d.Ordinal()), "--seed", fmt.Sprint(seed))
		cmd.ExtraFiles = []*os.File{f}
		out, err := cmd.CombinedOutput()
		f.Close()
		t.Logf("python: %s", bytes.TrimSpace(out))
		if err != nil {
			t.Fatalf("torch client: %v", err)
		}
		got := make([]byte, n-n/2)
		if err := d.CopyDtoH(got, reg.Ptr()+DevPtr(n/2)); err != nil {
			t.Fatal(err)
		}
		for i, b := range got {
			if j := n/2 + i; b != byte((j*3+seed)%253) {
				t.Fatalf("byte %d written by torch reads %d", j, b)
			}
		}
	}
}
