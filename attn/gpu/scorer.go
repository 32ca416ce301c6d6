//go:build cuda

package gpu

import (
	"embed"
	"fmt"
	"sync"
	"unsafe"

	"github.com/flashmemory/flashmemory/attn"
	"github.com/flashmemory/flashmemory/internal/cuda"
)

//go:embed score_sm80.ptx score_sm90.ptx
var scorePTX embed.FS

// Keys holds one request's index keys for one target layer on the GPU: fp8 codes
// [capacity][128] and float32 scales [capacity], appended as chunks arrive.
type Keys struct {
	dev      *cuda.Device
	codes    cuda.DevPtr
	scales   cuda.DevPtr
	n, capty int
}

// NewKeys allocates room for capacity keys on dev.
func NewKeys(dev *cuda.Device, capacity int) (*Keys, error) {
	if capacity <= 0 {
		return nil, fmt.Errorf("gpu: key capacity %d: %w", capacity, ErrShape)
	}
	k := &Keys{dev: dev, capty: capacity}
	var err error
	if k.codes, err = dev.Alloc(capacity * HeadDim); err != nil {
		return nil, err
	}
	if k.scales, err = dev.Alloc(capacity * 4); err != nil {
		dev.Free(k.codes)
		return nil, err
	}
	return k, nil
}

// Len is the number of keys stored.
func (k *Keys) Len() int { return k.n }

// Cap is the capacity given to NewKeys.
func (k *Keys) Cap() int { return k.capty }

// Append uploads raw KeyRecord-byte keys (attn.KeyStore's input format) after the keys
// already stored.
func (k *Keys) Append(raw []byte) error {
	if len(raw)%KeyRecord != 0 {
		return fmt.Errorf("gpu: %d key bytes is not a multiple of %d: %w", len(raw), KeyRecord, ErrShape)
	}
	n := len(raw) / KeyRecord
	if k.n+n > k.capty {
		return fmt.Errorf("gpu: append %d keys to %d of %d: %w", n, k.n, k.capty, ErrCapacity)
	}
	if n == 0 {
		return nil
	}
	codes := make([]byte, n*HeadDim)
	scales := make([]float32, n)
	if err := splitKeys(raw, codes, scales); err != nil {
		return err
	}
	if err := k.dev.CopyHtoD(k.codes+cuda.DevPtr(k.n*HeadDim), codes); err != nil {
		return err
	}
	if err := k.dev.CopyHtoD(k.scales+cuda.DevPtr(k.n*4), unsafe.Slice((*byte)(unsafe.Pointer(&scales[0])), 4*n)); err != nil {
		return err
	}
	k.n += n
	return nil
}

// SyncFrom appends the keys of ks that are not on the GPU yet (ks is append-only, so the
// first Len keys already match).
func (k *Keys) SyncFrom(ks *attn.KeyStore) error {
	if ks.HeadDim() != HeadDim {
		return fmt.Errorf("gpu: key store head dim %d: %w", ks.HeadDim(), ErrShape)
	}
	if ks.Len() < k.n {
		return fmt.Errorf("gpu: key store has %d keys, GPU copy %d: %w", ks.Len(), k.n, ErrShape)
	}
	return k.Append(ks.AppendRaw(nil, k.n, ks.Len()-k.n))
}

// Truncate forgets keys from n on (the key store's Truncate twin).
func (k *Keys) Truncate(n int) {
	if n >= 0 && n < k.n {
		k.n = n
	}
}

// Close frees the device memory.
func (k *Keys) Close() error {
	err := k.dev.Free(k.codes)
	if e := k.dev.Free(k.scales); err == nil {
		err = e
	}
	return err
}

// Scorer launches the scoring kernel on one device.
type Scorer struct {
	dev *cuda.Device
	fn  *cuda.Function
	mod *cuda.Module

	// Score reuses ws's buffers from call to call (grow-only): allocating and pinning the
	// output buffers per call cost more than the kernel.
	mu sync.Mutex
	ws workspace
}

// workspace holds grow-only device and pinned host buffers for Score.
type workspace struct {
	out, sets, frag, w             cuda.DevPtr
	outCap, setsCap, fragCap, wCap int
	host                           *cuda.HostBuffer
}

// grow makes *p hold at least n bytes of device memory.
func (ws *workspace) grow(d *cuda.Device, p *cuda.DevPtr, capb *int, n int) error {
	if n <= *capb {
		return nil
	}
	if *p != 0 {
		if err := d.Free(*p); err != nil {
			return err
		}
		*p, *capb = 0, 0
	}
	c := max(n+n/4, 4096)
	np, err := d.Alloc(c)
	if err != nil {
		return err
	}
	*p, *capb = np, c
	return nil
}

func (ws *workspace) free(d *cuda.Device) error {
	var first error
	for _, p := range []*cuda.DevPtr{&ws.out, &ws.sets, &ws.frag, &ws.w} {
		if *p != 0 {
			if err := d.Free(*p); err != nil && first == nil {
				first = err
			}
			*p = 0
		}
	}
	ws.outCap, ws.setsCap, ws.fragCap, ws.wCap = 0, 0, 0, 0
	if ws.host != nil {
		if err := ws.host.Free(); err != nil && first == nil {
			first = err
		}
		ws.host = nil
	}
	return first
}

// maxHeads bounds the shared memory a launch asks for (heads·512 B of query fragments).
const maxHeads = 256

// NewScorer loads the kernel on dev.
func NewScorer(dev *cuda.Device) (*Scorer, error) {
	mod, err := dev.LoadPTX(scorePTX, "score")
	if err != nil {
		return nil, err
	}
	fn, err := mod.Function("fm_score")
	if err != nil {
		mod.Unload()
		return nil, err
	}
	if err := fn.SetMaxDynamicShared(sharedBytes(maxHeads)); err != nil {
		mod.Unload()
		return nil, err
	}
	return &Scorer{dev: dev, fn: fn, mod: mod}, nil
}

// Close frees Score's buffers and unloads the kernel.
func (s *Scorer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.ws.free(s.dev)
	if uerr := s.mod.Unload(); err == nil {
		err = uerr
	}
	return err
}

func sharedBytes(heads int) int { return heads*fragWordsPerHead*4 + heads*4 }

// Item is one key set scored against its queries; Out receives [len(Queries)][Keys.Len()].
type Item struct {
	Keys    *Keys
	Queries []*attn.Query
	Out     []float32
}

// Plan is a packed, uploaded batch: Launch enqueues the kernel (any number of times),
// Fetch copies the logits into the items' Out slices.
type Plan struct {
	s       *Scorer
	items   []Item
	variant attn.Variant
	heads   int
	useLo   bool
	tiles   int
	nsets   int
	total   int // output floats
	sets    cuda.DevPtr
	frag    cuda.DevPtr
	w       cuda.DevPtr
	out     cuda.DevPtr
	host    *cuda.HostBuffer
	offsets []int      // per item, float offset into out
	ws      *workspace // buffers borrowed from the Scorer (Score); nil: owned (Plan)
}

// Plan packs and uploads items for variant v into buffers of its own (Close frees them).
func (s *Scorer) Plan(v attn.Variant, items []Item) (*Plan, error) { return s.plan(v, items, nil) }

func (s *Scorer) plan(v attn.Variant, items []Item, ws *workspace) (*Plan, error) {
	if len(items) == 0 {
		return nil, fmt.Errorf("gpu: empty batch: %w", ErrShape)
	}
	p := &Plan{s: s, items: items, variant: v, nsets: len(items), ws: ws}
	sets := make([]keySetDesc, len(items))
	var nq int
	for i, it := range items {
		if it.Keys == nil || it.Keys.dev != s.dev {
			return nil, fmt.Errorf("gpu: item %d keys not on device %d: %w", i, s.dev.Ordinal(), ErrDevice)
		}
		if it.Keys.n == 0 || len(it.Queries) == 0 {
			return nil, fmt.Errorf("gpu: item %d has %d keys and %d queries: %w", i, it.Keys.n, len(it.Queries), ErrShape)
		}
		if len(it.Out) != len(it.Queries)*it.Keys.n {
			return nil, fmt.Errorf("gpu: item %d output has %d floats, want %d: %w", i, len(it.Out), len(it.Queries)*it.Keys.n, ErrShape)
		}
		for _, q := range it.Queries {
			if p.heads == 0 {
				p.heads = q.Heads
			}
			if q.Heads != p.heads {
				return nil, fmt.Errorf("gpu: item %d mixes %d and %d heads: %w", i, q.Heads, p.heads, ErrShape)
			}
		}
		sets[i] = keySetDesc{Codes: uint64(it.Keys.codes), Scales: uint64(it.Keys.scales), N: uint32(it.Keys.n), QCount: uint32(len(it.Queries))}
		nq += len(it.Queries)
	}
	if p.heads > maxHeads {
		return nil, fmt.Errorf("gpu: %d heads (at most %d): %w", p.heads, maxHeads, ErrShape)
	}
	frag := make([]uint32, nq*p.heads*fragWordsPerHead)
	w := make([]float32, nq*p.heads)
	qi := 0
	for _, it := range items {
		for _, q := range it.Queries {
			useLo, err := packQuery(v, q, frag[qi*p.heads*fragWordsPerHead:(qi+1)*p.heads*fragWordsPerHead], w[qi*p.heads:(qi+1)*p.heads])
			if err != nil {
				return nil, err
			}
			p.useLo = p.useLo || useLo
			qi++
		}
	}
	p.tiles, _ = layoutSets(sets)
	for i := range items {
		p.offsets = append(p.offsets, p.total)
		p.total += len(items[i].Out)
	}
	if err := p.upload(sets, frag, w); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func asBytes[T any](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), len(s)*int(unsafe.Sizeof(s[0])))
}

func (p *Plan) upload(sets []keySetDesc, frag []uint32, w []float32) error {
	if p.ws != nil {
		return p.uploadShared(sets, frag, w)
	}
	d := p.s.dev
	var err error
	if p.out, err = d.Alloc(p.total * 4); err != nil {
		return err
	}
	for i := range sets {
		sets[i].Out = uint64(p.out) + uint64(p.offsets[i]*4)
	}
	if p.host, err = d.AllocHost(p.total * 4); err != nil {
		return err
	}
	for _, b := range []struct {
		dst *cuda.DevPtr
		src []byte
	}{{&p.sets, asBytes(sets)}, {&p.frag, asBytes(frag)}, {&p.w, asBytes(w)}} {
		if *b.dst, err = d.Alloc(len(b.src)); err != nil {
			return err
		}
		if err = d.CopyHtoD(*b.dst, b.src); err != nil {
			return err
		}
	}
	return nil
}

// uploadShared is upload into the Scorer's workspace.
func (p *Plan) uploadShared(sets []keySetDesc, frag []uint32, w []float32) error {
	d, ws := p.s.dev, p.ws
	if err := ws.grow(d, &ws.out, &ws.outCap, p.total*4); err != nil {
		return err
	}
	if ws.host == nil || ws.host.Size() < p.total*4 {
		if ws.host != nil {
			if err := ws.host.Free(); err != nil {
				return err
			}
			ws.host = nil
		}
		h, err := d.AllocHost(max(p.total*4+p.total, 1<<16))
		if err != nil {
			return err
		}
		ws.host = h
	}
	p.out, p.host = ws.out, ws.host
	for i := range sets {
		sets[i].Out = uint64(p.out) + uint64(p.offsets[i]*4)
	}
	for _, b := range []struct {
		dst  *cuda.DevPtr
		capb *int
		src  []byte
	}{{&ws.sets, &ws.setsCap, asBytes(sets)}, {&ws.frag, &ws.fragCap, asBytes(frag)}, {&ws.w, &ws.wCap, asBytes(w)}} {
		if err := ws.grow(d, b.dst, b.capb, len(b.src)); err != nil {
			return err
		}
		if err := d.CopyHtoD(*b.dst, b.src); err != nil {
			return err
		}
	}
	p.sets, p.frag, p.w = ws.sets, ws.frag, ws.w
	return nil
}

// Launch enqueues one kernel scoring every item on st.
func (p *Plan) Launch(st *cuda.Stream) error {
	if st.Device() != p.s.dev {
		return fmt.Errorf("gpu: stream of another device: %w", ErrDevice)
	}
	mode, lo := uint32(0), uint32(0)
	if p.variant == attn.FP8Q {
		mode = 1
	}
	if p.useLo {
		lo = 1
	}
	return st.Launch(p.s.fn, cuda.Dim3{X: uint32(p.tiles), Y: 1, Z: 1}, cuda.Dim3{X: 256, Y: 1, Z: 1}, sharedBytes(p.heads),
		cuda.ArgPtr(p.sets), cuda.ArgU32(uint32(p.nsets)), cuda.ArgPtr(p.frag), cuda.ArgPtr(p.w),
		cuda.ArgU32(uint32(p.heads)), cuda.ArgU32(mode), cuda.ArgU32(lo))
}

// Fetch copies the logits of the last Launch on st into the items' Out slices; it waits
// for st by polling, never blocking the device's owner goroutine.
func (p *Plan) Fetch(st *cuda.Stream) error {
	if err := st.Copy(p.host.Ptr(), p.out, p.total*4); err != nil {
		return err
	}
	if err := st.Sync(); err != nil {
		return err
	}
	all := unsafe.Slice((*float32)(unsafe.Pointer(&p.host.Bytes()[0])), p.total)
	for i, it := range p.items {
		copy(it.Out, all[p.offsets[i]:])
	}
	return nil
}

// Close frees the plan's device and pinned memory (a plan of Score's gives its buffers
// back to the Scorer instead).
func (p *Plan) Close() error {
	if p.ws != nil {
		return nil
	}
	var first error
	for _, ptr := range []cuda.DevPtr{p.sets, p.frag, p.w, p.out} {
		if ptr != 0 {
			if err := p.s.dev.Free(ptr); err != nil && first == nil {
				first = err
			}
		}
	}
	if p.host != nil {
		if err := p.host.Free(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Score computes the logits of every item with one kernel launch on st and waits for them.
// Calls are serialised: they share the Scorer's buffers.
func (s *Scorer) Score(st *cuda.Stream, v attn.Variant, items []Item) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := s.plan(v, items, &s.ws)
	if err != nil {
		return err
	}
	defer p.Close()
	if err := p.Launch(st); err != nil {
		return err
	}
	return p.Fetch(st)
}
