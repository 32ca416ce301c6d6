package proto

import (
	"fmt"
	"math"
)

// LayerLayout describes one KV layer's page row. A chunk's payload for the
// layer is the concatenation of its segments; within a page row, segment s
// of chunk c lives at ChunksPerPage·Σ_{t<s} Segments[t] + c·Segments[s], and
// the row is padded to RowBytes.
type LayerLayout struct {
	RowBytes uint32   `json:"row_bytes"`
	Segments []uint32 `json:"segments"`
}

// ChunkBytes returns the bytes of one chunk in this layer (Σ segments).
func (l LayerLayout) ChunkBytes() uint64 {
	var s uint64
	for _, v := range l.Segments {
		s += uint64(v)
	}
	return s
}

// Layout is a session's memory layout, declared by OPEN. See
// docs/architecture.md, "Page layout".
type Layout struct {
	// ChunksPerPage is the number of consecutive chunks in a page (64).
	ChunksPerPage uint32 `json:"chunks_per_page"`
	// KeyBytes is the size of one chunk's index key per target layer (132).
	KeyBytes uint32 `json:"key_bytes"`
	// TargetLayers is the number of indexer target layers, i.e. index keys
	// per chunk and queries per CYCLE entry.
	TargetLayers uint32 `json:"target_layers"`
	// CycleSteps is τ, the decode steps per cycle (64).
	CycleSteps uint32 `json:"cycle_steps"`
	// ReserveSlots is the number of page slots in the reserve region.
	ReserveSlots uint32 `json:"reserve_slots"`
	// Layers are the KV layers (and offloaded index-key layers), in order.
	Layers []LayerLayout `json:"layers"`
	// PageMajor asks for a page-major reserve region: a slot holds a page's
	// rows of every layer back to back (as the host mirror does), so recall
	// moves one contiguous piece per page; layer l is the view at
	// RegionLayer.Offset with a stride of RegionLayer.Stride. On the wire it
	// is OPEN's optional trailing flags word (OpenFlagPageMajor), which a
	// daemon older than the option refuses as malformed.
	PageMajor bool `json:"page_major,omitempty"`
}

// DeepSeekV4Layout returns the layout of DeepSeek-V4's 21 CSA layers as
// LSA.md describes it: per layer 64 × 576 B of data then 64 × 8 B of scales
// in a 37,440-byte row, 132-byte index keys, 3 target layers, τ = 64.
// Offloaded index keys of non-target layers, if wanted, are appended by the
// caller as further layers with Segments [132].
func DeepSeekV4Layout(reserveSlots uint32) Layout {
	l := Layout{ChunksPerPage: 64, KeyBytes: 132, TargetLayers: 3, CycleSteps: 64, ReserveSlots: reserveSlots}
	for range 21 {
		l.Layers = append(l.Layers, LayerLayout{RowBytes: 37440, Segments: []uint32{576, 8}})
	}
	return l
}

// Layout limits beyond the count limits in wire.go. They keep every derived
// size (page bytes × slots) far from uint64 overflow.
const (
	// MaxChunksPerPage bounds ChunksPerPage.
	MaxChunksPerPage = 4096
	// MaxRowBytes bounds one layer's row.
	MaxRowBytes = 1 << 30
	// MaxKeyBytes bounds one index key.
	MaxKeyBytes = 1 << 16
)

// Validate checks the layout for internal consistency and the protocol's
// limits. It returns an *Error with CodeBadLayout naming the first problem.
// Daemon-specific limits (reserve size, memory) are the daemon's to check.
func (l *Layout) Validate() error {
	bad := func(format string, args ...any) error { return CodeBadLayout.Errorf(format, args...) }
	switch {
	case l.ChunksPerPage == 0 || l.ChunksPerPage > MaxChunksPerPage:
		return bad("chunks_per_page %d not in 1..%d", l.ChunksPerPage, MaxChunksPerPage)
	case l.KeyBytes == 0 || l.KeyBytes > MaxKeyBytes:
		return bad("key_bytes %d not in 1..%d", l.KeyBytes, MaxKeyBytes)
	case l.TargetLayers == 0 || l.TargetLayers > MaxTargetLayers:
		return bad("target_layers %d not in 1..%d", l.TargetLayers, MaxTargetLayers)
	case l.CycleSteps == 0:
		return bad("cycle_steps is 0")
	case l.ReserveSlots == 0:
		return bad("reserve_slots is 0")
	case len(l.Layers) == 0 || len(l.Layers) > MaxLayers:
		return bad("%d layers, want 1..%d", len(l.Layers), MaxLayers)
	}
	for i, ly := range l.Layers {
		if len(ly.Segments) == 0 || len(ly.Segments) > MaxSegments {
			return bad("layer %d: %d segments, want 1..%d", i, len(ly.Segments), MaxSegments)
		}
		for s, v := range ly.Segments {
			if v == 0 {
				return bad("layer %d: segment %d is 0 bytes", i, s)
			}
		}
		if ly.RowBytes == 0 || ly.RowBytes > MaxRowBytes {
			return bad("layer %d: row_bytes %d not in 1..%d", i, ly.RowBytes, MaxRowBytes)
		}
		// Σ segments ≤ 16 × 2^32 and ChunksPerPage ≤ 4096: no overflow.
		if need := uint64(l.ChunksPerPage) * ly.ChunkBytes(); need > uint64(ly.RowBytes) {
			return bad("layer %d: %d chunks × %d bytes = %d exceed row_bytes %d",
				i, l.ChunksPerPage, ly.ChunkBytes(), need, ly.RowBytes)
		}
	}
	return nil
}

// ChunkBytes returns the payload bytes of one chunk over all layers.
func (l *Layout) ChunkBytes() uint64 {
	var s uint64
	for _, ly := range l.Layers {
		s += ly.ChunkBytes()
	}
	return s
}

// PageBytes returns the bytes of one page over all layers (Σ row_bytes): the
// size of a page in the host mirror and on SSD.
func (l *Layout) PageBytes() uint64 {
	var s uint64
	for _, ly := range l.Layers {
		s += uint64(ly.RowBytes)
	}
	return s
}

// PayloadBytes returns the payload length of an APPEND of n chunks, or
// false if it overflows uint64.
func (l *Layout) PayloadBytes(n uint64) (uint64, bool) {
	return mul64(n, l.ChunkBytes())
}

// KeysBytes returns the index-key length of an APPEND or COMMIT of n chunks
// (n × target_layers × key_bytes), or false if it overflows uint64.
func (l *Layout) KeysBytes(n uint64) (uint64, bool) {
	return mul64(n, uint64(l.TargetLayers)*uint64(l.KeyBytes))
}

// KeyOffset returns where the index key of chunk i (0-based within the
// message) for target layer t starts in the keys of an n-chunk message. Keys
// are layer-major: all n keys of target layer 0, then of layer 1, and so on.
func (l *Layout) KeyOffset(n, t, i uint64) uint64 {
	return (t*n + i) * uint64(l.KeyBytes)
}

// PayloadOffset returns where segment s of chunk i (0-based within the
// message) of layer ly starts in the payload of an n-chunk APPEND. The
// payload is layer-major and, within a layer, segment-major — the page-row
// layout with n in place of chunks_per_page — so that consecutive chunks of
// one page copy into a row with one memmove per segment.
func (l *Layout) PayloadOffset(n uint64, ly, s int, i uint64) uint64 {
	var off uint64
	for _, prev := range l.Layers[:ly] {
		off += n * prev.ChunkBytes()
	}
	segs := l.Layers[ly].Segments
	for _, v := range segs[:s] {
		off += n * uint64(v)
	}
	return off + i*uint64(segs[s])
}

// RowOffset returns where segment s of chunk c (0-based within its page) of
// layer ly starts in that layer's page row.
func (l *Layout) RowOffset(ly, s int, c uint32) uint64 {
	segs := l.Layers[ly].Segments
	var off uint64
	for _, v := range segs[:s] {
		off += uint64(l.ChunksPerPage) * uint64(v)
	}
	return off + uint64(c)*uint64(segs[s])
}

func mul64(a, b uint64) (uint64, bool) {
	if a != 0 && b > math.MaxUint64/a {
		return 0, false
	}
	return a * b, true
}

func (l *Layout) encode(e *enc) error {
	if len(l.Layers) > MaxLayers {
		return fmt.Errorf("%w: %d layers, at most %d", ErrMalformed, len(l.Layers), MaxLayers)
	}
	e.u32(l.ChunksPerPage)
	e.u32(l.KeyBytes)
	e.u32(l.TargetLayers)
	e.u32(l.CycleSteps)
	e.u32(l.ReserveSlots)
	e.u32(uint32(len(l.Layers)))
	for i, ly := range l.Layers {
		if len(ly.Segments) > MaxSegments {
			return fmt.Errorf("%w: layer %d has %d segments, at most %d", ErrMalformed, i, len(ly.Segments), MaxSegments)
		}
		e.u32(ly.RowBytes)
		e.u32(uint32(len(ly.Segments)))
		for _, v := range ly.Segments {
			e.u32(v)
		}
	}
	return nil
}

func (l *Layout) decode(d *dec) {
	l.ChunksPerPage = d.u32()
	l.KeyBytes = d.u32()
	l.TargetLayers = d.u32()
	l.CycleSteps = d.u32()
	l.ReserveSlots = d.u32()
	n := d.count("layers", 8, MaxLayers)
	if d.err != nil {
		return
	}
	l.Layers = make([]LayerLayout, n)
	for i := range l.Layers {
		l.Layers[i].RowBytes = d.u32()
		ns := d.count("segments", 4, MaxSegments)
		if d.err != nil {
			return
		}
		segs := make([]uint32, ns)
		for s := range segs {
			segs[s] = d.u32()
		}
		l.Layers[i].Segments = segs
	}
}

// Policy overrides the daemon's Level-1 selection defaults for a session.
// A zero field means "use the daemon's default".
type Policy struct {
	// FirstKeep is the number of sink chunks always kept (default 128).
	FirstKeep uint32 `json:"first_keep,omitempty"`
	// LastKeep is the number of recent chunks always kept (default 2048).
	LastKeep uint32 `json:"last_keep,omitempty"`
	// KMax is the page budget; 0 uses KMaxRatio or the daemon's default.
	KMax uint32 `json:"kmax,omitempty"`
	// Lookahead is the number of lookahead candidates to stage.
	Lookahead uint32 `json:"lookahead,omitempty"`
	// KMaxRatio is the page budget as a fraction of pages, in (0, 1].
	KMaxRatio float64 `json:"kmax_ratio,omitempty"`
	// FallbackRatio is the above-threshold fraction past which the session
	// switches to full residency, in (0, 1].
	FallbackRatio float64 `json:"fallback_ratio,omitempty"`
}

// Validate checks the ratios: each must be 0 (default) or in (0, 1].
func (p *Policy) Validate() error {
	for _, r := range []struct {
		name string
		v    float64
	}{{"kmax_ratio", p.KMaxRatio}, {"fallback_ratio", p.FallbackRatio}} {
		if math.IsNaN(r.v) || r.v < 0 || r.v > 1 {
			return CodeBadRequest.Errorf("%s %v not in [0, 1]", r.name, r.v)
		}
	}
	return nil
}

func (p *Policy) encode(e *enc) {
	e.u32(p.FirstKeep)
	e.u32(p.LastKeep)
	e.u32(p.KMax)
	e.u32(p.Lookahead)
	e.f64(p.KMaxRatio)
	e.f64(p.FallbackRatio)
}

func (p *Policy) decode(d *dec) {
	p.FirstKeep = d.u32()
	p.LastKeep = d.u32()
	p.KMax = d.u32()
	p.Lookahead = d.u32()
	p.KMaxRatio = d.f64()
	p.FallbackRatio = d.f64()
}
