package indexer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
)

// Bounds a state decoded without a model may claim: far above any real model (3 target
// layers of 132-byte keys), low enough that no length computed from them overflows.
const (
	maxStateLayers   = 1 << 10
	maxStateKeyBytes = 1 << 20
	maxStateCPP      = 1 << 20
)

// stateView is a verified full state or delta, decoded without a model: the identity it
// was written under, its chunk range and the raw bytes of its sections (aliasing the input).
type stateView struct {
	ident    []byte // u32 layers, layer ids, u32 key bytes, u32 chunks per page
	layers   int
	kb       int
	ens      byte
	from, n  uint64
	sel      []byte // cycle through the ewma list, verified
	keys     []byte // per layer (n-from) × kb
	perLayer int    // bytes of keys per layer
}

// parseState verifies data (CRC, magic, bounds of every count against the bytes present)
// as a full state (delta false) or a delta, without a model; what it cannot check without
// the model and policy (layer ids, MaxChunks) UnmarshalBinary checks on restore.
func parseState(data []byte, delta bool) (stateView, error) {
	var v stateView
	magic := stateMagic
	if delta {
		magic = deltaMagic
	}
	if len(data) < 5+4 {
		return v, fmt.Errorf("%w: %d bytes is too short", ErrBadState, len(data))
	}
	if string(data[:4]) != magic {
		return v, fmt.Errorf("%w: magic %q, want %q", ErrBadState, data[:4], magic)
	}
	if data[4] != stateVersion {
		return v, fmt.Errorf("%w: version %d, want %d", ErrBadState, data[4], stateVersion)
	}
	body, sum := data[:len(data)-4], binary.LittleEndian.Uint32(data[len(data)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return v, fmt.Errorf("%w: checksum %08x, stored %08x", ErrBadState, got, sum)
	}
	d := stateDecoder{b: body[5:]}
	start := d.b
	nl := d.count("layer", maxStateLayers, 4)
	for range nl {
		d.u32("layer id")
	}
	kb := d.u32("key bytes")
	cpp := d.u32("chunks per page")
	if d.err != nil {
		return v, d.err
	}
	v.ident = start[:len(start)-len(d.b)]
	v.ens = d.u8("ensemble")
	if delta {
		v.from = d.u64("from")
	}
	v.n = d.u64("chunks")
	selStart := d.b
	d.u64("cycle")
	above := d.u64("above sum")
	outside := d.u64("outside sum")
	fb := d.u8("fallback")
	if d.err != nil {
		return v, d.err
	}
	switch {
	case nl == 0 || kb == 0 || kb > maxStateKeyBytes || cpp == 0 || cpp > maxStateCPP:
		return v, fmt.Errorf("%w: %d layers of %d-byte keys, %d chunks per page", ErrBadState, nl, kb, cpp)
	case v.ens != byte(EnsembleMax) && v.ens != byte(EnsembleMean):
		return v, fmt.Errorf("%w: ensemble %d", ErrBadState, v.ens)
	case v.from > v.n:
		return v, fmt.Errorf("%w: delta from chunk %d past its %d chunks", ErrBadState, v.from, v.n)
	case above > outside:
		return v, fmt.Errorf("%w: above sum %d > outside sum %d", ErrBadState, above, outside)
	case fb > 1:
		return v, fmt.Errorf("%w: fallback byte %d", ErrBadState, fb)
	}
	// The keys must be exactly what is left after the selection; the chunk count is bounded
	// by them before it bounds anything else.
	v.layers, v.kb = int(nl), int(kb)
	if (v.n-v.from) > uint64(len(d.b)) || (v.n-v.from)*uint64(kb)*uint64(nl) > uint64(len(d.b)) {
		return v, fmt.Errorf("%w: %d chunks of keys in %d bytes", ErrBadState, v.n-v.from, len(d.b))
	}
	if v.n > math.MaxInt32 {
		return v, fmt.Errorf("%w: %d chunks", ErrBadState, v.n)
	}
	pages := pageCount(int(v.n), int(cpp))
	np := d.count("selection", pages, 4)
	var last uint32
	for i := range np {
		p := d.u32("selection")
		if d.err == nil && (p >= uint32(pages) || i > 0 && p <= last) {
			return v, fmt.Errorf("%w: selection entry %d (page %d) out of order or past page %d", ErrBadState, i, p, pages)
		}
		last = p
	}
	ne := d.count("ewma", pages, 4)
	for i := range ne {
		e := math.Float32frombits(d.u32("ewma"))
		if d.err == nil && !(e >= 0 && e <= float32(cpp)) {
			return v, fmt.Errorf("%w: ewma of page %d is %v", ErrBadState, i, e)
		}
	}
	if d.err != nil {
		return v, d.err
	}
	v.sel = selStart[:len(selStart)-len(d.b)]
	v.perLayer = int(v.n-v.from) * v.kb
	if len(d.b) != v.perLayer*v.layers {
		return v, fmt.Errorf("%w: %d key bytes for %d chunks × %d layers × %d bytes", ErrBadState, len(d.b), v.n-v.from, v.layers, v.kb)
	}
	v.keys = d.b
	return v, nil
}

// MergeState applies deltas (MarshalDelta's, in the order they were made) to a full state
// (MarshalBinary's) and returns the full state they describe, as MarshalBinary would have
// encoded it, and how many deltas it applied. It stops at the first delta that does not
// verify or does not apply (another model or page size, or a from past the chunks it would
// apply to): the result is then the state as of the deltas before it, and err says why.
// A base that does not verify is an error with nothing applied (nil state). No model is
// needed: a restore (UnmarshalBinary) checks the result against the model.
func MergeState(base []byte, deltas ...[]byte) ([]byte, int, error) {
	bv, err := parseState(base, false)
	if err != nil {
		return nil, 0, err
	}
	// Each layer's keys as pieces of the inputs, so a long chain is copied once.
	pieces := make([][][]byte, bv.layers)
	for l := range pieces {
		pieces[l] = [][]byte{bv.keys[l*bv.perLayer : (l+1)*bv.perLayer]}
	}
	cur := bv
	used := 0
	var stop error
	for i, d := range deltas {
		dv, err := parseState(d, true)
		switch {
		case err != nil:
			stop = fmt.Errorf("delta %d: %w", i, err)
		case !bytes.Equal(dv.ident, bv.ident):
			stop = fmt.Errorf("%w: delta %d was made for another model or page size", ErrBadState, i)
		case dv.from > cur.n:
			stop = fmt.Errorf("%w: delta %d starts at chunk %d, the state has %d", ErrBadState, i, dv.from, cur.n)
		}
		if stop != nil {
			break
		}
		keep := int(dv.from) * bv.kb
		for l := range pieces {
			pieces[l] = truncPieces(pieces[l], keep)
			pieces[l] = append(pieces[l], dv.keys[l*dv.perLayer:(l+1)*dv.perLayer])
		}
		cur.ens, cur.n, cur.sel = dv.ens, dv.n, dv.sel
		used++
	}
	size := 5 + len(bv.ident) + 1 + 8 + len(cur.sel) + bv.layers*int(cur.n)*bv.kb + 4
	out := make([]byte, 0, size)
	out = append(out, stateMagic...)
	out = append(out, stateVersion)
	out = append(out, bv.ident...)
	out = append(out, cur.ens)
	out = binary.LittleEndian.AppendUint64(out, cur.n)
	out = append(out, cur.sel...)
	for l := range pieces {
		for _, p := range pieces[l] {
			out = append(out, p...)
		}
	}
	out = binary.LittleEndian.AppendUint32(out, crc32.Checksum(out, castagnoli))
	return out, used, stop
}

// truncPieces keeps the first n bytes of the concatenation of ps.
func truncPieces(ps [][]byte, n int) [][]byte {
	out := ps[:0:0]
	for _, p := range ps {
		if n <= 0 {
			break
		}
		if len(p) > n {
			p = p[:n]
		}
		out = append(out, p)
		n -= len(p)
	}
	return out
}
