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

//go:embed proj_sm80.ptx proj_sm90.ptx
var projPTX embed.FS

// projBatch is how many vectors one launch multiplies (PROJ_NB in proj.cu).
const projBatch = 8

// Projector does one layer's query projections on the GPU (attn.Projector): the three
// matrices live in device memory as stored (float32 or bf16) and every product is one
// launch per 8 vectors that streams the weights once. Safe for concurrent use (calls
// are serialised).
type Projector struct {
	dev          *cuda.Device
	mod          *cuda.Module
	fnF32, fnB16 *cuda.Function
	st           *cuda.Stream
	mats         [3]projMat
	bytes        int64

	mu         sync.Mutex
	x, y       cuda.DevPtr
	xCap, yCap int
	xs         []float32
	ys         []float32
}

type projMat struct {
	ptr        cuda.DevPtr
	rows, cols int
	bf16       bool
	borrowed   bool // another object's memory (a Cycle using a Projector's matrices)
}

var _ attn.Projector = (*Projector)(nil)

// NewProjector uploads lw's projection matrices to dev. Every matrix needs a column count
// that is a multiple of 8 (ErrShape otherwise).
func NewProjector(dev *cuda.Device, lw *attn.LayerWeights) (*Projector, error) {
	p := &Projector{dev: dev}
	if err := p.load(lw); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *Projector) load(lw *attn.LayerWeights) (err error) {
	dev := p.dev
	if p.mod, err = dev.LoadPTX(projPTX, "proj"); err != nil {
		return err
	}
	if p.fnF32, err = p.mod.Function("fm_proj_f32"); err != nil {
		return err
	}
	if p.fnB16, err = p.mod.Function("fm_proj_bf16"); err != nil {
		return err
	}
	if p.st, err = dev.NewStream(); err != nil {
		return err
	}
	for i, which := range []attn.ProjMatrix{attn.ProjQA, attn.ProjQB, attn.ProjHead} {
		rows, cols, f32, b16 := lw.MatrixData(which)
		if cols%8 != 0 || rows == 0 {
			return fmt.Errorf("gpu: projection matrix %d is %d×%d, columns must be a multiple of 8: %w", which, rows, cols, ErrShape)
		}
		var raw []byte
		if b16 != nil {
			raw = unsafe.Slice((*byte)(unsafe.Pointer(&b16[0])), 2*len(b16))
		} else {
			raw = asBytes(f32)
		}
		ptr, err := dev.Alloc(len(raw))
		if err != nil {
			return err
		}
		p.mats[i] = projMat{ptr: ptr, rows: rows, cols: cols, bf16: b16 != nil}
		p.bytes += int64(len(raw))
		if err := dev.CopyHtoD(ptr, raw); err != nil {
			return err
		}
	}
	return nil
}

// Bytes is the device memory the matrices take.
func (p *Projector) Bytes() int64 { return p.bytes }

// Project implements attn.Projector.
func (p *Projector) Project(which attn.ProjMatrix, dst, xs [][]float32) error {
	if which < attn.ProjQA || which > attn.ProjHead {
		return fmt.Errorf("gpu: projection matrix %d: %w", which, ErrShape)
	}
	m := p.mats[which]
	if len(dst) != len(xs) {
		return fmt.Errorf("gpu: %d outputs for %d vectors: %w", len(dst), len(xs), ErrShape)
	}
	for b := range xs {
		if len(xs[b]) != m.cols || len(dst[b]) != m.rows {
			return fmt.Errorf("gpu: matrix %d is %d×%d, vector %d has %d values and room for %d: %w", which, m.rows, m.cols, b, len(xs[b]), len(dst[b]), ErrShape)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fn := p.fnF32
	if m.bf16 {
		fn = p.fnB16
	}
	grid := uint32(min((m.rows+7)/8, p.dev.SMCount()*8))
	for b0 := 0; b0 < len(xs); b0 += projBatch {
		nb := min(projBatch, len(xs)-b0)
		p.xs = p.xs[:0]
		for _, x := range xs[b0 : b0+nb] {
			p.xs = append(p.xs, x...)
		}
		if err := p.grow(&p.x, &p.xCap, 4*len(p.xs)); err != nil {
			return err
		}
		if err := p.grow(&p.y, &p.yCap, 4*nb*m.rows); err != nil {
			return err
		}
		if err := p.dev.CopyHtoD(p.x, asBytes(p.xs)); err != nil {
			return err
		}
		if err := p.st.Launch(fn, cuda.Dim3{X: grid, Y: 1, Z: 1}, cuda.Dim3{X: 256, Y: 1, Z: 1}, 0,
			cuda.ArgPtr(m.ptr), cuda.ArgPtr(p.x), cuda.ArgPtr(p.y), cuda.ArgI32(int32(m.rows)), cuda.ArgI32(int32(m.cols)), cuda.ArgI32(int32(nb))); err != nil {
			return err
		}
		if err := p.st.Sync(); err != nil {
			return err
		}
		if cap(p.ys) < nb*m.rows {
			p.ys = make([]float32, nb*m.rows)
		}
		p.ys = p.ys[:nb*m.rows]
		if err := p.dev.CopyDtoH(asBytes(p.ys), p.y); err != nil {
			return err
		}
		for b := range nb {
			copy(dst[b0+b], p.ys[b*m.rows:(b+1)*m.rows])
		}
	}
	return nil
}

func (p *Projector) grow(ptr *cuda.DevPtr, capb *int, n int) error {
	if n <= *capb {
		return nil
	}
	if *ptr != 0 {
		if err := p.dev.Free(*ptr); err != nil {
			return err
		}
		*ptr, *capb = 0, 0
	}
	np, err := p.dev.Alloc(n)
	if err != nil {
		return err
	}
	*ptr, *capb = np, n
	return nil
}

// Close frees the matrices and buffers and unloads the kernels.
func (p *Projector) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	for i := range p.mats {
		if p.mats[i].ptr != 0 {
			keep(p.dev.Free(p.mats[i].ptr))
			p.mats[i].ptr = 0
		}
	}
	for _, ptr := range []*cuda.DevPtr{&p.x, &p.y} {
		if *ptr != 0 {
			keep(p.dev.Free(*ptr))
			*ptr = 0
		}
	}
	if p.st != nil {
		keep(p.st.Close())
		p.st = nil
	}
	if p.mod != nil {
		keep(p.mod.Unload())
		p.mod = nil
	}
	return first
}
