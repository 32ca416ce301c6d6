package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Frame header layout and limits. See docs/protocol.md, "Frame header".
const (
	// HeaderSize is the fixed size of every frame header in bytes.
	HeaderSize = 32
	// Magic is the first header field: the bytes "FMEM" read as a
	// little-endian uint32.
	Magic uint32 = 0x4D454D46
	// HelloVersion is the header version of every HELLO request and reply;
	// the HELLO bodies are frozen so that any two builds can negotiate.
	HelloVersion uint16 = 1
	// MinVersion and MaxVersion bound the protocol versions this build speaks.
	MinVersion uint16 = 1
	MaxVersion uint16 = 1
	// DefaultMaxBody is the body limit a reader applies when none is given.
	DefaultMaxBody uint32 = 16 << 20
	// MaxBodyLimit caps any configured body limit, so that a misconfigured
	// reader still cannot be made to allocate more than 1 GiB per frame.
	MaxBodyLimit uint32 = 1 << 30
	// MaxFDs is the most file descriptors one frame may carry.
	MaxFDs = 4
)

// Flags is the header's flag word.
type Flags uint16

// Header flags. Bits not listed here must be zero.
const (
	// FlagResponse marks a reply; its request id echoes the request's.
	FlagResponse Flags = 1 << 0
	// FlagError marks an error reply; the body is an ErrorBody. Only set
	// together with FlagResponse.
	FlagError Flags = 1 << 1
	// FlagFDs is set when the frame carries file descriptors (header field
	// nfds > 0); the descriptors arrive as SCM_RIGHTS with the header bytes.
	FlagFDs Flags = 1 << 2

	knownFlags = FlagResponse | FlagError | FlagFDs
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the CRC32C (Castagnoli) of b, the value a header carries
// for its body.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Header is a decoded frame header.
type Header struct {
	Version uint16
	Op      Op
	Flags   Flags
	NFDs    uint8
	BodyLen uint32
	ID      uint64
	CRC     uint32
}

// IsResponse reports whether FlagResponse is set.
func (h Header) IsResponse() bool { return h.Flags&FlagResponse != 0 }

// IsError reports whether FlagError is set.
func (h Header) IsError() bool { return h.Flags&FlagError != 0 }

// PutHeader writes h into b[:HeaderSize]. It writes the fields as given: the
// caller sets BodyLen, CRC and NFDs (WriteFrame does).
func PutHeader(b []byte, h Header) {
	_ = b[HeaderSize-1]
	binary.LittleEndian.PutUint32(b[0:], Magic)
	binary.LittleEndian.PutUint16(b[4:], h.Version)
	binary.LittleEndian.PutUint16(b[6:], uint16(h.Op))
	binary.LittleEndian.PutUint16(b[8:], uint16(h.Flags))
	b[10] = h.NFDs
	b[11] = 0
	binary.LittleEndian.PutUint32(b[12:], h.BodyLen)
	binary.LittleEndian.PutUint64(b[16:], h.ID)
	binary.LittleEndian.PutUint32(b[24:], h.CRC)
	binary.LittleEndian.PutUint32(b[28:], 0)
}

// DecodeHeader parses and checks a header against maxBody (0 means
// DefaultMaxBody). The checks run in stream-safety order: magic (ErrBadMagic),
// body length (ErrOversize), then — with the length known to be safe to skip —
// reserved fields and flags (ErrBadHeader), version (ErrUnsupportedVersion)
// and op (ErrUnknownOp, not checked for error frames). On every error except ErrBadMagic and a short b the
// returned Header is filled in, so a server can echo the request id.
func DecodeHeader(b []byte, maxBody uint32) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: header has %d of %d bytes", ErrTruncated, len(b), HeaderSize)
	}
	if m := binary.LittleEndian.Uint32(b[0:]); m != Magic {
		return Header{}, fmt.Errorf("%w: %#08x", ErrBadMagic, m)
	}
	h := Header{
		Version: binary.LittleEndian.Uint16(b[4:]),
		Op:      Op(binary.LittleEndian.Uint16(b[6:])),
		Flags:   Flags(binary.LittleEndian.Uint16(b[8:])),
		NFDs:    b[10],
		BodyLen: binary.LittleEndian.Uint32(b[12:]),
		ID:      binary.LittleEndian.Uint64(b[16:]),
		CRC:     binary.LittleEndian.Uint32(b[24:]),
	}
	maxBody = effectiveMax(maxBody)
	if h.BodyLen > maxBody {
		return h, fmt.Errorf("%w: body of %d bytes, limit %d (request %d)", ErrOversize, h.BodyLen, maxBody, h.ID)
	}
	if b[11] != 0 || binary.LittleEndian.Uint32(b[28:]) != 0 {
		return h, fmt.Errorf("%w: reserved field set (request %d)", ErrBadHeader, h.ID)
	}
	if h.Flags&^knownFlags != 0 {
		return h, fmt.Errorf("%w: unknown flags %#04x (request %d)", ErrBadHeader, uint16(h.Flags&^knownFlags), h.ID)
	}
	if h.Flags&FlagError != 0 && h.Flags&FlagResponse == 0 {
		return h, fmt.Errorf("%w: error flag without response flag (request %d)", ErrBadHeader, h.ID)
	}
	if (h.NFDs > 0) != (h.Flags&FlagFDs != 0) || h.NFDs > MaxFDs {
		return h, fmt.Errorf("%w: nfds %d with flags %#04x (request %d)", ErrBadHeader, h.NFDs, uint16(h.Flags), h.ID)
	}
	if h.Version < MinVersion || h.Version > MaxVersion {
		return h, fmt.Errorf("%w: %d, supported %d..%d (request %d)", ErrUnsupportedVersion, h.Version, MinVersion, MaxVersion, h.ID)
	}
	// An error frame's body does not depend on its op, and it may answer a
	// request whose op the server did not know (or, with op 0, a frame it
	// could not parse), so its op is not checked.
	if !h.Op.Known() && h.Flags&FlagError == 0 {
		return h, fmt.Errorf("%w: %d (request %d)", ErrUnknownOp, uint16(h.Op), h.ID)
	}
	return h, nil
}

func effectiveMax(maxBody uint32) uint32 {
	if maxBody == 0 {
		return DefaultMaxBody
	}
	return min(maxBody, MaxBodyLimit)
}

// ParseFrame decodes one whole frame at the start of b (no file
// descriptors): it returns the header, the body (aliasing b) and the number
// of bytes consumed. It applies the same checks as ReadFrame, including the
// checksum; it exists for fuzzing and for tools that capture streams.
func ParseFrame(b []byte, maxBody uint32) (Header, []byte, int, error) {
	h, err := DecodeHeader(b, maxBody)
	if err != nil && Fatal(err) {
		return h, nil, 0, err
	}
	if uint64(len(b)-HeaderSize) < uint64(h.BodyLen) {
		return h, nil, 0, fmt.Errorf("%w: body has %d of %d bytes (request %d)", ErrTruncated, len(b)-HeaderSize, h.BodyLen, h.ID)
	}
	n := HeaderSize + int(h.BodyLen)
	body := b[HeaderSize:n:n]
	if err != nil {
		return h, nil, n, err
	}
	if h.NFDs != 0 {
		return h, nil, n, fmt.Errorf("%w: %d fds announced, none can arrive in a byte slice (request %d)", ErrBadHeader, h.NFDs, h.ID)
	}
	if c := Checksum(body); c != h.CRC {
		return h, nil, n, fmt.Errorf("%w: header %#08x, body %#08x (request %d)", ErrChecksum, h.CRC, c, h.ID)
	}
	return h, body, n, nil
}

// CheckRequest applies the rules a server adds for frames that must be
// requests: no RESPONSE or ERROR flag, and no file descriptors (clients
// send none in version 1). It returns an ErrBadHeader error; the frame was
// consumed, so the server answers BAD_FRAME and reads on.
func CheckRequest(h Header) error {
	if h.Flags&(FlagResponse|FlagError) != 0 {
		return fmt.Errorf("%w: response flags %#04x on a request (request %d)", ErrBadHeader, uint16(h.Flags), h.ID)
	}
	if h.NFDs != 0 {
		return fmt.Errorf("%w: %d fds on a request, clients send none (request %d)", ErrBadHeader, h.NFDs, h.ID)
	}
	return nil
}

// Frame is one frame read from a connection.
type Frame struct {
	Header
	// Body aliases memory owned by the frame; it is not reused by the reader.
	Body []byte
	// Files are the descriptors that arrived with the frame, in order. The
	// receiver owns them and must close each one it does not keep.
	Files []*os.File
}

// CloseFiles closes every file of the frame and clears the list.
func (f *Frame) CloseFiles() {
	for _, file := range f.Files {
		file.Close()
	}
	f.Files = nil
}

// msgConn is the part of *net.UnixConn the frame reader and writer use, so
// that tests and fuzzers can substitute a byte stream.
type msgConn interface {
	ReadMsgUnix(b, oob []byte) (n, oobn, flags int, addr *net.UnixAddr, err error)
	WriteMsgUnix(b, oob []byte, addr *net.UnixAddr) (n, oobn int, err error)
	Write(b []byte) (int, error)
}

var oobSpace = unix.CmsgSpace(MaxFDs * 4)

// ReadFrame reads one frame from c, enforcing maxBody (0: DefaultMaxBody)
// from the header before the body is allocated, verifying the CRC32C, and
// collecting descriptors passed with SCM_RIGHTS. It must not be called
// concurrently on one connection. A clean close before the first header
// byte returns io.EOF. On an error for which Fatal is false the whole frame
// was consumed, the returned Frame carries its header (body and files
// dropped), and the caller may reply with an error frame and read on.
func ReadFrame(c *net.UnixConn, maxBody uint32) (*Frame, error) {
	oob := make([]byte, oobSpace)
	return readFrame(c, maxBody, oob)
}

func readFrame(c msgConn, maxBody uint32, oob []byte) (*Frame, error) {
	var hb [HeaderSize]byte
	var files []*os.File
	fail := func(f *Frame, err error) (*Frame, error) {
		for _, file := range files {
			file.Close()
		}
		if f != nil {
			f.Files = nil
			f.Body = nil
		}
		return f, err
	}
	got, err := readFull(c, hb[:], oob, &files)
	if err != nil {
		if got == 0 && errors.Is(err, io.EOF) && len(files) == 0 {
			return nil, io.EOF
		}
		return fail(nil, fmt.Errorf("%w: header: %d of %d bytes: %w", ErrTruncated, got, HeaderSize, err))
	}
	h, herr := DecodeHeader(hb[:], maxBody)
	if herr != nil && Fatal(herr) {
		return fail(&Frame{Header: h}, herr)
	}
	f := &Frame{Header: h}
	if h.BodyLen > 0 {
		f.Body = make([]byte, h.BodyLen)
		if got, err := readFull(c, f.Body, oob, &files); err != nil {
			return fail(nil, fmt.Errorf("%w: body: %d of %d bytes (request %d): %w", ErrTruncated, got, h.BodyLen, h.ID, err))
		}
	}
	if herr != nil {
		return fail(f, herr)
	}
	if len(files) != int(h.NFDs) {
		return fail(f, fmt.Errorf("%w: %d fds announced, %d arrived (request %d)", ErrBadHeader, h.NFDs, len(files), h.ID))
	}
	if sum := Checksum(f.Body); sum != h.CRC {
		return fail(f, fmt.Errorf("%w: header %#08x, body %#08x (request %d)", ErrChecksum, h.CRC, sum, h.ID))
	}
	f.Files = files
	return f, nil
}

// readFull fills b with ReadMsgUnix, collecting every descriptor that
// arrives. It keeps at most MaxFDs+1 of them open (enough to detect a count
// mismatch) and closes the rest at once, so a hostile peer cannot make the
// reader hold an unbounded number of files.
func readFull(c msgConn, b, oob []byte, files *[]*os.File) (int, error) {
	got := 0
	for got < len(b) {
		n, oobn, flags, _, err := c.ReadMsgUnix(b[got:], oob)
		got += n
		if oobn > 0 {
			collectFDs(oob[:oobn], files)
		}
		if flags&unix.MSG_CTRUNC != 0 && len(*files) <= MaxFDs {
			// The kernel dropped descriptors that did not fit; make sure the
			// count check fails even if the kept ones happen to match.
			*files = append(*files, nil)
		}
		if err != nil {
			if got == len(b) && errors.Is(err, io.EOF) {
				return got, nil
			}
			return got, err
		}
		if n == 0 && oobn == 0 {
			return got, io.EOF
		}
	}
	return got, nil
}

func collectFDs(oob []byte, files *[]*os.File) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for i := range msgs {
		fds, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			continue // not SCM_RIGHTS (e.g. credentials): nothing to close
		}
		for _, fd := range fds {
			if len(*files) > MaxFDs {
				unix.Close(fd)
				continue
			}
			*files = append(*files, os.NewFile(uintptr(fd), "scm-rights"))
		}
	}
}

// WriteFrame writes one frame: h with BodyLen, CRC, NFDs and FlagFDs filled
// in from body and fds, then body. The descriptors travel as SCM_RIGHTS with
// the header bytes; the caller keeps ownership of them. WriteFrame is not
// safe for concurrent use on one connection (use Conn for that).
func WriteFrame(c *net.UnixConn, h Header, body []byte, fds ...int) error {
	p := getBuf(len(body))
	*p = append(*p, body...)
	err := writeFrame(c, *p, h, fds)
	putBuf(p)
	return err
}

// writeFrame sends buf, whose first HeaderSize bytes are reserved for the
// header and whose rest is the body.
func writeFrame(c msgConn, buf []byte, h Header, fds []int) error {
	body := buf[HeaderSize:]
	if uint64(len(body)) > uint64(MaxBodyLimit) {
		return fmt.Errorf("%w: body of %d bytes (request %d)", ErrOversize, len(body), h.ID)
	}
	if len(fds) > MaxFDs {
		return fmt.Errorf("%w: %d fds, at most %d (request %d)", ErrBadHeader, len(fds), MaxFDs, h.ID)
	}
	h.BodyLen = uint32(len(body))
	h.CRC = Checksum(body)
	h.NFDs = uint8(len(fds))
	h.Flags &^= FlagFDs
	if len(fds) > 0 {
		h.Flags |= FlagFDs
	}
	PutHeader(buf, h)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.WriteMsgUnix(buf, oob, nil)
	// sendmsg on a stream socket may send part of a large buffer; the
	// descriptors went with the first part, the rest is plain bytes.
	for err == nil && n < len(buf) {
		var m int
		m, err = c.Write(buf[n:])
		n += m
	}
	return err
}

// Conn wraps a *net.UnixConn for a frame reader and any number of
// concurrent writers. The server side of the daemon uses one per
// connection: one goroutine calls ReadFrame, any goroutine may Reply.
type Conn struct {
	uc      *net.UnixConn
	maxBody uint32
	oob     []byte
	wmu     sync.Mutex

	frameTimeout time.Duration
	fr           frameClock
	midFrame     bool
}

// NewConn wraps uc; maxBody bounds incoming bodies (0: DefaultMaxBody).
func NewConn(uc *net.UnixConn, maxBody uint32) *Conn {
	return &Conn{uc: uc, maxBody: effectiveMax(maxBody), oob: make([]byte, oobSpace)}
}

// UnixConn returns the wrapped connection (for peer credentials, deadlines
// and Close).
func (c *Conn) UnixConn() *net.UnixConn { return c.uc }

// MaxBody returns the incoming body limit.
func (c *Conn) MaxBody() uint32 { return c.maxBody }

// ReadFrame reads the next frame; see the package-level ReadFrame. Only one
// goroutine may read.
func (c *Conn) ReadFrame() (*Frame, error) {
	if c.frameTimeout <= 0 {
		return readFrame(c.uc, c.maxBody, c.oob)
	}
	c.fr = frameClock{UnixConn: c.uc, d: c.frameTimeout}
	f, err := readFrame(&c.fr, c.maxBody, c.oob)
	c.midFrame = err != nil && c.fr.started
	return f, err
}

// SetFrameTimeout bounds how long the rest of a frame may take once its
// first bytes have arrived (0, the default: no bound), so a peer that stops
// in the middle of a frame cannot hold the reader forever. It changes the
// connection's read deadline while a frame is being read: a caller with its
// own deadline sets it again before the next ReadFrame. It must not be
// called concurrently with ReadFrame.
func (c *Conn) SetFrameTimeout(d time.Duration) { c.frameTimeout = d }

// MidFrame reports whether the last ReadFrame failed after part of a frame
// had arrived (only tracked with a frame timeout set).
func (c *Conn) MidFrame() bool { return c.midFrame }

// frameClock starts the frame timeout at the first bytes of a frame.
type frameClock struct {
	*net.UnixConn
	d       time.Duration
	started bool
}

func (f *frameClock) ReadMsgUnix(b, oob []byte) (int, int, int, *net.UnixAddr, error) {
	n, oobn, flags, addr, err := f.UnixConn.ReadMsgUnix(b, oob)
	if !f.started && (n > 0 || oobn > 0) {
		f.started = true
		_ = f.UnixConn.SetReadDeadline(time.Now().Add(f.d))
	}
	return n, oobn, flags, addr, err
}

// WriteFrame writes one frame; it is safe for concurrent use.
func (c *Conn) WriteFrame(h Header, body []byte, fds ...int) error {
	p := getBuf(len(body))
	*p = append(*p, body...)
	err := c.writeBuf(*p, h, fds)
	putBuf(p)
	return err
}

func (c *Conn) writeBuf(buf []byte, h Header, fds []int) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return writeFrame(c.uc, buf, h, fds)
}

// WriteMessage encodes m directly behind the header space (no extra copy)
// and writes the frame; it is safe for concurrent use.
func (c *Conn) WriteMessage(h Header, m Message, fds ...int) error {
	p, err := encodeFrame(m)
	if err != nil {
		return err
	}
	err = c.writeBuf(*p, h, fds)
	putBuf(p)
	return err
}

// Reply answers req with m (and fds), echoing its op, id and version.
func (c *Conn) Reply(req Header, m Message, fds ...int) error {
	return c.WriteMessage(Header{Version: req.Version, Op: req.Op, Flags: FlagResponse, ID: req.ID}, m, fds...)
}

// ReplyError answers req with an error frame carrying err's code and
// message (see AsError). For requests whose header could not be decoded,
// pass a zero Header: the reply then has op 0 and request id 0.
func (c *Conn) ReplyError(req Header, err error) error {
	v := req.Version
	if v < MinVersion || v > MaxVersion {
		v = HelloVersion
	}
	e := AsError(err)
	return c.WriteMessage(Header{Version: v, Op: req.Op, Flags: FlagResponse | FlagError, ID: req.ID}, (*ErrorBody)(e))
}

// Close closes the connection.
func (c *Conn) Close() error { return c.uc.Close() }
