package cluster

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// SessionInfo is what the daemon tells the catalog about a session besides
// its pages (those come from the Store).
type SessionInfo struct {
	Name     string
	OwnerUID uint32
	OwnerGID uint32
	Model    string
	Layout   []byte // JSON
	Policy   []byte // JSON
	Chunks   uint64
	// Gens, when set, are the generations of the pages the metadata names
	// (as Store.Meta will return them; the caller holds the session still):
	// the page stream then starts at once while the metadata blob, tens of
	// MB to read, merge and checksum, is made alongside. nil: Meta first.
	Gens []uint64
}

// metaFuture is the metadata a PERSIST sends — the blob, its CRC and a
// delta from the committed version (nil: it goes whole) — made while the
// pages stream.
type metaFuture struct {
	done  chan struct{}
	blob  []byte
	crc   uint32
	delta []byte
	gens  []uint64
	err   error
}

// get waits for the metadata.
func (f *metaFuture) get(ctx context.Context) (*metaFuture, error) {
	select {
	case <-f.done:
		return f, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// defaultBatchBytes bounds one PUT_PAGES frame (Config.BatchBytes).
const defaultBatchBytes = 8 << 20

func (n *Node) lockName(name string) func() {
	v, _ := n.sessMu.LoadOrStore(name, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// Owner returns the catalog's owner and epoch of name (ok false: not in the
// catalog, a local-only session).
func (n *Node) Owner(name string) (owner string, epoch uint64, ok bool) {
	return n.cat.OwnerOf(name)
}

// down lists the members this node's pings find down; one that looks down
// is pinged once more first (it may have just restarted).
func (n *Node) down() []string {
	var out []string
	for _, m := range n.cat.Members() {
		if n.Alive(m.ID) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		var pr pingReply
		_, err := n.client.call(ctx, m.PeerAddr, popPing, struct{}{}, &pr)
		cancel()
		if err == nil {
			n.healthMu.Lock()
			n.contact[m.ID] = time.Now()
			n.healthMu.Unlock()
			continue
		}
		out = append(out, m.ID)
	}
	return out
}

// CheckOwner fails with ErrStaleEpoch unless the catalog (as applied here)
// names this node owner of name at epoch. A session not in the catalog is
// this node's own.
func (n *Node) CheckOwner(name string, epoch uint64) error {
	s, ok := n.cat.Session(name)
	if !ok {
		return nil
	}
	if s.Epoch < epoch {
		return nil // the catalog here has not applied this node's own claim yet
	}
	if s.Owner != n.cfg.NodeID || s.Epoch != epoch {
		return fmt.Errorf("%w: session %q is owned by %s at epoch %d (this node holds %d); RESUME it again to take it over",
			ErrStaleEpoch, name, s.Owner, s.Epoch, epoch)
	}
	return nil
}

// Claim makes this node owner of name: creates the record (epoch 1) if the
// catalog has none, keeps it if this node owns it already, else moves it by
// bumping the epoch. It returns the record after the claim, once this
// node's own copy of the catalog has applied it (so a name missing from it
// afterwards was deleted, not merely not applied yet).
func (n *Node) Claim(ctx context.Context, name string, uid, gid uint32) (*Session, error) {
	s, err := n.claim(ctx, name, uid, gid)
	if err == nil {
		n.awaitApplied(ctx, name, s.Epoch)
	}
	return s, err
}

// awaitApplied waits (up to 3 s) until the local catalog has name at epoch
// or later, or no longer has it after having had it.
func (n *Node) awaitApplied(ctx context.Context, name string, epoch uint64) {
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if s, ok := n.cat.Session(name); ok && s.Epoch >= epoch {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (n *Node) claim(ctx context.Context, name string, uid, gid uint32) (*Session, error) {
	for range 5 {
		cur, ok := n.cat.Session(name)
		var expect uint64
		if ok {
			if cur.Owner == n.cfg.NodeID {
				// Confirm through the log that nobody moved it meanwhile.
				r, err := n.Apply(ctx, &Command{Op: opAssign, Name: name, Node: n.cfg.NodeID, Epoch: cur.Epoch, RF: n.cfg.ReplicationFactor})
				if err == nil {
					return r.Session, nil
				}
				if errors.Is(err, ErrStaleEpoch) || errors.Is(err, ErrNotFound) {
					// Moved or deleted meanwhile: our view was behind.
					time.Sleep(100 * time.Millisecond)
					continue
				}
				return nil, err
			}
			expect = cur.Epoch
		}
		r, err := n.Apply(ctx, &Command{Op: opClaim, Name: name, Node: n.cfg.NodeID, Epoch: expect,
			Session: &Session{OwnerUID: uid, OwnerGID: gid}})
		if err == nil {
			return r.Session, nil
		}
		if !errors.Is(err, ErrStaleEpoch) && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		// Our view was behind: wait for the log to catch up and retry.
		time.Sleep(100 * time.Millisecond)
	}
	return nil, fmt.Errorf("%w: session %q kept moving while this node claimed it", ErrStaleEpoch, name)
}

// ReplicateResult describes one replication.
type ReplicateResult struct {
	Replicas  []string
	PagesSent int
	BytesSent int64
	Epoch     uint64
}

// Persist replicates the local copy of a session this node owns at epoch
// to the replicas the leader assigns, then commits the manifest naming the
// nodes that acked. It fails with ErrUnderReplicated when fewer than
// replication_factor copies (this node included) are committed, and with
// ErrStaleEpoch when the session moved.
func (n *Node) Persist(ctx context.Context, info SessionInfo, epoch uint64) (*ReplicateResult, error) {
	unlock := n.lockName(info.Name)
	defer unlock()
	start := time.Now()
	if err := n.CheckOwner(info.Name, epoch); err != nil {
		return nil, err
	}
	r, err := n.Apply(ctx, &Command{Op: opAssign, Name: info.Name, Node: n.cfg.NodeID, Epoch: epoch, RF: n.cfg.ReplicationFactor, Exclude: n.down()})
	if err != nil {
		return nil, err
	}
	prev := r.Session
	mf := &metaFuture{done: make(chan struct{})}
	makeMeta := func() {
		defer close(mf.done)
		meta, gens, err := n.store.Meta(ctx, info.Name)
		if err != nil {
			mf.err = fmt.Errorf("session %q local copy: %w", info.Name, err)
			return
		}
		if info.Gens != nil && !slices.Equal(gens, info.Gens) {
			mf.err = fmt.Errorf("%w: session %q: its metadata names other page generations than the session had", ErrGeneration, info.Name)
			return
		}
		mf.blob, mf.crc, mf.gens = meta, Checksum(meta), gens
		// Replicas holding the committed version get the metadata as a
		// delta from it when the store can make one.
		if md, ok := n.store.(MetaDeltas); ok && prev.Version > 0 && prev.MetaCRC != mf.crc {
			if d, ok := md.MetaDelta(ctx, info.Name, prev.MetaCRC, meta); ok {
				mf.delta = d
			}
		}
	}
	gens := info.Gens
	if gens == nil {
		makeMeta()
		if mf.err != nil {
			return nil, mf.err
		}
		gens = mf.gens
	} else {
		go makeMeta()
		// The store's metadata calls may touch the session, which the
		// caller holds only until this returns.
		defer func() { <-mf.done }()
	}
	// The manifest: pages whose generation the catalog already has keep
	// their checksum (a generation names exactly one content); the others
	// are read, verified by the store, and checksummed — while the first
	// round's replicas already receive them (streamChanged), so reading the
	// owner's store overlaps the transfer instead of preceding it.
	pages := make([]PageEntry, len(gens))
	var todo []uint32
	for p, g := range gens {
		if p < len(prev.Pages) && prev.Pages[p].Gen == g && g != 0 {
			pages[p] = prev.Pages[p]
			continue
		}
		todo = append(todo, uint32(p))
	}
	var meta []byte
	var metaCRC uint32
	var delta []byte
	res := &ReplicateResult{Epoch: epoch}
	acked := []string{n.cfg.NodeID}
	var mu sync.Mutex
	var errs []error
	exclude := n.down()
	// A target that fails (it died after the last ping) is excluded and the
	// leader asked for another, up to three rounds.
	for attempt := 0; attempt < 3; attempt++ {
		var targets []Member
		for _, id := range prev.Assigned {
			if slices.Contains(acked, id) || slices.Contains(exclude, id) {
				continue
			}
			m, ok := n.cat.Member(id)
			if !ok {
				exclude = append(exclude, id)
				continue
			}
			targets = append(targets, m)
		}
		done := func(id string, sent int, bytes int64, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("replica %s: %w", id, err))
				exclude = append(exclude, id)
				return
			}
			acked = append(acked, id)
			res.PagesSent += sent
			res.BytesSent += bytes
		}
		if attempt == 0 {
			// The manifest is complete only after this round.
			if err := n.streamChanged(ctx, info.Name, epoch, prev, gens, pages, todo, targets, mf, done); err != nil {
				return nil, err
			}
			if _, err := mf.get(ctx); err != nil {
				return nil, err
			}
			meta, metaCRC, delta = mf.blob, mf.crc, mf.delta
		} else {
			var wg sync.WaitGroup
			for _, m := range targets {
				wg.Add(1)
				go func() {
					defer wg.Done()
					sent, bytes, err := n.replicateTo(ctx, m, info.Name, prev, pages, meta, metaCRC, delta)
					done(m.ID, sent, bytes, err)
				}()
			}
			wg.Wait()
		}
		if len(acked) >= n.cfg.ReplicationFactor {
			break
		}
		// Ask the leader for members other than those that failed (or
		// went down since the first assignment).
		r, err := n.Apply(ctx, &Command{Op: opAssign, Name: info.Name, Node: n.cfg.NodeID, Epoch: epoch,
			RF: n.cfg.ReplicationFactor, Exclude: exclude})
		if err != nil {
			errs = append(errs, err)
			break
		}
		prev.Assigned = r.Session.Assigned
	}
	slices.Sort(acked[1:])
	cr, err := n.Apply(ctx, &Command{Op: opCommit, Name: info.Name, Node: n.cfg.NodeID, Epoch: epoch, Session: &Session{
		OwnerUID: info.OwnerUID, OwnerGID: info.OwnerGID, Model: info.Model, Layout: info.Layout, Policy: info.Policy,
		Chunks: info.Chunks, Pages: pages, MetaCRC: metaCRC, MetaLen: len(meta), Replicas: acked}})
	if err != nil {
		return nil, err
	}
	res.Replicas = cr.Session.Replicas
	n.metrics.ReplicationLagNS.Store(int64(time.Since(start)))
	n.metrics.LastReplication.Store(time.Now().UnixNano())
	if len(acked) < n.cfg.ReplicationFactor {
		why := fmt.Sprintf("members down: %v", exclude)
		if len(errs) > 0 {
			why = errors.Join(errs...).Error()
		}
		return res, fmt.Errorf("%w: session %q has %d of %d copies (%v); the manifest with the copies that exist is committed (%s); PERSIST again when members are back",
			ErrUnderReplicated, info.Name, len(acked), n.cfg.ReplicationFactor, acked, why)
	}
	return res, nil
}

// replicateTo brings one replica to the new manifest: the pages it lacks
// (per the committed manifest if it is a replica already, else per its own
// listing), then the metadata.
func (n *Node) replicateTo(ctx context.Context, m Member, name string, prev *Session, pages []PageEntry, meta []byte, metaCRC uint32, delta []byte) (int, int64, error) {
	owner, epoch := n.cfg.NodeID, prev.Epoch
	have, err := n.replicaHas(ctx, m, name, prev)
	if err != nil {
		return 0, 0, err
	}
	sent, bytes, err := n.sendPages(ctx, m.PeerAddr, name, owner, epoch, pages, have)
	if err != nil {
		return sent, bytes, err
	}
	if sent == 0 && metaCRC == prev.MetaCRC && slices.Contains(prev.Replicas, m.ID) {
		return 0, 0, nil // it holds exactly this version already
	}
	return sent, bytes, n.putMeta(ctx, m, name, owner, epoch, prev, meta, metaCRC, delta)
}

// putMeta sends the metadata to a replica: as a delta from the committed
// version when it holds that version and a delta exists, else (or when the
// replica refuses the delta) whole.
func (n *Node) putMeta(ctx context.Context, m Member, name, owner string, epoch uint64, prev *Session, meta []byte, metaCRC uint32, delta []byte) error {
	if delta != nil && slices.Contains(prev.Replicas, m.ID) {
		_, err := n.client.call(ctx, m.PeerAddr, popPutMetaDelta, nameHdr{Name: name, CRC: metaCRC, Base: prev.MetaCRC, Owner: owner, Epoch: epoch}, nil, delta)
		if err == nil {
			n.metrics.MetaDeltas.Add(1)
			return nil
		}
		if errors.Is(err, ErrStaleEpoch) {
			return err
		}
		n.log.Debug("replica refused the metadata delta; sending it whole", "name", name, "replica", m.ID, "err", err)
	}
	_, err := n.client.call(ctx, m.PeerAddr, popPutMeta, nameHdr{Name: name, CRC: metaCRC, Owner: owner, Epoch: epoch}, nil, meta)
	return err
}

// pageItem is a changed page read from the owner's store and checksummed.
type pageItem struct {
	page uint32
	e    PageEntry
	data []byte
}

// streamChanged reads the changed pages (todo) with a few workers, filling
// in their manifest entries, and streams each to every target as it is
// read; then each target gets the unchanged pages it lacks and the
// metadata. done reports each target's outcome. An error reading the
// owner's own copy fails the whole PERSIST.
func (n *Node) streamChanged(ctx context.Context, name string, epoch uint64, prev *Session, gens []uint64, pages []PageEntry, todo []uint32, targets []Member, mf *metaFuture, done func(id string, sent int, bytes int64, err error)) error {
	ins := make([]chan pageItem, len(targets))
	var readErr error // set before the channels close
	var twg sync.WaitGroup
	for i, m := range targets {
		ins[i] = make(chan pageItem, 32)
		twg.Add(1)
		go func() {
			defer twg.Done()
			sent, bytes, err := n.replicateStream(ctx, m, name, epoch, prev, pages, todo, ins[i], &readErr, mf)
			done(m.ID, sent, bytes, err)
		}()
	}
	// Readers: the store's reads (mirror copy or O_DIRECT SSD read, with its
	// checksum check) and the CRC32C run on several cores.
	workers := min(max(runtime.GOMAXPROCS(0), 2), 4, max(len(todo), 1))
	var next atomic.Int64
	var emu sync.Mutex
	var rwg sync.WaitGroup
	for range workers {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(todo) {
					return
				}
				emu.Lock()
				failed := readErr != nil
				emu.Unlock()
				if failed || ctx.Err() != nil {
					return
				}
				p := todo[i]
				gen, data, err := n.store.ReadPage(ctx, name, p)
				if err != nil {
					if errors.Is(err, ErrNotFound) && gens[p] == 0 {
						continue // a page never written
					}
					emu.Lock()
					if readErr == nil {
						readErr = fmt.Errorf("session %q page %d: %w", name, p, err)
					}
					emu.Unlock()
					return
				}
				e := PageEntry{Gen: gen, CRC: Checksum(data)}
				pages[p] = e // each worker writes distinct indices
				for _, in := range ins {
					in <- pageItem{page: p, e: e, data: data}
				}
			}
		}()
	}
	rwg.Wait()
	if readErr == nil {
		readErr = ctx.Err()
	}
	for _, in := range ins {
		close(in)
	}
	twg.Wait()
	return readErr
}

// replicateStream is replicateTo for the first round of a PERSIST: the
// changed pages arrive on in as the owner reads them. The metadata goes at
// the same time on its own connection (tens of MB of indexer state the
// replica decodes and writes while the pages stream), not after them: the
// catalog names this replica only once both are acked, so a replica whose
// metadata lands before its pages is never read as a copy meanwhile.
func (n *Node) replicateStream(ctx context.Context, m Member, name string, epoch uint64, prev *Session, pages []PageEntry, todo []uint32, in <-chan pageItem, readErr *error, mf *metaFuture) (sent int, bytes int64, err error) {
	have, herr := n.replicaHas(ctx, m, name, prev)
	metaErr := make(chan error, 1)
	if herr != nil {
		metaErr <- nil
	} else {
		go func() {
			v, err := mf.get(ctx)
			switch {
			case err != nil:
				metaErr <- err
			case v.crc == prev.MetaCRC && slices.Contains(prev.Replicas, m.ID):
				metaErr <- nil // it holds exactly this version already
			default:
				metaErr <- n.putMeta(ctx, m, name, n.cfg.NodeID, epoch, prev, v.blob, v.crc, v.delta)
			}
		}()
	}
	ps := n.newPageSender(ctx, m.PeerAddr, name, n.cfg.NodeID, epoch)
	for it := range in {
		if herr != nil || ps.failed() {
			continue // drain: the readers must not block on this target
		}
		if have[it.page] != it.e {
			ps.add(PageInfo{Page: it.page, Gen: it.e.Gen, CRC: it.e.CRC}, it.data)
		}
	}
	if herr != nil {
		ps.finish()
		<-metaErr
		return 0, 0, herr
	}
	if *readErr != nil {
		ps.finish()
		<-metaErr
		return 0, 0, *readErr
	}
	// Unchanged pages this target lacks (a new replica).
	changed := make(map[uint32]bool, len(todo))
	for _, p := range todo {
		changed[p] = true
	}
	var lerr error
	for p, e := range pages {
		if changed[uint32(p)] || (e.Gen == 0 && e.CRC == 0) || have[uint32(p)] == e || ps.failed() {
			continue
		}
		data, err := n.readVerified(ctx, name, uint32(p), e)
		if err != nil {
			lerr = err
			break
		}
		ps.add(PageInfo{Page: uint32(p), Gen: e.Gen, CRC: e.CRC}, data)
	}
	sent, bytes, err = ps.finish()
	merr := <-metaErr
	if lerr != nil {
		return sent, bytes, lerr
	}
	if err != nil {
		return sent, bytes, err
	}
	return sent, bytes, merr
}

// replicaHas is what a target holds: the committed manifest if it is a
// replica already, else its own listing.
func (n *Node) replicaHas(ctx context.Context, m Member, name string, prev *Session) (map[uint32]PageEntry, error) {
	have := map[uint32]PageEntry{}
	if slices.Contains(prev.Replicas, m.ID) {
		for p, e := range prev.Pages {
			have[uint32(p)] = e
		}
		return have, nil
	}
	var mr manifestReply
	if _, err := n.client.call(ctx, m.PeerAddr, popManifest, nameHdr{Name: name}, &mr); err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	for _, p := range mr.Pages {
		have[p.Page] = PageEntry{Gen: p.Gen, CRC: p.CRC}
	}
	return have, nil
}

// readVerified reads a page the manifest names and checks it still is that
// version.
func (n *Node) readVerified(ctx context.Context, name string, p uint32, e PageEntry) ([]byte, error) {
	gen, d, err := n.store.ReadPage(ctx, name, p)
	if err != nil {
		return nil, fmt.Errorf("page %d: %w", p, err)
	}
	if gen != e.Gen || Checksum(d) != e.CRC {
		return nil, fmt.Errorf("%w: local page %d of %q changed under replication", ErrGeneration, p, name)
	}
	return d, nil
}

// pageSender batches pages for one replica and keeps up to sendStreams
// PUT_PAGES in flight on their own connections, so the replica stores one
// batch while the next ones arrive (no stop-and-wait per batch).
type pageSender struct {
	n                 *Node
	ctx               context.Context
	addr, name, owner string
	epoch             uint64
	work              chan *pageBatch
	wg                sync.WaitGroup
	mu                sync.Mutex
	err               error
	sent              int
	total             int64
	cur               *pageBatch
}

type pageBatch struct {
	h       pagesHdr
	payload [][]byte
	size    int
}

const defaultSendStreams = 4

func (n *Node) newPageSender(ctx context.Context, addr, name, owner string, epoch uint64) *pageSender {
	s := &pageSender{n: n, ctx: ctx, addr: addr, name: name, owner: owner, epoch: epoch, work: make(chan *pageBatch)}
	for range n.cfg.SendStreams {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for b := range s.work {
				if s.failed() {
					continue
				}
				_, err := n.client.call(ctx, addr, popPutPages, b.h, nil, b.payload...)
				s.mu.Lock()
				if err != nil && s.err == nil {
					s.err = err
				} else if err == nil {
					s.sent += len(b.h.Pages)
					s.total += int64(b.size)
				}
				s.mu.Unlock()
			}
		}()
	}
	return s
}

func (s *pageSender) failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err != nil
}

func (s *pageSender) add(pi PageInfo, data []byte) {
	if s.cur == nil {
		s.cur = &pageBatch{h: pagesHdr{Name: s.name, Owner: s.owner, Epoch: s.epoch}}
	}
	s.cur.h.Pages = append(s.cur.h.Pages, pi)
	s.cur.h.Lens = append(s.cur.h.Lens, len(data))
	s.cur.payload = append(s.cur.payload, data)
	s.cur.size += len(data)
	if s.cur.size >= s.n.cfg.BatchBytes {
		s.work <- s.cur
		s.cur = nil
	}
}

// finish sends the last batch and waits for every ack.
func (s *pageSender) finish() (int, int64, error) {
	if s.cur != nil && !s.failed() {
		s.work <- s.cur
	}
	s.cur = nil
	close(s.work)
	s.wg.Wait()
	return s.sent, s.total, s.err
}

// sendPages streams the pages a replica lacks (per have) in batches; each
// batch is stored there before its call returns.
func (n *Node) sendPages(ctx context.Context, addr, name, owner string, epoch uint64, pages []PageEntry, have map[uint32]PageEntry) (int, int64, error) {
	ps := n.newPageSender(ctx, addr, name, owner, epoch)
	var readErr error
	for p, e := range pages {
		if (e.Gen == 0 && e.CRC == 0) || have[uint32(p)] == e {
			continue
		}
		if ps.failed() {
			break
		}
		data, err := n.readVerified(ctx, name, uint32(p), e)
		if err != nil {
			readErr = err
			break
		}
		ps.add(PageInfo{Page: uint32(p), Gen: e.Gen, CRC: e.CRC}, data)
	}
	sent, total, err := ps.finish()
	if readErr != nil {
		return sent, total, readErr
	}
	return sent, total, err
}

// localManifest reads every page of the local copy, verified, with its
// CRC32C. Pages the store cannot read are listed as bad.
func (n *Node) localManifest(ctx context.Context, name string) (*manifestReply, error) {
	meta, gens, err := n.store.Meta(ctx, name)
	if err != nil {
		return nil, err
	}
	out := &manifestReply{MetaCRC: Checksum(meta)}
	for p, g := range gens {
		if g == 0 {
			continue
		}
		gen, data, err := n.store.ReadPage(ctx, name, uint32(p))
		if err != nil {
			out.Bad = append(out.Bad, uint32(p))
			continue
		}
		out.Pages = append(out.Pages, PageInfo{Page: uint32(p), Gen: gen, CRC: Checksum(data)})
	}
	return out, nil
}

// AcquireResult reports a resume's page check.
type AcquireResult struct {
	Session  *Session
	Epoch    uint64
	Pages    int // pages in the manifest
	Verified int // pages intact locally after the pull
	Pulled   int // pages fetched from replicas
	Healed   int // pages that were present but failed their checksum
	Bad      int // pages no replica could supply intact
	Moved    bool
}

// Acquire makes this node owner of name and its local copy complete: it
// claims the session through Raft (an epoch bump if another node owned it),
// checks every local page against the committed manifest and pulls the
// missing or damaged ones from the replicas in parallel, verifying each.
// ErrNotFound means the catalog has no such session (resume it locally).
func (n *Node) Acquire(ctx context.Context, name string) (*AcquireResult, error) {
	unlock := n.lockName(name)
	defer unlock()
	cur, ok := n.cat.Session(name)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	s, err := n.Claim(ctx, name, cur.OwnerUID, cur.OwnerGID)
	if err != nil {
		return nil, err
	}
	res := &AcquireResult{Session: s, Epoch: s.Epoch, Moved: cur.Owner != n.cfg.NodeID, Pages: len(s.Pages)}
	if s.Version == 0 {
		return res, nil // claimed but never committed: nothing to pull
	}
	local, err := n.localManifest(ctx, name)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	have := map[uint32]PageInfo{}
	bad := map[uint32]bool{}
	metaOK := false
	if local != nil {
		for _, p := range local.Pages {
			have[p.Page] = p
		}
		for _, p := range local.Bad {
			bad[p] = true
		}
		metaOK = local.MetaCRC == s.MetaCRC
	}
	var need []uint32
	for p, e := range s.Pages {
		if e.Gen == 0 && e.CRC == 0 {
			continue
		}
		if h, ok := have[uint32(p)]; ok && h.Gen == e.Gen && h.CRC == e.CRC {
			res.Verified++
			continue
		}
		if h, ok := have[uint32(p)]; bad[uint32(p)] || (ok && h.Gen == e.Gen) {
			res.Healed++ // present at the right generation but damaged
		}
		need = append(need, uint32(p))
	}
	sources := []Member{}
	for _, id := range s.Replicas {
		if m, ok := n.cat.Member(id); ok && id != n.cfg.NodeID {
			sources = append(sources, m)
		}
	}
	if !metaOK {
		// This node may still have the committed version although it holds
		// a later, uncommitted one (MetaVersions).
		if mv, ok := n.store.(MetaVersions); ok {
			if b, ok := mv.MetaVersion(ctx, name, s.MetaCRC); ok && len(b) == s.MetaLen {
				if err := n.store.WriteMeta(ctx, name, b); err != nil {
					return res, fmt.Errorf("session %q metadata: %w", name, err)
				}
				metaOK = true
			}
		}
	}
	if len(need) > 0 || !metaOK {
		if len(sources) == 0 {
			return res, fmt.Errorf("%w: session %q lacks %d pages here and has no other replica", ErrUnderReplicated, name, len(need))
		}
	}
	if pt, ok := n.store.(PageTrimmer); ok && local != nil && (!metaOK || len(need) > 0 || local.MetaCRC != s.MetaCRC) {
		if err := pt.DropPagesExcept(ctx, name, s.Pages); err != nil {
			return res, fmt.Errorf("session %q: dropping pages of an uncommitted version: %w", name, err)
		}
	}
	pulled, failed, mismatched := n.pull(ctx, name, s, need, sources)
	res.Pulled, res.Bad = pulled, failed
	res.Verified += pulled
	n.metrics.PagesPulled.Add(uint64(pulled))
	if res.Healed > 0 {
		n.metrics.SelfHeals.Add(uint64(min(res.Healed, pulled)))
	}
	if failed > 0 {
		if mismatched == 0 {
			// Nobody answered: the replicas are down or unreachable.
			return res, fmt.Errorf("%w: %d pages of %q are on no reachable replica (of %d); retry when they are back", ErrUnderReplicated, failed, name, len(sources))
		}
		return res, fmt.Errorf("%w: %d pages of %q could not be fetched intact from %d replicas", ErrChecksum, failed, name, len(sources))
	}
	if !metaOK {
		var got error
		for _, m := range sources {
			var h nameHdr
			meta, err := n.client.call(ctx, m.PeerAddr, popGetMeta, nameHdr{Name: name, CRC: s.MetaCRC}, &h)
			if err == nil && Checksum(meta) == s.MetaCRC && len(meta) == s.MetaLen {
				got = n.store.WriteMeta(ctx, name, meta)
				if got == nil {
					break
				}
				continue
			}
			if err == nil {
				// The replica holds another version than the committed one
				// (a persist whose commit failed reached it).
				err = fmt.Errorf("%w: %s holds another version of %q than the committed manifest", ErrUnderReplicated, m.ID, name)
			}
			got = err
		}
		if got != nil {
			return res, fmt.Errorf("session %q metadata: %w", name, got)
		}
	}
	return res, nil
}

// pull fetches pages from the sources with up to 8 workers, page p first
// from source p mod len, then the others; each page is checked against the
// manifest's generation and CRC32C and written durably in batches.
func (n *Node) pull(ctx context.Context, name string, s *Session, need []uint32, sources []Member) (pulled, failed, mismatched int) {
	if len(need) == 0 {
		return 0, 0, 0
	}
	const group = 32 // pages per GET_PAGES
	work := make(chan []uint32)
	var mu sync.Mutex
	var wg sync.WaitGroup
	check := func(p uint32, pi PageInfo, data []byte, from string) bool {
		e := s.Pages[p]
		if pi.Gen == e.Gen && Checksum(data) == e.CRC {
			return true
		}
		if pi.Gen == e.Gen {
			n.metrics.checksumFailures.Add(1)
			mu.Lock()
			mismatched++ // damaged there; another version is not damage
			mu.Unlock()
		}
		n.log.Warn("replica page does not match the manifest", "name", name, "page", p, "replica", from, "gen", pi.Gen, "want_gen", e.Gen)
		return false
	}
	workers := min(8, (len(need)+group-1)/group)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ps := range work {
				got := map[uint32][]byte{}
				// The whole group from one replica (rotating by worker),
				// then page by page from the others for what is missing.
				m := sources[w%len(sources)]
				var h pagesHdr
				payload, err := n.client.call(ctx, m.PeerAddr, popGetPages, nameHdr{Name: name, Pages: ps}, &h)
				if err == nil && len(h.Lens) == len(h.Pages) {
					off := 0
					for i, pi := range h.Pages {
						l := h.Lens[i]
						if l < 0 || off+l > len(payload) || int(pi.Page) >= len(s.Pages) {
							break
						}
						if check(pi.Page, pi, payload[off:off+l], m.ID) {
							got[pi.Page] = payload[off : off+l]
						}
						off += l
					}
				}
				var batch []PageData
				for _, p := range ps {
					data := got[p]
					for i := 0; data == nil && i < len(sources); i++ {
						o := sources[(w+1+i)%len(sources)]
						var pi PageInfo
						d, err := n.client.call(ctx, o.PeerAddr, popGetPage, nameHdr{Name: name, Page: p}, &pi)
						if err == nil && check(p, pi, d, o.ID) {
							data = d
						}
					}
					if data == nil {
						mu.Lock()
						failed++
						mu.Unlock()
						continue
					}
					e := s.Pages[p]
					batch = append(batch, PageData{PageInfo: PageInfo{Page: p, Gen: e.Gen, CRC: e.CRC}, Data: data})
				}
				if len(batch) == 0 {
					continue
				}
				err = n.store.WritePages(ctx, name, batch)
				mu.Lock()
				if err != nil {
					n.log.Warn("writing pulled pages", "name", name, "err", err)
					failed += len(batch)
				} else {
					pulled += len(batch)
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < len(need); i += group {
		work <- need[i:min(i+group, len(need))]
	}
	close(work)
	wg.Wait()
	return pulled, failed, mismatched
}

// FetchPage reads one page of name from a replica, checked against the
// manifest (self-healing reads: the caller found its own copy damaged).
func (n *Node) FetchPage(ctx context.Context, name string, page uint32) (uint64, []byte, error) {
	s, ok := n.cat.Session(name)
	if !ok || int(page) >= len(s.Pages) {
		return 0, nil, fmt.Errorf("%w: page %d of %q", ErrNotFound, page, name)
	}
	e := s.Pages[page]
	for _, id := range s.Replicas {
		m, ok := n.cat.Member(id)
		if !ok || id == n.cfg.NodeID {
			continue
		}
		var pi PageInfo
		data, err := n.client.call(ctx, m.PeerAddr, popGetPage, nameHdr{Name: name, Page: page}, &pi)
		if err == nil && pi.Gen == e.Gen && Checksum(data) == e.CRC {
			n.metrics.SelfHeals.Add(1)
			return pi.Gen, data, nil
		}
	}
	return 0, nil, fmt.Errorf("%w: no replica holds page %d of %q intact", ErrChecksum, page, name)
}

// Delete removes name from the catalog (this node must own it at epoch);
// every other node drops its copy when it applies the deletion.
func (n *Node) Delete(ctx context.Context, name string, epoch uint64) error {
	if _, ok := n.cat.Session(name); !ok {
		return nil
	}
	_, err := n.Apply(ctx, &Command{Op: opDelete, Name: name, Node: n.cfg.NodeID, Epoch: epoch})
	return err
}

// repair re-replicates sessions with fewer live copies than
// replication_factor. The lowest-id live holder of each such session
// streams it (it holds the committed manifest) to newly assigned members
// and commits the larger replica set.
func (n *Node) repair() {
	for _, s := range n.cat.Sessions() {
		if s.Version == 0 || n.liveCopies(s) >= n.cfg.ReplicationFactor {
			continue
		}
		var first string
		for _, id := range s.Replicas {
			if n.Alive(id) && (first == "" || id < first) {
				first = id
			}
		}
		if first != n.cfg.NodeID {
			continue
		}
		if err := n.rereplicate(s); err != nil {
			n.log.Warn("re-replicating a session", "name", s.Name, "err", err)
		} else {
			n.metrics.Rereplications.Add(1)
			n.log.Info("session re-replicated", "name", s.Name)
		}
	}
}

func (n *Node) rereplicate(s *Session) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	unlock := n.lockName(s.Name)
	defer unlock()
	meta, _, err := n.store.Meta(ctx, s.Name)
	if err != nil || Checksum(meta) != s.MetaCRC {
		return fmt.Errorf("local copy does not match the catalog: %v", err)
	}
	live := []string{}
	for _, id := range s.Replicas {
		if n.Alive(id) {
			live = append(live, id)
		}
	}
	var targets []string
	for _, m := range n.cat.Members() {
		if len(live)+len(targets) >= n.cfg.ReplicationFactor {
			break
		}
		if !slices.Contains(s.Replicas, m.ID) && n.Alive(m.ID) {
			targets = append(targets, m.ID)
		}
	}
	if len(targets) == 0 {
		return fmt.Errorf("no live member to copy to")
	}
	have := map[uint32]PageEntry{}
	var added []string
	for _, id := range targets {
		m, _ := n.cat.Member(id)
		if _, _, err := n.sendPages(ctx, m.PeerAddr, s.Name, s.Owner, s.Epoch, s.Pages, have); err != nil {
			return err
		}
		if _, err := n.client.call(ctx, m.PeerAddr, popPutMeta, nameHdr{Name: s.Name, CRC: s.MetaCRC, Owner: s.Owner, Epoch: s.Epoch}, nil, meta); err != nil {
			return err
		}
		added = append(added, id)
	}
	_, err = n.Apply(ctx, &Command{Op: opAddReplicas, Name: s.Name, Epoch: s.Epoch, Version: s.Version, Add: added})
	return err
}
