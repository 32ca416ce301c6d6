package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// appendChunks is APPEND: prefill chunks from the staging region or inline.
func (c *conn) appendChunks(m *proto.Append) (proto.Message, error) {
	s, err := c.owned(m.Session)
	if err != nil {
		return nil, err
	}
	payload := m.Payload
	if !m.Inline {
		if m.Offset > uint64(len(c.staging)) || m.Length > uint64(len(c.staging))-m.Offset {
			return nil, proto.CodeBadRequest.Errorf("payload [%d, +%d) is outside the %d-byte staging region", m.Offset, m.Length, len(c.staging))
		}
		payload = c.staging[m.Offset : m.Offset+m.Length]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := c.d.clusterOwns(s); err != nil {
		return nil, err
	}
	if err := s.checkAppend(c.d, m.FirstChunk, m.Count, m.Keys); err != nil {
		return nil, err
	}
	want, _ := s.layout.PayloadBytes(uint64(m.Count))
	if uint64(len(payload)) != want {
		return nil, proto.CodePayloadSize.Errorf("payload of %d chunks must be %d B, got %d", m.Count, want, len(payload))
	}
	n := uint64(m.Count)
	if err := s.ingestKeys(m.FirstChunk, n, m.Keys); err != nil {
		return nil, err
	}
	cpp := uint64(s.layout.ChunksPerPage)
	// One run per page touched: the payload's layer-major, segment-major
	// order lets each run copy one segment of many chunks in one move.
	for i := uint64(0); i < n; {
		ch := m.FirstChunk + i
		pc := ch % cpp
		k := min(n-i, cpp-pc)
		run := tiers.ChunkRun{Payload: payload, N: int(n), From: int(i), Count: int(k), PageChunk: int(pc)}
		if err := c.d.writeRun(s, uint32(ch/cpp), run); err != nil {
			s.req.Truncate(int(m.FirstChunk))
			return nil, err
		}
		i += k
	}
	s.chunks = m.FirstChunk + n
	c.d.m.appendBytes.Add(float64(len(payload)))
	s.lastUsed = time.Now()
	return &proto.ChunksReply{Chunks: s.chunks}, nil
}

// commit is COMMIT: decode chunks the decoder already wrote into reserve
// cells of the session's tail allocation.
func (c *conn) commit(m *proto.Commit) (proto.Message, error) {
	s, err := c.owned(m.Session)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := c.d.clusterOwns(s); err != nil {
		return nil, err
	}
	if err := s.checkAppend(c.d, m.FirstChunk, m.Count, m.Keys); err != nil {
		return nil, err
	}
	n := uint64(m.Count)
	cpp := uint64(s.layout.ChunksPerPage)
	// Every chunk must have a cell before anything is written.
	for i := uint64(0); i < n; i++ {
		p := uint32((m.FirstChunk + i) / cpp)
		if _, _, ok := s.region.Lookup(p); !ok {
			return nil, proto.CodeBadRequest.Errorf("chunk %d: page %d has no reserve cell; commit only into the tail allocation of the last CYCLE reply", m.FirstChunk+i, p)
		}
	}
	if err := s.ingestKeys(m.FirstChunk, n, m.Keys); err != nil {
		return nil, err
	}
	cb := int(s.layout.ChunkBytes())
	if cap(s.buf) < cb {
		s.buf = make([]byte, cb)
	}
	buf := s.buf[:cb]
	for i := uint64(0); i < n; i++ {
		ch := m.FirstChunk + i
		p := uint32(ch / cpp)
		slot, _, _ := s.region.Lookup(p)
		err := func() error {
			if _, err := s.region.ReadChunk(slot, p, int(ch%cpp), buf); err != nil {
				return fmt.Errorf("commit chunk %d: %w", ch, err)
			}
			return c.d.writeChunk(s, ch, buf, slot)
		}()
		if err != nil {
			s.req.Truncate(int(m.FirstChunk))
			return nil, err
		}
	}
	s.chunks = m.FirstChunk + n
	c.d.m.commitChunks.Add(float64(n))
	s.lastUsed = time.Now()
	return &proto.ChunksReply{Chunks: s.chunks}, nil
}

// checkAppend validates an APPEND or COMMIT against the session before any
// byte is written.
func (s *session) checkAppend(d *Daemon, first uint64, count uint32, keys []byte) error {
	if s.req == nil {
		return proto.CodeUnknownSession.Errorf("session %d is closed", s.id)
	}
	switch {
	case first < s.chunks:
		return proto.CodeDuplicateChunk.Errorf("chunk %d already stored (session has %d chunks)", first, s.chunks)
	case first > s.chunks:
		return proto.CodeChunkGap.Errorf("chunk %d would leave a gap (session has %d chunks)", first, s.chunks)
	case count == 0:
		return proto.CodeBadRequest.Errorf("chunk count is 0")
	}
	if wantKeys, ok := s.layout.KeysBytes(uint64(count)); !ok || uint64(len(keys)) != wantKeys {
		return proto.CodePayloadSize.Errorf("index keys of %d chunks must be %d B, got %d", count, wantKeys, len(keys))
	}
	if err := checkFiniteKeys(d.kinds[s.model], int(s.layout.KeyBytes), keys); err != nil {
		return err
	}
	if max := uint64(s.req.Policy().MaxChunks); s.chunks+uint64(count) > max {
		return proto.CodeLimitExceeded.Errorf("session would hold %d chunks, limit %d", s.chunks+uint64(count), max)
	}
	cpp := uint64(s.layout.ChunksPerPage)
	pages := (s.chunks + uint64(count) + cpp - 1) / cpp
	if bytes := pages * s.layout.PageBytes(); int64(bytes) > d.cfg.Limits.MaxSessionBytes {
		return proto.CodeLimitExceeded.Errorf("session would hold %d B, limit %d", bytes, d.cfg.Limits.MaxSessionBytes)
	}
	return nil
}

// splitKeys cuts the index keys of n chunks into one slice per target layer.
func (s *session) splitKeys(n uint64, keys []byte) [][]byte {
	t := int(s.layout.TargetLayers)
	per := make([][]byte, t)
	kb := uint64(s.layout.KeyBytes)
	for l := 0; l < t; l++ {
		off := s.layout.KeyOffset(n, uint64(l), 0)
		per[l] = keys[off : off+n*kb]
	}
	return per
}

// ingestKeys feeds the index keys of chunks [first, first+n) to the
// indexer, which vets them (a key the model rejects appends nothing). It
// runs before any page is written, and the caller undoes it with
// req.Truncate if storing the pages fails, so keys and pages never diverge
// and each key is decoded once.
func (s *session) ingestKeys(first, n uint64, keys []byte) error {
	if err := s.req.AppendKeys(int(first), s.splitKeys(n, keys)); err != nil {
		return indexerError(err)
	}
	return nil
}

// writeChunk stores one chunk's payload in the mirror at the page's next
// generation, and in the reserve slot when the page is resident. slot is the
// cell the decoder wrote for a COMMIT (-1 for APPEND).
func (d *Daemon) writeChunk(s *session, ch uint64, payload []byte, slot int) error {
	cpp := uint64(s.layout.ChunksPerPage)
	p := uint32(ch / cpp)
	if err := s.damagedPage(p); err != nil {
		return fmt.Errorf("write chunk %d: %w", ch, err)
	}
	for uint32(len(s.gens)) <= p {
		s.gens = append(s.gens, 0)
	}
	base := s.gens[p]
	gen := base + 1
	id := s.pageID(p)
	prev, err := d.store.WriteChunk(context.Background(), id, gen, s.geom, int(ch%cpp), payload)
	if err != nil {
		return fmt.Errorf("write chunk %d: %w", ch, err)
	}
	if prev != base {
		// The page left the mirror between the store bringing it back from
		// SSD and the write (a concurrent spill), so the mirror made a zero
		// page: rebuild it from the SSD copy plus this chunk.
		if gen, err = d.rebuildPage(s, id, base, ch, payload, gen); err != nil {
			return err
		}
	}
	s.gens[p] = gen
	if slot >= 0 {
		// The decoder wrote the cell in place; the slot now equals the
		// mirror page only if it held the page's previous generation.
		if _, rgen, ok := s.region.Lookup(p); ok && (rgen == base || base == 0) {
			return s.region.SetGeneration(slot, p, gen)
		}
		return nil
	}
	if rs, rgen, ok := s.region.Lookup(p); ok {
		if err := s.region.WriteChunk(rs, p, base, gen, int(ch%cpp), payload); err != nil && rgen == base {
			return fmt.Errorf("write chunk %d into the reserve: %w", ch, err)
		}
	}
	return nil
}

// writeRun stores a run of APPEND chunks of page p in the mirror at the
// page's next generation, and in the reserve slot when the page is resident.
func (d *Daemon) writeRun(s *session, p uint32, run tiers.ChunkRun) error {
	if err := s.damagedPage(p); err != nil {
		return fmt.Errorf("write chunks of page %d: %w", p, err)
	}
	for uint32(len(s.gens)) <= p {
		s.gens = append(s.gens, 0)
	}
	base := s.gens[p]
	gen := base + 1
	id := s.pageID(p)
	prev, err := d.store.WriteChunkRun(context.Background(), id, gen, s.geom, run)
	if err != nil {
		return fmt.Errorf("write chunks %d..%d: %w", uint64(p)*uint64(s.layout.ChunksPerPage)+uint64(run.PageChunk), uint64(p)*uint64(s.layout.ChunksPerPage)+uint64(run.PageChunk+run.Count-1), err)
	}
	if prev != base {
		// A concurrent spill dropped the page between the store bringing it
		// back and the write: rebuild it chunk by chunk from the SSD copy.
		chunk := make([]byte, s.layout.ChunkBytes())
		for i := 0; i < run.Count; i++ {
			gatherChunk(&s.layout, run.Payload, uint64(run.N), uint64(run.From+i), chunk)
			ch := uint64(p)*uint64(s.layout.ChunksPerPage) + uint64(run.PageChunk+i)
			if i == 0 {
				if gen, err = d.rebuildPage(s, id, base, ch, chunk, gen); err != nil {
					return err
				}
				continue
			}
			if prev2, err := d.store.WriteChunk(context.Background(), id, gen+1, s.geom, run.PageChunk+i, chunk); err != nil || prev2 != gen {
				return fmt.Errorf("write chunk %d after a rebuild: generation %d, want %d: %v", ch, prev2, gen, err)
			}
			gen++
		}
	}
	s.gens[p] = gen
	if slot, rgen, ok := s.region.Lookup(p); ok {
		if err := s.region.WriteChunkRun(slot, p, base, gen, run); err != nil && rgen == base {
			return fmt.Errorf("write page %d into the reserve: %w", p, err)
		}
	}
	return nil
}

// gatherChunk copies chunk i of an n-chunk APPEND payload into dst in the
// per-chunk order (each layer's segments, layer after layer).
func gatherChunk(l *proto.Layout, payload []byte, n, i uint64, dst []byte) {
	o := 0
	for ly, layer := range l.Layers {
		for sg, sz := range layer.Segments {
			off := l.PayloadOffset(n, ly, sg, i)
			o += copy(dst[o:o+int(sz)], payload[off:off+uint64(sz)])
		}
	}
}

func (d *Daemon) rebuildPage(s *session, id tiers.PageID, base, ch uint64, payload []byte, gen uint64) (uint64, error) {
	page := make([]byte, s.layout.PageBytes())
	g, err := d.store.SSD().Get(context.Background(), id, page)
	if err == nil && g != base {
		err = tiers.ErrStale
	}
	if err != nil {
		return 0, fmt.Errorf("page %v: rebuilding a spilled page at generation %d (SSD has %d): %w", id, base, g, err)
	}
	if err := s.geom.ScatterChunk(page, int(ch%uint64(s.layout.ChunksPerPage)), payload); err != nil {
		return 0, err
	}
	gen++
	if err := d.store.Write(context.Background(), id, gen, page); err != nil {
		return 0, fmt.Errorf("page %v: %w", id, err)
	}
	return gen, nil
}

// damagedPage refuses writes to a page whose newest record is damaged: the
// write would merge new chunks into older bytes of the page's other chunks.
func (s *session) damagedPage(p uint32) error {
	if err := s.damaged[p]; err != nil {
		return fmt.Errorf("page %d is damaged on SSD, so it cannot be extended (CLOSE the session with delete and prefill it again): %w", p, err)
	}
	return nil
}
