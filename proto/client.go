package proto

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure Dial and NewClient. The zero value is usable.
type Options struct {
	// ClientName is sent in HELLO (logs, SESSIONS).
	ClientName string
	// MinVersion and MaxVersion bound the versions offered; 0 means this
	// build's MinVersion / MaxVersion.
	MinVersion, MaxVersion uint16
	// MaxReplyBody bounds reply bodies (0: DefaultMaxBody).
	MaxReplyBody uint32
	// NoMapStaging leaves the staging region unmapped (Staging returns nil
	// and WriteStaging fails); StagingFile still returns the fd.
	NoMapStaging bool
}

// Client is a connection to flashmemd. It is safe for concurrent use:
// requests are written under a mutex and one reader goroutine hands each
// reply to its caller by request id, so replies may arrive in any order.
//
// Every call takes a context. Cancelling it abandons the wait for the reply
// (a late reply is discarded, fds included); it does not undo the request on
// the server — a cancelled CYCLE's lease stays held until the connection
// closes. A context deadline also bounds the time spent writing the request;
// a write that times out midway leaves the stream unusable and closes the
// client.
type Client struct {
	conn    *Conn
	version uint16
	hello   HelloReply
	staging []byte
	stFile  *os.File

	nextID atomic.Uint64

	mu      sync.Mutex
	pending map[uint64]chan result
	err     error // why the client stopped; set once, before done is closed
	done    chan struct{}
	readerD chan struct{}
	once    sync.Once
}

type result struct {
	f   *Frame
	err error
}

// Dial connects to the daemon's unix socket at path, performs HELLO and
// maps the connection's staging region.
func Dial(ctx context.Context, path string, opts *Options) (*Client, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("proto: dial %s: %w", path, err)
	}
	return NewClient(ctx, c.(*net.UnixConn), opts)
}

// NewClient runs the client protocol over an established connection (for
// example one end of a socketpair). It performs HELLO; on failure it closes
// uc.
func NewClient(ctx context.Context, uc *net.UnixConn, opts *Options) (*Client, error) {
	if opts == nil {
		opts = &Options{}
	}
	c := &Client{
		conn:    NewConn(uc, opts.MaxReplyBody),
		version: HelloVersion,
		pending: make(map[uint64]chan result),
		done:    make(chan struct{}),
		readerD: make(chan struct{}),
	}
	go c.readLoop()
	hello := Hello{MinVersion: opts.MinVersion, MaxVersion: opts.MaxVersion, ClientName: opts.ClientName}
	if hello.MinVersion == 0 {
		hello.MinVersion = MinVersion
	}
	if hello.MaxVersion == 0 {
		hello.MaxVersion = MaxVersion
	}
	files, err := c.Call(ctx, OpHello, &hello, &c.hello)
	if err == nil {
		err = c.acceptHello(&hello, files, opts)
	} else {
		closeAll(files)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) acceptHello(req *Hello, files []*os.File, opts *Options) error {
	h := &c.hello
	if h.Version < req.MinVersion || h.Version > req.MaxVersion {
		closeAll(files)
		return fmt.Errorf("%w: server chose %d, offered %d..%d", ErrUnsupportedVersion, h.Version, req.MinVersion, req.MaxVersion)
	}
	want := 0
	if h.Limits.StagingSize > 0 {
		want = 1
	}
	if len(files) != want {
		closeAll(files)
		return fmt.Errorf("%w: HELLO reply with %d fds, want %d", ErrBadHeader, len(files), want)
	}
	c.version = h.Version
	if want == 1 {
		c.stFile = files[0]
		h.Staging = files[0]
		if !opts.NoMapStaging {
			mem, err := mapFile(c.stFile, h.Limits.StagingSize)
			if err != nil {
				return err
			}
			c.staging = mem
		}
	}
	return nil
}

// Hello returns the server's HELLO reply (version, limits, instance id).
func (c *Client) Hello() HelloReply { return c.hello }

// Version returns the negotiated protocol version.
func (c *Client) Version() uint16 { return c.version }

// Staging returns the mapped staging region (nil if none or unmapped). It
// stays valid until Close.
func (c *Client) Staging() []byte { return c.staging }

// StagingFile returns the staging region's fd; the client owns and closes it.
func (c *Client) StagingFile() *os.File { return c.stFile }

// WriteStaging copies data into the staging region at off. The mapping
// goes away in Close: do not call WriteStaging (or use Staging's slice)
// concurrently with or after Close.
func (c *Client) WriteStaging(off uint64, data []byte) error {
	if c.staging == nil {
		return fmt.Errorf("%w: no staging region mapped", ErrClosed)
	}
	if off > uint64(len(c.staging)) || uint64(len(data)) > uint64(len(c.staging))-off {
		return CodeLimitExceeded.Errorf("staging write [%d, %d) outside region of %d bytes", off, off+uint64(len(data)), len(c.staging))
	}
	copy(c.staging[off:], data)
	return nil
}

// Close closes the connection, fails calls in flight with ErrClosed, and
// unmaps and closes the staging region. Regions returned by Open and Resume
// are the caller's and are not touched.
func (c *Client) Close() error {
	c.shutdown(ErrClosed)
	<-c.readerD
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	if c.staging != nil {
		err = Unmap(c.staging)
		c.staging = nil
	}
	if c.stFile != nil {
		c.stFile.Close()
		c.stFile = nil
	}
	return err
}

// Err returns why the client stopped, or nil while it is usable.
func (c *Client) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

func (c *Client) shutdown(err error) {
	c.once.Do(func() {
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		close(c.done)
		c.conn.Close()
	})
}

func (c *Client) readLoop() {
	defer close(c.readerD)
	for {
		f, err := c.conn.ReadFrame()
		if err != nil {
			if !Fatal(err) && f != nil && f.IsResponse() && f.ID != 0 {
				c.deliver(f.ID, result{err: err})
				continue
			}
			c.shutdown(fmt.Errorf("%w: %w", ErrClosed, err))
			return
		}
		if !f.IsResponse() {
			f.CloseFiles() // servers send no requests in this version
			continue
		}
		if f.ID == 0 {
			// A connection-level error (for example after bad magic); the
			// server closes the connection next.
			var eb ErrorBody
			if f.IsError() && eb.Decode(f.Body) == nil {
				c.shutdown(fmt.Errorf("%w: %w", ErrClosed, (*Error)(&eb)))
			} else {
				c.shutdown(fmt.Errorf("%w: unsolicited reply (op %v)", ErrClosed, f.Op))
			}
			f.CloseFiles()
			return
		}
		c.deliver(f.ID, result{f: f})
	}
}

func (c *Client) deliver(id uint64, r result) {
	c.mu.Lock()
	ch := c.pending[id]
	delete(c.pending, id)
	if ch != nil {
		// Sent under the lock (the channel is buffered, so this never
		// blocks): a caller that gives up removes itself under the same
		// lock and then drains, so no reply — and no fd — is left behind.
		ch <- r
	}
	c.mu.Unlock()
	if ch == nil && r.f != nil {
		r.f.CloseFiles() // the caller gave up
	}
}

// Call sends req as op and decodes the reply into reply (which may be nil
// to discard it). It returns the descriptors that came with the reply; the
// caller owns them. An error frame is returned as *Error.
func (c *Client) Call(ctx context.Context, op Op, req, reply Message) ([]*os.File, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	bp, err := encodeFrame(req)
	if err != nil {
		return nil, fmt.Errorf("proto: encode %v: %w", op, err)
	}
	id := c.nextID.Add(1)
	ch := make(chan result, 1)
	c.mu.Lock()
	if c.isDone() {
		c.mu.Unlock()
		return nil, c.err
	}
	c.pending[id] = ch
	c.mu.Unlock()

	v := c.version
	if op == OpHello {
		v = HelloVersion
	}
	err = c.write(ctx, *bp, Header{Version: v, Op: op, ID: id})
	putBuf(bp)
	if err != nil {
		c.forget(id, ch)
		return nil, err
	}

	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		c.forget(id, ch)
		return nil, ctx.Err()
	case <-c.done:
		select {
		case r = <-ch:
		default:
			c.forget(id, ch)
			return nil, c.err
		}
	}
	if r.err != nil {
		return nil, fmt.Errorf("proto: %v reply: %w", op, r.err)
	}
	f := r.f
	if f.Op != op {
		f.CloseFiles()
		return nil, fmt.Errorf("%w: reply op %v to request op %v", ErrMalformed, f.Op, op)
	}
	if f.IsError() {
		f.CloseFiles()
		var eb ErrorBody
		if err := eb.Decode(f.Body); err != nil {
			return nil, fmt.Errorf("proto: %v error frame: %w", op, err)
		}
		return nil, (*Error)(&eb)
	}
	if reply != nil {
		if err := reply.Decode(f.Body); err != nil {
			f.CloseFiles()
			return nil, fmt.Errorf("proto: %v reply: %w", op, err)
		}
	}
	return f.Files, nil
}

func (c *Client) isDone() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// forget removes a pending call and closes the files of a reply that raced
// with the caller giving up.
func (c *Client) forget(id uint64, ch chan result) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
	select {
	case r := <-ch:
		if r.f != nil {
			r.f.CloseFiles()
		}
	default:
	}
}

func (c *Client) write(ctx context.Context, buf []byte, h Header) error {
	c.conn.wmu.Lock()
	defer c.conn.wmu.Unlock()
	if c.isDone() {
		return c.err
	}
	dl, hasDL := ctx.Deadline()
	if hasDL {
		c.conn.uc.SetWriteDeadline(dl)
	}
	err := writeFrame(c.conn.uc, buf, h, nil)
	if hasDL {
		c.conn.uc.SetWriteDeadline(time.Time{})
	}
	if err != nil {
		// Part of the frame may be on the wire: the stream is unusable.
		c.shutdown(fmt.Errorf("%w: write: %w", ErrClosed, err))
		return fmt.Errorf("proto: write %v: %w", h.Op, err)
	}
	return nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// expectFiles checks that a reply carried exactly n fds, closing them all
// otherwise.
func expectFiles(op Op, files []*os.File, n int) error {
	if len(files) != n {
		closeAll(files)
		return fmt.Errorf("%w: %v reply with %d fds, want %d", ErrBadHeader, op, len(files), n)
	}
	return nil
}

// Ping sends data and returns the echoed bytes.
func (c *Client) Ping(ctx context.Context, data []byte) ([]byte, error) {
	var r Ping
	files, err := c.Call(ctx, OpPing, &Ping{Data: data}, &r)
	if err == nil {
		err = expectFiles(OpPing, files, 0)
	}
	return r.Data, err
}

// Open creates a session. The reply's Region.File is the session's reserve
// region; the caller owns it (Region.Map, Unmap, Region.Close).
func (c *Client) Open(ctx context.Context, req *Open) (*OpenReply, error) {
	var r OpenReply
	files, err := c.Call(ctx, OpOpen, req, &r)
	if err == nil {
		err = expectFiles(OpOpen, files, 1)
	}
	if err != nil {
		return nil, err
	}
	r.Region.File = files[0]
	return &r, nil
}

// Resume attaches a persisted session by name; ownership of the region is
// as for Open.
func (c *Client) Resume(ctx context.Context, name string) (*ResumeReply, error) {
	var r ResumeReply
	files, err := c.Call(ctx, OpResume, &Resume{Name: name}, &r)
	if err == nil {
		err = expectFiles(OpResume, files, 1)
	}
	if err != nil {
		return nil, err
	}
	r.Region.File = files[0]
	return &r, nil
}

// call0 runs a request whose reply carries no fds.
func (c *Client) call0(ctx context.Context, op Op, req, reply Message) error {
	files, err := c.Call(ctx, op, req, reply)
	if err != nil {
		return err
	}
	return expectFiles(op, files, 0)
}

// Append sends prefill chunks (from the staging region or inline) and
// returns the session's new chunk count.
func (c *Client) Append(ctx context.Context, req *Append) (uint64, error) {
	var r ChunksReply
	err := c.call0(ctx, OpAppend, req, &r)
	return r.Chunks, err
}

// Commit commits decode chunks already written into reserve tail cells and
// returns the session's new chunk count.
func (c *Client) Commit(ctx context.Context, req *Commit) (uint64, error) {
	var r ChunksReply
	err := c.call0(ctx, OpCommit, req, &r)
	return r.Chunks, err
}

// Cycle runs one cycle for each entry. A failed entry has Err set; the
// returned error is for the frame as a whole.
func (c *Client) Cycle(ctx context.Context, entries []CycleEntry) ([]CycleResult, error) {
	var r CycleReply
	if err := c.call0(ctx, OpCycle, &Cycle{Entries: entries}, &r); err != nil {
		return nil, err
	}
	if len(r.Results) != len(entries) {
		return nil, fmt.Errorf("%w: %d cycle results for %d entries", ErrMalformed, len(r.Results), len(entries))
	}
	return r.Results, nil
}

// Release returns leases.
func (c *Client) Release(ctx context.Context, leases ...uint64) error {
	return c.call0(ctx, OpRelease, &Release{Leases: leases}, &Empty{})
}

// CloseSession detaches a session (see Close for the semantics of del).
func (c *Client) CloseSession(ctx context.Context, session uint64, del bool) error {
	return c.call0(ctx, OpClose, &Close{Session: session, Delete: del}, &Empty{})
}

// Persist flushes a session to SSD and marks it persisted.
func (c *Client) Persist(ctx context.Context, session uint64) error {
	return c.call0(ctx, OpPersist, &Persist{Session: session}, &Empty{})
}

// PersistDurable is Persist at a durability level: DurabilityCluster
// returns once the session is on replication_factor members of the cluster.
func (c *Client) PersistDurable(ctx context.Context, session uint64, d Durability) error {
	return c.call0(ctx, OpPersist, &Persist{Session: session, Durability: d}, &Empty{})
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (*StatusReply, error) {
	var r StatusReply
	if err := c.call0(ctx, OpStatus, &Empty{}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Sessions lists the sessions visible to this client.
func (c *Client) Sessions(ctx context.Context) (*SessionsReply, error) {
	var r SessionsReply
	if err := c.call0(ctx, OpSessions, &Empty{}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Inspect describes one session.
func (c *Client) Inspect(ctx context.Context, t AdminTarget) (*InspectReply, error) {
	var r InspectReply
	if err := c.call0(ctx, OpInspect, &t, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Verify reads every page of a session back and checks it.
func (c *Client) Verify(ctx context.Context, t AdminTarget) (*VerifyReply, error) {
	var r VerifyReply
	if err := c.call0(ctx, OpVerify, &t, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Delete deletes a session, live or persisted, with its pages on SSD.
func (c *Client) Delete(ctx context.Context, t AdminTarget) (*EvictReply, error) {
	var r EvictReply
	if err := c.call0(ctx, OpDelete, &t, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Cluster sends a CLUSTER request (status, join, remove).
func (c *Client) Cluster(ctx context.Context, req ClusterRequest) (*ClusterReply, error) {
	var r ClusterReply
	if err := c.call0(ctx, OpCluster, &req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Save persists a named session (any connection of its owner may ask).
func (c *Client) Save(ctx context.Context, t AdminTarget) (*EvictReply, error) {
	var r EvictReply
	if err := c.call0(ctx, OpSave, &t, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Evict evicts a session from memory.
func (c *Client) Evict(ctx context.Context, t AdminTarget) (*EvictReply, error) {
	var r EvictReply
	if err := c.call0(ctx, OpEvict, &t, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Models lists the daemon's indexer models, the sizes their sessions use and
// the limits in force (MODELS).
func (c *Client) Models(ctx context.Context) (*ModelsReply, error) {
	var r ModelsReply
	if err := c.call0(ctx, OpModels, &Empty{}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}
