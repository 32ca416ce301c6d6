package tiers

import "fmt"

// Layout limits. They bound what a client's OPEN can make the daemon allocate
// before any budget check runs.
const (
	MaxLayers        = 1024
	MaxChunksPerPage = 4096
	MaxSegments      = 16
	MaxRowBytes      = 64 << 20
)

// LayerLayout is one KV layer's page row: RowBytes per page, and the bytes each
// chunk contributes per segment (DeepSeek-V4: [576, 8], data then scales).
type LayerLayout struct {
	RowBytes int
	Segments []int
}

// Layout is how a session's pages are laid out (docs/architecture.md, "Page
// layout"). Segment s of chunk c of a layer lives at
// ChunksPerPage·Σ_{t<s} Segments[t] + c·Segments[s] inside that layer's row; in
// the mirror and on SSD a page is the rows of all layers concatenated, layer 0
// first. A chunk's payload, as appends carry it, is every layer's segments
// concatenated in the same order (layer 0 segment 0, layer 0 segment 1, ...).
//
// PageMajor chooses the reserve region's arrangement (not the mirror's or SSD's,
// which are always page-major): false, one buffer per layer, [slots][RowBytes];
// true, one buffer of [slots][page] where a slot holds a page exactly as the
// mirror does (every layer's row back to back), so that a recall moves one
// contiguous piece per page; layer l's rows are then a view with offset
// Σ_{k<l} RowBytes[k] and a stride of the page (Region.RowStrides).
type Layout struct {
	ChunksPerPage int
	Layers        []LayerLayout
	PageMajor     bool
}

// cellCopy moves one segment of one chunk: page offset pageBase + c·n, chunk
// payload offset chunkOff, n bytes.
type cellCopy struct {
	layer    int
	rowOff   int // segment start inside the layer's row
	chunkOff int
	n        int
}

// Validate checks the layout against the package limits and that every layer's
// segments fit its row.
func (l Layout) Validate() error {
	if l.ChunksPerPage <= 0 || l.ChunksPerPage > MaxChunksPerPage {
		return fmt.Errorf("chunks per page %d outside 1..%d: %w", l.ChunksPerPage, MaxChunksPerPage, ErrLayout)
	}
	if len(l.Layers) == 0 || len(l.Layers) > MaxLayers {
		return fmt.Errorf("%d layers outside 1..%d: %w", len(l.Layers), MaxLayers, ErrLayout)
	}
	total := 0
	for i, ly := range l.Layers {
		if ly.RowBytes <= 0 || ly.RowBytes > MaxRowBytes {
			return fmt.Errorf("layer %d: row bytes %d outside 1..%d: %w", i, ly.RowBytes, MaxRowBytes, ErrLayout)
		}
		if len(ly.Segments) == 0 || len(ly.Segments) > MaxSegments {
			return fmt.Errorf("layer %d: %d segments outside 1..%d: %w", i, len(ly.Segments), MaxSegments, ErrLayout)
		}
		per := 0
		for s, n := range ly.Segments {
			if n <= 0 || n > MaxRowBytes {
				return fmt.Errorf("layer %d segment %d: %d bytes: %w", i, s, n, ErrLayout)
			}
			per += n
		}
		// per ≤ 16·64 MiB and ChunksPerPage ≤ 4096: the product fits in int64.
		if int64(per)*int64(l.ChunksPerPage) > int64(ly.RowBytes) {
			return fmt.Errorf("layer %d: %d chunks × %d B exceed row of %d B: %w", i, l.ChunksPerPage, per, ly.RowBytes, ErrLayout)
		}
		total += ly.RowBytes
		if total > MaxPageBytes {
			return fmt.Errorf("page of more than %d B: %w", MaxPageBytes, ErrLayout)
		}
	}
	return nil
}

// PageBytes is the size of a page in the mirror and on SSD: Σ RowBytes.
func (l Layout) PageBytes() int {
	n := 0
	for _, ly := range l.Layers {
		n += ly.RowBytes
	}
	return n
}

// ChunkBytes is the size of one chunk's payload across all layers.
func (l Layout) ChunkBytes() int {
	n := 0
	for _, ly := range l.Layers {
		for _, s := range ly.Segments {
			n += s
		}
	}
	return n
}

// RowOffset is the offset of a layer's row inside a page.
func (l Layout) RowOffset(layer int) int {
	n := 0
	for i := 0; i < layer && i < len(l.Layers); i++ {
		n += l.Layers[i].RowBytes
	}
	return n
}

func (l Layout) clone() Layout {
	c := Layout{ChunksPerPage: l.ChunksPerPage, Layers: make([]LayerLayout, len(l.Layers)), PageMajor: l.PageMajor}
	for i, ly := range l.Layers {
		c.Layers[i] = LayerLayout{RowBytes: ly.RowBytes, Segments: append([]int(nil), ly.Segments...)}
	}
	return c
}

// cellCopies precomputes, for a validated layout, where each segment of a chunk
// goes; chunk c's copy k lands at rowOff + c·n inside its layer's row.
func (l Layout) cellCopies() []cellCopy {
	var out []cellCopy
	chunkOff := 0
	for li, ly := range l.Layers {
		segBase := 0
		for _, n := range ly.Segments {
			out = append(out, cellCopy{layer: li, rowOff: segBase, chunkOff: chunkOff, n: n})
			segBase += l.ChunksPerPage * n
			chunkOff += n
		}
	}
	return out
}

// pageGeometry caches what the copy paths need from a validated layout.
type pageGeometry struct {
	layout     Layout
	pageBytes  int
	chunkBytes int
	rowOff     []int
	cells      []cellCopy
}

func newGeometry(l Layout) (*pageGeometry, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	g := &pageGeometry{layout: l.clone(), pageBytes: l.PageBytes(), chunkBytes: l.ChunkBytes(), cells: l.cellCopies()}
	g.rowOff = make([]int, len(l.Layers))
	off := 0
	for i, ly := range l.Layers {
		g.rowOff[i] = off
		off += ly.RowBytes
	}
	return g, nil
}

// Geometry is a validated Layout with the offsets the copy paths need
// precomputed; build it once per session.
type Geometry struct{ g *pageGeometry }

// NewGeometry validates l (ErrLayout) and precomputes its offsets.
func NewGeometry(l Layout) (*Geometry, error) {
	g, err := newGeometry(l)
	if err != nil {
		return nil, err
	}
	return &Geometry{g: g}, nil
}

// Layout returns a copy of the layout.
func (g *Geometry) Layout() Layout { return g.g.layout.clone() }

// PageBytes is Σ RowBytes.
func (g *Geometry) PageBytes() int { return g.g.pageBytes }

// ChunkBytes is one chunk's payload across all layers.
func (g *Geometry) ChunkBytes() int { return g.g.chunkBytes }

// ScatterChunk writes one chunk's payload into a page laid out as in the mirror
// (all rows concatenated).
func (g *Geometry) ScatterChunk(page []byte, chunk int, payload []byte) error {
	return g.g.scatterChunk(page, chunk, payload)
}

// GatherChunk is the inverse of ScatterChunk.
func (g *Geometry) GatherChunk(page []byte, chunk int, dst []byte) error {
	return g.g.gatherChunk(page, chunk, dst)
}

func (g *pageGeometry) checkChunk(pageLen, chunk, payloadLen int) error {
	if chunk < 0 || chunk >= g.layout.ChunksPerPage {
		return fmt.Errorf("chunk %d outside 0..%d: %w", chunk, g.layout.ChunksPerPage-1, ErrRange)
	}
	if payloadLen != g.chunkBytes {
		return fmt.Errorf("chunk payload %d B, layout needs %d: %w", payloadLen, g.chunkBytes, ErrSize)
	}
	if pageLen != g.pageBytes {
		return fmt.Errorf("page %d B, layout needs %d: %w", pageLen, g.pageBytes, ErrSize)
	}
	return nil
}

func (g *pageGeometry) scatterChunk(page []byte, chunk int, payload []byte) error {
	if err := g.checkChunk(len(page), chunk, len(payload)); err != nil {
		return err
	}
	for _, c := range g.cells {
		off := g.rowOff[c.layer] + c.rowOff + chunk*c.n
		copy(page[off:off+c.n], payload[c.chunkOff:c.chunkOff+c.n])
	}
	return nil
}

func (g *pageGeometry) gatherChunk(page []byte, chunk int, dst []byte) error {
	if err := g.checkChunk(len(page), chunk, len(dst)); err != nil {
		return err
	}
	for _, c := range g.cells {
		off := g.rowOff[c.layer] + c.rowOff + chunk*c.n
		copy(dst[c.chunkOff:c.chunkOff+c.n], page[off:off+c.n])
	}
	return nil
}

// ChunkRun names consecutive chunks of an APPEND payload that land in one
// page. Payload holds N chunks in the APPEND order (docs/protocol.md): layer
// after layer, within a layer segment after segment, within a segment chunk
// after chunk, i.e. segment s of layer l of chunk i is at
// N·Σ_{l'<l} Σ_t seg_{l'}[t] + N·Σ_{t<s} seg_l[t] + i·seg_l[s]. The run copies
// chunks From .. From+Count-1 into page chunks PageChunk .. PageChunk+Count-1.
type ChunkRun struct {
	Payload   []byte
	N         int
	From      int
	Count     int
	PageChunk int
}

func (g *pageGeometry) checkRun(pageLen int, r ChunkRun) error {
	if r.N <= 0 || int64(r.N)*int64(g.chunkBytes) != int64(len(r.Payload)) {
		return fmt.Errorf("payload of %d B for %d chunks of %d B: %w", len(r.Payload), r.N, g.chunkBytes, ErrSize)
	}
	if r.Count <= 0 || r.From < 0 || r.From > r.N-r.Count {
		return fmt.Errorf("chunks %d+%d of a %d-chunk payload: %w", r.From, r.Count, r.N, ErrRange)
	}
	if r.PageChunk < 0 || r.PageChunk > g.layout.ChunksPerPage-r.Count {
		return fmt.Errorf("page chunks %d+%d of %d: %w", r.PageChunk, r.Count, g.layout.ChunksPerPage, ErrRange)
	}
	if pageLen != g.pageBytes {
		return fmt.Errorf("page %d B, layout needs %d: %w", pageLen, g.pageBytes, ErrSize)
	}
	return nil
}

// eachRunCopy calls fn once per layer segment with the page offset, payload
// offset and length of that segment's part of the run.
func (g *pageGeometry) eachRunCopy(r ChunkRun, fn func(pageOff, payOff, n int)) {
	pay := 0
	for li, ly := range g.layout.Layers {
		segBase := 0
		for _, sz := range ly.Segments {
			fn(g.rowOff[li]+segBase+r.PageChunk*sz, pay+r.From*sz, r.Count*sz)
			segBase += g.layout.ChunksPerPage * sz
			pay += r.N * sz
		}
	}
}

// ScatterRun writes a run of chunks into a page laid out as in the mirror.
func (g *Geometry) ScatterRun(page []byte, r ChunkRun) error {
	if err := g.g.checkRun(len(page), r); err != nil {
		return err
	}
	g.g.eachRunCopy(r, func(pageOff, payOff, n int) {
		copy(page[pageOff:pageOff+n], r.Payload[payOff:payOff+n])
	})
	return nil
}

// GatherRun is the inverse of ScatterRun: it fills the run's part of
// r.Payload from the page.
func (g *Geometry) GatherRun(page []byte, r ChunkRun) error {
	if err := g.g.checkRun(len(page), r); err != nil {
		return err
	}
	g.g.eachRunCopy(r, func(pageOff, payOff, n int) {
		copy(r.Payload[payOff:payOff+n], page[pageOff:pageOff+n])
	})
	return nil
}
