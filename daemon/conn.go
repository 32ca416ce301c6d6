package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flashmemory/flashmemory/proto"
)

// conn is one client connection. Its read loop handles every frame in
// arrival order, so a session's appends, commits and cycles apply in the
// order the client sent them; only the part of a CYCLE that waits for
// background recall runs on its own goroutine, so the loop never waits on
// I/O.
type conn struct {
	d    *Daemon
	pc   *proto.Conn
	cred Cred
	name string

	version uint16 // 0 until HELLO

	staging     []byte
	stagingFile *os.File

	ctx    context.Context
	cancel context.CancelFunc
	async  sync.WaitGroup
	// cycleSem bounds the CYCLE goroutines of the connection (see
	// conn.cycle).
	cycleSem chan struct{}

	mu       sync.Mutex
	sessions map[uint64]*session
	leases   map[uint64]*lease
}

func newConn(d *Daemon, uc *net.UnixConn, cred Cred) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	return &conn{
		d:        d,
		pc:       proto.NewConn(uc, d.cfg.Limits.MaxFrameBytes),
		cred:     cred,
		ctx:      ctx,
		cancel:   cancel,
		sessions: map[uint64]*session{},
		leases:   map[uint64]*lease{},
		cycleSem: make(chan struct{}, maxCyclesInFlight),
	}
}

// maxCyclesInFlight is how many CYCLE frames of one connection may be
// answered at once; the read loop waits for a slot before the next one.
const maxCyclesInFlight = 64

// stop makes the read loop return after the frame in hand; in-flight cycle
// replies still go out.
func (c *conn) stop() {
	_ = c.pc.UnixConn().SetReadDeadline(time.Now())
}

func (c *conn) serve() {
	log := c.d.log.With("pid", c.cred.PID, "uid", c.cred.UID)
	log.Debug("client connected")
	var goodbye error // the unsolicited error frame sent before closing
	defer func() {
		c.async.Wait()
		c.cancel()
		c.teardown()
		if goodbye == nil && c.d.closing.Load() {
			goodbye = proto.CodeShuttingDown.Errorf("daemon is shutting down; connect again once it has restarted (persisted sessions stay resumable)")
		}
		if goodbye != nil {
			// Request id 0: the connection, not one request, ends here.
			uc := c.pc.UnixConn()
			_ = uc.SetWriteDeadline(time.Now().Add(time.Second))
			_ = c.pc.ReplyError(proto.Header{}, goodbye)
			_ = uc.CloseWrite()
		}
		c.pc.Close()
		if c.staging != nil {
			_ = unix.Munmap(c.staging)
		}
		if c.stagingFile != nil {
			c.stagingFile.Close()
		}
		log.Debug("client disconnected", "client", c.name)
	}()
	lim := c.d.cfg.Limits
	handshakeBy := time.Now().Add(time.Duration(lim.HandshakeTimeout))
	var deadline time.Time // the read deadline in force
	for {
		// Before HELLO the connection must finish the handshake by a fixed
		// time; after it, a connection that holds nothing may stay silent
		// for idle_timeout. stop() sets closing before its own deadline, so
		// checking closing after setting ours never misses a shutdown.
		want, why := c.readDeadline(handshakeBy)
		if !want.Equal(deadline) {
			_ = c.pc.UnixConn().SetReadDeadline(want)
			deadline = want
		}
		// A frame once started must finish within frame_timeout (and, before
		// HELLO, still by the handshake deadline); ReadFrame moves the read
		// deadline for it, so ours is set again afterwards.
		ft := time.Duration(lim.FrameTimeout)
		if c.version == 0 {
			ft = max(min(ft, time.Until(handshakeBy)), time.Nanosecond)
		}
		c.pc.SetFrameTimeout(ft)
		if c.d.closing.Load() {
			return
		}
		f, err := c.pc.ReadFrame()
		deadline = time.Unix(0, 1) // moved by the frame timeout: set ours again
		if err != nil {
			if c.d.closing.Load() {
				return
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if c.pc.MidFrame() && c.version != 0 {
					why = proto.CodeBadFrame.Errorf("a frame was not completed within %v of its first byte (limits.frame_timeout); send each frame whole", ft)
				}
				goodbye = why
				log.Debug("closing connection", "reason", why)
				return
			}
			if errors.Is(err, proto.ErrTruncated) && !errors.Is(err, net.ErrClosed) {
				// End of file inside a frame (the peer shut its write side
				// mid-frame): the stream is lost, and a peer still reading
				// learns why, as protocol.md section 4 promises.
				goodbye = proto.CodeBadFrame.Errorf("the connection ended in the middle of a frame (%v); send each frame whole", err)
				log.Debug("closing connection", "reason", goodbye)
				return
			}
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return
			}
			c.d.m.errorsTotal.WithLabelValues(proto.CodeOf(err).String()).Inc()
			var h proto.Header
			if f != nil {
				h = f.Header // the frame was consumed: answer it by its id
			}
			_ = c.pc.ReplyError(h, err)
			if proto.Fatal(err) {
				log.Warn("closing connection after a bad frame", "err", err)
				return
			}
			continue
		}
		if f.ID == 0 {
			// Id 0 is how the daemon addresses the connection itself: a
			// reply to it would read as "connection closed".
			f.CloseFiles()
			goodbye = proto.CodeBadFrame.Errorf("request id 0 is reserved (%s request); number requests from 1", f.Op)
			return
		}
		c.handle(f)
	}
}

// readDeadline is the read deadline the connection is under now, and the
// error frame it gets when the deadline passes.
func (c *conn) readDeadline(handshakeBy time.Time) (time.Time, error) {
	lim := c.d.cfg.Limits
	if c.version == 0 {
		return handshakeBy, proto.CodeHandshakeRequired.Errorf("no HELLO within %v of connecting (limits.handshake_timeout); connect again and send HELLO first", time.Duration(lim.HandshakeTimeout))
	}
	if lim.IdleTimeout <= 0 {
		return time.Time{}, nil
	}
	c.mu.Lock()
	holds := len(c.sessions) + len(c.leases)
	c.mu.Unlock()
	if holds > 0 {
		return time.Time{}, nil
	}
	return time.Now().Add(time.Duration(lim.IdleTimeout)), proto.CodeLimitExceeded.Errorf("idle for %v holding no session (limits.idle_timeout); connect again when there is work", time.Duration(lim.IdleTimeout))
}

// handle answers one frame. Errors of every kind become one error frame
// here; nothing a client sends can stop the daemon.
func (c *conn) handle(f *proto.Frame) {
	defer f.CloseFiles()
	c.d.m.framesTotal.WithLabelValues(f.Op.String()).Inc()
	if c.d.closing.Load() && f.Op != proto.OpPing {
		c.fail(f.Header, proto.CodeShuttingDown.Errorf("daemon is shutting down"))
		return
	}
	if err := proto.CheckRequest(f.Header); err != nil {
		c.fail(f.Header, proto.CodeBadFrame.Errorf("%v", err))
		return
	}
	if c.version == 0 && f.Op != proto.OpHello && f.Op != proto.OpPing {
		c.fail(f.Header, proto.CodeHandshakeRequired.Errorf("send HELLO first (got %s)", f.Op))
		return
	}
	if c.version != 0 && f.Version != c.version {
		c.fail(f.Header, proto.CodeUnsupportedVersion.Errorf("frame version %d, negotiated %d", f.Version, c.version))
		return
	}
	req := proto.NewRequest(f.Op)
	if req == nil {
		c.fail(f.Header, proto.CodeUnknownOp.Errorf("unknown op %#04x", uint16(f.Op)))
		return
	}
	if err := req.Decode(f.Body); err != nil {
		c.fail(f.Header, proto.CodeBadRequest.Errorf("%s: %v", f.Op, err))
		return
	}
	var (
		reply proto.Message
		fds   []int
		err   error
	)
	switch m := req.(type) {
	case *proto.Hello:
		reply, fds, err = c.hello(m)
	case *proto.Ping:
		reply = &proto.Ping{Data: m.Data}
	case *proto.Open:
		reply, fds, err = c.open(m)
	case *proto.Resume:
		reply, fds, err = c.resume(m)
	case *proto.Close:
		reply, err = &proto.Empty{}, c.closeSession(m)
	case *proto.Persist:
		reply, err = &proto.Empty{}, c.persist(m)
	case *proto.Append:
		reply, err = c.appendChunks(m)
	case *proto.Commit:
		reply, err = c.commit(m)
	case *proto.Cycle:
		c.cycle(f.Header, m) // replies itself, possibly later
		return
	case *proto.Release:
		reply, err = &proto.Empty{}, c.release(m.Leases)
	case *proto.Empty:
		reply, err = c.admin(f.Op, nil)
	case *proto.AdminTarget:
		reply, err = c.admin(f.Op, m)
	case *proto.ClusterRequest:
		reply, err = c.clusterAdmin(m)
	default:
		err = proto.CodeUnknownOp.Errorf("op %s is not served", f.Op)
	}
	if err != nil {
		c.fail(f.Header, err)
		return
	}
	if err := c.pc.Reply(f.Header, reply, fds...); err != nil {
		c.d.log.Debug("reply failed", "op", f.Op, "err", err)
	}
	if f.Op == proto.OpOpen || f.Op == proto.OpResume {
		for _, fd := range fds {
			_ = unix.Close(fd) // a copy of the region's fd (dupFD)
		}
	}
}

func (c *conn) fail(h proto.Header, err error) {
	e := wireError(err)
	c.d.m.errorsTotal.WithLabelValues(e.Code.String()).Inc()
	if e.Code == proto.CodeInternal {
		c.d.log.Error("request failed", "op", h.Op, "err", err)
	}
	_ = c.pc.ReplyError(h, e)
}

func (c *conn) hello(m *proto.Hello) (proto.Message, []int, error) {
	if c.version != 0 {
		return nil, nil, proto.CodeHandshakeRequired.Errorf("HELLO already done on this connection")
	}
	v, err := m.Negotiate()
	if err != nil {
		return nil, nil, err
	}
	size := c.d.cfg.Limits.StagingBytes
	if size > 0 {
		f, mem, err := newMemfd("flashmem-staging", size)
		if err != nil {
			return nil, nil, fmt.Errorf("staging region: %w", err)
		}
		c.stagingFile, c.staging = f, mem
	}
	c.version = v
	c.name = m.ClientName
	r := &proto.HelloReply{
		Version: v,
		Limits: proto.Limits{
			MaxBody:         c.d.cfg.Limits.MaxFrameBytes,
			MaxSessions:     uint32(c.d.cfg.Limits.MaxSessionsPerConn),
			MaxCycleEntries: proto.MaxCycleEntries,
			StagingSize:     uint64(size),
		},
		InstanceID: c.d.instance,
		Server:     Version,
	}
	var fds []int
	if c.stagingFile != nil {
		fds = []int{int(c.stagingFile.Fd())}
	}
	return r, fds, nil
}

// newMemfd creates a shared memory file of size bytes and maps it.
func newMemfd(name string, size int64) (*os.File, []byte, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	if err := unix.Ftruncate(fd, size); err != nil {
		f.Close()
		return nil, nil, err
	}
	// The size is fixed for the connection's life: a client that could
	// shrink it would make the daemon fault on its own mapping.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("sealing %s: %w", name, err)
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, mem, nil
}

// owned returns the session if this connection owns it.
func (c *conn) owned(id uint64) (*session, error) {
	c.mu.Lock()
	s := c.sessions[id]
	c.mu.Unlock()
	if s != nil {
		return s, nil
	}
	c.d.mu.Lock()
	_, exists := c.d.sessions[id]
	c.d.mu.Unlock()
	if exists {
		return nil, proto.CodeNotOwner.Errorf("session %d belongs to another connection", id)
	}
	return nil, proto.CodeUnknownSession.Errorf("no session %d", id)
}

// teardown runs when the connection ends: its leases are reclaimed at once,
// ephemeral sessions are destroyed, persisted ones detach and stay
// resumable.
func (c *conn) teardown() {
	c.mu.Lock()
	leases := c.leases
	c.leases = map[uint64]*lease{}
	sessions := c.sessions
	c.sessions = map[uint64]*session{}
	c.mu.Unlock()
	for _, l := range leases {
		l.s.releaseLease(l)
		c.d.m.leasesReclaim.Inc()
	}
	for _, s := range sessions {
		if s.persisted() {
			s.detach()
			continue
		}
		_ = c.d.dropSession(s, true) // purging cannot fail
	}
}
