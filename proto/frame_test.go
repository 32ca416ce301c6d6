package proto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Version: 1, Op: OpCycle, Flags: FlagResponse | FlagFDs, NFDs: 2, BodyLen: 77, ID: 0x0102030405060708, CRC: 0xdeadbeef}
	var b [HeaderSize]byte
	PutHeader(b[:], h)
	got, err := DecodeHeader(b[:], 0)
	if err != nil {
		t.Fatal(err)
	}
	if got != h {
		t.Fatalf("got %+v, want %+v", got, h)
	}
	if !bytes.Equal(b[:4], []byte("FMEM")) {
		t.Fatalf("magic bytes %q", b[:4])
	}
}

func TestDecodeHeaderErrors(t *testing.T) {
	good := Header{Version: 1, Op: OpPing, ID: 9, BodyLen: 10}
	mut := func(f func(b []byte)) []byte {
		var b [HeaderSize]byte
		PutHeader(b[:], good)
		f(b[:])
		return b[:]
	}
	tests := []struct {
		name    string
		b       []byte
		max     uint32
		want    error
		fatal   bool
		hasID   bool
		wantErr bool
	}{
		{"ok", mut(func([]byte) {}), 0, nil, false, true, false},
		{"short", mut(func([]byte) {})[:31], 0, ErrTruncated, true, false, true},
		{"magic", mut(func(b []byte) { b[0] = 'G' }), 0, ErrBadMagic, true, false, true},
		{"version 0", mut(func(b []byte) { b[4] = 0 }), 0, ErrUnsupportedVersion, false, true, true},
		{"version 2", mut(func(b []byte) { b[4] = 2 }), 0, ErrUnsupportedVersion, false, true, true},
		{"unknown op", mut(func(b []byte) { b[6] = 0x7f }), 0, ErrUnknownOp, false, true, true},
		{"oversize default", mut(func(b []byte) { binary.LittleEndian.PutUint32(b[12:], DefaultMaxBody+1) }), 0, ErrOversize, true, true, true},
		{"oversize custom", mut(func([]byte) {}), 9, ErrOversize, true, true, true},
		{"at limit", mut(func([]byte) {}), 10, nil, false, true, false},
		{"oversize hard cap", mut(func(b []byte) { binary.LittleEndian.PutUint32(b[12:], MaxBodyLimit+1) }), 0xffffffff, ErrOversize, true, true, true},
		{"reserved byte", mut(func(b []byte) { b[11] = 1 }), 0, ErrBadHeader, false, true, true},
		{"reserved word", mut(func(b []byte) { b[31] = 1 }), 0, ErrBadHeader, false, true, true},
		{"unknown flag", mut(func(b []byte) { b[8] = 0x80 }), 0, ErrBadHeader, false, true, true},
		{"error without response", mut(func(b []byte) { b[8] = byte(FlagError) }), 0, ErrBadHeader, false, true, true},
		{"nfds without flag", mut(func(b []byte) { b[10] = 1 }), 0, ErrBadHeader, false, true, true},
		{"flag without nfds", mut(func(b []byte) { b[8] = byte(FlagFDs) }), 0, ErrBadHeader, false, true, true},
		{"too many fds", mut(func(b []byte) { b[8] = byte(FlagFDs); b[10] = MaxFDs + 1 }), 0, ErrBadHeader, false, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := DecodeHeader(tt.b, tt.max)
			if (err != nil) != tt.wantErr || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if err != nil && Fatal(err) != tt.fatal {
				t.Fatalf("Fatal(%v) = %v, want %v", err, Fatal(err), tt.fatal)
			}
			if tt.hasID && h.ID != good.ID {
				t.Fatalf("request id %d not recovered", h.ID)
			}
		})
	}
}

func TestCodeOf(t *testing.T) {
	tests := []struct {
		err  error
		want Code
	}{
		{nil, CodeOK},
		{ErrBadMagic, CodeBadFrame},
		{ErrTruncated, CodeBadFrame},
		{ErrBadHeader, CodeBadFrame},
		{ErrUnsupportedVersion, CodeUnsupportedVersion},
		{ErrOversize, CodeFrameTooLarge},
		{ErrChecksum, CodeChecksum},
		{ErrUnknownOp, CodeUnknownOp},
		{ErrMalformed, CodeBadRequest},
		{new(Cycle).Decode([]byte{1, 0, 0, 0}), CodeBadRequest}, // truncated body: request's fault
		{CodeNoSpace.Errorf("reserve full"), CodeNoSpace},
		{errors.Join(errors.New("x"), CodeUnknownLease.Errorf("l")), CodeUnknownLease},
		{io.ErrClosedPipe, CodeInternal},
	}
	for _, tt := range tests {
		if got := CodeOf(tt.err); got != tt.want {
			t.Errorf("CodeOf(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestErrorIs(t *testing.T) {
	err := error(CodeUnknownSession.Errorf("session %d", 7))
	if !errors.Is(err, &Error{Code: CodeUnknownSession}) {
		t.Fatal("same code does not match")
	}
	if errors.Is(err, &Error{Code: CodeNotOwner}) {
		t.Fatal("different code matches")
	}
	if got := err.Error(); got != "flashmem: unknown session: session 7" {
		t.Fatalf("message %q", got)
	}
	if Code(999).String() != "code 999" || Code(999).Known() {
		t.Fatal("unknown code naming")
	}
	for c := CodeOK; c <= CodeUnavailable; c++ {
		if !c.Known() || c.String() == "" {
			t.Fatalf("code %d has no name", c)
		}
	}
}

// TestErrorCodesStable pins the numbers: they are part of the protocol.
func TestErrorCodesStable(t *testing.T) {
	want := []Code{CodeOK, CodeBadFrame, CodeUnsupportedVersion, CodeFrameTooLarge, CodeUnknownOp,
		CodeChecksum, CodeBadRequest, CodeUnknownSession, CodeNotOwner, CodeDuplicateChunk,
		CodeChunkGap, CodePayloadSize, CodeNoChunks, CodeBadLayout, CodeLimitExceeded,
		CodeIntegrity, CodeNoSpace, CodeUnknownModel, CodeUnknownLease, CodeSessionExists,
		CodePermissionDenied, CodeShuttingDown, CodeInternal, CodeHandshakeRequired, CodeUnavailable}
	for i, c := range want {
		if int(c) != i {
			t.Fatalf("%v = %d, want %d", c, c, i)
		}
	}
	ops := map[Op]uint16{OpHello: 1, OpPing: 2, OpOpen: 0x10, OpResume: 0x11, OpClose: 0x12, OpPersist: 0x13,
		OpAppend: 0x20, OpCommit: 0x21, OpCycle: 0x30, OpRelease: 0x31,
		OpStatus: 0x40, OpSessions: 0x41, OpInspect: 0x42, OpEvict: 0x43, OpModels: 0x44,
		OpVerify: 0x45, OpDelete: 0x46, OpSave: 0x47, OpCluster: 0x48}
	for op, n := range ops {
		if uint16(op) != n || !op.Known() || NewRequest(op) == nil || NewReply(op) == nil {
			t.Fatalf("op %v: number %#x, want %#x", op, uint16(op), n)
		}
	}
	if len(ops) != len(opNames) {
		t.Fatalf("%d ops pinned, %d defined", len(ops), len(opNames))
	}
}

func TestParseFrame(t *testing.T) {
	body := []byte("hello, daemon")
	good := frameBytes(Header{Version: 1, Op: OpPing, ID: 5}, body)
	badCRC := bytes.Clone(good)
	badCRC[HeaderSize] ^= 1
	two := append(bytes.Clone(good), good...)
	tests := []struct {
		name  string
		b     []byte
		want  error
		n     int
		fatal bool
	}{
		{"ok", good, nil, len(good), false},
		{"two frames", two, nil, len(good), false},
		{"body truncated", good[:len(good)-1], ErrTruncated, 0, true},
		{"crc", badCRC, ErrChecksum, len(good), false},
		{"header only", good[:HeaderSize], ErrTruncated, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, b, n, err := ParseFrame(tt.b, 0)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
			if n != tt.n {
				t.Fatalf("consumed %d, want %d", n, tt.n)
			}
			if err == nil && (!bytes.Equal(b, body) || h.ID != 5) {
				t.Fatalf("body %q id %d", b, h.ID)
			}
			if err != nil && Fatal(err) != tt.fatal {
				t.Fatalf("Fatal = %v", Fatal(err))
			}
		})
	}
}

// TestReadFrameShortReads feeds frames one byte per read.
func TestReadFrameShortReads(t *testing.T) {
	var stream []byte
	for i := range 3 {
		stream = append(stream, frameBytes(Header{Version: 1, Op: OpPing, ID: uint64(i + 1)}, bytes.Repeat([]byte{byte(i)}, i*100))...)
	}
	sc := &streamConn{data: stream, chunk: 1}
	for i := range 3 {
		f, err := readFrame(sc, 0, make([]byte, oobSpace))
		if err != nil {
			t.Fatal(err)
		}
		if f.ID != uint64(i+1) || len(f.Body) != i*100 {
			t.Fatalf("frame %d: id %d, %d bytes", i, f.ID, len(f.Body))
		}
	}
	if _, err := readFrame(sc, 0, nil); err != io.EOF {
		t.Fatalf("after last frame: %v, want io.EOF", err)
	}
}

func TestReadFrameErrors(t *testing.T) {
	ping := frameBytes(Header{Version: 1, Op: OpPing, ID: 3}, []byte("abc"))
	mod := func(f func(b []byte)) []byte { b := bytes.Clone(ping); f(b); return b }
	tests := []struct {
		name  string
		data  []byte
		max   uint32
		want  error
		fatal bool
	}{
		{"truncated header", ping[:10], 0, ErrTruncated, true},
		{"truncated body", ping[:HeaderSize+1], 0, ErrTruncated, true},
		{"bad magic", mod(func(b []byte) { b[1] = 0 }), 0, ErrBadMagic, true},
		{"oversize", ping, 2, ErrOversize, true},
		{"bad crc", mod(func(b []byte) { b[HeaderSize] = 'x' }), 0, ErrChecksum, false},
		{"unknown op", mod(func(b []byte) { b[7] = 0x99 }), 0, ErrUnknownOp, false},
		{"bad version", mod(func(b []byte) { b[4] = 9 }), 0, ErrUnsupportedVersion, false},
		{"fds announced, none sent", mod(func(b []byte) { b[8] |= byte(FlagFDs); b[10] = 1 }), 0, ErrBadHeader, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A good frame follows: after a non-fatal error the reader must
			// be in sync and read it.
			next := frameBytes(Header{Version: 1, Op: OpPing, ID: 4}, []byte("next"))
			data := bytes.Clone(tt.data)
			if !tt.fatal {
				data = append(data, next...)
			}
			sc := &streamConn{data: data, chunk: 7}
			f, err := readFrame(sc, tt.max, make([]byte, oobSpace))
			if !errors.Is(err, tt.want) {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
			if Fatal(err) != tt.fatal {
				t.Fatalf("Fatal(%v) = %v", err, Fatal(err))
			}
			if !tt.fatal {
				if f == nil || f.ID != 3 {
					t.Fatalf("non-fatal error without the request id: %+v", f)
				}
				g, err := readFrame(sc, tt.max, make([]byte, oobSpace))
				if err != nil || g.ID != 4 || string(g.Body) != "next" {
					t.Fatalf("next frame: %v %+v", err, g)
				}
			}
		})
	}
}

// oversizeConn serves one header announcing a huge body and fails the test
// if the reader asks for more: the limit must act before the body is read
// or allocated.
type oversizeConn struct {
	t   *testing.T
	hdr []byte
}

func (o *oversizeConn) ReadMsgUnix(b, _ []byte) (int, int, int, *net.UnixAddr, error) {
	if len(o.hdr) == 0 {
		o.t.Fatal("reader read past an oversize header")
	}
	n := copy(b, o.hdr)
	o.hdr = o.hdr[n:]
	return n, 0, 0, nil, nil
}
func (o *oversizeConn) WriteMsgUnix(b, _ []byte, _ *net.UnixAddr) (int, int, error) {
	return len(b), 0, nil
}
func (o *oversizeConn) Write(b []byte) (int, error) { return len(b), nil }

func TestOversizeRejectedBeforeAllocating(t *testing.T) {
	var hb [HeaderSize]byte
	PutHeader(hb[:], Header{Version: 1, Op: OpAppend, ID: 1, BodyLen: MaxBodyLimit})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := readFrame(&oversizeConn{t: t, hdr: hb[:]}, 1<<20, make([]byte, oobSpace))
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrOversize) {
		t.Fatalf("err %v, want ErrOversize", err)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 64<<10 {
		t.Fatalf("allocated %d bytes while rejecting an oversize frame", d)
	}
}

func TestWriteFrameOverSocketpair(t *testing.T) {
	a, b := socketpair(t)
	// Larger than the socket buffer, so sendmsg sends it in parts.
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<17)
	errc := make(chan error, 1)
	go func() { errc <- WriteFrame(a, Header{Version: 1, Op: OpPing, ID: 77}, body) }()
	f, err := ReadFrame(b, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if f.ID != 77 || !bytes.Equal(f.Body, body) || len(f.Files) != 0 {
		t.Fatalf("id %d, %d body bytes, %d files", f.ID, len(f.Body), len(f.Files))
	}
}

func TestFDPassing(t *testing.T) {
	a, b := socketpair(t)
	m1 := memfd(t, "region1", 4096)
	m2 := memfd(t, "region2", 8192)
	defer m1.Close()
	defer m2.Close()
	if _, err := m1.WriteAt([]byte("through the fd"), 100); err != nil {
		t.Fatal(err)
	}
	ca, cb := NewConn(a, 0), NewConn(b, 0)
	body, _ := (&Ping{Data: []byte("two regions")}).AppendBinary(nil)
	if err := ca.WriteFrame(Header{Version: 1, Op: OpPing, Flags: FlagResponse, ID: 1}, body, int(m1.Fd()), int(m2.Fd())); err != nil {
		t.Fatal(err)
	}
	f, err := cb.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	defer f.CloseFiles()
	if f.NFDs != 2 || len(f.Files) != 2 || f.Flags&FlagFDs == 0 {
		t.Fatalf("nfds %d, %d files, flags %#x", f.NFDs, len(f.Files), f.Flags)
	}
	r := Region{RegionDesc: RegionDesc{Size: 4096}, File: f.Files[0]}
	mem, err := r.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer Unmap(mem)
	if string(mem[100:114]) != "through the fd" {
		t.Fatalf("mapped bytes %q", mem[100:114])
	}
	// Writes through the received mapping are visible to the sender's fd.
	copy(mem[0:], "back")
	got := make([]byte, 4)
	if _, err := m1.ReadAt(got, 0); err != nil || string(got) != "back" {
		t.Fatalf("sender sees %q (%v)", got, err)
	}
	st, err := f.Files[1].Stat()
	if err != nil || st.Size() != 8192 {
		t.Fatalf("second fd: size %d (%v)", st.Size(), err)
	}
	// A region fd smaller than its descriptor is refused instead of
	// mapping memory that would fault.
	if _, err := (&Region{RegionDesc: RegionDesc{Size: 1 << 20}, File: f.Files[1]}).Map(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short region: %v", err)
	}
}

// TestStrayFDsClosed: descriptors the header does not announce, or more
// than MaxFDs, are closed by the reader and reported as ErrBadHeader; the
// stream stays usable.
func TestStrayFDsClosed(t *testing.T) {
	a, b := socketpair(t)
	cb := NewConn(b, 0)
	files := make([]int, 0, 8)
	for range 8 {
		m := memfd(t, "stray", 64)
		defer m.Close()
		files = append(files, int(m.Fd()))
	}
	before := memfdsOpen(t, "stray")
	tests := []struct {
		name string
		nfds uint8 // announced
		send []int
	}{
		{"unannounced", 0, files[:1]},
		{"fewer announced", 1, files[:3]},
		{"more than MaxFDs", MaxFDs, files[:8]},
		{"on body bytes", 0, nil},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := Header{Version: 1, Op: OpPing, ID: uint64(i + 1), NFDs: tt.nfds}
			if tt.nfds > 0 {
				h.Flags |= FlagFDs
			}
			buf := frameBytes(h, []byte("payload"))
			if tt.name == "on body bytes" {
				// Header alone, then body bytes with fds attached.
				if _, _, err := a.WriteMsgUnix(buf[:HeaderSize], nil, nil); err != nil {
					t.Fatal(err)
				}
				if _, _, err := a.WriteMsgUnix(buf[HeaderSize:], unix.UnixRights(files[:2]...), nil); err != nil {
					t.Fatal(err)
				}
			} else if _, _, err := a.WriteMsgUnix(buf, unix.UnixRights(tt.send...), nil); err != nil {
				t.Fatal(err)
			}
			f, err := cb.ReadFrame()
			if !errors.Is(err, ErrBadHeader) || Fatal(err) {
				t.Fatalf("err %v, want non-fatal ErrBadHeader", err)
			}
			if f == nil || f.ID != uint64(i+1) || f.Files != nil {
				t.Fatalf("frame %+v", f)
			}
			if n := memfdsOpen(t, "stray"); n != before {
				t.Fatalf("%d fds open after the read, %d before: received fds leaked", n, before)
			}
		})
	}
	// Still in sync.
	if err := WriteFrame(a, Header{Version: 1, Op: OpPing, ID: 99}, nil); err != nil {
		t.Fatal(err)
	}
	if f, err := cb.ReadFrame(); err != nil || f.ID != 99 {
		t.Fatalf("after stray fds: %v", err)
	}
}

func TestReadFrameEOF(t *testing.T) {
	a, b := socketpair(t)
	a.Close()
	if _, err := ReadFrame(b, 0); err != io.EOF {
		t.Fatalf("clean close: %v, want io.EOF", err)
	}
	c, d := socketpair(t)
	if _, err := c.Write(frameBytes(Header{Version: 1, Op: OpPing, ID: 1}, []byte("abcdef"))[:HeaderSize+2]); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := ReadFrame(d, 0); !errors.Is(err, ErrTruncated) || !Fatal(err) {
		t.Fatalf("close mid-frame: %v, want fatal ErrTruncated", err)
	}
}

func TestWriteFrameLimits(t *testing.T) {
	a, _ := socketpair(t)
	fds := make([]int, MaxFDs+1)
	for i := range fds {
		fds[i] = int(os.Stdin.Fd())
	}
	if err := WriteFrame(a, Header{Version: 1, Op: OpPing}, nil, fds...); !errors.Is(err, ErrBadHeader) {
		t.Fatalf("too many fds: %v", err)
	}
}

// With a frame timeout, a frame whose first bytes arrived must complete in
// time; silence before a frame is not bounded by it.
func TestConnFrameTimeout(t *testing.T) {
	a, b := socketpair(t)
	c := NewConn(a, 0)
	c.SetFrameTimeout(100 * time.Millisecond)
	whole := frameBytes(Header{Version: 1, Op: OpPing, ID: 1}, []byte("hi"))
	go func() {
		time.Sleep(300 * time.Millisecond) // longer than the frame timeout, before the frame
		b.Write(whole)
		b.Write(whole[:10]) // then half a frame, and nothing more
	}()
	f, err := c.ReadFrame()
	if err != nil || string(f.Body) != "hi" || c.MidFrame() {
		t.Fatalf("whole frame after a pause: %v %v", err, c.MidFrame())
	}
	_ = a.SetReadDeadline(time.Time{})
	t0 := time.Now()
	if _, err := c.ReadFrame(); !errors.Is(err, os.ErrDeadlineExceeded) || !c.MidFrame() {
		t.Fatalf("half a frame: %v, mid-frame %v", err, c.MidFrame())
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("frame timeout took %v", d)
	}
}
