package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
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
}

// batchBytes bounds one PUT_PAGES frame.
const batchBytes = 8 << 20

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
// bumping the epoch. It returns the record after the claim.
func (n *Node) Claim(ctx context.Context, name string, uid, gid uint32) (*Session, error) {
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
				if errors.Is(err, ErrStaleEpoch) {
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
	meta, gens, err := n.store.Meta(ctx, info.Name)
	if err != nil {
		return nil, fmt.Errorf("session %q local copy: %w", info.Name, err)
	}
	// The manifest: pages whose generation the catalog already has keep
	// their checksum (a generation names exactly one content); the others
	// are read, verified by the store, and checksummed.
	pages := make([]PageEntry, len(gens))
	changed := map[uint32][]byte{}
	for p, g := range gens {
		if p < len(prev.Pages) && prev.Pages[p].Gen == g && g != 0 {
			pages[p] = prev.Pages[p]
			continue
		}
		gen, data, err := n.store.ReadPage(ctx, info.Name, uint32(p))
		if err != nil {
			if errors.Is(err, ErrNotFound) && g == 0 {
				continue // a page never written
			}
			return nil, fmt.Errorf("session %q page %d: %w", info.Name, p, err)
		}
		pages[p] = PageEntry{Gen: gen, CRC: Checksum(data)}
		changed[uint32(p)] = data
	}
	metaCRC := Checksum(meta)
	res := &ReplicateResult{Epoch: epoch}
	acked := []string{n.cfg.NodeID}
	var mu sync.Mutex
	var errs []error
	exclude := n.down()
	// A target that fails (it died after the last ping) is excluded and the
	// leader asked for another, up to three rounds.
	for attempt := 0; attempt < 3; attempt++ {
		var targets []string
		for _, id := range prev.Assigned {
			if !slices.Contains(acked, id) && !slices.Contains(exclude, id) {
				targets = append(targets, id)
			}
		}
		var wg sync.WaitGroup
		for _, id := range targets {
			m, ok := n.cat.Member(id)
			if !ok {
				exclude = append(exclude, id)
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sent, bytes, err := n.replicateTo(ctx, m, info.Name, prev, pages, changed, meta, metaCRC)
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
			}()
		}
		wg.Wait()
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
func (n *Node) replicateTo(ctx context.Context, m Member, name string, prev *Session, pages []PageEntry, changed map[uint32][]byte, meta []byte, metaCRC uint32) (int, int64, error) {
	owner, epoch := n.cfg.NodeID, prev.Epoch
	have := map[uint32]PageEntry{}
	if slices.Contains(prev.Replicas, m.ID) {
		for p, e := range prev.Pages {
			have[uint32(p)] = e
		}
	} else {
		var mr manifestReply
		if _, err := n.client.call(ctx, m.PeerAddr, popManifest, nameHdr{Name: name}, &mr); err != nil && !errors.Is(err, ErrNotFound) {
			return 0, 0, err
		}
		for _, p := range mr.Pages {
			have[p.Page] = PageEntry{Gen: p.Gen, CRC: p.CRC}
		}
	}
	sent, bytes, err := n.sendPages(ctx, m.PeerAddr, name, owner, epoch, pages, have, changed)
	if err != nil {
		return sent, bytes, err
	}
	if sent == 0 && metaCRC == prev.MetaCRC && slices.Contains(prev.Replicas, m.ID) {
		return 0, 0, nil // it holds exactly this version already
	}
	_, err = n.client.call(ctx, m.PeerAddr, popPutMeta, nameHdr{Name: name, CRC: metaCRC, Owner: owner, Epoch: epoch}, nil, meta)
	return sent, bytes, err
}

// sendPages streams the pages a replica lacks in batches; each batch is
// durable there before the call returns.
func (n *Node) sendPages(ctx context.Context, addr, name, owner string, epoch uint64, pages []PageEntry, have map[uint32]PageEntry, cached map[uint32][]byte) (int, int64, error) {
	type batch struct {
		h       pagesHdr
		payload [][]byte
		size    int
	}
	// Up to 4 batches in flight on their own connections: the replica
	// syncs one while the next arrives.
	const streams = 4
	work := make(chan *batch)
	var mu sync.Mutex
	var firstErr error
	sent, total := 0, int64(0)
	var wg sync.WaitGroup
	for range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range work {
				mu.Lock()
				failed := firstErr != nil
				mu.Unlock()
				if failed {
					continue
				}
				_, err := n.client.call(ctx, addr, popPutPages, b.h, nil, b.payload...)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				} else if err == nil {
					sent += len(b.h.Pages)
					total += int64(b.size)
				}
				mu.Unlock()
			}
		}()
	}
	cur := &batch{h: pagesHdr{Name: name, Owner: owner, Epoch: epoch}}
	var readErr error
	for p, e := range pages {
		if e.Gen == 0 && e.CRC == 0 {
			continue
		}
		if have[uint32(p)] == e {
			continue
		}
		data := cached[uint32(p)]
		if data == nil {
			gen, d, err := n.store.ReadPage(ctx, name, uint32(p))
			if err != nil {
				readErr = fmt.Errorf("page %d: %w", p, err)
				break
			}
			if gen != e.Gen || Checksum(d) != e.CRC {
				readErr = fmt.Errorf("%w: local page %d of %q changed under replication", ErrGeneration, p, name)
				break
			}
			data = d
		}
		cur.h.Pages = append(cur.h.Pages, PageInfo{Page: uint32(p), Gen: e.Gen, CRC: e.CRC})
		cur.h.Lens = append(cur.h.Lens, len(data))
		cur.payload = append(cur.payload, data)
		cur.size += len(data)
		if cur.size >= batchBytes {
			work <- cur
			cur = &batch{h: pagesHdr{Name: name, Owner: owner, Epoch: epoch}}
		}
	}
	if readErr == nil && len(cur.h.Pages) > 0 {
		work <- cur
	}
	close(work)
	wg.Wait()
	if readErr != nil {
		return sent, total, readErr
	}
	return sent, total, firstErr
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
	if len(need) > 0 || !metaOK {
		if len(sources) == 0 {
			return res, fmt.Errorf("%w: session %q lacks %d pages here and has no other replica", ErrUnderReplicated, name, len(need))
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
			meta, err := n.client.call(ctx, m.PeerAddr, popGetMeta, nameHdr{Name: name}, &h)
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
		if _, _, err := n.sendPages(ctx, m.PeerAddr, s.Name, s.Owner, s.Epoch, s.Pages, have, nil); err != nil {
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
