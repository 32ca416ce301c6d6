package cluster

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"
)

// Peer frames: a request is op (u8), header length (u32 LE), payload length
// (u32 LE), the JSON header and the raw payload (page bytes). A reply has
// the same shape with a status byte in place of the op.
const (
	popPing     = 1
	popApply    = 2
	popJoin     = 3
	popRemove   = 4
	popManifest = 5
	popPutPages = 6
	popGetPage  = 7
	popPutMeta  = 8
	popGetMeta  = 9
	popDrop     = 10
	popGetPages = 11
	// popPutMetaDelta: PUT_META as a delta from the version Base.
	popPutMetaDelta = 12

	statusOK  = 0
	statusErr = 1

	maxHeader  = 16 << 20
	maxPayload = 512 << 20
)

type errReply struct {
	Err    string `json:"err"`
	Kind   string `json:"kind,omitempty"`
	Leader string `json:"leader,omitempty"`
}

func writeFrame(w *bufio.Writer, op byte, hdr any, payload ...[]byte) error {
	hb, err := json.Marshal(hdr)
	if err != nil {
		return err
	}
	n := 0
	for _, p := range payload {
		n += len(p)
	}
	var h [9]byte
	h[0] = op
	binary.LittleEndian.PutUint32(h[1:], uint32(len(hb)))
	binary.LittleEndian.PutUint32(h[5:], uint32(n))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	if _, err := w.Write(hb); err != nil {
		return err
	}
	for _, p := range payload {
		if _, err := w.Write(p); err != nil {
			return err
		}
	}
	return w.Flush()
}

// readFrame reads one frame; the header is decoded into hdr.
func readFrame(r *bufio.Reader, hdr any) (byte, []byte, error) {
	return readFrameInto(r, hdr, nil)
}

// payloadPool recycles the buffers PUT_PAGES payloads are read into (8 MiB
// batches, several in flight per replica): a fresh buffer per batch costs
// the zeroing and page faults of new memory, and garbage collections.
var payloadPool sync.Pool

func getPayload(n int) []byte {
	if b, ok := payloadPool.Get().(*[]byte); ok && cap(*b) >= n {
		return (*b)[:n]
	}
	return make([]byte, n)
}

func putPayload(b []byte) {
	if cap(b) >= 1<<20 {
		payloadPool.Put(&b)
	}
}

// readFrameInto is readFrame with the payload read into alloc(n) (nil:
// a new buffer).
func readFrameInto(r *bufio.Reader, hdr any, alloc func(op byte, n int) []byte) (byte, []byte, error) {
	var h [9]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	hl, pl := binary.LittleEndian.Uint32(h[1:]), binary.LittleEndian.Uint32(h[5:])
	if hl > maxHeader || pl > maxPayload {
		return 0, nil, fmt.Errorf("%w: frame header %d B, payload %d B", ErrBadCommand, hl, pl)
	}
	hb := make([]byte, hl)
	if _, err := io.ReadFull(r, hb); err != nil {
		return 0, nil, err
	}
	if err := json.Unmarshal(hb, hdr); err != nil {
		return 0, nil, fmt.Errorf("%w: frame header: %v", ErrBadCommand, err)
	}
	var p []byte
	if pl > 0 {
		if alloc != nil {
			p = alloc(h[0], int(pl))
		} else {
			p = make([]byte, pl)
		}
		if _, err := io.ReadFull(r, p); err != nil {
			return 0, nil, err
		}
	}
	return h[0], p, nil
}

// Peer request headers.
type (
	nameHdr struct {
		Name string `json:"name"`
		Page uint32 `json:"page,omitempty"`
		CRC  uint32 `json:"crc,omitempty"`
		// Owner and Epoch fence writes (PUT_META): a replica refuses a
		// sender its catalog already knows to be stale.
		Owner string `json:"owner,omitempty"`
		Epoch uint64 `json:"epoch,omitempty"`
		// Pages: GET_PAGES asks for these.
		Pages []uint32 `json:"pages,omitempty"`
		// Base: PUT_META_DELTA's version the delta applies to (CRC the
		// version it makes).
		Base uint32 `json:"base,omitempty"`
	}
	pagesHdr struct {
		Name  string     `json:"name"`
		Pages []PageInfo `json:"pages"`
		Lens  []int      `json:"lens"`
		Owner string     `json:"owner,omitempty"`
		Epoch uint64     `json:"epoch,omitempty"`
	}
	joinHdr struct {
		ID       string `json:"id"`
		RaftAddr string `json:"raft_addr"`
	}
	manifestReply struct {
		Pages   []PageInfo `json:"pages"`
		MetaCRC uint32     `json:"meta_crc"`
		Bad     []uint32   `json:"bad,omitempty"`
	}
	pingReply struct {
		ID      string `json:"id"`
		Applied uint64 `json:"applied"`
	}
)

// peerConn is one authenticated connection, used by one request at a time.
type peerConn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

// peerClient pools authenticated connections per address.
type peerClient struct {
	d    *dialer
	mu   sync.Mutex
	idle map[string][]*peerConn
	// bytesOut counts page bytes sent (metrics).
	onBytes func(n int)
}

func (pc *peerClient) get(addr string, fresh bool) (*peerConn, bool, error) {
	pc.mu.Lock()
	if l := pc.idle[addr]; len(l) > 0 && !fresh {
		c := l[len(l)-1]
		pc.idle[addr] = l[:len(l)-1]
		pc.mu.Unlock()
		return c, true, nil
	}
	pc.mu.Unlock()
	c, err := pc.d.dial(addr, 2*time.Second)
	if err != nil {
		return nil, false, err
	}
	return &peerConn{c: c, r: bufio.NewReaderSize(c, 1<<20), w: bufio.NewWriterSize(c, 1<<20)}, false, nil
}

func (pc *peerClient) put(addr string, c *peerConn) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if len(pc.idle[addr]) >= 8 {
		_ = c.c.Close()
		return
	}
	pc.idle[addr] = append(pc.idle[addr], c)
}

func (pc *peerClient) closeAll() {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	for _, l := range pc.idle {
		for _, c := range l {
			_ = c.c.Close()
		}
	}
	pc.idle = map[string][]*peerConn{}
}

// peerError is an error the remote side reported.
type peerError struct{ errReply }

func (e *peerError) Error() string { return e.Err }

func (e *peerError) Unwrap() error {
	switch e.Kind {
	case "stale":
		return ErrStaleEpoch
	case "not_found":
		return ErrNotFound
	case "no_quorum", "not_leader":
		return ErrNoQuorum
	case "checksum":
		return ErrChecksum
	case "generation":
		return ErrGeneration
	case "member":
		return ErrUnknownMember
	}
	return nil
}

// call sends one request and decodes the reply header into out. A pooled
// connection that turns out dead (the member restarted since) is replaced
// by a fresh one once; requests are idempotent.
func (pc *peerClient) call(ctx context.Context, addr string, op byte, hdr, out any, payload ...[]byte) ([]byte, error) {
	p, err := pc.call1(ctx, addr, false, op, hdr, out, payload...)
	var stale *staleConn
	if errors.As(err, &stale) {
		p, err = pc.call1(ctx, addr, true, op, hdr, out, payload...)
	}
	if errors.As(err, &stale) {
		err = stale.err
	}
	return p, err
}

// staleConn marks a transport failure on a pooled connection.
type staleConn struct{ err error }

func (s *staleConn) Error() string { return s.err.Error() }

func (pc *peerClient) call1(ctx context.Context, addr string, fresh bool, op byte, hdr, out any, payload ...[]byte) ([]byte, error) {
	c, pooled, err := pc.get(addr, fresh)
	if err != nil {
		return nil, fmt.Errorf("peer %s: %w", addr, err)
	}
	wrap := func(err error) error {
		err = fmt.Errorf("peer %s: %w", addr, err)
		if pooled {
			return &staleConn{err}
		}
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.c.SetDeadline(dl)
	} else {
		_ = c.c.SetDeadline(time.Now().Add(60 * time.Second))
	}
	if err := writeFrame(c.w, op, hdr, payload...); err != nil {
		_ = c.c.Close()
		return nil, wrap(err)
	}
	if pc.onBytes != nil {
		for _, p := range payload {
			pc.onBytes(len(p))
		}
	}
	var raw json.RawMessage
	st, p, err := readFrame(c.r, &raw)
	if err != nil {
		_ = c.c.Close()
		return nil, wrap(err)
	}
	_ = c.c.SetDeadline(time.Time{})
	pc.put(addr, c)
	if st != statusOK {
		var e errReply
		_ = json.Unmarshal(raw, &e)
		return nil, fmt.Errorf("peer %s: %w", addr, &peerError{e})
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return nil, fmt.Errorf("peer %s: %w: %v", addr, ErrBadCommand, err)
		}
	}
	return p, nil
}

// serve answers one authenticated peer connection.
func (n *Node) servePeer(c net.Conn) {
	defer c.Close()
	r, w := bufio.NewReaderSize(c, 1<<20), bufio.NewWriterSize(c, 1<<20)
	// PUT_PAGES payloads are written to the store and dropped when the
	// handler returns: their buffers are reused.
	pooled := func(op byte, n int) []byte {
		if op == popPutPages && n >= 1<<20 {
			return getPayload(n)
		}
		return make([]byte, n)
	}
	for {
		var raw json.RawMessage
		op, payload, err := readFrameInto(r, &raw, pooled)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				n.log.Debug("peer connection ended", "remote", c.RemoteAddr().String(), "err", err)
			}
			return
		}
		out, data, err := n.handlePeer(op, raw, payload)
		if op == popPutPages {
			putPayload(payload)
		}
		if err != nil {
			e := errReply{Err: err.Error(), Kind: errKind(err)}
			if errors.Is(err, ErrNoQuorum) {
				_, id := n.raft.LeaderWithID()
				e.Leader = string(id)
			}
			if werr := writeFrame(w, statusErr, e); werr != nil {
				return
			}
			continue
		}
		if out == nil {
			out = struct{}{}
		}
		if err := writeFrame(w, statusOK, out, data...); err != nil {
			return
		}
	}
}

func errKind(err error) string {
	switch {
	case errors.Is(err, ErrStaleEpoch):
		return "stale"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrNoQuorum):
		return "no_quorum"
	case errors.Is(err, ErrChecksum):
		return "checksum"
	case errors.Is(err, ErrGeneration):
		return "generation"
	case errors.Is(err, ErrUnknownMember):
		return "member"
	}
	return "error"
}

func (n *Node) handlePeer(op byte, raw json.RawMessage, payload []byte) (any, [][]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	switch op {
	case popPing:
		return pingReply{ID: n.cfg.NodeID, Applied: n.cat.AppliedIndex()}, nil, nil
	case popApply:
		var cmd Command
		if err := json.Unmarshal(raw, &cmd); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
		}
		r, err := n.applyLocal(&cmd, 5*time.Second)
		if err != nil {
			return nil, nil, err
		}
		return r, nil, nil
	case popJoin:
		var h joinHdr
		if err := json.Unmarshal(raw, &h); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
		}
		if !n.IsLeader() {
			_, err := n.forward(ctx, popJoin, h)
			return nil, nil, err
		}
		return nil, nil, n.addVoterLocal(h.ID, h.RaftAddr)
	case popRemove:
		var h joinHdr
		if err := json.Unmarshal(raw, &h); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
		}
		if !n.IsLeader() {
			_, err := n.forward(ctx, popRemove, h)
			return nil, nil, err
		}
		return nil, nil, n.removeLocal(h.ID)
	case popManifest:
		var h nameHdr
		if err := json.Unmarshal(raw, &h); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
		}
		m, err := n.localManifest(ctx, h.Name)
		if err != nil {
			return nil, nil, err
		}
		return m, nil, nil
	case popPutPages:
		var h pagesHdr
		if err := json.Unmarshal(raw, &h); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
		}
		return nil, nil, n.receivePages(ctx, &h, payload)
	case popGetPage:
		var h nameHdr
		if err := json.Unmarshal(raw, &h); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
		}
		gen, data, err := n.store.ReadPage(ctx, h.Name, h.Page)
		if err != nil {
			return nil, nil, err
		}
		n.metrics.bytesServed.Add(uint64(len(data)))
		return PageInfo{Page: h.Page, Gen: gen, CRC: Checksum(data)}, [][]byte{data}, nil
	case popGetPages:
		var h nameHdr
		if err := json.Unmarshal(raw, &h); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
		}
		if len(h.Pages) > 256 {
			return nil, nil, fmt.Errorf("%w: %d pages in one GET_PAGES, at most 256", ErrBadCommand, len(h.Pages))
		}
		// Pages this node cannot read are left out; the caller asks
		// another replica for them.
		out := pagesHdr{Name: h.Name}
		var data [][]byte
		for _, p := range h.Pages {
			gen, b, err := n.store.ReadPage(ctx, h.Name, p)
			if err != nil {
				continue
			}
			out.Pages = append(out.Pages, PageInfo{Page: p, Gen: gen, CRC: Checksum(b)})
			out.Lens = append(out.Lens, len(b))
			data = append(data, b)
			n.metrics.bytesServed.Add(uint64(len(b)))
		}
		return out, data, nil
	case popPutMeta:
		var h nameHdr
		if err := json.Unmarshal(raw, &h); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
		}
		if Checksum(payload) != h.CRC {
			return nil, nil, fmt.Errorf("%w: metadata of %q", ErrChecksum, h.Name)
		}
		if err := n.fence(h.Name, h.Owner, h.Epoch); err != nil {
			return nil, nil, err
		}
		if err := n.keepCommitted(ctx, h.Name, h.CRC); err != nil {
			return nil, nil, err
		}
		return nil, nil, n.store.WriteMeta(ctx, h.Name, payload)
	case popPutMetaDelta:
		var h nameHdr
		if err := json.Unmarshal(raw, &h); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
		}
		if err := n.fence(h.Name, h.Owner, h.Epoch); err != nil {
			return nil, nil, err
		}
		md, ok := n.store.(MetaDeltas)
		if !ok {
			return nil, nil, fmt.Errorf("%w: this store takes metadata whole", ErrBadCommand)
		}
		return nil, nil, md.ApplyMetaDelta(ctx, h.Name, h.Base, h.CRC, payload)
	case popGetMeta:
		var h nameHdr
		if err := json.Unmarshal(raw, &h); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
		}
		meta, _, err := n.store.Meta(ctx, h.Name)
		if h.CRC != 0 && (err != nil || Checksum(meta) != h.CRC) {
			// The caller wants that version (the committed one): this node
			// may still have it although it holds a later one now.
			if mv, ok := n.store.(MetaVersions); ok {
				if b, ok := mv.MetaVersion(ctx, h.Name, h.CRC); ok {
					meta, err = b, nil
				}
			}
		}
		if err != nil {
			return nil, nil, err
		}
		return nameHdr{Name: h.Name, CRC: Checksum(meta)}, [][]byte{meta}, nil
	case popDrop:
		var h nameHdr
		if err := json.Unmarshal(raw, &h); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
		}
		if s, ok := n.cat.Session(h.Name); ok && s.Owner == n.cfg.NodeID {
			return nil, nil, fmt.Errorf("%w: %q is owned by this node", ErrStaleEpoch, h.Name)
		}
		return nil, nil, n.store.Delete(ctx, h.Name)
	}
	return nil, nil, fmt.Errorf("%w: unknown peer op %d", ErrBadCommand, op)
}

// fence refuses replica writes from a sender the local catalog knows is no
// longer the owner (an epoch moved past it), so a stale owner cannot
// overwrite the copy a new owner's manifest names. Re-replication sends
// the owner's identity as recorded, so it passes.
func (n *Node) fence(name, owner string, epoch uint64) error {
	if owner == "" {
		return fmt.Errorf("%w: replica write of %q without an owner epoch", ErrBadCommand, name)
	}
	cur, ce, ok := n.cat.OwnerOf(name)
	if ok && (ce > epoch || (ce == epoch && cur != owner)) {
		return fmt.Errorf("%w: %s at epoch %d sent %q, which is owned by %s at epoch %d", ErrStaleEpoch, owner, epoch, name, cur, ce)
	}
	if de, gone := n.deletedAt(name); !ok && gone && epoch <= de {
		return fmt.Errorf("%w: %s at epoch %d sent %q, which was deleted at epoch %d", ErrStaleEpoch, owner, epoch, name, de)
	}
	return nil
}

// receivePages is the replica side of streaming: every page is checked
// against its CRC32C and must not be older than the copy held; the batch is
// durable before the ack goes back.
func (n *Node) receivePages(ctx context.Context, h *pagesHdr, payload []byte) error {
	if len(h.Lens) != len(h.Pages) {
		return fmt.Errorf("%w: %d pages, %d lengths", ErrBadCommand, len(h.Pages), len(h.Lens))
	}
	if err := n.fence(h.Name, h.Owner, h.Epoch); err != nil {
		return err
	}
	pages := make([]PageData, len(h.Pages))
	committed, _ := n.cat.Session(h.Name)
	off := 0
	for i, p := range h.Pages {
		l := h.Lens[i]
		if l < 0 || off+l > len(payload) {
			return fmt.Errorf("%w: page %d length %d past the payload", ErrBadCommand, p.Page, l)
		}
		data := payload[off : off+l]
		off += l
		if Checksum(data) != p.CRC {
			n.metrics.checksumFailures.Add(1)
			return fmt.Errorf("%w: page %d of %q", ErrChecksum, p.Page, h.Name)
		}
		if committed != nil && int(p.Page) < len(committed.Pages) && p.Gen < committed.Pages[p.Page].Gen {
			return fmt.Errorf("%w: page %d of %q at generation %d, the committed manifest has %d", ErrGeneration, p.Page, h.Name, p.Gen, committed.Pages[p.Page].Gen)
		}
		pages[i] = PageData{PageInfo: p, Data: data}
	}
	if off != len(payload) {
		return fmt.Errorf("%w: %d payload bytes past the pages", ErrBadCommand, len(payload)-off)
	}
	if err := n.store.WritePages(ctx, h.Name, pages); err != nil {
		return err
	}
	n.metrics.bytesReceived.Add(uint64(off))
	return nil
}

// keepCommitted keeps the committed version of name's metadata on this
// replica before a PUT_META of another version replaces it (MetaVersions).
// A delta appends to the record chain, which keeps the version before it
// readable; a whole blob replaces the chain.
func (n *Node) keepCommitted(ctx context.Context, name string, incoming uint32) error {
	mv, ok := n.store.(MetaVersions)
	if !ok {
		return nil
	}
	s, ok := n.cat.Session(name)
	if !ok || s.Version == 0 || s.MetaCRC == incoming || !slices.Contains(s.Replicas, n.cfg.NodeID) {
		return nil
	}
	if err := mv.KeepMeta(ctx, name, s.MetaCRC); err != nil {
		return fmt.Errorf("keeping the committed metadata of %q before replacing it: %w", name, err)
	}
	return nil
}

func newPeerClient(d *dialer) *peerClient {
	return &peerClient{d: d, idle: map[string][]*peerConn{}}
}

var _ = slog.Default
