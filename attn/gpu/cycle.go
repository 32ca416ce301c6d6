//go:build cuda

package gpu

import (
	"embed"
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/flashmemory/flashmemory/attn"
	"github.com/flashmemory/flashmemory/internal/cuda"
)

//go:embed cycle_sm80.ptx cycle_sm90.ptx
var cyclePTX embed.FS

// Cycle runs whole Memory-Indexer cycles of one LSA model on one device: the model's
// projection matrices and query parameters stay in device memory, and Run does the query
// preparation, scoring, ensemble, threshold, page scores and Level-1 top-KMAX cut of a
// whole batch in five kernel launches between one input copy and one output copy.
// Safe for concurrent use (runs are serialised).
type Cycle struct {
	dev                                *cuda.Device
	mod                                *cuda.Module
	fProj, fNorm, fPost, fScore, fSel  *cuda.Function
	st                                 *cuda.Stream
	ev0, ev1                           *cuda.Event
	variant                            attn.Variant
	layers, hidden, rank, heads, ropeD int
	eps, wScale, hScale                float32
	mats                               [][3]projMat
	normw, freqs                       cuda.DevPtr
	bytes                              int64
	gpuNanos                           atomic.Int64
	runs                               atomic.Int64
	tFill, tWait, tCollect             atomic.Int64

	mu      sync.Mutex
	ws      cuda.DevPtr
	wsCap   int
	hostIn  *cuda.HostBuffer
	hostOut *cuda.HostBuffer
}

// projJob mirrors cycle.cu's ProjJob (40 bytes).
type projJob struct {
	W, X, Y                uint64
	Rows, Cols, NB, IsBF16 int32
}

// reqDesc mirrors cycle.cu's ReqDesc (168 bytes).
type reqDesc struct {
	Codes, Scales                                       [MaxCycleLayers]uint64
	Logits                                              uint64
	N, TileFirst, QFirst, SinkEnd, TailStart, PageFirst uint32
	_, _                                                uint32
}

// selDesc mirrors cycle.cu's SelDesc (32 bytes).
type selDesc struct {
	Pages, PageFirst, SinkPages, TailPage uint32
	Need                                  int32
	OutOff                                uint32
	_, _                                  uint32
}

// NewCycle uploads the layers' matrices and query parameters to dev. Every layer must have
// 128-dim heads, a multiple of 8 heads (at most 256), hidden size and rank multiples of 8
// and the same shapes; at most MaxCycleLayers layers (ErrShape otherwise). share[l], when
// not nil, is a Projector of layers[l] on dev whose matrices the cycle uses instead of
// uploading its own (they must outlive the cycle): the published model's matrices are
// 486 MB in float32.
func NewCycle(dev *cuda.Device, layers []*attn.LayerWeights, v attn.Variant, share []*Projector) (*Cycle, error) {
	if len(layers) == 0 || len(layers) > MaxCycleLayers {
		return nil, fmt.Errorf("gpu: %d target layers (1 … %d): %w", len(layers), MaxCycleLayers, ErrShape)
	}
	if v != attn.Float && v != attn.FP8Q {
		return nil, fmt.Errorf("gpu: variant %v: %w", v, ErrShape)
	}
	l0 := layers[0]
	c := &Cycle{dev: dev, variant: v, layers: len(layers), hidden: l0.Hidden(), rank: l0.Rank(), heads: l0.Heads()}
	for i, lw := range layers {
		if lw.HeadDim() != HeadDim || lw.Heads()%8 != 0 || lw.Heads() > maxHeads || lw.Hidden()%8 != 0 || lw.Rank()%8 != 0 ||
			lw.Hidden() != c.hidden || lw.Rank() != c.rank || lw.Heads() != c.heads {
			return nil, fmt.Errorf("gpu: layer %d: hidden %d, rank %d, %d heads of dim %d: %w", i, lw.Hidden(), lw.Rank(), lw.Heads(), lw.HeadDim(), ErrShape)
		}
	}
	_, eps, wScale, freqs, hScale := l0.QueryParams()
	c.eps, c.wScale, c.hScale, c.ropeD = eps, wScale, hScale, 2*len(freqs)
	for _, lw := range layers[1:] {
		_, e2, w2, f2, h2 := lw.QueryParams()
		if e2 != eps || w2 != wScale || h2 != hScale || len(f2) != len(freqs) {
			return nil, fmt.Errorf("gpu: target layers differ in query parameters: %w", ErrShape)
		}
		for i := range f2 {
			if f2[i] != freqs[i] {
				return nil, fmt.Errorf("gpu: target layers differ in RoPE frequencies: %w", ErrShape)
			}
		}
	}
	if err := c.load(layers, freqs, share); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Cycle) load(layers []*attn.LayerWeights, freqs []float32, share []*Projector) (err error) {
	dev := c.dev
	if c.mod, err = dev.LoadPTX(cyclePTX, "cycle"); err != nil {
		return err
	}
	for _, f := range []struct {
		p    **cuda.Function
		name string
	}{{&c.fProj, "fm_cyc_proj"}, {&c.fNorm, "fm_cyc_norm"}, {&c.fPost, "fm_cyc_qpost"}, {&c.fScore, "fm_cyc_score"}, {&c.fSel, "fm_cyc_select"}} {
		if *f.p, err = c.mod.Function(f.name); err != nil {
			return err
		}
	}
	if err = c.fScore.SetMaxDynamicShared(c.scoreShared()); err != nil {
		return err
	}
	if c.st, err = dev.NewStream(); err != nil {
		return err
	}
	if c.ev0, err = dev.NewEvent(true); err != nil {
		return err
	}
	if c.ev1, err = dev.NewEvent(true); err != nil {
		return err
	}
	upload := func(raw []byte) (cuda.DevPtr, error) {
		p, err := dev.Alloc(len(raw))
		if err != nil {
			return 0, err
		}
		c.bytes += int64(len(raw))
		return p, dev.CopyHtoD(p, raw)
	}
	norm := make([]float32, 0, len(layers)*c.rank)
	for li, lw := range layers {
		qn, _, _, _, _ := lw.QueryParams()
		norm = append(norm, qn...)
		if li < len(share) && share[li] != nil && share[li].dev == dev && share[li].mats[0].ptr != 0 {
			m := share[li].mats
			for i := range m {
				m[i].borrowed = true
			}
			c.mats = append(c.mats, m)
			continue
		}
		var m [3]projMat
		for i, which := range []attn.ProjMatrix{attn.ProjQA, attn.ProjQB, attn.ProjHead} {
			rows, cols, f32, b16 := lw.MatrixData(which)
			raw := asBytes(f32)
			if b16 != nil {
				raw = asBytes(b16)
			}
			ptr, err := upload(raw)
			if ptr != 0 {
				m[i] = projMat{ptr: ptr, rows: rows, cols: cols, bf16: b16 != nil}
			}
			if err != nil {
				c.mats = append(c.mats, m)
				return err
			}
		}
		c.mats = append(c.mats, m)
	}
	if c.normw, err = upload(asBytes(norm)); err != nil {
		return err
	}
	if len(freqs) > 0 {
		if c.freqs, err = upload(asBytes(freqs)); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cycle) scoreShared() int { return c.heads*fragWordsPerHead*4 + c.heads*4 + 4*(tileChunks+2) }

// Bytes is the device memory the model's matrices and parameters take.
func (c *Cycle) Bytes() int64 { return c.bytes }

// GPUTime is the device time of all runs so far (from the input copy to the output copy,
// measured with events), and the number of runs.
func (c *Cycle) GPUTime() (time.Duration, int64) {
	return time.Duration(c.gpuNanos.Load()), c.runs.Load()
}

// Close frees the device memory and unloads the kernels.
func (c *Cycle) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	for _, m := range c.mats {
		for _, pm := range m {
			if pm.ptr != 0 && !pm.borrowed {
				keep(c.dev.Free(pm.ptr))
			}
		}
	}
	c.mats = nil
	for _, p := range []*cuda.DevPtr{&c.normw, &c.freqs, &c.ws} {
		if *p != 0 {
			keep(c.dev.Free(*p))
			*p = 0
		}
	}
	for _, h := range []**cuda.HostBuffer{&c.hostIn, &c.hostOut} {
		if *h != nil {
			keep((*h).Free())
			*h = nil
		}
	}
	for _, e := range []**cuda.Event{&c.ev0, &c.ev1} {
		if *e != nil {
			keep((*e).Close())
			*e = nil
		}
	}
	if c.st != nil {
		keep(c.st.Close())
		c.st = nil
	}
	if c.mod != nil {
		keep(c.mod.Unload())
		c.mod = nil
	}
	return first
}

// layout is one Run's placement of everything in the workspace and the pinned buffers.
type layout struct {
	// byte offsets into the device workspace
	in, qa, qb, wraw, frag, w, cnt, out, logits int
	total                                       int
	// byte offsets inside the input block (same in hostIn and at ws+in)
	x, pos, jobs1, jobs2, reqs, sels, inBytes int
	outBytes                                  int
	nJobs1, nJobs2                            int
	pages                                     []int // per request
	outOff                                    []int
	logitOff                                  []int // per request, -1: none
	cntWords                                  int
	tiles                                     int
}

// cycleSpin bounds how long Run polls for its result without sleeping.
const cycleSpin = 50 * time.Millisecond

// HostTimes is the host side of all runs so far: packing the inputs (fill), enqueueing and
// waiting for the device (wait), unpacking the results (collect).
func (c *Cycle) HostTimes() (fill, wait, collect time.Duration) {
	return time.Duration(c.tFill.Load()), time.Duration(c.tWait.Load()), time.Duration(c.tCollect.Load())
}

func align(n, a int) int { return (n + a - 1) / a * a }

// Run scores and selects every request of the batch (see CycleRequest).
func (c *Cycle) Run(reqs []*CycleRequest, p CycleParams) error {
	if len(reqs) == 0 {
		return nil
	}
	cpp := p.ChunksPerPage
	if cpp < 1 || cpp > MaxCycleChunksPerPage {
		return fmt.Errorf("gpu: %d chunks per page (1 … %d): %w", cpp, MaxCycleChunksPerPage, ErrShape)
	}
	nl := c.layers
	for i, r := range reqs {
		if len(r.Keys) != nl || len(r.Hidden) != nl {
			return fmt.Errorf("gpu: request %d has %d key sets and %d hidden states for %d target layers: %w", i, len(r.Keys), len(r.Hidden), nl, ErrShape)
		}
		n := r.Keys[0].Len()
		for l, k := range r.Keys {
			if k == nil || k.dev != c.dev {
				return fmt.Errorf("gpu: request %d layer %d keys not on device %d: %w", i, l, c.dev.Ordinal(), ErrDevice)
			}
			if k.Len() != n || n == 0 {
				return fmt.Errorf("gpu: request %d layer %d has %d keys, layer 0 %d: %w", i, l, k.Len(), n, ErrShape)
			}
			if len(r.Hidden[l]) != 2*c.hidden {
				return fmt.Errorf("gpu: request %d layer %d hidden state has %d bytes, want %d: %w", i, l, len(r.Hidden[l]), 2*c.hidden, ErrShape)
			}
		}
		if r.Position < 0 {
			return fmt.Errorf("gpu: request %d position %d: %w", i, r.Position, ErrShape)
		}
		if r.Logits != nil && len(r.Logits) != nl {
			return fmt.Errorf("gpu: request %d has %d logit outputs for %d layers: %w", i, len(r.Logits), nl, ErrShape)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mod == nil {
		return fmt.Errorf("gpu: cycle closed: %w", ErrDevice)
	}
	lay := c.plan(reqs, cpp)
	if err := c.grow(&lay); err != nil {
		return err
	}
	t0 := time.Now()
	c.fill(reqs, &lay, cpp)
	t1 := time.Now()
	if err := c.launch(reqs, &lay, p); err != nil {
		return err
	}
	t2 := time.Now()
	err := c.collect(reqs, &lay)
	c.tFill.Add(int64(t1.Sub(t0)))
	c.tWait.Add(int64(t2.Sub(t1)))
	c.tCollect.Add(int64(time.Since(t2)))
	return err
}

func (c *Cycle) plan(reqs []*CycleRequest, cpp int) layout {
	nb, nl, h := len(reqs), c.layers, c.heads
	var lay layout
	lay.x = 0
	lay.pos = align(lay.x+4*nl*nb*c.hidden, 256)
	groups := (nb + projBatch - 1) / projBatch
	lay.nJobs1, lay.nJobs2 = 2*nl*groups, nl*groups
	lay.jobs1 = align(lay.pos+4*nb, 256)
	lay.jobs2 = align(lay.jobs1+40*lay.nJobs1, 256)
	lay.reqs = align(lay.jobs2+40*lay.nJobs2, 256)
	lay.sels = align(lay.reqs+168*nb, 256)
	lay.inBytes = align(lay.sels+32*nb, 256)
	totalPages := 0
	for _, r := range reqs {
		n := r.Keys[0].Len()
		pg := (n + cpp - 1) / cpp
		lay.pages = append(lay.pages, pg)
		lay.outOff = append(lay.outOff, lay.outBytes)
		lay.outBytes += align(16+align(pg, 4)+4*((pg+31)/32), 16)
		totalPages += pg
		lay.tiles += (n + tileChunks - 1) / tileChunks
	}
	lay.cntWords = nb + totalPages
	off := 0
	next := func(n int) int { o := off; off = align(off+n, 256); return o }
	lay.in = next(lay.inBytes)
	lay.qa = next(4 * nl * nb * c.rank)
	lay.qb = next(4 * nl * nb * h * HeadDim)
	lay.wraw = next(4 * nl * nb * h)
	lay.frag = next(16 * nb * nl * h * 32)
	lay.w = next(4 * nb * nl * h)
	lay.cnt = next(4 * lay.cntWords)
	lay.out = next(lay.outBytes)
	for _, r := range reqs {
		if r.Logits == nil {
			lay.logitOff = append(lay.logitOff, -1)
			continue
		}
		lay.logitOff = append(lay.logitOff, next(4*nl*r.Keys[0].Len()))
	}
	lay.total = off
	return lay
}

func (c *Cycle) grow(lay *layout) error {
	if lay.total > c.wsCap {
		if c.ws != 0 {
			if err := c.dev.Free(c.ws); err != nil {
				return err
			}
			c.ws, c.wsCap = 0, 0
		}
		n := lay.total + lay.total/4
		p, err := c.dev.Alloc(n)
		if err != nil {
			return err
		}
		c.ws, c.wsCap = p, n
	}
	for _, b := range []struct {
		h    **cuda.HostBuffer
		need int
	}{{&c.hostIn, lay.inBytes}, {&c.hostOut, lay.outBytes}} {
		if *b.h != nil && (*b.h).Size() >= b.need {
			continue
		}
		if *b.h != nil {
			if err := (*b.h).Free(); err != nil {
				return err
			}
			*b.h = nil
		}
		hb, err := c.dev.AllocHost(max(b.need+b.need/4, 1<<16))
		if err != nil {
			return err
		}
		*b.h = hb
	}
	return nil
}

// fill writes the input block into the pinned input buffer.
func (c *Cycle) fill(reqs []*CycleRequest, lay *layout, cpp int) {
	nb, nl := len(reqs), c.layers
	buf := c.hostIn.Bytes()
	ws := uint64(c.ws)
	// Hidden states as float32, [L][B][hidden] (what attn.QueriesOn multiplies).
	x := unsafe.Slice((*float32)(unsafe.Pointer(&buf[lay.x])), nl*nb*c.hidden)
	for l := range nl {
		for b, r := range reqs {
			dst := x[(l*nb+b)*c.hidden : (l*nb+b+1)*c.hidden]
			src := r.Hidden[l]
			for i := range dst {
				dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16)
			}
		}
	}
	pos := unsafe.Slice((*float32)(unsafe.Pointer(&buf[lay.pos])), nb)
	for b, r := range reqs {
		pos[b] = float32(r.Position)
	}
	jobs1 := unsafe.Slice((*projJob)(unsafe.Pointer(&buf[lay.jobs1])), lay.nJobs1)
	jobs2 := unsafe.Slice((*projJob)(unsafe.Pointer(&buf[lay.jobs2])), lay.nJobs2)
	j1, j2 := 0, 0
	for l := range nl {
		m := c.mats[l]
		for g0 := 0; g0 < nb; g0 += projBatch {
			g := uint64(l*nb + g0)
			cnt := int32(min(projBatch, nb-g0))
			xp := ws + uint64(lay.in+lay.x) + g*uint64(4*c.hidden)
			qa := ws + uint64(lay.qa) + g*uint64(4*c.rank)
			jobs1[j1] = projJob{W: uint64(m[0].ptr), X: xp, Y: qa, Rows: int32(m[0].rows), Cols: int32(m[0].cols), NB: cnt, IsBF16: b2i(m[0].bf16)}
			jobs1[j1+1] = projJob{W: uint64(m[2].ptr), X: xp, Y: ws + uint64(lay.wraw) + g*uint64(4*c.heads), Rows: int32(m[2].rows), Cols: int32(m[2].cols), NB: cnt, IsBF16: b2i(m[2].bf16)}
			jobs2[j2] = projJob{W: uint64(m[1].ptr), X: qa, Y: ws + uint64(lay.qb) + g*uint64(4*c.heads*HeadDim), Rows: int32(m[1].rows), Cols: int32(m[1].cols), NB: cnt, IsBF16: b2i(m[1].bf16)}
			j1, j2 = j1+2, j2+1
		}
	}
	rd := unsafe.Slice((*reqDesc)(unsafe.Pointer(&buf[lay.reqs])), nb)
	sd := unsafe.Slice((*selDesc)(unsafe.Pointer(&buf[lay.sels])), nb)
	tile, page := 0, 0
	for b, r := range reqs {
		n := r.Keys[0].Len()
		d := reqDesc{N: uint32(n), TileFirst: uint32(tile), QFirst: uint32(b * nl),
			SinkEnd: uint32(max(r.SinkEnd, 0)), TailStart: uint32(min(max(r.TailStart, 0), n)), PageFirst: uint32(page)}
		for l, k := range r.Keys {
			d.Codes[l], d.Scales[l] = uint64(k.codes), uint64(k.scales)
		}
		if lay.logitOff[b] >= 0 {
			d.Logits = ws + uint64(lay.logitOff[b])
		}
		rd[b] = d
		sinkPages, tailPage := ForcedPages(n, max(r.SinkEnd, 0), r.TailStart, cpp)
		sd[b] = selDesc{Pages: uint32(lay.pages[b]), PageFirst: uint32(nb + page), SinkPages: uint32(sinkPages), TailPage: uint32(tailPage),
			Need: int32(max(min(r.Need, math.MaxInt32), math.MinInt32)), OutOff: uint32(lay.outOff[b])}
		// the page counters follow the nb request counters
		rd[b].PageFirst = uint32(nb + page)
		tile += (n + tileChunks - 1) / tileChunks
		page += lay.pages[b]
	}
}

func b2i(b bool) int32 {
	if b {
		return 1
	}
	return 0
}

func (c *Cycle) launch(reqs []*CycleRequest, lay *layout, p CycleParams) error {
	nb, nl := len(reqs), c.layers
	ws := c.ws
	st := c.st
	blk := cuda.Dim3{X: 256, Y: 1, Z: 1}
	if err := c.ev0.Record(st); err != nil {
		return err
	}
	if err := st.Copy(ws+cuda.DevPtr(lay.in), c.hostIn.Ptr(), lay.inBytes); err != nil {
		return err
	}
	gx := func(rows, jobs int) uint32 {
		return uint32(max(1, min((rows+7)/8, c.dev.SMCount()*16/max(jobs, 1))))
	}
	if err := st.Launch(c.fProj, cuda.Dim3{X: gx(c.rank, lay.nJobs1), Y: uint32(lay.nJobs1), Z: 1}, blk, 0,
		cuda.ArgPtr(ws+cuda.DevPtr(lay.in+lay.jobs1))); err != nil {
		return err
	}
	if err := st.Launch(c.fNorm, cuda.Dim3{X: uint32(nl * nb), Y: 1, Z: 1}, blk, 0,
		cuda.ArgPtr(ws+cuda.DevPtr(lay.qa)), cuda.ArgPtr(c.normw), cuda.ArgI32(int32(c.rank)), cuda.ArgI32(int32(nb)),
		cuda.ArgF32(c.eps), cuda.ArgPtr(ws+cuda.DevPtr(lay.cnt)), cuda.ArgU32(uint32(lay.cntWords))); err != nil {
		return err
	}
	if err := st.Launch(c.fProj, cuda.Dim3{X: gx(c.heads*HeadDim, lay.nJobs2), Y: uint32(lay.nJobs2), Z: 1}, blk, 0,
		cuda.ArgPtr(ws+cuda.DevPtr(lay.in+lay.jobs2))); err != nil {
		return err
	}
	fp8q := int32(0)
	if c.variant == attn.FP8Q {
		fp8q = 1
	}
	if err := st.Launch(c.fPost, cuda.Dim3{X: uint32(nl * nb), Y: 1, Z: 1}, blk, 0,
		cuda.ArgPtr(ws+cuda.DevPtr(lay.qb)), cuda.ArgPtr(ws+cuda.DevPtr(lay.wraw)), cuda.ArgPtr(ws+cuda.DevPtr(lay.in+lay.pos)),
		cuda.ArgPtr(c.freqs), cuda.ArgI32(int32(c.ropeD)), cuda.ArgI32(int32(c.heads)), cuda.ArgI32(int32(nb)), cuda.ArgI32(int32(nl)),
		cuda.ArgF32(c.wScale), cuda.ArgF32(c.hScale), cuda.ArgI32(fp8q),
		cuda.ArgPtr(ws+cuda.DevPtr(lay.frag)), cuda.ArgPtr(ws+cuda.DevPtr(lay.w))); err != nil {
		return err
	}
	mode, useLo := uint32(0), uint32(1)
	if c.variant == attn.FP8Q {
		mode, useLo = 1, 0 // fp8 values are exact in f16
	}
	ens := uint32(0)
	if p.Mean {
		ens = 1
	}
	if err := st.Launch(c.fScore, cuda.Dim3{X: uint32(lay.tiles), Y: 1, Z: 1}, blk, c.scoreShared(),
		cuda.ArgPtr(ws+cuda.DevPtr(lay.in+lay.reqs)), cuda.ArgU32(uint32(nb)), cuda.ArgU32(uint32(nl)),
		cuda.ArgPtr(ws+cuda.DevPtr(lay.frag)), cuda.ArgPtr(ws+cuda.DevPtr(lay.w)), cuda.ArgU32(uint32(c.heads)),
		cuda.ArgU32(mode), cuda.ArgU32(useLo), cuda.ArgU32(ens), cuda.ArgF32(p.ThresholdLogit), cuda.ArgU32(uint32(p.ChunksPerPage)),
		cuda.ArgPtr(ws+cuda.DevPtr(lay.cnt)), cuda.ArgPtr(ws+cuda.DevPtr(lay.cnt))); err != nil {
		return err
	}
	if err := st.Launch(c.fSel, cuda.Dim3{X: uint32(nb), Y: 1, Z: 1}, blk, 0,
		cuda.ArgPtr(ws+cuda.DevPtr(lay.in+lay.sels)), cuda.ArgPtr(ws+cuda.DevPtr(lay.cnt)), cuda.ArgPtr(ws+cuda.DevPtr(lay.cnt)),
		cuda.ArgU32(uint32(p.ChunksPerPage)), cuda.ArgPtr(ws+cuda.DevPtr(lay.out))); err != nil {
		return err
	}
	if err := st.Copy(c.hostOut.Ptr(), ws+cuda.DevPtr(lay.out), lay.outBytes); err != nil {
		return err
	}
	if err := c.ev1.Record(st); err != nil {
		return err
	}
	// The decoder waits for this reply: poll without sleeping (a sleeping poll adds up to
	// 100 µs per wake-up to a cycle of a few milliseconds).
	if err := c.ev1.WaitSpin(cycleSpin); err != nil {
		return err
	}
	if ms, err := c.ev1.Elapsed(c.ev0); err == nil {
		c.gpuNanos.Add(int64(ms * 1e6))
		c.runs.Add(1)
	}
	return nil
}

// collect parses the output records into the requests (and copies test logits).
func (c *Cycle) collect(reqs []*CycleRequest, lay *layout) error {
	out := c.hostOut.Bytes()
	for b, r := range reqs {
		pg := lay.pages[b]
		rec := out[lay.outOff[b]:]
		r.AboveThreshold = int(binary.LittleEndian.Uint32(rec[0:]))
		r.AboveOutside = int(binary.LittleEndian.Uint32(rec[4:]))
		r.SelectedCount = int(binary.LittleEndian.Uint32(rec[8:]))
		if cap(r.PageScores) < pg {
			r.PageScores = make([]uint8, pg)
		}
		r.PageScores = r.PageScores[:pg]
		copy(r.PageScores, rec[16:16+pg])
		if cap(r.Selected) < pg {
			r.Selected = make([]bool, pg)
		}
		r.Selected = r.Selected[:pg]
		bits := rec[16+align(pg, 4):]
		for i := range pg {
			r.Selected[i] = bits[4*(i/32)+(i%32)/8]>>(i%8)&1 != 0
		}
		if lay.logitOff[b] >= 0 {
			n := r.Keys[0].Len()
			all := make([]float32, c.layers*n)
			if err := c.dev.CopyDtoH(asBytes(all), c.ws+cuda.DevPtr(lay.logitOff[b])); err != nil {
				return err
			}
			for l := range c.layers {
				if len(r.Logits[l]) < n {
					r.Logits[l] = make([]float32, n)
				}
				copy(r.Logits[l], all[l*n:(l+1)*n])
			}
		}
	}
	return nil
}
