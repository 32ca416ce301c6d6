package tiers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// MoverConfig configures a Mover.
type MoverConfig struct {
	// Workers is the number of concurrent copies (default 4).
	Workers int
	// MaxQueuedRecalls bounds recall pages waiting for a worker; Recall
	// returns ErrBusy beyond it (default 65536).
	MaxQueuedRecalls int
	// MaxQueuedStages bounds staging requests waiting; more are dropped,
	// since staging is only a prefetch (default 4096).
	MaxQueuedStages int
	// Batch is the most pages of one recall a worker copies at once
	// (default 64; 1 copies page by page).
	Batch int
	// ReadParallel is how many pages of one recall batch that are not in
	// the mirror are read from SSD at once (default 8): the SSD's queue
	// depth is what makes random page reads fast.
	ReadParallel int
	// StageWorkers is how many staging reads may run at once (default
	// 16, half of DefaultReadQueueDepth: fio's best iodepth on the dev
	// VM's virtio disk by median, and staging's rate equals fio's there;
	// 32 staged faster alone but held fewer 512K-token sessions stall-free
	// in A/B runs of the capacity benchmark, docs/benchmarks.md "SSD as a
	// capacity tier", staging follow-up). More than half the queue depth is
	// used only while no foreground read happens (ssd_direct.go's
	// bgShare). With one
	// shared wake-up for workers and stagers, 16 stalled six 512K-token
	// sessions where 4 did not; with separate ones, woken one by one, 16
	// stagers held more sessions stall-free than 4 (docs/benchmarks.md,
	// "SSD as a capacity tier"). The back-off lowers it while the disk
	// is the bottleneck.
	StageWorkers int
	// StageBytes bounds the bytes of staging candidates queued and in
	// flight (default 256 MiB); candidates that carry no size count only
	// against MaxQueuedStages.
	StageBytes int64
	// StageBackoff is how many times slower per byte than the best recent
	// one a recall's SSD read may get before staging halves its
	// concurrency (default 32). The best is an idle disk's; with 16
	// staging reads in flight a recall read queues behind them and takes
	// several times that without the disk being saturated, and at 4 the
	// back-off held staging at one or two readers on a loaded host, so
	// more pages came late (docs/benchmarks.md, "SSD as a capacity tier").
	StageBackoff float64
}

// RecallItem asks for one page to be made resident in slot at generation Gen
// (the mirror's current generation as the session knows it). The slot must
// already be allocated to the page (Region.Allocate) and should be pinned by
// the lease it will be handed out under, so nothing evicts it meanwhile.
type RecallItem struct {
	ID   PageID
	Slot int
	Gen  uint64
}

// RecallResult is the outcome of one RecallItem.
type RecallResult struct {
	RecallItem
	// Copied is the generation now in the slot (it can be newer than Gen if
	// the page was written meanwhile).
	Copied uint64
	Source Source
	Err    error
}

// Ticket tracks one Recall call.
type Ticket struct {
	done    chan struct{}
	results []RecallResult
	pending atomic.Int64
}

// Done is closed when every page of the recall has finished.
func (t *Ticket) Done() <-chan struct{} { return t.done }

// Results returns the per-page outcomes, in the order of the request; call it
// after Done is closed.
func (t *Ticket) Results() []RecallResult {
	select {
	case <-t.done:
		return t.results
	default:
		return nil
	}
}

// Wait blocks until the recall finishes or ctx ends, then returns Err.
func (t *Ticket) Wait(ctx context.Context) error {
	select {
	case <-t.done:
		return t.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Err joins the per-page errors (nil if every page arrived).
func (t *Ticket) Err() error {
	var errs []error
	for _, r := range t.Results() {
		if r.Err != nil {
			errs = append(errs, r.Err)
		}
	}
	return errors.Join(errs...)
}

func (t *Ticket) finish() {
	if t.pending.Add(-1) == 0 {
		close(t.done)
	}
}

type recallTask struct {
	t      *Ticket
	i      int
	region *Region
}

// MoverStats counts what the mover did. NeededLate counts recall pages that
// had to be read from SSD; staged-then-used and staged-never-used are in
// StoreStats.
type MoverStats struct {
	Recalls       uint64 // Recall calls accepted
	RecallPages   uint64 // pages requested
	AlreadyThere  uint64 // pages the slot held at the wanted generation
	FromMirror    uint64 // pages copied from the mirror (not staged)
	FromStaged    uint64 // pages copied from the mirror that Stage brought in
	NeededLate    uint64 // pages that had to come from SSD
	RecallBytes   uint64 // bytes copied into reserve regions
	RecallErrors  uint64
	Rejected      uint64 // Recall calls refused with ErrBusy
	StageRequests uint64
	StageDropped  uint64 // staging requests dropped on a full queue
	StageErrors   uint64
	QueuedRecalls int64
	QueuedStages  int64
	// StageSuperseded counts queued candidates a session's newer ranking
	// replaced; StageBackoffs how often staging halved its concurrency
	// because the disk slowed down; StagedBytes and StageReadSeconds are
	// what the stagers brought in and how long their reads took (their
	// ratio is staging throughput per stager).
	StageSuperseded  uint64
	StageBackoffs    uint64
	StageAllowed     int
	QueuedStageBytes int64
	StagedBytes      uint64
	StageReadSeconds float64
	// StageClaimed counts queued candidates a recall of the same page
	// took over; StageJoined recall pages that waited for a stager's
	// read in flight instead of reading the page again.
	StageClaimed, StageJoined uint64
}

// Mover performs recalls (SSD → mirror → reserve) on a bounded pool of
// workers and lookahead staging (SSD → mirror) on a second pool
// (mover_stage.go). Recall and Stage only enqueue: the socket loop never
// waits on I/O. Recalls come before staging at the disk: staging reads hold
// at most half the SSD read queue depth (ssd_direct.go), candidates are read
// best-ranked first, and staging backs off while recall reads slow down.
type Mover struct {
	store *Store
	cfg   MoverConfig
	ctx   context.Context
	bgCtx context.Context // ctx, its SSD reads marked as background (staging)
	stop  context.CancelFunc

	mu sync.Mutex
	// Recall workers and stagers wait on separate conditions, woken one
	// by one for the work there is: one shared Broadcast woke every
	// worker and stager (20 goroutines) on each recall and each staged
	// page, and on two cores the CYCLE goroutine that queued the recall
	// waited behind them (docs/benchmarks.md, "SSD as a capacity tier":
	// 44 % of the daemon's scheduling delay was at that Broadcast).
	cond      *sync.Cond // recall workers: a recall is queued, or closed
	stageCond *sync.Cond // stagers: a candidate may be read, or closed
	closed    bool
	recalls   []recallTask
	st        stageState // mover_stage.go
	stageCtr  stageCounters
	wg        sync.WaitGroup

	recallCalls, recallPages, already, fromMirror, fromStaged atomic.Uint64
	late, recallBytes, recallErrors, rejected                 atomic.Uint64
	stageReqs, stageDropped, stageErrors                      atomic.Uint64
}

// NewMover starts the workers.
func NewMover(store *Store, cfg MoverConfig) *Mover {
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.MaxQueuedRecalls <= 0 {
		cfg.MaxQueuedRecalls = 1 << 16
	}
	if cfg.MaxQueuedStages <= 0 {
		cfg.MaxQueuedStages = 4096
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 64
	}
	if cfg.ReadParallel <= 0 {
		cfg.ReadParallel = 8
	}
	if cfg.StageWorkers <= 0 {
		cfg.StageWorkers = DefaultReadQueueDepth / 2
	}
	if cfg.StageBytes <= 0 {
		cfg.StageBytes = 256 << 20
	}
	if cfg.StageBackoff <= 1 {
		cfg.StageBackoff = 32
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Mover{store: store, cfg: cfg, ctx: ctx, bgCtx: Background(ctx), stop: cancel}
	m.st.byID = map[PageID]*stageEntry{}
	m.st.flying = map[PageID]chan struct{}{}
	m.st.allowed = cfg.StageWorkers
	m.cond = sync.NewCond(&m.mu)
	m.stageCond = sync.NewCond(&m.mu)
	for i := 0; i < cfg.Workers; i++ {
		m.wg.Add(1)
		go m.worker()
	}
	for i := 0; i < cfg.StageWorkers; i++ {
		m.wg.Add(1)
		go m.stager()
	}
	return m
}

// Recall enqueues copies of pages into region and returns at once. Each item's
// page must belong to region's session. ErrBusy if the queue cannot take the
// whole request, ErrClosed after Close.
func (m *Mover) Recall(region *Region, items []RecallItem) (*Ticket, error) {
	t := &Ticket{done: make(chan struct{}), results: make([]RecallResult, len(items))}
	for i, it := range items {
		t.results[i].RecallItem = it
		if it.ID.Session != region.Session() {
			return nil, fmt.Errorf("recall page %v into region of session %d: %w", it.ID, region.Session(), ErrRange)
		}
	}
	if len(items) == 0 {
		close(t.done)
		return t, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("mover: %w", ErrClosed)
	}
	if len(m.recalls)+len(items) > m.cfg.MaxQueuedRecalls {
		m.rejected.Add(1)
		return nil, fmt.Errorf("mover: %d recall pages queued, %d more requested: %w", len(m.recalls), len(items), ErrBusy)
	}
	t.pending.Store(int64(len(items)))
	for i := range items {
		m.recalls = append(m.recalls, recallTask{t: t, i: i, region: region})
	}
	m.recallCalls.Add(1)
	m.recallPages.Add(uint64(len(items)))
	// One worker per batch the request makes, at most all of them.
	for range min(m.cfg.Workers, (len(items)+m.cfg.Batch-1)/m.cfg.Batch) {
		m.cond.Signal()
	}
	// A recall page that staging holds queued or in flight is read once:
	// the queued candidate is dropped (the recall reads it now), an
	// in-flight one is waited for by recallOne.
	for _, it := range items {
		if e, ok := m.st.byID[it.ID]; ok {
			m.removeStage(e)
			m.stageCtr.claimed.Add(1)
		}
	}
	return t, nil
}

func (m *Mover) worker() {
	defer m.wg.Done()
	for {
		m.mu.Lock()
		for !m.closed && len(m.recalls) == 0 {
			m.cond.Wait()
		}
		if m.closed {
			m.mu.Unlock()
			return
		}
		if len(m.recalls) > 0 {
			// A run of the same recall's pages is copied as one batch: on
			// the GPU one launch and one completion wait for all of them.
			first := m.recalls[0]
			n := 1
			for n < len(m.recalls) && n < m.cfg.Batch && m.recalls[n].t == first.t {
				n++
			}
			batch := slices.Clone(m.recalls[:n])
			clear(m.recalls[:n])
			m.recalls = m.recalls[n:]
			if len(m.recalls) > 0 {
				m.cond.Signal() // more batches: the next worker
			}
			m.mu.Unlock()
			if n == 1 {
				m.recallOne(first)
			} else {
				m.recallBatch(batch)
			}
			continue
		}
	}
}

// recallBatch copies a run of one ticket's pages: those the mirror holds in
// one Region.WritePages; pages on SSD, and slots that were busy, one by one.
func (m *Mover) recallBatch(tasks []recallTask) {
	region := tasks[0].region
	var todo []recallTask
	for _, task := range tasks {
		r := &task.t.results[task.i]
		it := r.RecallItem
		if slot, gen, ok := region.Lookup(it.ID.Page); ok && slot == it.Slot && gen != 0 && gen == it.Gen {
			r.Copied, r.Source = gen, SourceReserve
			m.already.Add(1)
			task.t.finish()
			continue
		}
		todo = append(todo, task)
	}
	if len(todo) == 0 {
		return
	}
	ids := make([]PageID, len(todo))
	for i, task := range todo {
		ids[i] = task.t.results[task.i].ID
	}
	refs := make([]mirrorRef, len(todo))
	alone := make([]bool, len(todo))
	err := m.store.viewMirror(ids, refs, func(refs []mirrorRef) {
		var ws []SlotWrite
		var at []int
		for i, ref := range refs {
			if !ref.ok {
				alone[i] = true
				continue
			}
			it := todo[i].t.results[todo[i].i].RecallItem
			ws = append(ws, SlotWrite{Slot: it.Slot, Page: it.ID.Page, Gen: ref.gen, Src: ref.data})
			at = append(at, i)
		}
		errs := make([]error, len(ws))
		region.WritePages(ws, errs)
		there := make([]bool, len(ws))
		for k, i := range at {
			// A slot busy when the batch started: the batch holds no slot
			// now, so wait for it alone, from the page referenced here (a
			// second read of it would count it twice and lose its staged
			// mark). As in recallOne, a slot that meanwhile got the wanted
			// generation is left alone.
			if errors.Is(errs[k], errSlotBusy) {
				it := todo[i].t.results[todo[i].i].RecallItem
				if slot, gen, ok := region.Lookup(it.ID.Page); ok && slot == it.Slot && gen != 0 && gen == it.Gen {
					errs[k], there[k] = nil, true
					continue
				}
				errs[k] = region.WritePage(ws[k].Slot, ws[k].Page, ws[k].Gen, ws[k].Src)
			}
		}
		for k, i := range at {
			task := todo[i]
			r := &task.t.results[task.i]
			switch {
			case there[k]:
				r.Copied, r.Source = r.Gen, SourceReserve
				m.already.Add(1)
			case errs[k] != nil:
				r.Err = fmt.Errorf("recall page %v into slot %d: %w", r.ID, r.Slot, errs[k])
				m.recallErrors.Add(1)
			default:
				r.Copied = ws[k].Gen
				r.Source = SourceMirror
				if refs[i].staged {
					r.Source = SourceStaged
					m.fromStaged.Add(1)
				} else {
					m.fromMirror.Add(1)
				}
				m.recallBytes.Add(uint64(region.geo.pageBytes))
			}
			task.t.finish()
		}
	})
	// Pages not in the mirror come from SSD: read several at once (closed
	// store, fn never ran: recallOne reports it per page).
	var wg sync.WaitGroup
	sem := make(chan struct{}, m.cfg.ReadParallel)
	for i, task := range todo {
		if alone[i] || err != nil {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				m.recallOne(task)
			}()
		}
	}
	wg.Wait()
}

func (m *Mover) recallOne(task recallTask) {
	r := &task.t.results[task.i]
	it := r.RecallItem
	region := task.region
	if slot, gen, ok := region.Lookup(it.ID.Page); ok && slot == it.Slot && gen != 0 && gen == it.Gen {
		r.Copied, r.Source = gen, SourceReserve
		m.already.Add(1)
		task.t.finish()
		return
	}
	m.awaitStaging(it.ID)
	t0 := time.Now()
	// The page is the waiter's as soon as it is in the slot: the ticket
	// finishes there, before the store brings an SSD page back into the
	// mirror (viewThen).
	served := false
	_, err := m.store.viewThen(m.ctx, it.ID, func(gen uint64, data []byte) error {
		if err := region.WritePage(it.Slot, it.ID.Page, gen, data); err != nil {
			return err
		}
		r.Copied = gen
		return nil
	}, func(src Source) {
		served = true
		r.Source = src
		m.recallBytes.Add(uint64(region.geo.pageBytes))
		switch src {
		case SourceSSD:
			m.late.Add(1)
			m.noteRecallRead(time.Since(t0), int64(region.geo.pageBytes))
		case SourceStaged:
			m.fromStaged.Add(1)
		default:
			m.fromMirror.Add(1)
		}
		task.t.finish()
	})
	if err != nil && !served {
		r.Err = fmt.Errorf("recall page %v into slot %d: %w", it.ID, it.Slot, err)
		m.recallErrors.Add(1)
		task.t.finish()
	}
}

// Stats returns the mover's counters.
func (m *Mover) Stats() MoverStats {
	m.mu.Lock()
	qr, qs, qb, allowed := int64(len(m.recalls)), int64(len(m.st.q)), m.st.bytes, m.st.allowed
	m.mu.Unlock()
	return MoverStats{
		Recalls:       m.recallCalls.Load(),
		RecallPages:   m.recallPages.Load(),
		AlreadyThere:  m.already.Load(),
		FromMirror:    m.fromMirror.Load(),
		FromStaged:    m.fromStaged.Load(),
		NeededLate:    m.late.Load(),
		RecallBytes:   m.recallBytes.Load(),
		RecallErrors:  m.recallErrors.Load(),
		Rejected:      m.rejected.Load(),
		StageRequests: m.stageReqs.Load(),
		StageDropped:  m.stageDropped.Load(),
		StageErrors:   m.stageErrors.Load(),
		QueuedRecalls: qr,
		QueuedStages:  qs,

		StageSuperseded:  m.stageCtr.superseded.Load(),
		StageBackoffs:    m.stageCtr.backoffs.Load(),
		StageAllowed:     allowed,
		QueuedStageBytes: qb,
		StagedBytes:      m.stageCtr.stagedBytes.Load(),
		StageReadSeconds: float64(m.stageCtr.readNanos.Load()) / 1e9,
		StageClaimed:     m.stageCtr.claimed.Load(),
		StageJoined:      m.stageCtr.joined.Load(),
	}
}

// Close stops the workers after the copies in progress; queued recalls finish
// with ErrClosed so no Ticket is left hanging. It does not close the Store.
func (m *Mover) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	pending := m.recalls
	m.recalls = nil
	for _, e := range m.st.q {
		m.st.bytes -= e.Bytes // in-flight stages subtract their own
	}
	m.st.q, m.st.byID = nil, map[PageID]*stageEntry{}
	m.cond.Broadcast()
	m.stageCond.Broadcast()
	m.mu.Unlock()
	m.stop()
	m.wg.Wait()
	for _, task := range pending {
		task.t.results[task.i].Err = fmt.Errorf("recall page %v: mover: %w", task.t.results[task.i].ID, ErrClosed)
		task.t.finish()
	}
}
