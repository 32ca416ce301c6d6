package tiers

import (
	"container/heap"
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// StageItem is one lookahead candidate: a page to bring from SSD into the
// mirror ahead of need. Rank is its place in its session's lookahead
// ranking (0 = the page most likely to be selected next, i.e. the highest
// lookahead score); Bytes is the page's size, counted against the staging
// byte bound.
type StageItem struct {
	ID    PageID
	Rank  int
	Bytes int64
}

// stageEntry is a queued StageItem.
type stageEntry struct {
	StageItem
	seq uint64 // arrival order: among equal ranks, older first (its need is nearer)
	at  int    // index in the heap
}

// stageHeap orders queued candidates by rank, then arrival.
type stageHeap []*stageEntry

func (h stageHeap) Len() int { return len(h) }
func (h stageHeap) Less(i, j int) bool {
	if h[i].Rank != h[j].Rank {
		return h[i].Rank < h[j].Rank
	}
	return h[i].seq < h[j].seq
}
func (h stageHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i]; h[i].at = i; h[j].at = j }
func (h *stageHeap) Push(x any)   { e := x.(*stageEntry); e.at = len(*h); *h = append(*h, e) }
func (h *stageHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.at = -1
	return e
}

// stageState is the mover's staging queue and its back-off; guarded by
// Mover.mu.
type stageState struct {
	q        stageHeap
	byID     map[PageID]*stageEntry
	flying   map[PageID]chan struct{} // being read by a stager; closed when done
	bytes    int64                    // queued + in flight
	inflight int
	allowed  int // stagers that may read at once (AIMD back-off)
	seq      uint64

	// Read time per byte of recent recall reads from SSD: the floor is
	// the best seen lately (decaying), ewma the current level.
	floor, ewma    float64
	lastRecallRead time.Time
}

// Staging counters, in MoverStats.
type stageCounters struct {
	superseded, backoffs, stagedBytes atomic.Uint64
	// claimed: queued candidates a recall took over; joined: recall
	// pages that waited for a stager's read of them instead of reading
	// them a second time.
	claimed, joined atomic.Uint64
	readNanos       atomic.Uint64
}

// StageRanked enqueues one or more sessions' lookahead candidates, best
// first. A session's new ranking replaces what is still queued of its
// previous one (the indexer re-ranks every cycle), the queue is served in
// rank order across sessions, and queued plus in-flight bytes stay within
// MoverConfig.StageBytes: a candidate that does not fit pushes out a worse
// ranked one, or is dropped. It never blocks and returns how many were
// queued.
func (m *Mover) StageRanked(items []StageItem) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0
	}
	st := &m.st
	// Supersede: queued entries of these sessions not in the new ranking.
	sessions := map[uint64]bool{}
	want := make(map[PageID]bool, len(items))
	for _, it := range items {
		sessions[it.ID.Session] = true
		want[it.ID] = true
	}
	var stale []*stageEntry
	for _, e := range st.q {
		if sessions[e.ID.Session] && !want[e.ID] {
			stale = append(stale, e)
		}
	}
	// Removed after the scan: a removal reorders the heap under it.
	for _, e := range stale {
		m.removeStage(e)
		m.stageCtr.superseded.Add(1)
	}
	n := 0
	for _, it := range items {
		m.stageReqs.Add(1)
		if e, dup := st.byID[it.ID]; dup {
			if it.Rank != e.Rank {
				e.Rank = it.Rank
				heap.Fix(&st.q, e.at)
			}
			continue
		}
		if len(st.q) >= m.cfg.MaxQueuedStages || st.bytes+it.Bytes > m.cfg.StageBytes {
			// Push out the worst queued candidate if this one ranks better.
			w := m.worstStage()
			if w == nil || w.Rank <= it.Rank || st.bytes-w.Bytes+it.Bytes > m.cfg.StageBytes {
				m.stageDropped.Add(1)
				continue
			}
			m.removeStage(w)
			m.stageDropped.Add(1)
		}
		st.seq++
		e := &stageEntry{StageItem: it, seq: st.seq}
		heap.Push(&st.q, e)
		st.byID[it.ID] = e
		st.bytes += it.Bytes
		n++
	}
	if n > 0 {
		m.wakeStagers()
	}
	return n
}

// wakeStagers wakes as many stagers as may start a read now (not all of
// them: a woken stager that finds nothing to do costs a context switch,
// and on two cores the decode's goroutines wait behind it). Called with
// m.mu held.
func (m *Mover) wakeStagers() {
	for range min(len(m.st.q), m.st.allowed-m.st.inflight) {
		m.stageCond.Signal()
	}
}

// awaitStaging waits, if a stager is reading id right now, until its read
// is in the mirror (or the mover closes): the recall then copies it from
// there instead of reading the page a second time behind it.
func (m *Mover) awaitStaging(id PageID) {
	m.mu.Lock()
	ch := m.st.flying[id]
	m.mu.Unlock()
	if ch == nil {
		return
	}
	m.stageCtr.joined.Add(1)
	select {
	case <-ch:
	case <-m.ctx.Done():
	}
}

// Stage enqueues page ids as one ranking (best first) with no byte sizes:
// only MaxQueuedStages bounds them.
func (m *Mover) Stage(ids []PageID) int {
	items := make([]StageItem, len(ids))
	for i, id := range ids {
		items[i] = StageItem{ID: id, Rank: i}
	}
	return m.StageRanked(items)
}

func (m *Mover) removeStage(e *stageEntry) {
	heap.Remove(&m.st.q, e.at)
	delete(m.st.byID, e.ID)
	m.st.bytes -= e.Bytes
}

// worstStage is the queued entry served last: highest rank, newest.
func (m *Mover) worstStage() *stageEntry {
	var w *stageEntry
	for _, e := range m.st.q {
		if w == nil || e.Rank > w.Rank || (e.Rank == w.Rank && e.seq > w.seq) {
			w = e
		}
	}
	return w
}

// stager brings queued candidates into the mirror, best first, while fewer
// than the back-off allows are reading. It does not wait for the recall
// queue to empty: most recalls copy from the mirror and need no disk, and
// on a loaded 2-core host holding staging back behind them left a quarter
// of the next cycle's pages unstaged (docs/benchmarks.md, "SSD as a
// capacity tier"); recall reads keep half the disk's queue depth instead.
func (m *Mover) stager() {
	defer m.wg.Done()
	for {
		m.mu.Lock()
		for !m.closed && (len(m.st.q) == 0 || m.st.inflight >= m.st.allowed) {
			m.stageCond.Wait()
		}
		if m.closed {
			m.mu.Unlock()
			return
		}
		e := heap.Pop(&m.st.q).(*stageEntry)
		delete(m.st.byID, e.ID)
		m.st.inflight++
		done := make(chan struct{})
		m.st.flying[e.ID] = done
		m.mu.Unlock()

		t0 := time.Now()
		n, err := m.store.Stage(m.bgCtx, []PageID{e.ID})
		d := time.Since(t0)
		if err != nil && !errors.Is(err, ErrClosed) && !errors.Is(err, context.Canceled) {
			m.stageErrors.Add(1)
		}

		m.mu.Lock()
		m.st.inflight--
		m.st.bytes -= e.Bytes
		delete(m.st.flying, e.ID)
		close(done)
		if n > 0 {
			m.stageCtr.readNanos.Add(uint64(d.Nanoseconds()))
			m.stageCtr.stagedBytes.Add(uint64(e.Bytes))
			// No recall has read from SSD lately: nothing to yield to.
			if time.Since(m.st.lastRecallRead) > recallQuiet && m.st.allowed < m.cfg.StageWorkers {
				m.st.allowed++
				m.wakeStagers()
			}
		}
		m.mu.Unlock()
	}
}

// recallQuiet is how long after the last recall that read from SSD staging
// may take back its full concurrency.
const recallQuiet = 200 * time.Millisecond

// noteRecallRead feeds the back-off with one recall page read from SSD (a
// page the decoder needs now, which staging did not bring in time).
func (m *Mover) noteRecallRead(d time.Duration, bytes int64) {
	m.mu.Lock()
	m.st.lastRecallRead = time.Now()
	m.adapt(d, bytes)
	m.mu.Unlock()
}

// adapt is the staging back-off, fed by recall reads from SSD: when one
// takes much longer per byte than the best lately seen, the disk is the
// bottleneck of what the decoder waits for (its queue is full of staging
// reads), so fewer stagers read at once and the recalls find the disk free
// sooner; when recall reads are fast again, or none happened for a while,
// one more stager is let in at a time. Staging's own read times say
// nothing here: deeper queues make each read slower and all of them
// faster. Called with m.mu held.
func (m *Mover) adapt(d time.Duration, bytes int64) {
	if bytes <= 0 {
		bytes = 1
	}
	st := &m.st
	per := float64(d.Nanoseconds()) / float64(bytes)
	if st.floor == 0 || per < st.floor {
		st.floor = per
	} else {
		st.floor *= 1.001 // forget an old best slowly: the disk may have changed
	}
	if st.ewma == 0 {
		st.ewma = per
	}
	st.ewma = 0.8*st.ewma + 0.2*per
	switch {
	case st.ewma > m.cfg.StageBackoff*st.floor && st.allowed > 1:
		st.allowed = max(1, st.allowed/2)
		st.ewma = st.floor * m.cfg.StageBackoff / 2 // judge the new level afresh
		m.stageCtr.backoffs.Add(1)
	case st.ewma < 2*st.floor && st.allowed < m.cfg.StageWorkers:
		st.allowed++
		m.wakeStagers()
	}
}
